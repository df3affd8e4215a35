"""Output formats: each opens in PyAV (or Pillow, for animated WebP, which FFmpeg does not decode) with the codec,
frame count and rate it should have, sound kept where the container holds it, nothing left under the final name
when writing fails or stops. Also the helpers the post-processing tests make their videos with."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import TONE, decoded, make_video, moving_frames, sound_of
from PIL import Image

from framepack.postprocess import PostprocessError
from framepack.postprocess import formats as formats_module
from framepack.postprocess.formats import FORMATS, open_writer, output_format


def write(path: Path, name: str, frames: list[np.ndarray], fps: int = 30, sound: Path | None = None):
    fmt = output_format(name, path)
    writer = open_writer(path, fmt, frames[0].shape[1], frames[0].shape[0], Fraction(fps), sound=sound)
    for frame in frames:
        writer.add(frame)
    return writer.close(), writer.notes


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("src") / "tone.mp4", moving_frames(30, 64, 96))


# name, file suffix, codec PyAV reports, codec tag, sound codec in the file (None: no sound)
VIDEO_FORMATS = [
    ("mp4", ".mp4", "h264", "avc1", "aac"),
    ("h265", ".mp4", "hevc", "hvc1", "aac"),
    ("webm", ".webm", "vp9", None, "opus"),
    ("av1", ".mp4", "av1", "av01", "aac"),
    ("av1", ".webm", "av1", None, "opus"),
    ("prores", ".mov", "prores", "apch", "aac"),
    ("gif", ".gif", "gif", None, None),
    ("ffv1", ".mkv", "ffv1", None, "aac"),
]


@pytest.mark.parametrize(("name", "suffix", "codec", "tag", "sound"), VIDEO_FORMATS, ids=[f"{v[0]}{v[1]}" for v in VIDEO_FORMATS])
def test_video_formats_open_with_their_codec_frames_rate_and_sound(tmp_path, source, name, suffix, codec, tag, sound):
    frames = moving_frames(30, 63, 95)  # odd sides on purpose
    path, notes = write(tmp_path / f"out{suffix}", name, frames, sound=source)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left beside it
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in ({"av1", "libdav1d"} if codec == "av1" else {codec})  # AV1: dav1d decodes
        if tag:
            assert stream.codec_tag == tag
        pictures = [f for f in container.decode(stream)]
        assert len(pictures) == 30
        times = [float(f.pts * f.time_base) for f in pictures]
        # 30 fps (GIF counts hundredths of a second); Matroska shifts every stream by the AAC priming (23 ms)
        assert times[-1] - times[0] == pytest.approx(29 / 30, abs=0.011) and times[0] < 0.025
        even = FORMATS[name].even
        assert (pictures[0].width, pictures[0].height) == ((96, 64) if even else (95, 63))
    if sound is None:
        assert any("holds no sound" in note for note in notes)
        return
    kept, seconds, peak = sound_of(path)
    assert kept == sound and seconds == pytest.approx(1.0, abs=0.07) and peak == pytest.approx(TONE, abs=5)
    copied = sound == "aac" or suffix == ".mkv"
    assert any(("copied" if copied else "re-encoded") in note for note in notes), notes


def test_odd_sizes_repeat_the_last_row_and_column(tmp_path):
    frames = moving_frames(3, 63, 95)
    path, notes = write(tmp_path / "odd.mp4", "mp4", frames)
    pictures, _ = decoded(path)
    assert pictures[0].shape == (64, 96, 3) and any("95x63 written as 96x64" in n for n in notes)
    error = np.abs(pictures[1][:63, :95].astype(int) - frames[1]).mean()
    edge = np.abs(pictures[1][63, :95].astype(int) - frames[1][62]).mean()  # the added row repeats the last
    assert error < 3 and edge < 4


def test_animated_webp(tmp_path, source):
    frames = moving_frames(30, 63, 95)
    path, notes = write(tmp_path / "out.webp", "webp", frames, sound=source)
    with av.open(str(path)) as container:  # FFmpeg reads the container, not its animation
        assert container.streams.video[0].codec_context.name == "webp"
    image = Image.open(path)
    durations = []
    for i in range(image.n_frames):
        image.seek(i)
        image.load()
        durations.append(image.info["duration"])
    assert image.n_frames == 30 and image.size == (95, 63) and image.info["loop"] == 0
    assert sum(durations) == pytest.approx(1000, abs=2)  # ms: 30 fps
    image.seek(10)
    assert np.abs(np.asarray(image.convert("RGB")).astype(int) - frames[10]).mean() < 6
    assert notes == ["animated WebP holds no sound"]


def test_gif_timing_and_colours(tmp_path):
    frames = moving_frames(30, 48, 64)
    path, _ = write(tmp_path / "out.gif", "gif", frames)
    image = Image.open(path)
    delays = []
    for i in range(image.n_frames):
        image.seek(i)
        delays.append(image.info["duration"])
    assert len(delays) == 30 and sum(delays) == 1000  # 30, 40, 30, ... ms: 30 fps on average
    image.seek(5)
    assert np.abs(np.asarray(image.convert("RGB")).astype(int) - frames[5]).mean() < 4  # its own 256 colours


def test_lossless_formats_keep_every_value(tmp_path, source):
    frames = moving_frames(8, 33, 47)
    folder, notes = write(tmp_path / "frames", "png", frames, sound=source)
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:06d}.png" for i in range(8)]
    assert all(np.array_equal(np.asarray(Image.open(folder / f"{i:06d}.png")), f) for i, f in enumerate(frames))
    assert notes == ["PNG frames hold no sound"]
    path, _ = write(tmp_path / "out.mkv", "ffv1", frames)
    pictures, rate = decoded(path)
    assert rate == 30 and len(pictures) == 8 and all(np.array_equal(a, b) for a, b in zip(pictures, frames))


def test_sound_is_re_encoded_where_the_container_needs_it(tmp_path):
    opus = make_video(tmp_path / "opus.webm", moving_frames(15, 32, 32), sound="libopus", codec="libvpx-vp9")
    path, notes = write(tmp_path / "out.mp4", "mp4", moving_frames(15, 32, 32), sound=opus)
    codec, seconds, peak = sound_of(path)
    assert codec == "aac" and seconds == pytest.approx(0.5, abs=0.07) and peak == pytest.approx(TONE, abs=8)
    assert notes == ["sound: opus re-encoded to aac"]
    silent = make_video(tmp_path / "silent.mp4", moving_frames(5, 32, 32), sound=None)
    path, notes = write(tmp_path / "out2.mp4", "mp4", moving_frames(5, 32, 32), sound=silent)
    assert notes == ["the input has no sound"]
    with av.open(str(path)) as container:
        assert not container.streams.audio


def test_sound_is_interleaved_with_the_picture(tmp_path):
    long_source = make_video(tmp_path / "long.mp4", moving_frames(90, 32, 32))
    path, _ = write(tmp_path / "out.mp4", "mp4", moving_frames(90, 32, 32), sound=long_source)
    with av.open(str(path)) as container:
        order = [p.stream.type for p in container.demux() if p.size]
    first_audio = order.index("audio")
    assert first_audio < order.count("video") // 2  # sound comes along with the picture, not all at the end


def test_unknown_format_and_missing_encoder(monkeypatch):
    with pytest.raises(PostprocessError, match="unknown format 'avi'"):
        output_format("avi")
    monkeypatch.setattr(formats_module, "_has_encoder", lambda name: name != "libx265")
    with pytest.raises(PostprocessError, match="^format h265 needs the libx265 encoder, which this PyAV build lacks$"):
        output_format("h265")
    assert output_format("mp4").codec == "libx264"


@pytest.mark.parametrize("name", ["mp4", "png"])
def test_a_failed_or_stopped_write_leaves_nothing(tmp_path, source, name):
    target = tmp_path / ("out.mp4" if name == "mp4" else "frames")
    fmt = output_format(name, target)
    writer = open_writer(target, fmt, 64, 48, Fraction(30), sound=source)
    writer.add(moving_frames(1)[0])
    with pytest.raises(ValueError):
        writer.add(np.zeros((10, 10, 3), np.uint8))
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    stopped = open_writer(target, fmt, 64, 48, Fraction(30))
    stopped.add(moving_frames(1)[0])
    stopped.abort()
    assert list(tmp_path.iterdir()) == []


def test_png_folder_replaces_an_older_one_whole(tmp_path):
    old, _ = write(tmp_path / "frames", "png", moving_frames(5))
    (old / "notes.txt").write_text("old")
    new, _ = write(tmp_path / "frames", "png", moving_frames(3))
    assert new == old and sorted(p.name for p in new.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["frames"]
