"""fp8 compute (`--fp8-compute`): the transformer's big Linears multiply in float8 through `torch._scaled_mm`.

Real fp8 kernels need a GPU of compute capability 8.9+, where the option is allowed; torch also runs
`_scaled_mm` on the CPU, so the arithmetic, the choice of layers and a whole job are checked here, and the
refusal on other devices is checked through the command line."""

from __future__ import annotations

import torch
from helpers import (
    CASES,
    SHORT_JOB,
    TINY_MODELS,
    TRANSFORMER_FOLDER,
    needs_shared,
    run_cli,
    section_latents,
)

import framepack.memory.planning
from framepack.loading import load_models, load_transformer_fp8
from framepack.memory.planning import check_before_loading
from framepack.memory.sizes import ModelConfigs
from framepack.models import ModelSource
from framepack.models.components import meta_transformer
from framepack.models.fp8 import FP8, Fp8Linear, enable_fp8, fp8_matmul_problem, has_fp8

# On the tiny model, a job multiplying in fp8 stays this close to the same job with fp8 storage only (which
# casts weights back to float32 and multiplies at full precision): the difference is the activations' rounding.
FP8_COMPUTE_LATENT_ATOL = 0.05  # measured 0.02


def test_an_fp8_linear_is_the_product_of_the_scaled_fp8_input_and_the_stored_weight():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        linear = torch.nn.Linear(64, 48).to(dtype)
        x = torch.randn(2, 7, 64, dtype=dtype) * 3
        linear.weight = torch.nn.Parameter(linear.weight.to(FP8), requires_grad=False)
        stored = torch.nn.functional.linear(x, linear.weight.to(dtype), linear.bias)  # fp8 storage's product
        linear.__class__ = Fp8Linear
        out = linear(x)
        assert out.shape == (2, 7, 48) and out.dtype == dtype
        # By hand: the input scaled to the e4m3 range by its largest magnitude, rounded to e4m3, scaled back.
        scale = x.abs().max().float() / torch.finfo(FP8).max
        rounded = (x.float() / scale).to(FP8).float() * scale
        expected = rounded @ linear.weight.float().t() + linear.bias.float()
        assert torch.allclose(out.float(), expected, atol=1e-5 if dtype == torch.float32 else 0.05), dtype
        # and fp8 rounding of the input is all that separates it from fp8 storage
        error = (out.float() - stored.float()).abs().max() / stored.float().abs().max()
        assert 0 < error < 0.05, (dtype, error)


def test_the_layers_that_multiply_in_fp8_are_those_fp8_storage_casts():
    """On the real 13B architecture (meta device): every Linear that layerwise casting stores in fp8 becomes an
    Fp8Linear, nothing else does, no casting hook is left on them, and the output head stays float32."""
    config = ModelConfigs.published().transformer
    stored, computed = meta_transformer(config), meta_transformer(config)
    for model in (stored, computed):
        torch.nn.Module.to(model, torch.bfloat16)
        model.norm_out.float()
        model.proj_out.float()
    enable_fp8(stored)
    enable_fp8(computed, matmuls=True)
    cast = {
        name for name, m in stored.named_modules()
        if isinstance(m, torch.nn.Linear) and hasattr(m, "_diffusers_hook") and m._diffusers_hook.get_hook("layerwise_casting")
    }  # fmt: skip
    fp8_linears = {name for name, m in computed.named_modules() if isinstance(m, Fp8Linear)}
    assert fp8_linears == cast and len(cast) == 448  # 20 dual-stream blocks x 12, 40 single x 4, 48 more
    assert all(not hasattr(computed.get_submodule(n), "_diffusers_hook") for n in fp8_linears)
    assert all(computed.get_submodule(n).weight.dtype == FP8 for n in fp8_linears)
    assert computed.proj_out.weight.dtype == torch.float32 and computed.dtype == torch.bfloat16 and has_fp8(computed)
    # The same bytes as fp8 storage, but for the biases, which stay at the compute dtype (2 bytes, not 1).
    size = lambda model: sum(p.numel() * p.element_size() for p in model.parameters())  # noqa: E731
    biases = sum(computed.get_submodule(n).bias.numel() for n in fp8_linears)
    assert size(computed) == size(stored) + biases


def test_fp8_compute_is_refused_where_the_device_cannot_and_explains_why():
    assert "compute capability 8.9" in fp8_matmul_problem("cpu") and "--fp8" in fp8_matmul_problem("cpu")


@needs_shared
def test_a_job_multiplying_in_fp8_stays_close_to_the_fp8_storage_job(tmp_path, monkeypatch):
    # Loaded the way the app and the CLI load it, on the CPU (where the option is refused, so the check is lifted).
    monkeypatch.setattr(framepack.memory.planning, "fp8_matmul_problem", lambda device: None)
    plan = check_before_loading(SHORT_JOB, device="cpu", models_dir=TINY_MODELS, fp8_matmuls=True)
    assert plan.fp8 and plan.fp8_matmuls and "fp8 matrix products" in plan.summary() + plan.report()
    computed = load_models("original", ModelSource(models_dir=TINY_MODELS), dtype="float32", plan=plan)
    assert any(isinstance(m, Fp8Linear) for m in computed.transformer.modules())
    latents = section_latents(computed, SHORT_JOB, tmp_path / "computed")
    stored = load_models("original", ModelSource(models_dir=TINY_MODELS), device="cpu", dtype="float32")
    stored.transformer = load_transformer_fp8(TRANSFORMER_FOLDER, torch.float32)
    expected = section_latents(stored, SHORT_JOB, tmp_path / "stored")
    difference = (latents - expected).abs().max().item()
    assert 0 < difference < FP8_COMPUTE_LATENT_ATOL, difference


@needs_shared
def test_the_command_line_refuses_fp8_compute_on_the_cpu_in_one_line(tmp_path):
    result = run_cli(
        "generate", "--models", str(TINY_MODELS), "--image", str(CASES / "v1_original" / "input.png"), "--prompt", "a girl",
        "--seconds", "0.4", "--steps", "2", "--device", "cpu", "--fp8-compute", "--output-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode != 0 and not list(tmp_path.iterdir())
    assert result.stderr.strip().splitlines()[-1].startswith("error: --fp8-compute: fp8 matrix products need an NVIDIA GPU")
    assert "Traceback" not in result.stderr
