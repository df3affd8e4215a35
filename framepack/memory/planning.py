"""The memory plan: what is free, what each component and each phase needs, and where everything should live.

FramePack's rule decides the mode: with more than 60 GB of free GPU memory everything stays on the GPU
("high"); otherwise ("low") the text encoders, image encoder and VAE stay on the CPU and visit the GPU only
for their phase (the 15 GB Llama streams layer by layer, since it may not fit at all), the transformer's
blocks stream to the GPU one at a time with diffusers' group offloading, and the VAE decodes in tiles.
Without a GPU everything runs on the CPU ("cpu").

"GPU memory to preserve" means what it means in FramePack: how much GPU memory the *weights* leave free,
for activations and other programs. The plan keeps as many transformer blocks permanently on the GPU as
that allows (fewer transfers per step, faster); when even streaming every block cannot leave that much
free, it streams every block anyway, as FramePack does, as long as the whole peak, activations included,
fits in free GPU memory.

Planning is pure: it reads sizes and free memory and never moves a model (`framepack.memory.placement` does).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..media.images import buckets
from ..models.checkpoints import GGUF_BLOCKS, inspect_transformer_file
from ..models.components import COMPONENTS, resolve_dtypes
from ..models.fp8 import fp8_matmul_problem
from ..settings import Settings, SettingsError
from .sensing import DeviceMemory, detect_device
from .sizes import (
    GB,
    LoraBytes,
    ModelConfigs,
    ModelSizes,
    ModuleSize,
    file_configs,
    gb,
    published_sizes,
)
from .workload import ACTIVATION_MARGIN, Workload, section_tokens, workload


@dataclass(frozen=True)
class Streaming:
    """How a component's weights reach the GPU: diffusers' group offloading settings, and blocks kept resident.

    `offload_type` None means no streaming (the component is wherever the mode puts it); "from_file" keeps the
    blocks in the model's safetensors files, each read onto the GPU right before it runs (`stream_from_files`,
    for the Llama encoder where RAM cannot hold it). `resident_blocks`
    counts the first blocks in execution order (the 20 dual-stream blocks, then the 40 single-stream ones)
    that stay on the GPU for good. Group size is always one block: diffusers forces it with CUDA streams, and
    without streams a larger group only raises the peak (every block is moved every step either way).
    """

    offload_type: str | None = None
    use_stream: bool = False
    record_stream: bool = False
    resident_blocks: int = 0
    pin_memory: bool = False
    num_blocks_per_group: int = 1



HIGH_VRAM_BYTES = 60 * GB  # FramePack: more than 60 GB free keeps every component resident


GPU_OVERHEAD = 600_000_000  # cuBLAS/cuDNN workspaces, lazily loaded kernels, allocator fragmentation


RAM_OVERHEAD = 3 * GB  # Python, torch, the CUDA runtime, gradio




LABELS = {
    "transformer": "transformer",
    "text_encoder": "Llama text encoder",
    "text_encoder_2": "CLIP text encoder",
    "image_encoder": "SigLIP image encoder",
    "vae": "VAE",
}


@dataclass(frozen=True)
class PhasePlan:
    """One phase of a job: what is on the GPU and on the CPU, and the estimated peaks in bytes."""

    name: str
    on_gpu: tuple[str, ...]
    on_cpu: tuple[str, ...]
    gpu_bytes: int
    ram_bytes: int


@dataclass(frozen=True)
class MemoryPlan:
    """Where everything lives in each phase, the estimated peaks, whether they fit, and what to change if not.

    `phases` are text encoding, image encoding, sampling, decoding; loading is `loading_ram`. Peaks are
    estimates (see the activation functions); "fits" means each peak is at most what is free. System memory
    may count free swap too: FramePack's users run on 32 GB with a page file, since the encoders idle while the
    transformer samples and the OS pages them out; it is slower, and the plan says so.
    """

    mode: str
    device: str
    reason: str
    variant: str
    frame_sizes: tuple[tuple[int, int], ...]
    window: int
    fp8: bool
    preserve: int
    vram_free: int | None
    ram_free: int | None
    transformer: Streaming
    text_encoder: Streaming
    vae_tiling: bool
    phases: tuple[PhasePlan, ...]
    loading_ram: int
    transformer_gpu_weights: int = 0  # the transformer's weights on the GPU while sampling
    transformer_blocks: int = 0
    transformer_weights: str = ""
    unified_memory: bool = False
    swap_free: int | None = None
    advice: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    fp8_matmuls: bool = False  # fp8 storage whose big matrix products run in fp8 (`placement.Fp8Linear`)
    # "resident": every component stays loaded. "phase" (RAM is short): the text encoders are loaded only to
    # encode prompts not seen before, the image encoder only for its phase, and the transformer leaves RAM while
    # the text encoders are in it (see `framepack.loading.components`).
    lifetime: str = "resident"

    @property
    def peak_gpu(self) -> int:
        return max(phase.gpu_bytes for phase in self.phases)

    @property
    def peak_ram(self) -> int:
        return max(self.loading_ram, *(phase.ram_bytes for phase in self.phases))

    @property
    def fits_gpu(self) -> bool:
        return self.mode == "cpu" or (self.vram_free is not None and self.peak_gpu <= self.vram_free)

    @property
    def fits_ram(self) -> bool:
        return self.ram_free is None or self.peak_ram <= self.ram_free + (self.swap_free or 0)

    @property
    def swap_needed(self) -> int:
        """Bytes of the peak beyond free RAM, to come from swap (0 when RAM alone is enough or unknown)."""
        return 0 if self.ram_free is None else max(0, self.peak_ram - self.ram_free)

    @property
    def fits(self) -> bool:
        return self.fits_gpu and self.fits_ram

    def phase(self, name: str) -> PhasePlan:
        return next(p for p in self.phases if p.name == name)

    def summary(self) -> str:
        """The one-line verdict; check-memory prints it last."""
        verdict = "fits" if self.fits else "does not fit"
        return f"peak GPU {self.peak_gpu / GB:.1f} GB, peak RAM {self.peak_ram / GB:.1f} GB: {verdict}"

    def problem(self) -> str:
        """What does not fit, in plain words, and what to change ('' when everything fits)."""
        problems = []
        if not self.fits_gpu:
            where = max(self.phases, key=lambda p: p.gpu_bytes).name
            free = gb(self.vram_free) if self.vram_free is not None else "no GPU memory"
            problems.append(f"the GPU needs {gb(self.peak_gpu)} at peak ({where}) but {free} is free")
        if not self.fits_ram:
            swap = f" (and {gb(self.swap_free)} of swap)" if self.swap_free else ""
            problems.append(f"system memory needs {gb(self.peak_ram)} at peak but {gb(self.ram_free)} is free{swap}")
        if not problems:
            return ""
        what = f"{self.variant} model at {_describe_sizes(self.frame_sizes)}"
        lines = [f"Not enough memory for the {what}: " + "; ".join(problems) + "."]
        lines += [f"  - {a}" for a in self.advice]
        return "\n".join(lines)

    def report(self) -> str:
        """What check-memory prints: mode, placement per phase, peaks, advice; the summary line last."""
        free_gpu = f"free GPU memory {gb(self.vram_free)}" if self.vram_free is not None else "no GPU"
        free_ram = gb(self.ram_free) if self.ram_free is not None else "unknown"
        free_swap = gb(self.swap_free) if self.swap_free is not None else "unknown"
        lines = [
            f"Device: {self.device}; {free_gpu}; free RAM {free_ram}; free swap {free_swap} (GB = 10^9 bytes)",
            f"Job: {self.variant} variant, {_describe_sizes(self.frame_sizes)}, latent window {self.window}, "
            f"transformer weights {self.transformer_weights}, "
            f"GPU memory to preserve {gb(self.preserve)}",
            f"Mode: {self.mode} ({self.reason})",
        ]
        for phase in self.phases:
            lines.append(f"  {phase.name}: GPU {gb(phase.gpu_bytes)}, RAM {gb(phase.ram_bytes)}")
            lines.append(f"      on the GPU: {', '.join(phase.on_gpu) or 'nothing'}")
            lines.append(f"      kept in RAM: {', '.join(phase.on_cpu) or 'nothing'}")
        lines.append(f"  loading: RAM {gb(self.loading_ram)} (one component at a time, transformer first)")
        lines += [f"Note: {n}" for n in self.notes]
        if not self.fits:
            lines.append(self.problem())
        lines.append(self.summary())
        return "\n".join(lines)


def _describe_sizes(sizes: Sequence[tuple[int, int]]) -> str:
    if len(sizes) == 1:
        return f"{sizes[0][0]}x{sizes[0][1]}"
    h, w = max(sizes, key=lambda s: section_tokens(s[0], s[1], 1)[1])
    return f"any of {len(sizes)} aspect buckets (largest {h}x{w})"


def _frame_sizes(resolution: int, height: int | None, width: int | None) -> tuple[tuple[int, int], ...]:
    if height is not None and width is not None:
        return ((height, width),)
    return tuple(buckets(resolution))


@dataclass(frozen=True)
class _Request:
    vram_free: int | None
    ram_free: int | None
    swap_free: int | None
    resolution: int
    height: int | None
    width: int | None
    window: int
    variant: str
    fp8: bool
    preserve: int
    device: torch.device
    dtype: str | None
    sizes: ModelSizes | None
    mode: str | None
    lora: LoraBytes | None = None
    llama_from_files: bool = False


def plan_memory(
    vram_free: int | None,
    ram_free: int | None,
    *,
    resolution: int = 640,
    height: int | None = None,
    width: int | None = None,
    window: int = 9,
    variant: str = "original",
    fp8: bool = False,
    preserve_gb: float = 6.0,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    sizes: ModelSizes | None = None,
    mode: str | None = None,
    advise: bool = True,
    swap_free: int | None = None,
    lora: LoraBytes | None = None,
    llama_from_files: bool = False,
) -> MemoryPlan:
    """Plan a job's memory for `vram_free` / `ram_free` bytes free (None: no GPU / RAM unknown), with
    `swap_free` bytes of swap to fall back on, and the job's LoRAs (`lora`).

    Without `height`/`width` the plan covers every aspect bucket of `resolution` (the image decides the
    bucket later). `device` defaults to "cuda" when there is GPU memory, else "cpu". `sizes` defaults to the
    published model in the dtypes `dtype` gives on that device (as `resolve_dtypes`); pass `ModelSizes.of(models)`
    to plan a loaded set. `mode` forces "high", "low" or "cpu" (replanning a loaded set keeps its mode), and
    `llama_from_files` reading the Llama encoder from its files in low mode (else chosen where RAM is that short).
    """
    device = torch.device(device if device is not None else "cuda" if vram_free is not None else "cpu")
    request = _Request(
        vram_free, ram_free, swap_free, resolution, height, width, window, variant, fp8, int(preserve_gb * GB), device, dtype,
        sizes, mode, lora, llama_from_files,
    )  # fmt: skip
    transformer_dtype, encoder_dtype = resolve_dtypes(dtype, device)
    if sizes is None:
        sizes = published_sizes(transformer_dtype, encoder_dtype, fp8)
    elif sizes.fp8 != fp8:
        raise ValueError(f"the sizes are {'fp8' if sizes.fp8 else 'not fp8'} but the plan asks fp8={fp8}")
    frame_sizes = _frame_sizes(resolution, height, width)
    compute_bytes = torch.empty((), dtype=sizes.transformer_dtype).element_size()
    work = workload(sizes, frame_sizes, window, variant, compute_bytes)

    automatic = mode is None
    if automatic:
        mode = "cpu" if device.type == "cpu" or vram_free is None else "high" if vram_free > HIGH_VRAM_BYTES else "low"
    if mode != "cpu" and vram_free is None:
        raise ValueError(f"a {mode} plan needs the free GPU memory")
    if mode == "cpu":
        plan = _cpu_plan(request, sizes, work)
    elif mode == "high":
        plan = _high_plan(request, sizes, work)
        if automatic and not plan.fits_gpu:
            plan = _low_plan(request, sizes, work, "more than 60 GB free, but not enough to keep everything resident")
    else:
        reason = f"{gb(vram_free)} free is not more than 60 GB" if automatic else "asked for"
        plan = _low_plan(request, sizes, work, reason)
    if device.type == "mps":
        # Apple GPUs use system memory: what sits on the GPU is taken from RAM too.
        phases = tuple(replace(p, ram_bytes=p.ram_bytes + p.gpu_bytes) for p in plan.phases)
        plan = replace(plan, phases=phases, unified_memory=True)
    weights = "fp8 storage" if fp8 else str(sizes.transformer_dtype).removeprefix("torch.")
    if sizes.quantized:
        weights = f"GGUF {sizes.quantized.upper()}, computing in {weights}"
    plan = replace(plan, transformer_weights=weights, swap_free=swap_free)
    if lora is not None and (lora.adapters or lora.touched):
        plan = _with_loras(plan, lora, fusable=not sizes.quantized)
    if advise:
        plan = replace(plan, advice=_advice(plan, request), notes=plan.notes + _notes(plan))
    return plan


def plan_for_settings(
    settings: Settings, vram_free: int | None, ram_free: int | None, **options: Any
) -> MemoryPlan:
    """`plan_memory` for a job's settings (size, window, variant, GPU memory to preserve, dtype)."""
    return plan_memory(
        vram_free,
        ram_free,
        resolution=settings.resolution,
        height=settings.height,
        width=settings.width,
        window=settings.latent_window_size,
        variant=settings.variant,
        preserve_gb=settings.gpu_memory_preservation,
        dtype=settings.dtype,
        **options,
    )


def fuses_loras(mode: str, fp8: bool, quantised: bool, touched: int, room: int | None) -> bool:
    """Whether LoRAs are merged into the transformer's weights (no extra work per step) rather than run beside them:
    only where the transformer sits whole on one device in its own dtype (not streamed in low mode, not fp8, not
    quantised) and RAM has `room` for copies of the `touched` layers, to put them back exactly (None: unknown RAM,
    assumed enough). The plan counts what this rule decides and `framepack.lora` follows it."""
    return mode != "low" and not fp8 and not quantised and (room is None or touched <= room)


def _with_loras(plan: MemoryPlan, lora: LoraBytes, fusable: bool = True) -> MemoryPlan:
    """Add the LoRAs where they live: with the transformer (on the GPU in high mode, else in RAM), plus the
    copies of the touched layers in RAM where `fuses_loras` says they are fused (`fusable` False: quantised
    weights)."""
    gpu = lora.adapters if plan.mode == "high" else 0

    def added(phase: PhasePlan, ram: int, label: str) -> PhasePlan:
        on_cpu = phase.on_cpu + ((label,) if ram else ())
        on_gpu = phase.on_gpu + ((f"LoRAs ({gb(lora.adapters)})",) if gpu else ())
        return replace(phase, gpu_bytes=phase.gpu_bytes + gpu, ram_bytes=phase.ram_bytes + ram, on_gpu=on_gpu, on_cpu=on_cpu)

    unfused = replace(plan, phases=tuple(added(p, lora.adapters - gpu, f"LoRAs ({gb(lora.adapters)})") for p in plan.phases))
    room = None if plan.ram_free is None else plan.ram_free - unfused.peak_ram
    if not fuses_loras(plan.mode, plan.fp8, not fusable, lora.touched, room):
        return unfused
    label = f"LoRAs fused; the touched layers' originals ({gb(lora.touched)})"
    return replace(plan, phases=tuple(added(p, lora.adapters - gpu + lora.touched, label) for p in plan.phases))


def _phase(name: str, gpu: dict[str, int], cpu: dict[str, int], gpu_extra: int, ram_extra: int) -> PhasePlan:
    """A phase from {description: bytes} of what is on each side plus activations/overheads."""
    return PhasePlan(
        name,
        tuple(f"{k} ({gb(v)})" for k, v in gpu.items()),
        tuple(f"{k} ({gb(v)})" for k, v in cpu.items()),
        sum(gpu.values()) + gpu_extra,
        sum(cpu.values()) + ram_extra,
    )


def _cpu_plan(request: _Request, sizes: ModelSizes, work: Workload) -> MemoryPlan:
    everything = {LABELS[n]: sizes[n].total for n in COMPONENTS}
    # On the CPU the VAE decodes whole, as the engine does by default, unless that alone would not fit.
    tiled = request.ram_free is not None and sizes.total + work.decode + RAM_OVERHEAD > request.ram_free
    base = RAM_OVERHEAD + work.frames_ram
    phases = (
        _phase("text encoding", {}, everything, 0, base + work.text),
        _phase("image encoding", {}, everything, 0, base + (work.image_tiled if tiled else work.image)),
        _phase("sampling", {}, everything, 0, base + work.sampling),
        _phase("decoding", {}, everything, 0, base + (work.decode_tiled if tiled else work.decode)),
    )
    return MemoryPlan(
        "cpu", str(request.device), "no GPU: everything runs on the CPU", request.variant, work.sizes, request.window,
        request.fp8, request.preserve, None, request.ram_free, Streaming(), Streaming(), tiled, phases,
        loading_ram=RAM_OVERHEAD + sizes.total - sizes["transformer"].total + sizes.transformer_loaded,
        transformer_blocks=len(sizes["transformer"].blocks),
    )  # fmt: skip


def _high_plan(request: _Request, sizes: ModelSizes, work: Workload) -> MemoryPlan:
    everything = {LABELS[n]: sizes[n].total for n in COMPONENTS}
    tiled = request.vram_free is not None and sizes.total + work.decode + GPU_OVERHEAD > request.vram_free
    base = RAM_OVERHEAD + work.frames_ram
    phases = (
        _phase("text encoding", everything, {}, GPU_OVERHEAD + work.text, base),
        _phase("image encoding", everything, {}, GPU_OVERHEAD + (work.image_tiled if tiled else work.image), base),
        _phase("sampling", everything, {}, GPU_OVERHEAD + work.sampling + _fp8_cast_bytes(sizes), base),
        _phase("decoding", everything, {}, GPU_OVERHEAD + (work.decode_tiled if tiled else work.decode), base),
    )
    # Each component goes to the GPU as soon as it is loaded, so RAM holds one at a time.
    largest = max(sizes.transformer_loaded, *(sizes[n].total for n in COMPONENTS[1:]))
    return MemoryPlan(
        "high", str(request.device), f"{gb(request.vram_free)} free is more than 60 GB: everything stays on the GPU",
        request.variant, work.sizes, request.window, request.fp8, request.preserve, request.vram_free,
        request.ram_free, Streaming(), Streaming(), tiled, phases, loading_ram=RAM_OVERHEAD + largest,
        transformer_gpu_weights=sizes["transformer"].total, transformer_blocks=len(sizes["transformer"].blocks),
    )  # fmt: skip


def _fp8_cast_bytes(sizes: ModelSizes) -> int:
    """Layerwise casting's compute-dtype copy of the running layer's fp8 weights (and the re-cast back); for a
    quantised transformer, the running layer's weights dequantised (its largest layer's bytes hold whole blocks)."""
    compute_bytes = torch.empty((), dtype=sizes.transformer_dtype).element_size()
    if sizes.quantized:
        block, block_bytes = GGUF_BLOCKS[sizes.quantized]
        return 3 * sizes["transformer"].largest_leaf * block // block_bytes * compute_bytes // 2
    if not sizes.fp8:
        return 0
    return 3 * sizes["transformer"].largest_leaf_numel * compute_bytes // 2


def _streamed_bytes(size: ModuleSize, streaming: Streaming) -> tuple[int, int]:
    """(bytes resident on the GPU for good, bytes on the GPU at once while the component runs, resident included).

    Block level: the remainder group plus the block computing and the one prefetched (and, with
    record_stream, one more whose memory the allocator cannot reuse until the GPU has finished with it).
    Leaf level: whatever is not in a leaf layer plus three leaves on the same terms.
    """
    in_flight = 3 if streaming.record_stream else 2
    if streaming.offload_type == "from_file":  # read on the GPU one block at a time, nothing prefetched
        return 0, size.remainder + max(size.blocks, default=0)
    if streaming.offload_type == "leaf_level":
        return 0, size.not_in_leaves + in_flight * size.largest_leaf
    resident = sum(size.blocks[: streaming.resident_blocks])
    streamed = size.blocks[streaming.resident_blocks :]
    return resident, resident + size.remainder + in_flight * max(streamed, default=0)


def _low_phases(
    request: _Request, sizes: ModelSizes, work: Workload, transformer: Streaming, text_encoder: Streaming,
    per_phase: bool = False,
) -> tuple[tuple[PhasePlan, ...], int]:
    resident, sampling_weights = _streamed_bytes(sizes["transformer"], transformer)
    _, llama_at_once = _streamed_bytes(sizes["text_encoder"], text_encoder)
    transformer_cpu = sizes["transformer"].total - resident
    # Weights kept on the CPU: the streamed part of the transformer, and every encoder (the phase moves copy
    # them to the GPU and keep the CPU copies, so RAM does not change during a phase). With a per-phase
    # lifetime, a phase holds only what it uses (and the transformer, once loaded, until the text encoders
    # need the room).
    everything = {
        LABELS["transformer"] + (" (streamed part)" if resident else ""): transformer_cpu,
        **{LABELS[n]: sizes[n].total for n in COMPONENTS[1:]},
    }
    from_file = text_encoder.offload_type == "from_file"
    if from_file:  # only the block being read passes through RAM; the file's pages are the system's cache
        del everything[LABELS["text_encoder"]]
        everything[f"{LABELS['text_encoder']}, the layer being read"] = max(sizes["text_encoder"].blocks, default=0)

    def held(*names: str) -> dict[str, int]:
        if not per_phase:
            return everything
        return {label: size for label, size in everything.items() if any(label.startswith(LABELS[n]) for n in names)}

    cpu = everything
    kept = {f"{transformer.resident_blocks} transformer blocks kept resident": resident} if resident else {}
    fp8_cast = _fp8_cast_bytes(sizes)
    ram = RAM_OVERHEAD + work.frames_ram
    llama_label = f"{LABELS['text_encoder']}, " + ("read from its files layer by layer" if from_file else "streamed layer by layer")
    transformer_label = (
        f"{LABELS['transformer']}, streamed "
        + ("layer by layer" if transformer.offload_type == "leaf_level" else "block by block")
        + (f" ({transformer.resident_blocks} blocks resident)" if resident else "")
    )
    text_kept = {} if per_phase else kept  # the transformer is out of memory while the text encoders are in
    phases = (
        _phase(
            "text encoding",
            {**text_kept, llama_label: llama_at_once, LABELS["text_encoder_2"]: sizes["text_encoder_2"].total},
            held("text_encoder", "text_encoder_2", "vae"), GPU_OVERHEAD + work.text, ram,
        ),
        _phase(
            "image encoding",
            {**kept, LABELS["image_encoder"]: sizes["image_encoder"].total, LABELS["vae"]: sizes["vae"].total},
            held("transformer", "image_encoder", "vae"), GPU_OVERHEAD + work.image_tiled, ram,  # low mode tiles the VAE
        ),
        _phase("sampling", {transformer_label: sampling_weights}, held("transformer", "vae"),
               GPU_OVERHEAD + work.sampling + fp8_cast, ram),
        _phase(
            "decoding", {**kept, LABELS["vae"] + ", tiled": sizes["vae"].total}, held("transformer", "vae"),
            GPU_OVERHEAD + work.decode_tiled, ram,
        ),
    )  # fmt: skip
    # Loading, transformer first: it is loaded in its file dtype, cast to fp8 if asked and its resident
    # blocks moved to the GPU before the encoders load. Per phase, only the transformer and the VAE load first.
    at_start = held("transformer", "vae") if per_phase else cpu
    loading = RAM_OVERHEAD + max(sizes.transformer_loaded, sum(at_start.values()))
    return phases, loading


def _low_plan(request: _Request, sizes: ModelSizes, work: Workload, reason: str) -> MemoryPlan:
    cuda = request.device.type == "cuda"
    free = request.vram_free or 0
    budget = free - request.preserve  # what the weights may take while leaving `preserve` free
    streamed_llama = Streaming("block_level", use_stream=cuda)
    blocks = len(sizes["transformer"].blocks)

    def build(transformer: Streaming, per_phase: bool = False, text_encoder: Streaming = streamed_llama) -> MemoryPlan:
        phases, loading = _low_phases(request, sizes, work, transformer, text_encoder, per_phase)
        return MemoryPlan(
            "low", str(request.device), reason, request.variant, work.sizes, request.window, request.fp8,
            request.preserve, request.vram_free, request.ram_free, transformer, text_encoder, True, phases, loading,
            transformer_gpu_weights=_streamed_bytes(sizes["transformer"], transformer)[1], transformer_blocks=blocks,
            lifetime="phase" if per_phase else "resident",
        )  # fmt: skip

    fastest = Streaming("block_level", use_stream=cuda, record_stream=cuda)
    lean = Streaming("block_level", use_stream=cuda)
    leaf = Streaming("leaf_level", use_stream=cuda)
    # 1. The most resident blocks whose weights leave `preserve` free and whose every phase fits.
    for resident in range(blocks, -1, -1):
        plan = build(replace(fastest, resident_blocks=resident))
        if plan.transformer_gpu_weights <= budget and plan.fits_gpu:
            break
    else:
        # 2. `preserve` cannot be honoured: stream every block anyway if everything fits (FramePack does the
        #    same), else stream layer by layer (slow, smallest), else report the leanest plan as not fitting.
        plan = next((p for p in (build(lean), build(leaf)) if p.fits_gpu), build(leaf))
    if request.ram_free is not None and plan.peak_ram > request.ram_free:
        # RAM is short: each component in RAM only while a phase needs it, rather than asking for swap.
        plan = build(plan.transformer, per_phase=True)
    if request.llama_from_files or (request.ram_free is not None and plan.peak_ram > request.ram_free):
        # Shorter still: the Llama encoder (15 GB) cannot sit in RAM even alone. Its layers are read from its
        # files onto the GPU one at a time, for each new prompt.
        from_file = build(plan.transformer, per_phase=True, text_encoder=Streaming("from_file"))
        plan = from_file if from_file.fits_gpu or request.llama_from_files else plan
    pin = cuda and plan.lifetime == "resident" and (request.ram_free is None or plan.peak_ram <= request.ram_free)
    if pin:
        # Pinned (page-locked) memory makes the stream's copies truly asynchronous, but it cannot be swapped
        # out: only pin what fits in RAM.
        plan = replace(
            plan,
            transformer=replace(plan.transformer, pin_memory=True),
            text_encoder=replace(plan.text_encoder, pin_memory=True),
        )
    return plan


def _notes(plan: MemoryPlan) -> tuple[str, ...]:
    notes = []
    if plan.mode == "low" and plan.vram_free is not None:
        left = plan.vram_free - plan.transformer_gpu_weights
        if left < plan.preserve:
            notes.append(
                f"every transformer block streams, yet its weights leave only {gb(max(left, 0))} free while sampling, "
                f"less than the {gb(plan.preserve)} you asked to preserve (FramePack streams everything then too)"
            )
        elif plan.transformer.offload_type == "block_level" and plan.transformer.resident_blocks < plan.transformer_blocks:
            notes.append(
                f"{plan.transformer.resident_blocks} of {plan.transformer_blocks} transformer blocks stay on the GPU; "
                f"less GPU memory to preserve keeps more there (faster), more leaves more free"
            )
    if plan.fits and plan.vram_free and plan.mode != "cpu" and plan.peak_gpu > 0.9 * plan.vram_free:
        notes.append("little GPU headroom: if you run out of GPU memory, lower the resolution or use --fp8")
    if plan.unified_memory:
        notes.append("this GPU shares system memory, so GPU figures are counted in RAM too")
    if plan.lifetime == "phase":
        notes.append(
            "RAM is short, so each component is in RAM only while a phase needs it: the text encoders load to encode "
            "a prompt not seen before and leave after it, and the transformer leaves RAM meanwhile (reloaded from "
            "disk: a new prompt costs a reload, a prompt used before costs nothing)"
        )
    if plan.text_encoder.offload_type == "from_file":
        notes.append(
            "the Llama text encoder does not fit in RAM even alone: its layers are read from its files onto the GPU "
            "one at a time, so a new prompt reads it from disk again (a prompt used before costs nothing)"
        )
    if plan.ram_free is None:
        notes.append("free RAM is unknown (no /proc/meminfo and psutil is not installed); RAM was not checked")
    elif plan.fits and plan.swap_needed:
        remedy = "more RAM" if plan.fp8 else "more RAM or --fp8"
        notes.append(
            f"{gb(plan.swap_needed)} beyond free RAM will come from swap: it runs, but loading is slower and so "
            f"is every phase whose weights were paged out ({remedy} avoids it)"
        )
    return tuple(notes)


def _advice(plan: MemoryPlan, request: _Request) -> tuple[str, ...]:
    """Concrete changes that would make a plan that does not fit fit, each checked by planning it."""
    if plan.fits:
        return ()

    def again(**changes: Any) -> MemoryPlan:
        base = dict(
            resolution=request.resolution, height=request.height, width=request.width, window=request.window,
            variant=request.variant, fp8=request.fp8, preserve_gb=request.preserve / GB, device=request.device,
            dtype=request.dtype, sizes=request.sizes, mode=request.mode, advise=False, lora=request.lora,
        )  # fmt: skip
        base.update(changes)
        return plan_memory(request.vram_free, request.ram_free, swap_free=request.swap_free, **base)

    advice = []
    if not request.fp8 and request.sizes is None:  # fp8 sizes are known for the published model
        fp8 = again(fp8=True)
        peaks = ([f"peak GPU {gb(fp8.peak_gpu)}"] if fp8.mode != "cpu" else []) + [f"peak RAM {gb(fp8.peak_ram)}"]
        advice.append(
            f"--fp8 (8-bit transformer weights, slightly lower quality): {', '.join(peaks)} "
            f"({'fits' if fp8.fits else 'still does not fit'})"
        )
    if not plan.fits_gpu:
        current = request.resolution if request.height is None else max(request.height, request.width)
        for resolution in (576, 512, 480, 416, 384, 320, 256, 192, 128):
            smaller = again(resolution=resolution, height=None, width=None)
            if resolution < current and smaller.fits_gpu:
                advice.append(f"a smaller resolution: --resolution {resolution} needs {gb(smaller.peak_gpu)} of GPU memory")
                break
        if plan.vram_free is not None:
            advice.append(f"free {gb(plan.peak_gpu - plan.vram_free)} more GPU memory (close other programs using the GPU)")
    if not plan.fits_ram:
        advice.append(
            f"free {gb(plan.peak_ram - plan.ram_free - (plan.swap_free or 0))} more system memory (close programs), "
            f"or add RAM or swap (with swap it runs, slowly)"
        )
    if plan.mode == "low" and plan.fits_gpu and not plan.fits_ram:
        advice.append("a GPU with more than 60 GB free keeps the weights out of system memory")
    return tuple(advice)


def postprocess_phase(parts: dict[str, tuple[int, int]], on_gpu: bool, free: int | None) -> tuple[PhasePlan, bool]:
    """The post-processing phase: each network's (weights, working bytes at its largest step), on the GPU or in
    RAM, and whether it fits in `free` bytes there (None: unknown, taken as fitting). The networks stay loaded
    together while frames go through them, and one step's working memory is alive at a time."""
    weights = sum(weight for weight, _ in parts.values())
    working = max((work for _, work in parts.values()), default=0)
    described = tuple(f"{name} ({gb(weight)} + {gb(work)} working)" for name, (weight, work) in parts.items())
    total = int((weights + working) * ACTIVATION_MARGIN)
    phase = PhasePlan("post-processing", described if on_gpu else (), () if on_gpu else described,
                      total if on_gpu else 0, 0 if on_gpu else total)  # fmt: skip
    return phase, free is None or total <= free


class MemoryPlanError(RuntimeError):
    """The models or a job will not fit in GPU or system memory; the message says what to change."""

    def __init__(self, plan: MemoryPlan):
        super().__init__(plan.problem())
        self.plan = plan


def check_before_loading(
    settings: Settings | None = None,
    *,
    fp8: bool = False,
    device: str | torch.device | None = None,
    models_dir: str | os.PathLike | None = None,
    memory: DeviceMemory | None = None,
    lora: LoraBytes | None = None,
    transformer_file: str | os.PathLike | None = None,
    fp8_matmuls: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> MemoryPlan:
    """Plan the job `settings` describes (with its LoRAs' `lora` bytes) on this machine's free memory; raise
    MemoryPlanError if it will not fit (CheckpointError if `transformer_file` does not fit the model).

    `fp8_matmuls` (fp8 compute) stores the transformer as `fp8` does and multiplies in fp8 where the GPU can;
    elsewhere it raises SettingsError with the reason.

    The app calls it before loading (with its default settings) and the CLI with the job's settings; the
    returned plan then goes to `place_component` as each component loads. With `models_dir` (a local model
    root, as `--models`) the sizes come from its config files, else from those cached in the hub cache
    `cache_dir` (`--hf-cache`), otherwise from the published configs; with a single-file transformer
    (`--transformer-file`), the transformer's from the file's header.
    """
    settings = settings or Settings()
    memory = memory or detect_device(device)
    if fp8_matmuls:
        if problem := fp8_matmul_problem(memory.device):
            raise SettingsError("--fp8-compute", problem)
        fp8 = True
    sizes = None
    if models_dir is not None or transformer_file is not None or cache_dir is not None:
        configs = file_configs(models_dir, settings.variant, transformer_file, cache_dir)
        file = inspect_transformer_file(transformer_file, configs.transformer, settings.variant) if transformer_file else None
        if fp8_matmuls and file is not None and file.gguf:
            raise SettingsError("--fp8-compute", "it multiplies fp8 weights, and a GGUF transformer computes in bf16")
        dtypes = resolve_dtypes(settings.dtype, memory.device)
        hub = models_dir is None and file is None  # the hub cache's configs, the published ones where not cached
        if not (hub and configs == ModelConfigs.published()):
            sizes = ModelSizes.from_configs(configs, *dtypes, fp8=fp8, transformer_file=file)
            fp8 = sizes.fp8
            if hub and sizes.components == published_sizes(*dtypes, fp8).components:
                sizes = None  # a cache of the published model: planned as that, whose advice can try --fp8
    plan = plan_for_settings(
        settings, memory.vram_free, memory.ram_free, fp8=fp8, device=memory.device, sizes=sizes,
        swap_free=memory.swap_free, lora=lora,
    )  # fmt: skip
    if fp8_matmuls:
        plan = replace(plan, fp8_matmuls=True, transformer_weights="fp8 storage, fp8 matrix products")
    if not plan.fits:
        raise MemoryPlanError(plan)
    return plan

