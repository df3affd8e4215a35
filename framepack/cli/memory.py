"""`check-memory`: where the models would live and whether a job fits in GPU and system memory, planned without
loading anything (GB = 10**9 bytes)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..lora import lora_bytes
from ..memory.planning import plan_for_settings
from ..memory.sensing import detect_device, system_ram, system_swap
from ..memory.sizes import GB, ModelSizes, file_configs
from ..models import ModelsMissingError
from ..models.checkpoints import FORMATS, inspect_transformer_file
from ..models.components import resolve_dtypes
from ..settings import VARIANTS, Settings, SettingsError


def add_parsers(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "check-memory",
        help="show where the models would live and whether a job fits in GPU and system memory",
        description="Plan GPU and system memory for a job without loading anything. GB = 10^9 bytes.",
    )
    parser.add_argument("--vram", type=float, help="free GPU memory in GB (default: this machine's; 0 = no GPU)")
    parser.add_argument("--ram", type=float, help="free system memory in GB (default: this machine's)")
    parser.add_argument("--swap", type=float, help="free swap in GB (default: this machine's, or 0 with --ram)")
    parser.add_argument("--resolution", type=int, default=640, help="bucket resolution (default 640: every 640 bucket)")
    parser.add_argument("--height", type=int, help="explicit height, a multiple of 16 (needs --width)")
    parser.add_argument("--width", type=int, help="explicit width, a multiple of 16 (needs --height)")
    parser.add_argument("--latent-window-size", type=int, default=9, help="latent frames per section (default 9)")
    parser.add_argument("--variant", choices=VARIANTS, default="original", help="model variant (default original)")
    parser.add_argument("--fp8", action="store_true", help="store the transformer's weights in 8 bits")
    parser.add_argument("--preserve", type=float, default=6.0, help="GPU memory to preserve in GB (default 6)")
    parser.add_argument("--device", help="cuda, mps or cpu (default: this machine's best, or cuda with --vram)")
    parser.add_argument("--lora", action="append", default=[], metavar="PATH", help="count this LoRA file too (repeatable)")
    parser.add_argument("--models", type=Path, help="local model root whose configs to plan (default: the published ones)")
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument("--transformer-file", type=Path, metavar="PATH",
                         help="plan this single-file transformer (.safetensors or .gguf); reads only its header")  # fmt: skip
    formats.add_argument("--transformer-format", choices=FORMATS,
                         help="plan the transformer stored in this format (GGUF quantisations: q8_0, q6_k, ...)")  # fmt: skip
    parser.set_defaults(handler=run_check_memory)
    return parser


def run_check_memory(args: argparse.Namespace) -> int:
    """Print the plan; 0 when it fits, 1 when it does not, 2 for invalid options."""
    try:
        settings = Settings(
            variant=args.variant,
            resolution=args.resolution,
            height=args.height,
            width=args.width,
            latent_window_size=args.latent_window_size,
            gpu_memory_preservation=args.preserve,
        )
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if any(value is not None and value < 0 for value in (args.vram, args.ram, args.swap)):
        print("error: --vram, --ram and --swap must not be negative", file=sys.stderr)
        return 2
    if args.vram is None:
        detected = detect_device(args.device)
        vram, device = detected.vram_free, detected.device
    else:
        # A given amount means a GPU of that much free memory (CUDA unless --device says otherwise); 0 means none.
        vram, device = (int(args.vram * GB), args.device or "cuda") if args.vram > 0 else (None, "cpu")
    ram = int(args.ram * GB) if args.ram is not None else system_ram()[0]
    # A given --ram describes a machine to plan for, whose swap is unknown unless given too.
    swap = int(args.swap * GB) if args.swap is not None else 0 if args.ram is not None else system_swap()
    transformer_dtype, encoder_dtype = resolve_dtypes(None, torch.device(device))
    fp8 = args.fp8 or args.transformer_format == "fp8"
    try:
        configs = file_configs(args.models, args.variant, args.transformer_file)
        file = inspect_transformer_file(args.transformer_file, configs.transformer, args.variant) if args.transformer_file else None
        sizes = None  # the published model: its advice can try fp8 on it
        if args.models or file or args.transformer_format:
            sizes = ModelSizes.from_configs(configs, transformer_dtype, encoder_dtype, fp8, args.transformer_format, file)
            fp8 = sizes.fp8
        lora = lora_bytes(args.lora, configs, transformer_dtype) if args.lora else None
    except (ModelsMissingError, ValueError) as exc:  # LoraError and CheckpointError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plan = plan_for_settings(settings, vram, ram, fp8=fp8, device=device, swap_free=swap, sizes=sizes, lora=lora)
    print(plan.report())
    return 0 if plan.fits else 1

