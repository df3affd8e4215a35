"""Blending, the frame assembler and MP4 segments."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from safetensors import safe_open

from framepack.engine.frames import (
    FrameAssembler,
    blend,
    latent_preview,
    to_uint8_frames,
)
from framepack.jobs.checkpoint import Checkpoint
from framepack.media.mp4 import (
    BackgroundVideoWriter,
    SegmentedVideo,
    concat_mp4,
    encode_mp4,
)
from framepack.media.reading import probe, read_frames


def clip(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 1, -1, 1, 1)


def test_blend_crossfades_linearly_over_the_overlap():
    out = blend(clip(0, 0, 1, 1, 1), clip(3, 3, 3, 9), overlap=3)
    # weights 1, 0.5, 0 on the earlier clip's last three frames
    assert out.flatten().tolist() == [0, 0, 1, 2, 3, 9]
    assert blend(clip(1), clip(2), 0).flatten().tolist() == [1, 2]


def full_history(clips: list[torch.Tensor], overlap: int, prepend: bool) -> torch.Tensor:
    """Reference: FramePack's way, blending every clip into the whole float history."""
    history = clips[0]
    for c in clips[1:]:
        history = blend(c, history, overlap) if prepend else blend(history, c, overlap)
    return history


@pytest.mark.parametrize("prepend", [True, False])
def test_assembler_keeps_only_open_frames_and_matches_full_history(prepend):
    overlap = 5
    rng = torch.Generator().manual_seed(0)
    clips = [torch.rand(1, 3, n, 4, 6, generator=rng) * 2 - 1 for n in (5, 13, 13, 14)]
    assembler = FrameAssembler(overlap, prepend)
    finals = []
    for c in clips:
        finals.append(assembler.add(c))
        assert assembler.open.shape[2] <= overlap
    parts = [assembler.open_frames(), *reversed(finals)] if prepend else [*finals, assembler.open_frames()]
    frames = np.concatenate([p for p in parts if len(p)])
    expected = to_uint8_frames(full_history(clips, overlap, prepend))
    np.testing.assert_array_equal(frames, expected)
    assert assembler.num_frames == len(expected) == 5 + 3 * 8 + 1


def test_to_uint8_truncates_like_framepack():
    pixels = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 6, 1, 1).expand(1, 3, 6, 1, 1)
    assert to_uint8_frames(pixels)[:, 0, 0, 0].tolist() == [0, 0, 127, 254, 255, 255]


def test_latent_preview_shape():
    preview = latent_preview(torch.randn(1, 16, 3, 5, 7))
    assert preview.shape == (5, 21, 3) and preview.dtype == np.uint8


def gradient_frames(count: int, start: int = 0, height: int = 32, width: int = 48) -> np.ndarray:
    """Smooth frames whose brightness encodes their index, so order survives lossy coding."""
    base = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    return np.stack([np.clip(base + 8 * (start + i), 0, 255).repeat(height, 0).repeat(3, 2) for i in range(count)]).astype(np.uint8)


def brightness(frames: np.ndarray) -> np.ndarray:
    return (frames.astype(np.float32).mean(axis=(1, 2, 3)) - 30) / 8


def test_encode_mp4_is_h264_yuv420p_30fps(tmp_path):
    path = encode_mp4(gradient_frames(17), tmp_path / "a.mp4", crf=16, metadata={"comment": "hello"})
    info = probe(path)
    assert (info.frames, info.fps, info.codec, info.pix_fmt, info.width, info.height) == (17, 30.0, "h264", "yuv420p", 48, 32)
    assert info.metadata.get("comment") == "hello"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_encode_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        encode_mp4(np.zeros((2, 31, 48, 3), np.uint8), tmp_path / "odd.mp4")


def test_concat_copies_packets_in_order(tmp_path):
    a = encode_mp4(gradient_frames(10, 0), tmp_path / "a.mp4")
    b = encode_mp4(gradient_frames(7, 10), tmp_path / "b.mp4")
    joined = concat_mp4([a, b], tmp_path / "ab.mp4")
    frames = read_frames(joined)
    assert len(frames) == 17
    np.testing.assert_allclose(brightness(frames), np.arange(17), atol=0.3)
    assert probe(joined).fps == 30.0


@pytest.mark.parametrize("prepend", [True, False])
def test_segmented_video_grows_without_reencoding(tmp_path, prepend):
    video = SegmentedVideo(tmp_path / "parts", prepend=prepend, crf=16)
    # Final chunks arrive in generation order: for prepend that is the end of the video first.
    chunks = [gradient_frames(6, 14), gradient_frames(8, 6)] if prepend else [gradient_frames(8, 0), gradient_frames(6, 8)]
    edge = gradient_frames(6, 0) if prepend else gradient_frames(6, 14)
    out = tmp_path / "video.mp4"
    video.add_final(chunks[0])
    video.write(out, edge if not prepend else gradient_frames(8, 6))
    assert probe(out).frames == 14
    video.add_final(chunks[1])
    video.write(out, edge)
    frames = read_frames(out)
    assert len(frames) == 20
    np.testing.assert_allclose(brightness(frames), np.arange(20), atol=0.3)
    segments = sorted(p.name for p in (tmp_path / "parts").iterdir())
    assert segments == ["00001.mp4", "00002.mp4", "edge.mp4"]  # each final frame encoded once
    video.cleanup()
    assert not (tmp_path / "parts").exists()


def test_background_writer_runs_the_follow_up_on_its_thread_after_the_update(tmp_path):
    video = SegmentedVideo(tmp_path / "parts", prepend=False)
    writer = BackgroundVideoWriter(video)
    seen = []

    def then(segments):
        seen.append((threading.current_thread().name, [p.name for p in segments], (tmp_path / "video.mp4").is_file()))

    writer.submit(gradient_frames(4, 0), gradient_frames(2, 4), tmp_path / "video.mp4", "first", then)
    writer.submit(np.zeros((0, 32, 48, 3), np.uint8), gradient_frames(2, 4), tmp_path / "video.mp4", "second")
    done = writer.finished(wait=True)
    writer.close()
    assert done == ["first", "second"]
    assert seen == [("framepack-video-writer", ["00001.mp4"], True)]


def test_a_failed_update_stops_the_writer_without_a_gap_and_nothing_waits_forever(tmp_path):
    from safetensors import SafetensorError

    from framepack.media.mp4 import VideoWriterError

    video = SegmentedVideo(tmp_path / "parts", prepend=False)
    writer = BackgroundVideoWriter(video)
    saved = []

    def checkpoint(segments):  # the second checkpoint finds the disk full, in safetensors' own words
        if len(segments) == 2:
            raise SafetensorError("No space left on device (os error 28)")
        saved.append([p.name for p in segments])

    for index, tag in enumerate(("first", "second", "third")):
        writer.submit(gradient_frames(4, 4 * index), gradient_frames(2, 4), tmp_path / "video.mp4", tag, checkpoint)
    assert writer.finished(wait=True) == ["first"]  # returns: the failure does not leave it waiting
    assert isinstance(writer.error, VideoWriterError) and "the disk is full" in str(writer.error)
    assert isinstance(writer.error.__cause__, SafetensorError)
    assert writer.finished(wait=True) == []
    writer.close()
    # The third update was not attempted: no segment after the failed one, no checkpoint naming it.
    assert saved == [["00001.mp4"]]
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["00001.mp4", "00002.mp4", "edge.mp4"]


def test_an_update_submitted_after_the_writer_ended_still_gets_an_outcome(tmp_path):
    writer = BackgroundVideoWriter(SegmentedVideo(tmp_path / "parts", prepend=False))
    writer.close()
    writer.submit(gradient_frames(4, 0), gradient_frames(2, 4), tmp_path / "video.mp4", "late")
    assert writer.finished(wait=True) == [] and "the video writer stopped" in str(writer.error.__cause__)


def test_checkpoint_keeps_float16_frames_in_half_the_bytes_and_others_exactly(tmp_path):
    def checkpoint(frames):
        return Checkpoint(job_id="job", settings={}, sections_done=1, rng_state=torch.zeros(4, dtype=torch.uint8),
                          open_frames=frames, final_frames=0, segments=[], images={"start_image": torch.zeros(2, 2, 3)})  # fmt: skip

    from_half_vae = torch.randn(1, 3, 5, 8, 8).half().float()
    full = torch.randn(1, 3, 5, 8, 8)
    for frames, stored in ((from_half_vae, "F16"), (full, "F32")):
        path = checkpoint(frames).save_after(tmp_path / "c.safetensors", [tmp_path / "00001.mp4"])
        with safe_open(str(path), "pt") as f:
            assert f.get_slice("open_frames").get_dtype() == stored
        loaded = Checkpoint.load(path)
        assert loaded.open_frames.dtype == torch.float32 and torch.equal(loaded.open_frames, frames)
        assert loaded.segments == ["00001.mp4"]
