"""Photos and videos as phones and cameras make them: turned by a display matrix, HEIC, ICC profiles, and inputs
refused in one line before any model is planned or loaded."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import GREEN, GREY, RED, corner, turned_clip
from PIL import Image, ImageCms

from framepack.media.images import ImageError, load_image, target_size
from framepack.media.reading import probe, read_frames, read_video
from framepack.postprocess import pipeline

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


# ------------------------------------------------------------------------------------------------ ICC profiles


def _icc(device_class: bytes, space: bytes, tags: dict[bytes, bytes]) -> bytes:
    """An ICC v2 profile with these tags (PCS XYZ, D50), written from the specification (ICC.1:2001-04)."""
    d50 = b"".join(round(v * 65536).to_bytes(4, "big", signed=True) for v in (0.9642, 1.0, 0.8249))
    table, data, offset = b"", b"", 128 + 4 + 12 * len(tags)
    for sig, body in tags.items():
        body += b"\0" * (-len(body) % 4)
        table += sig + (offset + len(data)).to_bytes(4, "big") + len(body).to_bytes(4, "big")
        data += body
    size = offset + len(data)
    header = (size.to_bytes(4, "big") + bytes(4) + bytes([2, 0x10, 0, 0]) + device_class + space + b"XYZ " + bytes(12)
              + b"acsp" + bytes(28) + d50 + bytes(48))  # fmt: skip
    return header + len(tags).to_bytes(4, "big") + table + data


def _xyz(*values: float) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(round(v * 65536).to_bytes(4, "big", signed=True) for v in values)


def _desc(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    return b"desc" + bytes(4) + len(ascii_).to_bytes(4, "big") + ascii_ + bytes(8) + bytes(3) + bytes(67)


WHITE_D50 = (0.9642, 1.0, 0.8249)


def adobe_rgb_profile() -> bytes:
    """Adobe RGB (1998): its D50-adapted primaries and its 563/256 gamma, a wider gamut than sRGB's."""
    gamma = b"curv" + bytes(4) + (1).to_bytes(4, "big") + (563).to_bytes(2, "big")
    tags = {b"desc": _desc("Wide test RGB"), b"wtpt": _xyz(*WHITE_D50), b"rXYZ": _xyz(0.60974, 0.31111, 0.01947),
            b"gXYZ": _xyz(0.20528, 0.62567, 0.06087), b"bXYZ": _xyz(0.14919, 0.06322, 0.74457),
            b"rTRC": gamma, b"gTRC": gamma, b"bTRC": gamma}  # fmt: skip
    return _icc(b"mntr", b"RGB ", tags)


def cmyk_profile() -> bytes:
    """A printer's CMYK profile in miniature: an A2B0 table (lut16, 2 grid points) from CMYK to XYZ, the inks a
    little warm, so its colours differ from PIL's plain CMYK conversion."""
    to_xyz = np.array([[0.4361, 0.3851, 0.1431], [0.2225, 0.7169, 0.0606], [0.0139, 0.0971, 0.7141]])  # sRGB, D50
    clut = b""
    for c, m, y, k in np.ndindex(2, 2, 2, 2):  # the first channel varies slowest
        linear = np.array([(1 - c) * (1 - k), (1 - m) * (1 - k) * 0.9, (1 - y) * (1 - k) * 0.8])
        clut += b"".join(round(min(v, 1.99) * 32768).to_bytes(2, "big") for v in to_xyz @ linear)
    identity = b"".join(round(v * 65536).to_bytes(4, "big") for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ramp = (0).to_bytes(2, "big") + (65535).to_bytes(2, "big")
    lut = b"mft2" + bytes(4) + bytes([4, 3, 2, 0]) + identity + (2).to_bytes(2, "big") * 2 + ramp * 4 + clut + ramp * 3
    return _icc(b"prtr", b"CMYK", {b"desc": _desc("Test CMYK"), b"wtpt": _xyz(*WHITE_D50), b"A2B0": lut})


def as_srgb(colour: tuple[int, ...], mode: str, icc: bytes) -> np.ndarray:
    """ImageCms's own conversion of one flat colour to sRGB (the reference the loader must match)."""
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    pixel = ImageCms.profileToProfile(Image.new(mode, (1, 1), colour), profile, ImageCms.createProfile("sRGB"),
                                      renderingIntent=ImageCms.getDefaultIntent(profile), outputMode="RGB")  # fmt: skip
    return np.asarray(pixel)[0, 0].astype(float)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_a_wide_gamut_photo_is_shown_in_srgb(tmp_path, suffix):
    icc, colour = adobe_rgb_profile(), (60, 160, 90)
    path = tmp_path / f"adobe{suffix}"
    Image.new("RGB", (32, 32), colour).save(path, icc_profile=icc, **({"quality": 100} if suffix == ".jpg" else {}))
    loaded = load_image(path)
    expected = as_srgb(colour, "RGB", icc)
    assert np.abs(expected - colour).max() > 20  # the test means something: the profile moves this colour
    np.testing.assert_allclose(loaded[8:24, 8:24].reshape(-1, 3).mean(axis=0), expected, atol=2 if suffix == ".jpg" else 0.5)


def test_transparency_keeps_its_alpha_through_the_profile(tmp_path):
    icc = adobe_rgb_profile()
    image = Image.new("RGBA", (16, 16), (60, 160, 90, 255))
    image.paste((60, 160, 90, 0), (0, 0, 8, 16))  # the left half is see-through: white, as for any image
    image.save(tmp_path / "a.png", icc_profile=icc)
    loaded = load_image(tmp_path / "a.png")
    np.testing.assert_allclose(loaded[:, 12].mean(axis=0), as_srgb((60, 160, 90), "RGB", icc), atol=0.5)
    assert (loaded[:, :8] == 255).all()


def test_a_cmyk_photo_with_its_profile_is_converted_by_it(tmp_path):
    icc, colour = cmyk_profile(), (30, 120, 200, 20)
    Image.new("CMYK", (32, 32), colour).save(tmp_path / "print.jpg", icc_profile=icc, quality=100)
    Image.new("CMYK", (32, 32), colour).save(tmp_path / "plain.jpg", quality=100)
    loaded, plain = load_image(tmp_path / "print.jpg"), load_image(tmp_path / "plain.jpg")
    expected = as_srgb(colour, "CMYK", icc)
    naive = np.asarray(Image.new("CMYK", (1, 1), colour).convert("RGB"))[0, 0].astype(float)
    assert np.abs(expected - naive).max() > 20
    np.testing.assert_allclose(loaded[8:24, 8:24].reshape(-1, 3).mean(axis=0), expected, atol=3)
    np.testing.assert_allclose(plain[8:24, 8:24].reshape(-1, 3).mean(axis=0), naive, atol=3)  # untagged: as before


def test_untagged_srgb_and_damaged_profiles_leave_the_pixels_as_they_are(tmp_path):
    colour = (60, 160, 90)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    grey = Image.new("L", (8, 8), 100)
    for name, image, icc in (("plain.png", Image.new("RGB", (8, 8), colour), None),
                             ("srgb.png", Image.new("RGB", (8, 8), colour), srgb),
                             ("damaged.png", Image.new("RGB", (8, 8), colour), b"not a profile" * 20),
                             ("mismatch.png", grey, adobe_rgb_profile())):  # fmt: skip
        image.save(tmp_path / name, **({"icc_profile": icc} if icc else {}))
        assert (load_image(tmp_path / name) == np.asarray(image.convert("RGB"))).all(), name


# ------------------------------------------------------------------------------------------------ unusable videos


def sound_file(path: Path, codec: str, cover: bool = False) -> Path:
    """A second of silence, as a song or a voice memo; with `cover`, its album art too, as music players and tag
    editors store it (a JPEG in a video stream marked as an attached picture: ID3's APIC in an MP3, covr in an M4A)."""
    rate = 44100
    with av.open(str(path), "w", format="mp4" if path.suffix == ".m4a" else None) as out:  # ipod's muxer has no covers
        stream = out.add_stream(codec, rate=rate, layout="mono")
        if cover:
            art = io.BytesIO()
            Image.new("RGB", (32, 32), RED).save(art, "JPEG")
            picture = out.add_stream("mjpeg")
            picture.width, picture.height, picture.pix_fmt = 32, 32, "yuvj420p"
            picture.disposition = av.stream.Disposition.attached_pic
            packet = av.Packet(art.getvalue())
            packet.stream, packet.pts, packet.dts = picture, 0, 0
            out.mux(packet)
        size = stream.codec_context.frame_size or 1152
        for start in range(0, rate, size):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, size), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def unusable_videos(folder: Path) -> list[tuple[str, Path, str]]:
    """(variant, file, the line that refuses it) for every way a video given to extend cannot be used."""
    from helpers import make_clip

    from framepack.settings import Settings

    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("not a video")
    whole = make_clip(folder / "whole.mp4", 30, 30, (64, 48)).read_bytes()
    (folder / "cut.mp4").write_bytes(whole[: len(whole) // 3])  # the index (moov) is at the end: unreadable from the start
    overlap = Settings(variant="f1").frames_per_section
    return [
        ("original", folder / "empty.mp4", "empty.mp4 is empty"),
        ("original", folder / "notes.mp4", "notes.mp4 is not a video this app can read: not a video file, or a damaged one"),
        ("original", folder / "cut.mp4", "cut.mp4 is not a video this app can read"),
        ("original", sound_file(folder / "song.mp3", "libmp3lame"), "song.mp3 has no video stream (only sound)"),
        ("original", sound_file(folder / "memo.m4a", "aac"), "memo.m4a has no video stream (only sound)"),
        ("original", sound_file(folder / "album.mp3", "libmp3lame", cover=True),
         "album.mp3 has no video stream (only sound and its cover picture)"),
        ("f1", sound_file(folder / "album.m4a", "aac", cover=True), "album.m4a has no video stream (only sound and its cover picture)"),
        ("original", make_clip(folder / "still.mp4", 1, 30, (64, 48)),
         "still.mp4 has 1 frame at 30 fps; extending it needs at least 5 (two latent frames)"),
        ("f1", make_clip(folder / "short.mp4", 20, 30, (64, 48)),
         f"short.mp4 has 20 frames at 30 fps; extending it needs at least {overlap} (a section's overlap)"),
        ("f1", make_clip(folder / "short_24.mp4", 24, 24, (64, 48)),  # a second at 24 fps is 30 frames at 30 fps
         f"short_24.mp4 has 30 frames at 30 fps; extending it needs at least {overlap} (a section's overlap)"),
        ("original", folder / "gone.mp4", "video file not found: gone.mp4"),
    ]  # fmt: skip


def test_the_command_line_refuses_an_unusable_video_before_any_model(tmp_path, capsys):
    from framepack.cli import main

    nothing = tmp_path / "no-models"  # no model is found, planned or loaded: the video's line comes first
    for variant, path, line in unusable_videos(tmp_path):
        code = main(["extend", str(path), "--variant", variant, "--seconds", "1", "--prompt", "x", "--models", str(nothing),
                     "--output-dir", str(tmp_path / "out"), "--quiet"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"error: {line}") and err.count("\n") == 1, (path.name, err)
        assert "model" not in err
    from helpers import make_clip

    # The same command with a usable video goes on, to the models (so the refusals above were the video's).
    code = main(["extend", str(make_clip(tmp_path / "fine.mp4", 40, 30, (64, 48))), "--seconds", "1", "--prompt", "x",
                 "--models", str(nothing), "--output-dir", str(tmp_path / "out"), "--quiet"])  # fmt: skip
    assert code != 0 and "model" in capsys.readouterr().err.lower()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.mp4"))


def test_the_page_the_api_and_the_queue_refuse_an_unusable_video_in_the_same_line(tmp_path):
    from framepack.app.service import AppService
    from framepack.controls import JobInputs
    from framepack.media.reading import VideoInputError
    from framepack.models import ModelSource
    from framepack.queue.front import QueueFront
    from framepack.settings import Settings

    cases = unusable_videos(tmp_path)
    fronts = {variant: QueueFront(variant, ModelSource(models_dir=tmp_path / "no-models"), tmp_path / variant)
              for variant in ("original", "f1")}  # fmt: skip
    try:
        for variant, path, line in cases:
            service = AppService(fronts[variant], variant)
            with pytest.raises(VideoInputError) as refused:  # the page and the API: at once, nothing queued
                service.extend("someone", None, str(path), {"prompt": "x", "total_second_length": 1})
            assert str(refused.value).startswith(line), (path.name, refused.value)
            settings = Settings(variant=variant, total_second_length=1, prompt="x")
            job = fronts[variant].submit_extension(settings, path, JobInputs(None))  # a queue line, or a library call
            assert job.refused and next(job.events()).message.startswith(line), path.name
        assert not any(front.list_jobs() for front in fronts.values())
        assert not [p for front in fronts.values() for p in front.output_dir.rglob("*") if p.suffix in (".mp4", ".mp3", ".m4a")]
    finally:
        for front in fronts.values():
            front.close()


# ------------------------------------------------------------------------------------------------ odd images


def test_an_empty_image_file_says_so(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"^photo.jpg is empty$"):
        load_image(tmp_path / "photo.jpg")


def test_a_strip_far_from_the_videos_shape_is_scaled_without_a_huge_intermediate(tmp_path):
    import time

    from framepack.controls import JobInputs, prepare_images
    from framepack.media.images import resize_and_center_crop
    from framepack.settings import Settings

    strip = np.zeros((4000, 1, 3), np.uint8)
    strip[:, 0, 0] = np.arange(4000) * 255 // 3999  # red rises down the strip; green marks its middle
    strip[1990:2010, 0, 1] = 200
    Image.fromarray(strip).save(tmp_path / "strip.png")
    began = time.monotonic()
    images = prepare_images(JobInputs(tmp_path / "strip.png"), Settings(resolution=640))
    assert time.monotonic() - began < 5  # scaled whole it is 1.7 G pixels (5 GB) before the crop
    assert images.start.shape == (960, 416, 3)
    assert np.abs(images.start[..., 0].astype(int) - 127).max() <= 2 and (images.start[..., 1] > 150).all()
    assert images.notes == ("strip.png is 1x4000, far from the 416x960 video's shape: only its middle 1x2 is used",)
    # Where both ways fit in memory they agree: the kept part scaled straight to the size is the crop of the whole.
    rng = np.random.default_rng(0)
    tall = np.asarray(Image.fromarray(rng.integers(0, 255, (40, 4, 3), np.uint8)).resize((4, 400), Image.BILINEAR))
    whole = Image.fromarray(tall).resize((32, 3200), Image.LANCZOS).crop((0, 1584, 32, 1616))
    assert np.abs(resize_and_center_crop(tall, 32, 32).astype(int) - np.asarray(whole)).mean() < 1.5
    assert prepare_images(JobInputs(tmp_path / "strip.png"), Settings(height=16, width=16)).notes  # any size
    assert not prepare_images(JobInputs(quadrants_path(tmp_path)), Settings()).notes  # an ordinary photo: no note


def quadrants_path(folder: Path) -> Path:
    quadrants().save(folder / "photo.png")
    return folder / "photo.png"


def two_pictures(path: Path, default: int | None) -> Path:
    """A file with a small video stream (dark) and a larger one (bright); `default` marks one as the default."""
    with av.open(str(path), "w") as out:
        small, large = out.add_stream("libx264", rate=30), out.add_stream("libx264", rate=30)
        small.width, small.height, large.width, large.height = 32, 16, 64, 48
        for index, stream in enumerate((small, large)):
            stream.pix_fmt = "yuv420p"
            stream.disposition = av.stream.Disposition.default if index == default else av.stream.Disposition(0)
        for pts in range(6):
            for stream, value in ((small, 40), (large, 210)):
                frame = av.VideoFrame.from_ndarray(np.full((stream.height, stream.width, 3), value, np.uint8), format="rgb24")
                frame.pts = pts
                out.mux(stream.encode(frame))
        out.mux(small.encode())
        out.mux(large.encode())
    return path


@pytest.mark.parametrize("default, brightness", [(None, 210), (1, 210), (0, 40)])
def test_the_main_video_stream_is_read(tmp_path, default, brightness):
    path = two_pictures(tmp_path / "two.mkv", default)
    for frames in (read_frames(path), np.stack(list(pipeline.read_frames(path)))):
        assert abs(frames.mean() - brightness) < 3 and frames.shape[1:3] == ((48, 64) if brightness > 100 else (16, 32))
    found = read_video(path, lambda image: image.shape[:2], 1, lambda f: None)
    assert (found.width, found.height) == (probe(path).width, probe(path).height) == (pipeline.probe(path).width, pipeline.probe(path).height)
    assert abs(found.first.mean() - brightness) < 3


@pytest.mark.parametrize("name, codec, pix_fmt", [("alpha.mkv", "ffv1", "yuva420p"), ("alpha.mov", "qtrle", "argb")])
def test_a_video_with_alpha_is_composited_on_white(tmp_path, name, codec, pix_fmt):
    image = np.zeros((16, 32, 4), np.uint8)
    image[..., 0], image[:, 16:, 3], image[:, 8:16, 3] = 200, 255, 128  # red: see-through, half, opaque
    with av.open(str(tmp_path / name), "w") as out:
        stream = out.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 16, pix_fmt
        for pts in range(6):
            frame = av.VideoFrame.from_ndarray(image, format="rgba")
            frame.pts = pts
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    found = read_video(tmp_path / name, lambda image: image.shape[:2], 1, lambda f: None)
    for frame in (read_frames(tmp_path / name)[0], next(pipeline.read_frames(tmp_path / name)), found.first):
        np.testing.assert_allclose(frame[:, :6].reshape(-1, 3).mean(axis=0), (255, 255, 255), atol=2)
        np.testing.assert_allclose(frame[:, 10:14].reshape(-1, 3).mean(axis=0), (228, 128, 128), atol=3)
        np.testing.assert_allclose(frame[:, 18:].reshape(-1, 3).mean(axis=0), (200, 0, 0), atol=3)


# ------------------------------------------------------------------------------------------------ transparent colours


WHITE = (255, 255, 255)


def palette_gif(path: Path, frames: int = 1) -> Path:
    """A 16x16 GIF whose palette index 0 (green) is its transparent colour and index 1 red: the left half of the first
    frame is see-through, the top half of each later one."""
    pictures = []
    for index in range(frames):
        indices = np.ones((16, 16), np.uint8)
        if index == 0:
            indices[:, :8] = 0
        else:
            indices[:8] = 0
        picture = Image.fromarray(indices, "P")
        picture.putpalette([*GREEN, *RED] + [0] * 762)
        pictures.append(picture)
    pictures[0].save(path, save_all=frames > 1, append_images=pictures[1:], transparency=0, duration=100, loop=0, disposal=2)
    return path


def halves(image: np.ndarray) -> dict[str, tuple[int, ...]]:
    """The one colour of each half of a 16x16 picture (an AssertionError if a half is not flat)."""
    found = {}
    for name, part in (("left", image[:, :8]), ("right", image[:, 8:]), ("top", image[:8]), ("bottom", image[8:])):
        colours = np.unique(part.reshape(-1, 3), axis=0)
        found[name] = tuple(int(v) for v in colours[0]) if len(colours) == 1 else None
    return found


@pytest.mark.parametrize("frames", [1, 2])
def test_a_gif_with_a_transparent_palette_index_is_on_white(tmp_path, frames):
    loaded = load_image(palette_gif(tmp_path / "sticker.gif", frames))  # an animated one gives its first frame
    assert halves(loaded)["left"] == WHITE and halves(loaded)["right"] == RED  # not the index's own green


def test_a_transparent_grey_level_or_rgb_colour_is_on_white(tmp_path):
    grey = np.full((16, 16), 90, np.uint8)
    grey[:, :8] = 0
    Image.fromarray(grey, "L").save(tmp_path / "grey.png", transparency=0)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, 8:] = RED
    Image.fromarray(rgb).save(tmp_path / "rgb.png", transparency=(0, 0, 0))
    assert halves(load_image(tmp_path / "grey.png"))["left"] == WHITE and halves(load_image(tmp_path / "grey.png"))["right"] == (90,) * 3
    assert halves(load_image(tmp_path / "rgb.png"))["left"] == WHITE and halves(load_image(tmp_path / "rgb.png"))["right"] == RED


def test_an_animated_gif_read_as_a_video_has_its_transparent_index_on_white(tmp_path):
    path = palette_gif(tmp_path / "sticker.gif", 2)
    frames = read_frames(path)
    assert len(frames) == 2
    assert (halves(frames[0])["left"], halves(frames[0])["right"]) == (WHITE, RED)
    for frame in (frames[1], list(pipeline.read_frames(path))[1]):
        assert (halves(frame)["top"], halves(frame)["bottom"]) == (WHITE, RED)
    found = read_video(path, lambda image: image.shape[:2], 1, lambda f: None)
    assert (halves(found.first)["left"], halves(found.first)["right"]) == (WHITE, RED)


@pytest.mark.parametrize("field", ["input_image", "end_image"])
def test_the_page_hands_an_uploaded_image_over_with_its_transparency(tmp_path, field):
    from gradio.data_classes import ImageData

    from framepack.app.fields import FIELDS, Page

    image = np.zeros((16, 16, 4), np.uint8)
    image[:, 8:] = (*RED, 255)  # the left half see-through (black underneath), as most PNG cut-outs are
    Image.fromarray(image).save(tmp_path / "cutout.png")
    control = next(f for f in FIELDS if f.name == field).control(Page("original"))
    for upload in (tmp_path / "cutout.png", palette_gif(tmp_path / "sticker.gif")):
        given = control.preprocess(ImageData(path=str(upload), orig_name=upload.name))
        assert (halves(load_image(given))["left"], halves(load_image(given))["right"]) == (WHITE, RED), upload.name
