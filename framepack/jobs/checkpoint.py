"""A job's checkpoint (the state to go on from after its last finished section) and its latents files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..files import atomic_path
from ..settings import Settings
from .paths import LOCAL_USER, JobPaths, RecordError, is_job_name

# Metadata keys that describe a job's inputs and origin in its checkpoint and latents files (`JobImages`, the
# LoRAs, and the job or video it was made from).
IMAGE_METADATA = ("keyframe_times", "loras", "origin")


def load_latents(path: str | Path, key: str = "latents") -> torch.Tensor:
    with safe_open(str(path), "pt") as f:
        return f.get_tensor(key)


def save_latents(
    path: str | Path, latents: torch.Tensor, images: dict[str, torch.Tensor] | None = None, metadata: dict[str, str] | None = None
) -> Path:
    """Save the video's latents (1, 16, T, h, w) as float32 under key `latents`, and beside them the job's
    (resized) images with their `metadata` when given: with those, a finished F1 video can be extended."""
    tensors = {"latents": latents.float().contiguous().cpu()}
    tensors.update({name: image.contiguous().cpu() for name, image in (images or {}).items()})
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


@dataclass(kw_only=True)
class Checkpoint:
    """What a job needs to go on after its last finished section, exactly as if it had not stopped.

    The sections' latents are in the job's parts folder (one file each, written once). `rng_state` is the noise
    generator after the last section's draw, `open_frames` the float frames a later section still blends into,
    `segments` the encoded final frames (file names in the parts folder, time order), `images` the job's
    resized images (`JobImages.to_tensors`, with `image_metadata`), `owner` who may resume it.
    """

    job_id: str
    settings: dict[str, Any]
    sections_done: int
    rng_state: torch.Tensor
    open_frames: torch.Tensor
    final_frames: int
    segments: list[str]
    images: dict[str, torch.Tensor]
    owner: str = LOCAL_USER
    image_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> dict[str, Any] | None:
        """Where the job came from, when it did not start from images alone (see `framepack.engine.starts`)."""
        return json.loads(self.image_metadata.get("origin", "null"))

    @property
    def lora_entries(self) -> list[dict[str, Any]]:
        """The LoRAs the job applies, as its record lists them (name, path, SHA-256, weight)."""
        return json.loads(self.image_metadata.get("loras", "[]"))

    def save(self, path: str | Path) -> Path:
        open_frames = self.open_frames.float() if self.open_frames is not None else torch.zeros(1, 3, 0, 1, 1)
        half = open_frames.half()
        if torch.equal(half.float(), open_frames):
            open_frames = half  # frames of a float16 VAE (the GPU's): half the bytes, nothing lost
        tensors = {
            "rng_state": self.rng_state.contiguous(),
            "open_frames": open_frames.contiguous(),
            **{name: image.contiguous() for name, image in self.images.items()},
        }
        meta = {
            **self.image_metadata,
            "job_id": self.job_id,
            "settings": json.dumps(self.settings),
            "sections_done": str(self.sections_done),
            "final_frames": str(self.final_frames),
            "segments": json.dumps(self.segments),
            "owner": self.owner,
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
        rng_state, open_frames = tensors.pop("rng_state"), tensors.pop("open_frames").float()
        if "image" in tensors:  # written before a job had more images than its start image
            tensors["start_image"] = tensors.pop("image")
        return cls(
            job_id=meta["job_id"],
            settings=json.loads(meta["settings"]),
            sections_done=int(meta["sections_done"]),
            rng_state=rng_state,
            open_frames=open_frames,
            final_frames=int(meta["final_frames"]),
            segments=json.loads(meta["segments"]),
            images=tensors,
            owner=meta.get("owner", LOCAL_USER),
            image_metadata={key: meta[key] for key in IMAGE_METADATA if key in meta},
        )



def checkpoint_owner(paths: JobPaths) -> str | None:
    """Who a job belongs to by its checkpoint (before its record's first write); None without a readable one."""
    if not paths.checkpoint.is_file():
        return None
    try:
        with safe_open(str(paths.checkpoint), "pt") as f:
            return (f.metadata() or {}).get("owner", LOCAL_USER)
    except (OSError, SafetensorError):
        return None


def read_checkpoint(paths: JobPaths) -> Checkpoint:
    """The job's checkpoint, checked: it loads, its settings are valid and the files it needs are there; RecordError
    naming the job otherwise."""
    if not is_job_name(paths.job_id) or not paths.checkpoint.is_file():
        raise RecordError(f"{paths.job_id} has nothing to resume (the job is done, or no section of it finished)")
    try:
        checkpoint = Checkpoint.load(paths.checkpoint)
        Settings.from_dict(checkpoint.settings)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:  # a SettingsError is a ValueError
        raise RecordError(
            f"the checkpoint of {paths.job_id} is damaged or was written by another version of the app "
            f"({type(exc).__name__}); its video and latents so far are kept, but it cannot be resumed"
        ) from exc
    needed = [paths.section_latents(i) for i in range(checkpoint.sections_done)]
    needed += [paths.parts_dir / name for name in checkpoint.segments]
    if missing := [path.name for path in needed if not path.is_file()]:
        raise RecordError(f"{paths.job_id} cannot be resumed: {len(missing)} of its saved parts are missing")
    return checkpoint
