"""Latents to frames: decoding sections with the VAE, cross-fading them into one video, and latent previews."""

from __future__ import annotations

import numpy as np
import torch

# ComfyUI's linear projection of HunyuanVideo latents to RGB (16 channels -> 3), used for live previews.
LATENT_RGB_FACTORS = (
    (-0.0395, -0.0331, 0.0445), (0.0696, 0.0795, 0.0518), (0.0135, -0.0945, -0.0282), (0.0108, -0.0250, -0.0765),
    (-0.0209, 0.0032, 0.0224), (-0.0804, -0.0254, -0.0639), (-0.0991, 0.0271, -0.0669), (-0.0646, -0.0422, -0.0400),
    (-0.0696, -0.0595, -0.0894), (-0.0799, -0.0208, -0.0375), (0.1166, 0.1627, 0.0962), (0.1165, 0.0432, 0.0407),
    (-0.2315, -0.1920, -0.1355), (-0.0270, 0.0401, -0.0821), (-0.0616, -0.0997, -0.0727), (0.0249, -0.0469, -0.1703),
)  # fmt: skip


LATENT_RGB_BIAS = (0.0259, -0.0192, -0.0761)


def latent_preview(latents: torch.Tensor) -> np.ndarray:
    """A cheap RGB preview of (1, 16, T, h, w) latents: the T frames side by side, uint8 (h, T*w, 3)."""
    weight = torch.tensor(LATENT_RGB_FACTORS, device=latents.device, dtype=latents.dtype).T[:, :, None, None, None]
    bias = torch.tensor(LATENT_RGB_BIAS, device=latents.device, dtype=latents.dtype)
    rgb = torch.nn.functional.conv3d(latents, weight, bias=bias).clamp(0, 1)
    rgb = (rgb[0] * 255).to(torch.uint8).cpu()  # (3, T, h, w)
    return rgb.permute(2, 1, 3, 0).flatten(1, 2).numpy()  # (h, T*w, 3)


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Decode scaled latents (1, 16, T, h, w) to float pixels in [-1, 1], (1, 3, 4T-3, H, W), on the CPU."""
    scaled = latents / vae.config.scaling_factor
    return vae.decode(scaled.to(device=vae.device, dtype=vae.dtype)).sample.float().cpu()


def to_uint8_frames(pixels: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) float pixels in [-1, 1] to (T, H, W, 3) uint8, truncating like FramePack."""
    frames = (pixels.float().clamp(-1, 1) * 127.5 + 127.5).to(torch.uint8)
    return frames[0].permute(1, 2, 3, 0).contiguous().numpy()


def blend(earlier: torch.Tensor, later: torch.Tensor, overlap: int) -> torch.Tensor:
    """Join two clips (B, C, T, H, W) whose last/first `overlap` frames show the same moment, cross-fading linearly."""
    if overlap <= 0:
        return torch.cat([earlier, later], dim=2)
    weights = torch.linspace(1, 0, overlap, dtype=earlier.dtype, device=earlier.device).view(1, 1, -1, 1, 1)
    mixed = weights * earlier[:, :, -overlap:] + (1 - weights) * later[:, :, :overlap]
    return torch.cat([earlier[:, :, :-overlap], mixed, later[:, :, overlap:]], dim=2)


class FrameAssembler:
    """Blends decoded section clips into the video, keeping in memory only the frames a later clip can change.

    With `prepend` (the original variant) each clip is earlier in time than the video so far and is blended in
    front; otherwise (F1) after. `add` returns the frames that became final, as uint8.
    """

    def __init__(self, overlap: int, prepend: bool, open_frames: torch.Tensor | None = None, final_frames: int = 0):
        self.overlap = overlap
        self.prepend = prepend
        # Float frames at the growing edge (a resumed job starts with its earlier ones; none: an empty tensor too).
        self.open = open_frames if open_frames is not None and open_frames.shape[2] else None
        self.final_frames = final_frames

    def add(self, clip: torch.Tensor) -> np.ndarray:
        if self.open is None:
            video = clip
        elif self.prepend:
            video = blend(clip, self.open, self.overlap)
        else:
            video = blend(self.open, clip, self.overlap)
        keep = min(self.overlap, video.shape[2])
        if self.prepend:
            self.open, final = video[:, :, :keep], video[:, :, keep:]
        else:
            self.open, final = video[:, :, video.shape[2] - keep :], video[:, :, : video.shape[2] - keep]
        self.final_frames += final.shape[2]
        return to_uint8_frames(final)

    def open_frames(self) -> np.ndarray:
        return to_uint8_frames(self.open) if self.open is not None else np.zeros((0, 0, 0, 3), np.uint8)

    @property
    def num_frames(self) -> int:
        return self.final_frames + (self.open.shape[2] if self.open is not None else 0)

