"""Hostile inputs: every odd image either makes a video or gets a one-line reason, and nothing is corrupted."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import needs_shared
from PIL import Image

from framepack.engine import generate
from framepack.events import Done, Error
from framepack.media.reading import probe
from framepack.settings import Settings

pytestmark = needs_shared


def save(image: Image.Image, path, fmt: str, **kw):
    image.save(path, format=fmt, **kw)
    return path


def make_inputs(folder):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 8
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    animated = folder / "anim.gif"
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    truncated = folder / "cut.png"
    truncated.write_bytes(save(photo, io.BytesIO(), "PNG").getvalue()[:200])
    text = folder / "notes.jpg"
    text.write_text("hello")
    return {
        "png": (save(photo, folder / "a.png", "PNG"), True),
        "jpeg with exif rotation": (save(photo, folder / "a.jpg", "JPEG", exif=exif.tobytes()), True),
        "webp": (save(photo, folder / "a.webp", "WEBP"), True),
        "bmp": (save(photo, folder / "a.bmp", "BMP"), True),
        "rgba": (save(photo.convert("RGBA"), folder / "rgba.png", "PNG"), True),
        "grayscale": (save(photo.convert("L"), folder / "gray.png", "PNG"), True),
        "palette": (save(photo.convert("P"), folder / "pal.png", "PNG"), True),
        "16-bit": (save(Image.fromarray(np.full((30, 40), 40000, np.uint16)), folder / "deep.png", "PNG"), True),
        "one pixel": (save(Image.new("RGB", (1, 1), "green"), folder / "dot.png", "PNG"), True),
        "animated": (animated, True),
        "very large": (save(Image.new("RGB", (12000, 12000), "white"), folder / "huge.png", "PNG"), False),  # over 64 MP
        "truncated": (truncated, False),
        "not an image": (text, False),
        "missing": (folder / "nope.png", False),
    }


def test_every_odd_image_works_or_gets_a_reason(tiny_models, tmp_path):
    inputs = make_inputs(tmp_path)
    out = tmp_path / "outputs"
    settings = Settings(variant="f1", total_second_length=0.4, latent_window_size=3, steps=1, resolution=128, prompt="x")
    for name, (path, works) in inputs.items():
        events = list(generate(tiny_models("f1"), settings, path, out, job_id=name.replace(" ", "_"), previews=False))
        last = events[-1]
        if works:
            assert isinstance(last, Done), f"{name}: {last}"
            assert probe(last.video_path).frames == settings.num_frames, name
        else:
            assert isinstance(last, Error), name
            assert "\n" not in last.message and path.name in last.message, last.message
    # Failed inputs leave nothing behind; every file there is a finished, loadable output.
    assert {p.suffix for p in out.iterdir()} == {".mp4", ".json", ".safetensors"}
    assert len(list(out.glob("*.mp4"))) == sum(works for _, works in inputs.values())


@pytest.mark.parametrize("prompt", ["", "🎥 Танцующая девушка, 跳舞的女孩 \u202e\x00 ok", "dance " * 400])
def test_any_prompt(tiny_models, tmp_path, prompt):
    settings = Settings(variant="f1", total_second_length=0.4, latent_window_size=3, steps=1, resolution=128, prompt=prompt)
    events = list(generate(tiny_models("f1"), settings, make_inputs(tmp_path)["png"][0], tmp_path / "o", previews=False))
    assert isinstance(events[-1], Done), events[-1]
    notices = [e.message for e in events if "longer than 256 tokens" in getattr(e, "message", "")]
    assert bool(notices) == (len(prompt) > 1000)


def assert_every_file_usable(folder):
    """Each video plays, each safetensors file loads and each record parses; no temporary file is left."""
    import json

    from safetensors.torch import load_file

    for path in folder.iterdir():
        assert not path.name.endswith(".tmp") and ".tmp." not in path.name, path
        if path.suffix == ".mp4":
            assert probe(path).frames > 0
        elif path.suffix == ".safetensors":
            assert load_file(path)
        elif path.suffix == ".json":
            assert json.loads(path.read_text())["state"] in ("running", "done", "stopped", "failed")


@pytest.mark.parametrize("when", ["encoding", "sampling", "decoding", "section written", "last section"])
def test_stopping_at_any_point_leaves_usable_files(tiny_models, tmp_path, when):
    import threading

    from framepack.events import Progress, SectionDone, Status

    settings = Settings(variant="original", total_second_length=1.2, latent_window_size=3, steps=2, resolution=128)
    triggers = {
        "encoding": lambda e: isinstance(e, Status) and e.message.startswith("Encoding"),
        "sampling": lambda e: isinstance(e, Progress) and e.section == 2,
        "decoding": lambda e: isinstance(e, Status) and e.message.startswith("Decoding section 2"),
        "section written": lambda e: isinstance(e, SectionDone),
        "last section": lambda e: isinstance(e, Progress) and e.section == e.sections and e.step == e.steps,
    }
    stop = threading.Event()
    image = make_inputs(tmp_path)["png"][0]
    out = tmp_path / "outputs"
    for event in generate(tiny_models("original"), settings, image, out, job_id="job", stop=stop, previews=False):
        if triggers[when](event):
            stop.set()
    assert isinstance(event, Done)
    # Stopped before a section was finished, nothing is written; after one, its video plays and its files load.
    assert (event.video_path is None) == (when == "encoding")
    assert out.is_dir()  # the job's lock was taken there
    assert_every_file_usable(out)
    if event.video_path is not None:
        assert probe(event.video_path).frames == event.frames


def test_out_of_gpu_memory_keeps_the_finished_sections(tiny_models, tmp_path):
    import torch

    from framepack.engine import resume_job
    from framepack.events import Progress

    models = tiny_models("f1")
    settings = Settings(variant="f1", total_second_length=1.2, latent_window_size=3, steps=2, resolution=128)
    calls = {"n": 0}

    def exhaust_in_section_two(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the first call of the second section
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = models.transformer.register_forward_pre_hook(exhaust_in_section_two, with_kwargs=True)
    try:
        events = list(generate(models, settings, make_inputs(tmp_path)["png"][0], tmp_path / "o", job_id="job"))
    finally:
        handle.remove()
    error = events[-1]
    assert isinstance(error, Error) and error.message.startswith("Out of GPU memory")
    assert "resolution" in error.message and "GPU memory to preserve" in error.message
    assert max(e.section for e in events if isinstance(e, Progress)) == 1  # it failed as section 2 began
    assert probe(tmp_path / "o" / "job.mp4").frames == 4 * 3 + 1  # the first F1 section and the start frame
    assert_every_file_usable(tmp_path / "o")

    # The same models go on working, and the job resumes from its finished section.
    done = list(resume_job(models, tmp_path / "o" / "job.json", previews=False))[-1]
    assert isinstance(done, Done) and probe(done.video_path).frames == settings.num_frames
