"""Attention backends through diffusers' attention dispatch, detected at run time.

The GPU-only kernels (SageAttention, flash-attn, xformers) are optional packages; a backend that cannot run
here is reported with the reason, never crashed on. "auto" takes the best available in FramePack's order of
preference and falls back to PyTorch's scaled dot-product attention, which runs everywhere.

SageAttention as `pip install sageattention` gives it (1.0.6) is older than diffusers' sage backend accepts
(2.1.1, built from source); for 1.x this module registers its own function under diffusers' "sage" name, so
the same dispatch runs it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging

import torch
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    _AttentionBackendRegistry,
    _check_attention_backend_requirements,
)

logger = logging.getLogger(__name__)

# Our names for the backends users know -> diffusers' dispatch names.
BACKENDS = {"sdpa": "native", "sage": "sage", "flash": "flash", "xformers": "xformers"}
ATTENTION_CHOICES = ("auto", *BACKENDS)
AUTO_ORDER = ("sage", "flash", "xformers", "sdpa")
_PACKAGES = {"sage": "sageattention", "flash": "flash_attn", "xformers": "xformers"}


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why backend `name` cannot run on `device`, or None if it can."""
    if name == "sdpa":
        return None
    if device.type != "cuda":
        return f"{name} needs an NVIDIA GPU"
    if importlib.util.find_spec(_PACKAGES[name]) is None:
        return f"the {_PACKAGES[name]} package is not installed"
    if name == "sage" and _sage_v1():
        return None
    try:
        _check_attention_backend_requirements(AttentionBackendName(BACKENDS[name]))
    except (RuntimeError, ImportError) as exc:  # diffusers explains version problems
        return str(exc)
    return None


def availability(device: torch.device) -> dict[str, str | None]:
    """Every backend with the reason it is unavailable (None when it can be used)."""
    return {name: unavailable_reason(name, device) for name in BACKENDS}


def choose_backend(requested: str, device: torch.device) -> tuple[str, str | None]:
    """(backend to use, a note for the user when the request could not be honoured)."""
    if requested not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_CHOICES)}, got {requested!r}")
    if requested == "auto":
        return next(name for name in AUTO_ORDER if unavailable_reason(name, device) is None), None
    reason = unavailable_reason(requested, device)
    if reason is None:
        return requested, None
    return "sdpa", f"{requested} attention is not available ({reason}); using PyTorch SDPA"


def set_attention(transformer: torch.nn.Module, requested: str, device: torch.device) -> tuple[str, str | None]:
    """Switch the transformer's attention backend for computing on `device`; returns the backend used and a
    note if it differs from the request."""
    name, note = choose_backend(requested, device)
    if note:
        logger.warning(note)
    if name == "sage" and _sage_v1():
        # diffusers' own setter refuses SageAttention 1; its processors take the backend all the same.
        _AttentionBackendRegistry.register(AttentionBackendName.SAGE)(_sage_v1_attention)
        for module in transformer.modules():
            processor = getattr(module, "processor", None)
            if processor is not None and hasattr(processor, "_attention_backend"):
                processor._attention_backend = AttentionBackendName.SAGE
    else:
        transformer.set_attention_backend(BACKENDS[name])
    return name, note


def _sage_v1() -> bool:
    """Whether the installed SageAttention is a 1.x release (diffusers' sage backend needs 2.1.1 or newer)."""
    try:
        return importlib.metadata.version("sageattention").startswith("1.")
    except importlib.metadata.PackageNotFoundError:
        return False


def _sage_v1_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """SageAttention 1 on diffusers' (batch, tokens, heads, head dim) layout. It takes no mask: FramePack's
    transformer runs batches of one with the text cut to its real length, which need none."""
    from sageattention import sageattn

    if attn_mask is not None:
        raise ValueError("SageAttention takes no attention mask; run batches of one, or use --attention sdpa")
    return sageattn(query, key, value, tensor_layout="NHD", is_causal=is_causal, sm_scale=scale)
