"""Videos that are unusual rather than broken, and inputs that would expand without bound: a frame held for hours,
a stop while an input is read, interlaced, cut short, variable-rate and HDR videos, and pictures past Pillow's limit."""

from __future__ import annotations

import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from framepack.media.reading import MAX_INPUT_FRAMES, ReadingStopped, VideoInputError, check_video, read_frames, read_video


def held_clip(path: Path, last: float, size: int = 16) -> Path:
    """Three frames at 0 s, 1 s and `last` s (a few KB whatever `last` is): read at 30 fps, the second one is held
    until `last`."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=1)
        stream.width = stream.height = size
        stream.pix_fmt, stream.time_base = "yuv420p", Fraction(1, 1000)
        for index, seconds in enumerate((0, 1, last)):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 60 * index, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(seconds * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def extend_cli(path: Path, tmp_path: Path) -> int:
    from framepack.cli import main

    return main(["extend", str(path), "--seconds", "1", "--prompt", "x", "--models", str(tmp_path / "no-models"),
                 "--output-dir", str(tmp_path / "out"), "--quiet"])  # fmt: skip


@pytest.mark.parametrize("suffix, seconds", [(".mp4", 100_000), (".mkv", 100_000), (".mp4", 601)])
def test_a_frame_held_for_hours_is_refused_before_any_model(tmp_path, capsys, suffix, seconds):
    path = held_clip(tmp_path / f"held{suffix}", seconds)
    assert path.stat().st_size < 4000
    began = time.monotonic()
    assert extend_cli(path, tmp_path) == 2
    err = capsys.readouterr().err
    total = seconds + 1  # the last frame lasts a second (the rate given)
    assert err == (f"error: held{suffix} has 3 frames over {total:g} s: at 30 fps that is {round(total * 30)} frames, more "
                   f"than the {MAX_INPUT_FRAMES} (10 minutes) an input video may have; cut it shorter first\n")  # fmt: skip
    assert time.monotonic() - began < 5 and not (tmp_path / "out").exists()


def test_a_file_whose_length_lies_is_stopped_at_the_limit_while_read(tmp_path, monkeypatch):
    from framepack.media import reading

    path = held_clip(tmp_path / "held.mkv", 100_000)
    monkeypatch.setattr(reading, "seconds_of", lambda container, stream: None)  # as if the file said nothing
    passed = []
    with pytest.raises(VideoInputError, match=r"^held.mkv has a frame at 100000 s: at 30 fps that is 3000000 frames"):
        read_video(path, lambda image: (16, 16), 1, passed.append)
    assert len(passed) <= 30  # refused before the held frame was handed on


def test_a_stop_while_reading_ends_the_reading_within_a_few_frames(tmp_path):
    path = held_clip(tmp_path / "held.mp4", 500)  # allowed: 15,030 frames at 30 fps
    check_video(path, (5, "two latent frames"))
    stop, passed = threading.Event(), []

    def hand_on(frame: np.ndarray) -> None:
        passed.append(frame)
        if len(passed) == 100:
            stop.set()

    with pytest.raises(ReadingStopped):
        read_video(path, lambda image: (16, 16), 1, hand_on, stop)
    assert len(passed) == 100


def test_a_stop_while_an_extension_reads_its_input_ends_the_job_as_stopped(tiny_models, tmp_path):
    from framepack.engine import extend_video
    from framepack.events import Done, Status
    from framepack.settings import Settings

    path = held_clip(tmp_path / "held.mp4", 590, size=64)  # 17,730 frames at 30 fps: minutes to encode them all
    settings = Settings(variant="original", total_second_length=0.4, latent_window_size=3, steps=1, resolution=128, prompt="x")
    stop, asked = threading.Event(), None
    for event in extend_video(tiny_models("original"), settings, path, tmp_path / "out", job_id="ext", stop=stop):
        if isinstance(event, Status) and event.message == "Reading held.mp4":
            threading.Timer(0.5, stop.set).start()
            asked = time.monotonic()
    assert isinstance(event, Done) and event.stopped and event.sections_done == 0 and event.video_path is None, event
    assert time.monotonic() - asked < 5
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.*")), list((tmp_path / "out").rglob("*"))


# ------------------------------------------------------------------------------------------------ interlaced


def interlaced_clip(path: Path, frames: int = 12) -> Path:
    """A TV recording in miniature: top field first, each field taken at its own moment, so the bar moving right
    stands in a different place on the even and the odd rows (the comb a woven picture shows)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.options = 64, 48, "yuv420p", {"tff": "1", "crf": "0"}
        stream.codec_context.flags |= av.codec.context.Flags.interlaced_dct | av.codec.context.Flags.interlaced_me
        for index in range(frames):
            image = np.full((48, 64, 3), 30, np.uint8)
            image[0::2, 8 + 4 * index : 16 + 4 * index] = 220  # the top field, then the bottom one 2 px further on
            image[1::2, 10 + 4 * index : 18 + 4 * index] = 220
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def combing(frame: np.ndarray) -> float:
    """How much each row differs from the mean of its neighbours: large where two fields are woven over motion."""
    rows = frame.astype(float).mean(axis=2)
    return float(np.abs(rows[1:-1] - (rows[:-2] + rows[2:]) / 2).mean())


def test_an_interlaced_video_is_deinterlaced_and_said_so(tmp_path):
    from helpers import make_clip

    path = interlaced_clip(tmp_path / "tv.mp4")
    with av.open(str(path)) as container:
        woven = [(frame.interlaced_frame, frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
    assert all(flag for flag, _ in woven)  # PyAV wrote it interlaced, and reads it so
    found = read_video(path, lambda image: image.shape[:2], 20, lambda frame: None)
    assert found.facts.deinterlaced and len(found.tail) == found.frames == 14  # 12 frames at 25 fps: 14 at 30
    for index in (1, 5, 10):
        shown = found.tail[round(index * 30 / 25)]
        assert combing(shown) < 0.3 * combing(woven[index][1]) and shown.max() > 200, index  # the bar, whole
    progressive = read_video(make_clip(tmp_path / "plain.mp4", 6, 30, (64, 48)), lambda image: (48, 64), 1, lambda f: None)
    assert not progressive.facts.deinterlaced


def test_an_interlaced_extension_says_it_was_deinterlaced(tiny_models, tmp_path):
    from framepack.engine import extend_video
    from framepack.events import Done
    from framepack.settings import Settings

    path = interlaced_clip(tmp_path / "tv.mp4")
    settings = Settings(variant="original", total_second_length=0.4, latent_window_size=3, steps=1, resolution=128, prompt="x")
    events = list(extend_video(tiny_models("original"), settings, path, tmp_path / "out", job_id="ext", previews=False))
    assert isinstance(events[-1], Done), events[-1]
    assert "tv.mp4 is interlaced: its frames are deinterlaced (bwdif), as a player shows them" in [
        getattr(event, "message", None) for event in events
    ]


# ------------------------------------------------------------------------------------------------ cut short, variable rate


def test_a_video_cut_short_gives_the_frames_before_the_cut_and_says_so(tiny_models, tmp_path):
    from helpers import make_clip

    from framepack.engine import extend_video
    from framepack.events import Done
    from framepack.settings import Settings

    whole = make_clip(tmp_path / "whole.mkv", 90, 30, (64, 48), fmt="matroska", audio=True).read_bytes()
    (tmp_path / "cut.mkv").write_bytes(whole[: len(whole) // 2])  # a download or a copy that stopped half way
    found = read_video(tmp_path / "cut.mkv", lambda image: image.shape[:2], 1, lambda frame: None)
    decoded, seconds = found.facts.frames, f"{found.facts.seconds:.2f}"
    assert found.facts.damaged and 30 < decoded < 80 and found.frames == round(found.facts.seconds * 30)
    settings = Settings(variant="original", total_second_length=0.4, latent_window_size=3, steps=1, resolution=128, prompt="x")
    events = list(extend_video(tiny_models("original"), settings, tmp_path / "cut.mkv", tmp_path / "out", job_id="ext", previews=False))
    assert isinstance(events[-1], Done) and events[-1].frames == found.frames + 12, events[-1]
    assert f"cut.mkv is damaged after {decoded} frames ({seconds} s): the frames before are used" in [
        getattr(event, "message", None) for event in events
    ]
    # The whole file is not damaged; one cut before a usable length is refused, saying why.
    (tmp_path / "whole.mkv").write_bytes(whole)
    assert not read_video(tmp_path / "whole.mkv", lambda image: image.shape[:2], 1, lambda f: None).facts.damaged
    (tmp_path / "stub.mkv").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(VideoInputError, match=rf"^stub.mkv is damaged after {decoded} frames \({seconds} s\): the frames "
                                              rf"before are used, but stub.mkv has {found.frames} frames at 30 fps; "
                                              r"extending it needs at least 100 \(a test\)$"):  # fmt: skip
        check_video(tmp_path / "stub.mkv", (100, "a test"))


def test_a_video_that_breaks_part_way_gives_the_frames_before(tmp_path):
    from helpers import make_clip

    # Motion JPEG in AVI: noise in the middle of the file breaks a frame there for sure (the decoder fails).
    broken = make_clip(tmp_path / "broken.avi", 60, 30, (64, 48), codec="mjpeg", fmt="avi")
    data = bytearray(broken.read_bytes())
    data[len(data) // 2 : len(data) // 2 + len(data) // 4] = np.random.default_rng(0).bytes(len(data) // 4)
    broken.write_bytes(bytes(data))
    found = read_video(broken, lambda image: image.shape[:2], 1, lambda frame: None)
    assert found.facts.damaged and 10 < found.frames < 60


def vfr_clip(path: Path, times: list[float]) -> Path:
    """Frames at the given times (a phone's variable-rate recording), under a nominal rate of 1 fps."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt, stream.time_base = 32, 32, "yuv420p", Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)  # the encoder keeps the milliseconds
        for index, seconds in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * index, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(seconds * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_variable_rate_video_reports_its_real_rate_and_its_last_frame_lasts_its_time(tiny_models, tmp_path, suffix):
    from framepack.engine import extend_video
    from framepack.events import Done
    from framepack.settings import Settings

    times = [0, 0.1, 0.15, 0.35, 0.4, 0.5, 0.7, 0.8, 0.85, 1.0]  # 10 frames, 1/10 to 1/20 s apart
    path = vfr_clip(tmp_path / f"phone{suffix}", times)
    found = read_video(path, lambda image: image.shape[:2], 40, lambda frame: None)
    assert found.facts.variable and not found.facts.damaged
    # The last frame is not held for the nominal rate's second: for its own duration or the average spacing.
    assert 31 <= found.frames <= 34, found.frames
    assert abs(found.fps - 10 / (found.frames / 30)) < 0.5
    shown = [sum(t <= (k + 0.25) / 30 for t in times) - 1 for k in range(found.frames)]  # each for as long as it lasts
    assert [round(frame.mean() / 20) for frame in found.tail] == shown
    settings = Settings(variant="original", total_second_length=0.4, latent_window_size=3, steps=1, resolution=128, prompt="x")
    events = list(extend_video(tiny_models("original"), settings, path, tmp_path / "out", job_id="ext", previews=False))
    assert isinstance(events[-1], Done), events[-1]
    notes = [getattr(event, "message", "") for event in events]
    assert f"phone{suffix} has a variable frame rate (5 to 20 fps, {found.fps:.2f} on average): its frames are shown at " \
           "30 fps, each for as long as it lasts" in notes  # fmt: skip
    assert not any("runs at" in note for note in notes)


# ------------------------------------------------------------------------------------------------ HDR


def hdr_clip(path: Path, transfer: int) -> Path:
    """A clip tagged HDR: BT.2020 primaries and matrix, the PQ (16) or HLG (18) transfer."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        context = stream.codec_context
        context.color_trc, context.color_primaries, context.colorspace = transfer, 9, 9
        for index in range(8):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 100, np.uint8), format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


@pytest.mark.parametrize("transfer, name", [(16, "PQ"), (18, "HLG")])
def test_an_hdr_video_is_refused_before_any_model_in_one_line(tmp_path, capsys, transfer, name):
    path = hdr_clip(tmp_path / "hdr.mov", transfer)
    assert extend_cli(path, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: hdr.mov is HDR ({name}); convert it to SDR first, e.g. ffmpeg -i hdr.mov ") and err.count("\n") == 1
    assert "zscale" not in av.filter.filters_available  # were it there, the reader would tone-map instead
    with pytest.raises(VideoInputError, match=rf"^hdr.mov is HDR \({name}\)"):
        read_video(path, lambda image: image.shape[:2], 1, lambda frame: None)
    check_video(hdr_clip(tmp_path / "sdr.mov", 1), (5, "two latent frames"))  # BT.709: as any video


# ------------------------------------------------------------------------------------------------ post-processing


def postprocess_cli(path: Path, *options: str) -> int:
    from framepack.cli import main

    return main(["postprocess", str(path), *options])


def test_post_processing_deinterlaces_as_an_extension_does(tmp_path, capsys):
    path = interlaced_clip(tmp_path / "tv.mp4")
    with av.open(str(path)) as container:
        woven = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert postprocess_cli(path, "--format", "ffv1") == 0  # lossless: what is in the output is what was read
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "tv.mkv")
    assert "tv.mp4 is interlaced: its frames are deinterlaced (bwdif), as a player shows them" in err.splitlines()
    made = read_frames(tmp_path / "tv.mkv")
    assert len(made) == len(woven) == 12  # at its own rate: one frame out per frame in
    for index in (1, 5, 10):
        assert combing(made[index]) < 0.3 * combing(woven[index]) and made[index].max() > 200, index


def test_post_processing_turns_a_phone_clip_upright_and_says_so(tmp_path, capsys):
    from helpers import RED, corner, turned_clip

    path = turned_clip(tmp_path / "phone.mp4", -90)  # stored 64x32, shown 32x64 with red top right
    assert postprocess_cli(path, "--format", "ffv1") == 0
    err = capsys.readouterr().err
    assert "phone.mp4 is shown turned 90° clockwise (its display matrix): its frames are read that way up" in err.splitlines()
    assert "phone.mp4: 32x64 at 30 fps -> phone.mkv: 32x64 at 30 fps; writing FFV1 MKV (lossless)" in err.splitlines()
    made = read_frames(tmp_path / "phone.mkv")
    assert made.shape == (3, 64, 32, 3)
    np.testing.assert_allclose(corner(made[0], "tr"), RED, atol=12)


def test_post_processing_refuses_hdr_and_says_when_a_file_is_cut_short(tmp_path, capsys):
    from helpers import make_clip

    assert postprocess_cli(hdr_clip(tmp_path / "hdr.mov", 16)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: hdr.mov is HDR (PQ); convert it to SDR first") and err.count("\n") == 1
    assert not (tmp_path / "hdr.mp4").exists()
    whole = make_clip(tmp_path / "whole.mkv", 90, 30, (64, 48), fmt="matroska").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(whole[: len(whole) // 2])
    found = read_video(tmp_path / "cut.mkv", lambda image: image.shape[:2], 1, lambda frame: None)
    assert postprocess_cli(tmp_path / "cut.mkv", "--format", "ffv1", "--output", str(tmp_path / "rest.mkv")) == 0
    err = capsys.readouterr().err
    assert f"cut.mkv is damaged after {found.facts.frames} frames" in err
    assert len(read_frames(tmp_path / "rest.mkv")) == found.facts.frames
