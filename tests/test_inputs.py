"""Photos and videos as phones and cameras make them: turned by a display matrix, HEIC, ICC profiles, and inputs
refused in one line before any model is planned or loaded."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from framepack.media.images import ImageError, load_image, target_size
from framepack.media.reading import probe, read_frames, read_video
from framepack.postprocess import pipeline

RED, GREEN, GREY = (255, 0, 0), (0, 255, 0), (128, 128, 128)


def turned_clip(path: Path, degrees: float, hflip: bool = False, vflip: bool = False, frames: int = 3) -> Path:
    """A 64x32 clip stored landscape, red in its top-left corner and green in its top-right, with a display matrix
    that turns it `degrees` anticlockwise (PyAV's sense, as `frame.rotation` reads it back) then mirrors it."""
    image = np.full((32, 64, 3), GREY, np.uint8)
    image[:8, :8], image[:8, -8:] = RED, GREEN
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt, stream.options = 64, 32, "yuv420p", {"crf": "0"}
        stream.set_display_rotation(degrees, hflip, vflip)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def corner(image: np.ndarray, where: str) -> np.ndarray:
    """The mean colour of a 4x4 patch inside the named corner's 8x8 block."""
    rows = slice(2, 6) if where[0] == "t" else slice(-6, -2)
    cols = slice(2, 6) if where[1] == "l" else slice(-6, -2)
    return image[rows, cols].reshape(-1, 3).mean(axis=0)


# (anticlockwise degrees, hflip, vflip) -> the shown size (width, height) and where red and green are shown.
TURNS = {
    "phone portrait (-90)": ((-90, False, False), (32, 64), "tr", "br"),  # turned clockwise
    "90": ((90, False, False), (32, 64), "bl", "tl"),
    "180": ((180, False, False), (64, 32), "br", "bl"),
    "mirrored": ((0, True, False), (64, 32), "tr", "tl"),
    "flipped": ((0, False, True), (64, 32), "bl", "br"),
    "-90 mirrored": ((-90, True, False), (32, 64), "tl", "bl"),
    "90 mirrored": ((90, True, False), (32, 64), "br", "tr"),
}


@pytest.mark.parametrize("name", list(TURNS))
def test_video_frames_are_read_as_a_player_shows_them(tmp_path, name):
    matrix, (width, height), red, green = TURNS[name]
    path = turned_clip(tmp_path / "phone.mp4", *matrix)
    for frames in (read_frames(path), np.stack(list(pipeline.read_frames(path)))):
        assert frames.shape == (3, height, width, 3)
        np.testing.assert_allclose(corner(frames[0], red), RED, atol=12)
        np.testing.assert_allclose(corner(frames[0], green), GREEN, atol=12)
    info = probe(path)
    assert (info.width, info.height) == (width, height) == (pipeline.probe(path).width, pipeline.probe(path).height)
    # The extension's reader: the bucket is chosen for the upright frame, and the note says what was done.
    sizes = []
    found = read_video(path, lambda image: sizes.append(image.shape[:2]) or target_size(image, 128), 1, lambda f: None)
    assert sizes == [(height, width)] and (found.width, found.height) == (width, height)
    assert (found.first.shape[0] > found.first.shape[1]) == (height > width)
    assert found.turn.describe() != ""


def test_a_video_without_a_display_matrix_is_read_as_stored(tmp_path):
    image = np.full((32, 64, 3), GREY, np.uint8)
    image[:8, :8] = RED
    with av.open(str(tmp_path / "plain.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    found = read_video(tmp_path / "plain.mp4", lambda image: target_size(image, 128), 1, lambda f: None)
    assert (found.width, found.height) == (64, 32) and found.turn.describe() == ""
    np.testing.assert_allclose(corner(read_frames(tmp_path / "plain.mp4")[0], "tl"), RED, atol=12)


def test_a_phone_clip_is_extended_upright(tiny_models, tmp_path):
    from framepack.engine import extend_video
    from framepack.events import Done
    from framepack.settings import Settings

    path = turned_clip(tmp_path / "phone.mp4", -90, frames=10)
    settings = Settings(variant="original", total_second_length=0.4, latent_window_size=3, steps=1, resolution=128, prompt="x")
    events = list(extend_video(tiny_models("original"), settings, path, tmp_path / "out", job_id="ext", previews=False))
    assert isinstance(events[-1], Done), events[-1]
    output = read_frames(tmp_path / "out" / "ext.mp4")
    assert output.shape[1] > output.shape[2]  # portrait, as the phone showed it
    np.testing.assert_allclose(corner(output[0], "tr"), RED, atol=40)  # the input's frames come first, upright
    assert "phone.mp4 is shown turned 90° clockwise (its display matrix): its frames are read that way up" in [
        getattr(e, "message", None) for e in events
    ]


# ------------------------------------------------------------------------------------------------ photos


def quadrants() -> Image.Image:
    """A 64x48 photo of four flat colours, so a lossy codec keeps each one's middle."""
    image = np.zeros((48, 64, 3), np.uint8)
    image[:24, :32], image[:24, 32:], image[24:, :32], image[24:, 32:] = (200, 30, 40), (30, 180, 60), (40, 50, 210), (230, 220, 90)  # fmt: skip
    return Image.fromarray(image)


def middles(image: np.ndarray) -> np.ndarray:
    return np.array([image[8:16, 8:24], image[8:16, 40:56], image[32:40, 8:24], image[32:40, 40:56]]).mean(axis=(1, 2))


def test_a_heic_photo_loads_like_any_other(tmp_path):
    import pillow_heif

    photo = quadrants()
    pillow_heif.from_pillow(photo).save(tmp_path / "IMG_0001.HEIC", quality=95)
    loaded = load_image(tmp_path / "IMG_0001.HEIC")
    assert loaded.shape == (48, 64, 3) and loaded.dtype == np.uint8
    np.testing.assert_allclose(middles(loaded), middles(np.asarray(photo)), atol=8)
    assert Image.open(tmp_path / "IMG_0001.HEIC").format == "HEIF"  # registered for every PIL reader (the page's too)


def test_a_heic_photo_without_pillow_heif_says_what_to_install(tmp_path, monkeypatch):
    from framepack.media import images

    monkeypatch.setattr(images, "pillow_heif", None)
    (tmp_path / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(64))  # not even a whole HEIF box
    with pytest.raises(ImageError, match=r"^photo.heic is a HEIC/HEIF photo: reading it needs pillow-heif"):
        load_image(tmp_path / "photo.heic")
