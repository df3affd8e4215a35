"""The files a job leaves in the outputs folder, each written atomically so that any moment's state is usable."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # some writers create private files; outputs are meant to be shared like any video
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def job_name(path: str | Path) -> str:
    """The job a file of the outputs folder belongs to: its video, record, latents or checkpoint."""
    name = Path(path).name
    for suffix in (".checkpoint.safetensors", ".latents.safetensors", ".json", ".mp4"):
        name = name.removesuffix(suffix)
    return name


def new_job_id() -> str:
    """A sortable, collision-free job name: time of day plus random bits (two app instances may share a folder)."""
    return time.strftime("%y%m%d_%H%M%S") + "_" + secrets.token_hex(3)


@dataclass(frozen=True)
class JobPaths:
    """Where one job's files go."""

    output_dir: Path
    job_id: str

    @property
    def video(self) -> Path:
        return self.output_dir / f"{self.job_id}.mp4"

    @property
    def latents(self) -> Path:
        return self.output_dir / f"{self.job_id}.latents.safetensors"

    @property
    def manifest(self) -> Path:
        return self.output_dir / f"{self.job_id}.json"

    @property
    def checkpoint(self) -> Path:
        """The state to resume from; kept until the job is done."""
        return self.output_dir / f"{self.job_id}.checkpoint.safetensors"

    def section_latents(self, index: int) -> Path:
        """The latents section `index` (generation order) added to the video, kept for a resume."""
        return self.parts_dir / f"section_{index:05d}.safetensors"

    @property
    def parts_dir(self) -> Path:
        """The encoded video segments while the job is unfinished (a resume needs them); removed when it is done."""
        return self.output_dir / f".{self.job_id}.parts"


def load_latents(path: str | Path, key: str = "latents") -> torch.Tensor:
    with safe_open(str(path), "pt") as f:
        return f.get_tensor(key)


def save_latents(path: str | Path, latents: torch.Tensor, start_image: torch.Tensor | None = None) -> Path:
    """Save the video's latents (1, 16, T, h, w) as float32 under key `latents`, and the (resized) start image
    under `start_image` when given: with both, a finished F1 video can be extended."""
    tensors = {"latents": latents.float().contiguous().cpu()}
    if start_image is not None:
        tensors["start_image"] = start_image.contiguous().cpu()
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return path


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


@dataclass
class Checkpoint:
    """What a job needs to go on after its last finished section, exactly as if it had not stopped.

    The sections' latents are in the job's parts folder (one file each, written once). `rng_state` is the noise
    generator after the last section's draw, `open_frames` the float frames a later section still blends into,
    `segments` the encoded final frames (file names in the parts folder, time order), `image` the resized
    start image.
    """

    job_id: str
    settings: dict[str, Any]
    sections_done: int
    rng_state: torch.Tensor
    open_frames: torch.Tensor
    final_frames: int
    segments: list[str]
    image: torch.Tensor

    def save(self, path: str | Path) -> Path:
        open_frames = self.open_frames.float()
        half = open_frames.half()
        if torch.equal(half.float(), open_frames):
            open_frames = half  # frames of a float16 VAE (the GPU's): half the bytes, nothing lost
        tensors = {
            "rng_state": self.rng_state.contiguous(),
            "open_frames": open_frames.contiguous(),
            "image": self.image.contiguous(),
        }
        meta = {
            "job_id": self.job_id,
            "settings": json.dumps(self.settings),
            "sections_done": str(self.sections_done),
            "final_frames": str(self.final_frames),
            "segments": json.dumps(self.segments),
        }
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    def save_after(self, path: str | Path, segments: list[Path]) -> Path:
        """Save once the video update with these segment files is on disk."""
        self.segments = [segment.name for segment in segments]
        return self.save(path)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        tensors["open_frames"] = tensors["open_frames"].float()
        return cls(
            job_id=meta["job_id"],
            settings=json.loads(meta["settings"]),
            sections_done=int(meta["sections_done"]),
            final_frames=int(meta["final_frames"]),
            segments=json.loads(meta["segments"]),
            **tensors,
        )


def settings_of_output(path: str | Path) -> dict[str, Any]:
    """The settings a previous output was made with, from its manifest (.json) or its video's metadata (.mp4)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            return json.loads(path.read_text(encoding="utf-8"))["settings"]
        import av  # only needed here; the rest of this module writes files without it

        with av.open(str(path)) as container:
            return json.loads(container.metadata["comment"])["framepack"]
    except (OSError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:  # av's errors are OSErrors
        raise ValueError(f"{path.name} holds no FramePack settings ({type(exc).__name__})") from None
