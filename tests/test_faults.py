"""Fault injection: whatever fails inside a job ends that job with a clear message, keeps what it made, and leaves
the app's worker serving the next job, with nothing left behind on the shared transformer or in threads."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from helpers import IMAGE, TINY_MODELS, needs_shared
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from framepack.engine import loop as engine
from framepack.engine.stepcache import has_teacache
from framepack.events import Done, Error, SectionDone
from framepack.jobs.checkpoint import Checkpoint
from framepack.media.images import load_image
from framepack.media.reading import probe
from framepack.models import ModelSource
from framepack.queue.front import Job, QueueFront
from framepack.settings import Settings

pytestmark = needs_shared
# Three sections of three latent frames (9, 21, 33 frames... of 37 in all), two steps each.
FAST = {"total_second_length": 1.2, "steps": 2, "height": 64, "width": 96, "latent_window_size": 3, "prompt": "waves"}


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], QueueFront]]:
    """One app worker per variant, kept for the whole module: it must survive every fault below."""
    made: dict[str, QueueFront] = {}

    def get(variant: str) -> QueueFront:
        if variant not in made:
            made[variant] = QueueFront(variant, ModelSource(models_dir=TINY_MODELS), tmp_path_factory.mktemp(variant))
        return made[variant]

    yield get
    for worker in made.values():
        worker.close()


def events_of(job: Job, stop_after_section: int | None = None) -> list:
    events = []
    for event in job.events():
        events.append(event)
        if isinstance(event, SectionDone) and event.section == stop_after_section:
            job.cancel()
    return events


def submit(worker: QueueFront, **changes) -> Job:
    return worker.submit(Settings(variant=worker.variant, **{**FAST, **changes}), load_image(IMAGE))


def assert_serves_a_normal_job(worker: QueueFront) -> None:
    last = events_of(submit(worker, seed=99))[-1]
    assert isinstance(last, Done) and not last.stopped and last.frames == Settings(**FAST).num_frames
    models = worker.runners[0].keeper.models
    assert not has_teacache(models.transformer) and not getattr(models.transformer, "is_cache_enabled", False)
    assert not [t for t in threading.enumerate() if t.name == "framepack-video-writer"]


def assert_failed_clearly(event, worker: QueueFront, *phrases: str) -> None:
    assert isinstance(event, Error), event
    for phrase in phrases:
        assert phrase in event.message, event.message
    # Said to a remote user: no server paths, no traceback.
    assert str(worker.output_dir) not in event.message and "Traceback" not in event.message and "/" not in event.message
    assert not [t for t in threading.enumerate() if t.name == "framepack-video-writer"]


def finished_job(worker: QueueFront, **changes) -> Path:
    last = events_of(submit(worker, **changes))[-1]
    assert isinstance(last, Done) and not last.stopped
    return last.video_path


def stopped_job(worker: QueueFront, **changes) -> Path:
    """A job of 5 sections stopped once its first is on disk (the next may finish before the stop lands)."""
    last = events_of(submit(worker, total_second_length=2.0, **changes), stop_after_section=1)[-1]
    assert isinstance(last, Done) and last.stopped and 1 <= last.sections_done < 5
    return last.video_path


def test_an_exception_inside_the_engine(workers, monkeypatch, caplog):
    worker = workers("original")
    secret = worker.output_dir / "secret"

    def broken(*args, **kwargs):
        raise RuntimeError(f"kernel failed reading {secret}")

    monkeypatch.setattr(engine, "make_denoiser", broken)
    last = events_of(submit(worker))[-1]
    assert_failed_clearly(last, worker, "The job failed (RuntimeError)", "details are in the app's log")
    assert "kernel failed reading" in caplog.text  # whoever runs the app sees what happened
    monkeypatch.undo()
    assert_serves_a_normal_job(worker)


def test_an_exception_outside_the_engine(workers, monkeypatch):
    """A failure in the worker's own code around the engine ends the job, not the worker thread."""
    worker = workers("original")

    def broken(*args, **kwargs):
        raise TypeError("not an engine failure")

    monkeypatch.setattr("framepack.kinds.generate", broken)
    assert_failed_clearly(events_of(submit(worker))[-1], worker, "The job failed (TypeError)")
    monkeypatch.undo()
    assert_serves_a_normal_job(worker)


@pytest.mark.parametrize("damage", ["garbage", "older version", "missing part"])
def test_a_damaged_checkpoint_is_refused_on_resume(workers, damage):
    worker = workers("original")
    video = stopped_job(worker, seed=1)
    frames = probe(video).frames
    checkpoint = video.with_name(f"{video.stem}.checkpoint.safetensors")
    if damage == "garbage":
        checkpoint.write_bytes(b"\x00\x01 not a safetensors file")
    elif damage == "older version":  # a checkpoint without the fields this version writes
        save_file({"image": torch.zeros(4, 4, 3, dtype=torch.uint8)}, str(checkpoint), metadata={"job_id": video.stem})
    else:
        (video.parent / f".{video.stem}.parts" / "section_00000.safetensors").unlink()
    last = events_of(worker.submit_resume(video.stem))[-1]
    expected = "saved parts are missing" if damage == "missing part" else f"the checkpoint of {video.stem} is damaged"
    assert_failed_clearly(last, worker, expected)
    # Nothing the job made was touched.
    assert probe(video).frames == frames
    assert json.loads(video.with_suffix(".json").read_text())["state"] == "stopped"
    assert_serves_a_normal_job(worker)


def test_damaged_latents_are_refused_on_extend(workers):
    worker = workers("f1")
    video = finished_job(worker, seed=2)
    frames = probe(video).frames
    video.with_name(f"{video.stem}.latents.safetensors").write_bytes(b"broken")
    last = events_of(worker.submit_resume(video.stem, add_seconds=1.2))[-1]
    assert_failed_clearly(last, worker, f"the latents of {video.stem} are missing or damaged")
    assert probe(video).frames == frames
    assert not (video.parent / f".{video.stem}.parts").exists()
    assert_serves_a_normal_job(worker)


def test_out_of_memory_while_decoding_an_extension(workers, monkeypatch):
    worker = workers("f1")
    video = finished_job(worker, seed=3)
    frames = probe(video).frames

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    from framepack.engine import starts

    monkeypatch.setattr(starts, "decode_latents", out_of_memory)  # while the longer video's start re-decodes its end
    last = events_of(worker.submit_resume(video.stem, add_seconds=1.2))[-1]
    assert_failed_clearly(last, worker, "Out of GPU memory")
    # The finished video is as it was, and a longer one is still made once memory allows; the shorter one stays.
    assert probe(video).frames == frames and not (video.parent / f".{video.stem}.parts").exists()
    assert json.loads(video.with_suffix(".json").read_text())["state"] == "done"
    monkeypatch.undo()
    last = events_of(worker.submit_resume(video.stem, add_seconds=1.2))[-1]
    longer = Settings(**{**FAST, "total_second_length": 2.4}).num_frames
    assert isinstance(last, Done) and not last.stopped and probe(last.video_path).frames == longer
    assert probe(video).frames == frames
    assert_serves_a_normal_job(worker)


@pytest.fixture(scope="module")
def uninterrupted(workers) -> torch.Tensor:
    """The latents of the job the interrupted ones below must end with."""
    video = finished_job(workers("original"), seed=7)
    return load_file(video.with_name(f"{video.stem}.latents.safetensors"))["latents"]


def fail_on_call(number: int, error: BaseException, function: Callable) -> Callable:
    """`function`, except that its `number`-th call raises `error`."""
    calls = 0

    def patched(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == number:
            raise error
        return function(*args, **kwargs)

    return patched


@pytest.mark.parametrize(
    "fault",
    ["disk full during a checkpoint", "disk full during the video", "VAE error mid-job"],
)
def test_a_failed_section_keeps_the_finished_ones_and_resumes_exactly(workers, uninterrupted, monkeypatch, fault):
    worker = workers("original")
    full = SafetensorError("No space left on device (os error 28)")
    if fault == "disk full during a checkpoint":
        monkeypatch.setattr(Checkpoint, "save", fail_on_call(2, full, Checkpoint.save))
        expected = "Writing the job's files failed (the disk is full)"
    elif fault == "disk full during the video":
        import framepack.media.mp4 as video_module

        error = OSError(28, "No space left on device")
        monkeypatch.setattr(video_module, "concat_mp4", fail_on_call(2, error, video_module.concat_mp4))
        expected = "Writing the job's files failed (the disk is full)"
    else:
        error = RuntimeError("decoder exploded")
        monkeypatch.setattr(engine, "decode_latents", fail_on_call(2, error, engine.decode_latents))
        expected = "The job failed (RuntimeError)"
    job = submit(worker, seed=7)
    last = events_of(job)[-1]
    assert_failed_clearly(last, worker, expected, "Finished sections are kept")
    manifest = json.loads((worker.output_dir / f"{job.id}.json").read_text())
    assert manifest["state"] == "failed" and manifest["sections_done"] == 1
    assert Checkpoint.load(worker.output_dir / f"{job.id}.checkpoint.safetensors").sections_done == 1
    assert probe(worker.output_dir / f"{job.id}.mp4").frames > 0
    monkeypatch.undo()

    last = events_of(worker.submit_resume(job.id))[-1]
    assert isinstance(last, Done) and not last.stopped, last
    latents = load_file(worker.output_dir / f"{job.id}.latents.safetensors")["latents"]
    assert torch.equal(latents, uninterrupted)
    assert probe(worker.output_dir / f"{job.id}.mp4").frames == Settings(**FAST).num_frames
    left = sorted(p.name for p in worker.output_dir.iterdir() if job.id in p.name)
    assert left == [f"{job.id}.json", f"{job.id}.latents.safetensors", f"{job.id}.mp4"]
    assert_serves_a_normal_job(worker)


def test_a_job_cannot_run_twice_at_once(workers):
    """Two resumes of one job (two tabs, or the app and the command line) would write the same files."""
    from framepack.jobs.paths import JobLock, JobPaths

    worker = workers("original")
    video = stopped_job(worker, seed=4)
    lock = JobLock(JobPaths(worker.output_dir, video.stem))  # as another process working on it would hold
    assert lock.acquire()
    try:
        last = events_of(worker.submit_resume(video.stem))[-1]
        assert_failed_clearly(last, worker, f"{video.stem} is being worked on already")
    finally:
        lock.release()
    assert isinstance(events_of(worker.submit_resume(video.stem))[-1], Done)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_if_the_worker_thread_ends_no_job_waits_for_it(tmp_path, monkeypatch):
    """Even a failure no `except Exception` catches (here: SystemExit in the worker's thread) ends the waiting
    jobs' streams and refuses later jobs, instead of leaving pages waiting forever."""
    worker = QueueFront("original", ModelSource(models_dir=TINY_MODELS), tmp_path)
    release = threading.Event()

    def dying(job, stop):
        release.wait()
        raise SystemExit("the worker thread ends")

    monkeypatch.setattr(worker.runners[0], "events", dying)
    running, waiting = submit(worker), submit(worker)
    release.set()
    assert isinstance(events_of(running)[-1], Error)
    assert events_of(waiting)[-1] == Error("The app's worker stopped; see the app's log.")
    assert events_of(submit(worker))[-1] == Error("The app's worker stopped; see the app's log.")
    worker.close()
