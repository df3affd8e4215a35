"""What a new prompt costs where RAM is short (the per-phase lifetime): the text encoders load for it and the
transformer comes back after; a prompt used before costs nothing extra. Shorter still, the Llama encoder is read
from its files layer by layer as it runs.

    .venv/bin/python bench/prompt_reload.py [--models DIR]

It times jobs on a model set planned per phase (with the tiny test models unless --models points at real ones)
and the loads inside them, then gives the bytes the real 13B set moves for a new prompt and what that takes at
common disk speeds (the load is bounded by reading the files).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framepack import Done, Settings, generate  # noqa: E402
from framepack.loading import load_models  # noqa: E402
from framepack.models import ModelSource  # noqa: E402
from framepack.memory.sizes import GB, ModelConfigs, ModelSizes, published_sizes  # noqa: E402
from framepack.memory.planning import plan_memory  # noqa: E402

DEFAULT_MODELS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tiny-framepack" / "models"
IMAGE = DEFAULT_MODELS.parent / "cases" / "v1_original" / "input.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    args = parser.parse_args()

    sizes = ModelSizes.from_configs(ModelConfigs.from_folder(args.models), torch.float32, torch.float32)
    options = dict(height=64, width=96, window=3, device="cpu", mode="low", sizes=sizes)
    plan = plan_memory(GB, plan_memory(GB, None, **options).peak_ram - 1, **options)  # just too little for all
    run_jobs("Per-phase model set", plan, args.models)
    run_jobs("Llama read from its files", plan_memory(GB, plan.peak_ram, llama_from_files=True, **options), args.models)

    real = published_sizes()
    moved = sum(real[name].total for name in ("text_encoder", "text_encoder_2", "transformer"))
    q4_k = ModelSizes.from_configs(ModelConfigs.published(), torch.bfloat16, torch.float16, transformer_format="q4_k")
    from_files = sum(q4_k[name].total for name in ("text_encoder", "text_encoder_2", "transformer"))
    print(f"\nReal 13B set: a new prompt reads {moved / GB:.1f} GB (Llama and CLIP encoders, then the transformer);")
    print(f"with a Q4_K transformer and the Llama read from its files (16 GB of RAM), {from_files / GB:.1f} GB:")
    for disk, speed in (("SATA SSD", 0.5), ("NVMe SSD", 2.0), ("fast NVMe", 7.0)):
        print(f"  {disk:<10} {speed:.1f} GB/s: about {moved / GB / speed:.0f} s, {from_files / GB / speed:.0f} s per new prompt")


def run_jobs(title: str, plan, models_dir: Path) -> None:
    """Three 2-section jobs (a new prompt, the same again, another new one), timing the loads inside them."""
    models = load_models("original", ModelSource(models_dir=models_dir), dtype="float32", plan=plan)
    timings: list[tuple[str, float]] = []
    load = models.loader.load

    def timed_load(name: str) -> torch.nn.Module:
        started = time.perf_counter()
        module = load(name)
        timings.append((name, time.perf_counter() - started))
        return module

    models.loader.load = timed_load
    settings = Settings(total_second_length=0.8, latent_window_size=3, steps=2, height=64, width=96)
    out = Path(tempfile.mkdtemp())
    print(f"{title} ({models_dir.name}); one 2-section job each:")
    for label, prompt in (("new prompt", "a girl dances"), ("same prompt", "a girl dances"), ("new prompt", "a cat jumps")):
        timings.clear()
        started = time.perf_counter()
        done = list(generate(models, settings.replace(prompt=prompt), IMAGE, out, previews=False))[-1]
        assert isinstance(done, Done), done
        loads = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings) or "nothing loaded"
        print(f"  {label:<12} job {time.perf_counter() - started:6.2f} s; loads: {loads}")


if __name__ == "__main__":
    main()
