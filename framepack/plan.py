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

All sizes are computed from the real architectures built on the `meta` device (no memory). Every figure in
this module and in its output uses GB = 10**9 bytes. Putting components where a plan says is
`framepack.placement`'s work.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

from .checkpoints import FORMATS, GGUF_BLOCKS, TransformerFile, format_sizes, inspect_transformer_file
from .conditioning import CLIP_MAX_TOKENS, LLAMA_MAX_TOKENS, TEXT_LENGTH, buckets
from .models import (
    COMPONENTS,
    HUNYUAN_REPO,
    PUBLISHED_TRANSFORMER,
    REDUX_REPO,
    TRANSFORMER_REPOS,
    ModelSet,
    ModelSource,
    ModelsMissingError,
    resolve_dtypes,
)
from .packing import CONTEXT_1X, CONTEXT_2X, CONTEXT_4X
from .placement import Placement, Streaming, enable_fp8, fp8_matmul_problem, has_fp8, place_component
from .settings import VARIANTS, Settings, SettingsError

GB = 1_000_000_000
HIGH_VRAM_BYTES = 60 * GB  # FramePack: more than 60 GB free keeps every component resident
GPU_OVERHEAD = 600_000_000  # cuBLAS/cuDNN workspaces, lazily loaded kernels, allocator fragmentation
RAM_OVERHEAD = 3 * GB  # Python, torch, the CUDA runtime, gradio
ACTIVATION_MARGIN = 1.2  # on top of the counted live tensors: allocator rounding and what was not counted
LABELS = {
    "transformer": "transformer",
    "text_encoder": "Llama text encoder",
    "text_encoder_2": "CLIP text encoder",
    "image_encoder": "SigLIP image encoder",
    "vae": "VAE",
}

# The published configurations (what the app downloads; the transformer's is in `framepack.models`), so a plan
# needs no weights. The tests check them against ../shared/model-configs; the VAE uses diffusers' default AutoencoderKLHunyuanVideo configuration.
PUBLISHED_TEXT_ENCODER = {
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128320, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "max_position_embeddings": 8192,
}  # fmt: skip
PUBLISHED_TEXT_ENCODER_2 = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768,
}  # fmt: skip
PUBLISHED_IMAGE_ENCODER = {
    "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
    "image_size": 384, "patch_size": 14,
}  # fmt: skip


def gb(n: int | float) -> str:
    return f"{n / GB:.1f} GB"


# --------------------------------------------------------------------------------------------- the device


@dataclass(frozen=True)
class DeviceMemory:
    """The compute device and what is free now. GPU figures are None without a GPU; RAM is None if unknown."""

    device: torch.device
    name: str
    vram_free: int | None
    vram_total: int | None
    ram_free: int | None
    ram_total: int | None
    swap_free: int | None = None


def _meminfo() -> dict[str, int] | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    fields = {}
    for line in meminfo.read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = int(value.split()[0]) * 1024  # the kernel reports kB
    return fields


def system_ram() -> tuple[int | None, int | None]:
    """(available, total) system RAM in bytes: /proc/meminfo on Linux, else psutil if installed, else unknown."""
    fields = _meminfo()
    if fields is not None:
        return fields.get("MemAvailable"), fields.get("MemTotal")
    try:
        import psutil
    except ImportError:
        return None, None
    memory = psutil.virtual_memory()
    return memory.available, memory.total


def system_swap() -> int | None:
    """Free swap (a page file on Windows) in bytes, or None if unknown."""
    fields = _meminfo()
    if fields is not None:
        return fields.get("SwapFree")
    try:
        import psutil
    except ImportError:
        return None
    return psutil.swap_memory().free


def detect_device(device: str | torch.device | None = None) -> DeviceMemory:
    """The device to run on (the best available unless given) with its free and total memory, and free RAM."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(device)
    ram_free, ram_total = system_ram()
    swap = system_swap()
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return DeviceMemory(device, torch.cuda.get_device_name(device), free, total, ram_free, ram_total, swap)
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        # Apple GPUs share system memory; Metal's recommended working set is the usable share of it.
        total = torch.mps.recommended_max_memory()
        free = total - torch.mps.driver_allocated_memory()
        return DeviceMemory(device, "Apple GPU", free, total, ram_free, ram_total, swap)
    return DeviceMemory(torch.device("cpu"), "CPU", None, None, ram_free, ram_total, swap)


# ----------------------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class ModuleSize:
    """Bytes of a component's weights, as diffusers' group offloading would stream them.

    `blocks` are the members of the component's direct ModuleLists in execution order (diffusers' block-level
    groups of one); the rest (`remainder`) moves as one group for every forward. Leaf-level offloading moves
    one Linear/Conv/Embedding at a time: `largest_leaf` bytes, `largest_leaf_numel` weights.
    """

    total: int
    blocks: tuple[int, ...] = ()
    largest_leaf: int = 0
    largest_leaf_numel: int = 0
    leaf_total: int = 0

    @property
    def remainder(self) -> int:
        return self.total - sum(self.blocks)

    @property
    def not_in_leaves(self) -> int:
        return self.total - self.leaf_total


def _tensor_bytes(tensors: Iterator[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def module_size(module: torch.nn.Module) -> ModuleSize:
    """Sizes from the module's actual parameters and buffers (on any device, `meta` included)."""
    blocks: list[int] = []
    for child in module.children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
            blocks += [_tensor_bytes(itertools.chain(b.parameters(), b.buffers())) for b in child]
    leaves = [m for m in module.modules() if isinstance(m, _GO_LC_SUPPORTED_PYTORCH_LAYERS)]
    leaf_bytes = [_tensor_bytes(itertools.chain(m.parameters(), m.buffers())) for m in leaves]
    return ModuleSize(
        total=_tensor_bytes(itertools.chain(module.parameters(), module.buffers())),
        blocks=tuple(blocks),
        largest_leaf=max(leaf_bytes, default=0),
        largest_leaf_numel=max((sum(p.numel() for p in m.parameters()) for m in leaves), default=0),
        leaf_total=sum(leaf_bytes),
    )


@dataclass(frozen=True)
class ModelConfigs:
    """The five configurations that decide memory: diffusers configs as dicts, transformers configs as dicts."""

    transformer: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]
    image_encoder: dict[str, Any]
    vae: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def published(cls) -> ModelConfigs:
        return cls(PUBLISHED_TRANSFORMER, PUBLISHED_TEXT_ENCODER, PUBLISHED_TEXT_ENCODER_2, PUBLISHED_IMAGE_ENCODER)

    @classmethod
    def from_folder(
        cls, root: str | os.PathLike, variant: str = "original", transformer: dict[str, Any] | None = None
    ) -> ModelConfigs:
        """Read the config.json files of a local model root laid out like the hub repos (see ModelSource); the
        `transformer` config where it is given (a single-file transformer's, and the root may lack its repo).

        A missing folder raises ModelsMissingError with the same message loading would give.
        """
        source = ModelSource(models_dir=root)

        def read(repo: str, subfolder: str = "") -> dict[str, Any]:
            folder = source.folder(repo, (subfolder,) if subfolder else ())
            return json.loads((folder / subfolder / "config.json").read_text())

        return cls(
            transformer=transformer if transformer is not None else read(TRANSFORMER_REPOS[variant]),
            text_encoder=read(HUNYUAN_REPO, "text_encoder"),
            text_encoder_2=read(HUNYUAN_REPO, "text_encoder_2"),
            image_encoder=read(REDUX_REPO, "image_encoder"),
            vae=read(HUNYUAN_REPO, "vae"),
        )

    @classmethod
    def of(cls, models: ModelSet) -> ModelConfigs:
        """The configs of a loaded set (of a component out of memory, as it was loaded)."""

        def config(name: str) -> dict[str, Any]:
            module = getattr(models, name)
            if module is None:
                return models.loader.configs[name]
            return dict(module.config) if isinstance(module.config, dict) else module.config.to_dict()

        return cls(**{name: config(name) for name in COMPONENTS})


def _clean(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "class"}


def build_meta_models(
    configs: ModelConfigs, transformer_dtype: torch.dtype, encoder_dtype: torch.dtype, fp8: bool = False
) -> dict[str, torch.nn.Module]:
    """The five components on the `meta` device, in the dtypes the app loads them in (no memory is used).

    The transformer's output head is float32 as `keep_output_head_in_float32` makes it; with `fp8` diffusers'
    layerwise casting is enabled exactly as `enable_fp8` does on the real model.
    """
    with torch.device("meta"):
        transformer = HunyuanVideoFramepackTransformer3DModel.from_config(configs.transformer)
        vae = AutoencoderKLHunyuanVideo.from_config(configs.vae)
        text_encoder = LlamaModel(LlamaConfig.from_dict(_clean(configs.text_encoder)))
        text_encoder_2 = CLIPTextModel(CLIPTextConfig.from_dict(_clean(configs.text_encoder_2)))
        image_encoder = SiglipVisionModel(SiglipVisionConfig.from_dict(_clean(configs.image_encoder)))
    # nn.Module.to, not ModelMixin.to: the latter warns about float32 modules that the head handles below.
    torch.nn.Module.to(transformer, transformer_dtype)
    torch.nn.Module.to(vae, encoder_dtype)
    for module in (text_encoder, text_encoder_2, image_encoder):
        module.to(encoder_dtype)
    transformer.norm_out.float()
    transformer.proj_out.float()
    if fp8:
        enable_fp8(transformer)
    return {
        "transformer": transformer,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "image_encoder": image_encoder,
        "vae": vae,
    }


@dataclass(frozen=True)
class ModelSizes:
    """Weight sizes of every component, the configs behind them, and the dtypes they were sized in.

    `transformer_loaded` is the most the transformer takes while it loads (fp8 is cast tensor by tensor as it is
    read, so that is its fp8 size too). `quantized` names the GGUF quantisation of a quantised transformer.
    """

    components: dict[str, ModuleSize]
    configs: ModelConfigs
    transformer_dtype: torch.dtype
    encoder_dtype: torch.dtype
    fp8: bool
    transformer_loaded: int
    quantized: str = ""

    def __getitem__(self, name: str) -> ModuleSize:
        return self.components[name]

    @property
    def total(self) -> int:
        return sum(size.total for size in self.components.values())

    @classmethod
    def from_configs(
        cls,
        configs: ModelConfigs,
        transformer_dtype: torch.dtype,
        encoder_dtype: torch.dtype,
        fp8: bool = False,
        transformer_format: str | None = None,
        transformer_file: TransformerFile | None = None,
    ) -> ModelSizes:
        """Sizes of the components of `configs` in the dtypes given, the transformer stored as `transformer_format`
        says (see `checkpoints.FORMATS`) or as `transformer_file` holds it (its header's bytes)."""
        fmt = transformer_file.format if transformer_file is not None else transformer_format
        fp8 = fp8 or fmt == "fp8"
        meta = build_meta_models(configs, transformer_dtype, encoder_dtype, fp8)
        quantized = fmt if fmt in GGUF_BLOCKS else ""
        if quantized:
            format_sizes(meta["transformer"], quantized, transformer_file)
        sizes = {name: module_size(module) for name, module in meta.items()}
        return cls(sizes, configs, transformer_dtype, encoder_dtype, fp8, sizes["transformer"].total, quantized)

    @classmethod
    def of(cls, models: ModelSet) -> ModelSizes:
        """Sizes of a loaded model set, from its actual tensors (fp8 if its transformer is layerwise-cast)."""
        def size(name: str) -> ModuleSize:
            module = getattr(models, name)
            return module_size(module) if module is not None else models.loader.sizes[name]

        sizes = {name: size(name) for name in COMPONENTS}
        fp8 = models.placement.plan.fp8 if models.transformer is None else has_fp8(models.transformer)
        quantized = models.loader.quantized if models.loader is not None else ""
        return cls(sizes, ModelConfigs.of(models), models.dtype, models.vae.dtype, fp8, sizes["transformer"].total, quantized)


@lru_cache(maxsize=8)
def published_sizes(
    transformer_dtype: torch.dtype = torch.bfloat16, encoder_dtype: torch.dtype = torch.float16, fp8: bool = False
) -> ModelSizes:
    return ModelSizes.from_configs(ModelConfigs.published(), transformer_dtype, encoder_dtype, fp8)


# ----------------------------------------------------------------------------------------- activations


def section_tokens(height: int, width: int, window: int, patch: int = 2) -> tuple[int, int]:
    """(generated tokens, all packed video tokens) of one section, as diffusers' FramePack transformer packs them.

    On the h x w latent grid (h = height/8): the window's `window` frames and the clean start + 1x history
    frames at patch 2x2; the 2x history (2 frames) at kernel 2x4x4; the 4x history (16 frames) at kernel
    4x8x8, padded up to whole kernels.
    """
    h, w = height // 8, width // 8
    per_frame = (h // patch) * (w // patch)
    generated = window * per_frame
    clean = (1 + CONTEXT_1X) * per_frame
    history_2x = math.ceil(CONTEXT_2X / 2) * math.ceil(h / (2 * patch)) * math.ceil(w / (2 * patch))
    history_4x = math.ceil(CONTEXT_4X / 4) * math.ceil(h / (4 * patch)) * math.ceil(w / (4 * patch))
    return generated, generated + clean + history_2x + history_4x


def image_tokens(configs: ModelConfigs) -> int:
    image = configs.image_encoder
    return (image["image_size"] // image["patch_size"]) ** 2


def transformer_activation_bytes(
    configs: ModelConfigs, height: int, width: int, window: int, dtype_bytes: int = 2
) -> int:
    """Peak bytes of the tensors alive during one transformer forward of one section (weights excluded).

    With N = packed video tokens V + text tokens (512, FramePack's padded length; the real prompt is shorter)
    + SigLIP image tokens (729), D = heads x head_dim (3072), r = the MLP ratio (4) and b the compute dtype's
    bytes (bf16: 2), the peak is inside a single-stream block, while its attention rotates q and k:

        peak = 1.2 x b x D x ((6 + r) x N + 8 x V)  +  16 x head_dim x frames x (h/2)(w/2)

    (6 + r) x N: the block input held by the caller, its concatenated copy, v, the normalised q and k, the
    next block input and the r-wide GELU output of the parallel MLP. 8 x V: RoPE runs in float32 on the
    video tokens only: three float32 temporaries (6) plus the rotated bf16 result and its copy (2). The last
    term is RoPE's float32 cos/sin tables for every packed frame (window + 1 + 19 context frames) at full
    resolution. Attention is assumed to run in a flash or memory-efficient SDPA kernel (what PyTorch picks on
    CUDA for bf16, head_dim 128 and no mask, as a batch of one has), so no N x N score matrix exists.
    1.2 covers the caching allocator's rounding; running the real architecture on the meta device with a
    live-tensor tracker gives 2.10 GB at 608x640 where this formula gives 2.50 GB (see tests/test_memory.py).
    """
    cfg = configs.transformer
    heads, head_dim, ratio = cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["mlp_ratio"]
    hidden = heads * head_dim
    _, video = section_tokens(height, width, window, cfg["patch_size"])
    tokens = video + TEXT_LENGTH + image_tokens(configs)
    h, w = height // 8, width // 8
    rope_rows = (window + 1 + CONTEXT_1X + CONTEXT_2X + CONTEXT_4X) * (h // 2) * (w // 2)
    block = ACTIVATION_MARGIN * dtype_bytes * hidden * ((6 + ratio) * tokens + 8 * video)
    return int(block + 16 * head_dim * rope_rows)


def sampler_state_bytes(configs: ModelConfigs, height: int, width: int, window: int, dtype_bytes: int = 2) -> int:
    """The transformer's inputs and the sampler's float32 state for one section, on the GPU during sampling."""
    h, w = height // 8, width // 8
    channels = configs.transformer["in_channels"]
    latents = channels * (window + 1 + CONTEXT_1X + CONTEXT_2X + CONTEXT_4X) * h * w * dtype_bytes
    sampler = 8 * channels * window * h * w * 4  # x, noise, x0, velocities and UniPC's history, float32
    text = 2 * TEXT_LENGTH * configs.transformer["text_embed_dim"] * dtype_bytes  # positive and negative
    image = image_tokens(configs) * configs.transformer["image_proj_dim"] * dtype_bytes
    return latents + sampler + text + image


def _vae_tile(height: int, width: int, tiled: bool) -> tuple[int, int]:
    """Pixel height and width the VAE works on at once: diffusers' 256-pixel tiles when tiling, else the frame."""
    tile = 256  # AutoencoderKLHunyuanVideo's tile_sample_min_height/width
    if tiled and (height > tile or width > tile):
        return min(height, tile), min(width, tile)
    return height, width


def _vae_mask_bytes(config: dict[str, Any], frames: int, tile_h: int, tile_w: int, dtype_bytes: int) -> int:
    """The mid-block's causal attention mask over every latent position of a tile and its making.

    `prepare_causal_attention_mask` builds a boolean S x S comparison, a float32 `where` and the cast copy:
    7 bytes per entry; the mid-block holds a few 512-channel copies of the S positions beside it.
    """
    ratio = config.get("spatial_compression_ratio", 8)
    positions = frames * (tile_h // ratio) * (tile_w // ratio)
    channels = config.get("block_out_channels", (128, 256, 512, 512))[-1]
    return 7 * positions**2 + 4 * positions * channels * dtype_bytes


def vae_decode_bytes(
    config: dict[str, Any], height: int, width: int, latent_frames: int, tiled: bool, dtype_bytes: int = 2
) -> int:
    """Peak bytes of decoding `latent_frames` latent frames to pixels (weights excluded).

    diffusers decodes more than 4 latent frames in temporal tiles of 5 (F = 17 pixel frames each) and, when
    tiling, in 256x256-pixel spatial tiles (TH x TW). The peak is the last upsampler, which works at full
    tile resolution with C = block_out_channels[1] channels (256): about 4.5 copies of C x F x TH x TW
    (measured on the meta device); we count 5. The attention mask (see `_vae_mask_bytes`) is the other
    candidate: without tiling it is 7 x (5 x h x w)^2 bytes, 6.5 GB at 640. Besides, the decoded tiles pile
    up and are blended and converted to float32 for the CPU: 3 x the bytes of the decoded video.

        peak = max(5 x C x F x TH x TW x b, mask) + 3 x 3 x (4T - 3) x H x W x b
    """
    channels = config.get("block_out_channels", (128, 256, 512, 512))[1]
    tile_frames = min(latent_frames, 5) if latent_frames > 4 else latent_frames
    frames = 4 * (tile_frames - 1) + 1
    tile_h, tile_w = _vae_tile(height, width, tiled)
    upsampler = 5 * channels * frames * tile_h * tile_w * dtype_bytes
    mask = _vae_mask_bytes(config, tile_frames, tile_h, tile_w, dtype_bytes)
    decoded = 3 * (4 * latent_frames - 3) * height * width * dtype_bytes
    return max(upsampler, mask) + 3 * decoded


def vae_encode_bytes(config: dict[str, Any], height: int, width: int, tiled: bool, dtype_bytes: int = 2) -> int:
    """Peak bytes of encoding the start image: about 7 copies (we count 8) of the first level's
    block_out_channels[0] x TH x TW (one frame; tiles as in `vae_decode_bytes`), or the mid-block's mask."""
    channels = config.get("block_out_channels", (128, 256, 512, 512))[0]
    tile_h, tile_w = _vae_tile(height, width, tiled)
    return max(8 * channels * tile_h * tile_w * dtype_bytes, _vae_mask_bytes(config, 1, tile_h, tile_w, dtype_bytes))


def encoder_activation_bytes(config: dict[str, Any], tokens: int, dtype_bytes: int, keep_hidden_states: bool) -> int:
    """A transformer encoder's peak: its hidden states (every layer's when they are returned), the MLP's
    input, activation and output, and float32 attention scores in case attention runs in eager/math mode."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    states = (layers + 1 if keep_hidden_states else 2) * tokens * hidden * dtype_bytes
    mlp = 3 * tokens * config["intermediate_size"] * dtype_bytes
    scores = config["num_attention_heads"] * tokens**2 * 4
    return int(ACTIVATION_MARGIN * (states + mlp + scores))


@dataclass(frozen=True)
class Workload:
    """Activation bytes of each phase for the worst of a set of frame sizes, and the RAM of decoded frames."""

    sizes: tuple[tuple[int, int], ...]
    text: int
    image: int
    image_tiled: int
    sampling: int
    decode: int
    decode_tiled: int
    frames_ram: int


def workload(
    sizes: ModelSizes, frame_sizes: Sequence[tuple[int, int]], window: int, variant: str, compute_bytes: int
) -> Workload:
    configs = sizes.configs
    enc_bytes = torch.empty((), dtype=sizes.encoder_dtype).element_size()
    # The most latent frames one decode gets: the original variant's last section decodes 2 windows + 1.
    decode_frames = 2 * window + (1 if variant == "original" else 0)
    llama_tokens = LLAMA_MAX_TOKENS + DEFAULT_PROMPT_TEMPLATE["crop_start"]
    text = encoder_activation_bytes(configs.text_encoder, llama_tokens, enc_bytes, keep_hidden_states=True)
    text += encoder_activation_bytes(configs.text_encoder_2, CLIP_MAX_TOKENS, enc_bytes, keep_hidden_states=False)
    siglip = encoder_activation_bytes(configs.image_encoder, image_tokens(configs), enc_bytes, keep_hidden_states=False)
    vae = configs.vae

    def worst(fn: Any) -> int:
        return max(fn(h, w) for h, w in frame_sizes)

    return Workload(
        sizes=tuple(frame_sizes),
        text=text,
        image=worst(lambda h, w: max(siglip, vae_encode_bytes(vae, h, w, False, enc_bytes))),
        image_tiled=worst(lambda h, w: max(siglip, vae_encode_bytes(vae, h, w, True, enc_bytes))),
        sampling=worst(
            lambda h, w: transformer_activation_bytes(configs, h, w, window, compute_bytes)
            + sampler_state_bytes(configs, h, w, window, compute_bytes)
        ),
        decode=worst(lambda h, w: vae_decode_bytes(vae, h, w, decode_frames, False, enc_bytes)),
        decode_tiled=worst(lambda h, w: vae_decode_bytes(vae, h, w, decode_frames, True, enc_bytes)),
        # The decoded section as float32 on the CPU, blended with the previous one and made uint8: 4 copies.
        frames_ram=worst(lambda h, w: 4 * 3 * (4 * decode_frames - 3) * h * w * 4),
    )


# ------------------------------------------------------------------------------------------------ plans


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


@dataclass(frozen=True)
class LoraBytes:
    """What a job's LoRAs weigh besides the transformer's sizes: their adapters in the compute dtype (0 for a
    loaded set, whose transformer holds them already), and the weights of the layers they touch (kept aside
    while fused, to be put back exactly)."""

    adapters: int
    touched: int


def _with_loras(plan: MemoryPlan, lora: LoraBytes, fusable: bool = True) -> MemoryPlan:
    """Add the LoRAs where they live: with the transformer (on the GPU in high mode, else in RAM), plus the
    copies of the touched layers in RAM where they are fused: not in low mode, with fp8, into quantised weights
    (not `fusable`), or where the copies would not fit in the RAM left (the rule `apply_loras` follows)."""
    gpu = lora.adapters if plan.mode == "high" else 0

    def added(phase: PhasePlan, ram: int, label: str) -> PhasePlan:
        on_cpu = phase.on_cpu + ((label,) if ram else ())
        on_gpu = phase.on_gpu + ((f"LoRAs ({gb(lora.adapters)})",) if gpu else ())
        return replace(phase, gpu_bytes=phase.gpu_bytes + gpu, ram_bytes=phase.ram_bytes + ram, on_gpu=on_gpu, on_cpu=on_cpu)

    unfused = replace(plan, phases=tuple(added(p, lora.adapters - gpu, f"LoRAs ({gb(lora.adapters)})") for p in plan.phases))
    room = None if plan.ram_free is None else plan.ram_free - unfused.peak_ram
    if plan.mode == "low" or plan.fp8 or not fusable or (room is not None and lora.touched > room):
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


# ------------------------------------------------------------------------------------ before loading


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
) -> MemoryPlan:
    """Plan the job `settings` describes (with its LoRAs' `lora` bytes) on this machine's free memory; raise
    MemoryPlanError if it will not fit (CheckpointError if `transformer_file` does not fit the model).

    `fp8_matmuls` (fp8 compute) stores the transformer as `fp8` does and multiplies in fp8 where the GPU can;
    elsewhere it raises SettingsError with the reason.

    The app calls it before loading (with its default settings) and the CLI with the job's settings; the
    returned plan then goes to `place_component` as each component loads. With `models_dir` (a local model
    root, as `--models`) the sizes come from its config files, otherwise from the published configs; with a
    single-file transformer (`--transformer-file`), the transformer's from the file's header.
    """
    settings = settings or Settings()
    memory = memory or detect_device(device)
    if fp8_matmuls:
        if problem := fp8_matmul_problem(memory.device):
            raise SettingsError("--fp8-compute", problem)
        fp8 = True
    sizes = None
    if models_dir is not None or transformer_file is not None:
        configs = file_configs(models_dir, settings.variant, transformer_file)
        file = inspect_transformer_file(transformer_file, configs.transformer, settings.variant) if transformer_file else None
        if fp8_matmuls and file is not None and file.gguf:
            raise SettingsError("--fp8-compute", "it multiplies fp8 weights, and a GGUF transformer computes in bf16")
        sizes = ModelSizes.from_configs(configs, *resolve_dtypes(settings.dtype, memory.device), fp8=fp8, transformer_file=file)
        fp8 = sizes.fp8
    plan = plan_for_settings(
        settings, memory.vram_free, memory.ram_free, fp8=fp8, device=memory.device, sizes=sizes,
        swap_free=memory.swap_free, lora=lora,
    )  # fmt: skip
    if fp8_matmuls:
        plan = replace(plan, fp8_matmuls=True, transformer_weights="fp8 storage, fp8 matrix products")
    if not plan.fits:
        raise MemoryPlanError(plan)
    return plan


def file_configs(
    models_dir: str | os.PathLike | None, variant: str, transformer_file: str | os.PathLike | None = None
) -> ModelConfigs:
    """The configs a plan sizes: a local model root's or the published ones, the transformer's taken as loading
    takes it for a single-file transformer (its repo's config where at hand, else the published one)."""
    transformer = None
    if transformer_file is not None:
        transformer = ModelSource(models_dir=models_dir, transformer_file=transformer_file).transformer_config(variant)
    if models_dir is not None:
        return ModelConfigs.from_folder(models_dir, variant, transformer)
    published = ModelConfigs.published()
    return published if transformer is None else replace(published, transformer=transformer)


# ------------------------------------------------------------------------------------------ the command


def add_check_memory_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "check-memory",
        help="show where the models would live and whether a job fits in GPU and system memory",
        description="Plan GPU and system memory for a job without loading anything. GB = 10^9 bytes.",
    )
    parser.add_argument("--vram", type=float, help="free GPU memory in GB (default: this machine's; 0 = no GPU)")
    parser.add_argument("--ram", type=float, help="free system memory in GB (default: this machine's)")
    parser.add_argument("--swap", type=float, help="free swap in GB (default: this machine's, or 0 with --ram)")
    parser.add_argument("--resolution", type=int, default=640, help="bucket resolution (default 640: every 640 bucket)")
    parser.add_argument("--height", type=int, help="explicit height, a multiple of 16 (needs --width)")
    parser.add_argument("--width", type=int, help="explicit width, a multiple of 16 (needs --height)")
    parser.add_argument("--latent-window-size", type=int, default=9, help="latent frames per section (default 9)")
    parser.add_argument("--variant", choices=VARIANTS, default="original", help="model variant (default original)")
    parser.add_argument("--fp8", action="store_true", help="store the transformer's weights in 8 bits")
    parser.add_argument("--preserve", type=float, default=6.0, help="GPU memory to preserve in GB (default 6)")
    parser.add_argument("--device", help="cuda, mps or cpu (default: this machine's best, or cuda with --vram)")
    parser.add_argument("--lora", action="append", default=[], metavar="PATH", help="count this LoRA file too (repeatable)")
    parser.add_argument("--models", type=Path, help="local model root whose configs to plan (default: the published ones)")
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument("--transformer-file", type=Path, metavar="PATH",
                         help="plan this single-file transformer (.safetensors or .gguf); reads only its header")  # fmt: skip
    formats.add_argument("--transformer-format", choices=FORMATS,
                         help="plan the transformer stored in this format (GGUF quantisations: q8_0, q6_k, ...)")  # fmt: skip
    parser.set_defaults(handler=run_check_memory)
    return parser


def run_check_memory(args: argparse.Namespace) -> int:
    """Print the plan; 0 when it fits, 1 when it does not, 2 for invalid options."""
    try:
        settings = Settings(
            variant=args.variant,
            resolution=args.resolution,
            height=args.height,
            width=args.width,
            latent_window_size=args.latent_window_size,
            gpu_memory_preservation=args.preserve,
        )
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if any(value is not None and value < 0 for value in (args.vram, args.ram, args.swap)):
        print("error: --vram, --ram and --swap must not be negative", file=sys.stderr)
        return 2
    if args.vram is None:
        detected = detect_device(args.device)
        vram, device = detected.vram_free, detected.device
    else:
        # A given amount means a GPU of that much free memory (CUDA unless --device says otherwise); 0 means none.
        vram, device = (int(args.vram * GB), args.device or "cuda") if args.vram > 0 else (None, "cpu")
    ram = int(args.ram * GB) if args.ram is not None else system_ram()[0]
    # A given --ram describes a machine to plan for, whose swap is unknown unless given too.
    swap = int(args.swap * GB) if args.swap is not None else 0 if args.ram is not None else system_swap()
    transformer_dtype, encoder_dtype = resolve_dtypes(None, torch.device(device))
    fp8 = args.fp8 or args.transformer_format == "fp8"
    try:
        configs = file_configs(args.models, args.variant, args.transformer_file)
        file = inspect_transformer_file(args.transformer_file, configs.transformer, args.variant) if args.transformer_file else None
        sizes = None  # the published model: its advice can try fp8 on it
        if args.models or file or args.transformer_format:
            sizes = ModelSizes.from_configs(configs, transformer_dtype, encoder_dtype, fp8, args.transformer_format, file)
            fp8 = sizes.fp8
        lora = lora_bytes(args.lora, configs, transformer_dtype) if args.lora else None
    except (ModelsMissingError, ValueError) as exc:  # LoraError and CheckpointError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plan = plan_for_settings(settings, vram, ram, fp8=fp8, device=device, swap_free=swap, sizes=sizes, lora=lora)
    print(plan.report())
    return 0 if plan.fits else 1


def meta_transformer(configs: ModelConfigs, dtype: torch.dtype = torch.bfloat16) -> HunyuanVideoFramepackTransformer3DModel:
    """The transformer of `configs` on the meta device: its modules and shapes, no memory."""
    with torch.device("meta"):
        transformer = HunyuanVideoFramepackTransformer3DModel.from_config(configs.transformer)
    torch.nn.Module.to(transformer, dtype)
    return transformer


def lora_bytes(paths: Sequence[str | os.PathLike], configs: ModelConfigs, dtype: torch.dtype) -> LoraBytes:
    """What LoRA files add to a plan, matched against the transformer of `configs` built on the meta device."""
    from .lora import read_lora

    transformer = meta_transformer(configs, dtype)
    files = [read_lora(path, transformer) for path in paths]
    modules = dict(transformer.named_modules())
    touched = {name for file in files for name in file.target_names}
    weights = (modules[name].weight for name in touched)
    return LoraBytes(sum(file.nbytes(dtype) for file in files), sum(w.numel() * w.element_size() for w in weights))


def _held_by_us(device: torch.device) -> int:
    """GPU memory this process holds (its weights and cached blocks), which a new plan may reuse."""
    if device.type == "cuda":
        return torch.cuda.memory_reserved(device)
    if device.type == "mps":
        return torch.mps.current_allocated_memory()
    return 0


def replan(
    models: ModelSet, placement: Placement, settings: Settings, *, vram_free: int | None = None
) -> Placement:
    """Re-plan a placed set for a job's settings and re-place what changed; MemoryPlanError if it will not fit.

    The mode, fp8 and how the Llama is read stay as loaded (switching them means moving or reloading tens of GB,
    and a plan of a loaded set sees the Llama's sizes, not where they are). What a job can
    change is how many transformer blocks stay on the GPU ("GPU memory to preserve", the resolution) and
    whether the VAE tiles. Free GPU memory is measured now, counting what this process holds as free
    (`vram_free` overrides it); free RAM is taken from the plan the set was loaded with.
    """
    current = placement.plan
    device = torch.device(current.device)
    if vram_free is None and current.mode != "cpu":
        measured = detect_device(device).vram_free
        vram_free = current.vram_free if measured is None else measured + _held_by_us(device)
    lora = models.loras.memory() if models.loras is not None else None
    plan = plan_for_settings(
        settings, vram_free, current.ram_free, fp8=current.fp8, device=device, sizes=ModelSizes.of(models),
        mode=current.mode, swap_free=current.swap_free, lora=lora,
        llama_from_files=current.text_encoder.offload_type == "from_file",
    )  # fmt: skip
    plan = replace(plan, fp8_matmuls=current.fp8_matmuls, transformer_weights=current.transformer_weights)
    if not plan.fits:
        raise MemoryPlanError(plan)
    if models.loader is not None:
        models.loader.plan = plan  # what leaves memory comes back placed by the new plan
    if plan.transformer != current.transformer and models.transformer is not None:
        place_component("transformer", models.transformer, plan)
    if plan.vae_tiling:
        models.vae.enable_tiling()
    elif current.vae_tiling:
        models.vae.disable_tiling()
    return Placement(plan)
