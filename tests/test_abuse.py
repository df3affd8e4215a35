"""What one user can do to the app and to others: limits that hold whichever way a job enters the line, and inputs
that look like options."""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time

import pytest
from helpers import IMAGE, TINY_MODELS, make_clip, needs_shared
from PIL import Image

from framepack.cli.batchfile import read_batch
from framepack.cli.options import add_job_options
from framepack.events import Error
from framepack.models import ModelSource
from framepack.queue.front import QueueFront
from framepack.queue.runners import LocalRunner
from framepack.settings import Settings


@pytest.fixture
def store_changes(monkeypatch) -> threading.Condition:
    """A condition notified after every write to a job store in this process: the tests wait on it, not on a clock."""
    from framepack.queue.store import SqliteJobStore

    changed = threading.Condition()
    for name in ("add", "update", "claim", "recover"):

        def notifying(self, *args, _real=getattr(SqliteJobStore, name), **kwargs):
            try:
                return _real(self, *args, **kwargs)
            finally:
                with changed:
                    changed.notify_all()

        monkeypatch.setattr(SqliteJobStore, name, notifying)
    return changed


def wait_for_states(front: QueueFront, wanted: dict[str, str], changed: threading.Condition, seconds: float = 30) -> None:
    def reached() -> bool:
        states = {job.id: job.state for job in front.list_jobs()}
        return all(states.get(job_id) == state for job_id, state in wanted.items())

    with changed:
        if not changed.wait_for(reached, timeout=seconds):
            raise AssertionError(f"states {[(job.id, job.state) for job in front.list_jobs()]}, wanted {wanted}")


def test_a_retry_counts_against_the_owners_limit(tmp_path, monkeypatch, store_changes):
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
        wait_for_states(front, dict.fromkeys(first, "running"), store_changes)
        for job_id in first:
            front.cancel_job(job_id, "alice")
        wait_for_states(front, dict.fromkeys(first, "failed"), store_changes)
        second = [front.submit(settings, image, owner="alice", follow=False).id for _ in range(2)]
        wait_for_states(front, dict.fromkeys(second, "running"), store_changes)

        refused = front.retry(first[0], "alice")
        assert refused == "You already have 2 jobs waiting or running; wait for one to end or stop one."
        assert front.job(first[0]).state == "failed"
        assert sum(job.active for job in front.list_jobs("alice")) == 2
        assert front.submit(settings, image, owner="alice", follow=False).refused
        assert front.retry(first[0], "bob") == "Only a stopped or failed job can run again."  # not bob's to retry
        for job_id in second:
            front.cancel_job(job_id, "alice")
        wait_for_states(front, dict.fromkeys(second, "failed"), store_changes)
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


def outputs_with_jobs(folder):
    """An outputs folder whose queue held a finished job, an interrupted one and one still waiting (inputs only)."""
    from framepack.jobs.paths import JobPaths
    from framepack.jobs.record import JobRecord
    from framepack.queue.store import SqliteJobStore

    folder.mkdir()
    settings = Settings(prompt="a girl", total_second_length=0.4).to_dict()
    for name, state, done in (("finished", "done", 1), ("interrupted", "running", 1)):
        paths = JobPaths(folder, name)
        JobRecord(state=state, sections_done=done, sections=2, owner="alice", settings=settings, video=paths.video.name).save(paths)
        paths.video.write_bytes(b"a video")
    kept = folder / ".queue" / "interrupted" / "image"
    kept.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(kept / "image.png")
    (folder / ".queue" / "waiting" / "image").mkdir(parents=True)
    SqliteJobStore.in_folder(folder).close()  # the store as it was: a real SQLite file
    return folder


def damage_header(path):
    with open(path, "r+b") as file:
        file.write(b"this is not SQLite")


def damage_last_page(path):
    from framepack.jobs.spec import JobSpec
    from framepack.queue.store import QueuedJob, SqliteJobStore

    store = SqliteJobStore(path)
    for index in range(200):  # enough rows for several pages
        store.add(QueuedJob(f"job{index:03d}", "alice", JobSpec("generate", settings={"prompt": "x" * 200})))
    store.close()
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.seek(size - 4096)  # the last page's b-tree header and the start of its cell pointers
        file.write(b"\xff" * 64)


@pytest.mark.parametrize("damage", ["emptied", "header", "last page"])
def test_a_damaged_job_store_is_kept_aside_and_the_queue_rebuilt_from_the_records(tmp_path, damage):
    from framepack.queue.repair import open_store
    from framepack.queue.store import DB_NAME

    folder = outputs_with_jobs(tmp_path / "out")
    store_file = folder / DB_NAME
    {"emptied": lambda p: p.write_bytes(b""), "header": damage_header, "last page": damage_last_page}[damage](store_file)

    store, note = open_store(folder)
    try:
        jobs = {job.id: job for job in store.list()}
        assert set(jobs) == {"finished", "interrupted"}
        assert jobs["finished"].state == "done" and jobs["finished"].video == "finished.mp4"
        assert jobs["interrupted"].state == "stopped" and "retry" in jobs["interrupted"].message
        assert jobs["interrupted"].spec.files == {"image": "image/image.png"}  # the copies it kept, to make it again
        assert all(job.owner == "alice" for job in jobs.values())
    finally:
        store.close()
    aside = [p.name for p in folder.iterdir() if p.name.startswith(f"{DB_NAME}.damaged-") and p.name[-4:] not in ("-wal", "-shm")]
    assert len(aside) == 1 and note.count("\n") == 0
    assert note.startswith(f"The job store {store_file} ") and f"kept as {aside[0]}" in note
    assert "(2 jobs)" in note and "1 waiting job had no record yet" in note
    assert (folder / ".queue" / "waiting").is_dir()  # its inputs are not thrown away
    # Opened again, the rebuilt store is sound: nothing more is set aside.
    kept = sorted(folder.iterdir())
    store, note = open_store(folder)
    store.close()
    assert note is None and [p for p in sorted(folder.iterdir()) if ".damaged-" in p.name] == [p for p in kept if ".damaged-" in p.name]


def test_a_sound_store_or_a_new_folder_opens_without_a_note(tmp_path):
    from framepack.queue.repair import open_store

    store, note = open_store(tmp_path / "new")
    store.close()
    assert note is None
    (tmp_path / "new" / "jobs.sqlite3").write_bytes(b"")  # empty, but there were never any jobs
    store, note = open_store(tmp_path / "new")
    store.close()
    assert note is None


def test_a_user_at_the_limit_is_turned_away_before_any_upload_is_read(tmp_path, monkeypatch, store_changes):
    from framepack.app.service import AppService

    def events_until_stopped(self, job, stop: threading.Event):
        stop.wait(30)
        yield Error("stopped by the test")

    monkeypatch.setattr(LocalRunner, "events", events_until_stopped)
    image = tmp_path / "start.png"
    Image.new("RGB", (64, 64)).save(image)
    front = QueueFront("original", ModelSource(models_dir=tmp_path / "no-models"), tmp_path / "out", max_jobs_per_owner=1)
    service = AppService(front, "original")
    try:
        values = {"input_image": str(image), "prompt": "a girl", "total_second_length": 0.4}
        first = service.submit("alice", None, values, follow=False)
        wait_for_states(front, {first.id: "running"}, store_changes)

        def read_anything(*args, **kwargs):
            raise AssertionError("an upload was read for a user at the limit")

        monkeypatch.setattr(AppService, "check_job", read_anything)
        for refused in (service.submit("alice", None, values, follow=False),
                        service.extend("alice", None, str(image), values, follow=False),
                        service.postprocess("alice", None, {"format": "gif"}, video=str(image), follow=False)):  # fmt: skip
            assert refused.refused
            assert "you already have 1 job waiting or running" in next(refused.events()).message
        assert [job.id for job in front.list_jobs()] == [first.id]  # nothing else was queued, no inputs were kept
        assert sorted(p.name for p in (tmp_path / "out" / ".queue").iterdir() if p.name != "fronts") == [first.id]
        first.cancel()
    finally:
        front.close(timeout=30)


def test_settings_are_read_a_few_at_a_time(tmp_path, monkeypatch):
    """However many calls ask at once, only a few previous outputs are parsed at a time; the rest wait their turn or
    are told to try again."""
    from framepack.app import service as service_module
    from framepack.app.service import AppService

    record = tmp_path / "job.json"
    record.write_text(json.dumps({"settings": {"prompt": "a girl"}}))
    reading, most, lock, release = 0, 0, threading.Lock(), threading.Event()
    real = service_module.settings_of_output

    def slow_read(path):
        nonlocal reading, most
        with lock:
            reading += 1
            most = max(most, reading)
        release.wait(10)
        with lock:
            reading -= 1
        return real(path)

    monkeypatch.setattr(service_module, "settings_of_output", slow_read)
    monkeypatch.setattr(service_module, "SETTINGS_READ_WAIT_SECONDS", 0.5)
    service = AppService(None, "original")
    answers: queue.Queue = queue.Queue()
    threads = [threading.Thread(target=lambda: answers.put(service.settings_of_file(str(record)))) for _ in range(6)]
    for thread in threads:
        thread.start()
    busy = [answers.get(timeout=10) for _ in range(4)]  # while two read, the other four give up
    release.set()
    loaded = [answers.get(timeout=10) for _ in range(2)]
    for thread in threads:
        thread.join(10)
    assert most == service_module.SETTINGS_READS_AT_ONCE == 2
    assert len(loaded) == 2 and all(r.values["prompt"] == "a girl" for r in loaded)
    assert len(busy) == 4 and all(r.message == "Other settings are being read; try again in a moment." for r in busy)


# Another instance on the same outputs folder: it takes a job it follows itself (so only it may run it), prints
# "running" once the job runs, and runs it until it is killed.
OTHER_INSTANCE = """
import sys, threading
from PIL import Image
from framepack.models import ModelSource
from framepack.queue.front import QueueFront
from framepack.queue.runners import LocalRunner
from framepack.settings import Settings

running = threading.Event()

def forever(self, job, stop):
    running.set()
    threading.Event().wait()
    yield

LocalRunner.events = forever
out, image = sys.argv[1], sys.argv[2]
front = QueueFront("original", ModelSource(models_dir=out + "/no-models"), out)
job = front.submit(Settings(prompt="a girl", total_second_length=0.4), image)
running.wait()  # its worker has claimed it: the store says "running"
print(job.id, flush=True)
threading.Event().wait()
"""


def test_an_instance_notices_a_killed_one_within_seconds_and_finishes_its_job(tmp_path, monkeypatch, store_changes):
    import subprocess
    import sys

    from helpers import REPO

    from framepack.events import Done
    from framepack.queue import front as front_module

    def done_at_once(self, job, stop):
        yield Done(video_path=None, latents_path=None, frames=1, seconds=0.1, sections_done=1, stopped=False, elapsed=0.0)

    monkeypatch.setattr(LocalRunner, "events", done_at_once)
    monkeypatch.setattr(front_module, "EXTERNAL_CHECK_SECONDS", 1.0)
    out = tmp_path / "out"
    out.mkdir()
    image = tmp_path / "start.png"
    Image.new("RGB", (64, 64)).save(image)
    other = subprocess.Popen([sys.executable, "-c", OTHER_INSTANCE, str(out), str(image)], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        job_id = other.stdout.readline().strip()
        assert job_id, other.stderr.read()
        front = QueueFront("original", ModelSource(models_dir=tmp_path / "no-models"), out)
        try:
            with store_changes:  # the other instance is alive: its job stays its own, whatever this front does
                assert not store_changes.wait_for(lambda: front.job(job_id).state != "running", timeout=2.0)
            other.kill()
            other.wait(30)
            killed = time.monotonic()
            wait_for_states(front, {job_id: "done"}, store_changes, seconds=15)
            assert time.monotonic() - killed < 10  # noticed while this instance ran, within seconds
            assert front.job(job_id).attempts == 2
        finally:
            front.close(timeout=30)
    finally:
        other.kill()
        other.wait(30)


def test_the_login_page_does_not_describe_the_api(tmp_path):
    """With logins, the page served before the login (and the run history page) carries no API description; after
    the login the page has it, and the API answers."""
    import http.cookiejar
    import urllib.parse
    import urllib.request

    from gradio_client import Client
    from helpers import running_app

    with running_app(tmp_path / "outputs", "--auth", "alice:secret") as app:
        for path in ("/", "/gradio_api/runs"):
            page = urllib.request.urlopen(app.url + path).read().decode()
            assert "window.gradio_api_info" in page and "queue_add" not in page and "/generate" not in page
        jar = http.cookiejar.CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        browser.open(app.url + "/login", urllib.parse.urlencode({"username": "alice", "password": "secret"}).encode())
        assert "queue_add" in browser.open(app.url + "/").read().decode()
        assert Client(app.url, auth=("alice", "secret"), verbose=False).predict(api_name="/queue_list") == []


def test_a_full_disk_when_a_job_ends_ends_that_job_not_the_worker(tmp_path, monkeypatch, store_changes):
    """The store cannot take a job's end (the disk is full): the job's stream still ends, the worker serves the next
    job, and the first job's end is written once the store takes writes again."""
    import sqlite3

    from framepack.events import Done
    from framepack.queue import front as front_module
    from framepack.queue.store import SqliteJobStore

    def done_at_once(self, job, stop):
        yield Done(video_path=None, latents_path=None, frames=1, seconds=0.1, sections_done=1, stopped=False, elapsed=0.0)

    monkeypatch.setattr(LocalRunner, "events", done_at_once)
    monkeypatch.setattr(front_module, "STORE_RETRY_SECONDS", (0.05, 0.2))
    full = threading.Event()
    real_update = SqliteJobStore.update

    def update(self, job_id, **fields):
        if full.is_set() and fields.get("state") == "done":
            full.clear()  # the disk has room again after this write
            raise sqlite3.OperationalError("database or disk is full")
        return real_update(self, job_id, **fields)

    monkeypatch.setattr(SqliteJobStore, "update", update)
    image = tmp_path / "start.png"
    Image.new("RGB", (64, 64)).save(image)
    front = QueueFront("original", ModelSource(models_dir=tmp_path / "no-models"), tmp_path / "out")
    try:
        full.set()
        first = front.submit(Settings(prompt="a girl", total_second_length=0.4), image)
        assert isinstance(list(first.events())[-1], Done)  # the stream ends, it does not hang
        second = front.submit(Settings(prompt="a boy", total_second_length=0.4), image)
        assert isinstance(list(second.events())[-1], Done)
        wait_for_states(front, {first.id: "done", second.id: "done"}, store_changes)
        assert front._alive == 1
    finally:
        front.close(timeout=30)


@needs_shared
def test_a_renamed_video_still_names_its_job_and_only_its_owner_may_use_it(tiny_models, tmp_path, monkeypatch):
    """A job is found by what its video (or record) says, not by the file's name; the record decides who may use it."""
    import shutil

    from framepack.app.service import AppService
    from framepack.engine import generate
    from framepack.events import Done
    from framepack.jobs.record import named_job

    outputs, uploads = tmp_path / "outputs", tmp_path / "uploads"
    uploads.mkdir()
    settings = Settings(total_second_length=0.4, latent_window_size=3, steps=1, height=48, width=80, prompt="a girl")
    list(generate(tiny_models("original"), settings, IMAGE, outputs, job_id="first", owner="user:alice", previews=False))
    renamed = shutil.copy(outputs / "first.mp4", uploads / "first_job.mp4")
    record = shutil.copy(outputs / "first.json", uploads / "my settings.json")
    assert named_job(renamed) == named_job(record) == "first"
    other = make_clip(uploads / "other.mp4", 3, 30, (64, 48))
    assert named_job(other) == "other"  # nothing inside names a job: the file's name is all there is

    def done_at_once(self, job, stop):
        yield Done(video_path=None, latents_path=None, frames=1, seconds=0.1, sections_done=1, stopped=False, elapsed=0.0)

    monkeypatch.setattr(LocalRunner, "events", done_at_once)
    front = QueueFront("original", ModelSource(models_dir=TINY_MODELS), outputs)
    try:
        service = AppService(front, "original")
        branched = service.branch("user:alice", None, str(renamed), 1, 7, follow=False)
        assert not branched.refused and front.job(branched.id).spec.source == "first"
        refused = service.branch("user:bob", None, str(renamed), 1, 7, follow=False)
        assert refused.refused and next(refused.events()).message == "you have no job named 'first' in this app's outputs"
    finally:
        front.close(timeout=30)


def test_a_job_cancelled_while_its_process_was_down_stays_cancelled(tmp_path):
    """`queue cancel` on a job whose app was killed marks it; the next front to start ends it instead of running it
    again at the head of the line."""
    from framepack.cli.queue import cancel_in_store
    from framepack.jobs.spec import JobSpec
    from framepack.queue.store import QueuedJob, SqliteJobStore

    store = SqliteJobStore.in_folder(tmp_path)
    try:
        for job_id in ("cancelled", "interrupted"):
            store.add(QueuedJob(job_id, "alice", JobSpec("generate", settings={"prompt": "a girl"})))
            store.claim("dead-front/cpu", "original", "dead-front")
        assert cancel_in_store(store, tmp_path, "cancelled") == 0  # the process that ran it is gone: marked
        recovered = store.recover(lambda front: False)
        assert [job.id for job in recovered] == ["interrupted"]
        assert store.get("cancelled").state == "stopped" and store.get("interrupted").state == "queued"
    finally:
        store.close()


def test_stop_acts_for_the_login_that_calls_it():
    """/stop and End stop the session's jobs of the caller's own login: another login holding the session's id (its
    session state) stops nothing."""
    from types import SimpleNamespace

    from framepack.app.service import AppService
    from framepack.app.wiring import Handlers, Session

    class FakeJob:
        def __init__(self, owner: str):
            self.owner, self.cancelled = owner, False

        def cancel(self) -> None:
            self.cancelled = True

    handlers = Handlers(AppService(None, "original"), "login")
    session = Session()
    session.jobs = [FakeJob("user:alice")]
    handlers.stop(session, SimpleNamespace(username="bob", session_hash="alices-session"))
    assert not session.jobs[0].cancelled
    handlers.stop(session, SimpleNamespace(username="alice", session_hash="alices-session"))
    assert session.jobs[0].cancelled


def test_workers_sharing_the_cpu_split_its_cores():
    """Two local workers on the CPU each get half the cores (each with all of them, OpenMP's waits stall both)."""
    import os
    from types import SimpleNamespace

    from framepack.queue.runners import cpu_threads_each

    cores = os.cpu_count() or 1
    assert cpu_threads_each([None]) is None  # one worker: all of them
    assert cpu_threads_each([None, None]) == max(1, cores // 2)
    assert cpu_threads_each([None] * (2 * cores + 1)) == 1
    gpu = SimpleNamespace(device="cuda:0")  # a plan's device is all that counts
    assert cpu_threads_each([gpu, gpu]) is None  # GPUs: their own


def write_flat_png(path, width: int, height: int) -> None:
    """A black RGB PNG of any size written a row at a time: the test never holds its pixels (13,000 x 13,000 is
    507 MB decoded and about 0.5 MB on disk)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" * (1 + 3 * width)  # filter byte, then RGB
    with open(path, "wb") as png:
        png.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        for _ in range(height):
            if packed := packer.compress(row):
                png.write(chunk(b"IDAT", packed))
        png.write(chunk(b"IDAT", packer.flush()) + chunk(b"IEND", b""))


PEAK_OF_SUBMITS = """
import json, resource, sys, threading
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from framepack.app.service import AppService
from framepack.events import Error
from framepack.media.images import ImageError
from framepack.models import ModelSource
from framepack.queue.front import QueueFront
from framepack.queue.runners import LocalRunner

def answer(user):
    try:
        return next(service.submit(user, None, values, follow=False).events()).message
    except ImageError as error:  # the page and the API show it as the job's one-line error
        return str(error)

def events_until_stopped(self, job, stop):
    stop.wait(60)
    yield Error("stopped by the test")

LocalRunner.events = events_until_stopped
out, huge = Path(sys.argv[2]), sys.argv[3]
front = QueueFront("original", ModelSource(models_dir=out / "no-models"), out / "outputs", max_jobs_per_owner=1)
service = AppService(front, "original")
small = {"input_image": sys.argv[4], "prompt": "a girl", "total_second_length": 0.4}
first = service.submit("alice", None, small, follow=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
values = {**small, "input_image": huge}
answers = [answer(user) for user in ("alice", "bob")]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
first.cancel()
front.close(timeout=30)
print(json.dumps({"answers": answers, "grew_kb": after - before}))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "getuid"), reason="reads the peak memory with resource (POSIX)")
def test_a_13000_pixel_square_png_costs_no_memory_to_refuse(tmp_path):
    """The red team's 13,000 x 13,000 PNG (cost 2.7 GB and 17 s per call): from a user at the limit it is turned away
    before it is read, from anyone else refused by the pixel budget from its header; the process's peak memory
    (measured in a fresh process, so earlier tests' peaks do not hide it) grows by far less than one decode."""
    import subprocess
    import sys
    from pathlib import Path

    huge, small = tmp_path / "huge.png", tmp_path / "small.png"
    write_flat_png(huge, 13_000, 13_000)
    assert huge.stat().st_size < 2_000_000
    Image.new("RGB", (64, 64)).save(small)
    tests, root = Path(__file__).parent, Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "-c", PEAK_OF_SUBMITS, str(root), str(tmp_path), str(huge), str(small)],
                          capture_output=True, text=True, timeout=300, cwd=tests)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    alice, bob = result["answers"]
    assert "you already have 1 job waiting or running" in alice
    assert "huge.png is 13000x13000 (169 MP), more than the 64 MP this app decodes" in bob
    assert result["grew_kb"] < 64 * 1024, result  # one decode is 507 MB as RGB


def test_a_copy_of_a_video_is_found_by_its_content_and_only_for_its_owner(tmp_path):
    """A video that names no job (its metadata gone, any file name) is the owner's job whose video has the same bytes;
    the same bytes are no one else's job, and a file of the same size but other bytes is no job."""
    from framepack.jobs.paths import JobPaths
    from framepack.jobs.record import JobRecord, job_of_file

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    videos = {"260101_000000_aaaaaa": b"alice's video " * 100, "260101_000000_bbbbbb": b"bobs's videos " * 100}
    for (job_id, content), owner in zip(videos.items(), ("user:alice", "user:bob")):
        paths = JobPaths(outputs, job_id)
        JobRecord(state="done", owner=owner, video=paths.video.name).save(paths)
        paths.video.write_bytes(content)
    copy = tmp_path / "holiday.mp4"
    copy.write_bytes(videos["260101_000000_aaaaaa"])
    assert job_of_file(copy, outputs, "user:alice") == "260101_000000_aaaaaa"
    assert job_of_file(copy, outputs) == "260101_000000_aaaaaa"  # the person at the machine: anyone's
    assert job_of_file(copy, outputs, "user:bob") == "holiday"  # not bob's: nothing of alice's is named to him
    other = tmp_path / "other.mp4"
    other.write_bytes(b"x" * len(videos["260101_000000_aaaaaa"]))
    assert job_of_file(other, outputs, "user:alice") == "other"
