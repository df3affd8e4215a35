"""Users who cannot reach each other's work: two logins on one app, a forged upload (resume, extend, branch,
settings), a direct file request, and a client flooding `/generate` while another presses End."""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from helpers import IMAGE, AppServer, needs_shared, running_app

from framepack.media.reading import probe

pytestmark = needs_shared

FAST = {"resolution": 128, "steps": 3, "latent_window_size": 3}
LOGINS = {"alice": "wonderland", "bob": "builder"}
VIDEO, MESSAGE = 3, 4
PER_USER = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    logins = [arg for user, password in LOGINS.items() for arg in ("--auth", f"{user}:{password}")]
    with running_app(tmp_path_factory.mktemp("outputs"), *logins, "--max-jobs-per-user", str(PER_USER)) as app:
        yield app


def login(server: AppServer, user: str) -> Client:
    return Client(server.url, auth=(user, LOGINS[user]), verbose=False)


def submit(client: Client, **params):
    return client.submit(handle_file(str(IMAGE)), api_name="/generate", **{**FAST, **params})


def final_message(job) -> str:
    job.result()
    return job.outputs()[-1][MESSAGE]


def saved_name(message: str) -> str:
    match = re.search(r"saved as `([^`]+)\.mp4` in the outputs folder", message)
    assert match, message
    return match.group(1)


def stopped_job_of(client: Client) -> str:
    """A 5-section job of `client`, stopped once its first section is in the video; its name."""
    job = submit(client, prompt="a cat", total_second_length=2.0)
    for update in job:
        if isinstance(update[VIDEO], str):
            client.predict(api_name="/stop")
            break
    message = final_message(job)
    assert message.startswith("Stopped after"), message
    return saved_name(message)


def test_another_user_cannot_resume_extend_list_or_download_a_job(server: AppServer, tmp_path: Path):
    alice, bob = login(server, "alice"), login(server, "bob")
    name = stopped_job_of(alice)
    manifest = server.outputs / f"{name}.json"
    before = manifest.read_text()
    assert json.loads(before)["owner"] == "user:alice"

    # Listing: each sees only their own jobs.
    assert [job["job"] for job in alice.predict(api_name="/jobs")] == [name]
    assert bob.predict(api_name="/jobs") == []

    # Resuming or extending with a file named like alice's job: refused, the same way as a job that does not exist.
    forged = tmp_path / f"{name}.mp4"
    forged.write_bytes(b"not alice's video")
    for add_seconds in (0, 2):
        message = final_message(bob.submit(handle_file(str(forged)), add_seconds=add_seconds, api_name="/resume"))
        assert message == f"**Error:** you have no job named '{name}' in this app's outputs"
    branched = final_message(bob.submit(handle_file(str(forged)), keep_sections=1, api_name="/branch"))
    assert branched == f"**Error:** you have no job named '{name}' in this app's outputs"
    nobody = tmp_path / "260101_000000_abcdef.mp4"
    nobody.write_bytes(b"x")
    message = final_message(bob.submit(handle_file(str(nobody)), api_name="/resume"))
    assert message == "**Error:** you have no job named '260101_000000_abcdef' in this app's outputs"

    # Nothing in the outputs folder is served as a file, to anyone: the pages get copies of their own videos.
    # And a raw request whose file payload points into the outputs folder is refused before any handler runs.
    payload = {"path": str(server.outputs / f"{name}.mp4"), "meta": {"_type": "gradio.FileData"}}
    for user in LOGINS:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.post("/login", data={"username": user, "password": LOGINS[user]}).status_code == 200
            for path in (server.outputs / f"{name}.mp4", server.outputs / f"{name}.json"):
                assert http.get(f"/gradio_api/file={path}").status_code == 403
            event = http.post("/gradio_api/call/resume", json={"data": [payload, 0]}).json()["event_id"]
            stream = http.get(f"/gradio_api/call/resume/{event}").text
            assert "event: error" in stream and "Finished" not in stream, stream

    # Loading settings reads only the uploaded file: a forged record named like alice's gives its own settings.
    forged_record = tmp_path / f"{name}.json"
    forged_record.write_text(json.dumps({"settings": {"prompt": "forged"}}))
    from framepack.app.service import AppService

    assert AppService(None, "original").settings_of_file(str(forged_record)).values["prompt"] == "forged"

    # Alice's job is as she left it, and she can resume it.
    assert manifest.read_text() == before
    message = final_message(alice.submit(handle_file(str(server.outputs / f"{name}.mp4")), api_name="/resume"))
    assert message.startswith("Finished") and saved_name(message) == name
    assert probe(server.outputs / f"{name}.mp4").frames == 4 * (5 * 3 + 1) - 3


def test_a_flood_of_jobs_cannot_block_another_users_end(server: AppServer):
    alice, bob = login(server, "alice"), login(server, "bob")
    running = submit(alice, prompt="a long walk", total_second_length=8.0)  # 20 sections
    next(iter(running))  # alice's job has started

    flood = [submit(bob, prompt=f"spam {index}", total_second_length=4.0) for index in range(12)]
    with concurrent.futures.ThreadPoolExecutor(len(flood)) as pool:
        finals = [pool.submit(final_message, job) for job in flood]
        # The extra jobs are refused at once, with the reason, while bob's first ones wait behind alice's.
        refused = []
        for future in concurrent.futures.as_completed(finals, timeout=120):
            assert future.result() == (
                f"**Error:** you already have {PER_USER} jobs waiting or running; wait for one to end or stop one"
            )
            refused.append(future)
            if len(refused) == len(flood) - PER_USER:
                break

        # Alice's End still works while bob's jobs fill the line.
        pressed = time.monotonic()
        alice.predict(api_name="/stop")
        message = final_message(running)
        assert message.startswith("Stopped"), message
        assert time.monotonic() - pressed < 60

        bob.predict(api_name="/stop")
        for done in finals:
            assert done.result(timeout=120)


def test_without_logins_on_the_network_each_browser_session_owns_its_jobs(tmp_path: Path):
    with running_app(tmp_path / "outputs", "--server", "0.0.0.0", "--max-upload-mb", "1") as server:
        # Uploads over the limit are refused with the reason.
        refused = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("big.png", b"\0" * 2_000_000)})
        assert refused.status_code == 413 and "File size exceeded maximum allowed size" in refused.text

        mine, theirs = Client(server.url, verbose=False), Client(server.url, verbose=False)
        name = stopped_job_of(mine)
        assert json.loads((server.outputs / f"{name}.json").read_text())["owner"].startswith("session:")
        assert theirs.predict(api_name="/jobs") == []
        video = server.outputs / f"{name}.mp4"
        refused = final_message(theirs.submit(handle_file(str(video)), api_name="/resume"))
        assert refused == f"**Error:** you have no job named '{name}' in this app's outputs"
        assert [job["job"] for job in mine.predict(api_name="/jobs")] == [name]
        assert final_message(mine.submit(handle_file(str(video)), api_name="/resume")).startswith("Finished")


def test_a_session_id_alone_cannot_stop_cancel_or_close_a_users_job(server: AppServer):
    """Whoever learns alice's session id gets 401 for Gradio's cancel and heartbeat (the red team ended her call and
    her job with them), and bob's /stop under her session id stops nothing: identity is the login's."""
    alice = login(server, "alice")
    job = submit(alice, prompt="a long walk", total_second_length=2.0)  # 5 sections
    updates = iter(job)
    name = Path(next(u[VIDEO] for u in updates if isinstance(u[VIDEO], str))).stem
    session = alice.session_hash
    generate = next(d["id"] for d in alice.config["dependencies"] if d.get("api_name") == "generate")

    with httpx.Client(base_url=server.url, timeout=30) as stranger:
        with stranger.stream("GET", f"/gradio_api/heartbeat/{session}") as heartbeat:
            assert heartbeat.status_code == 401
        cancel = {"session_hash": session, "fn_index": generate, "event_id": job.communicator.event_id or ""}
        assert stranger.post("/gradio_api/cancel", json=cancel).status_code == 401
    assert next(updates)  # her page still gets its updates

    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.post("/login", data={"username": "bob", "password": LOGINS["bob"]}).status_code == 200
        # /stop is not queued: this call answers once it has run (what the red team's forged call did).
        stopped = http.post("/gradio_api/run/stop", json={"data": [None], "session_hash": session})
        assert stopped.status_code == 200, stopped.text

    # One worker: when alice's next job has finished, the first has ended; all five sections of it.
    after = login(server, "alice")
    assert final_message(submit(after, prompt="a short walk", total_second_length=0.4)).startswith("Finished")
    assert probe(server.outputs / f"{name}.mp4").frames == 4 * (5 * 3 + 1) - 3
    assert json.loads((server.outputs / f"{name}.json").read_text())["state"] == "done"
