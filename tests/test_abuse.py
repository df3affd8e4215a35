"""What one user can do to the app and to others: limits that hold whichever way a job enters the line, and inputs
that look like options."""

from __future__ import annotations

import argparse
import json
import threading
import time

from PIL import Image

from framepack.cli.batchfile import read_batch
from framepack.cli.options import add_job_options
from framepack.events import Error
from framepack.models import ModelSource
from framepack.queue.front import QueueFront
from framepack.queue.runners import LocalRunner
from framepack.settings import Settings


def wait_for_states(front: QueueFront, wanted: dict[str, str], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        states = {job.id: job.state for job in front.list_jobs()}
        if all(states.get(job_id) == state for job_id, state in wanted.items()):
            return
        time.sleep(0.05)
    raise AssertionError(f"states {states}, wanted {wanted}")


def test_a_retry_counts_against_the_owners_limit(tmp_path, monkeypatch):
    """Retrying ended jobs cannot put more than the limit in line (it could: add, cancel, add, retry)."""

    def events_until_stopped(self, job, stop: threading.Event):
        stop.wait(30)  # a job that runs until it is cancelled, without any model
        yield Error("stopped by the test")

    monkeypatch.setattr(LocalRunner, "events", events_until_stopped)
    image = tmp_path / "start.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(image)
    front = QueueFront("original", ModelSource(models_dir=tmp_path / "no-models"), tmp_path / "out",
                       max_jobs_per_owner=2, workers=2)  # fmt: skip
    try:
        settings = Settings(prompt="a girl", total_second_length=0.4)
        first = [front.submit(settings, image, owner="alice", follow=False).id for _ in range(2)]
        wait_for_states(front, dict.fromkeys(first, "running"))
        for job_id in first:
            front.cancel_job(job_id, "alice")
        wait_for_states(front, dict.fromkeys(first, "failed"))
        second = [front.submit(settings, image, owner="alice", follow=False).id for _ in range(2)]
        wait_for_states(front, dict.fromkeys(second, "running"))

        refused = front.retry(first[0], "alice")
        assert refused == "You already have 2 jobs waiting or running; wait for one to end or stop one."
        assert front.job(first[0]).state == "failed"
        assert sum(job.active for job in front.list_jobs("alice")) == 2
        assert front.submit(settings, image, owner="alice", follow=False).refused
        assert front.retry(first[0], "bob") == "Only a stopped or failed job can run again."  # not bob's to retry
        for job_id in second:
            front.cancel_job(job_id, "alice")
        wait_for_states(front, dict.fromkeys(second, "failed"))
        assert front.retry(first[0], "alice") is None  # under the limit again
    finally:
        front.close(timeout=30)


def test_a_batch_line_whose_values_begin_with_a_dash(tmp_path):
    """A prompt (or a negative prompt) that begins with "-" is the line's value, not an option."""
    Image.new("RGB", (64, 64)).save(tmp_path / "start.png")
    lines = [
        {"image": "start.png", "prompt": "-- she waves, then bows", "negative_prompt": "-blurry", "seed": -1},
        {"image": "start.png", "prompt": "--seconds 99"},
    ]
    batch = tmp_path / "jobs.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    defaults = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    add_job_options(defaults)
    jobs, problems = read_batch(batch, add_job_options, defaults.parse_args([]))
    assert problems == []
    (_, first), (_, second) = jobs
    assert (first.prompt, first.negative_prompt, first.seed) == ("-- she waves, then bows", "-blurry", -1)
    assert second.prompt == "--seconds 99" and not hasattr(second, "seconds")


def test_malformed_records_get_one_line_that_names_the_file(tmp_path):
    """A record under "Previous output" that is not what this app writes is refused in one line, never a 500."""
    from framepack.app.service import AppService

    service = AppService(None, "original")
    good = {"settings": {"prompt": "a girl"}}
    cases = {
        "keyframe-time": {**good, "inputs": {"keyframes": [{"name": "k.png", "seconds": "x"}]}},
        "lora-name": {**good, "loras": [{"weight": 1.0}]},
        "image-type": {**good, "inputs": {"image": 5}},
        "keyframes-type": {**good, "inputs": {"keyframes": "k.png"}},
        "settings-type": {"settings": [1, 2]},
    }
    for name, record in cases.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    for name in [*cases, "deep"]:
        loaded = service.settings_of_file(str(tmp_path / f"{name}.json"))
        assert loaded.error and loaded.values == {}, name
        assert loaded.message.startswith(f"{name}.json ") and "\n" not in loaded.message, loaded.message
    assert not service.settings_of_file(str(tmp_path / "keyframe-time.json").replace("keyframe-time", "missing")).values
    (tmp_path / "fine.json").write_text(json.dumps({**good, "inputs": {"keyframes": [{"name": "k.png", "seconds": 2}]}}))
    loaded = service.settings_of_file(str(tmp_path / "fine.json"))
    assert not loaded.error and loaded.values["prompt"] == "a girl" and loaded.values["keyframe_times"] == "2"
