"""Jobs from the page, the API and the command line, run from a queue that outlives the app.

Every job is a row of the job store (`framepack.jobs`), its inputs copied into the outputs folder, so the line
survives a restart or a crash: waiting jobs wait, the job that was running goes on from its last finished
section, finished ones stay listed. Workers take jobs from the line one at a time, each with its own model set:
one per GPU (`plans`, one memory plan per device), `workers` of them on one device, or Ray actors on a cluster
(`framepack.cluster`). A caller that follows a job (a browser tab, an API stream) gets its events live through
a `Job` handle, and its place in line while it waits.

Every job has an owner; a previous job is resumed, extended or branched only by its owner, as its record says
(never as the name of an uploaded file says), and the queue's listing and controls answer each owner about
their own jobs only. Whatever a job raises ends that job with a message, never the worker.
"""

from __future__ import annotations

import gc
import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .media.images import ImageError, load_image
from .controls import ImageSource, JobInputs, Keyframe
from .events import Done, Error, Event, Progress, Status
from .engine.core import branch_job, extend_job, extend_video, failure_message, generate, resume_job
from .jobs import FrontLock, JobSpec, JobStore, QueuedJob, SqliteJobStore, input_folder, remove_inputs
from .loading import load_models
from .lora import LoraSpec
from .models import ModelSet, ModelSource, ModelsMissingError
from .outputs import LOCAL_USER, JobPaths, is_job_name, job_owner, new_job_id
from .memory.planning import MemoryPlan
from .settings import Settings

# Jobs one owner may have waiting or running at once: one user cannot fill the line for everyone. The person at
# the machine itself (no logins, serving only this machine) may queue as many as they like.
MAX_JOBS_PER_OWNER = 4
# How soon a job that another process added to the store (`queue add`) is noticed by an idle worker; jobs added
# here wake a worker at once.
EXTERNAL_CHECK_SECONDS = 5.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Waiting:
    """The job is queued behind others; `position` 1 means it runs next."""

    position: int


JobEvent = Event | Waiting


class WorkerLost(RuntimeError):
    """The process running a job died (a Ray actor killed, a node lost): the job goes back in line."""


class Job:
    """A live handle on one queued job: its id, owner, the browser session following it and its events."""

    def __init__(self, worker: Worker, job_id: str, owner: str, session: str | None = None):
        self.id = job_id
        self.owner = owner  # who may see and control the job
        self.session = session  # the browser tab following it, whose closing stops it
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
        self._worker.cancel_job(self.id)

    def _put(self, event: JobEvent) -> None:
        self._events.put(event)


# ------------------------------------------------------------------------------------------ running one job


def run_job(models: ModelSet, job: QueuedJob, output_dir: Path, stop: threading.Event) -> Iterator[Event]:
    """The engine's events for a stored job. A job taken up again after its process died (or its worker was
    lost, or it was stopped and retried) goes on from its checkpoint, if a section of it was finished."""
    spec, own = job.spec, JobPaths(output_dir, job.id)
    source = JobPaths(output_dir, spec.source) if spec.source else None
    again = job.attempts > 1
    if again and spec.kind in ("generate", "extend_video", "branch") and own.checkpoint.is_file():
        yield Status("Going on from its last finished section")
        yield from resume_job(models, own.manifest, stop=stop)
    elif spec.kind == "generate":
        settings = Settings.from_dict(spec.settings)
        yield from generate(models, settings, spec_inputs(spec, output_dir, job.id), output_dir, stop=stop,
                            job_id=job.id, owner=job.owner)  # fmt: skip
    elif spec.kind == "extend_video":
        inputs = spec_inputs(spec, output_dir, job.id)
        video = input_folder(output_dir, job.id) / spec.files["video"]
        yield from extend_video(
            models, Settings.from_dict(spec.settings), video, output_dir, end_image=inputs.end_image,
            keyframes=inputs.keyframes, loras=inputs.loras, job_id=job.id, owner=job.owner, stop=stop,
        )  # fmt: skip
    elif spec.kind == "resume" or (spec.kind == "extend" and again and source.checkpoint.is_file()):
        yield from resume_job(models, source.manifest, stop=stop)
    elif spec.kind == "extend":
        seconds, prompt = float(spec.options["seconds"]), spec.options.get("prompt", "")
        yield from extend_job(models, source.manifest, seconds, prompt=prompt, stop=stop)
    else:
        keep, changes = int(spec.options["keep_sections"]), spec.options.get("changes", {})
        yield from branch_job(models, source.manifest, keep, changes, job_id=job.id, owner=job.owner, stop=stop)


def spec_inputs(spec: JobSpec, output_dir: Path, job_id: str) -> JobInputs:
    """The job's images and LoRAs as the engine takes them, from the job's input folder."""
    folder = input_folder(output_dir, job_id)
    image = lambda name: folder / spec.files[name] if name in spec.files else None  # noqa: E731
    keyframes = tuple(Keyframe(t, image(f"keyframe_{i}")) for i, t in enumerate(spec.keyframe_times))
    loras = tuple(LoraSpec(Path(path), weight) for path, weight in spec.loras)
    return JobInputs(image("image"), image("end_image"), keyframes, spec.blank_start, spec.options.get("record"), loras)


def store_inputs(output_dir: Path, job_id: str, inputs: JobInputs) -> dict[str, Any]:
    """Copy a job's images into its input folder (files as they are, images in memory as PNG, which keeps their
    pixels); returns the `JobSpec` fields that name them. Raises ImageError or OSError."""
    folder = input_folder(output_dir, job_id)
    files: dict[str, str] = {}

    def keep(name: str, image: ImageSource | None) -> None:
        if image is None:
            return
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        if isinstance(image, (str, Path)):
            shutil.copyfile(image, target / Path(image).name)
            files[name] = f"{name}/{Path(image).name}"
        else:
            Image.fromarray(load_image(image)).save(target / "image.png")
            files[name] = f"{name}/image.png"

    record = inputs.describe()  # of what the user gave, before it is copied
    keep("image", inputs.image)
    keep("end_image", inputs.end_image)
    for index, keyframe in enumerate(inputs.keyframes):
        keep(f"keyframe_{index}", keyframe.image)
    return {
        "files": files,
        "keyframe_times": tuple(k.seconds for k in inputs.keyframes),
        "loras": tuple((str(spec.path), spec.weight) for spec in inputs.loras),
        "blank_start": inputs.blank_start,
        "options": {"record": record},
    }


def job_spec(
    output_dir: Path, job_id: str, kind: str, settings: Settings, inputs: JobInputs, video: Path | None = None
) -> JobSpec:
    """A new video's or an uploaded video's extension's spec, its inputs (and `video`) copied into the job's input
    folder. Raises ImageError or OSError, and then leaves no input folder behind."""
    try:
        fields = store_inputs(output_dir, job_id, inputs)
        if video is not None:
            target = input_folder(output_dir, job_id) / "video" / video.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(video, target)
            fields["files"]["video"] = f"video/{video.name}"
    except (ImageError, OSError):
        remove_inputs(output_dir, job_id)
        raise
    return JobSpec(kind, settings.to_dict(), **fields)


class ModelKeeper:
    """One worker's model set: loaded on its first job, and loaded again when a job goes on from one that was
    made with other models (as its record names them), then back to the app's own for the next new job."""

    def __init__(self, variant: str, source: ModelSource, output_dir: Path, attention: str, compile: bool,
                 plan: MemoryPlan | None, loading: threading.Lock | None = None):  # fmt: skip
        self.variant, self.source, self.output_dir = variant, source, output_dir
        self.attention, self.compile, self.plan = attention, compile, plan
        # Held while loading: the libraries' loaders patch process-wide state (empty-weight initialisation), so
        # workers of one process load one at a time; they run jobs side by side.
        self.loading = loading or threading.Lock()
        self.models: ModelSet | None = None
        self._default_sources: dict[str, str] | None = None  # what the app's own models are, once loaded
        self._models_are_default = True

    def events(self, job: QueuedJob, stop: threading.Event) -> Iterator[Event]:
        """The job's engine events, after loading the models it needs."""
        made_with = _models_of(self.output_dir, job)
        if made_with is not None and self._default_sources is None:
            try:
                self._default_sources = self.source.sources(self.variant)
            except ModelsMissingError:
                pass  # the app's own models are not there: the recorded ones may be
        own = made_with is None or made_with == self._default_sources
        models = self.models
        if models is None or self._models_are_default != own or (not own and models.sources != made_with):
            self.models = models = None  # one model set in memory at a time
            gc.collect()
            if own:
                source = self.source
                yield Status("Loading models" + (" (first job only)" if self._default_sources is None else " again"))
            else:
                source = ModelSource.recorded(made_with, self.source.cache_dir)
                yield Status("Loading the models this job was made with")
            try:
                with self.loading:
                    models = load_models(self.variant, source, attention=self.attention, compile=self.compile, plan=self.plan)
            except ModelsMissingError as exc:
                logger.error("%s", exc)
                yield Error("The model files are missing on this machine; whoever runs the app can see which in its log.", exc)
                return
            except Exception as exc:  # any loading failure must reach the user; the traceback goes to the log
                logger.exception("Loading the models failed")
                yield Error(f"Could not load the models ({type(exc).__name__}); the details are in the app's log.", exc)
                return
            self.models, self._models_are_default = models, own
            if own:
                self._default_sources = models.sources
        yield from run_job(models, job, self.output_dir, stop)


def _models_of(output_dir: Path, job: QueuedJob) -> dict[str, str] | None:
    """The model sources of the job a job goes on from (its source's record, or its own when it is taken up
    again), if a record names them; None for a new job, which runs on the app's models."""
    own = JobPaths(output_dir, job.id)
    if job.spec.source:
        record = JobPaths(output_dir, job.spec.source).manifest
    elif job.attempts > 1 and own.checkpoint.is_file():
        record = own.manifest
    else:
        return None
    try:
        return json.loads(record.read_text(encoding="utf-8"))["models"]
    except (OSError, KeyError, ValueError, TypeError):
        return None


class Runner:
    """A worker in this process: a model set on one device, running one job at a time on its front's thread."""

    def __init__(self, name: str, keeper: ModelKeeper):
        self.name = name  # "<front>/<device>": the page shows the part after the slash
        self.keeper = keeper

    def events(self, job: QueuedJob, stop: threading.Event) -> Iterator[Event]:
        return self.keeper.events(job, stop)

    def ready(self) -> bool:
        """Whether the worker can take a job (one in this process always can)."""
        return True

    def stop(self, job_id: str) -> None:
        """Nothing to do here: the job's stop event reaches the engine in this process."""

    def close(self) -> None:
        self.keeper.models = None


# ------------------------------------------------------------------------------------------ the queue's front


class Worker:
    """The queue's front in this process: takes jobs into the store and runs them on its workers.

    `plans` gives one worker per memory plan (one per GPU); without it `workers` workers share `plan` (or no plan:
    everything on the default device). `ray` places the workers as Ray actors instead (`framepack.cluster`: an
    address, or "local" to start a cluster on this machine). `store` defaults to the SQLite store in the outputs
    folder.
    """

    def __init__(
        self,
        variant: str,
        source: ModelSource,
        output_dir: str | Path,
        attention: str = "auto",
        compile: bool = False,
        plan: MemoryPlan | None = None,
        max_jobs_per_owner: int = MAX_JOBS_PER_OWNER,
        *,
        plans: Sequence[MemoryPlan | None] | None = None,
        workers: int = 1,
        ray: str | None = None,
        store: JobStore | None = None,
        on_event: Callable[[QueuedJob, JobEvent], None] | None = None,
    ):
        self.variant = variant
        self.on_event = on_event  # sees every job's events (the command line prints them)
        self.max_jobs_per_owner = max_jobs_per_owner
        self.source = source
        self.output_dir = Path(output_dir).resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.store = store or SqliteJobStore.in_folder(self.output_dir)
        self.front = FrontLock(self.output_dir)
        for job in self.store.recover(self.front.alive):
            logger.info("Job %s was running when its process ended; it goes back in line", job.id)
        self._cond = threading.Condition()
        self._followers: dict[str, list[Job]] = {}
        self._stops: dict[str, threading.Event] = {}
        self._runner_of: dict[str, Runner] = {}
        self._cancelled: set[str] = set()
        self._idle = 0
        self._closed: str | None = None  # once set, why no job is taken any more
        plans = list(plans) if plans else [plan] * max(1, workers)
        if ray is not None:
            from .cluster import ray_runners

            self.runners = ray_runners(ray, self, plans, attention, compile)
        else:
            loading = threading.Lock()
            self.runners = [
                Runner(f"{self.front.id}/{name}", ModelKeeper(variant, source, self.output_dir, attention, compile, p, loading))
                for name, p in zip(_worker_names(plans), plans)
            ]  # fmt: skip
        self._alive = len(self.runners)
        self._threads = [
            threading.Thread(target=self._serve, args=(runner,), name=f"framepack-worker-{index}", daemon=True)
            for index, runner in enumerate(self.runners)
        ]  # fmt: skip
        for thread in self._threads:
            thread.start()

    @property
    def _models(self) -> ModelSet | None:
        """The first worker's model set (the only one with a single worker)."""
        runner = self.runners[0]
        return runner.keeper.models if isinstance(runner, Runner) else None

    # --- taking jobs in

    def submit(
        self,
        settings: Settings,
        image: JobInputs | ImageSource | None,
        owner: str = LOCAL_USER,
        session: str | None = None,
        follow: bool = True,
    ) -> Job:
        """Queue a job of `image` (or a job's `JobInputs`) and return it; iterate `job.events()` for its stream.
        Without `follow` nobody streams it: it waits for any worker, and its handle serves only for its id."""
        inputs = image if isinstance(image, JobInputs) else JobInputs(image)
        return self._add("generate", settings, inputs, owner, session, follow)

    def submit_extension(
        self,
        settings: Settings,
        video: Path,
        inputs: JobInputs,
        owner: str = LOCAL_USER,
        session: str | None = None,
        follow: bool = True,
    ) -> Job:
        """Queue the extension of an uploaded `video` by `settings.total_second_length` seconds (with the end image,
        keyframes and LoRAs of `inputs`). The video is copied first: an upload may be gone when the job runs."""
        return self._add("extend_video", settings, inputs, owner, session, follow, video=Path(video))

    def submit_resume(
        self,
        job_name: str,
        owner: str = LOCAL_USER,
        session: str | None = None,
        add_seconds: float = 0.0,
        add_prompt: str = "",
        follow: bool = True,
    ) -> Job:
        """Queue the rest of the stopped job `job_name` (a job in this worker's outputs folder), or with
        `add_seconds` the extension of that finished F1 job (`add_prompt`: timed prompts for the added seconds);
        only its owner may."""
        spec = JobSpec("extend" if add_seconds > 0 else "resume", source=job_name,
                       options={"seconds": float(add_seconds), "prompt": add_prompt} if add_seconds > 0 else {})  # fmt: skip
        return self._add_spec(new_job_id(), spec, owner, session, follow)

    def submit_branch(
        self,
        job_name: str,
        keep_sections: int,
        changes: dict[str, object],
        owner: str = LOCAL_USER,
        session: str | None = None,
        follow: bool = True,
    ) -> Job:
        """Queue a new job that keeps the first `keep_sections` sections of the job `job_name` and redoes the
        rest with its settings and `changes`; only the source's owner may, and the branch is theirs."""
        spec = JobSpec("branch", source=job_name, options={"keep_sections": int(keep_sections), "changes": dict(changes)})
        return self._add_spec(new_job_id(), spec, owner, session, follow)

    def _add(
        self, kind: str, settings: Settings, inputs: JobInputs, owner: str, session: str | None, follow: bool,
        video: Path | None = None,
    ) -> Job:  # fmt: skip
        job_id = new_job_id()
        try:
            spec = job_spec(self.output_dir, job_id, kind, settings, inputs, video)
        except (ImageError, OSError) as exc:
            logger.warning("Could not keep the inputs of job %s: %s", job_id, exc)
            return _refused(Job(self, job_id, owner, session), f"the job's inputs could not be kept ({type(exc).__name__}: {exc})")
        return self._add_spec(job_id, spec, owner, session, follow)

    def _add_spec(self, job_id: str, spec: JobSpec, owner: str, session: str | None, follow: bool) -> Job:
        handle = Job(self, job_id, owner, session)
        with self._cond:
            problem = self._closed or self._refusal(spec, owner)
            if problem:
                remove_inputs(self.output_dir, job_id)
                return _refused(handle, problem)
            front = self.front.id if follow else None  # a followed job runs here, where its stream is
            self.store.add(QueuedJob(job_id, owner, spec, self.variant, front))
            if follow:
                self._followers[job_id] = [handle]
            self._announce_positions()
            self._cond.notify_all()
        return handle

    def _refusal(self, spec: JobSpec, owner: str) -> str | None:
        """Why a job may not be queued, if it may not (called with the lock held)."""
        if spec.source is not None and (
            not is_job_name(spec.source) or job_owner(JobPaths(self.output_dir, spec.source)) != owner
        ):
            # The same answer whether the job does not exist or is someone else's: nothing leaks.
            return f"you have no job named {spec.source!r} in this app's outputs"
        active = self.store.list(active=True)
        if owner != LOCAL_USER and sum(job.owner == owner for job in active) >= self.max_jobs_per_owner:
            limit = self.max_jobs_per_owner
            return f"you already have {limit} jobs waiting or running; wait for one to end or stop one"
        if spec.kind in ("resume", "extend") and any(spec.source in (job.id, job.spec.source) for job in active):
            return f"{spec.source} is already waiting or running"
        return None

    # --- the queue's controls (each takes the caller as `owner`; None: the local user of the CLI, all jobs)

    def list_jobs(self, owner: str | None = None) -> list[QueuedJob]:
        """The queue (running, waiting in line order, then ended jobs newest first): `owner`'s jobs, or all."""
        return self.store.list(owner)

    def cancel_job(self, job_id: str, owner: str | None = None) -> bool:
        """Stop a job: a waiting one ends at once, a running one after its current sampler step. False if there
        is no such job of `owner` or it has ended."""
        with self._cond:
            job = self.store.get(job_id)
            if job is None or (owner is not None and job.owner != owner) or not job.active:
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

    def retry(self, job_id: str, owner: str | None = None) -> bool:
        """Put a stopped or failed job back at the end of the line: it goes on from its last finished section,
        if it has one. False if there is no such job of `owner` or it is not stopped or failed."""
        with self._cond:
            job = self.store.get(job_id)
            if job is None or (owner is not None and job.owner != owner) or job.state not in ("stopped", "failed"):
                return False
            last = max((j.position for j in self.store.list()), default=0.0)
            self.store.update(job_id, state="queued", position=last + 1.0, front=None, finished=None, message="")
            self._announce_positions()
            self._cond.notify_all()
        return True

    def move(self, job_id: str, steps: int, owner: str | None = None) -> bool:
        """Move a waiting job `steps` places up (negative) or down the line."""
        with self._cond:
            job = self.store.get(job_id)
            if job is None or (owner is not None and job.owner != owner) or not self.store.move(job_id, steps):
                return False
            self._announce_positions()
        return True

    def delete(self, job_id: str, owner: str | None = None) -> bool:
        """Remove an ended job from the queue with its inputs and the files it made (its video, latents, record
        and checkpoint; a resume or an extension made no files of its own: the job it went on with keeps them).
        False if there is no such job of `owner` or it is still waiting or running (stop it first)."""
        with self._cond:
            job = self.store.get(job_id)
            if job is None or (owner is not None and job.owner != owner) or job.active:
                return False
            self.store.delete(job_id)
        remove_inputs(self.output_dir, job_id)
        if job.spec.kind in ("generate", "extend_video", "branch"):
            paths = JobPaths(self.output_dir, job_id)
            for path in (paths.video, paths.latents, paths.manifest, paths.checkpoint):
                path.unlink(missing_ok=True)
            shutil.rmtree(paths.parts_dir, ignore_errors=True)
        return True

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

    def cancel_session(self, session: str) -> int:
        """Cancel every waiting or running job a browser session follows (it was closed); returns how many."""
        with self._cond:
            ids = {h.id for handles in self._followers.values() for h in handles if h.session == session}
        for job_id in ids:
            self.cancel_job(job_id)
        return len(ids)

    def busy(self) -> bool:
        """Whether a job of this variant is running or waiting: a new one would wait in line."""
        return any(job.variant == self.variant for job in self.store.list(active=True))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job of this variant is waiting or running (for `queue run` and `batch`); False on timeout
        or when the workers stopped first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.busy():
                if self._closed:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(min(EXTERNAL_CHECK_SECONDS, left) if left is not None else EXTERNAL_CHECK_SECONDS)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Stop taking jobs and stop the running ones; they and the waiting ones stay in the store, and run when a
        front starts again on this outputs folder."""
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
        self.front.release()
        self.store.close()

    def _end_waiting(self, reason: str) -> None:
        """Take no more jobs, and end the streams of the jobs waiting in line (with `reason`, unless one was
        given first); the jobs themselves stay queued in the store."""
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

    def _serve(self, runner: Runner) -> None:
        try:
            # A worker that was lost (a Ray actor) takes the next job only once it is back.
            while runner.ready() and (taken := self._next(runner)) is not None:
                self._run(runner, *taken)
        finally:
            with self._cond:
                self._alive -= 1
                last = self._alive == 0
            if last:  # however the workers end, no stream may wait for them: later jobs are refused too
                self._end_waiting("The app's worker stopped; see the app's log.")

    def _next(self, runner: Runner) -> tuple[QueuedJob, threading.Event] | None:
        """The next job for `runner`, blocking until there is one; None once the front closes."""
        with self._cond:
            self._idle += 1
            try:
                while not self._closed:
                    job = self.store.claim(runner.name, self.variant, self.front.id)
                    if job is not None:
                        logger.info("Job %s starts on %s (attempt %d)", job.id, runner.name.split("/", 1)[-1], job.attempts)
                        stop = self._stops[job.id] = threading.Event()
                        self._runner_of[job.id] = runner
                        self._idle -= 1
                        self._announce_positions()
                        self._idle += 1  # undone in `finally`
                        return job, stop
                    self._cond.wait(EXTERNAL_CHECK_SECONDS)
                return None
            finally:
                self._idle -= 1

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
        """Record a job's event in the store and hand it to whoever follows the job."""
        if isinstance(event, Progress):
            row = self.store.update(job.id, progress=event.fraction)
            if row is not None and row.stop_requested and not stop.is_set():  # by another process (`queue cancel`)
                self._cancelled.add(job.id)
                stop.set()
                if (runner := self._runner_of.get(job.id)) is not None:
                    runner.stop(job.id)
        elif isinstance(event, Status):
            self.store.update(job.id, message=event.message)
        with self._cond:
            followers = list(self._followers.get(job.id, ()))
        for handle in followers:
            handle._put(event)
        if self.on_event is not None:
            self.on_event(job, event)

    def _finish(self, job: QueuedJob, last: Done | Error) -> None:
        with self._cond:
            interrupted = self._closed is not None and job.id not in self._cancelled
            if isinstance(last, Error):
                fields = {"state": "failed", "message": last.message}
            elif last.stopped and interrupted:  # stopped by the app closing: it goes on when a front starts again
                fields = {"state": "queued", "front": None, "message": "Interrupted: it goes on from its last finished section"}
            else:
                fields = {"state": "stopped" if last.stopped else "done", "progress": 1.0 if not last.stopped else job.progress,
                          "message": "Stopped" if last.stopped else "Finished"}  # fmt: skip
            video = last.video_path.name if isinstance(last, Done) and last.video_path is not None else None
            if fields["state"] == "queued":
                fields.update(worker=None, finished=None)
            else:  # the worker stays named: the queue shows where each job ran
                fields.update(finished=time.time())
            self.store.update(job.id, video=video, **fields)
            logger.info("Job %s: %s", job.id, fields["message"])
            followers = self._followers.pop(job.id, [])
            self._stops.pop(job.id, None)
            self._runner_of.pop(job.id, None)
            self._cancelled.discard(job.id)
            self._cond.notify_all()
        for handle in followers:  # after the store says so: whoever sees the end sees the job's final state
            handle._put(last)
        if self.on_event is not None:
            self.on_event(job, last)

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


def _worker_names(plans: Sequence[MemoryPlan | None]) -> list[str]:
    """A name per worker: its device, numbered where several share one ("cuda:0", "cpu-1", "cpu-2")."""
    devices = [plan.device if plan is not None else "default" for plan in plans]
    return [device if devices.count(device) == 1 else f"{device}-{devices[:i].count(device) + 1}"
            for i, device in enumerate(devices)]  # fmt: skip


def _refused(job: Job, message: str) -> Job:
    """The job, never queued: its stream is one `Error`."""
    job.refused = True
    job._put(Error(message))
    return job


def _stopped_before_start() -> Done:
    return Done(video_path=None, latents_path=None, frames=0, seconds=0.0, sections_done=0, stopped=True, elapsed=0.0)
