"""`lora-info`: what a LoRA file is (format, rank, alpha, the modules it changes) and whether it fits a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..lora import LoraError, describe_lora, read_lora
from ..memory.sizes import ModelConfigs
from ..models import ModelsMissingError
from ..models.components import meta_transformer
from ..settings import VARIANTS


def add_parsers(commands: argparse._SubParsersAction) -> None:
    info = commands.add_parser("lora-info", help="what a LoRA file is: format, rank, alpha, the modules it changes")
    info.add_argument("path", type=Path, help="the LoRA file (.safetensors)")
    info.add_argument("--variant", choices=VARIANTS, default="original", help="the model to match it against")
    info.add_argument("--models", type=Path, help="local model root whose transformer config to use")
    info.set_defaults(handler=run_lora_info)


def run_lora_info(args: argparse.Namespace) -> int:
    """Print what a LoRA file is and whether it fits the variant's transformer; 0 if it does, 1 if not."""
    try:
        configs = ModelConfigs.from_folder(args.models, args.variant) if args.models else ModelConfigs.published()
        file = read_lora(args.path, meta_transformer(configs.transformer))
    except (LoraError, ModelsMissingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe_lora(file, args.variant))
    return 0

