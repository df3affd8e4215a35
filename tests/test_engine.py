"""The engine beyond the golden cases: other shapes and schedules, stopping, errors, TeaCache under CFG."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers import CASES, IMAGE, needs_shared
from PIL import Image
from safetensors.torch import load_file

from framepack.controls import JobInputs, plan_schedule, prepare_images
from framepack.engine import generate
from framepack.engine.conditioning import encode_conditioning
from framepack.events import Done, Error, Progress, SectionDone
from framepack.media.reading import probe
from framepack.packing import original_paddings
from framepack.sampling import make_denoiser, sample_unipc, section_sigmas
from framepack.settings import Settings

pytestmark = needs_shared


def reference_latents(models, settings: Settings, inputs=None) -> torch.Tensor:
    """FramePack's worker loop written out the original way (one growing history tensor, split indices), with
    the section controls added as the fixtures' README (section 6) states them; it shares only the encoders and
    the sampler with the engine."""
    from framepack.engine.conditioning import encode_prompt, encode_start_latent

    h, w, window = settings.height, settings.width, settings.latent_window_size
    images = prepare_images(inputs or JobInputs(IMAGE), settings)
    cond = encode_conditioning(models, settings, images, plan_schedule(settings, images.keyframe_times, images.end is not None))
    start = cond.start_latent
    keyframes = [(seconds, encode_start_latent(models, image)) for seconds, image in images.keyframes]
    rnd = torch.Generator("cpu").manual_seed(settings.seed)
    n = settings.num_sections
    f1 = settings.variant == "f1"
    history = torch.zeros(1, 16, 19, h // 8, w // 8)
    if images.end is not None:
        history[:, :, 0:1] = encode_start_latent(models, images.end) * settings.end_strength
    if f1:
        history = torch.cat([history, start], dim=2)

    def governing(pairs, t):  # the last pair at or before the section's start (6.1)
        chosen = None
        for seconds, value in pairs:
            if seconds <= t * 4 * window / 30 + 1e-6:
                chosen = value
        return chosen

    generated_total = 1 if f1 else 0
    for i, padding in enumerate([0] * n if f1 else original_paddings(n)):
        t = i if f1 else n - 1 - i
        text = governing(settings.prompts, t) or settings.prompt
        slot = governing(keyframes, t)
        slot = start if slot is None else slot
        if f1:
            idx = torch.arange(1 + 16 + 2 + 1 + window)
            start_i, x4_i, x2_i, x1_i, latent_i = idx.split([1, 16, 2, 1, window])
            x4, x2, x1 = history[:, :, -19:].split([16, 2, 1], dim=2)
        else:
            idx = torch.arange(1 + padding * window + window + 1 + 2 + 16)
            start_i, _, latent_i, x1_i, x2_i, x4_i = idx.split([1, padding * window, window, 1, 2, 16])
            x1, x2, x4 = history[:, :, :19].split([1, 2, 16], dim=2)
        shared = dict(
            image_embeds=cond.image_embeds, indices_latents=latent_i, latents_clean=torch.cat([slot, x1], dim=2),
            indices_latents_clean=torch.cat([start_i, x1_i]), latents_history_2x=x2, indices_latents_history_2x=x2_i,
            latents_history_4x=x4, indices_latents_history_4x=x4_i,
        )  # fmt: skip

        def prompt(embeds):
            states, mask = embeds.padded()
            return dict(encoder_hidden_states=states, encoder_attention_mask=mask, pooled_projections=embeds.clip_pooler)

        positive = encode_prompt(models, text)
        inputs = {"positive": {**prompt(positive), **shared}, "negative": {**prompt(cond.negative), **shared}}
        denoise = make_denoiser(
            models.transformer, inputs, cfg=settings.cfg, cfg_rescale=settings.cfg_rescale,
            distilled_cfg=settings.distilled_cfg, steps=settings.steps,
        )  # fmt: skip
        noise = torch.randn((1, 16, (window * 4 - 3 + 3) // 4, h // 8, w // 8), generator=rnd)
        sigmas = section_sigmas(settings.steps, window, h // 8, w // 8)
        result = list(sample_unipc(denoise, noise, sigmas))[-1].denoised
        if f1:
            history = torch.cat([history, result], dim=2)
        else:
            if padding == 0:
                result = torch.cat([start, result], dim=2)
            history = torch.cat([result, history], dim=2)
        generated_total += result.shape[2]
    return history[:, :, -generated_total:] if f1 else history[:, :, :generated_total]


@pytest.mark.parametrize(
    "changes",
    [
        dict(variant="original", total_second_length=2.4, latent_window_size=2, cfg=2.0, cfg_rescale=0.5, seed=3),
        dict(variant="original", total_second_length=1.6, latent_window_size=1, steps=2, seed=11),
        dict(variant="f1", total_second_length=2.0, latent_window_size=3, steps=3, cfg=1.7, seed=0, prompt=""),
    ],
    ids=["original-9-sections-cfg-rescale", "original-12-sections-window-1", "f1-5-sections"],
)
def test_engine_matches_the_reference_loop_on_other_shapes(tiny_models, tmp_path, changes):
    defaults = dict(prompt="a girl turns around", negative_prompt="blurry", steps=3, height=48, width=80, use_teacache=False)
    settings = Settings(**{**defaults, **changes})
    models = tiny_models(settings.variant)
    events = list(generate(models, settings, IMAGE, tmp_path, previews=False))
    done = events[-1]
    assert isinstance(done, Done), done
    assert done.sections_done == settings.num_sections
    latents = load_file(done.latents_path)["latents"]
    expected = reference_latents(models, settings)
    assert latents.shape == expected.shape == (1, 16, settings.num_sections * settings.latent_window_size + 1, 6, 10)
    assert torch.allclose(latents, expected, atol=1e-5)
    assert probe(done.video_path).frames == settings.num_frames == done.frames


def control_images(tmp_path):
    rng = np.random.default_rng(5)
    paths = []
    for index, size in enumerate(((90, 70), (200, 130), (64, 96))):
        path = tmp_path / f"control_{index}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    "changes, end, keyframes",
    [
        # 5 sections of 0.267 s: prompts at a section start and inside one, two keyframes, an end frame at 0.6.
        (dict(variant="original", total_second_length=1.33, latent_window_size=2, cfg=2.0, seed=21,
              prompts=((0.2, "she raises her arms"), (0.8, "she spins"))), 0.6, (0.5, 1.0)),
        # F1, window 3 (0.4 s sections): a prompt mid-section, one keyframe, rescaled CFG.
        (dict(variant="f1", total_second_length=1.6, latent_window_size=3, cfg=1.5, cfg_rescale=0.4, seed=8,
              prompts=((0.0, "a dog sits"), (0.5, "the dog runs"))), None, (0.8,)),
        # The original with an end frame at full strength only, over more sections than the context reaches.
        (dict(variant="original", total_second_length=2.4, latent_window_size=1, seed=2), 1.0, ()),
    ],
    ids=["original-all-controls", "f1-prompts-keyframe", "original-end-frame-window-1"],
)  # fmt: skip
def test_section_controls_match_the_reference_loop(tiny_models, tmp_path, changes, end, keyframes):
    from framepack.controls import Keyframe

    defaults = dict(prompt="a girl turns around", negative_prompt="blurry", steps=3, height=48, width=80, use_teacache=False)
    settings = Settings(**{**defaults, **changes, **({"end_strength": end} if end else {})})
    paths = control_images(tmp_path)
    inputs = JobInputs(IMAGE, paths[0] if end else None, [Keyframe(s, p) for s, p in zip(keyframes, paths[1:])])
    models = tiny_models(settings.variant)
    done = list(generate(models, settings, inputs, tmp_path / "out", previews=False))[-1]
    assert isinstance(done, Done), done
    latents = load_file(done.latents_path)["latents"]
    expected = reference_latents(models, settings, inputs)
    assert latents.shape == expected.shape
    assert torch.allclose(latents, expected, atol=1e-5)
    # The controls did something: the same job without them differs.
    plain = list(generate(models, settings.replace(prompts=()), IMAGE, tmp_path / "plain", previews=False))[-1]
    assert not torch.allclose(load_file(plain.latents_path)["latents"], latents, atol=1e-3)


def test_stop_leaves_a_playable_video_of_finished_sections(tiny_models, tmp_path):
    settings = Settings(variant="original", total_second_length=3.6, steps=3, height=64, width=96, prompt="x")
    stop = threading.Event()
    events = []
    for event in generate(tiny_models("original"), settings, IMAGE, tmp_path, stop=stop, job_id="job"):
        events.append(event)
        if isinstance(event, Progress) and event.section == 2 and event.step == 2:
            stop.set()
    done = events[-1]
    assert isinstance(done, Done) and done.stopped and done.sections_done == 1
    assert sum(isinstance(e, SectionDone) for e in events) == 1
    assert probe(done.video_path).frames == done.frames == 4 * 9 - 3
    assert load_file(done.latents_path)["latents"].shape[2] == 9
    # What a resume needs stays: the checkpoint and the encoded parts beside the video, latents and manifest.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".job.parts", "job.checkpoint.safetensors", "job.json", "job.latents.safetensors", "job.mp4"
    ]  # fmt: skip


def test_stop_before_any_section_writes_nothing(tiny_models, tmp_path):
    stop = threading.Event()
    stop.set()
    events = list(generate(tiny_models("f1"), Settings(variant="f1", steps=2, resolution=128), IMAGE, tmp_path, stop=stop))
    done = events[-1]
    assert isinstance(done, Done) and done.stopped and done.video_path is None and done.sections_done == 0
    assert list(tmp_path.iterdir()) == []


def test_user_errors_become_error_events(tiny_models, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    events = list(generate(tiny_models("f1"), Settings(variant="f1"), bad, tmp_path))
    assert len(events) == 1 and isinstance(events[0], Error)
    assert events[0].message.startswith("cannot read bad.jpg as an image")

    events = list(generate(tiny_models("f1"), Settings(variant="original"), IMAGE, tmp_path))
    assert isinstance(events[-1], Error) and "variant" in events[-1].message


def test_teacache_skips_as_framepack_and_keeps_cfg_passes_apart(tiny_models, tmp_path):
    base = dict(variant="original", total_second_length=3.6, steps=4, height=64, width=96, use_teacache=True,
                prompt="The girl dances gracefully, with clear movements, full of charm.")  # fmt: skip
    for cfg in (1.0, 3.0):
        settings = Settings(cfg=cfg, negative_prompt="blurry, static", **base)
        sections = [e for e in generate(tiny_models("original"), settings, IMAGE, tmp_path) if isinstance(e, SectionDone)]
        assert len(sections) == 3
        for section in sections:
            # Of 4 calls per section the 2nd skips the blocks (as in the golden TeaCache case).
            assert section.cache_counts["positive"] == (3, 1)
            if cfg == 1.0:
                assert set(section.cache_counts) == {"positive"}
            else:
                assert sum(section.cache_counts["negative"]) == 4  # its own state, its own 4 calls
    off = Settings(**{**base, "use_teacache": False})
    assert all(e.cache_counts == {} for e in generate(tiny_models("original"), off, IMAGE, tmp_path) if isinstance(e, SectionDone))


def test_previews_are_images_of_the_section(tiny_models, tmp_path):
    settings = Settings(variant="f1", steps=2, total_second_length=1.2, height=64, width=96)
    progress = [e for e in generate(tiny_models("f1"), settings, IMAGE, tmp_path) if isinstance(e, Progress)]
    assert len(progress) == 2
    assert all(p.preview.shape == (8, 12 * 9, 3) and p.preview.dtype == np.uint8 for p in progress)


def test_low_memory_placement_reproduces_the_golden_video(tmp_path):
    """The low-memory mode's placement (streamed blocks and Llama, encoders and VAE moved in per phase) changes
    where weights live, not what is computed: the golden case comes out the same."""
    import json

    from helpers import TINY_MODELS

    from framepack.loading import load_models
    from framepack.memory.planning import plan_memory
    from framepack.memory.sizes import GB, ModelConfigs, ModelSizes
    from framepack.models import ModelSource

    raw = json.loads((CASES / "v1_original" / "settings.json").read_text())
    sizes = ModelSizes.from_configs(ModelConfigs.from_folder(TINY_MODELS, "original"), torch.float32, torch.float32)
    plan = plan_memory(2 * GB, 20 * GB, height=64, width=96, variant="original", preserve_gb=1.99, device="cpu",
                       sizes=sizes, mode="low")  # fmt: skip
    assert plan.mode == "low" and plan.fits
    models = load_models("original", ModelSource(TINY_MODELS), dtype="float32", plan=plan)
    registry = models.text_encoder._diffusers_hook
    assert registry.get_hook("group_offloading") is not None  # Llama streams layer by layer
    done = list(generate(models, Settings.from_dict(raw), CASES / "v1_original" / raw["image"], tmp_path))[-1]
    assert isinstance(done, Done)
    expected = load_file(CASES / "v1_original" / "expected.safetensors")["video_latents"]
    assert torch.allclose(load_file(done.latents_path)["latents"], expected, atol=1e-4)


def test_a_prompt_fade_leaves_the_sections_before_the_change_as_they_were(tiny_models, tmp_path):
    """F1 generates in time order, so what a fade changes shows section by section: nothing before the change."""
    settings = Settings(variant="f1", total_second_length=1.6, latent_window_size=3, steps=2, height=48, width=80,
                        prompt="a dog sits", prompts=((0.8, "the dog runs"),), use_teacache=False)  # fmt: skip
    runs = {}
    for fade in (0, 1):
        events = generate(tiny_models("f1"), settings.replace(prompt_blend_sections=fade), IMAGE, tmp_path / str(fade))
        runs[fade] = [e.latents for e in events if isinstance(e, SectionDone)]
    assert len(runs[0]) == 4
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])  # before 0.8 s
    assert not torch.allclose(runs[0][2], runs[1][2], atol=1e-4)  # the first section of "the dog runs" fades in
