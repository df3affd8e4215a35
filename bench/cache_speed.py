"""Sampling speed with each step cache: steps per second and how many transformer calls ran the blocks.

    .venv/bin/python bench/cache_speed.py --models ../shared/fixtures/tiny-framepack/models
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framepack import Done, Error, ModelSource, Progress, SectionDone, Settings, generate, load_models  # noqa: E402

DEFAULT_MODELS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tiny-framepack" / "models"
IMAGE = DEFAULT_MODELS.parent / "cases" / "v1_original" / "input.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--variant", choices=("original", "f1"), default="original")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--seconds", type=float, default=2.4)
    args = parser.parse_args()

    models = load_models(args.variant, ModelSource(args.models), device="cpu", dtype="float32")
    print(f"{args.variant} at {args.width}x{args.height}, {args.steps} steps/section, models: {args.models.name}")
    print(f"{'cache':>22} {'steps/s':>8} {'blocks run':>11}")
    for label, method, threshold in (("none", None, None), ("teacache 0.15", "teacache", 0.15),
                                     ("teacache 0.25", "teacache", 0.25), ("magcache 0.1", "magcache", 0.1),
                                     ("magcache 0.15", "magcache", 0.15), ("first_block 0.05", "first_block", 0.05)):  # fmt: skip
        settings = Settings(variant=args.variant, prompt="a girl dances", total_second_length=args.seconds,
                            steps=args.steps, height=args.height, width=args.width, use_teacache=method is not None,
                            cache_method=method or "teacache", cache_threshold=threshold)  # fmt: skip
        sampling, last, steps, ran, calls = 0.0, None, 0, 0, 0
        with tempfile.TemporaryDirectory() as tmp:
            for event in generate(models, settings, IMAGE, Path(tmp), previews=False):
                now = time.perf_counter()
                if isinstance(event, Progress):
                    if event.step > 1:  # time between steps of one section: sampling only
                        sampling += now - last
                        steps += 1
                    last = now
                elif isinstance(event, SectionDone) and event.cache_counts:
                    ran += event.cache_counts["positive"][0]
                    calls += sum(event.cache_counts["positive"])
                elif isinstance(event, Error):
                    raise RuntimeError(event.message)
                elif isinstance(event, Done):
                    break
        blocks = f"{ran}/{calls}" if calls else "-"
        print(f"{label:>22} {steps / sampling:>8.2f} {blocks:>11}", flush=True)


if __name__ == "__main__":
    main()
