"""Pictures past Pillow's pixel limit: a big JPEG is read reduced and said so, a huge PNG refused in one line
without decoding it."""

from __future__ import annotations

import numpy as np
import pytest
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
