"""Section schedules, RoPE indices and the packed history context."""

from __future__ import annotations

import pytest
import torch

from framepack.packing import (
    CONTEXT_FRAMES,
    LatentHistory,
    join_sections,
    original_paddings,
    plan_sections,
)
from framepack.settings import Settings


@pytest.mark.parametrize(
    "n, expected",
    [(1, [0]), (2, [1, 0]), (3, [2, 1, 0]), (4, [3, 2, 1, 0]), (5, [3, 2, 2, 1, 0]), (8, [3, 2, 2, 2, 2, 2, 1, 0])],
)
def test_original_paddings(n, expected):
    assert original_paddings(n) == expected


@pytest.mark.parametrize("n", range(1, 13))
@pytest.mark.parametrize("window", [1, 5, 9])
def test_original_indices(n, window):
    plans = plan_sections("original", n, window)
    assert [p.index for p in plans] == list(range(n))
    assert [p.is_last for p in plans] == [False] * (n - 1) + [True]
    assert plans[-1].padding == 0
    for plan in plans:
        first = 1 + plan.padding * window
        assert plan.latent_indices.tolist() == list(range(first, first + window))
        post = first + window
        assert plan.clean_indices.tolist() == [0, post]
        assert plan.clean_2x_indices.tolist() == [post + 1, post + 2]
        assert plan.clean_4x_indices.tolist() == list(range(post + 3, post + 19))
        assert all(t.ndim == 1 for t in (plan.latent_indices, plan.clean_indices, plan.clean_2x_indices))


@pytest.mark.parametrize("n", range(1, 13))
def test_f1_indices(n):
    for plan in plan_sections("f1", n, 9):
        assert plan.clean_indices.tolist() == [0, 19]
        assert plan.clean_4x_indices.tolist() == list(range(1, 17))
        assert plan.clean_2x_indices.tolist() == [17, 18]
        assert plan.latent_indices.tolist() == list(range(20, 29))


@pytest.mark.parametrize(
    "seconds, window, sections", [(5, 9, 4), (3.6, 9, 3), (1, 9, 1), (0.1, 9, 1), (60, 9, 50), (120, 9, 100), (5, 5, 8)]
)
def test_section_count(seconds, window, sections):
    settings = Settings(total_second_length=seconds, latent_window_size=window)
    assert settings.num_sections == sections
    assert settings.num_frames == 4 * (sections * window + 1) - 3


def test_section_count_rounds_half_to_even():
    # 4.2 s * 30 / 36 = 3.5 sections: Python's round gives 4; 3.0 s gives 2.5 -> 2.
    assert Settings(total_second_length=4.2).num_sections == 4
    assert Settings(total_second_length=3.0).num_sections == 2


def frames(*values: float) -> torch.Tensor:
    """A (1, 1, T, 1, 1) latent whose frame t holds values[t], so positions are easy to read back."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, -1, 1, 1)


def flat(t: torch.Tensor) -> list[float]:
    return t.flatten().tolist()


def test_original_history_context_and_decode_ranges():
    window = 2
    history = LatentHistory("original", frames(100), window)
    plans = plan_sections("original", 3, window)
    ctx = history.context()
    assert flat(ctx.clean) == [100, 0] and flat(ctx.history_2x) == [0, 0] and flat(ctx.history_4x) == [0] * 16

    assert flat(history.add(plans[0], frames(5, 6))) == [5, 6]  # first section decodes itself
    ctx = history.context()
    assert flat(ctx.clean) == [100, 5] and flat(ctx.history_2x) == [6, 0]

    assert flat(history.add(plans[1], frames(3, 4))) == [3, 4, 5, 6]  # 2 windows at the front
    ctx = history.context()
    assert flat(ctx.clean) == [100, 3] and flat(ctx.history_2x) == [4, 5] and flat(ctx.history_4x)[:2] == [6, 0]

    # The last section gets the start latent prepended and decodes 2 windows + 1.
    assert flat(history.add(plans[2], frames(1, 2))) == [100, 1, 2, 3, 4]
    assert flat(history.newest) == [100, 1, 2]
    sections = [frames(5, 6), frames(3, 4), history.newest]
    assert flat(join_sections("original", frames(100), sections)) == [100, 1, 2, 3, 4, 5, 6]
    assert history.sections_done == 3


def test_f1_history_context_and_decode_ranges():
    window = 2
    history = LatentHistory("f1", frames(100), window)
    plans = plan_sections("f1", 3, window)
    ctx = history.context()
    assert flat(ctx.clean) == [100, 100]  # the 1x frame is the start latent until a section exists
    assert flat(ctx.history_2x) == [0, 0] and flat(ctx.history_4x) == [0] * 16

    assert flat(history.add(plans[0], frames(1, 2))) == [100, 1, 2]  # start + first section
    ctx = history.context()
    assert flat(ctx.clean) == [100, 2] and flat(ctx.history_2x) == [100, 1]
    assert flat(history.add(plans[1], frames(3, 4))) == [1, 2, 3, 4]
    assert flat(history.add(plans[2], frames(5, 6))) == [3, 4, 5, 6]
    ctx = history.context()
    assert flat(ctx.clean) == [100, 6] and flat(ctx.history_2x) == [4, 5]
    assert flat(ctx.history_4x) == [0] * 12 + [100, 1, 2, 3]
    sections = [frames(1, 2), frames(3, 4), frames(5, 6)]
    assert flat(join_sections("f1", frames(100), sections)) == [100, 1, 2, 3, 4, 5, 6]
    assert history.sections_done == 3


@pytest.mark.parametrize("variant", ["original", "f1"])
@pytest.mark.parametrize("window", [1, 4, 9, 16])
def test_a_long_history_keeps_only_what_later_sections_read(variant, window):
    """Memory stays flat: the history keeps the context's 19 frames or the 2 windows + 1 a section decodes,
    and gives the same context and decode ranges as a history that kept everything."""
    sections = 40
    history = LatentHistory(variant, torch.full((1, 1, 1, 1, 1), 1000.0), window)
    made = []
    for plan in plan_sections(variant, sections, window):
        made.append(torch.arange(plan.index * window, (plan.index + 1) * window, dtype=torch.float32).view(1, 1, -1, 1, 1))
        decoded = history.add(plan, made[-1])
        video = join_sections(variant, history.start_latent, [*made[:-1], history.newest])
        # The decode range is the growing edge of the whole video, and so is the context.
        if plan.index > 0:
            edge = video[:, :, : decoded.shape[2]] if history.prepends else video[:, :, -decoded.shape[2] :]
            assert torch.equal(decoded, edge)
        kept = sum(chunk.shape[2] for chunk in history.chunks)
        assert kept < history.keep + window + 1  # never more than one chunk beyond what is read
        if len(made) < sections:
            ctx = history.context()
            side = video[:, :, : CONTEXT_FRAMES] if history.prepends else video[:, :, -CONTEXT_FRAMES:]
            packed = torch.cat([ctx.clean[:, :, 1:], ctx.history_2x, ctx.history_4x], dim=2)
            if not history.prepends:
                packed = torch.cat([ctx.history_4x, ctx.history_2x, ctx.clean[:, :, 1:]], dim=2)
            if video.shape[2] >= CONTEXT_FRAMES:
                assert torch.equal(packed, side)
    assert join_sections(variant, history.start_latent, made[:-1] + [history.newest]).shape[2] == sections * window + 1
