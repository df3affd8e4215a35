"""Section controls: the timing rule for every section of both variants, the timed-prompt syntax, the checks on
controls, and the optional prompt fade."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from framepack.controls import (
    JobInputs,
    Keyframe,
    blank_image,
    describe_schedule,
    plan_schedule,
    prepare_images,
    section_starts,
    timeline,
)
from framepack.engine.conditioning import Conditioning, PromptEmbeds
from framepack.settings import (
    Settings,
    SettingsError,
    format_timed_prompt,
    parse_timed_prompt,
)


def expected_index(times: list[float], window: int, t: int) -> int:
    """Section 6.1 restated with exact fractions: the last control at or before t*4w/30 seconds."""
    start = t * 4 * window / 30
    chosen = -1
    for k, seconds in enumerate(times):
        if seconds <= start + 1e-6:
            chosen = k
    return chosen


@pytest.mark.parametrize("variant", ["original", "f1"])
def test_every_section_gets_the_control_in_force_at_its_start(variant):
    rng = np.random.default_rng(0)
    for sections, window in itertools.product(range(1, 13), range(1, 17)):
        length = sections * 4 * window / 30  # exactly `sections` sections
        settings_base = Settings(variant=variant, total_second_length=length, latent_window_size=window)
        assert settings_base.num_sections == sections
        starts = section_starts(sections, window)
        last = starts[-1]
        # Controls exactly on section starts, just before and just after them, and anywhere.
        candidates = {0.0, last}
        for start in starts[1:]:
            candidates |= {start, start - 1e-4, start + 1e-4, start - 5e-7, start + 5e-7}
        candidates |= set(rng.uniform(0, last, 3).round(4)) if last > 0 else set()
        candidates = sorted(c for c in candidates if 0 <= c <= last + 5e-7)
        picked = []
        for candidate in rng.permutation(candidates).tolist():  # up to 4, no two at one time (that is an error)
            if len(picked) < 4 and all(abs(candidate - other) > 2e-6 for other in picked):
                picked.append(candidate)
        picked.sort()
        prompts = tuple((seconds, f"prompt {k}") for k, seconds in enumerate(picked))
        settings = settings_base.replace(prompts=prompts)
        keyframes = [s for s in picked if s > 1e-6]
        schedule = plan_schedule(settings, keyframes)
        for t in range(sections):
            assert schedule.prompt_index[t] == expected_index(picked, window, t), (sections, window, picked, t)
            assert schedule.start_slot[t] == expected_index(keyframes, window, t)
        # Generation order: the original generates the end first.
        for g in range(sections):
            assert schedule.time_index(g) == (sections - 1 - g if variant == "original" else g)
            assert schedule.section_range(g, window)[0] == pytest.approx(starts[schedule.time_index(g)])


def test_boundaries_on_and_just_off_a_section_start():
    settings = Settings(variant="original", total_second_length=2.6, latent_window_size=5)  # starts 0, .667, 1.333, 2
    assert settings.num_sections == 4
    starts = section_starts(4, 5)
    assert starts[3] == pytest.approx(2.0)
    for seconds, governed in ((2.0, [3]), (2.0 + 1e-7, [3]), (1.9999, [3]), (2.0001, None), (1.4, [3]), (1.3333, [2, 3])):
        if governed is None:
            with pytest.raises(SettingsError, match="governs no section: the last section starts at 2 s"):
                plan_schedule(settings, [seconds])
            continue
        schedule = plan_schedule(settings, [seconds])
        assert [t for t in range(4) if schedule.start_slot[t] == 0] == governed, seconds


def test_the_fixture_section_maps():
    """The README's section maps for c2 and c3, from the rule."""
    c2 = Settings(variant="original", total_second_length=2.6, latent_window_size=5,
                  prompts=((0, "looks"), (1.4, "jumps")))  # fmt: skip
    schedule = plan_schedule(c2, [2.0])
    assert schedule.prompt_index == (0, 0, 0, 1) and schedule.start_slot == (-1, -1, -1, 0)
    c3 = Settings(variant="f1", total_second_length=3.6, prompts=((0, "a"), (1.2, "b"), (2.4, "c")))
    schedule = plan_schedule(c3, [1.2])
    assert schedule.prompt_index == (0, 1, 2) and schedule.start_slot == (-1, 0, 0)


def test_timed_prompt_syntax_round_trips():
    base, pairs = parse_timed_prompt("A man stands. [2.4s: he turns around]  [0s:he waves] outside  [.5s: he nods ]")
    assert base == "A man stands. outside"
    assert pairs == ((0.0, "he waves"), (0.5, "he nods"), (2.4, "he turns around"))
    text = format_timed_prompt(base, pairs)
    assert parse_timed_prompt(text) == (base, pairs)
    assert parse_timed_prompt("no groups here") == ("no groups here", ())
    settings = Settings(prompt="base [0s: first] [1.2s: second]")
    assert (settings.prompt, settings.prompts) == ("base", ((0.0, "first"), (1.2, "second")))
    assert Settings.from_dict(settings.to_dict()) == settings and settings.prompt_text == "base [0s: first] [1.2s: second]"


@pytest.mark.parametrize(
    "text, message",
    [
        ("walk [2x: run]", "malformed timed prompt near '[2x: run]'"),
        ("walk [2s run]", "malformed timed prompt near '[2s run]'"),
        ("walk [1s: run", "malformed timed prompt near '[1s: run'"),
        ("walk ] [1s: run]", "malformed timed prompt near 'walk ]'"),
        ("walk [-1s: back]", "malformed timed prompt near '[-1s: back]'"),
        ("walk [1s: [nested] ]", "malformed timed prompt"),
        ("walk [1s:   ]", "the group '[1s:   ]' has no text"),
        ("[1s: a] [1.0s: b]", "two timed prompts at 1 s: give each time once"),
        ("[0s: a] [4s: b]", "4 s governs no section: the last section starts at 3.6 s, the last usable time"),
    ],
)
def test_malformed_timed_prompts_get_one_clear_line(text, message):
    with pytest.raises(SettingsError) as info:
        Settings(prompt=text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_controls_get_one_clear_line():
    f1 = Settings(variant="f1", total_second_length=3.6)
    with pytest.raises(SettingsError, match="F1 generates forwards and has no slot for an end frame"):
        plan_schedule(f1, [], end_image=True)
    original = Settings(total_second_length=3.6)
    with pytest.raises(SettingsError, match="a keyframe at 0 s would replace the start image"):
        plan_schedule(original, [0.0])
    with pytest.raises(SettingsError, match="two keyframes at 1.2 s"):
        plan_schedule(original, [1.2, 1.2])
    with pytest.raises(SettingsError, match="5 s governs no section: the last section starts at 2.4 s"):
        plan_schedule(original, [5.0])
    with pytest.raises(SettingsError, match="give timed prompts inside the prompt or as a list, not both"):
        Settings(prompt="a [0s: b]", prompts=((1.0, "c"),))
    with pytest.raises(SettingsError, match="end_strength: must be between 0 and 1"):
        Settings(end_strength=1.5)
    with pytest.raises(SettingsError, match="blank_start: must be one of grey, black, white, noise"):
        JobInputs(None, blank_start="pink")


def test_keyframes_are_kept_in_time_order_and_images_fit_the_start_images_size():
    rng = np.random.default_rng(1)
    start = rng.integers(0, 255, (120, 150, 3), dtype=np.uint8)
    late, early = (rng.integers(0, 255, size, dtype=np.uint8) for size in ((40, 300, 3), (500, 90, 3)))
    inputs = JobInputs(start, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), [Keyframe(2.4, late), Keyframe(1.2, early)])
    assert [k.seconds for k in inputs.keyframes] == [1.2, 2.4]
    images = prepare_images(inputs, Settings(height=64, width=96))
    assert images.start.shape == images.end.shape == (64, 96, 3)
    assert [seconds for seconds, _ in images.keyframes] == [1.2, 2.4]
    assert all(image.shape == (64, 96, 3) for _, image in images.keyframes)


def test_blank_starts_for_text_to_video():
    assert (blank_image("grey", 4, 6, 0) == 128).all() and (blank_image("black", 4, 6, 0) == 0).all()
    assert (blank_image("white", 4, 6, 0) == 255).all()
    noise = blank_image("noise", 64, 64, 7)
    assert noise.std() > 50 and np.array_equal(noise, blank_image("noise", 64, 64, 7))
    images = prepare_images(JobInputs(None, blank_start="white"), Settings(resolution=640))
    assert images.start.shape[:2] == (640, 608) and (images.start == 255).all()  # the square bucket
    assert JobInputs(None, blank_start="noise").describe()["image"] == {"blank": "noise"}


def embeds(value: float) -> PromptEmbeds:
    return PromptEmbeds(torch.full((1, 2, 4), value), torch.ones(1, 2, dtype=torch.long), torch.full((1, 3), value))


@pytest.mark.parametrize("variant", ["original", "f1"])
def test_a_prompt_fade_changes_only_the_sections_after_a_change(variant):
    # 8 sections of window 3 (0.4 s): "a" until 1.2 s (t = 0..2), "b" from t = 3, "c" from 2.4 s (t = 6).
    settings = Settings(variant=variant, total_second_length=3.2, latent_window_size=3, prompt="a",
                        prompts=((1.2, "b"), (2.4, "c")))  # fmt: skip
    schedule = plan_schedule(settings)
    texts = tuple("a" if k < 0 else settings.prompts[k][1] for k in schedule.prompt_index)
    assert texts == ("a", "a", "a", "b", "b", "b", "c", "c")
    values = {"a": 0.0, "b": 1.0, "c": 4.0}
    cond = Conditioning(
        embeds={text: embeds(value) for text, value in values.items()}, section_prompts=texts,
        negative=embeds(0), image_embeds=torch.zeros(1), start_latent=torch.zeros(1), keyframe_latents=[],
        end_latent=None, schedule=schedule, blend_sections=2,
    )  # fmt: skip
    # Per section in time order, the pooler's value: only the 2 sections after each change are in between.
    by_time = {}
    for g in range(8):
        prompt, _ = cond.section(g)
        by_time[schedule.time_index(g)] = prompt.clip_pooler[0, 0].item()
    assert [round(by_time[t], 4) for t in range(8)] == [0, 0, 0, round(1 / 3, 4), round(2 / 3, 4), 1, 2, 3]
    cond.blend_sections = 0
    assert [cond.section(schedule.time_index(t))[0].clip_pooler[0, 0].item() for t in range(8)] == [0, 0, 0, 1, 1, 1, 4, 4]


def test_the_timeline_says_where_each_control_lands():
    settings = Settings(variant="original", total_second_length=2.6, latent_window_size=5, prompt="sits",
                        prompts=((1.4, "jumps"),))  # fmt: skip
    rows = describe_schedule(plan_schedule(settings, [2.0], end_image=True), settings, has_end=True)
    lines = timeline(rows)
    assert lines[0] == '0.00–0.67 s (generated 4th): "sits" · start image'
    assert lines[3] == '2.00–2.67 s (generated 1st): "jumps" · keyframe 1 · then the end frame'
