"""Pictures past Pillow's pixel limit: a big JPEG is read reduced and said so, a huge PNG refused in one line
without decoding it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_MODELS, make_clip, needs_shared
from PIL import Image, ImageFile

from framepack.media.images import ImageError, load_image


def test_a_jpeg_over_the_pixel_limit_is_read_reduced_with_a_note(tmp_path, monkeypatch):
    Image.new("RGB", (6000, 4000), (200, 60, 30)).save(tmp_path / "big.jpg", quality=10)  # 24 MP, small on disk
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000_000)  # past twice it Pillow calls it a decompression bomb
    notes: list[str] = []
    loaded = load_image(tmp_path / "big.jpg", notes)
    assert loaded.shape == (1000, 1500, 3)  # a quarter each way: the first DCT scaling within 2 MP
    np.testing.assert_allclose(loaded.reshape(-1, 3).mean(axis=0), (200, 60, 30), atol=8)  # quality 10 shifts it a little
    assert notes == ["big.jpg is 6000x4000 (24 MP): it is read reduced to 1500x1000"]


def test_a_huge_png_is_refused_in_one_line_without_decoding_it(tmp_path, monkeypatch):
    Image.new("L", (9000, 8000)).save(tmp_path / "huge.png")  # 72 MP: past the 64 MP budget and Pillow's limit
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    with pytest.raises(ImageError, match=r"^huge.png is 9000x8000 \(72 MP\), more than the 64 MP this app decodes; save it smaller first$"):
        load_image(tmp_path / "huge.png")
    assert not decoded


def test_a_picture_within_the_budget_is_read_whole(tmp_path):
    Image.new("RGB", (640, 480), (10, 200, 90)).save(tmp_path / "photo.jpg", quality=95)
    notes: list[str] = []
    assert load_image(tmp_path / "photo.jpg", notes).shape == (480, 640, 3) and notes == []


# ------------------------------------------------------------------------------------------------ notes of inputs read before the job


REDUCED = r"big\.jpg is 600x400 \(0 MP\): it is read reduced to 150x100"


def big_photo(folder, monkeypatch):
    """A photo over the pixel limit (lowered to 50,000 pixels, so the photo and the test stay small)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    Image.new("RGB", (600, 400), (200, 60, 30)).save(folder / "big.jpg", quality=90)
    return folder / "big.jpg"


def test_inputs_read_before_the_job_keep_their_notes_for_it(tmp_path, monkeypatch):
    from framepack.controls import JobInputs, prepare_images
    from framepack.kinds import inputs_spec, spec_inputs
    from framepack.settings import Settings

    loaded = JobInputs(big_photo(tmp_path, monkeypatch)).load()  # as the page and the API read an upload at once
    assert len(loaded.notes) == 1 and re.fullmatch(REDUCED, loaded.notes[0])
    settings = Settings(resolution=128)
    assert loaded.notes[0] in prepare_images(loaded, settings).notes
    spec = inputs_spec("generate", settings, loaded, keep_in=tmp_path / "kept")  # the queue keeps the pixels as PNG
    assert spec.files == {"image": "image/big.png"}  # named after the upload, as the job's other notes name it
    kept = spec_inputs(spec, tmp_path / "kept")
    assert kept.notes == loaded.notes and prepare_images(kept, settings).notes[0] == loaded.notes[0]


@needs_shared
def test_the_command_line_says_an_end_image_was_read_reduced(tmp_path, monkeypatch, capsys):
    from framepack.cli import main

    clip = make_clip(tmp_path / "clip.mp4", 10, 30, (64, 48))
    code = main(["extend", str(clip), "--variant", "original", "--end-image", str(big_photo(tmp_path, monkeypatch)),
                 "--seconds", "0.4", "--latent-window-size", "3", "--steps", "1", "--resolution", "128", "--prompt", "x",
                 "--models", str(TINY_MODELS), "--output-dir", str(tmp_path / "out"), "--job-name", "ext", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert len([line for line in err.splitlines() if re.fullmatch(REDUCED, line)]) == 1, err  # said once


@needs_shared
def test_the_pages_job_says_a_start_image_was_read_reduced(tmp_path, monkeypatch):
    from framepack.app.service import AppService
    from framepack.events import Done, Error, Status
    from framepack.models import ModelSource
    from framepack.queue.front import QueueFront

    photo = big_photo(tmp_path, monkeypatch)
    front = QueueFront("original", ModelSource(models_dir=TINY_MODELS), tmp_path / "out")
    try:
        values = {"input_image": str(photo), "prompt": "x", "total_second_length": 0.4, "latent_window_size": 3, "steps": 1,
                  "resolution": 128}  # fmt: skip
        job = AppService(front, "original").submit("local", "tab", values)
        photo.unlink()  # the upload may be gone before the job runs: the note goes with the job
        said = []
        for event in job.events():
            said += [event.message] if isinstance(event, Status) else []
            if any(re.fullmatch(REDUCED, line) for line in said):
                job.cancel()  # heard: the rest of the job is not this test's
        assert not isinstance(event, Error) and isinstance(event, Done), event
        assert len([line for line in said if re.fullmatch(REDUCED, line)]) == 1, said
    finally:
        front.close()


@needs_shared
def test_a_page_upload_past_pillows_bomb_limit_is_refused_in_our_words(tmp_path, monkeypatch):
    """Gradio's image preprocessing opens every upload before a handler sees it, and Pillow refuses to open one past
    twice its pixel limit as a "decompression bomb". No event of the page preprocesses the start or end image: each
    handler gets the upload as it is, and the app refuses it from its header in one line (a JPEG would be read
    reduced), with Pillow's limit left as it is."""
    import asyncio
    import struct
    import zlib

    import gradio as gr
    from gradio.data_classes import ImageData

    from framepack.app import start as ui

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    panorama = tmp_path / "panorama.png"  # a header saying 40,000 x 10,000: only the header is ever read
    header = struct.pack(">IIBBBBB", 40_000, 10_000, 8, 2, 0, 0, 0)
    panorama.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    upload = ImageData(path=str(panorama), orig_name="panorama.png").model_dump()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1024 * 1024 * 1024 // 4 // 3)  # Pillow's default
    with pytest.raises(Image.DecompressionBombError):  # what Gradio's preprocessing would answer
        gr.Image(type="filepath", image_mode=None).preprocess(ImageData(**upload))

    app = ui.create_app("original", ui.parse_args(["--models", str(TINY_MODELS), "--outputs", str(tmp_path / "out")]))
    try:
        images = [b for b in app.demo.blocks.values() if getattr(b, "elem_id", None) in ("fp-image", "fp-end-image")]
        events = [fn for fn in app.demo.fns.values() if any(block in images for block in fn.inputs)]
        assert len(images) == 2 and {fn.name for fn in events} >= {"timeline", "timeline_strip", "generate", "extend"}
        for fn in events:
            given = [upload if block in images else getattr(block, "value", None) for block in fn.inputs]
            handed = asyncio.run(app.demo.preprocess_data(fn, given, None))  # as Gradio does for a request
            raw = [handed[k] for k, block in enumerate(fn.inputs) if block in images]  # the payload, not a path
            same = [type(r) is dict and Path(r["path"]).read_bytes() == panorama.read_bytes() for r in raw]
            assert same and all(same), fn.name
            if fn.name == "timeline":  # the timeline reads it as a start image (the job refuses it in words)
                assert "No start image" not in fn.fn("x", 5, 9, None, "", None, handed[fn.inputs.index(images[0])])
    finally:
        app.front.close()
    assert Image.MAX_IMAGE_PIXELS == 1024 * 1024 * 1024 // 4 // 3  # the app left Pillow's limit alone
    with pytest.raises(ImageError, match=r"^panorama.png is 40000x10000 \(400 MP\), more than the 64 MP this app decodes"):
        load_image(panorama)
