"""The queue's front in this process: it takes jobs from the page, the API and the command line into the store, and
runs them on its workers.

Every job is a row of the store with its inputs copied into the outputs folder, so the line survives a restart or
a crash: waiting jobs wait, the job that was running goes on from its last finished section, finished ones stay
listed. Workers claim jobs one at a time: one per GPU, several on one device, or Ray actors
(`framepack.queue.cluster`). A caller that follows a job (a browser tab, an API stream) gets its events live
through a `Job` handle, and its place in line while it waits.

The front never dies of what a job or the store does: a job's failure ends that job with a message; a store that
is busy, full or failing makes the worker back off and try again, and the job that met it ends with a message.
"""

from __future__ import annotations

import logging
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..controls import ImageSource, JobInputs
from ..engine import failure_message
from ..events import Done, Download, Error, Event, FrameProgress, Progress, Status
from ..jobs.paths import LOCAL_USER, JobPaths, new_job_id
from ..jobs.record import JobRecord, RecordError, job_owner
from ..jobs.spec import JobSpec
from ..kinds import (
    add_seconds_spec,
    branch_spec,
    files_of,
    follow_up,
    inputs_spec,
    resume_spec,
)
from ..media.images import ImageError
from ..media.reading import VideoInputError
from ..memory.planning import MemoryPlan
from ..models import ModelSource
from ..settings import Settings
from .policy import MAX_JOBS_PER_OWNER, over_limit, refusal
from .repair import open_store
from .runners import LocalRunner, ModelKeeper, Runner, WorkerLost, cpu_threads_each, worker_names
from .store import (
    FrontLock,
    JobStore,
    QueuedJob,
    input_folder,
    remove_inputs,
)

# How soon an idle worker notices a job that another process added to the store (`queue add`), or a job that a
# dead process left running; jobs added here wake a worker at once.
EXTERNAL_CHECK_SECONDS = 5.0
# A store that fails (held by another process past its busy timeout, a disk that is full or failing) is tried
# again after this many seconds, doubling up to the last.
STORE_RETRY_SECONDS = (0.5, 30.0)
# How long a follower waits for a job's next event before it asks whether the job is still alive.
FOLLOW_CHECK_SECONDS = 60.0
STORE_ERRORS = (sqlite3.Error, OSError)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Waiting:
    """The job is queued behind others; `position` 1 means it runs next."""

    position: int


JobEvent = Event | Waiting


class Job:
    """A live handle on one queued job: its id, owner, the browser session following it and its events."""

    def __init__(self, front: QueueFront, job_id: str, owner: str, session: str | None = None):
        self.id = job_id
        self.owner = owner  # who may see and control the job
        self.session = session  # the browser tab following it
        self.refused = False  # turned away before it was queued (its stream is one Error)
        self._front = front
        self._events: queue.Queue[JobEvent] = queue.Queue()
        self._last_position: int | None = None

    def events(self) -> Iterator[JobEvent]:
        """Yield the job's events as they happen (blocking), ending with `Done` or `Error`. A job that stopped
        being followed without an end (its front closed) ends the stream with an `Error` instead of waiting."""
        while True:
            try:
                event = self._events.get(timeout=FOLLOW_CHECK_SECONDS)
            except queue.Empty:
                if self._front.following(self.id):
                    continue
                event = Error("The job's worker stopped answering; see the Queue tab for where it stands.")
            yield event
            if isinstance(event, (Done, Error)):
                return

    def cancel(self) -> None:
        """Stop the job: a waiting job ends at once, a running one after the current sampler step."""
        self._front.cancel_job(self.id)

    def leave(self) -> None:
        """Stop following the job (its tab closed, its API call ended): the job goes on, its events go nowhere."""
        self._front.unfollow(self)

    def _put(self, event: JobEvent) -> None:
        self._events.put(event)


class QueueFront:
    """Takes jobs into the store and runs them on its workers.

    `plans` gives one worker per memory plan (one per GPU); without it `workers` workers share `plan` (or no plan:
    everything on the default device). `ray` places the workers as Ray actors instead (an address, or "local" to
    start a cluster on this machine). `store` defaults to the SQLite store in the outputs folder.
    """

    def __init__(
        self, variant: str, source: ModelSource, output_dir: str | Path, attention: str = "auto", compile: bool = False,
        plan: MemoryPlan | None = None, max_jobs_per_owner: int = MAX_JOBS_PER_OWNER, *,
        plans: Sequence[MemoryPlan | None] | None = None, workers: int = 1, ray: str | None = None,
        store: JobStore | None = None, on_event: Callable[[QueuedJob, JobEvent], None] | None = None,
    ):  # fmt: skip
        self.variant, self.source = variant, source
        self.on_event = on_event  # sees every job's events (the command line prints them)
        self.max_jobs_per_owner = max_jobs_per_owner
        self.output_dir = Path(output_dir).resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # A store that cannot be read is set aside and rebuilt from the job records, said in one line (`store_note`).
        self.store, self.store_note = (store, None) if store is not None else open_store(self.output_dir)
        self.front = FrontLock(self.output_dir)
        self._recover()
        self._cond = threading.Condition()
        self._followers: dict[str, list[Job]] = {}
        self._stops: dict[str, threading.Event] = {}
        self._runner_of: dict[str, Runner] = {}
        self._cancelled: set[str] = set()
        self._unsaved: dict[str, dict[str, Any]] = {}  # final states the store could not take yet
        self._idle = 0
        self._closed: str | None = None  # once set, why no job is taken any more
        plans = list(plans) if plans else [plan] * max(1, workers)
        if ray is not None:
            from .cluster import (
                ray_runners,  # Ray is optional and imported only when asked for
            )

            self.runners: list[Runner] = ray_runners(ray, variant, source, self.output_dir, self.front.id, plans, attention, compile)
        else:
            loading = threading.Lock()
            threads = cpu_threads_each(plans)
            self.runners = [
                LocalRunner(f"{self.front.id}/{name}", ModelKeeper(variant, source, self.output_dir, attention, compile, p, loading),
                            threads if p is None or str(p.device).startswith("cpu") else None)
                for name, p in zip(worker_names(plans), plans)
            ]  # fmt: skip
        self._alive = len(self.runners)
        self._threads = [
            threading.Thread(target=self._serve, args=(runner,), name=f"framepack-worker-{index}", daemon=True)
            for index, runner in enumerate(self.runners)
        ]  # fmt: skip
        for thread in self._threads:
            thread.start()

    # --- taking jobs in

    def submit(self, settings: Settings, image: JobInputs | ImageSource | None, owner: str = LOCAL_USER,
               session: str | None = None, follow: bool = True) -> Job:  # fmt: skip
        """Queue a new video of `image` (or a job's `JobInputs`); iterate `job.events()` for its stream. Without
        `follow` nobody streams it: it waits for any worker, and its handle serves only for its id."""
        inputs = image if isinstance(image, JobInputs) else JobInputs(image)
        return self.submit_spec(lambda folder: inputs_spec("generate", settings, inputs, keep_in=folder), owner, session, follow)

    def submit_extension(self, settings: Settings, video: Path, inputs: JobInputs, owner: str = LOCAL_USER,
                         session: str | None = None, follow: bool = True) -> Job:  # fmt: skip
        """Queue the extension of an uploaded `video` by `settings.total_second_length` seconds (with the end image,
        keyframes and LoRAs of `inputs`). The video is copied first: an upload may be gone when the job runs."""
        build = lambda folder: inputs_spec("extend", settings, inputs, Path(video), keep_in=folder)  # noqa: E731
        return self.submit_spec(build, owner, session, follow)

    def submit_resume(self, job_name: str, owner: str = LOCAL_USER, session: str | None = None,
                      add_seconds: float = 0.0, add_prompt: str = "", follow: bool = True) -> Job:  # fmt: skip
        """Queue the rest of the stopped job `job_name`, or with `add_seconds` a new, longer video of that finished
        F1 job (`add_prompt`: timed prompts for the added seconds); only its owner may."""
        spec = add_seconds_spec(job_name, add_seconds, add_prompt) if add_seconds > 0 else resume_spec(job_name)
        return self.submit_spec(spec, owner, session, follow)

    def submit_branch(self, job_name: str, keep_sections: int, changes: dict[str, object], owner: str = LOCAL_USER,
                      session: str | None = None, follow: bool = True) -> Job:  # fmt: skip
        """Queue a new job that keeps the first `keep_sections` sections of the job `job_name` and redoes the rest
        with its settings and `changes`; only the source's owner may, and the branch is theirs."""
        return self.submit_spec(branch_spec(job_name, keep_sections, changes), owner, session, follow)

    def turned_away(self, owner: str, session: str | None = None) -> Job | None:
        """A refused handle if `owner` may not queue one more job now, else None: asked before an upload is read, so
        a user at the limit costs no decoding (`submit_spec` asks again, with the job's source)."""
        try:
            with self._cond:
                problem = self._closed or over_limit(self.store.list(active=True), owner, self.max_jobs_per_owner)
        except STORE_ERRORS:
            return None  # the submission itself will say what the store says
        return _refused(Job(self, new_job_id(), owner, session), problem) if problem else None

    def submit_spec(self, spec: JobSpec | Callable[[Path], JobSpec], owner: str = LOCAL_USER,
                    session: str | None = None, follow: bool = True) -> Job:  # fmt: skip
        """Queue a job of any kind: its spec, or a function that builds it keeping the job's inputs in the folder it
        is given. Refused (a handle whose stream is one `Error`) when the owner may not queue it."""
        job_id = new_job_id()
        handle = Job(self, job_id, owner, session)
        with self._cond:
            active = self.store.list(active=True)
            if problem := self._closed or over_limit(active, owner, self.max_jobs_per_owner):
                return _refused(handle, problem)  # before any input is copied or decoded
        if callable(spec):
            try:
                spec = spec(input_folder(self.output_dir, job_id))
            except (ImageError, VideoInputError) as exc:  # the user's input, in the line that says what is wrong
                remove_inputs(self.output_dir, job_id)
                return _refused(handle, str(exc))
            except (OSError, ValueError) as exc:
                remove_inputs(self.output_dir, job_id)
                logger.warning("Could not keep the inputs of job %s: %s", job_id, exc)
                return _refused(handle, f"the job's inputs could not be kept ({type(exc).__name__}: {exc})")
        try:
            with self._cond:
                active = self.store.list(active=True)
                problem = self._closed or refusal(spec, owner, active, self.output_dir, self.max_jobs_per_owner)
                if problem:
                    remove_inputs(self.output_dir, job_id)
                    return _refused(handle, problem)
                front = self.front.id if follow else None  # a followed job runs here, where its stream is
                self.store.add(QueuedJob(job_id, owner, spec, self.variant, front))
                if follow:
                    self._followers[job_id] = [handle]
                self._announce_positions()
                self._cond.notify_all()
        except STORE_ERRORS as exc:
            remove_inputs(self.output_dir, job_id)
            logger.error("The job store could not take job %s: %s", job_id, exc)
            return _refused(handle, f"the job queue cannot be written now ({type(exc).__name__}); try again in a moment")
        return handle

    # --- the queue's controls (each takes the caller as `owner`; None: the local user of the CLI, all jobs)

    def list_jobs(self, owner: str | None = None) -> list[QueuedJob]:
        """The queue (running, waiting in line order, then ended jobs newest first): `owner`'s jobs, or all."""
        return self.store.list(owner)

    def job(self, job_id: str, owner: str | None = None) -> QueuedJob | None:
        """One job of the queue, if it is `owner`'s (None: anyone's)."""
        job = self.store.get(job_id)
        return job if job is not None and (owner is None or job.owner == owner) else None

    def cancel_job(self, job_id: str, owner: str | None = None) -> bool:
        """Stop a job: a waiting one ends at once, a running one after its current sampler step. False if there is no
        such job of `owner` or it has ended."""
        with self._cond:
            job = self.job(job_id, owner)
            if job is None or not job.active:
                return False
            if job.state == "running":
                self._cancelled.add(job_id)
                if job_id in self._stops:
                    self._stops[job_id].set()
                    self._runner_of[job_id].stop(job_id)
                else:  # running in another process: it sees the request at its next step
                    self.store.update(job_id, stop_requested=True)
                return True
            self.store.update(job_id, state="stopped", finished=time.time(), message="Stopped before it started")
            followers = self._followers.pop(job_id, [])
            self._announce_positions()
        for follower in followers:
            follower._put(_stopped_before_start())
        return True

    def retry(self, job_id: str, owner: str | None = None) -> str | None:
        """Put a stopped or failed job back at the end of the line (it goes on from its last finished section, if
        it has one); None when it was, else why not. A retried job counts against its owner's limit."""
        with self._cond:
            job = self.job(job_id, owner)
            if job is None or job.state not in ("stopped", "failed"):
                return "Only a stopped or failed job can run again."
            if problem := over_limit(self.store.list(active=True), job.owner, self.max_jobs_per_owner):
                return problem[0].upper() + problem[1:] + "."
            last = max((j.position for j in self.store.list(active=True)), default=0.0)
            self.store.update(job_id, state="queued", position=last + 1.0, front=None, finished=None, message="",
                              stop_requested=False)  # fmt: skip
            self._announce_positions()
            self._cond.notify_all()
        return None

    def move(self, job_id: str, steps: int, owner: str | None = None) -> bool:
        """Move a waiting job `steps` places up (negative) or down the line."""
        with self._cond:
            if self.job(job_id, owner) is None or not self.store.move(job_id, steps):
                return False
            self._announce_positions()
        return True

    def delete(self, job_id: str, owner: str | None = None) -> bool:
        """Remove an ended job from the queue with its inputs and the files it made (its video, latents, record,
        checkpoint and derived files; a resume made no files of its own). False if there is no such job of `owner`
        or it is still waiting or running (stop it first)."""
        with self._cond:
            job = self.job(job_id, owner)
            if job is None or job.active:
                return False
            self.store.delete(job_id)
        remove_inputs(self.output_dir, job_id)
        for path in files_of(job.spec, job_id, self.output_dir, job.video):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return True

    def jobs_of(self, owner: str) -> list[dict[str, object]]:
        """The owner's previous jobs in the outputs folder, newest first: name, state, sections and length."""
        jobs = []
        for manifest in self.output_dir.glob("*.json"):
            paths = JobPaths(self.output_dir, manifest.stem)
            if job_owner(paths) != owner:
                continue
            try:
                record = JobRecord.load(paths)
                seconds = record.settings_object(manifest.stem).total_second_length
            except RecordError:
                continue  # a damaged record is no one's listing
            entry = {"job": manifest.stem, "state": record.state, "sections_done": record.sections_done,
                     "sections": record.sections, "seconds": seconds, "video": paths.video.name}  # fmt: skip
            jobs.append((manifest.stat().st_mtime, entry))
        return [entry for _, entry in sorted(jobs, key=lambda item: item[0], reverse=True)]

    def unfollow(self, handle: Job) -> None:
        """Stream the job no more to `handle`; the job itself goes on (see `Job.leave`)."""
        with self._cond:
            handles = self._followers.get(handle.id, [])
            if handle in handles:
                handles.remove(handle)

    def following(self, job_id: str) -> bool:
        """Whether this front still streams the job to its followers (it waits or runs here, and the front is open)."""
        with self._cond:
            return self._closed is None and job_id in self._followers

    def busy(self) -> bool:
        """Whether a job of this variant is running or waiting: a new one would wait in line."""
        return any(job.variant == self.variant for job in self.store.list(active=True))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job of this variant is waiting or running (for `queue run` and `batch`); False on timeout or
        when the workers stopped first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._busy_or_unknown():
                if self._closed:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(min(EXTERNAL_CHECK_SECONDS, left) if left is not None else EXTERNAL_CHECK_SECONDS)
        return True

    def _busy_or_unknown(self) -> bool:
        try:
            return self.busy() or bool(self._unsaved)
        except STORE_ERRORS:
            return True  # a store that cannot answer now may still hold jobs

    def close(self, timeout: float | None = None) -> None:
        """Stop taking jobs and stop the running ones; they and the waiting ones stay in the store, and run when a front
        starts again on this outputs folder."""
        self._end_waiting("The app is shutting down; the job stays in the queue and runs when the app starts again.")
        with self._cond:
            for stop in self._stops.values():
                stop.set()
            for job_id, runner in self._runner_of.items():
                runner.stop(job_id)
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        for runner in self.runners:
            runner.close()
        self._save_unsaved()
        self.front.release()
        self.store.close()

    def _end_waiting(self, reason: str) -> None:
        """Take no more jobs, and end the streams of the jobs waiting in line (with `reason`, unless one was given
        first); the jobs themselves stay queued in the store."""
        with self._cond:
            self._closed = self._closed or reason
            waiting = [job_id for job_id in self._followers if job_id not in self._stops]
            followers = [h for job_id in waiting for h in self._followers.pop(job_id)]
            self._cond.notify_all()
        for handle in followers:
            handle._put(Error(self._closed))

    def _announce_positions(self) -> None:
        # Called with the lock held. A waiting job hears its place in line behind the running ones; a job that an
        # idle worker is about to take hears nothing. Only changed positions are sent, so a stream is not flooded.
        line = [job.id for job in self.store.list(active=True) if job.state == "queued" and job.variant == self.variant]
        for index, job_id in enumerate(line, start=1):
            if index <= self._idle:
                continue
            for handle in self._followers.get(job_id, ()):
                if handle._last_position != index - self._idle:
                    handle._last_position = index - self._idle
                    handle._put(Waiting(index - self._idle))

    # --- the workers' side

    def _recover(self) -> None:
        """Put back in line what fronts that died were running (at start, and whenever a worker waits for work)."""
        for job in self.store.recover(self.front.alive):
            logger.info("Job %s was running when its process ended; it goes back in line", job.id)

    def _serve(self, runner: Runner) -> None:
        failures = 0
        try:
            while runner.ready():
                try:
                    taken = self._next(runner)
                    failures = 0
                except STORE_ERRORS as exc:  # the store is busy or failing: wait, and try again
                    failures += 1
                    self._back_off(failures, exc)
                    continue
                if taken is None:
                    return
                self._run(runner, *taken)
        finally:
            with self._cond:
                self._alive -= 1
                last = self._alive == 0
            if last:  # however the workers end, no stream may wait for them: later jobs are refused too
                self._end_waiting("The app's worker stopped; see the app's log.")

    def _back_off(self, failures: int, exc: BaseException) -> None:
        first, most = STORE_RETRY_SECONDS
        wait = min(most, first * 2 ** (failures - 1))
        logger.warning("The job store failed (%s: %s); trying again in %.1f s", type(exc).__name__, exc, wait)
        with self._cond:
            if not self._closed:
                self._cond.wait(wait)

    def _next(self, runner: Runner) -> tuple[QueuedJob, threading.Event] | None:
        """The next job for `runner`, blocking until there is one; None once the front closes."""
        with self._cond:
            self._idle += 1
            try:
                while not self._closed:
                    self._save_unsaved()
                    job = self.store.claim(runner.name, self.variant, self.front.id)
                    if job is not None:
                        return self._taken(runner, job)
                    self._cond.wait(EXTERNAL_CHECK_SECONDS)
                    self._recover()
                return None
            finally:
                self._idle -= 1

    def _taken(self, runner: Runner, job: QueuedJob) -> tuple[QueuedJob, threading.Event]:
        # Called with the lock held.
        logger.info("Job %s starts on %s (attempt %d)", job.id, runner.name.split("/", 1)[-1], job.attempts)
        stop = self._stops[job.id] = threading.Event()
        self._runner_of[job.id] = runner
        self._idle -= 1
        self._announce_positions()
        self._idle += 1  # undone by `_next`
        return job, stop

    def _run(self, runner: Runner, job: QueuedJob, stop: threading.Event) -> None:
        last: Event | None = None
        lost = False
        try:
            for last in runner.events(job, stop):
                if not isinstance(last, (Done, Error)):
                    self._publish(job, last, stop)
        except WorkerLost as exc:
            lost = True
            logger.warning("Job %s lost its worker %s (%s); it goes back in line", job.id, runner.name, exc)
            self._requeue(job, "Its worker was lost: it goes on from its last finished section on another worker")
        except Exception as exc:  # the engine turns its failures into events; this catches what is outside it
            logger.exception("The worker failed on job %s", job.id)
            last = Error(failure_message(exc), exc)
        finally:
            if not lost:  # whatever happened, the stream must end, or its reader would wait forever
                if not isinstance(last, (Done, Error)):
                    last = Error("The job ended unexpectedly; see the app's log.")
                self._finish(job, last)

    def _publish(self, job: QueuedJob, event: Event, stop: threading.Event) -> None:
        """Record a job's event in the store (best effort: a store that cannot take it now does not stop the job)
        and hand it to whoever follows the job."""
        try:
            if isinstance(event, (Progress, FrameProgress)):
                row = self.store.update(job.id, progress=event.fraction)
                if row is not None and row.stop_requested and not stop.is_set():  # by another process (`queue cancel`)
                    self._cancelled.add(job.id)
                    stop.set()
                    if (runner := self._runner_of.get(job.id)) is not None:
                        runner.stop(job.id)
            elif isinstance(event, Status):
                self.store.update(job.id, message=event.message)
            elif isinstance(event, Download):  # `queue list` and other instances see the download going on
                self.store.update(job.id, message=event.line())
        except STORE_ERRORS as exc:
            logger.warning("Could not record the progress of job %s (%s); it goes on", job.id, type(exc).__name__)
        with self._cond:
            followers = list(self._followers.get(job.id, ()))
        for handle in followers:
            handle._put(event)
        if self.on_event is not None:
            self.on_event(job, event)

    def _finish(self, job: QueuedJob, last: Done | Error) -> None:
        with self._cond:
            fields = self._final_fields(job, last)
            try:
                self.store.update(job.id, **fields)
            except STORE_ERRORS as exc:  # kept, and written as soon as the store takes it (`_save_unsaved`)
                logger.error("Could not record the end of job %s (%s); it is kept until the store takes it", job.id, exc)
                self._unsaved[job.id] = fields
            logger.info("Job %s: %s", job.id, fields["message"])
            if fields["state"] == "done":
                self._queue_follow_up(job)
            followers = self._followers.pop(job.id, [])
            self._stops.pop(job.id, None)
            self._runner_of.pop(job.id, None)
            self._cancelled.discard(job.id)
            self._cond.notify_all()
        for handle in followers:  # after the store says so: whoever sees the end sees the job's final state
            handle._put(last)
        if self.on_event is not None:
            self.on_event(job, last)

    def _queue_follow_up(self, job: QueuedJob) -> None:
        """Queue what a finished job asked to run after it (its post-processing), as its owner's job, for any worker."""
        # Called with the lock held.
        spec = follow_up(job.spec, job.id)
        if spec is None:
            return
        try:
            queued = self.store.add(QueuedJob(new_job_id(), job.owner, spec, job.variant))
        except STORE_ERRORS as exc:
            logger.error("Could not queue what job %s asked to run after it: %s", job.id, exc)
            return
        logger.info("Job %s queued %s to run after it", job.id, queued.id)

    def _final_fields(self, job: QueuedJob, last: Done | Error) -> dict[str, Any]:
        # Called with the lock held.
        interrupted = self._closed is not None and job.id not in self._cancelled
        if isinstance(last, Error):
            fields: dict[str, Any] = {"state": "failed", "message": last.message}
        elif last.stopped and interrupted:  # stopped by the app closing: it goes on when a front starts again
            fields = {"state": "queued", "front": None, "message": "Interrupted: it goes on from its last finished section"}
        else:
            fields = {"state": "stopped" if last.stopped else "done", "progress": 1.0 if not last.stopped else job.progress,
                      "message": "Stopped" if last.stopped else "Finished"}  # fmt: skip
        fields["video"] = last.video_path.name if isinstance(last, Done) and last.video_path is not None else None
        if fields["state"] == "queued":
            fields.update(worker=None, finished=None)
        else:  # the worker stays named: the queue shows where each job ran
            fields.update(finished=time.time())
        return fields

    def _save_unsaved(self) -> None:
        """Write the final states the store could not take when their jobs ended."""
        for job_id, fields in list(self._unsaved.items()):
            try:
                self.store.update(job_id, **fields)
            except STORE_ERRORS:
                return  # still failing: the next attempt comes with the next wait for work
            del self._unsaved[job_id]

    def _requeue(self, job: QueuedJob, message: str) -> None:
        """Put a job whose worker was lost back at the head of the line, for any worker."""
        with self._cond:
            first = min((j.position for j in self.store.list(active=True) if j.state == "queued"), default=job.position)
            self.store.update(job.id, state="queued", worker=None, position=min(first, job.position) - 1.0, message=message)
            self._stops.pop(job.id, None)
            self._runner_of.pop(job.id, None)
            for handle in self._followers.get(job.id, ()):
                handle._put(Status(message))
            self._announce_positions()
            self._cond.notify_all()


def _refused(job: Job, message: str) -> Job:
    """The job, never queued: its stream is one `Error`."""
    job.refused = True
    job._put(Error(message))
    return job


def _stopped_before_start() -> Done:
    return Done(video_path=None, latents_path=None, frames=0, seconds=0.0, sections_done=0, stopped=True, elapsed=0.0)

