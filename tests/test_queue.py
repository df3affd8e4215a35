"""The persistent queue: the store, `queue` and `batch` on the command line, the app killed and started again,
and two logins that cannot reach each other's queued jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from gradio_client import Client, handle_file
from helpers import (
    IMAGE,
    REPO,
    TINY_MODELS,
    free_port,
    needs_shared,
    run_cli,
    running_app,
)
from safetensors.torch import load_file

from framepack.engine import generate
from framepack.events import Done
from framepack.files import FileLock
from framepack.jobs.spec import JobSpec
from framepack.queue.store import FrontLock, QueuedJob, SqliteJobStore
from framepack.settings import Settings

FAST = {"resolution": 128, "steps": 3, "latent_window_size": 3}
LOGINS = {"alice": "wonderland", "bob": "builder"}


def wait_for(condition, timeout: float, what: str, every: float = 0.2):
    """Poll `condition` until it gives something true (a test waiting on another process has nothing to join)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def uninterrupted_latents(tiny_models, settings: dict, tmp_path: Path) -> torch.Tensor:
    """The latents of the same job run start to end in this process, on the same weights."""
    events = list(generate(tiny_models("original"), Settings.from_dict(settings), IMAGE, tmp_path / "reference"))
    assert isinstance(events[-1], Done) and not events[-1].stopped, events[-1]
    return load_file(events[-1].latents_path)["latents"]


# ------------------------------------------------------------------------------------------ the store


def test_the_store_keeps_the_line_and_gives_each_job_to_one_worker(tmp_path):
    store = SqliteJobStore.in_folder(tmp_path)
    spec = JobSpec("generate", {"prompt": "a"})
    jobs = [store.add(QueuedJob(f"job{i}", "local", spec, variant)) for i, variant in enumerate(["original", "f1", "original", "original"])]
    assert [j.position for j in jobs] == [1.0, 2.0, 3.0, 4.0]
    assert store.move("job3", -1) and not store.move("nope", 1)
    assert [j.id for j in store.list()] == ["job0", "job1", "job3", "job2"]
    # Claims follow the line, by variant; a job bound to a front is only that front's.
    store.update("job3", front="other")
    first = store.claim("me/cpu", "original", "me")
    assert (first.id, first.state, first.worker, first.attempts) == ("job0", "running", "me/cpu", 1)
    assert store.claim("me/cpu", "original", "me").id == "job2"
    assert store.claim("me/cpu", "original", "me") is None
    assert store.claim("other/cpu", "original", "other").id == "job3"
    assert store.claim("me/cpu", "f1", "me").id == "job1"
    # A second connection (another process) sees the same rows.
    again = SqliteJobStore.in_folder(tmp_path)
    assert {j.id: j.state for j in again.list()} == {"job0": "running", "job1": "running", "job2": "running", "job3": "running"}
    assert again.get("job1").spec == spec


def test_jobs_of_a_dead_front_go_back_in_line_first(tmp_path):
    store = SqliteJobStore.in_folder(tmp_path)
    spec = JobSpec("generate")
    for name in ("a", "b", "c"):
        store.add(QueuedJob(name, "local", spec))
    dead = "host-1-dead"
    (tmp_path / ".queue" / "fronts").mkdir(parents=True)
    (tmp_path / ".queue" / "fronts" / f"{dead}.lock").touch()  # its file, but nobody holds the lock
    store.claim(f"{dead}/cuda:0", "original", dead)
    store.update("c", front=dead)
    live = FrontLock(tmp_path)
    held = FileLock(tmp_path / ".queue" / "fronts" / "host-2-alive.lock")
    assert held.acquire()  # a live front (the OS lock is held)
    store.update("b", state="running", worker="host-2-alive/cuda:1")
    recovered = store.recover(live.alive)
    assert [j.id for j in recovered] == ["a"]
    line = store.list()
    assert [(j.id, j.state) for j in line] == [("b", "running"), ("a", "queued"), ("c", "queued")]
    assert store.get("a").worker is None and store.get("c").front is None and store.get("a").attempts == 1
    assert not (tmp_path / ".queue" / "fronts" / f"{dead}.lock").exists()
    held.release()
    live.release()


# ------------------------------------------------------------------------------------------ the command line


@needs_shared
@pytest.mark.slow
def test_queue_add_list_cancel_and_run_on_two_workers(tmp_path):
    out = str(tmp_path / "out")
    ids = []
    for seed in (1, 2, 3):
        added = run_cli("queue", "add", "--output-dir", out, "--image", str(IMAGE), "--prompt", "a girl", "--seconds", "0.8",
                        "--seed", str(seed), *[f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()])  # fmt: skip
        assert added.returncode == 0, added.stderr
        ids.append(added.stdout.strip())
    listed = run_cli("queue", "list", "--output-dir", out).stdout.splitlines()
    assert [line.split()[:2] for line in listed] == [[i, "queued"] for i in ids]
    assert run_cli("queue", "cancel", "--output-dir", out, ids[2]).returncode == 0
    assert run_cli("queue", "cancel", "--output-dir", out, "nosuchjob").returncode == 1
    ran = run_cli("queue", "run", "--output-dir", out, "--models", str(TINY_MODELS), "--workers", "2")
    assert ran.returncode == 0, ran.stderr
    assert "original: 2 worker(s): cpu-1, cpu-2" in ran.stdout
    store = SqliteJobStore.in_folder(out)
    states = {job.id: (job.state, job.worker.split("/")[-1] if job.worker else None) for job in store.list()}
    assert states[ids[2]] == ("stopped", None)
    assert {states[ids[0]], states[ids[1]]} == {("done", "cpu-1"), ("done", "cpu-2")}  # one on each worker
    for job_id in ids[:2]:
        assert (Path(out) / f"{job_id}.mp4").is_file() and f"{job_id} [cpu-" in ran.stdout


@needs_shared
@pytest.mark.slow
def test_a_batch_with_a_bad_line_is_refused_by_line_number_and_a_good_one_runs_every_job(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "in").mkdir()
    image = tmp_path / "in" / "start.png"
    image.write_bytes(IMAGE.read_bytes())
    lines = [
        {"image": "start.png", "prompt": "a girl waves", "seed": 1},
        {"image": "start.png", "prompt": "a girl spins", "seconds": 0.4},
        {"image": "start.png", "prompt": "a girl", "steps": "many"},
        {"image": "start.png", "prompt": "a girl", "teacache": False},
    ]
    bad = tmp_path / "in" / "jobs.jsonl"
    bad.write_text("# one job a line\n" + "\n".join(json.dumps(line) for line in lines) + "\n")
    refused = run_cli("batch", str(bad), "--output-dir", str(out), "--models", str(TINY_MODELS), "--seconds", "0.8",
                      *[f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()])  # fmt: skip
    assert refused.returncode == 2
    assert "error: jobs.jsonl:4: argument --steps: invalid int value: 'many'" in refused.stderr
    assert not (out / "jobs.sqlite3").exists() or SqliteJobStore.in_folder(out).list() == []  # nothing queued

    good = tmp_path / "in" / "jobs.csv"
    good.write_text("image,prompt,seed,seconds,teacache\nstart.png,a girl waves,1,,\nstart.png,a girl spins,2,0.4,\n"
                    "start.png,a girl jumps,3,,false\nstart.png,a girl sits,4,,true\n")  # fmt: skip
    ran = run_cli("batch", str(good), "--output-dir", str(out), "--models", str(TINY_MODELS), "--seconds", "0.8",
                  *[f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()])  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    jobs = SqliteJobStore.in_folder(out).list()
    assert len(jobs) == 4 and {job.state for job in jobs} == {"done"}
    by_seed = {job.spec.settings["seed"]: job.spec.settings for job in jobs}
    assert by_seed[2]["total_second_length"] == 0.4 and by_seed[1]["total_second_length"] == 0.8
    assert by_seed[3]["use_teacache"] is False and by_seed[4]["use_teacache"] is True
    assert all((out / job.video).is_file() for job in jobs)

    wrong = tmp_path / "in" / "wrong.jsonl"
    (tmp_path / "in" / "notes.safetensors").write_text("not a tensor file")
    wrong.write_text('{"image": "missing.png"}\n{"prompt": "x", "colour": "red"}\nnot json\n'
                     '{"image": "start.png", "lora": ["notes.safetensors:0.5"]}\n')  # fmt: skip
    refused = run_cli("batch", str(wrong), "--output-dir", str(out), "--models", str(TINY_MODELS))
    assert refused.returncode == 2
    assert "wrong.jsonl:1:" in refused.stderr and "missing.png" in refused.stderr
    assert "wrong.jsonl:2: unknown key 'colour'" in refused.stderr and "wrong.jsonl:3: not JSON" in refused.stderr
    assert "wrong.jsonl:4: notes.safetensors" in refused.stderr  # the LoRA file, checked before anything runs
    assert len(SqliteJobStore.in_folder(out).list()) == 4  # nothing more was queued


@needs_shared
@pytest.mark.slow
def test_queue_cancel_stops_a_job_that_another_process_runs(tmp_path):
    out = tmp_path / "out"
    added = run_cli("queue", "add", "--output-dir", str(out), "--image", str(IMAGE), "--prompt", "a long one",
                    "--seconds", "4", *[f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()])  # fmt: skip
    job_id = added.stdout.strip()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runner = subprocess.Popen([sys.executable, "-m", "framepack", "queue", "run", "--output-dir", str(out), "--models",
                               str(TINY_MODELS)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        store = SqliteJobStore.in_folder(out)
        wait_for(lambda: store.get(job_id).progress > 0, 120, "the job to make progress")
        cancelled = run_cli("queue", "cancel", "--output-dir", str(out), job_id)
        assert cancelled.returncode == 0 and "stops after its current step" in cancelled.stdout
        output, _ = runner.communicate(timeout=120)
    finally:
        runner.kill()
    job = store.get(job_id)
    assert job.state == "stopped" and job.progress < 1, job
    assert f"{job_id} [cpu] stopped" in output


# ------------------------------------------------------------------------------------------ the app


def start_app(outputs: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "demo_gradio.py", "--models", str(TINY_MODELS), "--outputs", str(outputs), "--port", str(port)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_until_serving(url: str, app: subprocess.Popen) -> None:
    def up() -> bool:
        assert app.poll() is None, "the app ended"
        try:
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 180, "the app to serve", every=0.5)


@needs_shared
@pytest.mark.slow
def test_the_queue_outlives_a_killed_app(tiny_models, tmp_path):
    """SIGKILL the app while it runs a job with two waiting; started again, it finishes all three, and the
    interrupted job's latents are those of an uninterrupted run."""
    outputs, port, log = tmp_path / "outputs", free_port(), tmp_path / "app.log"
    url = f"http://127.0.0.1:{port}"
    app = start_app(outputs, port, log)
    try:
        wait_until_serving(url, app)
        client = Client(url, verbose=False)
        ids = [
            client.predict(handle_file(str(IMAGE)), prompt=f"a girl {i}", seed=i, total_second_length=seconds, **FAST,
                           api_name="/queue_add")  # fmt: skip
            for i, seconds in ((1, 1.6), (2, 0.4), (3, 0.4))
        ]
        first = ids[0]
        wait_for(lambda: (outputs / f"{first}.checkpoint.safetensors").is_file(), 180, "the first section's checkpoint")
        app.send_signal(signal.SIGKILL)
        app.wait(30)
        states = {job.id: job.state for job in SqliteJobStore.in_folder(outputs).list()}
        assert states == {first: "running", ids[1]: "queued", ids[2]: "queued"}, log.read_text()[-3000:]
        app = start_app(outputs, port, log)
        wait_until_serving(url, app)
        client = Client(url, verbose=False)

        def all_ended():
            jobs = client.predict(api_name="/queue_list")
            return jobs if all(job["state"] not in ("queued", "running") for job in jobs) else None

        jobs = {job["job"]: job for job in wait_for(all_ended, 300, "the three jobs to end", every=1)}
    finally:
        app.kill()
        app.wait(30)
    assert {job_id: job["state"] for job_id, job in jobs.items()} == dict.fromkeys(ids, "done"), log.read_text()[-3000:]
    stored = SqliteJobStore.in_folder(outputs).get(first)
    assert stored.attempts == 2  # it ran twice: killed, then taken up again
    latents = load_file(outputs / f"{first}.latents.safetensors")["latents"]
    assert torch.equal(latents, uninterrupted_latents(tiny_models, stored.spec.settings, tmp_path))


@needs_shared
def test_two_logins_cannot_list_cancel_retry_or_fetch_each_others_queued_jobs(tmp_path):
    logins = [arg for user, password in LOGINS.items() for arg in ("--auth", f"{user}:{password}")]
    with running_app(tmp_path / "outputs", *logins) as server:
        alice, bob = (Client(server.url, auth=(user, LOGINS[user]), verbose=False) for user in LOGINS)
        mine = alice.predict(handle_file(str(IMAGE)), prompt="alice's", total_second_length=0.4, **FAST, api_name="/queue_add")
        theirs = bob.predict(handle_file(str(IMAGE)), prompt="bob's", total_second_length=0.4, **FAST, api_name="/queue_add")
        for client, own, other in ((alice, mine, theirs), (bob, theirs, mine)):
            assert [job["job"] for job in client.predict(api_name="/queue_list")] == [own]
            for endpoint in ("/queue_cancel", "/queue_retry"):
                with pytest.raises(Exception, match="you have no"):
                    client.predict(other, api_name=endpoint)

        def ended(client, job_id):
            return next((j for j in client.predict(api_name="/queue_list") if j["job"] == job_id and j["state"] == "done"), None)

        done = wait_for(lambda: ended(alice, mine), 180, "alice's job")
        wait_for(lambda: ended(bob, theirs), 180, "bob's job")
        assert done["owner"] == "user:alice" and done["video"] == f"{mine}.mp4"
        assert [j["state"] for j in bob.predict(api_name="/queue_list")] == ["done"]  # still only his own
        with pytest.raises(Exception, match="you have no"):
            bob.predict(mine, api_name="/queue_retry")  # an ended job of someone else's cannot be run again either
        # The outputs folder is never served, to either of them.
        for user in LOGINS:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                assert http.post("/login", data={"username": user, "password": LOGINS[user]}).status_code == 200
                assert http.get(f"/gradio_api/file={server.outputs / done['video']}").status_code == 403
