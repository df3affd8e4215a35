"""Where a job's files go in the outputs folder, what names them, and the OS lock held while a job is worked on.

A job named `<job>` has `<job>.mp4` (its video), `<job>.latents.safetensors`, `<job>.json` (its record, see
`framepack.jobs.record`), while unfinished `<job>.checkpoint.safetensors` and a hidden `.<job>.parts` folder, and
the files that steps after the job derive from it (`<job>.<what>.<ext>`, listed in its record).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..files import TEMPORARY, FileLock

# Job names are file name stems: no folders, no leading dot (hidden files are the app's own).
JOB_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")


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


def job_paths(path: str | Path) -> JobPaths:
    """The files of the job that `path` (its video, record, latents or checkpoint) belongs to."""
    path = Path(path)
    return JobPaths(path.parent, job_name(path))


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

    def derived(self, what: str, suffix: str) -> Path:
        """A file a step after the job derived from it (`<job>.<what><suffix>`); the job's record lists it."""
        return self.output_dir / f"{self.job_id}.{what}{suffix}"

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


class RecordError(ValueError):
    """A job's record, checkpoint or latents cannot be used; the message names the job and says why, in one line."""


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

