"""RIFE frame interpolation (Huang et al., "Real-Time Intermediate Flow Estimation for Video Frame Interpolation",
ECCV 2022), written from the published architecture for the two layouts its released weights come in.

Both estimate, coarse to fine, a flow from the frame to be made back to each input frame (4 channels: x, y towards
frame 0, then towards frame 1) and a fusion mask; the output is both inputs warped backwards along their flows and
blended by the sigmoid of the mask. Each stage (an IFBlock) works at 1/scale of the frame, sees the frames warped by
the flow so far and adds a correction.

- HDv3 (`flownet.pkl` of the ECCV2022-RIFE HD models, the file FramePack-Studio uses): three IFBlocks of 90
  channels at 1/4, 1/2 and 1/1, each run on (a, b) and on (b, a) and averaged, so the result is the same either way
  round. `block_tea`, the teacher that saw the true middle frame in training, is in the file; it is built so the
  file loads strictly and is never run. It predicts the middle frame only (t = 0.5).
- v4 (Practical-RIFE 4.x, e.g. 4.25/4.26: five IFBlocks at 1/16 ... 1/1): a small encoder (`encode`) gives each
  frame a few feature channels that are warped along with it, and every block also sees the timestep t, so any t in
  (0, 1) is predicted directly. Block widths and feature sizes are read from the file, checked against the layout.

Frames are (1, 3, H, W) float tensors in [0, 1], RGB (the training data was flipped between channel orders at
random, so either order works). Any size goes: frames are padded to the multiple the network needs and cropped back.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import PostprocessError
from .weights import model_kind, read_state_dict

ARCHES = {"rife-hdv3": "RIFE HDv3", "rife-v4": "RIFE v4"}
# Keys of training-only modules some v4 releases keep (a teacher block and a timestep estimator); never run.
_V4_TRAINING_ONLY = ("teacher.", "caltime.")
_BLOCK = re.compile(r"block(\d+)\.")
_WORKING_ELEMENTS = {"rife-hdv3": 136, "rife-v4": 120}  # see Interpolator.working_bytes


# ----------------------------------------------------------------------------------------------- warping


def _base_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Pixel centres in grid_sample's [-1, 1] coordinates (align_corners=True), (1, h, w, 2) as (x, y)."""
    ys = torch.linspace(-1.0, 1.0, h, device=device)
    xs = torch.linspace(-1.0, 1.0, w, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1)[None]


def warp(image: torch.Tensor, flow: torch.Tensor, grid: torch.Tensor | None = None) -> torch.Tensor:
    """Backward warping: each output pixel samples `image` at itself plus `flow` (pixels, x then y), bilinearly,
    edges repeated. The sampling runs in float32 even for a half model: in fp16 a position near the right edge of
    a 1920 px wide frame is only resolved to about half a pixel."""
    n, _, h, w = flow.shape
    grid = _base_grid(h, w, flow.device) if grid is None else grid
    step = torch.tensor((2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)), device=flow.device)
    where = grid + flow.float().permute(0, 2, 3, 1) * step
    out = F.grid_sample(image.float(), where.expand(n, -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(image.dtype)


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------- HDv3


def _conv_prelu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.PReLU(cout))


def _up_head(c: int, out: int) -> nn.Sequential:
    """Two transposed convolutions back from 1/4 to the block's input size."""
    return nn.Sequential(nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.PReLU(c // 2), nn.ConvTranspose2d(c // 2, out, 4, 2, 1))


class HDv3Block(nn.Module):
    """An IFBlock of HDv3: down 4x, four residual pairs of convolutions, separate heads for flow and mask."""

    def __init__(self, cin: int, c: int):
        super().__init__()
        self.conv0 = nn.Sequential(_conv_prelu(cin, c // 2, 2), _conv_prelu(c // 2, c, 2))
        for i in range(4):
            self.add_module(f"convblock{i}", nn.Sequential(_conv_prelu(c, c), _conv_prelu(c, c)))
        self.conv1 = _up_head(c, 4)
        self.conv2 = _up_head(c, 1)

    def forward(self, x: torch.Tensor, flow: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat((_resize(x, 1 / scale), _resize(flow, 1 / scale) / scale), 1)
        feat = self.conv0(x)
        for i in range(4):
            feat = getattr(self, f"convblock{i}")(feat) + feat
        return _resize(self.conv1(feat), scale) * scale, _resize(self.conv2(feat), scale)


class HDv3(nn.Module):
    """RIFE HDv3's flow network; `forward(a, b)` is the middle frame."""

    takes_timestep = False

    def __init__(self, widths: list[int], cin: int = 11, teacher: int | None = None):
        super().__init__()
        for i, c in enumerate(widths):
            self.add_module(f"block{i}", HDv3Block(cin, c))
        if teacher is not None:
            self.block_tea = HDv3Block(cin + 3, teacher)  # also sees the true middle frame: training only
        self.scales = [2.0 ** (len(widths) - 1 - i) for i in range(len(widths))]  # 4, 2, 1

    def forward(self, a: torch.Tensor, b: torch.Tensor, flow_scale: float = 1.0) -> torch.Tensor:
        n, _, h, w = a.shape
        grid = _base_grid(h, w, a.device)
        flow = a.new_zeros(n, 4, h, w)
        mask = a.new_zeros(n, 1, h, w)
        wa, wb = a, b
        for i, scale in enumerate(self.scales):
            block = getattr(self, f"block{i}")
            # Both directions in one batch: (a, b) with the flow as is, (b, a) with its halves swapped.
            x = torch.cat((torch.cat((wa, wb, mask), 1), torch.cat((wb, wa, -mask), 1)), 0)
            f = torch.cat((flow, flow.roll(2, 1)), 0)
            df, dm = block(x, f, scale / flow_scale)
            flow = flow + (df[:n] + df[n:].roll(2, 1)) / 2
            mask = mask + (dm[:n] - dm[n:]) / 2
            wa, wb = warp(a, flow[:, :2], grid), warp(b, flow[:, 2:], grid)
        m = torch.sigmoid(mask)
        return wa * m + wb * (1 - m)


# ----------------------------------------------------------------------------------------------- v4


def _conv_lrelu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2))


class ResConv(nn.Module):
    """A 3x3 convolution added back to its input with a learned per-channel weight."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x) * self.beta + x, 0.2)


class Head(nn.Module):
    """v4's feature encoder: a frame to `features` channels at full size."""

    def __init__(self, hidden: int, features: int):
        super().__init__()
        self.cnn0 = nn.Conv2d(3, hidden, 3, 2, 1)
        self.cnn1 = nn.Conv2d(hidden, hidden, 3, 1, 1)
        self.cnn2 = nn.Conv2d(hidden, hidden, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(hidden, features, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.cnn0, self.cnn1, self.cnn2):
            x = F.leaky_relu(conv(x), 0.2)
        return self.cnn3(x)


class V4Block(nn.Module):
    """An IFBlock of v4: down 4x, eight ResConvs, one head for flow (4), mask (1) and features for the next block."""

    def __init__(self, cin: int, c: int, out: int):
        super().__init__()
        self.conv0 = nn.Sequential(_conv_lrelu(cin, c // 2, 2), _conv_lrelu(c // 2, c, 2))
        self.convblock = nn.Sequential(*(ResConv(c) for _ in range(8)))
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(c, 4 * out, 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor, flow: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, ...]:
        x = _resize(x, 1 / scale)
        if flow is not None:
            x = torch.cat((x, _resize(flow, 1 / scale) / scale), 1)
        out = _resize(self.lastconv(self.convblock(self.conv0(x))), scale)
        return out[:, :4] * scale, out[:, 4:5], out[:, 5:]


class V4(nn.Module):
    """Practical-RIFE 4.x's flow network; `forward(a, b, t)` is the frame at time t."""

    takes_timestep = True

    def __init__(self, widths: list[int], hidden: int, features: int, carried: int):
        super().__init__()
        self.encode = Head(hidden, features)
        first = 6 + 2 * features + 1  # both frames, both feature maps, the timestep
        later = first + 1 + carried + 4  # ... warped, with the mask, the carried features and the flow so far
        for i, c in enumerate(widths):
            self.add_module(f"block{i}", V4Block(first if i == 0 else later, c, 5 + carried))
        self.scales = [2.0 ** (len(widths) - 1 - i) for i in range(len(widths))]  # 16, 8, 4, 2, 1

    def forward(self, a: torch.Tensor, b: torch.Tensor, t: float = 0.5, flow_scale: float = 1.0) -> torch.Tensor:
        n, _, h, w = a.shape
        grid = _base_grid(h, w, a.device)
        fa, fb = self.encode(a), self.encode(b)
        time = a.new_full((n, 1, h, w), t)
        flow, mask, feat = self.block0(torch.cat((a, b, fa, fb, time), 1), None, self.scales[0] / flow_scale)
        wa, wb = warp(a, flow[:, :2], grid), warp(b, flow[:, 2:], grid)
        for i in range(1, len(self.scales)):
            wfa, wfb = warp(fa, flow[:, :2], grid), warp(fb, flow[:, 2:], grid)
            x = torch.cat((wa, wb, wfa, wfb, time, mask, feat), 1)
            df, mask, feat = getattr(self, f"block{i}")(x, flow, self.scales[i] / flow_scale)
            flow = flow + df
            wa, wb = warp(a, flow[:, :2], grid), warp(b, flow[:, 2:], grid)
        m = torch.sigmoid(mask)
        return wa * m + wb * (1 - m)


# ----------------------------------------------------------------------------------------------- loading


def _blocks(state_dict: dict[str, torch.Tensor]) -> list[int]:
    return sorted({int(m.group(1)) for key in state_dict if (m := _BLOCK.match(key))})


def detect_interpolator(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Which RIFE layout a state dict is ("rife-hdv3" or "rife-v4"), by its keys; None if neither."""
    if not _blocks(state_dict):
        return None
    if "encode.cnn0.weight" in state_dict and "block0.lastconv.0.weight" in state_dict:
        return "rife-v4"
    if "block0.convblock0.0.0.weight" in state_dict and "block0.conv2.2.weight" in state_dict:
        return "rife-hdv3"
    return None


def build_network(state_dict: dict[str, torch.Tensor], arch: str) -> nn.Module:
    """The network a state dict of layout `arch` fits, sized from its tensors. Raises ValueError on a layout that
    does not add up (loading strictly then names the keys)."""
    blocks = _blocks(state_dict)
    if blocks != list(range(len(blocks))):
        raise ValueError(f"blocks numbered {blocks}")
    widths = [state_dict[f"block{i}.conv0.1.0.weight"].shape[0] for i in blocks]
    if arch == "rife-hdv3":
        teacher = state_dict.get("block_tea.conv0.1.0.weight")
        return HDv3(widths, state_dict["block0.conv0.0.0.weight"].shape[1], None if teacher is None else teacher.shape[0])
    hidden, features = state_dict["encode.cnn3.weight"].shape[:2]
    carried = state_dict["block0.lastconv.0.weight"].shape[1] // 4 - 5
    return V4(widths, hidden, features, carried)


def check_interpolator(state_dict: dict[str, torch.Tensor], name: str) -> str:
    """The RIFE layout of a state dict; PostprocessError naming the file `name` when it is an upscaler, not RIFE, or
    RIFE of a layout this module does not build."""
    arch = detect_interpolator(state_dict)
    if arch is not None:
        return arch
    kind = model_kind(state_dict)
    if kind == "upscaler":
        raise PostprocessError(f"{name} is a Real-ESRGAN upscaler, not a frame-interpolation model")
    what = "a RIFE model of a layout this app does not run" if kind == "interpolator" else "not a RIFE model"
    raise PostprocessError(f"{name} is {what} (supported: RIFE HDv3, Practical-RIFE 4.x with a feature encoder)")


def load_network(path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, str]:
    """A RIFE file's network (on the CPU, float32, eval mode) and its layout, loaded strictly (`state_dict`: the
    file's, if already read). Raises PostprocessError naming the file (see check_interpolator)."""
    path = Path(path)
    state_dict = read_state_dict(path) if state_dict is None else state_dict
    arch = check_interpolator(state_dict, path.name)
    if arch == "rife-v4":
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_V4_TRAINING_ONLY)}
    try:
        net = build_network(state_dict, arch)
        net.load_state_dict(state_dict, strict=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0][:200]
        raise PostprocessError(f"{path.name} does not fit the {ARCHES[arch]} layout ({detail})") from None
    return net.eval().requires_grad_(False), arch


# ----------------------------------------------------------------------------------------------- interpolator


class Interpolator:
    """A loaded RIFE network: frames in between two frames. Takes and returns (1, 3, H, W) float tensors in [0, 1]
    (results on the CPU, float32), any H and W; fp16 on CUDA, fp32 on the CPU unless `dtype` says otherwise."""

    def __init__(self, net: nn.Module, name: str, arch: str, device: torch.device, dtype: torch.dtype):
        self.net, self.name, self.arch, self.device, self.dtype = net, name, arch, device, dtype
        self.takes_timestep: bool = net.takes_timestep
        self.label = ARCHES[arch]

    def flow_scale(self, h: int, w: int) -> float:
        """Flow is estimated at half resolution for frames over 2560 px, as RIFE's authors advise for 4K (motions
        larger in pixels than the training crops held)."""
        return 0.5 if max(h, w) > 2560 else 1.0

    def multiple(self, h: int, w: int) -> int:
        """What H and W are padded to: twice the coarsest block's total downsampling (scale x 4), as RIFE's own
        inference pads (32 for HDv3, 128 for five-block v4)."""
        return max(32, int(self.net.scales[0] * 4 * 2 / self.flow_scale(h, w)))

    @torch.no_grad()
    def inbetweens(self, a: torch.Tensor, b: torch.Tensor, n: int) -> list[torch.Tensor]:
        """The n - 1 frames at t = 1/n, ..., (n-1)/n between a and b: directly for a timestep network, else by
        halving (n must then be a power of two)."""
        if n < 2:
            return []
        if not self.takes_timestep and n & (n - 1):
            raise ValueError(f"{self.label} makes the middle frame only: x{n} is not a power of two")
        h, w = a.shape[-2:]
        pa, pb = self._prepare(a), self._prepare(b)
        made = [self._run(pa, pb, k / n) for k in range(1, n)] if self.takes_timestep else self._halves(pa, pb, n)
        return [x[..., :h, :w].float().clamp(0, 1).cpu() for x in made]

    @torch.no_grad()
    def between(self, a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
        """The frame at time t in (0, 1) between a (t = 0) and b (t = 1). Without a timestep input, t must be
        k / 2**m: the middle is made, then the middle of the half t lies in, and so on."""
        if not 0 < t < 1:
            raise ValueError(f"t must lie strictly between 0 and 1, got {t}")
        if not self.takes_timestep and (t * (1 << 16)) % 1:
            raise ValueError(f"{self.label} makes the middle frame only: t = {t} cannot be reached by halving")
        h, w = a.shape[-2:]
        pa, pb = self._prepare(a), self._prepare(b)
        if self.takes_timestep:
            made = self._run(pa, pb, t)
        else:
            while True:
                made = self._run(pa, pb, 0.5)
                if t == 0.5:
                    break
                pa, pb, t = (pa, made, t * 2) if t < 0.5 else (made, pb, t * 2 - 1)
        return made[..., :h, :w].float().clamp(0, 1).cpu()

    def middle(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.between(a, b, 0.5)

    def _halves(self, a: torch.Tensor, b: torch.Tensor, n: int) -> list[torch.Tensor]:
        mid = self._run(a, b, 0.5)
        if n == 2:
            return [mid]
        return [*self._halves(a, mid, n // 2), mid, *self._halves(mid, b, n // 2)]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """On the device in the model's dtype, padded on the right and bottom by repeating the edge (the warps
        then find picture, not black, when a flow points past the edge)."""
        h, w = x.shape[-2:]
        m = self.multiple(h, w)
        x = x.to(self.device, self.dtype)
        ph, pw = (-h) % m, (-w) % m
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    def _run(self, a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
        scale = self.flow_scale(*a.shape[-2:])
        if self.takes_timestep:
            return self.net(a, b, t, flow_scale=scale)
        return self.net(a, b, flow_scale=scale)

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.net.parameters())

    def working_bytes(self, h: int, w: int) -> int:
        """Device memory one call takes at H x W beyond the weights: per padded pixel, A bytes per element of the
        model's dtype plus 34 bytes of float32 warping, 10 % added. A was measured on CUDA (x2, 640 and 1080 lines,
        fp16 and fp32): 136 for HDv3 and 120 for v4.26's block widths."""
        m = self.multiple(h, w)
        pixels = (-(-h // m) * m) * (-(-w // m) * m)
        per_element = _WORKING_ELEMENTS[self.arch]
        return int(pixels * (per_element * torch.finfo(self.dtype).bits // 8 + 34) * 1.1)


def load_interpolator(path: str | Path, device: str | torch.device, dtype: torch.dtype | None = None, *,
                      state_dict: dict[str, torch.Tensor] | None = None) -> Interpolator:  # fmt: skip
    """Load a RIFE file (HDv3 or v4.x, told apart by its keys, loaded strictly) onto `device`: fp16 on CUDA and
    fp32 elsewhere unless `dtype` is given. Raises PostprocessError naming the file when it is not one."""
    device = torch.device(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    net, arch = load_network(path, state_dict)
    return Interpolator(net.to(device, dtype), Path(path).stem, arch, device, dtype)


# ----------------------------------------------------------------------------------------------- scene cuts

# Two frames are of different shots when the structure of their small grey versions hardly agrees (SSIM below
# CUT_SSIM, about where RIFE's own scripts put theirs for 32x32 thumbnails) AND their colour histograms differ
# (intersection below CUT_HISTOGRAM). Structure alone also drops on fast motion or a shaking camera; colours alone
# also change when a light goes on. Measured on real frames (see the tests): consecutive frames of one shot score
# SSIM >= 0.79 and intersection >= 0.95; crops moved by 24 and 48 px (a 360 px wide frame) SSIM down to -0.05 but
# intersection >= 0.80; different shots SSIM <= 0.13 and intersection <= 0.53.
CUT_SSIM = 0.2
CUT_HISTOGRAM = 0.7
THUMB = 32


class Thumbnail:
    """What the scene-cut test needs of a frame, computed once per frame: a 32x32 grey image and a colour
    histogram (8 bins per channel, 512 in all, normalised)."""

    def __init__(self, frame: np.ndarray):
        h, w = frame.shape[:2]
        small = _area_resize(frame.astype(np.float32), THUMB, THUMB)
        self.grey = small @ np.array([0.299, 0.587, 0.114], np.float32)
        bins = (frame[:: max(1, h // 128), :: max(1, w // 128)] >> 5).reshape(-1, 3).astype(np.int64)
        counts = np.bincount(bins[:, 0] * 64 + bins[:, 1] * 8 + bins[:, 2], minlength=512)
        self.histogram = counts / counts.sum()


def _area_resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Average over equal-as-possible boxes (a frame of any size down to h x w)."""
    ys = np.linspace(0, image.shape[0], h + 1).astype(int)
    xs = np.linspace(0, image.shape[1], w + 1).astype(int)
    rows = np.add.reduceat(image, ys[:-1], axis=0) / np.diff(ys)[:, None, None]
    return np.add.reduceat(rows, xs[:-1], axis=1) / np.diff(xs)[None, :, None]


def ssim(x: np.ndarray, y: np.ndarray, tile: int = 8) -> float:
    """Mean SSIM (8-bit constants) over non-overlapping tiles of two grey images of the same size."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    th, tw = x.shape[0] // tile, x.shape[1] // tile
    a = x[: th * tile, : tw * tile].reshape(th, tile, tw, tile).transpose(0, 2, 1, 3).reshape(th, tw, -1)
    b = y[: th * tile, : tw * tile].reshape(th, tile, tw, tile).transpose(0, 2, 1, 3).reshape(th, tw, -1)
    ma, mb = a.mean(-1), b.mean(-1)
    va, vb = a.var(-1), b.var(-1)
    cov = ((a - ma[..., None]) * (b - mb[..., None])).mean(-1)
    return float((((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).mean())


def cut_measures(a: Thumbnail, b: Thumbnail) -> tuple[float, float]:
    """(SSIM of the grey thumbnails, intersection of the colour histograms), both 1 for equal frames."""
    return ssim(a.grey, b.grey), float(np.minimum(a.histogram, b.histogram).sum())


def is_scene_cut(a: Thumbnail, b: Thumbnail) -> bool:
    """Whether two consecutive frames belong to different shots (see CUT_SSIM, CUT_HISTOGRAM)."""
    structure, colours = cut_measures(a, b)
    return structure < CUT_SSIM and colours < CUT_HISTOGRAM

