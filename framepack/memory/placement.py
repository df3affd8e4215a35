"""Memory placement: putting each component where a memory plan (`framepack.memory.planning`) wants it.

The transformer's weights may be stored in 8 bits (`framepack.models.fp8`) and streamed to the GPU block by
block (diffusers' group offloading, on CUDA streams where the plan says so), the Llama encoder streamed layer by
layer; the smaller components stay in system memory and visit the GPU only for their phase. What the components
are and where they come from is `framepack.models`; this module only moves them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.hooks import HookRegistry, apply_group_offloading
from diffusers.hooks.group_offloading import (
    _GROUP_OFFLOADING,
    _LAYER_EXECUTION_TRACKER,
    _LAZY_PREFETCH_GROUP_OFFLOADING,
)
from safetensors import safe_open

from ..models.components import COMPONENTS, ModelSet
from ..models.fp8 import enable_fp8
from .planning import MemoryPlan, Streaming


def _is_streamed(module: torch.nn.Module) -> bool:
    return any(
        hasattr(m, "_diffusers_hook") and m._diffusers_hook.get_hook(_GROUP_OFFLOADING) is not None
        for m in module.modules()
    )


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where a module computes: its group offloading's onload device, else where its first weight is.

    A streamed model's weights rest on the CPU between forwards, so `module.device` would say "cpu"; inputs
    must be made on the execution device instead.
    """
    for m in module.modules():
        hook = m._diffusers_hook.get_hook(_GROUP_OFFLOADING) if hasattr(m, "_diffusers_hook") else None
        if hook is not None:
            return hook.config.onload_device
    return next(itertools.chain(module.parameters(), module.buffers())).device


def _clear_streaming(module: torch.nn.Module) -> None:
    """Remove diffusers' group offloading from a module (so a new plan can be applied) and gather it on the CPU."""
    if not _is_streamed(module):
        return
    registry = HookRegistry.check_if_exists_or_initialize(module)
    for name in (_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _LAZY_PREFETCH_GROUP_OFFLOADING):
        registry.remove_hook(name, recurse=True)
    module.to("cpu")


def _pin(module: torch.nn.Module) -> None:
    """Page-lock the CPU weights one tensor at a time, in place.

    diffusers pins a copy of every weight when it sets up streams, which would need the whole model twice
    in RAM for a moment; it reuses tensors that are pinned already, so pinning first avoids the copy.
    """
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.device.type == "cpu" and not tensor.is_pinned():
            tensor.data = tensor.data.pin_memory()


def _stream(module: torch.nn.Module, device: torch.device, streaming: Streaming) -> None:
    """Apply group offloading: `streaming.resident_blocks` first blocks stay on `device`, the rest stream."""
    module.to("cpu")
    options = dict(
        onload_device=device,
        offload_device=torch.device("cpu"),
        use_stream=streaming.use_stream,
        record_stream=streaming.record_stream,
        low_cpu_mem_usage=streaming.use_stream and not streaming.pin_memory,
    )
    if streaming.offload_type == "leaf_level":
        if streaming.pin_memory:
            _pin(module)
        apply_group_offloading(module, offload_type="leaf_level", **options)
        return
    lists = [(name, child) for name, child in module.named_children() if isinstance(child, torch.nn.ModuleList)]
    blocks = [block for _, child in lists for block in child]
    resident = blocks[: streaming.resident_blocks]
    for block in resident:
        block.to(device)
    if streaming.pin_memory:
        _pin(module)  # only what stays on the CPU is left to pin
    # diffusers forms its groups from the model's ModuleLists when it installs the hooks. To keep some blocks
    # out of them, the lists hold only the streamed blocks while the hooks go in; the forward pass then runs
    # the resident blocks without hooks (their weights already on the device) and the rest through them.
    try:
        for name, child in lists:
            setattr(module, name, torch.nn.ModuleList([b for b in child if not any(b is r for r in resident)]))
        apply_group_offloading(module, offload_type="block_level", num_blocks_per_group=1, **options)
    finally:
        for name, child in lists:
            setattr(module, name, child)


@dataclass
class FileStreaming:
    """Blocks of a module that stay in its safetensors files: where each tensor is (file, name there), and the
    device and dtype they are read to (a new plan may change the device)."""

    blocks: str  # the name of the module's block list
    files: dict[str, tuple[Path, str]]  # the module's tensor name -> (file, the tensor's name in it)
    device: torch.device
    dtype: torch.dtype
    reads: int = 0  # blocks read so far: what new prompts cost, counted


def stream_from_files(
    module: torch.nn.Module, blocks: str, files: dict[str, tuple[Path, str]], device: torch.device, dtype: torch.dtype
) -> None:
    """Leave the blocks of `module` (a meta-device skeleton) in their files: each block's weights are read from
    the memory-mapped safetensors files onto `device` right before it runs and dropped right after, so they
    never take RAM beyond the page cache, which the system reclaims at will. The rest (embeddings, the final
    norm, buffers) is read onto `device` now. Meant for the Llama encoder where RAM cannot hold it: it runs
    once per new prompt, at the cost of reading its files again."""
    streaming = FileStreaming(blocks, files, device, dtype)
    prefix = f"{blocks}."
    _read_tensors(module, [name for name in files if not name.startswith(prefix)], streaming)
    _move_held(module, device)  # the buffers (rotary frequencies) the skeleton computed

    def drop(block: torch.nn.Module, args: Any, output: Any) -> None:
        for owner in block.modules():
            for name, parameter in list(owner._parameters.items()):
                if parameter is not None:
                    owner._parameters[name] = torch.nn.Parameter(parameter.to("meta"), requires_grad=False)

    for index, block in enumerate(getattr(module, blocks)):
        names = [name for name in files if name.startswith(f"{prefix}{index}.")]

        def read(block: torch.nn.Module, args: Any, names: list[str] = names) -> None:
            _read_tensors(module, names, streaming)
            streaming.reads += 1

        block.register_forward_pre_hook(read)
        block.register_forward_hook(drop)
    module._framepack_file_streaming = streaming


def _read_tensors(module: torch.nn.Module, names: list[str], streaming: FileStreaming) -> None:
    owners = dict(module.named_modules())
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(streaming.files[name][0], []).append(name)
    for path, in_file in by_file.items():
        with safe_open(str(path), "pt") as tensors:
            for name in in_file:
                owner_name, _, attribute = name.rpartition(".")
                tensor = tensors.get_tensor(streaming.files[name][1]).to(streaming.device, streaming.dtype)
                owners[owner_name]._parameters[attribute] = torch.nn.Parameter(tensor, requires_grad=False)


def _move_held(module: torch.nn.Module, device: torch.device) -> None:
    """Move the tensors a file-streamed module holds (not its blocks, which are on the meta device) to `device`."""
    for owner in module.modules():
        for store in (owner._parameters, owner._buffers):
            for key, tensor in list(store.items()):
                if tensor is not None and tensor.device.type != "meta":
                    moved = tensor.detach().to(device)
                    store[key] = torch.nn.Parameter(moved, requires_grad=False) if store is owner._parameters else moved


def file_streaming(module: torch.nn.Module) -> FileStreaming | None:
    """How a module's blocks stream from its files, if they do (see `stream_from_files`)."""
    return getattr(module, "_framepack_file_streaming", None)


def place_component(name: str, module: torch.nn.Module, plan: MemoryPlan) -> torch.nn.Module:
    """Put one loaded component where `plan` wants it; the loader calls this right after loading each one.

    The transformer becomes fp8 first when the plan says so (on the CPU, so only 8-bit weights travel).
    Calling it again with another plan re-places the component (fp8 cannot be undone: reload for that).
    """
    device = torch.device(plan.device)
    from_files = file_streaming(module)
    if from_files is not None:  # its blocks read from the files onto the compute device, the rest kept there
        from_files.device = torch.device("cpu") if plan.mode == "cpu" else device
        _move_held(module, from_files.device)
        return module
    if name == "transformer" and plan.fp8:
        enable_fp8(module, matmuls=plan.fp8_matmuls)
    if name in ("transformer", "text_encoder"):
        _clear_streaming(module)
    if plan.mode == "high":
        module.to(device)
    elif plan.mode == "low" and name in ("transformer", "text_encoder"):
        _stream(module, device, plan.transformer if name == "transformer" else plan.text_encoder)
    else:
        module.to("cpu")
    if name == "vae" and plan.vae_tiling:
        module.enable_tiling()
    return module


@contextlib.contextmanager
def on_device(module: torch.nn.Module, device: str | torch.device) -> Iterator[torch.nn.Module]:
    """Run a block of code with `module`'s weights on `device`, then put the module back as it was.

    Each weight is replaced by a copy on `device` for the block and the original tensor object is put back
    afterwards: weights are read-only during inference, so nothing is copied back (no device-to-host copy,
    pinned memory stays pinned, tied weights stay tied). Streamed modules (group offloading) and modules
    already on `device` are left alone.
    """
    device = torch.device(device)
    if _is_streamed(module) or file_streaming(module) is not None or all(
        _same_device(t.device, device) for t in itertools.chain(module.parameters(), module.buffers())
    ):
        yield module
        return
    copies: dict[int, torch.Tensor] = {}
    replaced: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    try:
        for submodule in module.modules():
            for store in (submodule._parameters, submodule._buffers):
                for name, tensor in list(store.items()):
                    if tensor is None:
                        continue
                    if id(tensor) not in copies:
                        copy = tensor.detach().to(device, non_blocking=True)
                        if isinstance(tensor, torch.nn.Parameter):
                            copy = torch.nn.Parameter(copy, requires_grad=tensor.requires_grad)
                        copies[id(tensor)] = copy
                    replaced.append((store, name, tensor))
                    store[name] = copies[id(tensor)]
        yield module
    finally:
        for store, name, tensor in replaced:
            store[name] = tensor


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


@dataclass
class Placement:
    """A model set placed by a plan: the device it computes on and phases that bring modules to it."""

    plan: MemoryPlan

    @property
    def device(self) -> torch.device:
        return torch.device(self.plan.device)

    @contextlib.contextmanager
    def phase(self, *modules: torch.nn.Module) -> Iterator[None]:
        """Bring CPU-resident `modules` to the GPU for the block (low mode); a no-op in high and cpu modes."""
        with contextlib.ExitStack() as stack:
            if self.plan.mode == "low":
                for module in modules:
                    stack.enter_context(on_device(module, self.device))
            yield


def apply_plan(models: ModelSet, plan: MemoryPlan) -> Placement:
    """Put every component of a loaded set where `plan` wants it (see `place_component`); one out of memory is
    placed so when it comes back."""
    for name in COMPONENTS:
        if getattr(models, name) is not None:
            place_component(name, getattr(models, name), plan)
    if models.loader is not None:
        models.loader.plan = plan
    return Placement(plan)

