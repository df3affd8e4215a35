"""One GPU, many users: a background worker that runs engine jobs one at a time and streams their events.

Every job has its own stop event and its own event queue, so a caller (a browser session, an API client)
only ever sees its own job. Jobs wait in a FIFO while another job runs; a waiting job's stream reports its
place in line. The model set is loaded once, on the first job, and reused.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .engine import Done, Error, Event, Status, extend_job, generate, resume_job
from .memory import MemoryPlan
from .models import ModelSet, ModelSource, ModelsMissingError, load_models
from .outputs import new_job_id
from .settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Waiting:
    """The job is queued behind others; `position` 1 means it runs next."""

    position: int


JobEvent = Event | Waiting


class Job:
    """One submitted generation: its inputs, its stop event and the stream of its events."""

    def __init__(
        self, worker: Worker, settings: Settings | None, image: np.ndarray | None, owner: str | None, resume: Path | None = None
    ):
        self.id = new_job_id()
        self.settings = settings
        self.image = image
        self.owner = owner
        self.resume = resume  # a stopped job's manifest to go on with, instead of settings and image
        self.add_seconds = 0.0  # with `resume`: make the finished F1 video this much longer instead
        self.stop_event = threading.Event()
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
    ):
        self.variant = variant
        self.source = source
        self.attention, self.compile, self.plan = attention, compile, plan
        self.output_dir = Path(output_dir)
        self._models: ModelSet | None = None
        self._pending: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="framepack-worker", daemon=True)
        self._thread.start()

    def submit(self, settings: Settings, image: np.ndarray, owner: str | None = None) -> Job:
        """Queue a job and return it; iterate `job.events()` for its stream."""
        return self._queue(Job(self, settings, image, owner))

    def submit_resume(self, job_name: str, owner: str | None = None, add_seconds: float = 0.0) -> Job:
        """Queue the rest of the stopped job `job_name` (a job in this worker's outputs folder), or with
        `add_seconds` the extension of that finished F1 job."""
        job = Job(self, None, None, owner, resume=self.output_dir / f"{job_name}.json")
        job.add_seconds = add_seconds
        return self._queue(job)

    def _queue(self, job: Job) -> Job:
        with self._cond:
            if self._closed:
                job._put(Error("The app is shutting down."))
                return job
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

    def cancel_owner(self, owner: str) -> int:
        """Cancel every waiting or running job of `owner` (a closed browser session); returns how many."""
        with self._cond:
            jobs = [j for j in (self._running, *self._pending) if j is not None and j.owner == owner]
        for job in jobs:
            job.cancel()
        return len(jobs)

    def close(self, timeout: float | None = None) -> None:
        """Stop the running job, end the waiting ones and the worker thread."""
        with self._cond:
            self._closed = True
            waiting, self._pending = list(self._pending), collections.deque()
            if self._running is not None:
                self._running.stop_event.set()
            self._cond.notify()
        for job in waiting:
            job._put(Error("The app is shutting down."))
        self._thread.join(timeout)

    def _announce_positions(self) -> None:
        # Called with the lock held; only changed positions are sent, so a stream is not flooded.
        for index, job in enumerate(self._pending, start=1):
            if job._last_position != index:
                job._last_position = index
                job._put(Waiting(index))

    def _loop(self) -> None:
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
            finally:
                with self._cond:
                    self._running = None

    def _run(self, job: Job) -> None:
        last: JobEvent | None = None
        try:
            for last in self._job_events(job):
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
        if self._models is None:
            yield Status("Loading models (first job only)")
            try:
                self._models = load_models(
                    self.variant, self.source, attention=self.attention, compile=self.compile, plan=self.plan
                )
            except ModelsMissingError as exc:
                yield Error(str(exc), exc)
                return
            except Exception as exc:  # any loading failure must reach the user; the traceback goes to the log
                logger.exception("Loading the models failed")
                yield Error(f"Could not load the models: {type(exc).__name__}: {exc}", exc)
                return
        if job.resume is not None:
            if job.add_seconds > 0:
                yield from extend_job(self._models, job.resume, job.add_seconds, stop=job.stop_event)
            else:
                yield from resume_job(self._models, job.resume, stop=job.stop_event)
        else:
            yield from generate(self._models, job.settings, job.image, self.output_dir, stop=job.stop_event, job_id=job.id)


def _stopped_before_start() -> Done:
    return Done(video_path=None, latents_path=None, frames=0, seconds=0.0, sections_done=0, stopped=True, elapsed=0.0)
