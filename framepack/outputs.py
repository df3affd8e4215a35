"""The files a job leaves in the outputs folder, each written atomically so that any moment's state is usable."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .files import TEMPORARY, FileLock, atomic_path, publish, temporary_path, write_json  # noqa: F401  (re-exported)


# Job names are file name stems: no folders, no leading dot (hidden files are the app's own).
JOB_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")
# Metadata keys that describe a job's inputs and origin in its checkpoint and latents files (`JobImages`, the
# LoRAs, and the job or video it was made from).
IMAGE_METADATA = ("keyframe_times", "loras", "origin")
# The owner of jobs made by the command line, or by the app when it serves only this machine without logins.
LOCAL_USER = "local"


def is_job_name(name: str) -> bool:
    """Whether `name` can name a job's files (so an uploaded file's name cannot reach outside the folder)."""
    return bool(JOB_NAME.fullmatch(name)) and not name.endswith(".")


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

    def temporaries(self) -> list[Path]:
        """Unfinished atomic writes of this job's files, in the outputs folder and its parts folder."""
        own = {self.video.name, self.latents.name, self.manifest.name, self.checkpoint.name}
        found = [p for p in _listdir(self.output_dir) if (m := TEMPORARY.fullmatch(p.name)) and m.group(1) in own]
        return found + [p for p in _listdir(self.parts_dir) if TEMPORARY.fullmatch(p.name)]


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


class JobLock(FileLock):
    """Held while a job is worked on: an OS lock on a file in the job's parts folder, so a resume or an app start
    can tell a live job's files from the ones a killed process left behind; and a job cannot run twice at once,
    from two tabs or two processes sharing the outputs folder.
    """

    def __init__(self, paths: JobPaths):
        super().__init__(paths.parts_dir / "lock")


def tidy_job(paths: JobPaths) -> None:
    """Remove the unfinished atomic writes of a job nobody is working on (the caller holds its lock)."""
    for path in paths.temporaries():
        path.unlink(missing_ok=True)


def remove_parts_if_unneeded(paths: JobPaths) -> None:
    """The parts folder serves only a resume: without a checkpoint it is of no use (call after the lock is
    released: Windows cannot remove an open file)."""
    if not paths.checkpoint.exists():
        shutil.rmtree(paths.parts_dir, ignore_errors=True)


@contextlib.contextmanager
def working_on(paths: JobPaths) -> Iterator[None]:
    """Hold the job's lock while the body works on its files; raises `JobBusyError` if someone else is.

    On entry, what a killed process left of the job is removed; on exit, the parts folder goes unless a
    checkpoint still needs it.
    """
    lock = JobLock(paths)
    if not lock.acquire():
        raise JobBusyError(f"{paths.job_id} is being worked on already (in this app or another process)")
    try:
        tidy_job(paths)
        yield
    finally:
        lock.release()
        remove_parts_if_unneeded(paths)


class JobBusyError(RuntimeError):
    """The job is running elsewhere: in another tab of this app or in another process."""


def sweep_outputs(output_dir: str | Path) -> int:
    """Tidy every job of the folder that nobody is working on (at app start); returns how many were tidied."""
    output_dir = Path(output_dir)
    jobs = set()
    for entry in _listdir(output_dir):
        if entry.is_dir() and entry.name.startswith(".") and entry.name.endswith(".parts"):
            jobs.add(entry.name[1:].removesuffix(".parts"))
        elif match := TEMPORARY.fullmatch(entry.name):
            jobs.add(job_name(match.group(1)))
    tidied = 0
    for job in sorted(jobs):
        if not is_job_name(job):
            continue
        paths = JobPaths(output_dir, job)
        try:
            with working_on(paths):
                tidied += 1
        except JobBusyError:
            continue
    return tidied


def job_owner(paths: JobPaths) -> str | None:
    """Who the job belongs to, from its record (or its checkpoint, before the record's first write); None if
    there is no such job. Jobs recorded before owners were recorded belong to the local user."""
    if paths.manifest.is_file():
        try:
            return json.loads(paths.manifest.read_text(encoding="utf-8")).get("owner", LOCAL_USER)
        except (OSError, ValueError, AttributeError):
            return None
    if paths.checkpoint.is_file():
        try:
            with safe_open(str(paths.checkpoint), "pt") as f:
                return f.metadata().get("owner", LOCAL_USER)
        except (OSError, SafetensorError):
            return None
    return None


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


@dataclass
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


def settings_of_output(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings a previous output was made with, and what else its record says of the job: `inputs` (the
    images' names, SHA-256 and keyframe times) and `loras` (names, SHA-256, weights), when recorded. From its
    manifest (.json) or its video's metadata (.mp4)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            saved = json.loads(path.read_text(encoding="utf-8"))
        else:
            import av  # only needed here; the rest of this module writes files without it

            with av.open(str(path)) as container:
                saved = json.loads(container.metadata["comment"])
                saved["settings"] = saved.pop("framepack")
        settings = saved["settings"]
        extras = {"inputs": saved.get("inputs") or {}, "loras": saved.get("loras") or []}
        if not isinstance(settings, dict) or not isinstance(extras["inputs"], dict) or not isinstance(extras["loras"], list):
            raise TypeError("not a FramePack record")
        return settings, extras
    except (OSError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:  # av's errors are OSErrors
        raise ValueError(f"{path.name} holds no FramePack settings ({type(exc).__name__})") from None
