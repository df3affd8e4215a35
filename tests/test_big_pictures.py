"""Pictures past Pillow's pixel limit: a big JPEG is read reduced and said so, a huge PNG refused in one line
without decoding it."""

from __future__ import annotations

import re

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


def test_a_page_upload_past_pillows_bomb_limit_is_refused_in_our_words(tmp_path, monkeypatch):
    """Gradio's Image field opens every upload before the app sees it, and Pillow refuses to open one past twice its
    pixel limit as a "decompression bomb". The page's image fields hand the upload over unopened, with Pillow's limit
    as it is: the app refuses it from its header in one line (a JPEG would be read reduced)."""
    import struct
    import zlib

    import gradio as gr
    from gradio.data_classes import ImageData

    from framepack.app.fields import BY_NAME, Page

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    panorama = tmp_path / "panorama.png"  # a header saying 40,000 x 10,000: only the header is ever read
    header = struct.pack(">IIBBBBB", 40_000, 10_000, 8, 2, 0, 0, 0)
    panorama.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    upload = ImageData(path=str(panorama), orig_name="panorama.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1024 * 1024 * 1024 // 4 // 3)  # Pillow's default
    with pytest.raises(Image.DecompressionBombError):  # Gradio's own field: the user would read Gradio's error
        gr.Image(type="filepath", image_mode=None).preprocess(upload)
    with gr.Blocks():
        start, end = (BY_NAME[name].control(Page("original")) for name in ("input_image", "end_image"))
    for field in (start, end):
        assert field.preprocess(upload) == str(panorama) and field.get_block_name() == "image"
    with pytest.raises(ImageError, match=r"^panorama.png is 40000x10000 \(400 MP\), more than the 64 MP this app decodes"):
        load_image(panorama)
