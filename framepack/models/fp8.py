"""8-bit transformer weights: fp8 (e4m3) storage through diffusers' layerwise casting, and fp8 matrix products
(`torch._scaled_mm`) on GPUs that have them."""

from __future__ import annotations

import re

import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel

FP8 = torch.float8_e4m3fn


FP8_MAX = torch.finfo(FP8).max


FP8_MATMUL_CAPABILITY = (8, 9)  # Ada (RTX 40, L4) and newer have fp8 tensor cores


class Fp8Linear(torch.nn.Linear):
    """A Linear stored in float8 e4m3 that multiplies in float8 (`torch._scaled_mm`) instead of casting its
    weight back up: the input is scaled by its largest magnitude, cast to e4m3, multiplied with the weight as
    stored (scale 1, as fp8 storage casts it), and the product comes back in the input's dtype with the bias
    added. `enable_fp8(..., matmuls=True)` turns a model's eligible Linears into these."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows = input.reshape(-1, self.in_features)
        scale = rows.abs().amax().float().clamp(min=1e-12) / FP8_MAX
        quantised = (rows.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        one = torch.ones((), device=input.device)
        out = torch._scaled_mm(quantised, self.weight.t(), scale_a=scale, scale_b=one, bias=self.bias, out_dtype=input.dtype)
        return out.reshape(*input.shape[:-1], self.out_features)


def fp8_matmul_problem(device: str | torch.device) -> str | None:
    """Why fp8 matrix products cannot run on `device`, or None where they can (CUDA, compute capability 8.9+)."""
    device = torch.device(device)
    needs = "fp8 matrix products need an NVIDIA GPU of compute capability 8.9 or newer (RTX 40/50, L4, H100)"
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"{needs}; this job computes on {device.type.upper() if device.type != 'mps' else 'an Apple GPU'} (use --fp8 for 8-bit storage)"
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MATMUL_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return f"{needs}; the {name} has {capability[0]}.{capability[1]} (use --fp8 for 8-bit storage)"
    return None


def has_fp8(transformer: torch.nn.Module) -> bool:
    """Whether the transformer stores its big layers in fp8 (diffusers' layerwise casting, or `Fp8Linear`)."""
    return any(
        isinstance(m, Fp8Linear)
        or (hasattr(m, "_diffusers_hook") and m._diffusers_hook.get_hook("layerwise_casting") is not None)
        for m in transformer.modules()
    )


def compute_dtype(transformer: torch.nn.Module) -> torch.dtype:
    # ModelMixin.dtype reports the compute dtype of layerwise-cast models, not the storage dtype.
    return transformer.dtype


def _layerwise_skip_patterns(transformer: HunyuanVideoFramepackTransformer3DModel) -> tuple[str, ...]:
    # What diffusers' enable_layerwise_casting leaves at full precision (its defaults and the model's own).
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    return (*DEFAULT_SKIP_MODULES_PATTERN, *(transformer._keep_in_fp32_modules or ()),
            *(transformer._skip_layerwise_casting_patterns or ()))  # fmt: skip


def enable_fp8(transformer: HunyuanVideoFramepackTransformer3DModel, matmuls: bool = False) -> None:
    """Store the transformer's big layers in float8 (e4m3), computing in its current dtype, layer by layer.

    diffusers skips modules whose names match "norm", "^proj_out$", "x_embedder", "context_embedder" (and a
    few more): embedders, every AdaLayerNorm's modulation Linear and the output head stay as they are, so
    the float32 head that `keep_output_head_in_float32` set up is untouched. That is checked here, since a
    silently fp8 head would ruin every frame.

    With `matmuls` the Linears that layerwise casting would store in fp8, and whose sizes fp8 kernels take
    (multiples of 16), become `Fp8Linear`s that multiply in fp8; the rest is cast layer by layer as above.
    Either way it must happen before the weights arrive (on the meta device) or on the CPU: it cannot be undone.
    """
    if has_fp8(transformer):
        return
    dtype = compute_dtype(transformer)
    if matmuls:
        skip = _layerwise_skip_patterns(transformer)
        for name, module in transformer.named_modules():
            if (type(module) is torch.nn.Linear and module.in_features % 16 == 0 and module.out_features % 16 == 0
                    and not any(re.search(pattern, name) for pattern in skip)):  # fmt: skip
                module.__class__ = Fp8Linear
                module.weight = torch.nn.Parameter(module.weight.to(FP8), requires_grad=False)
    transformer.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=dtype, skip_modules_classes=(Fp8Linear,))
    for name in ("norm_out", "proj_out"):
        head = getattr(transformer, name)
        if any(p.dtype == FP8 for p in head.parameters()):
            raise RuntimeError(f"layerwise casting reached the output head ({name}); it must stay float32")

