"""Shifted sigmas, guidance and the UniPC sampler, checked against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from framepack.sampling import (
    combine_guidance,
    flow_sigmas,
    flux_mu,
    sample_unipc,
    section_sigmas,
)


def test_flux_mu_line_and_cap():
    assert flux_mu(256) == pytest.approx(0.5)
    assert flux_mu(4096) == pytest.approx(1.15)
    assert flux_mu(216) == pytest.approx(0.493229, abs=1e-6)  # no lower bound
    assert flux_mu(10**6) == pytest.approx(math.log(7))


def test_sigmas_of_the_tiny_cases():
    # 64x96 at window 9: 9 * 8 * 12 // 4 = 216 tokens.
    sigmas = section_sigmas(4, 9, 8, 12)
    assert sigmas.dtype == torch.float32
    assert sigmas.tolist() == pytest.approx([1, 0.830875, 0.620867, 0.353113, 0], abs=1e-6)


def test_sigmas_of_a_real_bucket():
    # 544x704 at window 9: 9 * 68 * 88 // 4 = 13464 tokens, so mu is capped at ln 7.
    sigmas = section_sigmas(25, 9, 68, 88)
    t = torch.linspace(1, 0, 26)
    assert len(sigmas) == 26 and sigmas[0] == 1 and sigmas[-1] == 0
    assert torch.allclose(sigmas[1:-1], 7 / (7 + 1 / t[1:-1] - 1))
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_guidance_without_negative_is_the_positive():
    v = torch.randn(1, 16, 3, 4, 4)
    assert combine_guidance(v, None, 1.0, 0.7) is v


def test_guidance_and_rescale():
    torch.manual_seed(0)
    pos, neg = torch.randn(1, 4, 2, 3, 3), torch.randn(1, 4, 2, 3, 3)
    plain = combine_guidance(pos, neg, 3.0, 0.0)
    assert torch.allclose(plain, neg + 3 * (pos - neg))
    full = combine_guidance(pos, neg, 3.0, 1.0)
    assert full.std().item() == pytest.approx(pos.std().item(), rel=1e-5)  # std matched to the positive
    half = combine_guidance(pos, neg, 3.0, 0.5)
    assert torch.allclose(half, 0.5 * full + 0.5 * plain, atol=1e-6)


def run(denoise, x, sigmas):
    steps = list(sample_unipc(denoise, x, sigmas))
    return steps, steps[-1].denoised


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7])
def test_constant_prediction_is_returned_and_evaluated_once_per_step(steps):
    target = torch.full((1, 2, 1, 2, 2), 0.25)
    calls = []

    def denoise(x, sigma, step):
        calls.append((step, float(sigma)))
        return target.clone()

    sigmas = flow_sigmas(steps, 0.8)
    records, result = run(denoise, torch.randn(1, 2, 1, 2, 2), sigmas)
    assert torch.allclose(result, target)
    assert [c[0] for c in calls] == list(range(steps))
    assert [c[1] for c in calls] == pytest.approx(sigmas[:-1].tolist())  # sigma 0 is never evaluated
    assert [r.step for r in records] == list(range(steps))


def gaussian_flow(mu: float, s: float):
    """Exact x0 predictor for data N(mu, s^2) under x = (1 - sigma) x0 + sigma * noise, and the exact ODE path."""

    def denoise(x, sigma, step):
        a = 1 - sigma
        return mu + a * s**2 / (a**2 * s**2 + sigma**2) * (x - a * mu)

    def exact_denoised(z, sigma):
        a = 1 - sigma
        return mu + a * s**2 * z / math.sqrt(a**2 * s**2 + sigma**2)

    return denoise, exact_denoised


def test_unipc_follows_the_exact_probability_flow():
    denoise, exact = gaussian_flow(mu=0.3, s=0.5)
    z = torch.randn(1, 16, 2, 4, 4, dtype=torch.float64)
    sigmas = flow_sigmas(25, 1.15).double()
    _, result = run(denoise, z.clone(), sigmas)
    # The schedule's last steps are large in log-sigma whatever the step count, which bounds the accuracy.
    error = (result - exact(z, float(sigmas[-2]))).abs()
    assert error.max() < 0.05 and error.mean() < 0.01


def test_unipc_converges_at_higher_order():
    denoise, exact = gaussian_flow(mu=-0.2, s=0.8)
    z = torch.randn(1, 4, 1, 4, 4, dtype=torch.float64)
    errors = []
    for steps in (8, 16, 32):
        # End at sigma 0.2 so that every step shrinks as the count doubles.
        sigmas = torch.cat([torch.linspace(1, 0.2, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
        records, _ = run(denoise, z.clone(), sigmas)
        a, sigma = 0.8, 0.2
        exact_x = (1 - sigma) * -0.2 + math.sqrt(a**2 * 0.8**2 + sigma**2) * z
        errors.append((records[-1].x - exact_x).abs().max().item())
    # Third order: halving the step size cuts the error about 8x; a first-order method would only halve it.
    assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5
