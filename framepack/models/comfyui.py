"""ComfyUI's model files, as ComfyUI users keep them: the HunyuanVideo text encoders in `models/text_encoders`, the
VAE in `models/vae`, SigLIP in `models/clip_vision` and the FramePack transformers in `models/diffusion_models`.

Each file is mapped tensor by tensor onto the class that loads the published repo's weights, and only where the map
is exact: every tensor of the model must come from the file with the shape the model's config gives (a tensor the
file lacks, one it has too many, or a shape that differs is refused in one line), and a tensor is changed only by a
reshape that keeps its numbers (the VAE's attention is stored as 1x1x1 convolutions, the model has linear layers).
8-bit float weights are dequantised by their scale where that is one number per tensor (ComfyUI's "fp8_scaled"
files), and refused otherwise. Tensors the outputs FramePack uses never read (Llama's language-model head, CLIP's
projection) are left out.

The files carry no configs or tokenizers: those come from the published repos' small files (in the hub cache or a
local model root, see `ModelSource.comfyui_dir`), so no shape is ever guessed.
"""

from __future__ import annotations

import os
import re
from fnmatch import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLHunyuanVideo
from safetensors import SafetensorError, safe_open
from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

from .checkpoints import CheckpointError

# ComfyUI's folders, with the older names it still reads.
FOLDERS = {
    "text_encoders": ("text_encoders", "clip"),
    "vae": ("vae",),
    "clip_vision": ("clip_vision",),
    "diffusion_models": ("diffusion_models", "unet"),
}
# Keys of ComfyUI's scaled 8-bit files that are not weights of the model: the marker, the per-layer scales (weights
# are dequantised by them), the activation scales (for ComfyUI's fp8 matmuls only) and the per-layer format notes.
_QUANT_MARKER = "scaled_fp8"
_WEIGHT_SCALES = (".scale_weight", ".weight_scale")
_QUANT_EXTRAS = (".scale_input", ".input_scale", ".comfy_quant")
_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


class ComfyUIError(CheckpointError):
    """A ComfyUI file cannot be used as it is (or is not there); the message names the file and says why, in one
    line. A CheckpointError, so everything that reports a transformer file's refusal reports this one too."""


@dataclass(frozen=True)
class Part:
    """A component as ComfyUI keeps it: its folder, the names of the published files, and how they are read."""

    folder: str
    patterns: tuple[str, ...]
    published: str  # the file ComfyUI's HunyuanVideo and FramePack workflows name
    what: str
    unused: tuple[str, ...] = ()  # tensors the file may hold that FramePack's outputs never read
    optional: str = ""  # a prefix of tensors the file may lack (the model is then built without them)


PARTS = {
    "text_encoder": Part("text_encoders", ("llava_llama3*.safetensors",), "llava_llama3_fp16.safetensors",
                         "HunyuanVideo Llama text encoder", unused=("lm_head.weight", "tokenizer")),
    "text_encoder_2": Part("text_encoders", ("clip_l*.safetensors",), "clip_l.safetensors", "CLIP-L text encoder",
                           unused=("text_projection.weight", "text_projection", "logit_scale",
                                   "text_model.embeddings.position_ids")),
    "vae": Part("vae", ("hunyuan_video_vae*.safetensors",), "hunyuan_video_vae_bf16.safetensors", "HunyuanVideo VAE"),
    "image_encoder": Part("clip_vision", ("sigclip_vision*.safetensors",), "sigclip_vision_patch14_384.safetensors",
                          "SigLIP image encoder", unused=("vision_model.embeddings.position_ids",),
                          optional="vision_model.head."),
}  # fmt: skip
_F1_NAME = re.compile(r"(?:^|[^a-z0-9])f1(?:[^a-z0-9]|$)", re.IGNORECASE)


def models_root(path: str | os.PathLike) -> Path:
    """ComfyUI's `models` folder: `path` itself, or its `models` folder where `path` is the ComfyUI install."""
    path = Path(path)
    return path / "models" if (path / "models").is_dir() and not (path / "vae").is_dir() else path


def _candidates(root: Path, folder: str, patterns: tuple[str, ...]) -> list[Path]:
    """The files of ComfyUI's `folder` (its subfolders too, as ComfyUI lists them) whose names match, in any case."""
    found = {p for name in FOLDERS[folder] for p in (root / name).rglob("*")
             if p.is_file() and any(fnmatch(p.name.lower(), pattern) for pattern in patterns)}  # fmt: skip
    # The 16-bit files before 8-bit ones (a user who keeps both gets the exact weights), then by name.
    return sorted(found, key=lambda p: ("fp8" in p.name.lower(), p.name))


def component_file(root: str | os.PathLike, name: str) -> Path:
    """The file of component `name` in the ComfyUI models folder `root`; ComfyUIError naming what to put where."""
    part, root = PARTS[name], models_root(root)
    found = _candidates(root, part.folder, part.patterns)
    if not found:
        raise ComfyUIError(f"No {part.what} in {root / part.folder} (ComfyUI keeps it there as {part.published})")
    return found[0]


def find_transformer(root: str | os.PathLike, variant: str) -> Path | None:
    """The FramePack transformer of `variant` in `diffusion_models` (F1 files say "F1" in their names), if there is
    exactly one; None if there is none; ComfyUIError if several (the user picks one with --transformer-file)."""
    root = models_root(root)
    found = [p for p in _candidates(root, "diffusion_models", ("*framepack*.safetensors", "*framepack*.gguf"))
             if bool(_F1_NAME.search(p.stem)) == (variant == "f1")]  # fmt: skip
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ComfyUIError(f"Several FramePack transformers in {root / 'diffusion_models'} ({names}): choose one with --transformer-file")
    return found[0] if found else None


def vae_key(name: str, levels: int) -> str:
    """The name ComfyUI gives the tensor diffusers calls `name` in the HunyuanVideo VAE with `levels` resolutions
    (ComfyUI keeps the original latent-diffusion names; its decoder lists the levels from the largest)."""

    def level(match: re.Match[str]) -> str:
        index = int(match.group(2))
        return f"{match.group(1)}.{levels - 1 - index if match.group(1) == 'up' else index}."

    # The middle block first: its resnets have names of their own, the other blocks' the generic ones.
    replacements = [
        (r"\.mid_block\.resnets\.0\.", ".mid.block_1."),
        (r"\.mid_block\.resnets\.1\.", ".mid.block_2."),
        (r"\.mid_block\.attentions\.0\.group_norm\.", ".mid.attn_1.norm."),
        (r"\.mid_block\.attentions\.0\.to_(q|k|v)\.", r".mid.attn_1.\1."),
        (r"\.mid_block\.attentions\.0\.to_out\.0\.", ".mid.attn_1.proj_out."),
        (r"\b(down|up)_blocks\.(\d+)\.", level),
        (r"\.resnets\.(\d+)\.", r".block.\1."),
        (r"\.downsamplers\.0\.", ".downsample."),
        (r"\.upsamplers\.0\.", ".upsample."),
        (r"\.conv_shortcut\.", ".nin_shortcut."),
        (r"\.conv_norm_out\.", ".norm_out."),
    ]
    key = name
    for pattern, replacement in replacements:
        key = re.sub(pattern, replacement, key)
    return key


def file_keys(name: str, model: torch.nn.Module, config: dict[str, Any], keys: set[str]) -> dict[str, str]:
    """For each parameter of `model` (component `name`), the key ComfyUI's file holds it under."""
    params = [n for n, _ in model.named_parameters()]
    if name == "text_encoder":
        return {n: f"model.{n}" for n in params}
    if name == "vae" and not set(params) <= keys:  # a file in diffusers' own names loads as it is
        levels = len(config["block_out_channels"])
        return {n: vae_key(n, levels) for n in params}
    # CLIP and SigLIP keep transformers' names under the published prefix (transformers 5 names them without it).
    prefix = {"text_encoder_2": "text_model.", "image_encoder": "vision_model."}[name]
    return {n: n if n.startswith(prefix) else prefix + n for n in params}


def read_tensor(tensors: Any, key: str, keys: set[str], path: Path) -> torch.Tensor:
    """A tensor of the file as the model's numbers: 8-bit floats multiplied by their scale, which must be one number."""
    tensor = tensors.get_tensor(key)
    if tensor.dtype not in _FP8:
        return tensor
    module = key.removesuffix(".weight")
    scale_key = next((module + s for s in _WEIGHT_SCALES if module + s in keys), None)
    if scale_key is None:
        return tensor.float()  # an 8-bit file without scales holds the numbers themselves
    scale = tensors.get_tensor(scale_key)
    if scale.numel() != 1:
        raise ComfyUIError(f"{path.name} scales {key} by {tuple(scale.shape)} numbers, not one: only per-tensor scaled 8-bit files are dequantised exactly")
    return tensor.float() * scale.float().reshape(())


def _not_weights(part: Part, key: str) -> bool:
    return key in part.unused or key == _QUANT_MARKER or key.endswith(_WEIGHT_SCALES + _QUANT_EXTRAS)


def check_keys(name: str, path: Path, mapping: dict[str, str], keys: set[str]) -> None:
    """Refuse, in one line, a file whose tensors are not exactly the model's (named as ComfyUI names them)."""
    part = PARTS[name]
    weights = {k for k in keys if not _not_weights(part, k)}
    wanted = set(mapping.values())
    if not weights & wanted:
        example = f" (e.g. {sorted(weights)[0]})" if weights else ""
        raise ComfyUIError(f"{path.name} is not ComfyUI's {part.what}: none of its {len(weights)} tensors is one{example}")
    missing = sorted(wanted - weights)
    if missing:
        raise ComfyUIError(f"{path.name} is not a whole {part.what}: {len(missing)} tensors are missing (e.g. {missing[0]})")
    extra = sorted(weights - wanted)
    if extra:
        raise ComfyUIError(f"{path.name} has {len(extra)} tensors the {part.what} does not (e.g. {extra[0]})")


def _same_numbers(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """A linear layer stored as a 1x1(x1) convolution: the same numbers, reshaped."""
    return shape[: len(target)] == target and all(d == 1 for d in shape[len(target) :])


def state_dict(name: str, path: Path, model: torch.nn.Module, config: dict[str, Any], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The weights of `model` (built from the repo's config, on the meta device) read from ComfyUI's file `path`."""
    try:
        with safe_open(str(path), "pt") as tensors:
            keys = set(tensors.keys())
            mapping = file_keys(name, model, config, keys)
            check_keys(name, path, mapping, keys)
            shapes = dict(model.named_parameters())
            weights = {}
            for param, key in mapping.items():
                stored = tensors.get_slice(key)
                if stored.get_dtype() in ("U8", "I8", "U4", "I4"):  # packed 4-bit or integer formats, block-scaled
                    raise ComfyUIError(f"{path.name} stores {key} as packed {stored.get_dtype()} blocks, which this app cannot dequantise exactly")
                shape, target = tuple(stored.get_shape()), tuple(shapes[param].shape)
                if shape != target and not _same_numbers(shape, target):
                    raise ComfyUIError(f"{path.name} is for another model: its {key} is {shape}, the configured model's is {target}")
                weights[param] = read_tensor(tensors, key, keys, path).reshape(target).to(dtype)
            return weights
    except (OSError, SafetensorError) as exc:
        raise ComfyUIError(f"{path.name} is not a safetensors file this app can read ({type(exc).__name__})") from None


def _without_optional(name: str, path: Path) -> bool:
    """Whether the file lacks the tensors the part may lack (SigLIP's pooling head, which FramePack never runs)."""
    prefix = PARTS[name].optional
    if not prefix:
        return False
    try:
        with safe_open(str(path), "pt") as tensors:
            return not any(key.startswith(prefix) for key in tensors.keys())
    except (OSError, SafetensorError):
        return False  # `state_dict` says what is wrong with the file


# How each component is built from its repo folder's config: (config class or loader, model class).
_BUILDERS: dict[str, tuple[Callable[[Path], Any], type]] = {
    "text_encoder": (LlamaConfig.from_pretrained, LlamaModel),
    "text_encoder_2": (CLIPTextConfig.from_pretrained, CLIPTextModel),
    "image_encoder": (SiglipVisionConfig.from_pretrained, SiglipVisionModel),
}


def check_folder(root: str | os.PathLike) -> None:
    """Every component FramePack takes from ComfyUI is in the models folder `root` (ComfyUIError naming the first
    one that is not), so the app and the command line refuse a wrong folder before anything loads."""
    if not Path(root).is_dir():
        raise ComfyUIError(f"ComfyUI models folder not found: {root}")
    for name in PARTS:
        component_file(root, name)


def load_component(name: str, path: str | os.PathLike, config_folder: str | os.PathLike, dtype: torch.dtype) -> torch.nn.Module:
    """Component `name` ("text_encoder", "text_encoder_2", "vae", "image_encoder") with the weights of ComfyUI's file
    `path`, built from the config in `config_folder` (the published repo's subfolder), computing in `dtype`."""
    path, config_folder = Path(path), Path(config_folder)
    if name == "vae":
        config = dict(AutoencoderKLHunyuanVideo.load_config(config_folder))
        with torch.device("meta"):
            model = AutoencoderKLHunyuanVideo.from_config(config)
        model.load_state_dict(state_dict(name, path, model, config, dtype), strict=True, assign=True)
        return model
    load_config, cls = _BUILDERS[name]
    config = load_config(config_folder)
    if _without_optional(name, path):
        config.vision_use_head = False  # the head's output is not what FramePack conditions on
    with torch.device("meta"):
        skeleton = cls._from_config(config, dtype=dtype)
    weights = state_dict(name, path, skeleton, config.to_dict(), dtype)
    return cls.from_pretrained(None, config=config, state_dict=weights, dtype=dtype)


def llama_files(path: str | os.PathLike) -> dict[str, tuple[Path, str]]:
    """The Llama encoder's parameters in ComfyUI's file, for reading layer by layer as it runs (RAM is short): each
    parameter's name in `LlamaModel` with the file and key. A scaled 8-bit file cannot be read that way."""
    path = Path(path)
    with safe_open(str(path), "pt") as tensors:
        keys = list(tensors.keys())
        if _QUANT_MARKER in keys or any(k.endswith(_WEIGHT_SCALES) for k in keys):
            raise ComfyUIError(
                f"{path.name} is scaled 8-bit, which cannot be read layer by layer from its file as this machine's RAM "
                f"needs: use llava_llama3_fp16.safetensors, or run where RAM holds the text encoder"
            )
    unused = PARTS["text_encoder"].unused
    return {k.removeprefix("model."): (path, k) for k in keys if k not in unused}
