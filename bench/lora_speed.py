"""LoRA: seconds to apply and to switch a LoRA set on the tiny model, and what a rank-32 LoRA adds to the real
13B transformer's memory in each mode (built on the meta device: no weights needed).

    .venv/bin/python bench/lora_speed.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framepack.lora import LoraSpec, linear_modules  # noqa: E402
from framepack.lora import apply_loras  # noqa: E402
from framepack.memory.sizes import GB, ModelConfigs  # noqa: E402
from framepack.lora import lora_bytes  # noqa: E402
from framepack.models.components import meta_transformer  # noqa: E402
from framepack.memory.planning import plan_memory  # noqa: E402
from framepack.loading import load_models
from framepack.models import ModelSource  # noqa: E402

DEFAULT_MODELS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tiny-framepack" / "models"


def musubi_lora(transformer: torch.nn.Module, rank: int, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """A LoRA on every Linear of the dual and single blocks (no norms), as musubi-tuner trains FramePack LoRAs."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (width, rows) in linear_modules(transformer).items():
        if name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and "norm" not in name:
            key = f"lora_unet_{name.replace('.', '_')}"
            if transformer.device.type == "meta":
                down, up = torch.zeros(rank, width, dtype=dtype), torch.zeros(rows, rank, dtype=dtype)
            else:
                down = torch.randn(rank, width, generator=generator, dtype=dtype)
                up = torch.randn(rows, rank, generator=generator, dtype=dtype)
            tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    return tensors


def timed(label: str, action) -> None:
    started = time.perf_counter()
    action()
    print(f"  {label:<44} {time.perf_counter() - started:7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())

    models = load_models("original", ModelSource(args.models), device="cpu", dtype="float32")
    first, second = (folder / "a.safetensors", folder / "b.safetensors")
    save_file(musubi_lora(models.transformer, args.rank, torch.float32, 1), str(first))
    save_file(musubi_lora(models.transformer, args.rank, torch.float32, 2), str(second))
    print(f"Tiny model ({args.models.name}), rank {args.rank} on every block Linear:")
    for fuse in (True, False):
        models.fuse_loras = fuse
        how = "fused" if fuse else "unfused"
        timed(f"apply one LoRA ({how})", lambda: apply_loras(models, [LoraSpec(first)]))
        timed(f"change its weight ({how})", lambda: apply_loras(models, [LoraSpec(first, 0.5)]))
        timed(f"switch to another LoRA ({how})", lambda: apply_loras(models, [LoraSpec(second)]))
        timed(f"two at once ({how})", lambda: apply_loras(models, [LoraSpec(first, 0.7), LoraSpec(second, 0.4)]))
        timed(f"none (weights restored exactly, {how})", lambda: apply_loras(models, []))

    configs = ModelConfigs.published()
    real = meta_transformer(configs.transformer)
    path = folder / "real.safetensors"
    save_file(musubi_lora(real, args.rank, torch.bfloat16), str(path))
    lora = lora_bytes([path], configs, torch.bfloat16)
    print(f"\nReal 13B transformer (meta device), rank {args.rank}, bfloat16: adapters {lora.adapters / GB:.3f} GB, "
          f"layers touched {lora.touched / GB:.2f} GB")  # fmt: skip
    print(f"  {'mode':<28} {'extra GPU GB':>12} {'extra RAM GB':>12}")
    for label, vram, fp8 in (("high (80 GB GPU), fused", 80, False), ("low (8 GB GPU), unfused", 8, False),
                             ("low (8 GB GPU), fp8, unfused", 8, True)):  # fmt: skip
        plain = plan_memory(vram * GB, 128 * GB, fp8=fp8).phase("sampling")
        with_lora = plan_memory(vram * GB, 128 * GB, fp8=fp8, lora=lora).phase("sampling")
        print(f"  {label:<28} {(with_lora.gpu_bytes - plain.gpu_bytes) / GB:12.3f} {(with_lora.ram_bytes - plain.ram_bytes) / GB:12.3f}")


if __name__ == "__main__":
    main()
