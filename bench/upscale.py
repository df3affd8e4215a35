"""Upscaler figures: frames per second and peak memory per model at 640- and 1080-line frames, and (--seams) how
far a tiled frame is from the untiled one at each tile overlap.

    .venv/bin/python bench/upscale.py --model RealESRGAN_x4plus --model realesr-animevideov3
    .venv/bin/python bench/upscale.py --model RealESRGAN_x4plus --seams --image frame.png --tile 64

Models are files or known names (fetched into hf_download/postprocess/ once). On CUDA the network runs in fp16
with the tile `load_upscaler` picks from free memory, and again with the tile it would pick on a 6 GB card,
under a cap of 6 GB (`torch.cuda.set_per_process_memory_fraction`), beside the memory plan's `working_bytes`.
--seams runs in float32 (TF32 off on CUDA) and prints, per overlap, the largest difference to the untiled frame
and how many uint8 values differ; those are the figures behind `RRDB_OVERLAP`. Prints figures, checks nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framepack.postprocess.upscale import Upscaler, load_upscaler, tile_for_budget
from framepack.postprocess.weights import resolve_model

GB = 1 << 30
SIZES = {640: (640, 1136), 1080: (1080, 1920)}  # 16:9 frames of that many lines


def _frame(height: int, width: int, image: Path | None, device: torch.device) -> torch.Tensor:
    if image is None:  # smooth content with some detail, the same every run
        y, x = torch.meshgrid(torch.linspace(0, 6, height), torch.linspace(0, 9, width), indexing="ij")
        frame = torch.stack([(y.sin() + 1) / 2, (x.cos() + 1) / 2, ((x * y).sin() + 1) / 2])[None]
    else:
        pixels = Image.open(image).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        frame = torch.from_numpy(np.asarray(pixels).copy()).permute(2, 0, 1)[None].float() / 255
    return frame.to(device)


def _timed(upscaler: Upscaler, frame: torch.Tensor, frames: int) -> tuple[float, int | None]:
    """Frames per second over `frames` calls after a warm-up, and the device's peak bytes (CUDA only)."""
    cuda = upscaler.device.type == "cuda"
    upscaler(frame)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(frames):
        upscaler(frame)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return frames / seconds, torch.cuda.max_memory_allocated() if cuda else None


def speed(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    for name in args.model:
        path = resolve_model(name, "upscaler")
        for lines in args.lines:
            height, width = SIZES[lines]
            frame = _frame(height, width, args.image, device)
            upscaler = load_upscaler(path, device)
            fps, peak = _timed(upscaler, frame, args.frames)
            row = {"model": upscaler.name, "lines": lines, "dtype": str(upscaler.dtype), "tile": upscaler.tile,
                   "fps": round(fps, 3), "weights_mb": round(upscaler.weight_bytes() / 2**20, 1),
                   "plan_tile_mb": round(upscaler.working_bytes(height, width) / 2**20, 1),
                   "peak_mb": None if peak is None else round(peak / 2**20, 1)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            if device.type == "cuda":
                rows.append(_six_gb(upscaler, frame, args.frames, lines))
            del upscaler
            torch.cuda.empty_cache() if device.type == "cuda" else None
    return rows


def _six_gb(upscaler: Upscaler, frame: torch.Tensor, frames: int, lines: int) -> dict:
    """The same frame with the tile a 6 GB card would get, under a 6 GB cap: it must fit."""
    _, total = torch.cuda.mem_get_info(upscaler.device)
    context = 600 << 20  # what a CUDA context and the display take on such a card, roughly
    budget = int((6 * GB - context - upscaler.weight_bytes()) * 0.6)
    upscaler.tile = tile_for_budget(upscaler.spec, budget, upscaler.dtype, upscaler.overlap)
    torch.cuda.set_per_process_memory_fraction((6 * GB - context) / total, upscaler.device)
    try:
        fps, peak = _timed(upscaler, frame, frames)
        note = "fits"
    except torch.OutOfMemoryError:
        fps, peak, note = 0.0, None, "out of memory"
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, upscaler.device)
    height, width = frame.shape[-2:]
    row = {"model": upscaler.name, "lines": lines, "case": "6 GB card", "tile": upscaler.tile, "fps": round(fps, 3),
           "plan_tile_mb": round(upscaler.working_bytes(height, width) / 2**20, 1),
           "peak_mb": None if peak is None else round(peak / 2**20, 1), "note": note}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def seams(args: argparse.Namespace, device: torch.device) -> list[dict]:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for name in args.model:
        path = resolve_model(name, "upscaler")
        upscaler = load_upscaler(path, device, torch.float32, tile=0)
        for image in args.image_list or [args.image]:
            frame = _frame(args.height, args.width, image, device)
            whole = upscaler(frame)
            whole8 = (whole * 255).round()
            for overlap in args.overlaps:
                upscaler.tile, upscaler.overlap = args.tile, overlap
                tiled = upscaler(frame)
                upscaler.tile = 0
                differs = (tiled * 255).round() != whole8
                row = {"model": upscaler.name, "image": image.name if image else "synthetic", "tile": args.tile,
                       "overlap": overlap, "max_abs": float((tiled - whole).abs().max()),
                       "uint8_differ_pct": round(100 * float(differs.float().mean()), 5),
                       "uint8_max_levels": int(((tiled * 255).round() - whole8).abs().max())}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="a model file or known name (repeatable)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lines", type=int, nargs="+", default=[640, 1080], choices=sorted(SIZES))
    parser.add_argument("--frames", type=int, default=5, help="timed frames per figure, after one warm-up")
    parser.add_argument("--image", type=Path, help="a picture to use as the frame (else a synthetic one)")
    parser.add_argument("--seams", action="store_true", help="tiled against untiled at each overlap, in float32")
    parser.add_argument("--image-list", type=Path, nargs="*", help="--seams: pictures to measure on")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--tile", type=int, default=64, help="--seams: the tile side")
    parser.add_argument("--overlaps", type=int, nargs="+", default=[0, 8, 16, 24, 32, 48, 64])
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = seams(args, device) if args.seams else speed(args, device)
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                                        else "CPU", "torch": torch.__version__, "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
