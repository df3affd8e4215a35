"""Reading post-processing model files (Real-ESRGAN upscalers, RIFE interpolators) and telling their kinds apart
by their keys, whatever container they come in."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import PostprocessError

# Containers the training code of these models wrapped their weights in, in the order they are preferred: the
# exponential moving average of Real-ESRGAN's training, its plain weights, a Lightning-style state dict.
_WRAPPERS = ("params_ema", "params", "state_dict", "model")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A model file's tensors: `.safetensors`, or a PyTorch pickle (`.pth`, `.pkl`, `.pt`, `.ckpt`) read with
    `weights_only` (no code in it runs). Wrappers (`params_ema`, `params`, ...) and DataParallel's `module.`
    prefix are removed. Raises PostprocessError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PostprocessError(f"model file not found: {path.name}")
    try:
        if path.suffix.lower() == ".safetensors":
            data: object = load_file(str(path))
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, SafetensorError, EOFError) as exc:
        raise PostprocessError(f"{path.name} is not a model file this app can read ({type(exc).__name__})") from None
    while isinstance(data, dict) and (wrapper := next((key for key in _WRAPPERS if isinstance(data.get(key), dict)), None)):
        data = data[wrapper]
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise PostprocessError(f"{path.name} holds no model weights")
    return {key.removeprefix("module."): value for key, value in data.items()}
