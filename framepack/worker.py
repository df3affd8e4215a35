"""One GPU, many users: a background worker that runs engine jobs one at a time and streams their events.

Every job has its own stop event and its own event queue, so a caller (a browser session, an API client)
only ever sees its own job. Jobs wait in a FIFO while another job runs; a waiting job's stream reports its
place in line. The model set is loaded once, on the first job, and reused.

Every job has an owner; a previous job is resumed or extended only by its owner, as its record says (never as
the name of an uploaded file says). Whatever a job raises ends that job with a message, never the worker.
"""

from __future__ import annotations

import collections
import gc
import json
import logging
import queue
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .engine import (
    Done,
    Error,
    Event,
    Status,
    branch_job,
    extend_job,
    extend_video,
    failure_message,
    generate,
    resume_job,
)
from .plan import MemoryPlan
from .loading import load_models
from .models import ModelSet, ModelSource, ModelsMissingError
from .outputs import LOCAL_USER, JobPaths, is_job_name, job_owner, new_job_id
from .controls import JobInputs
from .settings import Settings

# Jobs one owner may have waiting or running at once: one user cannot fill the line for everyone.
MAX_JOBS_PER_OWNER = 4

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Waiting:
    """The job is queued behind others; `position` 1 means it runs next."""

    position: int


JobEvent = Event | Waiting


class Job:
    """One submitted job: who it belongs to, what the engine is to run, its stop event and its event stream."""

    def __init__(
        self,
        worker: Worker,
        owner: str,
        session: str | None,
        run: Callable[[Job, ModelSet], Iterator[Event]],
        job_id: str | None = None,
        source: Path | None = None,
        made_from: Path | None = None,
    ):
        self.id = job_id or new_job_id()
        self.owner = owner  # who may see and resume the job
        self.session = session  # the browser tab following it, whose closing stops it
        self.run = run  # the engine's events for this job, given the loaded models
        self.source = source  # the record of the job it goes on with, if any (one job at a time per record)
        self.made_with = _models_of(source or made_from)  # the models that job was made with (None: the app's)
        self.stop_event = threading.Event()
        self.refused = False  # turned away before it was queued (its stream is one Error)
        self._worker = worker
        self._events: queue.Queue[JobEvent] = queue.Queue()
        self._last_position: int | None = None

    def events(self) -> Iterator[JobEvent]:
        """Yield the job's events as they happen (blocking), ending with `Done` or `Error`."""
        while True:
            event = self._events.get()
            yield event
            if isinstance(event, (Done, Error)):
                return

    def cancel(self) -> None:
        """Stop the job: a waiting job ends at once, a running one after the current sampler step."""
        self._worker.cancel(self)

    def _put(self, event: JobEvent) -> None:
        self._events.put(event)


class Worker:
    """Runs jobs on one background thread, in submission order, with one lazily loaded model set."""

    def __init__(
        self,
        variant: str,
        source: ModelSource,
        output_dir: str | Path,
        attention: str = "auto",
        compile: bool = False,
        plan: MemoryPlan | None = None,
        max_jobs_per_owner: int = MAX_JOBS_PER_OWNER,
    ):
        self.variant = variant
        self.max_jobs_per_owner = max_jobs_per_owner
        self.source = source
        self.attention, self.compile, self.plan = attention, compile, plan
        self.output_dir = Path(output_dir)
        self._models: ModelSet | None = None
        self._default_sources: dict[str, str] | None = None  # what the app's own models are, once loaded
        self._models_are_default = True
        self._pending: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._closed: str | None = None  # once set, why no job is taken any more
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="framepack-worker", daemon=True)
        self._thread.start()

    def submit(
        self, settings: Settings, image: JobInputs | np.ndarray | None, owner: str = LOCAL_USER, session: str | None = None
    ) -> Job:
        """Queue a job of `image` (or a job's `JobInputs`, read into memory) and return it; iterate `job.events()`
        for its stream."""

        def run(job: Job, models: ModelSet) -> Iterator[Event]:
            return generate(models, settings, image, self.output_dir, stop=job.stop_event, job_id=job.id, owner=owner)

        return self._queue(Job(self, owner, session, run))

    def submit_extension(
        self, settings: Settings, video: Path, inputs: JobInputs, owner: str = LOCAL_USER, session: str | None = None
    ) -> Job:
        """Queue the extension of an uploaded `video` by `settings.total_second_length` seconds (with the end image,
        keyframes and LoRAs of `inputs`). The video is copied into the job's parts folder first: an upload may be
        gone by the time the job runs."""

        def run(job: Job, models: ModelSet) -> Iterator[Event]:
            return extend_video(
                models, settings, copy, self.output_dir, end_image=inputs.end_image, keyframes=inputs.keyframes,
                loras=inputs.loras, job_id=job.id, owner=owner, stop=job.stop_event,
            )  # fmt: skip

        job = Job(self, owner, session, run)
        parts = JobPaths(self.output_dir, job.id).parts_dir
        copy = parts / "source" / video.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(video, copy)
        self._queue(job)
        if job.refused:
            shutil.rmtree(parts, ignore_errors=True)
        return job

    def submit_resume(
        self,
        job_name: str,
        owner: str = LOCAL_USER,
        session: str | None = None,
        add_seconds: float = 0.0,
        add_prompt: str = "",
    ) -> Job:
        """Queue the rest of the stopped job `job_name` (a job in this worker's outputs folder), or with
        `add_seconds` the extension of that finished F1 job (`add_prompt`: timed prompts for the added seconds);
        only its owner may."""
        record = JobPaths(self.output_dir, job_name).manifest

        def run(job: Job, models: ModelSet) -> Iterator[Event]:
            if add_seconds > 0:
                return extend_job(models, record, add_seconds, prompt=add_prompt, stop=job.stop_event)
            return resume_job(models, record, stop=job.stop_event)

        return self._queue_own(Job(self, owner, session, run, job_name, record), job_name)

    def submit_branch(
        self,
        job_name: str,
        keep_sections: int,
        changes: dict[str, object],
        owner: str = LOCAL_USER,
        session: str | None = None,
    ) -> Job:
        """Queue a new job that keeps the first `keep_sections` sections of the job `job_name` and redoes the
        rest with its settings and `changes`; only the source's owner may, and the branch is theirs."""
        record = JobPaths(self.output_dir, job_name).manifest

        def run(job: Job, models: ModelSet) -> Iterator[Event]:
            return branch_job(models, record, keep_sections, changes, job_id=job.id, owner=owner, stop=job.stop_event)

        return self._queue_own(Job(self, owner, session, run, made_from=record), job_name)

    def _queue_own(self, job: Job, job_name: str) -> Job:
        """Queue a job that works from the previous job `job_name`, if that job is the caller's."""
        if not is_job_name(job_name) or job_owner(JobPaths(self.output_dir, job_name)) != job.owner:
            # The same answer whether the job does not exist or is someone else's: nothing leaks.
            return _refused(job, f"you have no job named {job_name!r} in this app's outputs")
        return self._queue(job)

    def jobs_of(self, owner: str) -> list[dict[str, object]]:
        """The owner's previous jobs in the outputs folder, newest first: name, state, sections and length."""
        jobs = []
        for manifest in self.output_dir.glob("*.json"):
            paths = JobPaths(self.output_dir, manifest.stem)
            if not is_job_name(manifest.stem) or job_owner(paths) != owner:
                continue
            try:
                record = json.loads(manifest.read_text(encoding="utf-8"))
                seconds = float(record["settings"]["total_second_length"])
                entry = {"job": manifest.stem, "state": record["state"], "sections_done": record["sections_done"],
                         "sections": record["sections"], "seconds": seconds, "video": paths.video.name}  # fmt: skip
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a damaged record is no one's listing
            jobs.append((manifest.stat().st_mtime, entry))
        return [entry for _, entry in sorted(jobs, key=lambda item: item[0], reverse=True)]

    def _queue(self, job: Job) -> Job:
        with self._cond:
            if self._closed:
                return _refused(job, self._closed)
            active = [j for j in (self._running, *self._pending) if j is not None]
            if sum(j.owner == job.owner for j in active) >= self.max_jobs_per_owner:
                limit = self.max_jobs_per_owner
                return _refused(job, f"you already have {limit} jobs waiting or running; wait for one to end or stop one")
            if job.source is not None and any(j.source == job.source for j in active):
                return _refused(job, f"{job.id} is already waiting or running")
            self._pending.append(job)
            if self._running is not None or len(self._pending) > 1:
                self._announce_positions()
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Set the job's stop event; a job still waiting is taken out of line and its stream ends now."""
        job.stop_event.set()
        with self._cond:
            if job not in self._pending:
                return
            self._pending.remove(job)
            self._announce_positions()
        job._put(_stopped_before_start())

    def cancel_session(self, session: str) -> int:
        """Cancel every waiting or running job a browser session follows (it was closed); returns how many."""
        with self._cond:
            jobs = [j for j in (self._running, *self._pending) if j is not None and j.session == session]
        for job in jobs:
            job.cancel()
        return len(jobs)

    def close(self, timeout: float | None = None) -> None:
        """Stop the running job, end the waiting ones and the worker thread."""
        self._end_waiting("The app is shutting down.")
        with self._cond:
            if self._running is not None:
                self._running.stop_event.set()
            self._cond.notify()
        self._thread.join(timeout)

    def _end_waiting(self, reason: str) -> None:
        """Take no more jobs, and end the streams of those in line (with `reason`, unless one was given first)."""
        with self._cond:
            self._closed = self._closed or reason
            waiting, self._pending = list(self._pending), collections.deque()
        for job in waiting:
            job._put(Error(self._closed))

    def _announce_positions(self) -> None:
        # Called with the lock held; only changed positions are sent, so a stream is not flooded.
        for index, job in enumerate(self._pending, start=1):
            if job._last_position != index:
                job._last_position = index
                job._put(Waiting(index))

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    job = self._running = self._pending.popleft()
                    self._announce_positions()
                try:
                    self._run(job)
                except Exception:  # never reached by design; if it is, the next job must still run
                    logger.exception("The worker failed on job %s", job.id)
                finally:
                    with self._cond:
                        self._running = None
        finally:
            # However this thread ends, no job may wait in line for it: later ones are refused, waiting ones end.
            self._end_waiting("The app's worker stopped; see the app's log.")

    def _run(self, job: Job) -> None:
        last: JobEvent | None = None
        try:
            for last in self._job_events(job):
                job._put(last)
        except Exception as exc:  # the engine turns its failures into events; this catches what is outside it
            last = Error(failure_message(exc), exc)
            job._put(last)
        finally:
            # Whatever happened, the stream must end, or its reader would block forever.
            if not isinstance(last, (Done, Error)):
                job._put(Error("The job ended unexpectedly; see the app's log."))

    def _job_events(self, job: Job) -> Iterator[Event]:
        """The job's engine events, after loading the models if this is the first job."""
        if job.stop_event.is_set():  # cancelled just as it was taken out of line
            yield _stopped_before_start()
            return
        # A job that goes on from an earlier one runs on the models that one was made with; others on the app's.
        if job.made_with is not None and self._default_sources is None:
            try:
                self._default_sources = self.source.sources(self.variant)
            except ModelsMissingError:
                pass  # the app's own models are not there: the recorded ones may be
        own = job.made_with is None or job.made_with == self._default_sources
        if self._models is None or self._models_are_default != own or (not own and self._models.sources != job.made_with):
            self._models = None  # one model set in memory at a time
            gc.collect()
            if own:
                source = self.source
                yield Status("Loading models" + (" (first job only)" if self._default_sources is None else " again"))
            else:
                source = ModelSource.recorded(job.made_with, self.source.cache_dir)
                yield Status("Loading the models this job was made with")
            try:
                self._models = load_models(self.variant, source, attention=self.attention, compile=self.compile, plan=self.plan)
                self._models_are_default = own
                if own:
                    self._default_sources = self._models.sources
            except ModelsMissingError as exc:
                logger.error("%s", exc)
                yield Error("The model files are missing on this machine; whoever runs the app can see which in its log.", exc)
                return
            except Exception as exc:  # any loading failure must reach the user; the traceback goes to the log
                logger.exception("Loading the models failed")
                yield Error(f"Could not load the models ({type(exc).__name__}); the details are in the app's log.", exc)
                return
        yield from job.run(job, self._models)


def _models_of(record: Path | None) -> dict[str, str] | None:
    """The model sources a job's record names, if it can be read."""
    try:
        return json.loads(record.read_text(encoding="utf-8"))["models"] if record is not None else None
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _refused(job: Job, message: str) -> Job:
    """The job, never queued: its stream is one `Error`."""
    job.refused = True
    job._put(Error(message))
    return job


def _stopped_before_start() -> Done:
    return Done(video_path=None, latents_path=None, frames=0, seconds=0.0, sections_done=0, stopped=True, elapsed=0.0)
