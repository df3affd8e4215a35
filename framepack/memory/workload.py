"""What a job's phases need besides the weights: activations of the transformer, the sampler's state, the VAE's
decode and encode, and the encoders, for one frame size and window (pure functions of the configs)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import (
    DEFAULT_PROMPT_TEMPLATE,
)

from ..models.components import CLIP_MAX_TOKENS, LLAMA_MAX_TOKENS, TEXT_LENGTH
from ..packing import CONTEXT_1X, CONTEXT_2X, CONTEXT_4X
from .sizes import ModelConfigs, ModelSizes

ACTIVATION_MARGIN = 1.2  # on top of the counted live tensors: allocator rounding and what was not counted

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

