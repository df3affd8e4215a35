"""Opening the job store of an outputs folder so that a damaged one never empties the queue without a word.

A store that SQLite cannot read (a damaged header or page), or one emptied to nothing while the folder holds job
records, is moved aside under a dated name and a new one is rebuilt from the job records beside the videos: every
job that made a section is listed again, ended as it was (a job that was running is listed as interrupted, to
retry from its last finished section). Jobs that were only waiting had no record yet: they cannot be rebuilt, and
their copied inputs are left where they are. What was done is said in one line (the log, and the caller's `note`).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from ..jobs.paths import JobPaths
from ..jobs.record import JobRecord, RecordError
from ..jobs.spec import JobSpec
from .store import DB_NAME, QUEUE_DIR, QueuedJob, SqliteJobStore

logger = logging.getLogger(__name__)


def open_store(output_dir: str | Path, busy_timeout: float = 30.0) -> tuple[SqliteJobStore, str | None]:
    """The outputs folder's job store, and a one-line note when it had to be set aside and rebuilt (else None)."""
    output_dir = Path(output_dir)
    path = output_dir / DB_NAME
    problem = store_damage(path)
    if problem == "is empty" and not any(output_dir.glob("*.json")):
        problem = None  # an empty file and no jobs: nothing was lost, it is simply new
    if problem is None:
        return SqliteJobStore(path, busy_timeout), None
    aside = set_aside(path)
    store = SqliteJobStore(path, busy_timeout)
    listed, waiting = rebuild(store, output_dir)
    note = (f"The job store {path} {problem}: it was kept as {aside.name}, and the queue was rebuilt from the job "
            f"records in the outputs folder ({listed} job{'s' * (listed != 1)})")  # fmt: skip
    if waiting:
        note += f"; {waiting} waiting job{'s' * (waiting != 1)} had no record yet, their inputs stay in {QUEUE_DIR}"
    logger.warning(note)
    return store, note + "."


def store_damage(path: Path) -> str | None:
    """What is wrong with the store file at `path`, if anything SQLite or the job table cannot read ("is empty"
    for a file emptied to nothing); None for a sound store or none at all. A store that is only busy is sound."""
    try:
        if not path.exists():
            return None
        if path.stat().st_size == 0 and not path.with_name(path.name + "-wal").exists():
            return "is empty"
        with sqlite3.connect(path, timeout=5.0) as db:
            check = db.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                return f"is damaged ({check[0][0][:80]})"
            db.execute("SELECT * FROM jobs").fetchall()  # every row readable
        return None
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return None  # another process is writing it: busy, not damaged
        return f"cannot be read ({exc})"
    except sqlite3.DatabaseError as exc:
        return f"cannot be read ({exc})"


def set_aside(path: Path) -> Path:
    """Move the store (and its write-ahead log) out of the way under a dated name; returns the new name."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    path.replace(aside)
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            companion.replace(aside.with_name(aside.name + suffix))
    return aside


def rebuild(store: SqliteJobStore, output_dir: Path) -> tuple[int, int]:
    """List again every job that has a record in `output_dir`; returns (jobs listed, waiting jobs that cannot be)."""
    listed = 0
    for manifest in sorted(output_dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
        paths = JobPaths(output_dir, manifest.stem)
        try:
            record = JobRecord.load(paths)
        except RecordError:
            continue  # not a job's record (or a damaged one): nothing to list
        interrupted = record.state == "running"
        when = manifest.stat().st_mtime
        job = QueuedJob(
            id=manifest.stem, owner=record.owner, spec=_spec(output_dir, manifest.stem, record),
            variant=record.settings.get("variant", "original"), state="stopped" if interrupted else record.state,
            progress=record.sections_done / max(1, record.sections), created=when, finished=when,
            video=record.video if paths.video.exists() else None, attempts=1,
            message="Interrupted; retry to go on from its last finished section" if interrupted else "Rebuilt from its record",
        )  # fmt: skip
        store.add(job)
        listed += 1
    inputs = output_dir / QUEUE_DIR
    waiting = sum(1 for folder in inputs.iterdir() if folder.is_dir() and store.get(folder.name) is None) if inputs.is_dir() else 0
    return listed, waiting


def _spec(output_dir: Path, job_id: str, record: JobRecord) -> JobSpec:
    """A generate spec with the job's settings and the input copies still kept for it (`<name>/<file>`); a retry
    goes on from the job's checkpoint, or makes it again from these."""
    kept = output_dir / QUEUE_DIR / job_id
    files = {}
    for folder in sorted(kept.iterdir()) if kept.is_dir() else ():
        inside = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
        if len(inside) == 1:
            files[folder.name] = f"{folder.name}/{inside[0].name}"
    return JobSpec("generate", settings=record.settings, files=files)
