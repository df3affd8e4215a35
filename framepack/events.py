"""The events a job yields, in the order it yields them: `Download` while the first run fetches the weights,
`Status` as phases begin, `Progress` per sampler step (or `FrameProgress` per frame of a post-processing step),
`SectionDone` per finished section, and one final `Done` or `Error`. The engine, the queue, the command line and the
page all speak them; they hold data only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Status:
    """A phase of the job began (encoding the prompt, decoding a section, ...)."""

    message: str


@dataclass(frozen=True)
class Progress:
    """One sampler step finished. `section` and `step` count from 1."""

    section: int
    sections: int
    step: int
    steps: int
    frames: int  # frames of video finished before this section
    preview: np.ndarray | None  # latent preview of the step's x0 prediction, uint8 (h, T*w, 3)
    span: tuple[float, float] = (0.0, 0.0)  # the section's time range in the video, seconds

    @property
    def fraction(self) -> float:
        return ((self.section - 1) * self.steps + self.step) / (self.sections * self.steps)


@dataclass(frozen=True)
class SectionDone:
    """A section was sampled, decoded and added to the video at `video_path` (rewritten after every section)."""

    section: int
    sections: int
    video_path: Path
    frames: int
    seconds: float
    latents: torch.Tensor  # what the sampler returned for this section, (1, 16, window, h, w) float32
    cache_counts: dict[str, tuple[int, int]]  # per pass ("positive"/"negative"): (blocks run, blocks skipped)


@dataclass(frozen=True)
class Done:
    """The job ended. `stopped` when a stop was requested; the files then hold the finished sections."""

    video_path: Path | None
    latents_path: Path | None
    frames: int
    seconds: float
    sections_done: int
    stopped: bool
    elapsed: float
    attention: str = "sdpa"  # the attention backend the job ran with
    step_cache: str | None = None  # the step cache method, if any


@dataclass(frozen=True)
class Error:
    """The job failed. `message` is meant for the user; any finished sections are kept on disk."""

    message: str
    exception: BaseException | None = None


@dataclass(frozen=True)
class FrameProgress:
    """A step that works frame by frame (post-processing) finished more frames; `done` counts from 1."""

    stage: str  # what the frames went through, in the user's words ("upscaling x4, interpolating x2")
    done: int
    total: int  # 0 when the total is not known
    fps: float  # frames per second of this step so far

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


@dataclass(frozen=True)
class Download:
    """Model files are downloading before the models load (the first run): bytes `done` of `total`, counting what an
    interrupted download fetched before, and the file being fetched (`files_done` of `files` are in)."""

    done: int
    total: int
    file: str
    files_done: int
    files: int

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 1.0

    def line(self) -> str:
        """"Downloading models: 3.2 of 42.1 GB (file 4 of 22: vae/...)", as the page and the log say it."""
        unit, scale = ("GB", 1e9) if self.total >= 1e8 else ("MB", 1e6)
        where = f" (file {min(self.files_done + 1, self.files)} of {self.files}: {self.file})" if self.file else ""
        return f"Downloading models: {self.done / scale:.1f} of {self.total / scale:.1f} {unit}{where}"


Event = Status | Progress | FrameProgress | Download | SectionDone | Done | Error
