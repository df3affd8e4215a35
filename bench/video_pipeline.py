"""The video side of each section at a real size, for growing video lengths: ours against FramePack's way.

Per section FramePack blends the new clip into a float32 history of every frame so far and re-encodes the
whole MP4. Ours keeps only the frames a later section can still blend, encodes each final frame once on a
background thread and joins the encoded segments. This feeds both the same decoded clips (random pixels of
the real shape: 2 windows of latents at 544x704 give 69 frames) and prints time and peak RSS per section.

    .venv/bin/python bench/video_pipeline.py --seconds 5 30 60 120 --framepack-seconds 5 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from long_video import peak_rss_mb, reset_peak_rss  # noqa: E402

from framepack.settings import Settings  # noqa: E402
from framepack.media.mp4 import BackgroundVideoWriter, SegmentedVideo, encode_mp4  # noqa: E402
from framepack.engine.frames import FrameAssembler, blend, to_uint8_frames  # noqa: E402


def clips(settings: Settings, height: int, width: int):
    """Decoded clips as the engine gets them (F1): start + window, then 2 windows per section."""
    w = settings.latent_window_size
    g = torch.Generator().manual_seed(0)
    for index in range(settings.num_sections):
        latents = (w + 1) if index == 0 else 2 * w
        yield torch.rand(1, 3, 4 * latents - 3, height, width, generator=g) * 2 - 1


def ours(settings: Settings, height: int, width: int, out: Path) -> list[tuple[float, float]]:
    assembler = FrameAssembler(settings.frames_per_section, prepend=False)
    writer = BackgroundVideoWriter(SegmentedVideo(out / "parts", prepend=False))
    results = []
    for clip in clips(settings, height, width):
        reset_peak_rss()
        started = time.perf_counter()
        writer.finished(wait=True)  # a section's update must be on disk before the next one is queued
        writer.submit(assembler.add(clip), assembler.open_frames(), out / "video.mp4", None)
        results.append((time.perf_counter() - started, peak_rss_mb()))
    writer.finished(wait=True)
    writer.close()
    return results


def framepack_way(settings: Settings, height: int, width: int, out: Path) -> list[tuple[float, float]]:
    history, results = None, []
    for clip in clips(settings, height, width):
        reset_peak_rss()
        started = time.perf_counter()
        history = clip if history is None else blend(history, clip, settings.frames_per_section)
        encode_mp4(to_uint8_frames(history), out / "video.mp4", crf=settings.mp4_crf)
        results.append((time.perf_counter() - started, peak_rss_mb()))
    return results


def report(label: str, seconds: float, results: list[tuple[float, float]]) -> None:
    times = [t for t, _ in results]
    print(f"{label:>10} {seconds:>6g}s {len(results):>8} {times[0]:>8.2f} {statistics.median(times):>9.2f} "
          f"{times[-1]:>7.2f} {max(r for _, r in results):>12.0f}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[5, 30, 60, 120])
    parser.add_argument("--framepack-seconds", type=float, nargs="*", default=[5, 30])
    parser.add_argument("--height", type=int, default=544)
    parser.add_argument("--width", type=int, default=704)
    args = parser.parse_args()
    print(f"video side of each section at {args.width}x{args.height}, window 9, CRF 16")
    print(f"{'':>10} {'video':>7} {'sections':>8} {'first s':>8} {'median s':>9} {'last s':>7} {'peak RSS MB':>12}")
    for seconds in args.seconds:
        with tempfile.TemporaryDirectory() as tmp:
            report("ours", seconds, ours(Settings(total_second_length=seconds), args.height, args.width, Path(tmp)))
    for seconds in args.framepack_seconds:
        with tempfile.TemporaryDirectory() as tmp:
            results = framepack_way(Settings(total_second_length=seconds), args.height, args.width, Path(tmp))
            report("framepack", seconds, results)


if __name__ == "__main__":
    main()
