"""Extending any video: containers, codecs, sizes, frame rates and sound; the input's frames first; flat memory;
one clear line for every bad input."""

from __future__ import annotations

import json
import threading
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import IMAGE, make_clip, needs_shared
from safetensors.torch import load_file

from framepack.engine import add_seconds, extend_video, generate, resume_job
from framepack.events import Done, Error, SectionDone
from framepack.media.images import resize_and_center_crop, target_size
from framepack.media.reading import VideoInputError, probe, read_frames, read_video
from framepack.settings import Settings

pytestmark = needs_shared
ADD = dict(total_second_length=0.8, latent_window_size=3, steps=2, resolution=128, prompt="it goes on")  # 2 sections


def at_30_fps(path: Path, resolution: int = 128) -> np.ndarray:
    """The video's frames as the output should begin: each input frame shown for as long as it lasts, at 30 fps,
    resized and cropped to its bucket (written out here independently of the app's reader)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [(frame.time, frame.to_ndarray(format="rgb24")) for frame in container.decode(stream)]
        rate = float(stream.average_rate)
    start, duration = decoded[0][0], decoded[-1][0] - decoded[0][0] + 1 / rate
    count = round(duration * 30)
    times = np.array([t - start for t, _ in decoded])
    # The last frame that began by k/30 s (a quarter frame's slack for timestamps rounded by the container).
    picks = [int(np.searchsorted(times, (k + 0.25) / 30, side="right") - 1) for k in range(count)]
    height, width = target_size(decoded[0][1], resolution)
    return np.stack([resize_and_center_crop(decoded[i][1], width, height) for i in picks])


@pytest.mark.parametrize(
    "variant, name, frames, fps, codec, fmt, audio",
    [
        ("f1", "odd_24fps.mp4", 50, 24, "libx264", None, True),  # odd size, 24 fps, with sound
        ("original", "clip.webm", 40, 30, "libvpx-vp9", "webm", False),  # another container and codec
        ("f1", "clip.avi", 45, 25, "mjpeg", "avi", False),
    ],
)
def test_the_output_is_the_input_then_new_frames(tiny_models, tmp_path, variant, name, frames, fps, codec, fmt, audio):
    source = make_clip(tmp_path / name, frames, fps, (90, 70), codec, fmt, audio)
    expected = at_30_fps(source)
    settings = Settings(variant=variant, **ADD)
    events = list(extend_video(tiny_models(variant), settings, source, tmp_path / "out", job_id="ext", previews=False))
    done = events[-1]
    assert isinstance(done, Done), done
    output = read_frames(tmp_path / "out" / "ext.mp4")
    added = 4 * settings.latent_window_size * settings.num_sections
    assert len(output) == done.frames == len(expected) + added
    # The input's frames come first, as they were (encoded again); F1 cross-fades only the seam's overlap.
    unchanged = len(expected) - (settings.frames_per_section if variant == "f1" else 0)
    assert np.abs(output[:unchanged].astype(float) - expected[:unchanged]).mean() < 3
    assert np.abs(output[unchanged:].astype(float) - output[:unchanged].mean()).mean() > 1  # something new follows
    messages = [e.message for e in events if hasattr(e, "message")]
    if fps != 30:
        assert f"{name} runs at {fps:g} fps: its frames are shown at 30 fps, each for as long as it lasts" in messages
    manifest = json.loads((tmp_path / "out" / "ext.json").read_text())
    record = manifest["origin"]["extended_video"]
    assert (record["name"], record["fps"], record["frames"], record["audio"]) == (name, fps, len(expected), audio)
    assert len(record["sha256"]) == 64 and manifest["state"] == "done"
    with av.open(str(tmp_path / "out" / "ext.mp4")) as container:
        streams = {s.type: s for s in container.streams}
        if audio:  # the input's sound, for its part
            sound = streams["audio"]
            assert abs(float(sound.duration * sound.time_base) - frames / fps) < 0.1
        else:
            assert "audio" not in streams
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ext.json", "ext.latents.safetensors", "ext.mp4"]


def test_memory_does_not_grow_with_the_inputs_length(tmp_path):
    """The reader keeps only the frames the context needs; the rest pass through one at a time."""
    short, long = make_clip(tmp_path / "short.mp4", 300, 30, (64, 48)), make_clip(tmp_path / "long.mp4", 3000, 30, (64, 48))
    peaks = []
    for path in (short, long):
        passed = []
        tracemalloc.start()
        found = read_video(path, lambda image: target_size(image, 128), 73, lambda frame: passed.append(frame.shape))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert found.frames == len(passed) + len(found.tail) and len(found.tail) == 73
    assert peaks[1] < 1.3 * peaks[0], peaks  # ten times the frames, the same memory


def test_a_long_input_extends(tiny_models, tmp_path):
    source = make_clip(tmp_path / "long.mp4", 2000, 30, (48, 32))
    done = list(extend_video(tiny_models("f1"), Settings(variant="f1", **ADD), source, tmp_path, job_id="long", previews=False))[-1]
    assert isinstance(done, Done) and done.frames == 2000 + 24
    assert probe(tmp_path / "long.mp4").frames == 2024


def test_bad_inputs_get_one_clear_line(tiny_models, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    sound_only = tmp_path / "song.m4a"
    with av.open(str(sound_only), "w") as container:
        stream = container.add_stream("aac", rate=44100, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 44100, 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    tiny = make_clip(tmp_path / "tiny.mp4", 3, 30, (64, 48))
    short = make_clip(tmp_path / "short.mp4", 20, 30, (64, 48))
    cases = [
        ("original", text, "notes.mp4 is not a video this app can read"),
        ("original", sound_only, "song.m4a has no video stream"),
        ("original", tiny, "tiny.mp4 has 3 frames at 30 fps; extending it needs at least 5 (two latent frames)"),
        ("f1", short, "short.mp4 has 20 frames at 30 fps; extending it needs at least 33 (a section's overlap)"),
        ("original", tmp_path / "gone.mp4", "video file not found: gone.mp4"),
    ]
    for variant, path, message in cases:
        settings = Settings(variant=variant, **{**ADD, "latent_window_size": 9})
        last = list(extend_video(tiny_models(variant), settings, path, tmp_path / "out", job_id="bad"))[-1]
        assert isinstance(last, Error) and message in last.message and "\n" not in last.message, (path.name, last)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # nothing left behind
    with pytest.raises(VideoInputError, match="has no video stream"):
        read_video(sound_only, lambda image: (16, 16), 1, lambda frame: None)


def test_extending_this_apps_own_f1_video_from_its_mp4(tiny_models, tmp_path):
    models = tiny_models("f1")
    settings = Settings(variant="f1", total_second_length=1.6, latent_window_size=3, steps=2, height=48, width=80, prompt="x")
    assert isinstance(list(generate(models, settings, IMAGE, tmp_path / "a", job_id="own", previews=False))[-1], Done)
    assert isinstance(list(generate(models, settings, IMAGE, tmp_path / "b", job_id="own", previews=False))[-1], Done)
    by_latents = list(add_seconds(models, tmp_path / "a" / "own.json", 0.8, job_id="longer", previews=False))[-1]
    added = Settings(variant="f1", total_second_length=0.8, latent_window_size=3, steps=2, height=48, width=80, prompt="x")
    by_video = list(extend_video(models, added, tmp_path / "b" / "own.mp4", tmp_path / "c", job_id="own", previews=False))[-1]
    assert isinstance(by_latents, Done) and isinstance(by_video, Done)
    assert by_video.frames == by_latents.frames == probe(tmp_path / "c" / "own.mp4").frames
    record = json.loads((tmp_path / "c" / "own.json").read_text())["origin"]["extended_video"]
    tail = min(4 * 19 - 3, settings.num_frames)
    assert record["past"] and record["frames_encoded"] == tail  # the history is encoded from the decoded tail
    latents = load_file(tmp_path / "c" / "own.latents.safetensors")["latents"]
    assert latents.shape[2] == (tail + 3) // 4 + added.num_sections * 3
    refused = list(add_seconds(models, tmp_path / "c" / "own.json", 0.8))[-1]
    assert isinstance(refused, Error) and "continues another video: extend it as any video" in refused.message


def test_a_stopped_extension_resumes_to_the_whole_one(tiny_models, tmp_path):
    source = make_clip(tmp_path / "in.mp4", 40, 30, (64, 48), audio=True)
    models = tiny_models("original")
    settings = Settings(variant="original", **{**ADD, "total_second_length": 1.6})  # 4 sections
    stop = threading.Event()
    for event in extend_video(models, settings, source, tmp_path / "s", job_id="job", stop=stop, previews=False):
        if isinstance(event, SectionDone):
            stop.set()
    assert isinstance(event, Done) and event.stopped and probe(tmp_path / "s" / "job.mp4").frames > 40
    done = list(resume_job(models, tmp_path / "s" / "job.json", previews=False))[-1]
    whole = list(extend_video(models, settings, source, tmp_path / "w", job_id="job", previews=False))[-1]
    assert isinstance(done, Done) and not done.stopped and done.frames == whole.frames == 40 + 48
    a, b = load_file(tmp_path / "s" / "job.latents.safetensors")["latents"], load_file(whole.latents_path)["latents"]
    assert torch.equal(a, b)
    with av.open(str(tmp_path / "s" / "job.mp4")) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]


def test_a_small_video_is_extended_at_its_own_size_not_scaled_up(tmp_path):
    """The bucket of an extension is capped by the video's own size (a 160x120 clip is not made 640 wide); a large
    video keeps the resolution asked for, and an explicit size wins."""
    from framepack.controls import JobInputs
    from framepack.kinds import inputs_spec
    from framepack.media.images import resolution_for

    assert resolution_for(120, 160, 640) == 128 and resolution_for(1080, 1920, 640) == 640
    assert resolution_for(480, 640, 640) == 544 and resolution_for(480, 640, 320) == 320
    small = make_clip(tmp_path / "small.mp4", 40, 30, (160, 120))
    spec = inputs_spec("extend", Settings(variant="f1", total_second_length=1.2), JobInputs(None), small)
    assert spec.settings["resolution"] == 128
    sized = inputs_spec("extend", Settings(variant="f1", total_second_length=1.2, height=64, width=96), JobInputs(None), small)
    assert sized.settings["resolution"] == 640 and (sized.settings["height"], sized.settings["width"]) == (64, 96)
