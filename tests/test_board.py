"""The Queue tab's board without a server: thumbnails from a video's last frame, estimates from measured section times,
a click that chooses a job, a stopped job's real progress, and users who see only their own jobs and pictures."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from framepack.app.board import Board, board_row, clock_text, gallery_items, time_left
from framepack.app.views import frames_line
from framepack.media.reading import frames_said
from framepack.app.service import AppService
from framepack.app.wiring import Handlers, Session
from framepack.jobs.paths import JobPaths
from framepack.jobs.record import JobRecord
from framepack.jobs.spec import JobSpec
from framepack.media.mp4 import encode_mp4
from framepack.queue.store import QueuedJob

# Sections of 0.4 s at a window of 3: a 2 s video has 5 of them.
SMALL = {"prompt": "a cat", "total_second_length": 2.0, "latent_window_size": 3, "steps": 4, "resolution": 128}
LAST = (200, 40, 90)  # the colour of each test video's last frame


def job(job_id: str, state: str = "queued", owner: str = "local", progress: float = 0.0, video: str | None = None,
        **settings) -> QueuedJob:  # fmt: skip
    return QueuedJob(job_id, owner, JobSpec("generate", settings={**SMALL, **settings}), state=state, progress=progress,
                     video=video)  # fmt: skip


def record(sections_done: int, section_seconds: list[float], sections: int = 5, **settings) -> JobRecord:
    return JobRecord(sections=sections, sections_done=sections_done, section_seconds=section_seconds,
                     settings={**SMALL, **settings})  # fmt: skip


def write_video(outputs: Path, name: str, last: tuple[int, int, int] = LAST) -> Path:
    """A 40-frame video whose frames are grey ramps and whose last frame is one colour."""
    frames = np.stack([np.full((48, 64, 3), 3 * i, np.uint8) for i in range(39)] + [np.full((48, 64, 3), last, np.uint8)])
    return encode_mp4(frames, outputs / f"{name}.mp4")


def test_a_thumbnail_is_the_last_frame_made_once_and_kept_with_the_job(tmp_path: Path):
    outputs, cache = tmp_path / "outputs", tmp_path / "cache"
    outputs.mkdir()
    write_video(outputs, "j1")
    board = Board(outputs, cache)
    done = job("j1", "done", progress=1.0, video="j1.mp4")

    link = board.thumbnail(done, None)
    kept = outputs / ".queue" / "j1" / "thumbnail.jpg"
    assert kept.is_file() and Path(link).is_file() and Path(link).is_relative_to(cache)
    pixels = np.asarray(Image.open(link).convert("RGB")).astype(int)
    assert pixels.shape == (48, 64, 3)  # no larger than the video
    assert np.abs(pixels - LAST).max() <= 6  # the last frame's colour, through H.264 and JPEG
    made = kept.stat().st_mtime_ns
    assert board.thumbnail(done, None) == link and kept.stat().st_mtime_ns == made  # made once

    # A video that grew (a resumed job) gets a new thumbnail, under a new link.
    write_video(outputs, "j1", last=(10, 220, 30))
    os.utime(outputs / "j1.mp4", ns=(made + 10**9, made + 10**9))
    newer = board.thumbnail(done, None)
    assert newer != link and np.abs(np.asarray(Image.open(newer)).astype(int) - (10, 220, 30)).max() <= 6
    # No video, or a file that is no video: no picture, no error.
    assert board.thumbnail(job("j2", "done", video="j2.mp4"), None) is None
    (outputs / "j3.mp4").write_bytes(b"not a video")
    assert board.thumbnail(job("j3", "done", video="j3.mp4"), None) is None


def test_the_time_left_comes_from_measured_section_times():
    running = job("run", "running", progress=0.4)  # 2 of its 5 sections done
    first, second = job("w1"), job("w2", steps=8)  # 5 sections each; the second at twice the steps
    other_size = job("w3", resolution=256)
    records = {"run": record(2, [10.0, 14.0])}  # 12 s a section, 3 s a step
    left = time_left([running, first, second, other_size], records)
    # Nor a job whose steps cost otherwise: TeaCache off, or real CFG's second pass.
    for slower in (job("w4", use_teacache=False), job("w5", cfg=3.0)):
        assert time_left([running, slower], records)[slower.id] is None
    assert left["run"] == pytest.approx(12 * 5 * 0.6)  # 36 s
    assert left["w1"] == pytest.approx(36 + 60)  # behind the running job, then its own 5 sections
    assert left["w2"] == pytest.approx(36 + 60 + 5 * 8 * 3)
    assert left["w3"] is None  # nothing measured at that size: unknown, not a guess; and so for all behind it
    assert clock_text(left["w1"]) == "about 1:36" and clock_text(None) == "unknown"
    assert clock_text(3 * 3600 + 125) == "about 3 h 02 min"

    # Nothing measured anywhere: every estimate is unknown.
    assert time_left([job("run", "running", progress=0.1), job("w1")], {}) == {"run": None, "w1": None}
    # A finished job's measure serves the next jobs of its size; ended jobs get no estimate.
    finished = job("old", "done", progress=1.0)
    left = time_left([job("w1"), finished], {"old": record(5, [4.0] * 5)})
    assert left == {"w1": pytest.approx(20.0)}


def test_a_stopped_job_shows_its_kept_sections_and_says_it_can_be_resumed(tmp_path: Path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    record(2, [5.0, 5.0]).save(JobPaths(outputs, "j1"))
    write_video(outputs, "j1")
    stopped = job("j1", "stopped", progress=0.0, video="j1.mp4")  # the store's progress said 0 %
    board = Board(outputs, tmp_path / "cache")
    shown = board.show([stopped], [stopped])["j1"]
    row = board_row(stopped, shown)
    assert row[2:5] == ["stopped: can be resumed (Retry)", "40%", ""]  # 2 of 5 sections; no estimate once ended
    assert row[0].startswith("![j1](/gradio_api/file=") and row[0].endswith(".jpg)")
    assert gallery_items([stopped], {"j1": shown}) == []  # the gallery holds finished jobs only
    text_only = job("j2", "queued", prompt="", prompts=[[0.0, "she waves"]])
    assert board_row(text_only, board.show([text_only], [text_only])["j2"])[7] == "[0s: she waves]"
    assert board_row(job("j3", prompt=""), board.show([job("j3")], [])["j3"])[7] == "(no prompt)"


class Front:
    """Just what the board needs of a queue front: the jobs, by owner, and the outputs folder."""

    def __init__(self, output_dir: Path, jobs: list[QueuedJob]):
        self.output_dir, self.jobs = output_dir, jobs

    def list_jobs(self, owner: str | None = None) -> list[QueuedJob]:
        return [j for j in self.jobs if owner is None or j.owner == owner]

    def job(self, job_id: str, owner: str | None = None) -> QueuedJob | None:
        return next((j for j in self.list_jobs(owner) if j.id == job_id), None)


def test_a_click_chooses_a_job_and_each_user_sees_only_their_own(tmp_path: Path):
    outputs, cache = tmp_path / "outputs", tmp_path / "cache"
    outputs.mkdir()
    jobs = []
    for name, owner in (("alice_one", "user:alice"), ("alice_two", "user:alice"), ("bob_one", "user:bob")):
        write_video(outputs, name)
        record(5, [4.0] * 5).save(JobPaths(outputs, name))
        jobs.append(replace(job(name, "done", owner=owner, progress=1.0, video=f"{name}.mp4"), created=len(jobs)))
    jobs.append(replace(job("bob_two", "queued", owner="user:bob"), created=len(jobs)))  # waits behind nothing: its own 5 sections, measured by others
    handlers = Handlers(AppService(Front(outputs, jobs), "original"), "login")
    handlers.service.board.cache_dir = cache

    views, mine = {}, {}
    for user in ("alice", "bob"):
        session = Session()
        table, choice, gallery, own = handlers.queue_view(None, session, SimpleNamespace(username=user, session_hash=user))
        views[user] = (table["value"], choice["choices"], gallery["value"], session)
        mine[user] = own["value"]
    rows, choices, gallery, alice = views["alice"]
    assert [row[1] for row in rows] == [value for _, value in choices] == ["alice_one", "alice_two"]
    # The same read fills the Generate tab's "Your jobs": newest first, with the time left of a waiting job.
    assert [row[0] for row in mine["bob"]] == ["bob_two", "bob_one"] and mine["bob"][0][3] == "about 0:20"
    assert [row[0] for row in mine["alice"]] == ["alice_two", "alice_one"]
    assert [caption.split(" · ")[0] for _, caption in gallery] == ["alice_one", "alice_two"]
    bob_rows, _, bob_gallery, bob = views["bob"]
    assert [row[1] for row in bob_rows] == ["bob_one", "bob_two"] and bob_rows[1][4] == "about 0:20"
    shown_to_bob = repr(views["bob"][:3])
    assert "alice_" not in shown_to_bob  # neither rows nor pictures nor links of alice's
    assert not {path for path, _ in gallery} & {path for path, _ in bob_gallery}

    # A click on a row, or on a picture of the gallery, chooses that job.
    row_click = gr.SelectData(None, {"index": [1, 3], "value": "100%", "row_value": rows[1]})
    assert handlers.queue_pick(alice, row_click)[0]["value"] == "alice_two"
    picture_click = gr.SelectData(None, {"index": 0, "value": {}})
    chosen, said = handlers.queue_pick(alice, picture_click)
    assert chosen["value"] == "alice_one" and said == "Chose `alice_one`: the buttons above act on it."
    # The next refresh leaves an unchanged gallery alone (a look at it is not interrupted).
    again = handlers.queue_view("alice_one", alice, SimpleNamespace(username="alice", session_hash="alice"))
    assert again[1]["value"] == "alice_one" and again[2] == gr.skip()

    # A click on a row of "Your jobs" plays that job's video in the Generate tab's player (a page copy of it).
    handlers.cache_dir = str(cache)
    click = lambda row: gr.SelectData(None, {"index": [0, 1], "value": row[1], "row_value": row})  # noqa: E731
    as_alice = SimpleNamespace(username="alice", session_hash="alice")
    played, said, frames = handlers.my_job_video(click(mine["alice"][1]), as_alice)
    assert Path(played).read_bytes() == (outputs / "alice_one.mp4").read_bytes() and Path(played).is_relative_to(cache)
    assert said == "The video of job `alice_one`." and frames == frames_line(40)  # its frames under the status
    # A waiting job has none yet; a forged row naming another user's job shows nothing of it.
    as_bob = SimpleNamespace(username="bob", session_hash="bob")
    assert handlers.my_job_video(click(mine["bob"][0]), as_bob) == (
        gr.skip(), "Job `bob_two` has no video yet (queued).", gr.skip())  # fmt: skip
    forged = handlers.my_job_video(click(mine["alice"][0]), as_bob)
    assert forged == (gr.skip(), "Choose one of your jobs first.", gr.skip())
    # A post-processed GIF is named, not put in a player that cannot play it.
    (outputs / "alice_one.gif").write_bytes(b"GIF89a")
    jobs[0] = replace(jobs[0], video="alice_one.gif")
    _, said, _ = handlers.my_job_video(click(mine["alice"][1]), as_alice)
    assert said == "Job `alice_one` made `alice_one.gif`, which browsers do not play: see the outputs folder."
    assert frames_said(outputs / "alice_one.gif") is None and frames_said(outputs / "alice_one.mp4") == 40


def test_a_stopped_job_on_the_generate_tab_is_not_a_full_bar():
    from framepack.app.views import event_updates
    from framepack.events import Done

    stopped = Done(Path("j1.mp4"), None, frames=25, seconds=0.83, sections_done=2, stopped=True, elapsed=9.0)
    _, bar, _, _, message = event_updates(stopped, sections=5)
    assert 'class="fp-progress fp-progress-stopped"' in bar and "width: 40.0%" in bar  # 2 of 5 sections kept
    assert "Stopped after 2 section(s): it can be resumed" in bar
    assert message.startswith("Stopped after 2 section(s): 25 frames") and "It can be resumed" in message
    finished = Done(Path("j1.mp4"), None, frames=61, seconds=2.03, sections_done=5, stopped=False, elapsed=20.0)
    _, bar, _, _, message = event_updates(finished, sections=5)
    assert "width: 100.0%" in bar and "fp-progress-stopped" not in bar and message.startswith("Finished: 61 frames")
