"""File primitives every part of the app writes through: atomic writes, OS file locks and content digests.

Nothing here knows about jobs; `framepack.jobfiles` names a job's files and `framepack.media` writes videos, both
through these.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# What `atomic_path` writes before the rename: `.<file name>.<8 hex digits>.tmp`. A process killed mid-write
# leaves one behind; whoever owns the file's folder removes those nobody is writing.
TEMPORARY = re.compile(r"\.(.+)\.[0-9a-f]{8}\.tmp")


def temporary_path(path: Path) -> Path:
    """Where an atomic write of `path` goes first (see TEMPORARY)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def publish(tmp: Path, path: Path) -> None:
    """Put a finished temporary file in place in one rename."""
    os.chmod(tmp, 0o644)  # some writers create private files; outputs are meant to be shared like any video
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on failure it is removed."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write `data` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks (a video may be larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


if os.name == "nt":
    import msvcrt

    def _try_lock(file: Any) -> None:
        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(file: Any) -> None:
        msvcrt.locking(file.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(file: Any) -> None:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(file: Any) -> None:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)


class FileLock:
    """An OS lock on a file, taken without waiting. The OS releases it when its process ends, however it ends
    (a SIGKILL too), so another process can tell a live holder from a dead one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: Any = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False if another holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+b")  # noqa: SIM115  (held open until released)
        try:
            _try_lock(file)
        except OSError:
            file.close()
            return False
        self._file = file
        return True

    def release(self) -> None:
        if self._file is not None:
            _unlock(self._file)
            self._file.close()
            self._file = None
