"""One job's measured GPU and system memory against the memory plan's estimates, phase by phase.

The plan (`python -m framepack check-memory`) is computed from the model configs; this checks it on a real
machine. Run it with the real weights on a CUDA GPU (the plan's GPU figures are only measured there); on the
CPU it measures system memory alone, which is enough to try it with the tiny test models:

    .venv/bin/python bench/plan_vs_measured.py --height 544 --width 704 [--fp8] [--preserve 6] [--models DIR]
    .venv/bin/python bench/plan_vs_measured.py --models ../shared/fixtures/tiny-framepack/models --height 128 --width 160

GB = 10^9 bytes. "allocated" is what tensors held at peak; "reserved" adds the caching allocator's spare
blocks, which is what other programs cannot use.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from long_video import IMAGE, peak_rss_mb, reset_peak_rss  # noqa: E402

from framepack import Done, Error, ModelSource, Progress, SectionDone, Settings, Status, generate, load_models  # noqa: E402
from framepack.memory.sizes import GB  # noqa: E402
from framepack.memory.planning import check_before_loading  # noqa: E402

# The engine's phases, told apart by its events; "encoding" covers the plan's text and image encoding.
PLAN_PHASES = {
    "encoding": ("text encoding", "image encoding"),
    "sampling": ("sampling",),
    "decoding": ("decoding",),
}


def higher(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def phase_of(event: object, current: str | None) -> str | None:
    if isinstance(event, Status):
        if event.message.startswith("Encoding"):
            return "encoding"
        if event.message.startswith("Decoding"):
            return "decoding"
    if isinstance(event, Progress):
        return "sampling"
    return current


class PeakMeter:
    """Peak GPU memory (allocated, reserved) and peak RSS of this process since the last `take`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.take()

    def take(self) -> tuple[float | None, float | None, float]:
        gpu = (None, None)
        if self.cuda:
            torch.cuda.synchronize(self.device)
            gpu = (torch.cuda.max_memory_allocated(self.device) / GB, torch.cuda.max_memory_reserved(self.device) / GB)
            torch.cuda.reset_peak_memory_stats(self.device)
        ram = peak_rss_mb() * 2**20 / GB
        reset_peak_rss()
        return (*gpu, ram)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="local model root (default: the hub cache ./hf_download)")
    parser.add_argument("--variant", choices=("original", "f1"), default="original")
    parser.add_argument("--height", type=int, default=544)
    parser.add_argument("--width", type=int, default=704)
    parser.add_argument("--seconds", type=float, default=2.4, help="video length (default: two sections)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--preserve", type=float, default=6.0, help="GPU memory to preserve in GB")
    parser.add_argument("--fp8", action="store_true")
    args = parser.parse_args()

    settings = Settings(
        variant=args.variant, prompt="a girl dances", total_second_length=args.seconds, steps=args.steps,
        height=args.height, width=args.width, gpu_memory_preservation=args.preserve,
    )  # fmt: skip
    plan = check_before_loading(settings, fp8=args.fp8, models_dir=args.models)
    print(plan.report(), end="\n\n")
    models = load_models(args.variant, ModelSource(args.models), plan=plan)
    meter = PeakMeter(models.device)
    measured: dict[str, list[float | None]] = {}  # phase: [allocated, reserved, RSS] peaks in GB
    current = None
    with tempfile.TemporaryDirectory() as tmp:
        for event in generate(models, settings, IMAGE, Path(tmp), previews=False):
            if isinstance(event, Error):
                print(f"error: {event.message}", file=sys.stderr)
                return 1
            phase = phase_of(event, current)
            if phase != current or isinstance(event, (SectionDone, Done)):
                peaks = meter.take()
                if current is not None:  # a phase's peak is the highest over all its sections
                    before = measured.get(current, (None, None, None))
                    measured[current] = [higher(a, b) for a, b in zip(before, peaks)]
                current = phase

    print(f"{'phase':>9} {'plan GPU':>9} {'allocated':>10} {'reserved':>9} {'plan RAM':>9} {'peak RSS':>9}")
    for phase, plan_names in PLAN_PHASES.items():
        planned = [plan.phase(name) for name in plan_names]
        allocated, reserved, rss = measured.get(phase, (None, None, None))
        cells = [max(p.gpu_bytes for p in planned) / GB, allocated, reserved, max(p.ram_bytes for p in planned) / GB, rss]
        print(f"{phase:>9} " + " ".join(f"{c:>9.2f}" if c is not None else f"{'-':>9}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
