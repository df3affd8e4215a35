"""Section schedules and the packed frame context.

A video is generated in sections of `window` latent frames. Each section is conditioned on the start latent
and on a fixed-size summary of the history: 1 latent frame at full resolution, 2 at 2x and 16 at 4x
compression (the 1x/2x/4x context), placed by RoPE frame indices. The original variant generates from the
end of the video backwards (anti-drifting, "inverted"); F1 generates forwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CONTEXT_1X, CONTEXT_2X, CONTEXT_4X = 1, 2, 16
CONTEXT_FRAMES = CONTEXT_1X + CONTEXT_2X + CONTEXT_4X  # 19


def original_paddings(num_sections: int) -> list[int]:
    """How many windows of blank positions separate each section from the start frame, in generation order.

    Past 4 sections FramePack keeps the padding at 2 in the middle (a trick that reduces drifting).
    """
    if num_sections > 4:
        return [3] + [2] * (num_sections - 3) + [1, 0]
    return list(reversed(range(num_sections)))


@dataclass(frozen=True)
class SectionPlan:
    """One section: its place in generation order and the RoPE indices of every packed input (1-D tensors)."""

    index: int
    num_sections: int
    padding: int
    latent_indices: torch.Tensor
    clean_indices: torch.Tensor  # start frame, then the 1x history frame
    clean_2x_indices: torch.Tensor
    clean_4x_indices: torch.Tensor

    @property
    def is_last(self) -> bool:
        return self.index == self.num_sections - 1


def plan_sections(variant: str, num_sections: int, window: int) -> list[SectionPlan]:
    """The sections of a job in generation order, with their frame indices."""
    if variant == "original":
        return [_original_plan(i, num_sections, p, window) for i, p in enumerate(original_paddings(num_sections))]
    if variant == "f1":
        return [_f1_plan(i, num_sections, window) for i in range(num_sections)]
    raise ValueError(f"unknown variant {variant!r}")


def _original_plan(index: int, num_sections: int, padding: int, window: int) -> SectionPlan:
    # [start | blank padding*window | generated window | 1x | 2x | 4x]
    start, _, latent, post, x2, x4 = torch.arange(1 + padding * window + window + CONTEXT_FRAMES).split(
        [1, padding * window, window, CONTEXT_1X, CONTEXT_2X, CONTEXT_4X]
    )
    return SectionPlan(index, num_sections, padding, latent, torch.cat([start, post]), x2, x4)


def _f1_plan(index: int, num_sections: int, window: int) -> SectionPlan:
    # [start | 4x | 2x | 1x | generated window]
    start, x4, x2, x1, latent = torch.arange(1 + CONTEXT_FRAMES + window).split(
        [1, CONTEXT_4X, CONTEXT_2X, CONTEXT_1X, window]
    )
    return SectionPlan(index, num_sections, 0, latent, torch.cat([start, x1]), x2, x4)


@dataclass
class PackedContext:
    """The clean latents a section is conditioned on, matching its plan's indices."""

    clean: torch.Tensor  # (1, C, 2, h, w): start latent and the 1x history frame
    history_2x: torch.Tensor  # (1, C, 2, h, w)
    history_4x: torch.Tensor  # (1, C, 16, h, w)


class LatentHistory:
    """The growing edge of one job's latents, and the context each section sees.

    Where the history is shorter than the context it is padded with zero frames: after the video for the
    original variant (which grows towards the start), before it for F1 (which grows towards the end).
    Sections are kept as separate chunks, and only those a later section packs into its context or decodes,
    so adding one costs the same time and memory however long the video is (the engine keeps every
    section's latents on disk; `join_sections` puts them together).
    """

    def __init__(self, variant: str, start_latent: torch.Tensor, window: int, end_latent: torch.Tensor | None = None):
        self.variant = variant
        self.window = window
        self.start_latent = start_latent.float().cpu()
        # The original variant's end frame: the first frame after the video, behind every generated latent (so
        # it is the first section's 1x context, then in later sections' 2x/4x while within reach); never decoded.
        self.beyond = [end_latent.float().cpu()] if end_latent is not None else []
        if self.beyond and variant != "original":
            raise ValueError("only the original variant has an end frame")
        # The edge of the video's latents in time order, one chunk per section; F1's video begins with the
        # start latent.
        self.chunks: list[torch.Tensor] = [] if variant == "original" else [self.start_latent]
        self.lead = self.start_latent  # what F1's video latents begin with (see `continue_from`)
        self.past = False
        self.sections_done = 0
        # The most a later section reads: its context, or the two windows (and start latent) it decodes.
        self.keep = max(CONTEXT_FRAMES, 2 * window + 1)

    @property
    def prepends(self) -> bool:
        """Whether new sections go before the existing video (the original's backwards generation)."""
        return self.variant == "original"

    def continue_from(self, past: torch.Tensor) -> None:
        """Go on from an existing video's last latents (an F1 extension): the context packs them, the first new
        section decodes with them like any later section, and the video's latents begin with them."""
        if self.prepends:
            raise ValueError("the original variant generates towards a video's end, not from it")
        self.lead = past.float().cpu()
        self.chunks = [self.lead]
        self.past = True

    def restore(self, sections: list[torch.Tensor]) -> None:
        """Continue from a checkpoint: `sections` are the chunks `add` kept (`newest`), in generation order."""
        for chunk in sections:
            self._push(chunk.float().cpu())
        self.sections_done = len(sections)

    def _push(self, chunk: torch.Tensor) -> None:
        """Add a chunk at the growing edge and forget the chunks beyond `keep` frames from it."""
        if self.prepends:
            self.chunks.insert(0, chunk)
        else:
            self.chunks.append(chunk)
        far = -1 if self.prepends else 0
        while sum(c.shape[2] for c in self.chunks) - self.chunks[far].shape[2] >= self.keep:
            self.chunks.pop(far)

    @property
    def newest(self) -> torch.Tensor:
        """The latents the last section added to the video (with the start latent in the original's last one)."""
        return self.chunks[0] if self.prepends else self.chunks[-1]

    def _edge(self, frames: int, front: bool) -> torch.Tensor:
        """The first (front) or last `frames` latent frames of the video, touching only the chunks needed."""
        picked, count = [], 0
        for chunk in self.chunks if front else reversed(self.chunks):
            picked.append(chunk)
            count += chunk.shape[2]
            if count >= frames:
                break
        if not front:
            picked.reverse()
        video = torch.cat(picked, dim=2)
        return video[:, :, :frames] if front else video[:, :, -frames:]

    def context(self, start_slot: torch.Tensor | None = None) -> PackedContext:
        """The packed context of the next section; `start_slot` takes the start latent's place in its clean
        start slot (a keyframe), without changing the video's first frame."""
        latent = self.start_latent
        zeros = latent.new_zeros(*latent.shape[:2], CONTEXT_FRAMES, *latent.shape[3:])
        if self.prepends:
            edge = [self._edge(CONTEXT_FRAMES, front=True)] if self.chunks else []
            padded = torch.cat([*edge, *self.beyond, zeros], dim=2)
            x1, x2, x4 = padded[:, :, :CONTEXT_FRAMES].split([CONTEXT_1X, CONTEXT_2X, CONTEXT_4X], dim=2)
        else:
            tail = torch.cat([zeros, self._edge(CONTEXT_FRAMES, front=False)], dim=2)[:, :, -CONTEXT_FRAMES:]
            x4, x2, x1 = tail.split([CONTEXT_4X, CONTEXT_2X, CONTEXT_1X], dim=2)
        slot = latent if start_slot is None else start_slot.float().cpu()
        return PackedContext(clean=torch.cat([slot, x1], dim=2), history_2x=x2, history_4x=x4)

    def add(self, plan: SectionPlan, generated: torch.Tensor) -> torch.Tensor:
        """Add a sampled section; returns the latents to decode for this section's video update.

        The first section decodes all it made; later ones decode 2 windows at the growing edge (plus the start
        latent in the original's last section), of which one window overlaps the video already decoded.
        """
        generated = generated.float().cpu()
        self.sections_done += 1
        w = self.window
        if self.prepends:
            if plan.is_last:
                generated = torch.cat([self.start_latent, generated], dim=2)
            self._push(generated)
            if plan.index == 0:
                return generated
            return self._edge(2 * w + (1 if plan.is_last else 0), front=True)
        self._push(generated)
        if plan.index == 0 and not self.past:
            return torch.cat([self.start_latent, generated], dim=2)
        return self._edge(2 * w, front=False)


def join_sections(variant: str, start_latent: torch.Tensor, sections: list[torch.Tensor]) -> torch.Tensor:
    """A job's video latents in time order from its sections' latents (`LatentHistory.newest` of each, in
    generation order): F1's video begins with the start latent; the original's last section carries it."""
    if variant == "original":
        return torch.cat([s.float() for s in reversed(sections)], dim=2)
    return torch.cat([start_latent.float(), *(s.float() for s in sections)], dim=2)
