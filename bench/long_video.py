"""Per-section cost of long videos: wall time and peak RSS of each section for several video lengths.

FramePack's promise is a cost per section that does not grow with the video. This runs the engine on a
model set (the tiny test models by default) at a realistic size and prints, for each length, the time and
peak resident memory of the first, middle and last sections.

    .venv/bin/python bench/long_video.py --models ../shared/fixtures/tiny-framepack/models --seconds 5 30 60 120
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framepack import Done, Error, ModelSource, Progress, Settings, generate, load_models  # noqa: E402

DEFAULT_MODELS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tiny-framepack" / "models"
IMAGE = DEFAULT_MODELS.parent / "cases" / "v1_original" / "input.png"


def reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process.
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run(models, settings: Settings, output_dir: Path) -> list[tuple[float, float]]:
    """(seconds, peak RSS MB) of every section: from its first step to the next section's first step."""
    sections: list[tuple[float, float]] = []
    started = None
    for event in generate(models, settings, IMAGE, output_dir, previews=True):
        if isinstance(event, Progress) and event.step == 1:
            now = time.perf_counter()
            if started is not None:
                sections.append((now - started, peak_rss_mb()))
            reset_peak_rss()
            started = now
        elif isinstance(event, Error):
            raise RuntimeError(event.message)
        elif isinstance(event, Done):
            sections.append((time.perf_counter() - started, peak_rss_mb()))
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--variant", choices=("original", "f1"), default="f1")
    parser.add_argument("--seconds", type=float, nargs="+", default=[5, 30, 60, 120])
    parser.add_argument("--height", type=int, default=544)
    parser.add_argument("--width", type=int, default=704)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    models = load_models(args.variant, ModelSource(args.models), device="cpu", dtype="float32")
    print(f"{args.variant} at {args.width}x{args.height}, {args.steps} steps, models: {args.models.name}")
    print(f"{'video':>7} {'sections':>8} {'first s':>8} {'median s':>9} {'last s':>7} {'peak RSS MB':>12} {'last RSS MB':>12}")
    for seconds in args.seconds:
        settings = Settings(variant=args.variant, prompt="a girl dances", total_second_length=seconds, steps=args.steps,
                            height=args.height, width=args.width, use_teacache=False)  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            sections = run(models, settings, Path(tmp))
        times = [t for t, _ in sections]
        rss = [r for _, r in sections]
        print(
            f"{seconds:>6g}s {len(sections):>8} {times[0]:>8.2f} {statistics.median(times):>9.2f} {times[-1]:>7.2f} "
            f"{max(rss):>12.0f} {rss[-1]:>12.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
