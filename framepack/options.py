"""The flags the app and the command line share, defined once: where the models come from and how they run, and how
many workers run the queue and where. Each returns what the flags mean (a model source, one memory plan per worker)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .memory.planning import MemoryPlan, check_before_loading
from .models import ModelSource, comfyui
from .models.attention import ATTENTION_CHOICES
from .models.sources import DEFAULT_CACHE_DIR
from .settings import Settings


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Where the models come from."""
    add = parser.add_argument
    add("--models", type=Path, metavar="DIR", help="local model root laid out like the hub repos (default: hub cache)")
    add("--hf-cache", type=Path, default=DEFAULT_CACHE_DIR, metavar="DIR",
        help=f"hub cache folder, e.g. the hf_download folder of a FramePack or FramePack-Studio install (default ./{DEFAULT_CACHE_DIR})")  # fmt: skip


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Where the models come from and how they run."""
    add_model_options(parser)
    add = parser.add_argument
    add("--comfyui-models", type=Path, metavar="DIR",
        help="ComfyUI's models folder: its HunyuanVideo text encoders, VAE, SigLIP and FramePack transformer are used")  # fmt: skip
    add("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    add("--attention", choices=ATTENTION_CHOICES, default="auto", help="attention backend (default: best installed)")
    add("--compile", action="store_true", help="torch.compile the transformer blocks (slower first section)")
    add("--fp8", action="store_true", help="store the transformer's weights in 8 bits (less memory)")
    add("--fp8-compute", action="store_true",
        help="--fp8, multiplying in fp8 too (faster; GPUs of compute capability 8.9+: RTX 40/50, L4, H100)")  # fmt: skip
    add("--transformer-file", type=Path, metavar="PATH",
        help="a single-file transformer instead of the variant's repo: bf16, fp16 or fp8 .safetensors, or .gguf")  # fmt: skip


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """How many workers run the queue, and where."""
    add = parser.add_argument
    add("--gpus", type=gpu_list, metavar="0,1,...", help="one worker per GPU, each with its own models")
    add("--workers", type=int, default=1, metavar="N", help="workers on the one device, without --gpus (default 1)")
    add("--ray", metavar="ADDRESS", help='run the workers as Ray actors, one per GPU, on the cluster at ADDRESS ("local": '
        'start one here; the outputs folder must be a path every node can write)')  # fmt: skip


def gpu_list(text: str) -> list[int]:
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of GPU numbers, e.g. 0,1") from None
    if not gpus or len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of distinct GPU numbers, e.g. 0,1")
    return gpus


def model_source(args: argparse.Namespace, variant: str | None = None) -> ModelSource:
    """Where the runtime flags say the weights are. With a ComfyUI models folder, its FramePack transformer of
    `variant` takes the repo's place unless --transformer-file names one (ComfyUIError if the folder lacks a part)."""
    comfyui_dir, file = getattr(args, "comfyui_models", None), args.transformer_file
    if comfyui_dir is not None:
        comfyui.check_folder(comfyui_dir)
        if file is None and variant is not None:
            file = comfyui.find_transformer(comfyui_dir, variant)
    return ModelSource(args.models, args.hf_cache, transformer_file=file, comfyui_dir=comfyui_dir)


def worker_plans(args: argparse.Namespace, variant: str) -> list[MemoryPlan]:
    """A memory plan per worker, checked before anything loads (MemoryPlanError when one does not fit): one per GPU
    of --gpus, else --workers on the one device."""
    devices = [f"cuda:{gpu}" for gpu in args.gpus] if args.gpus else [args.device] * max(1, args.workers)
    transformer_file = model_source(args, variant).transformer_file
    return [
        check_before_loading(Settings(variant=variant), fp8=args.fp8, device=device, models_dir=args.models,
                             transformer_file=transformer_file, fp8_matmuls=args.fp8_compute,
                             cache_dir=args.hf_cache)
        for device in devices
    ]  # fmt: skip
