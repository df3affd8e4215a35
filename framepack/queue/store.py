"""The job store: every job a row that outlives the app, its inputs copied beside it.

A job is data, not a closure: what to run (`JobSpec`: its kind, settings, input files and options) and where
it stands (`QueuedJob`: state, place in line, progress, owner, times, output). `SqliteJobStore` keeps them in
one SQLite file in the outputs folder (the standard library's; nothing to install or run); anything with the
`JobStore` methods can take its place. The inputs of a job live in `<outputs>/.queue/<job id>/`, so a queued job
never points at an upload that is gone.

Every process that runs jobs from a store (an app, `queue run`, `batch`) is a "front" and holds an OS lock
(`FrontLock`) while it lives: the OS drops it when the process dies, however it dies, so the next front can tell
a job that is running elsewhere from one whose process was killed, and put the latter back in line.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from ..files import FileLock
from ..jobs.spec import JobSpec

# A job's life: queued -> running -> done | stopped | failed; cancelled while queued is "stopped" too.
ACTIVE = ("queued", "running")


DB_NAME = "jobs.sqlite3"


QUEUE_DIR = ".queue"


@dataclass(frozen=True)
class QueuedJob:
    """A job in the store: its spec and where it stands. `variant` is the model it needs; `front` the process
    that must run it (one whose page follows it live) or None for any; `position` orders the line (lower runs
    first); `progress` is 0..1; `worker` names the worker that has it; `video` is its video's file name."""

    id: str
    owner: str
    spec: JobSpec
    variant: str = "original"
    front: str | None = None
    state: str = "queued"
    position: float = 0.0
    progress: float = 0.0
    message: str = ""
    worker: str | None = None
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    video: str | None = None
    attempts: int = 0
    stop_requested: bool = False  # by another process (`queue cancel`): the one running it stops at its next step

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


class JobStore(Protocol):
    """What the queue needs of a store; `SqliteJobStore` is the embedded one."""

    def add(self, job: QueuedJob) -> QueuedJob: ...
    def get(self, job_id: str) -> QueuedJob | None: ...
    def list(self, owner: str | None = None, active: bool = False) -> list[QueuedJob]: ...
    def update(self, job_id: str, **fields: Any) -> QueuedJob | None: ...
    def claim(self, worker: str, variant: str, front: str) -> QueuedJob | None: ...
    def recover(self, alive: Callable[[str], bool]) -> list[QueuedJob]: ...
    def move(self, job_id: str, steps: int) -> bool: ...
    def delete(self, job_id: str) -> bool: ...
    def close(self) -> None: ...


_COLUMNS = ("id", "owner", "spec", "variant", "front", "state", "position", "progress", "message", "worker",
            "created", "started", "finished", "video", "attempts", "stop_requested")  # fmt: skip


class SqliteJobStore:
    """Jobs in one SQLite file (write-ahead log, one connection per thread). Safe for the app's threads and for
    several processes on one machine sharing the outputs folder; claiming a job is one transaction."""

    def __init__(self, path: str | Path, busy_timeout: float = 30.0):
        """`busy_timeout`: how long a write waits for another process's before it fails with "database is locked"."""
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []  # every thread's connection, to close them all
        self._opened_lock = threading.Lock()
        with self._transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, owner TEXT NOT NULL, spec TEXT NOT NULL, "
                "variant TEXT NOT NULL, front TEXT, state TEXT NOT NULL, position REAL NOT NULL, "
                "progress REAL NOT NULL, message TEXT NOT NULL, worker TEXT, created REAL NOT NULL, started REAL, "
                "finished REAL, video TEXT, attempts INTEGER NOT NULL, stop_requested INTEGER NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS jobs_line ON jobs (state, position)")

    @classmethod
    def in_folder(cls, output_dir: str | Path, busy_timeout: float = 30.0) -> SqliteJobStore:
        return cls(Path(output_dir) / DB_NAME, busy_timeout)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # check_same_thread off only so that `close` can close every thread's connection; each is used by
            # the thread that opened it.
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
            with self._opened_lock:
                self._opened.append(connection)
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")  # the write lock at once: two claimers never take the same job
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def add(self, job: QueuedJob) -> QueuedJob:
        """Store a new job at the end of the line (its position and creation time are set here)."""
        with self._transaction() as db:
            last = db.execute("SELECT MAX(position) FROM jobs").fetchone()[0]
            job = replace(job, position=(last or 0.0) + 1.0, created=job.created or time.time())
            db.execute(f"INSERT INTO jobs VALUES ({', '.join('?' * len(_COLUMNS))})", _row(job))
        return job

    def get(self, job_id: str) -> QueuedJob | None:
        row = self._connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, owner: str | None = None, active: bool = False) -> list[QueuedJob]:
        """Jobs in line order (running, then queued by position, then the rest newest first), or one owner's;
        `active`: only the running and queued ones (the line, without the history)."""
        conditions, args = [], []
        if owner is not None:
            conditions, args = ["owner = ?"], [owner]
        if active:
            conditions.append("state IN ('queued', 'running')")
        query = "SELECT * FROM jobs" + (f" WHERE {' AND '.join(conditions)}" if conditions else "")
        jobs = [_job(row) for row in self._connection().execute(query, args)]
        active = sorted((j for j in jobs if j.active), key=lambda j: (j.state != "running", j.position))
        ended = sorted((j for j in jobs if not j.active), key=lambda j: j.finished or j.created, reverse=True)
        return active + ended

    def update(self, job_id: str, **fields: Any) -> QueuedJob | None:
        """Change some fields of a job; returns it as it is now (None if there is no such job)."""
        unknown = set(fields) - set(_COLUMNS[1:])
        if unknown:
            raise ValueError(f"no such job fields: {', '.join(sorted(unknown))}")
        if "spec" in fields:
            fields["spec"] = fields["spec"].to_json()
        with self._transaction() as db:
            if fields:
                assignments = ", ".join(f"{name} = ?" for name in fields)
                db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id))
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def claim(self, worker: str, variant: str, front: str) -> QueuedJob | None:
        """Take the first queued job of `variant` that any front or `front` may run: it becomes `worker`'s and
        running, in one transaction (two workers, in one process or two, never take the same job)."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE state = 'queued' AND variant = ? AND (front IS NULL OR front = ?) "
                "ORDER BY position LIMIT 1",
                (variant, front),
            ).fetchone()  # fmt: skip
            if row is None:
                return None
            job = _job(row)
            job = replace(job, state="running", worker=worker, started=time.time(), message="", attempts=job.attempts + 1,
                          stop_requested=False)  # fmt: skip
            db.execute(
                "UPDATE jobs SET state = ?, worker = ?, started = ?, attempts = ?, message = ?, stop_requested = 0 "
                "WHERE id = ?",
                (job.state, job.worker, job.started, job.attempts, job.message, job.id),
            )  # fmt: skip
        return job

    def recover(self, alive: Callable[[str], bool]) -> list[QueuedJob]:
        """Put back in line the jobs whose front died while they ran (at the head of the line, where they were
        taken from), and free the waiting jobs of dead fronts for any front; returns the jobs put back."""
        recovered = []
        with self._transaction() as db:
            first = db.execute("SELECT MIN(position) FROM jobs").fetchone()[0] or 0.0
            for row in db.execute("SELECT * FROM jobs WHERE state IN ('queued', 'running')").fetchall():
                job = _job(row)
                front = front_of(job.worker) if job.state == "running" else job.front
                if front is None or alive(front):
                    continue
                if job.state == "running" and job.stop_requested:  # cancelled while its process was down
                    db.execute(
                        "UPDATE jobs SET state = 'stopped', front = NULL, finished = ?, message = 'Stopped' WHERE id = ?",
                        (time.time(), job.id),
                    )  # fmt: skip
                elif job.state == "running":
                    first -= 1.0
                    db.execute(
                        "UPDATE jobs SET state = 'queued', worker = NULL, front = NULL, position = ?, message = ? "
                        "WHERE id = ?",
                        (first, "Interrupted: it goes on from its last finished section", job.id),
                    )  # fmt: skip
                    recovered.append(job)
                else:
                    db.execute("UPDATE jobs SET front = NULL WHERE id = ?", (job.id,))
        return recovered

    def move(self, job_id: str, steps: int) -> bool:
        """Move a queued job `steps` places up (negative) or down the line; False if it is not queued."""
        with self._transaction() as db:
            line = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY position")]
            if job_id not in line:
                return False
            index = line.index(job_id)
            target = max(0, min(len(line) - 1, index + steps))
            line.insert(target, line.pop(index))
            for position, other in enumerate(line, start=1):
                db.execute("UPDATE jobs SET position = ? WHERE id = ?", (float(position), other))
        return True

    def delete(self, job_id: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def close(self) -> None:
        """Close every thread's connection (a thread that uses the store again opens a new one)."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()
        self._local = threading.local()


def _row(job: QueuedJob) -> tuple[Any, ...]:
    values = {**{name: getattr(job, name) for name in _COLUMNS}, "spec": job.spec.to_json()}
    return tuple(values[name] for name in _COLUMNS)


def _job(row: tuple[Any, ...]) -> QueuedJob:
    values = dict(zip(_COLUMNS, row))
    values["spec"] = JobSpec.from_json(values["spec"])
    values["stop_requested"] = bool(values["stop_requested"])
    return QueuedJob(**values)


def input_folder(output_dir: str | Path, job_id: str) -> Path:
    """Where a queued job's input files are kept (removed with the job)."""
    return Path(output_dir) / QUEUE_DIR / job_id


def remove_inputs(output_dir: str | Path, job_id: str) -> None:
    shutil.rmtree(input_folder(output_dir, job_id), ignore_errors=True)


def front_of(worker: str | None) -> str | None:
    """The front a worker belongs to: workers are named "<front>/<device or number>"."""
    return worker.split("/", 1)[0] if worker else None


def front_alive(output_dir: str | Path, worker: str | None) -> bool:
    """Whether the front a worker belongs to still runs, seen from any process."""
    front = front_of(worker)
    return front is not None and _holds_lock(Path(output_dir) / QUEUE_DIR / "fronts" / f"{front}.lock")


def _holds_lock(path: Path) -> bool:
    other = FileLock(path)
    if not other.path.exists():
        return False
    if not other.acquire():
        return True
    other.release()
    other.path.unlink(missing_ok=True)  # a dead front's file: nobody needs it any more
    return False


class FrontLock:
    """The lock a front holds while it lives: `<outputs>/.queue/fronts/<id>.lock`, an OS lock (as `JobLock`)."""

    def __init__(self, output_dir: str | Path):
        self.folder = Path(output_dir) / QUEUE_DIR / "fronts"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}".replace("/", "_")
        self._lock = FileLock(self.folder / f"{self.id}.lock")
        if not self._lock.acquire():
            raise RuntimeError(f"cannot lock {self._lock.path}")

    def alive(self, front: str) -> bool:
        """Whether the front `front` still runs (holds its lock); this front always does."""
        return front == self.id or _holds_lock(self.folder / f"{front}.lock")

    def release(self) -> None:
        self._lock.release()
        self._lock.path.unlink(missing_ok=True)

