"""The memory plan of the real 13B model in each mode, at every 640 bucket: estimated peak GPU and RAM.

    .venv/bin/python bench/memory_plan.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framepack.media.images import BUCKETS_640  # noqa: E402
from framepack.memory.sizes import GB  # noqa: E402
from framepack.memory.planning import plan_memory  # noqa: E402

CASES = (  # (label, free GPU GB, preserve GB, fp8)
    ("low, 6 GB free", 6, 6, False),
    ("low, 6 GB free, fp8", 6, 6, True),
    ("low, 12 GB free", 12, 6, False),
    ("low, 24 GB free", 24, 6, False),
    ("high, 80 GB free", 80, 6, False),
)


def main() -> None:
    print("Estimated peaks, GB = 10^9 bytes; window 9; 128 GB of RAM free. Each cell: peak GPU / peak RAM")
    header = f"{'bucket HxW':>11} " + " ".join(f"{label:>22}" for label, *_ in CASES)
    print(header)
    for height, width in BUCKETS_640:
        cells = []
        for _, vram, preserve, fp8 in CASES:
            plan = plan_memory(vram * GB, 128 * GB, height=height, width=width, preserve_gb=preserve, fp8=fp8)
            mark = "" if plan.fits else " !"
            cells.append(f"{plan.peak_gpu / GB:.1f} / {plan.peak_ram / GB:.1f}{mark}")
        print(f"{height:>5}x{width:<5} " + " ".join(f"{c:>22}" for c in cells))
    print("! = does not fit")


if __name__ == "__main__":
    main()
