"""Flow-matching sampling: FramePack's shifted sigmas, guidance, and UniPC (bh1) over x0 predictions.

The sampler is a generator of steps, so the engine can report progress, show previews and stop between
steps without callbacks or threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

# A denoiser maps (noisy latents, sigma, step index) to the predicted clean latents x0.
Denoiser = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def flux_mu(seq_len: int, x1: float = 256, y1: float = 0.5, x2: float = 4096, y2: float = 1.15, max_shift: float = 7.0) -> float:
    """The time shift for a token count: linear in `seq_len` through (x1, y1) and (x2, y2), capped at ln(max_shift)."""
    slope = (y2 - y1) / (x2 - x1)
    mu = slope * seq_len + (y1 - slope * x1)
    return min(mu, math.log(max_shift))


def flow_sigmas(steps: int, mu: float) -> torch.Tensor:
    """`steps + 1` sigmas from 1 to 0: linear times shifted by exp(mu) / (exp(mu) + 1/t - 1)."""
    t = torch.linspace(1, 0, steps + 1)
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def section_sigmas(steps: int, window: int, latent_height: int, latent_width: int) -> torch.Tensor:
    """The sigmas of one section; the shift depends on its token count after 2x2 patching."""
    return flow_sigmas(steps, flux_mu(window * latent_height * latent_width // 4))


def combine_guidance(v_pos: torch.Tensor, v_neg: torch.Tensor | None, cfg: float, rescale: float) -> torch.Tensor:
    """Real classifier-free guidance with optional re-scaling of the guided prediction's std to the positive one's."""
    if v_neg is None:
        return v_pos
    v = v_neg + cfg * (v_pos - v_neg)
    if rescale != 0:
        dims = list(range(1, v.ndim))
        v = rescale * v * (v_pos.std(dim=dims, keepdim=True) / v.std(dim=dims, keepdim=True)) + (1 - rescale) * v
    return v


@dataclass
class SamplerStep:
    step: int  # 0-based index of the model evaluation
    total: int
    x: torch.Tensor  # the latents after this step
    denoised: torch.Tensor  # the x0 prediction of this step's evaluation


def sample_unipc(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, max_order: int = 3) -> Iterator[SamplerStep]:
    """UniPC, variant bh1, on x0 predictions with lambda = -ln(sigma); one model evaluation per step.

    Step 0 evaluates the noise; every later step predicts to the next sigma, evaluates there and corrects.
    The order ramps up from 1 to `max_order`. sigma = 0 is never evaluated: the result is the last step's
    `denoised`.
    """
    total = len(sigmas) - 1
    order = min(max_order, total - 1)
    outputs: list[torch.Tensor] = []
    times: list[torch.Tensor] = []
    for i in range(total):
        sigma = sigmas[i]
        if i == 0:
            denoised = denoise(x, sigma, i)
        else:
            x, denoised = _unipc_update(denoise, x, outputs, times, sigma, min(i, order), i)
        outputs.append(denoised)
        times.append(sigma)
        if order > 0:
            outputs, times = outputs[-order:], times[-order:]
        yield SamplerStep(i, total, x, denoised)


def _unipc_update(
    denoise: Denoiser,
    x: torch.Tensor,
    outputs: list[torch.Tensor],
    times: list[torch.Tensor],
    sigma: torch.Tensor,
    order: int,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One UniPC predictor-corrector update from times[-1] to `sigma` using the last `order` x0 predictions."""
    sigma_prev, m_prev = times[-1], outputs[-1]
    lambda_prev = -torch.log(sigma_prev)
    h = -torch.log(sigma) - lambda_prev

    ratios, diffs = [], []
    for k in range(1, order):
        r = (-torch.log(times[-(k + 1)]) - lambda_prev) / h
        ratios.append(r)
        diffs.append((outputs[-(k + 1)] - m_prev) / r)
    ratios.append(1.0)
    ratios = torch.tensor(ratios, device=x.device, dtype=h.dtype)

    hh = -h  # bh1: B(h) = hh
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    powers, coeffs = [], []
    for k in range(1, order + 1):
        powers.append(torch.pow(ratios, k - 1))
        coeffs.append(h_phi_k * factorial / hh)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    powers = torch.stack(powers)
    coeffs = torch.tensor(coeffs, device=x.device, dtype=h.dtype)

    x_linear = (sigma / sigma_prev) * x - h_phi_1 * m_prev
    if order > 1:
        diffs = torch.stack(diffs, dim=1)
        rhos_p = torch.tensor([0.5], device=x.device, dtype=h.dtype) if order == 2 else torch.linalg.solve(powers[:-1, :-1], coeffs[:-1])
        x_pred = x_linear - hh * torch.tensordot(diffs, rhos_p, dims=([1], [0]))
    else:
        x_pred = x_linear

    m_new = denoise(x_pred, sigma, step)

    rhos_c = torch.tensor([0.5], device=x.device, dtype=h.dtype) if order == 1 else torch.linalg.solve(powers, coeffs)
    correction = rhos_c[-1] * (m_new - m_prev)
    if order > 1:
        correction = torch.tensordot(diffs, rhos_c[:-1], dims=([1], [0])) + correction
    return x_linear - hh * correction, m_new


def make_denoiser(
    transformer: torch.nn.Module,
    inputs: dict[str, dict[str, torch.Tensor]],
    *,
    cfg: float,
    cfg_rescale: float,
    distilled_cfg: float,
    steps: int,
) -> Denoiser:
    """Wrap the flow transformer as an x0 denoiser: x0 = x - sigma * v, with distilled guidance and real CFG.

    `inputs` holds the transformer's keyword inputs for the "positive" and "negative" prompts; the negative pass
    only runs when `cfg` != 1. Each pass has its own cache context, so step caches never mix them.
    """
    dtype = transformer.dtype
    guidance = torch.tensor([distilled_cfg * 1000.0], device=transformer.device, dtype=dtype)

    def velocity(name: str, hidden: torch.Tensor, timestep: torch.Tensor, step: int) -> torch.Tensor:
        with transformer.cache_context(name, step_index=step, num_inference_steps=steps):
            out = transformer(hidden_states=hidden, timestep=timestep, guidance=guidance, return_dict=False, **inputs[name])
        return out[0].float()

    def denoise(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        sigma = sigma.float()
        hidden = x.to(dtype)
        timestep = (sigma * 1000.0).expand(x.shape[0]).to(dtype)
        v_pos = velocity("positive", hidden, timestep, step)
        v_neg = velocity("negative", hidden, timestep, step) if cfg != 1 else None
        v = combine_guidance(v_pos, v_neg, cfg, cfg_rescale)
        return x.float() - v * sigma

    return denoise
