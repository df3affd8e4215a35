"""Buckets, resizing and the image loader."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from framepack.media.images import (
    BUCKETS_640,
    ImageError,
    buckets,
    load_image,
    nearest_bucket,
    resize_and_center_crop,
    target_size,
)


def test_640_buckets_are_framepacks():
    assert len(BUCKETS_640) == 14
    assert buckets(640) == list(BUCKETS_640)
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in BUCKETS_640)


@pytest.mark.parametrize(
    "size, bucket",
    [((640, 640), (640, 608)), ((1080, 1920), (480, 832)), ((1920, 1080), (832, 480)), ((480, 640), (544, 704)),
     ((120, 150), (544, 704)), ((3000, 2000), (768, 512)), ((10, 1000), (416, 960))],
)  # fmt: skip
def test_nearest_bucket(size, bucket):
    assert nearest_bucket(*size) == bucket


def test_square_ties_go_to_the_later_bucket():
    # 608x640 and 640x608 are equally near a square; FramePack's `<=` keeps the later one.
    assert nearest_bucket(100, 100) == (640, 608)


@pytest.mark.parametrize("resolution", [128, 256, 320, 480, 544, 768, 960])
def test_scaled_buckets(resolution):
    scaled = buckets(resolution)
    assert len(scaled) == 14
    for (h, w), (h0, w0) in zip(scaled, BUCKETS_640):
        assert h % 16 == 0 and w % 16 == 0
        assert abs(h * w / resolution**2 - h0 * w0 / 640**2) < 0.2  # area follows the target
        assert abs(h / w - h0 / w0) / (h0 / w0) < 0.25  # aspect follows the bucket
    assert nearest_bucket(1080, 1920, resolution)[1] > nearest_bucket(1080, 1920, resolution)[0]


def test_explicit_size_overrides_bucket():
    image = np.zeros((100, 200, 3), np.uint8)
    assert target_size(image, 640, 64, 96) == (64, 96)
    assert target_size(image, 640) == nearest_bucket(100, 200)


def test_resize_and_center_crop():
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 100:200] = 255  # a white band in the middle third
    out = resize_and_center_crop(image, 64, 64)
    assert out.shape == (64, 64, 3)
    assert out[:, 8:56].min() > 200  # the centre is the band
    same = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    assert resize_and_center_crop(same, 96, 64) is same


def png_bytes(image: Image.Image, fmt: str = "PNG", **kw) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    buffer.seek(0)
    return buffer


def test_rgba_is_composited_on_white():
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    out = load_image(png_bytes(image))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[4, 4]) == (255, 255, 255)


def test_grayscale_palette_and_16_bit():
    assert load_image(png_bytes(Image.new("L", (5, 4), 77))).shape == (4, 5, 3)
    palette = Image.new("P", (5, 4), 3)
    palette.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 756)
    assert tuple(load_image(png_bytes(palette))[0, 0]) == (70, 80, 90)
    sixteen = Image.fromarray(np.full((4, 5), 65535, np.uint16))
    assert load_image(png_bytes(sixteen)).min() == 255


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display upright
    out = load_image(png_bytes(image, "JPEG", exif=exif.tobytes()))
    assert out.shape == (40, 20, 3)


def test_animated_image_gives_first_frame():
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    buffer.seek(0)
    out = load_image(buffer)
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_bad_files_get_one_line_reasons(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="cannot read notes.png"):
        load_image(text)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(png_bytes(Image.new("RGB", (64, 64), (1, 2, 3))).getvalue()[:80])
    with pytest.raises(ImageError):
        load_image(truncated)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError):
        load_image(np.zeros((4, 4, 3), np.float32))
