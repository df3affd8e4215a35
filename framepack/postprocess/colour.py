"""Colour matching: pulling every frame's colours back to a reference's, against the drift of long FramePack-F1
videos (second by second they darken and their hue shifts).

Mode "start" matches each frame to the reference (the video's first frame, or a job's start image): in CIE Lab
(perceptual: L is lightness, a and b the colour axes) each channel's mean and spread are moved to the reference's
(Reinhard et al., "Color Transfer between Images", 2001). The reference's statistics are computed once; each frame
is then matched on its own, so it streams.

What it changes: global brightness, contrast and colour cast, the drift it is meant for. What it cannot do: fix local
changes (one face getting redder, a shadow spreading), since one transform applies to the whole frame; and it cannot
tell drift from a scene that really changes colour (lights go down, a red coat fills the frame): those are pulled
back towards the reference too. It is off unless asked for.

(The `color-matcher` package was considered: it is GPL-3.0 and pulls matplotlib, so this is written here.)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

MODES = ("off", "start")

# sRGB (D65) to CIE XYZ, and the D65 white it is relative to.
_RGB_TO_XYZ = torch.tensor(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=torch.float64,
)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_DELTA = 6 / 29
# sRGB decoding of every 8-bit value, exactly, once.
_CODES = torch.arange(256, dtype=torch.float64) / 255
_LINEAR = torch.where(_CODES <= 0.04045, _CODES / 12.92, ((_CODES + 0.055) / 1.055) ** 2.4)
# A channel whose spread would change by more than this factor is only changed by this much: a flat frame (a fade
# to black) would otherwise have its noise blown up to the reference's contrast.
MAX_SPREAD_RATIO = 2.0
_SAMPLE = 256  # frames are measured on a grid of about this many rows and columns


@functools.lru_cache(maxsize=4)
def _constants(device: torch.device) -> tuple[torch.Tensor, ...]:
    """The conversion tables on a device, float32, moved there once."""
    return tuple(x.to(device, torch.float32) for x in (_LINEAR, _RGB_TO_XYZ.T, _XYZ_TO_RGB.T, _WHITE))


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 sRGB (..., 3) to float32 CIE Lab (L in 0..100), on rgb's device."""
    linear, to_xyz, _, white = _constants(rgb.device)
    xyz = (linear[rgb.long()] @ to_xyz) / white
    f = torch.where(xyz > _DELTA**3, xyz.clamp_min(1e-12) ** (1 / 3), xyz / (3 * _DELTA**2) + 4 / 29)
    return torch.stack((116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])), -1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """float32 CIE Lab (..., 3) to uint8 sRGB, out-of-gamut colours clipped."""
    _, _, to_rgb, white = _constants(lab.device)
    fy = (lab[..., 0] + 16) / 116
    f = torch.stack((fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200), -1)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4 / 29)) * white
    linear = (xyz @ to_rgb).clamp(0, 1)
    srgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
    return (srgb * 255).round_().clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class LabStats:
    """Mean and standard deviation of L, a and b over a frame."""

    mean: torch.Tensor  # (3,)
    std: torch.Tensor  # (3,)


def lab_stats(frame: torch.Tensor) -> LabStats:
    """The Lab statistics of a uint8 RGB frame (H, W, 3), measured on a grid of about 256 x 256 of its pixels."""
    h, w = frame.shape[:2]
    lab = rgb_to_lab(frame[:: max(1, h // _SAMPLE), :: max(1, w // _SAMPLE)]).reshape(-1, 3)
    return LabStats(lab.mean(0), lab.std(0, correction=0))


class ColourMatch:
    """Matches frames to a reference frame's colour statistics; `__call__(frame) -> frame`, uint8 RGB (H, W, 3)
    numpy arrays. The arithmetic runs on `device` (the GPU's many cores make it nearly free there)."""

    def __init__(self, reference: np.ndarray, device: str | torch.device = "cpu"):
        if reference.ndim != 3 or reference.shape[-1] != 3 or reference.dtype != np.uint8:
            raise ValueError(f"the reference must be a uint8 RGB image (H, W, 3), got {reference.dtype} {reference.shape}")
        self.device = torch.device(device)
        self.reference = lab_stats(torch.from_numpy(reference).to(self.device))

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(frame).to(self.device)
        stats = lab_stats(pixels)
        ratio = (self.reference.std / stats.std.clamp_min(1e-3)).clamp(1 / MAX_SPREAD_RATIO, MAX_SPREAD_RATIO)
        if torch.allclose(ratio, torch.ones_like(ratio), atol=1e-4) and torch.allclose(stats.mean, self.reference.mean, atol=1e-3):
            return frame  # already matched: no round trip through Lab
        lab = (rgb_to_lab(pixels) - stats.mean) * ratio + self.reference.mean
        return lab_to_rgb(lab).cpu().numpy()


def drift(frame: np.ndarray, reference: np.ndarray) -> float:
    """How far a frame's colours are from a reference's: the distance between their mean Lab colours (Delta E
    of the means; about 2.3 is a just noticeable difference)."""
    a, b = lab_stats(torch.from_numpy(frame)), lab_stats(torch.from_numpy(reference))
    return float(torch.linalg.vector_norm(a.mean - b.mean))
