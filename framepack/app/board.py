"""What the Queue tab and its gallery show of a job beyond its row in the store: a thumbnail (the last frame of its
video), the real progress of a stopped job, and the time left, estimated from the section times jobs' records
measured (never invented: with nothing measured the estimate is "unknown").

A thumbnail is made once per version of a job's video and kept with the job's queued inputs (`.queue/<job>/`, so
it goes when the job is deleted). The page never reads the outputs folder: it gets a link in Gradio's cache under a
name derived from a secret of this app, made only for the jobs the viewer may see.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..jobs.paths import JobPaths, is_job_name
from ..jobs.record import JobRecord, RecordError
from ..media.thumbnails import write_thumbnail
from ..queue.store import QueuedJob, input_folder
from ..settings import Settings, SettingsError
from .views import PLAYABLE, QUEUE_COLUMNS, queue_row

THUMBNAIL = "thumbnail.jpg"
# The Queue tab's table: the store's row with a picture first and the time left after the progress.
BOARD_COLUMNS = ["Picture", *QUEUE_COLUMNS[:3], "Time left", *QUEUE_COLUMNS[3:]]
BOARD_TYPES = ["markdown", *("str" for _ in BOARD_COLUMNS[1:])]
# Shares of the page's width: no header wraps and the message column ends inside the table (see the CSS's font size).
BOARD_WIDTHS = ["9%", "11%", "11%", "7%", "8%", "6%", "6%", "12%", "9%", "12%", "9%"]
# Where the page fetches a file of Gradio's cache.
FILE_ROUTE = "/gradio_api/file="
# The kinds that sample sections with the video model (whose section times say how long they take).
SAMPLING_KINDS = ("generate", "extend", "resume", "branch", "add_seconds")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shown:
    """What the board shows of one job beyond its row: its progress (the record's, for a stopped job), the seconds
    left (None: unknown; only for waiting and running jobs) and its thumbnail's path in Gradio's cache (or None)."""

    progress: float
    seconds_left: float | None
    thumbnail: str | None


def record_name(job: QueuedJob) -> str | None:
    """The job whose record says how far this job is: its own, or for a resume its source's (None: it has none)."""
    if job.spec.kind == "resume":
        return job.spec.source
    return job.id if job.spec.kind in SAMPLING_KINDS else None


def _settings(job: QueuedJob, record: JobRecord | None) -> Settings | None:
    try:
        return Settings.from_dict(job.spec.settings or (record.settings if record else {}))
    except (SettingsError, TypeError):
        return None


def _pace_key(settings: Settings) -> tuple:
    """Sections of one key take the same time per sampler step: the model, the picture's size, the window, the step
    cache (TeaCache skips steps' work) and whether real CFG doubles each step. (LoRAs are fused: no cost per step.)"""
    cache = settings.cache_method if settings.use_teacache else None
    return (settings.variant, settings.resolution, settings.height, settings.width, settings.latent_window_size, cache,
            settings.cfg != 1.0)  # fmt: skip


def step_paces(jobs: list[QueuedJob], records: dict[str, JobRecord | None]) -> dict[tuple, float]:
    """Measured seconds per sampler step of one section, by `_pace_key`; the first job listed that measured a key
    gives it (the store lists the running jobs first, then the newest ended ones)."""
    paces: dict[tuple, float] = {}
    for job in jobs:
        record = records.get(job.id)
        settings = _settings(job, record)
        if record is None or not record.section_seconds or settings is None:
            continue
        mean = sum(record.section_seconds) / len(record.section_seconds)
        paces.setdefault(_pace_key(settings), mean / settings.steps)
    return paces


def work_left(job: QueuedJob, record: JobRecord | None, paces: dict[tuple, float]) -> float | None:
    """Seconds the job still needs once it runs (None: nothing measured says)."""
    settings = _settings(job, record)
    if settings is None or job.spec.kind not in SAMPLING_KINDS:
        return None
    if job.state == "running":
        sections, done = (record.sections if record and record.sections else settings.num_sections), job.progress
    elif record is not None and record.sections:  # a resume, or a stopped job queued again: what its record has left
        sections, done = record.sections, record.sections_done / record.sections
    elif job.spec.kind in ("generate", "extend"):
        sections, done = settings.num_sections, 0.0
    else:
        return None
    if job.state == "running" and record is not None and record.section_seconds:  # its own sections, measured
        per_section = sum(record.section_seconds) / len(record.section_seconds)
    elif (pace := paces.get(_pace_key(settings))) is not None:
        per_section = pace * settings.steps
    else:
        return None
    return per_section * sections * max(0.0, 1.0 - done)


def time_left(jobs: list[QueuedJob], records: dict[str, JobRecord | None]) -> dict[str, float | None]:
    """Seconds left for each waiting or running job of `jobs` (the whole line, in line order), None where unknown. A
    waiting job waits for the jobs of its model ahead of it, shared among the workers running that model now."""
    paces = step_paces(jobs, records)
    left: dict[str, float | None] = {}
    for variant in {job.variant for job in jobs}:
        line = [job for job in jobs if job.variant == variant and job.active]
        workers = max(1, sum(job.state == "running" for job in line))
        ahead: float | None = 0.0
        for job in line:
            own = work_left(job, records.get(job.id), paces)
            if job.state == "running":
                left[job.id] = own
            else:
                left[job.id] = None if ahead is None or own is None else ahead / workers + own
            ahead = None if ahead is None or own is None else ahead + own
    return left


def clock_text(seconds: float | None) -> str:
    """An estimate as the Queue tab says it."""
    if seconds is None:
        return "unknown"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes >= 60:
        return f"about {minutes // 60} h {minutes % 60:02d} min"
    return f"about {minutes}:{seconds:02d}"


class Board:
    """Thumbnails and estimates for the jobs of one outputs folder. `cache_dir` is Gradio's cache, where the page's
    links to thumbnails go (set once the page exists)."""

    def __init__(self, output_dir: str | Path, cache_dir: str | Path | None = None):
        self.output_dir = Path(output_dir)
        self.cache_dir = cache_dir
        self._secret = secrets.token_bytes(32)  # names the page's links: no one can guess another job's
        self._records: dict[str, tuple[int, JobRecord | None]] = {}  # by job name: (its record's mtime, the record)

    def record(self, name: str | None) -> JobRecord | None:
        """A job's record, read again only when it changed."""
        if not name or not is_job_name(name):
            return None
        paths = JobPaths(self.output_dir, name)
        try:
            stamp = paths.manifest.stat().st_mtime_ns
        except OSError:
            return None
        cached = self._records.get(name)
        if cached is None or cached[0] != stamp:
            try:
                cached = (stamp, JobRecord.load(paths))
            except RecordError:
                cached = (stamp, None)
            self._records[name] = cached
        return cached[1]

    def show(self, jobs: list[QueuedJob], line: list[QueuedJob]) -> dict[str, Shown]:
        """What to show of `jobs` (those the viewer sees); `line` is every job of the store, for the estimates."""
        records = {job.id: self.record(record_name(job)) for job in line}
        left = time_left(line, records)
        shown = {}
        for job in jobs:
            record = records.get(job.id) or self.record(record_name(job))
            progress = job.progress
            if job.state == "stopped" and record is not None and record.sections:
                progress = record.sections_done / record.sections  # what a retry keeps: the finished sections
            shown[job.id] = Shown(progress, left.get(job.id), self.thumbnail(job, record))
        return shown

    def video(self, job: QueuedJob, record: JobRecord | None) -> Path | None:
        """The job's video as it is now (a running job's grows section by section; a post-processing job's may be a
        GIF or a MOV)."""
        name = job.video or (record.video if record is not None else None)
        if not name or Path(name).name != name:
            return None
        path = self.output_dir / name
        return path if path.is_file() else None

    def thumbnail(self, job: QueuedJob, record: JobRecord | None) -> str | None:
        """The page's link to the thumbnail of the job's video, made if the video is newer than it; None without a
        video a browser plays (a post-processed GIF or MOV has none) or a cache to link into."""
        video = self.video(job, record)
        if video is None or video.suffix.lower() not in PLAYABLE or self.cache_dir is None:
            return None
        kept = input_folder(self.output_dir, job.id) / THUMBNAIL
        try:
            stamp = video.stat().st_mtime_ns
            if not kept.is_file() or kept.stat().st_mtime_ns < stamp:
                write_thumbnail(video, kept)
        except (OSError, ValueError) as exc:  # a video being replaced, or one PyAV cannot read: no picture this time
            logger.info("No thumbnail for job %s: %s", job.id, exc)
            return None
        name = hmac.new(self._secret, f"{job.id}:{stamp}".encode(), hashlib.sha256).hexdigest()[:40]
        link = Path(self.cache_dir) / "framepack-thumbnails" / name / f"{job.id}.jpg"
        if not link.is_file():
            link.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(kept, link)
            except OSError:
                shutil.copyfile(kept, link)
        return str(link)


def board_row(job: QueuedJob, shown: Shown) -> list[str]:
    """A job as a row of the Queue tab's table."""
    row = queue_row(job, shown.progress)
    picture = f"![{job.id}]({FILE_ROUTE}{shown.thumbnail})" if shown.thumbnail else ""
    left = clock_text(shown.seconds_left) if job.active else ""
    return [picture, *row[:3], left, *row[3:]]


def gallery_items(jobs: list[QueuedJob], shown: dict[str, Shown]) -> list[tuple[str, str]]:
    """The finished jobs that have a thumbnail, newest first, as (thumbnail, caption); the caption starts with the
    job's id."""
    items = []
    for job in jobs:
        if job.state == "done" and (thumbnail := shown[job.id].thumbnail) is not None:
            items.append((thumbnail, f"{job.id} · {queue_row(job)[5][:40]}"))
    return items
