"""Workers on a Ray cluster: one actor per GPU, each with its own model set, fed from the front's queue.

The queue stays with the front (`framepack.queue.front`): it claims a job from its store for a free actor and
streams the job's events back from it (a Ray streaming generator). Ray does the placement (`num_gpus=1` per
actor), the transport and the failure detection: when an actor's process dies or its node is lost, the call
fails with an actor error, the front puts the job back in line, and the next free worker goes on from the
job's last finished section (Ray restarts the lost actor where it can).

Every actor writes into the front's outputs folder, so that folder must be a path every node can write (a
shared file system); the store, a SQLite file, is only used by the front. Ray is optional
(`pip install "ray[default]"`) and imported only here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..events import Error, Event
from ..memory.planning import MemoryPlan
from ..models import ModelSource
from .runners import ModelKeeper, WorkerLost
from .store import QueuedJob

logger = logging.getLogger(__name__)
RESTARTS = 3  # how often Ray brings a lost actor back before its worker is given up
RESTART_WAIT_SECONDS = 300.0  # how long a restarting actor may take (it loads nothing until its next job)
# How long the front waits for a job's next event before it asks whether the actor is still there (a step of the
# 13B model streamed through a small GPU, or a first load, can take minutes).
EVENT_WAIT_SECONDS = 120.0
ANSWER_SECONDS = 30.0  # how long a live actor may take to say it is there


class ClusterError(RuntimeError):
    """Ray is not installed, or its cluster cannot be reached."""


class ModelWorker:
    """The Ray actor: a model set on the GPU Ray gave it, running the jobs the front sends, one at a time."""

    def __init__(self, variant: str, source: ModelSource, output_dir: str, attention: str, compile: bool,
                 plan: MemoryPlan | None):  # fmt: skip
        self.keeper = ModelKeeper(variant, source, Path(output_dir), attention, compile, plan)
        self.stops: dict[str, threading.Event] = {}

    def pid(self) -> int:
        return os.getpid()

    def run(self, job: QueuedJob) -> Iterator[Event]:
        """The job's events, as they happen (a streaming generator on the front's side)."""
        stop = self.stops[job.id] = threading.Event()
        try:
            for event in self.keeper.events(job, stop):
                # An exception may not survive pickling (it may need arguments its class does not re-create):
                # its message is what the front needs, the traceback stays in this worker's log.
                yield dataclasses.replace(event, exception=None) if isinstance(event, Error) else event
        finally:
            self.stops.pop(job.id, None)

    def stop(self, job_id: str) -> None:
        if (stop := self.stops.get(job_id)) is not None:
            stop.set()


class RayRunner:
    """The front's side of one actor: a `framepack.queue.runners.Runner`."""

    def __init__(self, name: str, actor: Any):
        self.name = name
        self.actor = actor

    def events(self, job: QueuedJob, stop: threading.Event) -> Iterator[Event]:
        import ray

        try:
            stream = self.actor.run.remote(job)
            while True:
                ready, _ = ray.wait([stream], timeout=EVENT_WAIT_SECONDS)
                if not ready:
                    ray.get(self.actor.pid.remote(), timeout=ANSWER_SECONDS)  # still there: the step is just long
                    continue
                try:
                    ref = next(stream)
                except StopIteration:
                    return
                yield ray.get(ref, timeout=ANSWER_SECONDS)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError) as exc:
            raise WorkerLost(type(exc).__name__) from exc

    def ready(self) -> bool:
        """Wait for the actor to answer (after a loss Ray restarts it, which takes a moment; Ray tells no one when it
        is back, so it is asked every second); False once it is gone for good or does not come back."""
        import ray

        deadline = time.monotonic() + RESTART_WAIT_SECONDS
        while time.monotonic() < deadline:
            try:
                ray.get(self.actor.pid.remote(), timeout=RESTART_WAIT_SECONDS)
                return True
            except ray.exceptions.ActorUnavailableError:
                time.sleep(1.0)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                logger.error("Ray worker %s is gone (%s)", self.name, type(exc).__name__)
                return False
        return False

    def stop(self, job_id: str) -> None:
        self.actor.stop.remote(job_id)

    def close(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)


def ray_runners(
    address: str, variant: str, source: ModelSource, output_dir: Path, front_id: str, plans: Sequence[MemoryPlan | None],
    attention: str, compile: bool,
) -> list[RayRunner]:  # fmt: skip
    """Connect to the Ray cluster at `address` ("local": start one on this machine) and place one actor per plan
    there, each on a GPU of its own where the cluster has GPUs (the plans' devices are then each actor's own "cuda"),
    else on a CPU. Runner names start with the front's id, as the store expects."""
    try:
        import ray
    except ImportError:
        raise ClusterError('--ray needs Ray: pip install "ray[default]"') from None
    if not ray.is_initialized():
        # The workers import this package: a local cluster's workers find it where this process does.
        package_root = str(Path(__file__).resolve().parents[2])
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}}
        try:
            if address == "local":
                ray.init(include_dashboard=False, runtime_env=runtime_env, logging_level=logging.WARNING)
            else:
                ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    gpus = int(ray.cluster_resources().get("GPU", 0))
    resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    actor_class = ray.remote(ModelWorker).options(max_restarts=RESTARTS, max_task_retries=0, max_concurrency=2, **resources)
    runners = []
    for index, plan in enumerate(plans):
        if gpus and plan is not None:
            plan = dataclasses.replace(plan, device="cuda")  # Ray shows each actor its own GPU as the first
        actor = actor_class.remote(variant, source, str(output_dir), attention, compile, plan)
        runners.append(RayRunner(f"{front_id}/ray-{index + 1}", actor))
    logger.info("%d Ray worker(s) on %s (%s)", len(runners), address, f"{gpus} GPU(s)" if gpus else "no GPUs")
    return runners
