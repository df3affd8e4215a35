"""Workers as Ray actors: a local Ray cluster on this machine's CPUs, the tiny models, and a worker killed mid-job."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from helpers import IMAGE, TINY_MODELS, needs_shared
from safetensors.torch import load_file

from framepack.events import Done, SectionDone
from framepack.models import ModelSource
from framepack.queue.front import QueueFront
from framepack.settings import Settings

# In CI Ray is installed (requirements-test.txt) and this must run; elsewhere it is optional.
ray = pytest.importorskip("ray") if not os.environ.get("CI") else __import__("ray")
pytestmark = [needs_shared, pytest.mark.ray, pytest.mark.slow]
FAST = {"resolution": 128, "steps": 3, "latent_window_size": 3, "prompt": "a girl dances"}


def test_two_ray_workers_run_four_jobs_and_a_killed_worker_loses_nothing(tmp_path):
    worker = QueueFront("original", ModelSource(models_dir=TINY_MODELS), tmp_path / "out", workers=2, ray="local")
    try:
        assert [runner.name.split("/")[-1] for runner in worker.runners] == ["ray-1", "ray-2"]
        # The first two are the same job: one is killed mid-way, the other runs through on the other worker.
        long = Settings(seed=5, total_second_length=1.6, **FAST)
        jobs = [worker.submit(settings, IMAGE) for settings in
                (long, long, Settings(seed=6, total_second_length=0.4, **FAST), Settings(seed=7, total_second_length=0.4, **FAST))]  # fmt: skip
        killed = jobs[0]
        for event in killed.events():
            if isinstance(event, SectionDone):
                on = worker.store.get(killed.id).worker
                runner = next(r for r in worker.runners if r.name == on)
                os.kill(ray.get(runner.actor.pid.remote()), signal.SIGKILL)
                break
        ends = [list(job.events())[-1] for job in jobs[1:]]
        rest = list(killed.events())
        assert all(isinstance(end, Done) and not end.stopped for end in [*ends, rest[-1]]), (ends, rest[-1])
        assert any("worker was lost" in getattr(event, "message", "") for event in rest)
        rows = {job.id: worker.store.get(job.id) for job in jobs}
        assert {row.state for row in rows.values()} == {"done"}
        assert rows[killed.id].attempts == 2 and all(rows[job.id].attempts == 1 for job in jobs[1:])
        # Each ended on a worker (which ones is Ray's timing: the killed one restarts while the other works on).
        assert {row.worker.split("/")[-1] for row in rows.values()} <= {"ray-1", "ray-2"}
        latents = [load_file(worker.output_dir / f"{job.id}.latents.safetensors")["latents"] for job in jobs[:2]]
        assert torch.equal(latents[0], latents[1])
    finally:
        worker.close(timeout=60)
        ray.shutdown()
