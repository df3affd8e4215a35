"""The workers that run queued jobs. A `Runner` runs one job at a time and streams its events; `LocalRunner` does
it in this process with a `ModelKeeper`, which holds one model set and loads the one each job needs (the Ray runner
in `framepack.queue.cluster` puts a keeper in another process)."""

from __future__ import annotations

import gc
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch

from ..events import Download, Error, Event, Status
from ..jobs.paths import RecordError
from ..kinds import JobContext, execute, kind_of, recorded_models
from ..loading import load_models
from ..memory.planning import MemoryPlan
from ..models import ModelSet, ModelsMissingError, ModelSource
from ..models.download import NotEnoughDiskError, ensure_models
from .store import QueuedJob, input_folder

logger = logging.getLogger(__name__)


class WorkerLost(RuntimeError):
    """The process running a job died (a Ray actor killed, a node lost): the job goes back in line."""


class Runner(Protocol):
    """A worker: a model set on one device, running one job at a time. `name` is "<front>/<device>"."""

    name: str

    def events(self, job: QueuedJob, stop: threading.Event) -> Iterator[Event]:
        """The job's events as they happen; raises WorkerLost when the worker died under it."""
        ...

    def ready(self) -> bool:
        """Whether the worker can take a job (after a loss it may come back; False once it is gone for good)."""
        ...

    def stop(self, job_id: str) -> None:
        """Pass a stop on to where the job runs."""
        ...

    def close(self) -> None: ...


class ModelKeeper:
    """One worker's model set: loaded on its first job, and loaded again when a job goes on from one that was made
    with other models (as its record names them), then back to the app's own for the next new job."""

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
        try:
            made_with = recorded_models(job.spec, job.id, job.attempts, self.output_dir)
        except (RecordError, ValueError) as exc:  # an unreadable record, or a kind this version does not know
            yield Error(str(exc), exc)
            return
        models = None
        if kind_of(job.spec).needs_models:
            models = yield from self._models_for(made_with)
            if models is None:
                return
        device = str(self.plan.device) if self.plan is not None else None
        context = JobContext(models, job.id, job.owner, job.spec, self.output_dir, input_folder(self.output_dir, job.id),
                             stop, job.attempts, device=device, cache_dir=self.source.cache_dir)  # fmt: skip
        yield from execute(context)

    def _models_for(self, made_with: dict[str, str] | None) -> Iterator[Event]:
        """The model set for a job made with `made_with` (None: the app's own), loading it if another is in memory;
        None after an `Error` when it cannot be loaded."""
        if made_with is not None and self._default_sources is None:
            try:
                self._default_sources = self.source.sources(self.variant)
            except ModelsMissingError:
                pass  # the app's own models are not there: the recorded ones may be
        own = made_with is None or made_with == self._default_sources
        models = self.models
        if models is not None and self._models_are_default == own and (own or models.sources == made_with):
            return models
        self.models = models = None  # one model set in memory at a time
        gc.collect()
        if own:
            source = self.source
            yield Status("Loading models" + (" (first job only)" if self._default_sources is None else " again"))
        else:
            source = ModelSource.recorded(made_with, self.source.cache_dir)
            yield Status("Loading the models this job was made with")
        if source.models_dir is None and not (yield from self._download(source)):
            return None
        try:
            with self.loading:
                models = load_models(self.variant, source, attention=self.attention, compile=self.compile, plan=self.plan)
        except ModelsMissingError as exc:
            logger.error("%s", exc)
            yield Error("The model files are missing on this machine; whoever runs the app can see which in its log.", exc)
            return None
        except Exception as exc:  # any loading failure must reach the user; the traceback goes to the log
            logger.exception("Loading the models failed")
            yield Error(f"Could not load the models ({type(exc).__name__}); the details are in the app's log.", exc)
            return None
        self.models, self._models_are_default = models, own
        if own:
            self._default_sources = models.sources
        return models

    def _download(self, source: ModelSource) -> Iterator[Event]:
        """Fetch what the hub cache lacks of the models, passing the download's progress on to the job's page (a few
        events a second); False after an `Error` when it cannot be fetched."""
        events: queue.Queue[Event | None] = queue.Queue()
        failure: list[BaseException] = []
        last = 0.0

        def progress(event: Download) -> None:
            nonlocal last
            if time.monotonic() - last >= PROGRESS_INTERVAL or event.done >= event.total:
                last = time.monotonic()
                events.put(event)

        def run() -> None:
            try:
                with self.loading:  # one worker downloads; the others then find the files in the cache
                    ensure_models(source, self.variant, progress, lambda text: events.put(Status(text)))
            except Exception as exc:  # handed to the job below, whatever it is
                failure.append(exc)
            finally:
                events.put(None)

        threading.Thread(target=run, name="model-download", daemon=True).start()
        while (event := events.get()) is not None:
            yield event
        if not failure:
            return True
        exc = failure[0]
        if isinstance(exc, NotEnoughDiskError):
            logger.error("%s", exc)
            yield Error("Not enough disk space to download the models; whoever runs the app can see the details in its log.", exc)
        elif isinstance(exc, ModelsMissingError):
            logger.error("%s", exc)
            yield Error("The model files are missing on this machine and cannot be downloaded now; whoever runs the app "
                        "can see which in its log.", exc)  # fmt: skip
        else:
            logger.error("Downloading the models failed", exc_info=exc)
            yield Error(f"Could not download the models ({type(exc).__name__}); the details are in the app's log.", exc)
        return False


# Seconds between the download's progress events: enough for a moving bar, few enough for the page and the store.
PROGRESS_INTERVAL = 0.5


class LocalRunner:
    """A worker in this process, running one job at a time on its front's thread."""

    def __init__(self, name: str, keeper: ModelKeeper, cpu_threads: int | None = None):
        self.name = name  # "<front>/<device>": the page shows the part after the slash
        self.keeper = keeper
        # Workers sharing the CPU split its cores: each with all of them would keep every core spinning in
        # OpenMP's waits for the other's threads (two jobs then crawl, or stall the machine).
        self.cpu_threads = cpu_threads

    def events(self, job: QueuedJob, stop: threading.Event) -> Iterator[Event]:
        if self.cpu_threads is not None:
            torch.set_num_threads(self.cpu_threads)  # OpenMP's thread count is this worker thread's own
        return self.keeper.events(job, stop)

    def ready(self) -> bool:
        return True  # one in this process always can

    def stop(self, job_id: str) -> None:
        """Nothing to do: the job's stop event reaches the engine in this process."""

    def close(self) -> None:
        self.keeper.models = None


def cpu_threads_each(plans: Sequence[MemoryPlan | None]) -> int | None:
    """Each local worker's share of the CPU's cores when several run on the CPU (None: one, or GPUs)."""
    on_cpu = sum(plan is None or str(plan.device).startswith("cpu") for plan in plans)
    return max(1, (os.cpu_count() or 1) // on_cpu) if on_cpu > 1 else None


def worker_names(plans: Sequence[MemoryPlan | None]) -> list[str]:
    """A name per worker: its device, numbered where several share one ("cuda:0", "cpu-1", "cpu-2")."""
    devices = [plan.device if plan is not None else "default" for plan in plans]
    return [device if devices.count(device) == 1 else f"{device}-{devices[:i].count(device) + 1}"
            for i, device in enumerate(devices)]  # fmt: skip
