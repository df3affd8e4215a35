"""GPU check: the CUDA paths measured in one run, with random weights in the real models' shapes (no download).

    .venv/bin/python bench/gpu_check.py --out gpu_check.json

At the 640 bucket (608x640, window 9) it measures: seconds per transformer step for each attention backend
installed; bf16 against fp8 storage and fp8 compute (where the GPU has it); with and without
torch.compile; the low-memory mode under a 6 GB cap against the resident transformer, with and without CUDA
streams (the overlap of streaming with compute); one section's VAE decode, tiled and not; and the peak GPU
memory of each phase beside the memory plan's estimate. It prints one table and writes JSON with --out.

Without CUDA it runs the same code on the tiny configs of ../shared/fixtures, on the CPU, and says so: a test
runs it that way, so it cannot rot. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
from transformers import LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framepack.models.attention import availability, set_attention  # noqa: E402
from framepack.models.components import compile_blocks, keep_output_head_in_float32  # noqa: E402
from framepack.packing import plan_sections  # noqa: E402
from framepack.models.fp8 import Fp8Linear, enable_fp8, fp8_matmul_problem  # noqa: E402
from framepack.memory.placement import place_component  # noqa: E402
from framepack.memory.sizes import GB, ModelConfigs, ModelSizes  # noqa: E402
from framepack.memory.planning import plan_memory  # noqa: E402

TINY_MODELS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tiny-framepack" / "models"
LLAMA_TOKENS = 256 + 95  # the prompt template's length with a full prompt


@dataclasses.dataclass
class Row:
    """One measurement: what, the figure, its unit, and a note (why it was skipped, what it compares with)."""

    group: str
    name: str
    value: float | None
    unit: str
    note: str = ""


class Check:
    """Collects rows, keeps to a time budget and to the device's memory accounting."""

    def __init__(self, device: torch.device, budget: float):
        self.device, self.budget, self.started = device, budget, time.perf_counter()
        self.rows: list[Row] = []

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def add(self, group: str, name: str, value: float | None, unit: str, note: str = "") -> None:
        self.rows.append(Row(group, name, value, unit, note))
        shown = "-" if value is None else f"{value:.3f}"
        print(f"  {group:<12} {name:<52} {shown:>10} {unit:<4} {note}", flush=True)

    def out_of_time(self) -> bool:
        return time.perf_counter() - self.started > self.budget

    def run(self, group: str, name: str, unit: str, measure: Callable[[], tuple[float, str] | float]) -> None:
        """A measurement that may fail or be out of time without ending the check."""
        if self.out_of_time():
            self.add(group, name, None, unit, "skipped: out of the time budget")
            return
        try:
            result = measure()
        except Exception as exc:  # one failed path is a finding, not the end of the check
            self.add(group, name, None, unit, f"failed: {type(exc).__name__}: {str(exc)[:120]}")
            return
        value, note = result if isinstance(result, tuple) else (result, "")
        self.add(group, name, value, unit, note)
        free()

    @contextlib.contextmanager
    def peak(self) -> Iterator[dict[str, float]]:
        """The peak memory allocated while the body runs, in GB (GPU on CUDA; not measured on the CPU)."""
        found: dict[str, float] = {}
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        yield found
        if self.cuda:
            torch.cuda.synchronize()
            found["gb"] = torch.cuda.max_memory_allocated() / GB


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build(factory: Callable[[], torch.nn.Module], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A model made right on `device` in `dtype` (random weights, initialised there: fast, and never twice in memory)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return factory().eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)


def transformer_inputs(transformer: torch.nn.Module, height: int, width: int, window: int, dtype: torch.dtype) -> dict:
    """One section's inputs at this size: the last section of a long original-variant video (full context)."""
    device = next(transformer.parameters()).device
    config = transformer.config
    h, w = height // 8, width // 8
    plan = plan_sections("original", 5, window)[2]

    def noise(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    return dict(
        hidden_states=noise(1, 16, window, h, w),
        timestep=torch.tensor([500.0], device=device, dtype=dtype),
        guidance=torch.tensor([10000.0], device=device, dtype=dtype),
        encoder_hidden_states=noise(1, 512, config.text_embed_dim),
        encoder_attention_mask=torch.ones(1, 512, dtype=torch.bool, device=device),
        pooled_projections=noise(1, config.pooled_projection_dim),
        image_embeds=noise(1, 729, config.image_proj_dim),
        indices_latents=plan.latent_indices.to(device),
        latents_clean=noise(1, 16, 2, h, w),
        indices_latents_clean=plan.clean_indices.to(device),
        latents_history_2x=noise(1, 16, 2, h, w),
        indices_latents_history_2x=plan.clean_2x_indices.to(device),
        latents_history_4x=noise(1, 16, 16, h, w),
        indices_latents_history_4x=plan.clean_4x_indices.to(device),
        return_dict=False,
    )


def seconds_per_call(check: Check, call: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median seconds of `repeats` calls after one warm-up call, seconds of the warm-up call)."""

    def timed() -> float:
        if check.cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.no_grad():
            call()
        if check.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    first = timed()
    return statistics.median(timed() for _ in range(repeats)), first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--budget", type=float, default=420, help="seconds to spend at most (default 420)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure, after a warm-up (default 3)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its warm-up compiles for minutes)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check = Check(device, args.budget)
    if check.cuda:
        configs, height, width, window = ModelConfigs.published(), 608, 640, 9
        dtype, encoder_dtype = torch.bfloat16, torch.float16
        capability = torch.cuda.get_device_capability()
        where = f"{torch.cuda.get_device_name()} (compute capability {capability[0]}.{capability[1]}), real model shapes"
    else:
        configs, height, width, window = ModelConfigs.from_folder(TINY_MODELS), 128, 128, 9
        dtype, encoder_dtype, capability = torch.float32, torch.float32, (0, 0)
        where = "no CUDA: the CPU with the tiny test configs (the same code; the figures say nothing of a GPU)"
    print(f"GPU check on {where}; {width}x{height}, window {window}; torch {torch.__version__}, Python {platform.python_version()}")

    # --- the transformer: attention backends, storage and compute formats, compile
    transformer = build(lambda: HunyuanVideoFramepackTransformer3DModel.from_config(configs.transformer), device, dtype)
    keep_output_head_in_float32(transformer)
    inputs = transformer_inputs(transformer, height, width, window, dtype)
    step = lambda: transformer(**inputs)  # noqa: E731
    with check.peak() as sampling_peak:
        seconds, _ = seconds_per_call(check, step, 1)
    for backend, reason in availability(device).items():
        if reason is not None:
            check.add("transformer", f"step, attention {backend}", None, "s", f"not available: {reason}")
            continue

        def per_step(backend: str = backend) -> float:
            set_attention(transformer, backend, device)
            return seconds_per_call(check, step, args.repeats)[0]

        check.run("transformer", f"step, {str(dtype).removeprefix('torch.')}, attention {backend}", "s", per_step)
    set_attention(transformer, "sdpa", device)
    if args.no_compile:
        check.add("transformer", "step, compiled blocks", None, "s", "skipped: --no-compile")
    else:
        def compiled() -> tuple[float, str]:
            compile_blocks(transformer)
            seconds, first = seconds_per_call(check, step, args.repeats)
            return seconds, f"first call (compiling) {first:.1f} s"

        check.run("transformer", "step, compiled blocks", "s", compiled)
        torch._dynamo.reset()
        for block in (*transformer.transformer_blocks, *transformer.single_transformer_blocks):
            block._compiled_call_impl = None  # back to eager for the figures below
    check.run("transformer", "step, fp8 compute", "s", lambda: fp8_compute_step(check, configs, inputs, dtype, args.repeats))

    def fp8_storage() -> tuple[float, str]:
        enable_fp8(transformer)
        return seconds_per_call(check, step, args.repeats)[0], f"8-bit weights cast to {str(dtype).removeprefix('torch.')} layer by layer"

    check.run("transformer", "step, fp8 storage", "s", fp8_storage)
    del transformer, step
    free()

    # --- the low-memory mode: the transformer's weights in RAM, streamed to the GPU block by block under a
    # 6 GB cap, against the same weights resident (zeros: the figures are of moving and multiplying, not values)
    in_ram = zeros_in_ram(configs, dtype)
    for use_stream in (None, True, False):
        label = {None: "resident (no cap)", True: "streamed under 6 GB, with CUDA streams", False: "streamed under 6 GB, without streams"}
        check.run("low memory", f"step, {label[use_stream]}", "s",
                  lambda use_stream=use_stream: low_memory_step(check, configs, in_ram, inputs, use_stream, args.repeats))  # fmt: skip
    del in_ram, inputs
    free()

    # --- one section's VAE decode, whole and tiled
    vae = build(lambda: AutoencoderKLHunyuanVideo.from_config(configs.vae), device, encoder_dtype)
    latents = torch.randn(1, 16, 2 * window + 1, height // 8, width // 8, device=device, dtype=encoder_dtype)
    decode_peaks = {}
    for tiled in (False, True):
        def decode(tiled: bool = tiled) -> tuple[float, str]:
            vae.enable_tiling() if tiled else vae.disable_tiling()
            with check.peak() as found:
                seconds, _ = seconds_per_call(check, lambda: vae.decode(latents), 1)
            decode_peaks[tiled] = found.get("gb")
            return seconds, f"peak {found['gb']:.2f} GB" if "gb" in found else ""

        check.run("vae", f"decode one section ({2 * window + 1} latents), {'tiled' if tiled else 'whole'}", "s", decode)
    image_peak = phase_peak(check, lambda: vae.encode(torch.randn(1, 3, 1, height, width, device=device, dtype=encoder_dtype)))
    del vae, latents
    free()

    # --- the encoders' phases, then each phase's measured peak beside the plan (everything resident: high mode)
    text_peak = encoder_peaks(check, configs, device, encoder_dtype)
    plan = plan_memory(
        200 * GB if check.cuda else None, None, height=height, width=width, window=window, device=device,
        sizes=ModelSizes.from_configs(configs, dtype, encoder_dtype), mode="high" if check.cuda else None,
    )  # fmt: skip
    measured = {"text encoding": text_peak, "image encoding": image_peak, "sampling": sampling_peak.get("gb"),
                "decoding": decode_peaks.get(False)}  # fmt: skip
    # The plan's phases hold every component; the check measured one component at a time, so the rest is added.
    resident = ModelSizes.from_configs(configs, dtype, encoder_dtype).total / GB
    for phase in plan.phases:
        value = measured.get(phase.name)
        note = f"plan {phase.gpu_bytes / GB:.2f} GB ({plan.mode} mode)"
        if value is not None and check.cuda:
            check.add("plan", f"{phase.name}: measured peak (+ resident weights)", value + resident - component_gb(phase.name, configs, dtype, encoder_dtype), "GB", note)
        else:
            check.add("plan", f"{phase.name}: measured peak", value, "GB", note + ("" if check.cuda else "; GPU memory is measured on CUDA only"))

    print(f"\n{'group':<12} {'measurement':<52} {'value':>10} {'unit':<4} note")
    for row in check.rows:
        shown = "-" if row.value is None else f"{row.value:.3f}"
        print(f"{row.group:<12} {row.name:<52} {shown:>10} {row.unit:<4} {row.note}")
    if args.out:
        args.out.write_text(json.dumps({
            "device": where, "cuda": check.cuda, "size": [height, width], "window": window,
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "seconds": round(time.perf_counter() - check.started, 1),
            "rows": [dataclasses.asdict(row) for row in check.rows],
        }, indent=2) + "\n")  # fmt: skip
        print(f"wrote {args.out}")
    return 0


def fp8_compute_step(check: Check, configs: ModelConfigs, inputs: dict, dtype: torch.dtype, repeats: int) -> tuple[float, str]:
    """Real fp8 matrix products (`--fp8-compute`: `Fp8Linear`, torch._scaled_mm): GPUs of compute capability
    8.9 and up. Without CUDA the same layers run on the CPU, which checks the code, not the speed."""
    if check.device.type == "cuda" and (problem := fp8_matmul_problem(check.device)):
        return None, f"not available: {problem}"
    transformer = build(lambda: HunyuanVideoFramepackTransformer3DModel.from_config(configs.transformer), check.device, dtype)
    keep_output_head_in_float32(transformer)
    enable_fp8(transformer, matmuls=True)
    layers = sum(isinstance(m, Fp8Linear) for m in transformer.modules())
    seconds = seconds_per_call(check, lambda: transformer(**inputs), repeats)[0]
    return seconds, f"{layers} Linears multiplying in fp8" + ("" if check.device.type == "cuda" else " (on the CPU)")


def zeros_in_ram(configs: ModelConfigs, dtype: torch.dtype) -> torch.nn.Module:
    """The transformer in system memory, all zeros (allocated, not initialised: 13B random numbers take minutes)."""
    with torch.device("meta"):
        transformer = HunyuanVideoFramepackTransformer3DModel.from_config(configs.transformer)
    torch.nn.Module.to(transformer, dtype)
    transformer.to_empty(device="cpu")
    for tensor in transformer.parameters():
        tensor.data.zero_()
    keep_output_head_in_float32(transformer)
    return transformer.eval().requires_grad_(False)


def low_memory_step(check: Check, configs: ModelConfigs, transformer: torch.nn.Module, inputs: dict, use_stream: bool | None, repeats: int) -> tuple[float, str]:
    """A step with the transformer resident on the device (`use_stream` None), or streamed block by block."""
    sizes = ModelSizes.from_configs(configs, transformer.dtype, transformer.dtype)
    h, w = inputs["hidden_states"].shape[3:]
    plan = plan_memory(6 * GB if check.cuda else None, None, height=h * 8, width=w * 8, device=check.device, sizes=sizes,
                       mode="low" if check.cuda else None)  # fmt: skip
    cap = contextlib.ExitStack()
    if use_stream is None:
        transformer.to(check.device)
        cap.callback(transformer.to, "cpu")
        note = "everything on the device"
    else:
        streaming = dataclasses.replace(plan.transformer, offload_type=plan.transformer.offload_type or "block_level",
                                        use_stream=use_stream and check.cuda)  # fmt: skip
        place_component("transformer", transformer, dataclasses.replace(plan, transformer=streaming))
        note = f"{streaming.resident_blocks} blocks resident"
        if check.cuda:
            total = torch.cuda.get_device_properties(check.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, 6 * GB / total))
            cap.callback(torch.cuda.set_per_process_memory_fraction, 1.0)
    with cap, check.peak() as found:
        seconds, _ = seconds_per_call(check, lambda: transformer(**inputs), repeats)
    if "gb" in found:
        note += f"; peak {found['gb']:.2f} GB (plan {plan.phase('sampling').gpu_bytes / GB:.2f})"
    return seconds, note


def phase_peak(check: Check, call: Callable[[], Any]) -> float | None:
    with check.peak() as found, torch.no_grad():
        call()
    return found.get("gb")


def encoder_peaks(check: Check, configs: ModelConfigs, device: torch.device, dtype: torch.dtype) -> float | None:
    """Text encoding's peak: the Llama encoder on a full prompt (CLIP is small beside it)."""
    def clean(config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k != "class"}

    llama = build(lambda: LlamaModel(LlamaConfig.from_dict(clean(configs.text_encoder))), device, dtype)
    tokens = torch.randint(0, llama.config.vocab_size, (1, LLAMA_TOKENS), device=device)
    peak = phase_peak(check, lambda: llama(input_ids=tokens, output_hidden_states=True))
    check.run("encoders", "Llama text encoder, one prompt", "s", lambda: seconds_per_call(check, lambda: llama(input_ids=tokens, output_hidden_states=True), 1)[0])
    del llama
    siglip = build(lambda: SiglipVisionModel(SiglipVisionConfig.from_dict(clean(configs.image_encoder))), device, dtype)
    size = siglip.config.image_size
    pixels = torch.randn(1, 3, size, size, device=device, dtype=dtype)
    check.run("encoders", "SigLIP image encoder, one image", "s", lambda: seconds_per_call(check, lambda: siglip(pixel_values=pixels), 1)[0])
    del siglip
    free()
    return peak


def component_gb(phase: str, configs: ModelConfigs, dtype: torch.dtype, encoder_dtype: torch.dtype) -> float:
    """The weights the check had on the device while measuring `phase` (its one component)."""
    sizes = ModelSizes.from_configs(configs, dtype, encoder_dtype)
    name = {"text encoding": "text_encoder", "image encoding": "vae", "sampling": "transformer", "decoding": "vae"}[phase]
    return sizes[name].total / GB


if __name__ == "__main__":
    raise SystemExit(main())
