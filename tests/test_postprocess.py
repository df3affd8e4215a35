"""The post-processing pipeline and its command: colour matching, frame counts and timing of interpolation, the
original frames kept bit for bit, scene cuts, upscaling, memory that does not grow with the video, stopping, and
every bad input ending in one line with nothing written."""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import (
    REPO,
    decoded,
    make_video,
    moving_frames,
    save_pkl,
    sound_of,
    srvgg_state_dict,
    v4_state_dict,
)
from PIL import Image
from real_weights import rife_dir

from framepack.cli import postprocess as command_module
from framepack.events import Done, FrameProgress, Status
from framepack.postprocess import PostprocessError
from framepack.postprocess import pipeline as pipeline_module
from framepack.postprocess.colour import ColourMatch, drift
from framepack.postprocess.pipeline import (
    PostprocessOptions,
    default_output,
    postprocess,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The frames here are tiny: one thread is fastest, and does not stall when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hdv3() -> str:
    return str(rife_dir() / "train_log" / "flownet.pkl")


@pytest.fixture(scope="module")
def tiny_rife(tmp_path_factory) -> str:
    """A small v4-layout RIFE (random weights): fast, for tests of counting and memory, not of quality."""
    return str(save_pkl(v4_state_dict(widths=(16, 8), hidden=8), tmp_path_factory.mktemp("rife") / "tiny.pkl"))


def run_all(source: Path, output: Path, options: PostprocessOptions, **kwargs) -> list:
    return list(postprocess(source, output, options, **kwargs))


def demo_clip(name: str, count: int, h: int = 48, w: int = 64, step: int = 2) -> list[np.ndarray]:
    """Crops of a real frame moving by `step` px per frame (downscaled to keep the test fast)."""
    image = np.asarray(Image.open(rife_dir() / "demo" / name).convert("RGB"))[::2, ::2]
    return [np.ascontiguousarray(image[i * step : i * step + h, i * step : i * step + w]) for i in range(count)]


# ----------------------------------------------------------------------------------------------- options


def test_options_check_their_values_and_round_trip():
    options = PostprocessOptions(upscale="RealESRGAN_x4plus", scale=2, interpolate=4, color_match="start", format="webm")
    assert PostprocessOptions.from_dict(options.to_dict()) == options
    assert PostprocessOptions.from_dict({"interpolate": "2", "crf": 20.0, "upscale": ""}) == PostprocessOptions(interpolate=2, crf=20)
    bad = [
        ({"interpolate": 3}, "interpolation x3 is not supported"), ({"format": "avi"}, "unknown format 'avi'"),
        ({"crf": -1}, "crf must be 0 to 63"), ({"color_match": "end"}, "unknown colour match 'end'"),
        ({"scale": 2}, "scale applies after an upscale model"), ({"resolution": 640}, "unknown post-processing option"),
        ({"interpolate": 2.5}, "bad value for interpolate"), ({"format": 4}, "bad value for format"),
    ]  # fmt: skip
    for values, message in bad:
        with pytest.raises(PostprocessError, match=message):
            PostprocessOptions.from_dict(values)


def test_default_output_says_what_was_done(tmp_path):
    clip = make_video(tmp_path / "clip.mp4", moving_frames(2, 32, 32), sound=None)

    def name(**options) -> str:
        return default_output(clip, PostprocessOptions(**options)).name

    assert name(upscale="RealESRGAN_x4plus", interpolate=2, color_match="start") == "clip.x4-60fps-colour.mp4"
    assert name(upscale="RealESRGAN_x4plus", scale=2, interpolate=4, format="webm") == "clip.x2-120fps.webm"
    assert name() == "clip.crf16.mp4" and name(format="prores") == "clip.mov" and name(format="png") == "clip.frames"
    assert default_output(clip, PostprocessOptions()).parent == tmp_path


# ----------------------------------------------------------------------------------------------- colour


def test_colour_match_pulls_drifting_frames_back(tmp_path):
    """Frames darkened and tinted more and more (as FramePack-F1 drifts): after matching to the first, the last
    frame's colour is within 1 Delta E of the first's instead of about 18."""
    base = demo_clip("I2_0.png", 20, 64, 96, step=1)
    drifted = [np.clip(f * (1 - 0.015 * i) + np.array([0, 0, 1.2 * i]), 0, 255).astype(np.uint8) for i, f in enumerate(base)]
    source = make_video(tmp_path / "drift.mkv", drifted, codec="ffv1", sound=None)
    events = run_all(source, tmp_path / "matched.mkv", PostprocessOptions(color_match="start", format="ffv1"))
    assert isinstance(events[-1], Done) and events[-1].frames == 20
    matched, _ = decoded(tmp_path / "matched.mkv")
    before = [drift(f, drifted[0]) for f in drifted]
    after = [drift(f, matched[0]) for f in matched]
    assert np.array_equal(matched[0], drifted[0])  # the reference itself is left as it was
    assert before[-1] > 15 and after[-1] < 1.0 and max(after) < 1.0, (before[-1], max(after))
    # another reference (a job's start image) is what the frames are pulled to
    run_all(source, tmp_path / "to_start.mkv", PostprocessOptions(color_match="start", format="ffv1"), reference=base[0])
    to_start, _ = decoded(tmp_path / "to_start.mkv")
    assert max(drift(f, base[0]) for f in to_start) < 1.0


def test_colour_match_leaves_local_changes():
    """One transform for the whole frame: a patch that changes colour stays changed relative to the rest."""
    frame = np.full((64, 64, 3), 120, np.uint8)
    patched = frame.copy()
    patched[:16, :16] = (200, 60, 60)
    out = ColourMatch(frame)(patched)
    assert np.abs(out[:16, :16].mean((0, 1)) - out[32:, 32:].mean((0, 1))).max() > 40


# ----------------------------------------------------------------------------------------------- interpolation


@pytest.mark.parametrize("factor", [2, 4])
def test_interpolation_counts_timing_and_original_frames_bit_exact(tmp_path, hdv3, factor):
    frames = demo_clip("I0_0.png", 5)
    source = make_video(tmp_path / "in.mp4", frames)  # with sound
    inputs, _ = decoded(source)
    output = tmp_path / "out.mkv"
    events = run_all(source, output, PostprocessOptions(interpolate=factor, interpolation_model=hdv3, format="ffv1"))
    done = events[-1]
    assert isinstance(done, Done) and done.video_path == output and not done.stopped
    assert done.frames == 5 * factor and done.seconds == pytest.approx(5 / 30)  # duration unchanged
    progress = [e for e in events if isinstance(e, FrameProgress)]
    assert progress[-1].done == progress[-1].total == 5 and "interpolating x" in progress[-1].stage
    out, rate = decoded(output)
    assert rate == 30 * factor and len(out) == 5 * factor
    for i, frame in enumerate(inputs):
        assert np.array_equal(out[i * factor], frame)  # as decoded, not a value changed
    assert all(np.array_equal(out[-1 - k], inputs[-1]) for k in range(factor))  # the last holds its 1/30 s
    for k in range(1, factor):  # made frames lie between their neighbours
        made = out[k].astype(float)
        assert not np.array_equal(out[k], inputs[0]) and not np.array_equal(out[k], inputs[1])
        assert np.abs(made - inputs[0]).mean() < np.abs(inputs[1].astype(float) - inputs[0]).mean()
    assert sound_of(output)[0] == "aac"


def test_a_scene_cut_repeats_the_frame_before_it(tmp_path, hdv3):
    frames = demo_clip("I0_0.png", 3) + demo_clip("I1_0.png", 3)
    source = make_video(tmp_path / "cut.mkv", frames, codec="ffv1", sound=None)
    run_all(source, tmp_path / "out.mkv", PostprocessOptions(interpolate=2, interpolation_model=hdv3, format="ffv1"))
    out, _ = decoded(tmp_path / "out.mkv")
    assert len(out) == 12
    assert np.array_equal(out[5], frames[2]) and np.array_equal(out[4], frames[2])  # across the cut: repeated
    assert np.array_equal(out[6], frames[3])
    assert not np.array_equal(out[1], frames[0]) and not np.array_equal(out[7], frames[3])  # within shots: made


def test_png_frames_keep_the_originals(tmp_path, tiny_rife):
    frames = moving_frames(4, 33, 47)
    source = make_video(tmp_path / "in.mkv", frames, codec="ffv1")
    events = run_all(source, tmp_path / "frames", PostprocessOptions(interpolate=2, interpolation_model=tiny_rife, format="png"))
    assert any(isinstance(e, Status) and e.message == "PNG frames hold no sound" for e in events)
    files = sorted((tmp_path / "frames").iterdir())
    assert len(files) == 8 and all(np.array_equal(np.asarray(Image.open(files[2 * i])), f) for i, f in enumerate(frames))


# ----------------------------------------------------------------------------------------------- upscaling


def test_upscale_then_interpolate(tmp_path, tiny_rife):
    """A x2 SRVGG whose convolutions are zero is nearest-neighbour upscaling: the output is known exactly."""
    torch.save({"params": srvgg_state_dict(scale=2)}, tmp_path / "nearest_x2.pth")
    frames = moving_frames(3, 24, 32)
    source = make_video(tmp_path / "in.mkv", frames, codec="ffv1", sound=None)
    options = PostprocessOptions(upscale=str(tmp_path / "nearest_x2.pth"), interpolate=2, interpolation_model=tiny_rife, format="ffv1")
    events = run_all(source, tmp_path / "out.mkv", options)
    assert events[-1].frames == 6
    out, _ = decoded(tmp_path / "out.mkv")
    assert out[0].shape == (48, 64, 3)
    assert all(np.array_equal(out[2 * i], f.repeat(2, 0).repeat(2, 1)) for i, f in enumerate(frames))
    scaled = PostprocessOptions(upscale=str(tmp_path / "nearest_x2.pth"), scale=1.5, format="ffv1")
    run_all(source, tmp_path / "scaled.mkv", scaled)
    assert decoded(tmp_path / "scaled.mkv")[0][0].shape == (36, 48, 3)


# ----------------------------------------------------------------------------------------------- streaming


class Counted(np.ndarray):
    """A frame whose instances are counted while alive (views and results of numpy operations on it too)."""

    live = peak = 0

    def __array_finalize__(self, obj) -> None:
        if self.ndim == 3:
            Counted.live += 1
            Counted.peak = max(Counted.peak, Counted.live)
            weakref.finalize(self, Counted._gone)

    @staticmethod
    def _gone() -> None:
        Counted.live -= 1


def test_memory_does_not_grow_with_the_video(tmp_path, tiny_rife, monkeypatch):
    """The most frames alive at once, counted as they are decoded, come out of colour matching and come out of the
    network: the same for a 40-frame and a 400-frame video (a pipeline that kept frames would hold hundreds)."""
    reader, steps, to_uint8 = pipeline_module.read_frames, pipeline_module._Steps.__call__, pipeline_module._uint8
    monkeypatch.setattr(pipeline_module, "read_frames", lambda source, facts=None: (f.view(Counted) for f in reader(source, facts)))
    monkeypatch.setattr(pipeline_module._Steps, "__call__", lambda self, frame: steps(self, frame).view(Counted))
    monkeypatch.setattr(pipeline_module, "_uint8", lambda frame: to_uint8(frame).view(Counted))
    options = PostprocessOptions(interpolate=2, interpolation_model=tiny_rife, color_match="start", format="ffv1")
    peaks = []
    for count in (40, 400):
        source = make_video(tmp_path / f"{count}.mkv", moving_frames(count, 32, 32), codec="ffv1", sound=None)
        Counted.live = Counted.peak = 0
        for event in postprocess(source, tmp_path / f"out{count}.mkv", options):
            del event
        assert decoded(tmp_path / f"out{count}.mkv")[0].__len__() == 2 * count
        peaks.append(Counted.peak)
    assert peaks[1] == peaks[0] and peaks[0] <= 12, peaks


def test_a_stop_leaves_nothing_under_the_output_name(tmp_path, tiny_rife):
    source = make_video(tmp_path / "in.mp4", moving_frames(30, 32, 32))
    stop = threading.Event()
    events = []
    for event in postprocess(source, tmp_path / "out.mp4", PostprocessOptions(interpolate=2, interpolation_model=tiny_rife), stop=stop):
        events.append(event)
        if isinstance(event, FrameProgress):
            stop.set()
    done = events[-1]
    assert isinstance(done, Done) and done.stopped and done.video_path is None and done.frames < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]
    run = postprocess(source, tmp_path / "out.mp4", PostprocessOptions())
    next(e for e in run if isinstance(e, FrameProgress))
    run.close()  # the caller walked away
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


# ----------------------------------------------------------------------------------------------- the command


def command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="framepack")
    command_module.add_parsers(parser.add_subparsers(dest="command", required=True))
    return command_module.run(parser.parse_args(["postprocess", *argv]))


def test_command_runs_with_a_progress_bar(tmp_path, tiny_rife, capsys):
    source = make_video(tmp_path / "clip.mp4", moving_frames(6, 32, 32))
    assert command(str(source), "--interpolate", "2", "--interpolation-model", tiny_rife, "--color-match", "start") == 0
    out, err = capsys.readouterr()
    result = tmp_path / "clip.60fps-colour.mp4"
    assert out.strip() == str(result) and result.is_file() and "6/6" in err and "fps" in err
    assert command(str(source), "--output", str(tmp_path / "clip.gif"), "--quiet") == 0  # the suffix says the format
    out, err = capsys.readouterr()
    assert err == "" and decoded(tmp_path / "clip.gif")[0][0].shape == (32, 32, 3)


def test_every_bad_input_is_one_line_and_writes_nothing(tmp_path, hdv3, capsys):
    source = make_video(tmp_path / "clip.mp4", moving_frames(3, 32, 32))
    (tmp_path / "notes.mp4").write_text("not a video")
    with av.open(str(tmp_path / "sound.m4a"), "w") as out:  # sound and no picture
        stream = out.add_stream("aac", rate=44100, layout="stereo")
        chunk = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
        chunk.sample_rate, chunk.pts = 44100, 0
        out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    torch.save(srvgg_state_dict(), tmp_path / "upscaler.pth")
    (tmp_path / "sub").mkdir()
    clip, sub = str(source), str(tmp_path / "sub")
    cases = [
        ([str(tmp_path / "notes.mp4")], "notes.mp4 is not a video this app can read"),
        ([str(tmp_path / "sound.m4a")], "sound.m4a has no video stream"),
        ([str(tmp_path / "missing.mp4")], "input not found"),
        ([sub], "sub is a folder, not a video"),
        ([clip, "--upscale", hdv3], "flownet.pkl is a RIFE frame-interpolation model, not an upscaler"),
        ([clip, "--interpolate", "2", "--interpolation-model", str(tmp_path / "upscaler.pth")],
         "upscaler.pth is a Real-ESRGAN upscaler, not a frame-interpolation model"),
        ([clip, "--interpolate", "3"], "interpolation x3 is not supported"),
        ([clip, "--output", f"{sub}/../clip.mp4"], "the output would overwrite the input"),
        ([clip, "--format", "avi"], "unknown format 'avi'"),
        ([clip, "--output", str(tmp_path / "clip.gif"), "--interpolate", "2"], "GIF plays at most 50 fps"),
        ([clip, "--output", str(tmp_path / "x.mov"), "--format", "mp4"], "H.264 MP4 files end in .mp4"),
        ([clip, "--device", "tpu:0"], "unknown device"),
        ([clip, "--crf", "70"], "crf must be 0 to 63"),
    ]  # fmt: skip
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, message in cases:
        assert command(*argv) == 2, argv
        out, err = capsys.readouterr()
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (argv, err)
        assert "Traceback" not in err and out == ""
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, the input untouched
    assert list((tmp_path / "sub").iterdir()) == []
    assert decoded(source)[0][0].shape == (32, 32, 3)


def test_command_as_a_program_has_no_traceback(tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    result = subprocess.run(
        [sys.executable, "-m", "framepack", "postprocess", str(tmp_path / "notes.mp4")],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr == "error: notes.mp4 is not a video this app can read: not a video file, or a damaged one\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mp4"]


def test_device_choice(monkeypatch):
    assert pipeline_module._device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PostprocessError, match="no CUDA GPU"):
        pipeline_module._device("cuda")
