"""Step caching for the transformer: TeaCache as FramePack uses it, built on diffusers' hook system, or
diffusers' own MagCache or First Block Cache.

TeaCache watches how much the first block's modulated input changes between steps (rescaled by a polynomial
fitted for HunyuanVideo). While the accumulated change stays under the threshold the whole block stack is
skipped and the residual it added last time is reused. MagCache decides the same from calibrated ratios of
the residual's magnitude between steps, so its skips depend on the step schedule alone. diffusers keys the
state by the `cache_context` name, so the positive and negative passes of real CFG keep separate caches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from ..settings import CACHE_METHODS

_HEAD_HOOK = "framepack_teacache_head"
_BLOCK_HOOK = "framepack_teacache_block"

# FramePack's rescale polynomial for HunyuanVideo's relative L1 change (highest power first).
TEACACHE_POLYNOMIAL = np.poly1d([7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02])

# MagCache's magnitude ratios for FramePack (mean norm ratio of the block stack's residual between successive
# steps of FramePack's 25-step UniPC schedule), as calibrated by MagCache's authors for their FramePack demos.
# diffusers interpolates them to other step counts.
FRAMEPACK_MAG_RATIOS = [1.0, 1.25781, 1.08594, 1.02344, 1.00781, 1.02344, 1.00781, 1.02344, 1.05469, 0.99609, 1.03906,
                        1.00781, 1.01562, 1.00781, 1.02344, 1.01562, 0.98047, 1.05469, 0.98047, 0.96875, 1.03125,
                        0.97266, 0.9375, 0.96484, 0.78516]  # fmt: skip
# Their FramePack demos' defaults: at most 3 skipped steps in a row, none in the first 20% of the steps.
MAGCACHE_MAX_SKIPS = 3
MAGCACHE_RETENTION = 0.2


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
            return hidden_states + state.residual, encoder_hidden_states
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
    blocks = _blocks(transformer)
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


def remove_teacache(transformer: torch.nn.Module) -> None:
    blocks = _blocks(transformer)
    for i, block in enumerate(blocks):
        registry = HookRegistry.check_if_exists_or_initialize(block)
        registry.remove_hook(_HEAD_HOOK if i == 0 else _BLOCK_HOOK, recurse=False)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


def has_teacache(transformer: torch.nn.Module) -> bool:
    registry = getattr(transformer.transformer_blocks[0], "_diffusers_hook", None)
    return registry is not None and registry.get_hook(_HEAD_HOOK) is not None


class CallCount(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls = 0


class CallCounter(ModelHook):
    """Counts the calls that reach a block, per cache context."""

    _is_stateful = True

    def __init__(self) -> None:
        super().__init__()
        self.state_manager = StateManager(CallCount)

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        self.state_manager.get_state().calls += 1
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module

    def counts(self) -> dict[str, int]:
        return {name: state.calls for name, state in self.state_manager._state_cache.items()}


_CALLS_HOOK = "framepack_transformer_calls"  # outermost hook on the first block: every transformer call
_RUNS_HOOK = "framepack_block_stack_runs"  # innermost hook on the last block: calls that ran the whole stack

DEFAULT_THRESHOLDS = {"teacache": 0.15, "magcache": 0.1, "first_block": 0.05}
DEFAULT_THRESHOLDS_TEXT = ", ".join(f"{threshold:g} {method}" for method, threshold in DEFAULT_THRESHOLDS.items())


class StepCache:
    """The step cache of the next job: FramePack's TeaCache, or diffusers' MagCache or First Block Cache.

    `reset` starts a fresh cache (every section, as FramePack does); `counts` tells how many transformer calls
    ran or skipped the block stack since then, per pass.
    """

    def __init__(self, transformer: torch.nn.Module, method: str, threshold: float, steps: int):
        self.transformer, self.method, self.threshold = transformer, method, threshold
        first, last = _blocks(transformer)[0], _blocks(transformer)[-1]
        # A hook sees only the calls that the hooks registered after it let through.
        self._runs = CallCounter()
        HookRegistry.check_if_exists_or_initialize(last).register_hook(self._runs, _RUNS_HOOK)
        if method == "teacache":
            apply_teacache(transformer, TeaCacheConfig(threshold=threshold))
        elif method == "magcache":
            config = MagCacheConfig(
                threshold=threshold,
                max_skip_steps=MAGCACHE_MAX_SKIPS,
                retention_ratio=MAGCACHE_RETENTION,
                num_inference_steps=steps,
                mag_ratios=FRAMEPACK_MAG_RATIOS,
            )
            transformer.enable_cache(config)
        else:
            transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
        self._calls = CallCounter()
        HookRegistry.check_if_exists_or_initialize(first).register_hook(self._calls, _CALLS_HOOK)
        HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()

    def reset(self) -> None:
        self.transformer._reset_stateful_cache()

    def counts(self) -> dict[str, tuple[int, int]]:
        """(calls that ran the block stack, calls that skipped it) per pass ("positive", "negative")."""
        runs = self._runs.counts()
        return {name: (runs.get(name, 0), calls - runs.get(name, 0)) for name, calls in self._calls.counts().items()}


def _blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]


def _remove_hook(module: torch.nn.Module, name: str) -> None:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None:
        registry.remove_hook(name, recurse=False)


def configure_cache(
    transformer: torch.nn.Module, method: str | None, threshold: float | None = None, steps: int = 25
) -> StepCache | None:
    """Replace whatever step cache the transformer has by `method` (None: no cache) for the next job of
    `steps` sampling steps per section."""
    # Outermost hooks first: diffusers relinks a removed hook's neighbours correctly only from the outside in.
    _remove_hook(_blocks(transformer)[0], _CALLS_HOOK)
    if has_teacache(transformer):
        remove_teacache(transformer)
    if getattr(transformer, "is_cache_enabled", False):
        transformer.disable_cache()
    _remove_hook(_blocks(transformer)[-1], _RUNS_HOOK)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    if method is None:
        return None
    if method not in CACHE_METHODS:
        raise ValueError(f"cache method must be one of {', '.join(CACHE_METHODS)}, got {method!r}")
    return StepCache(transformer, method, DEFAULT_THRESHOLDS[method] if threshold is None else threshold, steps)
