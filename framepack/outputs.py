"""The files a job leaves in the outputs folder, each written atomically so that any moment's state is usable."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
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
    def parts_dir(self) -> Path:
        """Scratch space for video segments while the job runs; removed when it ends."""
        return self.output_dir / f".{self.job_id}.parts"


def save_latents(path: str | Path, latents: torch.Tensor, metadata: dict[str, str] | None = None) -> Path:
    """Save the video's latents (1, 16, T, h, w) as float32 under key `latents`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({"latents": latents.float().contiguous().cpu()}, str(tmp), metadata=metadata)
    return path
