"""Speed options: attention backends, step caches and compiled blocks."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from helpers import IMAGE, needs_shared

from framepack.engine import generate
from framepack.engine.stepcache import (
    FRAMEPACK_MAG_RATIOS,
    configure_cache,
    has_teacache,
)
from framepack.events import Done, SectionDone, Status
from framepack.models.attention import (
    ATTENTION_CHOICES,
    availability,
    choose_backend,
    set_attention,
)
from framepack.models.components import compile_blocks
from framepack.settings import Settings


def test_backends_are_reported_not_crashed_on():
    cpu = availability(torch.device("cpu"))
    assert cpu["sdpa"] is None
    assert all("NVIDIA GPU" in cpu[name] for name in ("sage", "flash", "xformers"))
    assert choose_backend("auto", torch.device("cpu")) == ("sdpa", None)
    name, note = choose_backend("sage", torch.device("cpu"))
    assert name == "sdpa" and "sage attention is not available" in note
    cuda = availability(torch.device("cuda"))
    for name, package in (("sage", "sageattention"), ("flash", "flash_attn"), ("xformers", "xformers")):
        installed = importlib.util.find_spec(package) is not None
        if not installed or not torch.cuda.is_available():  # without the package or a GPU, the reason is given
            assert cuda[name] is not None and ("not installed" in cuda[name]) == (not installed), (name, cuda[name])
        else:
            assert cuda[name] is None  # installed, on a machine with a GPU: usable
    with pytest.raises(ValueError):
        choose_backend("fastest", torch.device("cpu"))
    assert ATTENTION_CHOICES[0] == "auto"


def transformer_inputs(dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    return dict(
        hidden_states=r(1, 16, 2, 4, 4), timestep=torch.tensor([500.0]), encoder_hidden_states=r(1, 5, 64),
        encoder_attention_mask=torch.ones(1, 5, dtype=torch.bool), pooled_projections=r(1, 32), image_embeds=r(1, 16, 32),
        indices_latents=torch.arange(1, 3), guidance=torch.tensor([10000.0]), latents_clean=r(1, 16, 2, 4, 4),
        indices_latents_clean=torch.tensor([0, 3]), latents_history_2x=r(1, 16, 2, 4, 4),
        indices_latents_history_2x=torch.tensor([4, 5]), latents_history_4x=r(1, 16, 16, 4, 4),
        indices_latents_history_4x=torch.arange(6, 22), return_dict=False,
    )  # fmt: skip


@needs_shared
def test_attention_backends_agree(tiny_models):
    transformer = tiny_models("original").transformer
    inputs = transformer_inputs()
    reference = transformer(**inputs)[0]
    transformer.set_attention_backend("_native_math")
    try:
        math_out = transformer(**inputs)[0]
    finally:
        assert set_attention(transformer, "auto", torch.device("cpu")) == ("sdpa", None)
    assert torch.allclose(reference, math_out, atol=1e-5)
    assert torch.equal(transformer(**inputs)[0], reference)


FAKE_SAGE = """
import torch
calls = []

def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, smooth_k=True):
    # SageAttention 1.0.6's signature; exact attention in its place (the real one needs a GPU and Triton).
    calls.append((tensor_layout, tuple(q.shape), sm_scale))
    if tensor_layout == "NHD":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=sm_scale)
    return out.transpose(1, 2) if tensor_layout == "NHD" else out
"""


@needs_shared
def test_sageattention_1_runs_through_the_attention_dispatch(tiny_models, tmp_path, monkeypatch):
    """SageAttention 1.0.6 (what pip installs) is older than diffusers' sage backend accepts: it is registered
    under the same dispatch name, called with diffusers' (batch, tokens, heads, dim) layout. A stand-in package
    with 1.0.6's signature checks the wiring; the kernel itself needs a GPU."""
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _AttentionBackendRegistry,
    )

    (tmp_path / "sageattention").mkdir()
    (tmp_path / "sageattention" / "__init__.py").write_text(FAKE_SAGE)
    (tmp_path / "sageattention-1.0.6.dist-info").mkdir()
    (tmp_path / "sageattention-1.0.6.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: sageattention\nVersion: 1.0.6\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import sageattention

    assert availability(torch.device("cuda"))["sage"] is None
    registry = _AttentionBackendRegistry
    saved = {store: dict(getattr(registry, store)) for store in ("_backends", "_constraints", "_supported_arg_names")}
    transformer = tiny_models("original").transformer
    inputs = transformer_inputs()
    reference = transformer(**inputs)[0]
    try:
        assert set_attention(transformer, "sage", torch.device("cuda")) == ("sage", None)
        out = transformer(**inputs)[0]
    finally:
        for store, entries in saved.items():
            setattr(registry, store, entries)
        set_attention(transformer, "sdpa", torch.device("cpu"))
        sys.modules.pop("sageattention")  # the stand-in leaves with its path
    heads = transformer.config.num_attention_heads
    assert sageattention.calls and all(layout == "NHD" and shape[2] == heads for layout, shape, _ in sageattention.calls)
    assert len(sageattention.calls) == len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)
    assert torch.allclose(out, reference, atol=1e-5)
    assert registry._backends[AttentionBackendName.SAGE] is saved["_backends"][AttentionBackendName.SAGE]


@needs_shared
def test_compiled_blocks_give_the_same_output(tiny_models):
    from helpers import TINY_MODELS

    from framepack.models.components import load_transformer
    from framepack.models.sources import TRANSFORMER_REPOS

    transformer = load_transformer(TINY_MODELS / TRANSFORMER_REPOS["f1"])
    inputs = transformer_inputs()
    reference = transformer(**inputs)[0]
    compile_blocks(transformer, backend="eager")  # the wiring; inductor needs minutes on CPU
    assert all(hasattr(b, "_compiled_call_impl") and b._compiled_call_impl is not None for b in transformer.transformer_blocks)
    assert torch.allclose(transformer(**inputs)[0], reference, atol=1e-6)


def hook_names(transformer) -> set[str]:
    return {name for module in transformer.modules() if hasattr(module, "_diffusers_hook")
            for name in module._diffusers_hook.hooks}  # fmt: skip


@needs_shared
def test_cache_methods_switch_cleanly(tiny_models):
    transformer = tiny_models("original").transformer
    inputs = transformer_inputs()
    reference = transformer(**inputs)[0]
    hooks_before = hook_names(transformer)
    teacache = configure_cache(transformer, "teacache")
    assert teacache.threshold == 0.15 and has_teacache(transformer)
    magcache = configure_cache(transformer, "magcache", steps=10)
    assert magcache.threshold == 0.1 and not has_teacache(transformer) and transformer.is_cache_enabled
    first_block = configure_cache(transformer, "first_block", 0.1)
    assert first_block.method == "first_block" and not has_teacache(transformer) and transformer.is_cache_enabled
    assert configure_cache(transformer, None) is None
    assert not has_teacache(transformer) and not transformer.is_cache_enabled
    assert hook_names(transformer) == hooks_before
    assert torch.equal(transformer(**inputs)[0], reference)  # no hook left in the way
    with pytest.raises(ValueError):
        configure_cache(transformer, "magic")


def magcache_runs(steps: int, threshold: float, max_skips: int = 3, retention: float = 0.2) -> int:
    """How many of `steps` calls MagCache lets run the blocks: the rule of the MagCache paper, applied to the
    published FramePack ratios (interpolated to `steps` by nearest neighbour)."""
    ratios = [FRAMEPACK_MAG_RATIOS[round(i * 24 / (steps - 1))] for i in range(steps)]
    runs, ratio, error, skipped = 0, 1.0, 0.0, 0
    for step in range(steps):
        if step >= int(retention * steps + 0.5):
            ratio *= ratios[step]
            error += abs(1 - ratio)
            skipped += 1
            if runs and error <= threshold and skipped <= max_skips:
                continue
            ratio, error, skipped = 1.0, 0.0, 0
        runs += 1
    return runs


@needs_shared
@pytest.mark.parametrize("method", ["teacache", "magcache", "first_block"])
def test_jobs_run_with_each_cache_and_report_it(tiny_models, tmp_path, method):
    threshold = {"teacache": 0.3, "magcache": 0.1, "first_block": 0.3}[method]
    settings = Settings(variant="f1", total_second_length=1.2, steps=12, height=64, width=96, cache_method=method,
                        cache_threshold=threshold, cfg=2.0)  # fmt: skip
    events = list(generate(tiny_models("f1"), settings, IMAGE, tmp_path, previews=False))
    done = events[-1]
    assert isinstance(done, Done) and done.step_cache == method and done.attention == "sdpa"
    assert any(isinstance(e, Status) and f"step cache: {method} (threshold {threshold:g})" in e.message for e in events)
    counts = next(e for e in events if isinstance(e, SectionDone)).cache_counts
    assert set(counts) == {"positive", "negative"}  # real CFG: each pass has its own cache
    for computed, skipped in counts.values():
        assert computed + skipped == 12
        if method == "magcache":  # decided by the ratios alone, whatever the weights
            assert computed == magcache_runs(12, threshold) < 12
        else:
            assert skipped >= 1  # a high threshold skips some middle steps
    transformer = tiny_models("f1").transformer  # shared with other callers: the job's cache is gone
    assert not has_teacache(transformer) and not transformer.is_cache_enabled
    assert not any(name.startswith("framepack_") for name in hook_names(transformer))
