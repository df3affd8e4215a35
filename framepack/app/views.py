"""How jobs look on the page: the progress bar, the frames line, messages, the page updates for each job event, the
Queue tab's rows, and the page's own copies of videos (the outputs folder is never served)."""

import html
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from ..events import Done, Download, Error, FrameProgress, Progress, SectionDone, Status
from ..queue.front import JobEvent, Waiting
from ..queue.store import QueuedJob
from ..settings import FPS, Settings

CSS = """
.fp-progress { display: flex; flex-direction: column; gap: 6px; padding: 4px 0; }
.fp-progress-text { font-size: 0.95em; }
.fp-progress-track { height: 12px; border-radius: 6px; background: var(--neutral-200, #e5e7eb); overflow: hidden; }
.fp-progress-fill { height: 100%; background: var(--color-accent, #f97316); transition: width 0.2s ease; }
.fp-progress-stopped .fp-progress-fill { background: var(--neutral-400, #9ca3af); }
#fp-status { padding: 8px 12px; gap: 4px; }
#fp-queue { font-size: 13px; }
#fp-my-jobs { font-size: 12px; }
#fp-queue th, #fp-queue th *, #fp-my-jobs th, #fp-my-jobs th * { white-space: nowrap; }
#fp-queue td img { max-height: 72px; max-width: 128px; }
"""


Updates = tuple[Any, Any, Any, Any, Any]  # preview, progress, info, video, message


QUEUE_COLUMNS = ["Job", "State", "Progress", "Worker", "Owner", "Prompt", "Video", "Message", "Model"]


QUEUE_REFRESH_SECONDS = 2.0


MY_JOBS_COLUMNS = ["Job", "State", "Progress", "Time left", "Prompt"]  # a click on a row shows its video


def queue_entry(job: QueuedJob) -> dict[str, Any]:
    """What `/queue_list` says of a job."""
    return {
        "job": job.id, "kind": job.spec.kind, "state": job.state, "progress": round(job.progress, 4),
        "worker": job.worker.split("/", 1)[-1] if job.worker else None, "owner": job.owner,
        "prompt": job.spec.settings.get("prompt"), "source": job.spec.source, "video": job.video,
        "message": job.message, "created": job.created, "started": job.started, "finished": job.finished,
    }  # fmt: skip


# The model a job needs, as the apps are called (an outputs folder may be shared by both apps).
MODEL_NAMES = {"original": "FramePack", "f1": "FramePack-F1"}
# How a job that goes on from another reads in the Queue tab, by its kind.
KIND_WORDS = {"resume": "the rest of", "add_seconds": "seconds added to", "branch": "a branch of",
              "postprocess": "post-processing of"}  # fmt: skip


def queue_row(job: QueuedJob, progress: float | None = None) -> list[str]:
    """A job as a row of the Queue tab's table; `progress` replaces the stored one (a stopped job's finished
    sections, from its record)."""
    entry = queue_entry(job)
    timed = " ".join(f"[{seconds:g}s: {text}]" for seconds, text in job.spec.settings.get("prompts") or [])
    if entry["prompt"] or timed:
        what = " ".join(part for part in (entry["prompt"], timed) if part)
    elif job.spec.source:
        what = f"{KIND_WORDS.get(job.spec.kind, job.spec.kind)} {job.spec.source}"
    else:
        what = "(no prompt)"
    progress = job.progress if progress is None else progress
    state = job.state
    if job.state == "stopped" and (progress > 0 or job.video):
        state = "stopped: can be resumed (Retry)"  # its finished sections are kept, and a retry starts after them
    return [job.id, state, f"{progress:.0%}", entry["worker"] or "", job.owner, what[:80], job.video or "",
            job.message, MODEL_NAMES.get(job.variant, job.variant)]  # fmt: skip


def my_job_row(job: QueuedJob, progress: float | None = None, left: str = "") -> list[str]:
    """A job as a row of the Generate tab's own list (the Queue tab's row, less what a user knows of their own, with
    the time `left`)."""
    row = queue_row(job, progress)
    return [row[0], row[1], row[2], left, row[5]]


def length_words(settings: Settings) -> str:
    """The video a length makes, in sections and real seconds (a video grows by whole sections)."""
    sections, length = settings.num_sections, settings.num_frames / FPS
    return f"{sections} section{'s' * (sections != 1)}: a {length:.2f} s video"


def progress_html(fraction: float, text: str, stopped: bool = False) -> str:
    """An HTML progress bar with a caption; a `stopped` job's bar is grey (it is not finished)."""
    percent = max(0.0, min(1.0, fraction)) * 100
    kind = "fp-progress fp-progress-stopped" if stopped else "fp-progress"
    return (
        f'<div class="{kind}"><div class="fp-progress-text">{html.escape(text)}</div>'
        f'<div class="fp-progress-track"><div class="fp-progress-fill" style="width: {percent:.1f}%"></div></div></div>'
    )


def frames_line(frames: int) -> str:
    """The line under the progress bar: frames generated so far and the video's length."""
    return f"Frames so far: {frames} · video length: {frames / FPS:.2f} s ({FPS} fps)"


def error_message(text: str) -> str:
    """How a user's mistake or a failed job reads on the page."""
    return f"**Error:** {text}"


class SamplingClock:
    """Elapsed time and an estimate of the time left, from the sampling progress seen since the page began to follow
    the job (a resumed job starts part way: only what this run has done counts)."""

    def __init__(self, now: Callable[[], float] = time.monotonic):
        self.now = now
        self.start: tuple[float, float] | None = None  # (time, fraction) at the first step seen
        self.sections = 0  # the job's sections, once a step says

    def timing(self, event: JobEvent) -> str:
        if not isinstance(event, Progress):
            return ""
        self.sections = event.sections
        if self.start is None:
            self.start = (self.now(), event.fraction)
        started, first = self.start
        elapsed, done = self.now() - started, event.fraction - first
        text = f"{_clock(elapsed)} elapsed"
        if done > 0.02 and elapsed > 1:  # enough seen for an estimate that means something
            text += f", about {_clock(elapsed * (1 - event.fraction) / done)} left"
        return text


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


def event_updates(event: JobEvent, show_video: Callable[[Path], str] = str, timing: str = "", sections: int = 0) -> Updates:
    """The page updates for one job event; outputs that do not change are skipped. `show_video` gives the
    page its own copy of a video of the outputs folder; `sections` is the job's count (a stopped job's bar shows the
    part of them it kept)."""
    skip = gr.skip()
    if isinstance(event, Waiting):
        text = f"Waiting for the GPU: position {event.position} in line"
        return skip, progress_html(0, text), skip, skip, text
    if isinstance(event, Status):
        return skip, skip, skip, skip, event.message
    if isinstance(event, Download):  # the first job fetches the weights before they load
        return skip, progress_html(event.fraction, event.line()), skip, skip, event.line()
    if isinstance(event, Progress):
        where = f"Section {event.section} of {event.sections} ({event.span[0]:.2f}–{event.span[1]:.2f} s)"
        caption = f"{where} · step {event.step} of {event.steps} · {event.fraction:.0%}" + (f" · {timing}" if timing else "")
        bar = progress_html(event.fraction, caption)
        preview = event.preview if event.preview is not None else skip
        return preview, bar, frames_line(event.frames), skip, f"Sampling {where.lower()}"
    if isinstance(event, SectionDone):
        text = f"Section {event.section} of {event.sections} finished"
        return skip, skip, frames_line(event.frames), show_video(event.video_path), text
    if isinstance(event, Done):
        if event.video_path is None:
            text = "Stopped before the first section was finished; no video was written."
            return skip, progress_html(0, "Stopped"), skip, None, text
        made = f"{event.frames} frames ({event.seconds:.2f} s of video) in {event.elapsed:.1f} s"
        summary = f"{made}, saved as `{event.video_path.name}` in the outputs folder"
        if event.stopped:  # not a full bar: the job is not finished, and it can go on
            kept = event.sections_done / sections if sections else 0.0
            bar = progress_html(kept, f"Stopped after {event.sections_done} section(s): it can be resumed", stopped=True)
            text = (f"Stopped after {event.sections_done} section(s): {summary}. It can be resumed: Retry in the Queue "
                    "tab, or drop its video under \"Previous output\" and press \"Resume this job\".")  # fmt: skip
        else:
            bar, text = progress_html(1, "Finished"), f"Finished: {summary}"
        return skip, bar, frames_line(event.frames), show_video(event.video_path), text
    return skip, progress_html(0, "Failed"), skip, skip, error_message(event.message)


class PageCopies:
    """The page's own copies of one job's videos, in a folder of Gradio's cache with an unguessable name.

    Gradio serves its cache, never the outputs folder, and hands each path only to the page it answers, so a
    job's video reaches its owner's page and no one else's. Each version gets a folder of its own (the video
    is rewritten after every section); a hard link costs nothing where the cache shares the disk.
    """

    def __init__(self, cache_dir: str | Path):
        self.folder = Path(cache_dir) / f"framepack-{secrets.token_urlsafe(24)}"
        self.count = 0

    def __call__(self, video: Path, name: str | None = None) -> str:
        """The page's copy of `video` (any file of the outputs folder), named `name` or as it is."""
        self.count += 1
        target = self.folder / str(self.count) / (name or video.name)
        target.parent.mkdir(parents=True)
        try:
            os.link(video, target)  # the outputs are replaced, never changed in place: a link is a snapshot
        except OSError:
            shutil.copyfile(video, target)
        return str(target)



# Formats a browser plays in a <video>; the others are offered as a download.
PLAYABLE = (".mp4", ".webm")


def postprocess_updates(event: JobEvent, show: Callable[[Path], str] = str) -> tuple[Any, Any, Any, Any]:
    """The Post-process panel's updates (progress, message, result video, result file) for one job event."""
    skip = gr.skip()
    if isinstance(event, Waiting):
        text = f"Waiting for the GPU: position {event.position} in line"
        return progress_html(0, text), text, skip, skip
    if isinstance(event, Status):
        return skip, event.message, skip, skip
    if isinstance(event, FrameProgress):
        total = f" of {event.total}" if event.total else ""
        return progress_html(event.fraction, f"{event.stage}: frame {event.done}{total} · {event.fps:.1f} frames/s"), skip, skip, skip
    if isinstance(event, Done):
        if event.video_path is None:
            return progress_html(0, "Stopped"), "Stopped: nothing was written.", skip, skip
        path = event.video_path
        text = f"Finished: {event.frames} frames ({event.seconds:.2f} s) in {event.elapsed:.1f} s, saved as `{path.name}` in the outputs folder"
        if path.is_dir():
            return progress_html(1, "Finished"), text + " (a folder of PNG frames)", skip, skip
        copy = show(path)
        return progress_html(1, "Finished"), text, copy if path.suffix.lower() in PLAYABLE else None, copy
    if isinstance(event, Error):
        return progress_html(0, "Failed"), error_message(event.message), skip, skip
    return skip, skip, skip, skip
