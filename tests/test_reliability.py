"""What the app meets and must outlive: a job store held by another process past its busy timeout (while a job
runs and while the worker waits for work), a failure in each phase of a job (what the phase loaded leaves), a
video writer that stops answering, an encoder that fails part way, and a job whose record cannot say which models
made it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import IMAGE, TINY_MODELS, needs_shared

from framepack.engine import generate
from framepack.events import Done, Error, Progress
from framepack.models import ModelSource
from framepack.queue import front as front_module
from framepack.queue.front import QueueFront
from framepack.queue.store import SqliteJobStore
from framepack.settings import Settings

FAST = dict(total_second_length=1.2, latent_window_size=3, steps=3, height=48, width=80, prompt="a cat")
# Another process holds the store's write lock for a while: BEGIN EXCLUSIVE, then sleep, then let go.
HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def hold_store(path: Path, seconds: float) -> subprocess.Popen:
    """Lock the store from another process for `seconds`; returns once it holds the lock."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@needs_shared
@pytest.mark.slow
def test_a_store_held_by_another_process_stops_neither_the_job_nor_the_worker(tmp_path, monkeypatch):
    monkeypatch.setattr(front_module, "STORE_RETRY_SECONDS", (0.1, 0.5))
    store = SqliteJobStore.in_folder(tmp_path, busy_timeout=0.2)  # far shorter than the lock is held
    front = QueueFront("original", ModelSource(models_dir=TINY_MODELS), tmp_path, store=store)
    try:
        # While a job runs: its progress cannot be written, and it ends while the store is still held.
        job = front.submit(Settings(**FAST), IMAGE)
        events = iter(job.events())
        while not isinstance(next(events), Progress):
            pass
        holder = hold_store(store.path, 4.0)
        rest = list(events)
        assert isinstance(rest[-1], Done) and not rest[-1].stopped, rest[-1]
        holder.wait(timeout=30)
        # Its end was kept and written once the store took it again (the worker wrote it before its next claim).
        wait_until(lambda: store.get(job.id).state == "done", "the job's end in the store")
        # While the worker waits for work: it backs off, and takes the next job once the store is free.
        holder = hold_store(store.path, 2.0)
        time.sleep(1.0)  # the worker's claims fail meanwhile
        assert front._alive == 1
        holder.wait(timeout=30)
        after = list(front.submit(Settings(**FAST, seed=7), IMAGE).events())
        assert isinstance(after[-1], Done) and not after[-1].stopped, after[-1]
    finally:
        front.close(timeout=60)


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    """Wait for another thread's write that nothing signals (the store is the only witness)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@needs_shared
@pytest.mark.parametrize("phase", ["text encoding", "image encoding"])
def test_a_failure_in_a_phase_releases_what_the_phase_loaded(tmp_path, monkeypatch, phase):
    """Where RAM is short the encoders are in memory only for their phase; a failure inside it must not leave them
    there (the real Llama is 15 GB)."""
    from framepack.engine import conditioning
    from framepack.loading import load_models
    from framepack.memory.planning import plan_memory
    from framepack.memory.sizes import GB, ModelConfigs, ModelSizes

    tiny = ModelSizes.from_configs(ModelConfigs.from_folder(TINY_MODELS), torch.float32, torch.float32)
    options = dict(height=64, width=96, device="cpu", mode="low", sizes=tiny)
    resident = plan_memory(1 * GB, None, **options)
    per_phase = plan_memory(1 * GB, resident.peak_ram - 1, **options)
    assert per_phase.lifetime == "phase"
    models = load_models("original", ModelSource(models_dir=TINY_MODELS), dtype="float32", plan=per_phase)

    def broken(*args, **kwargs):
        raise RuntimeError(f"{phase} failed")

    target = "encode_prompt" if phase == "text encoding" else "encode_image_embeds"
    monkeypatch.setattr(conditioning, target, broken)
    settings = Settings(height=64, width=96, total_second_length=1.2, steps=1, prompt=f"never seen {phase}")
    last = list(generate(models, settings, IMAGE, tmp_path, previews=False))[-1]
    assert isinstance(last, Error) and "RuntimeError" in last.message
    assert models.text_encoder is None and models.text_encoder_2 is None and models.image_encoder is None


def test_a_video_writer_that_stops_answering_ends_the_job_not_the_app(tmp_path, monkeypatch):
    from framepack.media import mp4

    monkeypatch.setattr(mp4, "WRITE_TIMEOUT_SECONDS", 0.5)
    release = threading.Event()

    class Stuck(mp4.SegmentedVideo):
        def write(self, *args, **kwargs):
            release.wait(10)  # a disk that hangs
            return super().write(*args, **kwargs)

    writer = mp4.BackgroundVideoWriter(Stuck(tmp_path / "parts", prepend=False))
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    writer.submit(frames, frames[:0], tmp_path / "video.mp4", "tag")
    started = time.monotonic()
    assert writer.finished(wait=True) == [] and "no update finished in 0.5 s" in str(writer.error)
    writer.close()  # gives up on the thread after the timeout, without waiting for the disk
    assert time.monotonic() - started < 5
    release.set()


def test_an_encoder_that_fails_part_way_leaves_nothing(tmp_path, monkeypatch):
    from framepack.media import mp4

    add, calls = mp4.Mp4Encoder.add, []

    def failing(self, frame):
        calls.append(frame)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        add(self, frame)

    monkeypatch.setattr(mp4.Mp4Encoder, "add", failing)
    with pytest.raises(OSError):
        mp4.encode_mp4(np.zeros((4, 16, 16, 3), np.uint8), tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []  # no temporary file, nothing under the name


def test_the_store_closes_every_threads_connection(tmp_path):
    store = SqliteJobStore.in_folder(tmp_path)
    thread = threading.Thread(target=store.list)
    thread.start()
    thread.join()
    opened = list(store._opened)
    assert len(opened) == 2  # this thread's (made when the table was) and the other's
    store.close()
    for connection in opened:
        with pytest.raises(Exception, match="closed"):
            connection.execute("SELECT 1")


def test_a_follower_is_told_when_the_front_stops_following(monkeypatch, tmp_path):
    monkeypatch.setattr(front_module, "FOLLOW_CHECK_SECONDS", 0.1)
    from framepack.queue.front import Job

    class Front:
        def following(self, job_id: str) -> bool:
            return False  # its front closed without a word

    job = Job(Front(), "job", "local")
    events = list(job.events())
    assert len(events) == 1 and isinstance(events[0], Error) and "stopped answering" in events[0].message


@needs_shared
def test_a_job_whose_record_does_not_say_its_models_is_not_resumed_on_others(tiny_models, tmp_path):
    import json

    stop = threading.Event()
    for event in generate(tiny_models("original"), Settings(**FAST), IMAGE, tmp_path, job_id="job", stop=stop, previews=False):
        if isinstance(event, Progress) and event.section == 2:
            stop.set()
    assert isinstance(event, Done) and event.stopped
    record = json.loads((tmp_path / "job.json").read_text())
    del record["models"]
    (tmp_path / "job.json").write_text(json.dumps(record))
    front = QueueFront("original", ModelSource(models_dir=TINY_MODELS), tmp_path)
    try:
        last = list(front.submit_resume("job").events())[-1]
    finally:
        front.close(timeout=60)
    assert isinstance(last, Error) and "does not say which models made it" in last.message
    result = subprocess.run(
        [sys.executable, "-m", "framepack", "resume", str(tmp_path / "job.json")], capture_output=True, text=True,
        cwd=Path(__file__).resolve().parents[1], timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 1 and result.stderr.strip().endswith("does not say which models made it; it cannot go on with others")
    assert "Traceback" not in result.stderr
