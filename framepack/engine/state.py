"""Where a job begins (`JobStart`), and the noise each section draws: one function, so that a job that goes on from
another (a resume, a branch, a longer video) draws exactly what an uninterrupted one would have."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..controls import JobInputs
from ..jobs.checkpoint import Checkpoint
from ..settings import Settings


@dataclass(frozen=True, kw_only=True)
class JobStart:
    """What the section loop needs to begin: the settings and inputs, who owns the job, and what was made before as
    a checkpoint in the job's own parts folder (None: nothing, a new job). `notes` are said before sampling."""

    settings: Settings
    inputs: JobInputs
    owner: str
    checkpoint: Checkpoint | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def origin(self) -> dict[str, Any] | None:
        """Where the job came from when it did not start from images alone (a branch, a longer F1 video, a video
        it extends), as its checkpoint says."""
        return self.checkpoint.origin if self.checkpoint is not None else None


def section_noise(generator: torch.Generator, settings: Settings, latent_height: int, latent_width: int) -> torch.Tensor:
    """The noise one section starts from, drawn on the CPU in float32 as FramePack draws it (device-independent)."""
    shape = (1, 16, settings.latent_window_size, latent_height, latent_width)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def replay_noise(settings: Settings, sections: int, latent_height: int, latent_width: int) -> torch.Generator:
    """The noise generator of `settings.seed` after `sections` sections drew theirs."""
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    for _ in range(sections):
        section_noise(generator, settings, latent_height, latent_width)
    return generator
