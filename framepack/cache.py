"""Step caching for the transformer: TeaCache as FramePack uses it, built on diffusers' hook system, or
diffusers' own First Block Cache.

TeaCache watches how much the first block's modulated input changes between steps (rescaled by a polynomial
fitted for HunyuanVideo). While the accumulated change stays under the threshold the whole block stack is
skipped and the residual it added last time is reused. diffusers keys the state by the `cache_context` name,
so the positive ("cond") and negative ("uncond") passes of real CFG keep separate caches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.hooks import FirstBlockCacheConfig

from .settings import CACHE_METHODS
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

_HEAD_HOOK = "framepack_teacache_head"
_BLOCK_HOOK = "framepack_teacache_block"

# FramePack's rescale polynomial for HunyuanVideo's relative L1 change (highest power first).
TEACACHE_POLYNOMIAL = np.poly1d([7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02])


@dataclass
class TeaCacheConfig:
    threshold: float = 0.15


class TeaCacheState(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.accumulated = 0.0
        self.previous_modulated: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.stack_input: torch.Tensor | None = None
        self.should_compute = True
        self.computed_calls = 0
        self.skipped_calls = 0


class TeaCacheHeadHook(ModelHook):
    """On the first block: decide whether this call runs the block stack, and apply the cached residual if not."""

    _is_stateful = True

    def __init__(self, state_manager: StateManager, threshold: float):
        super().__init__()
        self.state_manager = state_manager
        self.threshold = threshold

    def new_forward(self, module: torch.nn.Module, hidden_states, encoder_hidden_states, temb, *args, **kwargs):
        state: TeaCacheState = self.state_manager.get_state()
        context = self.state_manager.context
        modulated = module.norm1(hidden_states, emb=temb)[0]
        first_or_last = context.step_index in (0, context.num_inference_steps - 1)
        if first_or_last or state.previous_modulated is None or state.residual is None:
            compute = True
            state.accumulated = 0.0
        else:
            previous = state.previous_modulated
            change = ((modulated - previous).abs().mean() / previous.abs().mean()).item()
            state.accumulated += float(TEACACHE_POLYNOMIAL(change))
            compute = state.accumulated >= self.threshold
            if compute:
                state.accumulated = 0.0
        state.previous_modulated = modulated
        state.should_compute = compute
        if not compute:
            state.skipped_calls += 1
            return hidden_states + state.residual, encoder_hidden_states
        state.computed_calls += 1
        state.stack_input = hidden_states
        return self.fn_ref.original_forward(hidden_states, encoder_hidden_states, temb, *args, **kwargs)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module


class TeaCacheBlockHook(ModelHook):
    """On every later block: pass through when the stack is skipped; the last block stores the stack's residual."""

    def __init__(self, state_manager: StateManager, is_tail: bool):
        super().__init__()
        self.state_manager = state_manager
        self.is_tail = is_tail

    def new_forward(self, module: torch.nn.Module, hidden_states, encoder_hidden_states, *args, **kwargs):
        state: TeaCacheState = self.state_manager.get_state()
        if not state.should_compute:
            return hidden_states, encoder_hidden_states
        output = self.fn_ref.original_forward(hidden_states, encoder_hidden_states, *args, **kwargs)
        if self.is_tail:
            state.residual = output[0] - state.stack_input
            state.stack_input = None
        return output


def apply_teacache(transformer: torch.nn.Module, config: TeaCacheConfig) -> StateManager:
    """Attach TeaCache to a HunyuanVideo(-Framepack) transformer. Every call must run inside
    `transformer.cache_context(name, step_index=i, num_inference_steps=n)`."""
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    state_manager = StateManager(TeaCacheState)
    HookRegistry.check_if_exists_or_initialize(blocks[0]).register_hook(
        TeaCacheHeadHook(state_manager, config.threshold), _HEAD_HOOK
    )
    for i, block in enumerate(blocks[1:], start=2):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(
            TeaCacheBlockHook(state_manager, is_tail=i == len(blocks)), _BLOCK_HOOK
        )
    # `cache_context` finds hooks through a cached list of the model's registries.
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    return state_manager


def teacache_counts(state_manager: StateManager) -> dict[str, tuple[int, int]]:
    """(calls that ran the blocks, calls that skipped them) for each cache context since the last reset."""
    return {name: (state.computed_calls, state.skipped_calls) for name, state in state_manager._state_cache.items()}


def remove_teacache(transformer: torch.nn.Module) -> None:
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    for i, block in enumerate(blocks):
        registry = HookRegistry.check_if_exists_or_initialize(block)
        registry.remove_hook(_HEAD_HOOK if i == 0 else _BLOCK_HOOK, recurse=False)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


def has_teacache(transformer: torch.nn.Module) -> bool:
    registry = getattr(transformer.transformer_blocks[0], "_diffusers_hook", None)
    return registry is not None and registry.get_hook(_HEAD_HOOK) is not None


DEFAULT_THRESHOLDS = {"teacache": 0.15, "first_block": 0.05}


class StepCache:
    """The step cache of the next job: FramePack's TeaCache, or diffusers' First Block Cache.

    `reset` starts a fresh cache (every section, as FramePack does); `counts` tells how many transformer calls
    ran or skipped the blocks since then, per pass (TeaCache only; diffusers' caches do not count).
    """

    def __init__(self, transformer: torch.nn.Module, method: str, threshold: float):
        self.transformer, self.method, self.threshold = transformer, method, threshold
        self._teacache: StateManager | None = None
        if method == "teacache":
            self._teacache = apply_teacache(transformer, TeaCacheConfig(threshold=threshold))
        else:
            transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))

    def reset(self) -> None:
        if self._teacache is not None:
            self._teacache.reset()
        else:
            self.transformer._reset_stateful_cache()

    def counts(self) -> dict[str, tuple[int, int]]:
        return teacache_counts(self._teacache) if self._teacache is not None else {}


def configure_cache(transformer: torch.nn.Module, method: str | None, threshold: float | None = None) -> StepCache | None:
    """Replace whatever step cache the transformer has by `method` (None: no cache) for the next job."""
    if has_teacache(transformer):
        remove_teacache(transformer)
    if getattr(transformer, "is_cache_enabled", False):
        transformer.disable_cache()
    if method is None:
        return None
    if method not in CACHE_METHODS:
        raise ValueError(f"cache method must be one of {', '.join(CACHE_METHODS)}, got {method!r}")
    return StepCache(transformer, method, DEFAULT_THRESHOLDS[method] if threshold is None else threshold)
