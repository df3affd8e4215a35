"""Loading a job onto the page puts its images back (from the copies the queue kept, for their owner only), and the
timeline before Start is a strip of sections with thumbnails, saying for a branch what is kept and what is made again."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from helpers import CONTROL_CASES, IMAGE, needs_shared
from PIL import Image

from framepack.app.service import AppService
from framepack.app.wiring import IMAGE_CONTROLS, Handlers
from framepack.controls import JobInputs, Keyframe
from framepack.jobs.record import JobRecord
from framepack.kinds import branch_spec, inputs_spec
from framepack.queue.store import QueuedJob, input_folder
from framepack.settings import Settings

pytestmark = needs_shared
END = CONTROL_CASES / "c1_original_end" / "end.png"
KEYFRAME = CONTROL_CASES / "c2_original_timed" / "keyframe_0.png"
SETTINGS = Settings(total_second_length=2.4, latent_window_size=3, prompt="a girl [0s: she waves] [0.8s: she bows]")


class Jobs:
    """What the service asks of the queue's front to find a job: its row, if it is the caller's."""

    def __init__(self, output_dir: Path, jobs: list[QueuedJob]):
        self.output_dir, self.jobs = output_dir, {job.id: job for job in jobs}

    def job(self, job_id: str, owner: str | None = None) -> QueuedJob | None:
        job = self.jobs.get(job_id)
        return job if job is not None and (owner is None or job.owner == owner) else None


@pytest.fixture
def alice(tmp_path: Path) -> tuple[AppService, Path]:
    """A service whose queue holds alice's job `first` (start, end and keyframe images kept by the queue) and her
    branch `second` of it, and a folder of their records saved under other names, as a user keeps them."""
    outputs, uploads = tmp_path / "outputs", tmp_path / "uploads"
    uploads.mkdir()
    inputs = JobInputs(IMAGE, END, (Keyframe(1.2, KEYFRAME),)).load()
    spec = inputs_spec("generate", SETTINGS, inputs, keep_in=input_folder(outputs, "first"))
    jobs = [QueuedJob("first", "user:alice", spec, state="done"),
            QueuedJob("second", "user:alice", branch_spec("first", 2, {"seed": 7}), state="done"),
            QueuedJob("third", "user:alice", branch_spec("first", 1, {}, (Keyframe(0.8, KEYFRAME),)), state="done")]  # fmt: skip
    for job in jobs:
        record = JobRecord(state="done", owner="user:alice", settings=SETTINGS.to_dict(), inputs=spec.options["record"],
                           video=f"{job.id}.mp4")  # fmt: skip
        (uploads / f"my {job.id} job.json").write_text(json.dumps(record.to_dict()))
    return AppService(Jobs(outputs, jobs), "original"), uploads  # type: ignore[arg-type]


def pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_loading_a_job_puts_its_images_back_for_its_owner_only(alice, tmp_path):
    service, uploads = alice
    handlers = Handlers(service, "login")
    handlers.cache_dir = str(tmp_path / "cache")
    for upload in ("my first job.json", "my second job.json"):  # a branch has its source's images
        loaded = service.settings_of_file(str(uploads / upload), "user:alice")
        assert loaded.images is not None and not loaded.error
        assert loaded.message == f"Loaded the settings of {upload} with its images; press Start to make it again, or change it first."
        *values, start, end, keyframes, message = handlers._loaded_updates(loaded)
        assert len(IMAGE_CONTROLS) == 3 and message == loaded.message
        # The page's own copies, named as the user named them, with the pixels given.
        assert Path(start).name == "input.png" and np.array_equal(pixels(start), pixels(IMAGE))
        assert Path(end).name == "end.png" and np.array_equal(pixels(end), pixels(END))
        assert [Path(k).name for k in keyframes] == ["keyframe_0.png"] and np.array_equal(pixels(keyframes[0]), pixels(KEYFRAME))
        assert str(tmp_path / "cache") in start and "outputs" not in start  # never the outputs folder itself
        assert loaded.values["keyframe_times"] == "1.2"
    # Someone else's job, or no owner asked about: its settings load, its images stay where they are, and are named.
    for owner in ("user:bob", None):
        loaded = service.settings_of_file(str(uploads / "my first job.json"), owner)
        assert loaded.images is None and loaded.values["prompt"] == SETTINGS.prompt_text
        assert "add the start image input.png, the end image end.png, keyframe keyframe_0.png (1.2 s)" in loaded.message
        # The page's start and end images stay; its keyframe images go with the times the job's replaced.
        assert list(handlers._loaded_updates(loaded)[-4:-1]) == [gr.skip(), gr.skip(), None]
    # A branch with keyframes of its own gets its source's start and end images; its keyframes are named, to add.
    own = {**json.loads((uploads / "my second job.json").read_text()), "video": "third.mp4"}
    own["inputs"]["keyframes"] = [{"seconds": 0.8, "name": "keyframe_0.png", "sha256": "0" * 64}]
    (uploads / "third.json").write_text(json.dumps(own))
    loaded = service.settings_of_file(str(uploads / "third.json"), "user:alice")
    assert loaded.message == ("Loaded the settings of third.json with its images, except keyframe keyframe_0.png (0.8 s): "
                              "add them and press Start.")  # fmt: skip
    assert handlers._loaded_updates(loaded)[-2] is None and loaded.values["keyframe_times"] == "0.8"
    # The Queue tab's "Load its settings" does the same, for the jobs the viewer sees.
    assert service.settings_of_job("first", "user:alice").images.start[1] == "input.png"
    assert service.settings_of_job("first", "user:bob").images is None


def test_the_timeline_is_a_strip_of_sections_with_their_images(alice):
    service, _ = alice
    handlers = Handlers(service, "local")
    strip = handlers.timeline_strip(SETTINGS.prompt_text, 2.4, 3, [str(KEYFRAME)], "1.2", str(END), str(IMAGE))
    cards = re.findall(r'<div class="fp-strip-section".*?</div></div>', strip)
    times = re.findall(r"(\d\.\d\d)–(\d\.\d\d) s", strip)
    assert len(cards) == 6 and times == [(f"{t * 0.4:.2f}", f"{t * 0.4 + 0.4:.2f}") for t in range(6)]  # in time order
    # Thumbnails: the start image anchors the first three sections, the keyframe the rest, the end frame ends the video.
    titles = [re.findall(r'<img src="data:image/jpeg;base64,[^"]+" alt="([^"]+)"', card) for card in cards]
    assert titles == [["start image"]] * 3 + [["keyframe 1"]] * 2 + [["keyframe 1", "end frame"]]
    assert "she waves" in cards[0] and "she bows" in cards[2] and "kept" not in strip.lower()
    thumbnail = re.search(r'src="data:image/jpeg;base64,([^"]+)"', strip).group(1)
    small = Image.open(io.BytesIO(base64.b64decode(thumbnail)))
    assert small.height == 48 and len(strip) < 40_000  # cheap: small pictures

    # Loaded as a branch keeping two sections: the original model makes the end first, so those are the last two.
    branch = handlers.timeline_strip(SETTINGS.prompt_text, 2.4, 3, None, "", None, str(IMAGE), previous="my.mp4", keep=2)
    assert "A branch makes 0.00–1.60 s again and keeps 1.60–2.40 s." in branch
    assert re.findall(r'data-kept="(\w+)"', branch) == ["false"] * 4 + ["true"] * 2
    # No start image: a swatch of the blank frame; settings that do not fit: no strip (the text says why).
    blank = handlers.timeline_strip("a girl", 1.2, 3, blank_start="white")
    assert "<img" not in blank and 'title="white frame"' in blank and blank.count("fp-strip-section") == 3
    assert handlers.timeline_strip("a girl [2x: oops]", 1.2, 3) == ""


def test_an_f1_branch_keeps_the_start_of_the_video():
    handlers = Handlers(AppService(None, "f1"), "local")
    branch = handlers.timeline_strip("a cat", 2.4, 3, input_image=str(IMAGE), previous="my.mp4", keep=1)
    assert "A branch keeps 0.00–0.40 s and makes 0.40–2.40 s again." in branch
    assert "keeps the whole video" in handlers.timeline_strip("a cat", 1.2, 3, previous="my.mp4", keep=5)
