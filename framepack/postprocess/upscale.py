"""Upscaling frames with Real-ESRGAN's published networks, read from their weight files alone.

Two architectures, written from their published structure:

- RRDBNet (ESRGAN, Real-ESRGAN `RealESRGAN_x4plus`, `RealESRGAN_x2plus`, `RealESRGAN_x4plus_anime_6B`, and the
  community ESRGAN models saved in the original code's `model.N` key layout, such as 4x-UltraSharp);
- SRVGGNetCompact (`realesr-general-x4v3`, `realesr-animevideov3`).

`detect_upscaler` tells the architecture and its sizes from a state dict's keys and shapes; `load_upscaler` builds
the network, loads every weight strictly and returns an `Upscaler`, which runs a frame tile by tile so that a
small GPU can upscale large frames, with an overlap between tiles chosen from each network's receptive field so
that the tiled result is the untiled one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import PostprocessError
from .weights import KNOWN_MODELS, model_kind, read_state_dict

LEAKY_SLOPE = 0.2  # RRDBNet's LeakyReLU
RESIDUAL_SCALE = 0.2  # RRDBNet scales each dense block's and each RRDB's residual branch by this before the skip

# Tile overlap for RRDBNet, in pixels of the network's own grid (input pixels, or pixel-unshuffled ones for
# x2plus). Its theoretical receptive radius is huge (RealESRGAN_x4plus: 2 + 15 * 23 convolutions, 349 pixels),
# but what a pixel that far away changes is far below a uint8 level. Measured with the real RealESRGAN_x4plus
# weights on four real pictures (three 256x448 video frames, one 420x644), 96-pixel tiles against the untiled
# frame, float32 on a GPU (TF32 off); largest difference, share of uint8 values that differ, by how much:
#   overlap   0: 0.34-0.76,       54-61 %,        up to 193 levels
#   overlap  32: 0.048-0.14,      1.4-21 %,       up to 35
#   overlap  64: 0.0044-0.021,    0.08-1.9 %,     up to 6
#   overlap  96: 0.9e-4-4.6e-4,   0.0015-0.021 %, 1 level
#   overlap 112: 1.4e-5-4.8e-5,   0.0046-0.0053 %, 1 level
#   overlap 128: 5e-6-1.1e-5,     0.0006-0.0046 %, 1 level
#   overlap 192: 3.6e-6-7.2e-6,   0.0028-0.0031 %, 1 level
# By 128 the difference is float32's own rounding (the convolution algorithms differ with the input's size), which
# flips the few values that sit on a rounding boundary: no overlap makes those identical. 112 is within a few times
# of that floor, its 1-level flips barely more than at 192. Networks whose whole radius is shorter get all of it,
# which makes their tiles exact: anime_6B (radius 94) tiled with 94 gave the untiled frame bit for bit.
RRDB_OVERLAP = 112

# Memory the tile choice leaves for others: the fraction of free device memory (or available RAM) one tile's
# activations may take, the rest covering the convolution algorithms' workspaces and the allocator's slack.
MEMORY_SHARE = 0.6
MIN_TILE = 64


# ----------------------------------------------------------------------------------------------- architectures


@dataclass(frozen=True)
class UpscalerSpec:
    """An upscaler's architecture and sizes, as read from its weights."""

    arch: str  # "rrdbnet" | "srvgg"
    scale: int
    num_feat: int
    num_block: int  # RRDB blocks (rrdbnet); convolutions between the first and the last (srvgg)
    num_grow: int = 0  # rrdbnet: channels each dense-block convolution adds
    unshuffle: int = 1  # rrdbnet: pixel-unshuffle factor of the input (2 for x2plus, 4 for x1 models)
    num_up: int = 0  # rrdbnet: nearest x2 upsamplings, each followed by a convolution
    layout: str = "basicsr"  # rrdbnet keys: "basicsr" (Real-ESRGAN) or "esrgan" (the original `model.N`)

    @property
    def radius(self) -> int:
        """How far (in input pixels) an output pixel sees: one pixel per 3x3 convolution, in the grid it runs on."""
        if self.arch == "srvgg":
            return self.num_block + 2
        # conv_first, 15 per RRDB, conv_body on the network's grid; then each conv on a grid 2x finer than the last
        grid = 2 + 15 * self.num_block + sum(0.5**k for k in range(1, self.num_up + 1)) + 2 * 0.5**self.num_up
        return math.ceil(grid) * self.unshuffle

    @property
    def overlap(self) -> int:
        """The default tile overlap in input pixels (see RRDB_OVERLAP): exact for SRVGG, measured for RRDBNet."""
        if self.arch == "srvgg":
            return self.radius
        return min(RRDB_OVERLAP * self.unshuffle, self.radius)

    def activation_elements(self, height: int, width: int) -> int:
        """Peak elements alive while the network runs on one (height, width) input, counted from its forward."""
        if self.arch == "srvgg":
            pixels = height * width
            # a conv's input and output (the input frame kept for the skip); at the end the shuffled output, the
            # upsampled input added to it, and the last conv's input
            return pixels * max(3 + 2 * self.num_feat, 3 + self.num_feat + 3 * self.scale**2, 6 * self.scale**2)
        pixels = (height // self.unshuffle) * (width // self.unshuffle)
        feat, grow = self.num_feat, self.num_grow
        # body: the long skip, the RRDB's input, a dense block's buffer, its input and a conv's output
        body = feat * 3 + (feat + 4 * grow) + feat
        # each upsampling: the map before and after the nearest x2, and the conv's output; at the end the last
        # upsampling conv's output, conv_hr's and conv_last's
        ups = [2 * feat * 4**k + feat * 4 ** (k - 1) for k in range(1, self.num_up + 1)]
        final = 2 * feat * 4**self.num_up + 3 * 4**self.num_up
        return pixels * max(body, *ups, final)


def _channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing the block input and every earlier output; LeakyReLU after the first
    four; the fifth's output scaled by 0.2 and added to the input."""

    def __init__(self, num_feat: int, num_grow: int):
        super().__init__()
        self.num_grow = num_grow
        for k in range(5):
            out_channels = num_grow if k < 4 else num_feat
            setattr(self, f"conv{k + 1}", nn.Conv2d(num_feat + k * num_grow, out_channels, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The dense connections write into one buffer instead of concatenating before every conv (a copy of
        # everything so far each time). In NCHW the channel prefix a conv reads is contiguous for a batch of one.
        channels, grow = x.shape[1], self.num_grow
        layout = torch.channels_last if _channels_last(x) else torch.contiguous_format
        buffer = torch.empty((x.shape[0], channels + 4 * grow, *x.shape[2:]), dtype=x.dtype, device=x.device,
                             memory_format=layout)  # fmt: skip
        buffer[:, :channels] = x
        for k in range(4):
            end = channels + k * grow
            out = getattr(self, f"conv{k + 1}")(buffer[:, :end])
            buffer[:, end : end + grow] = F.leaky_relu_(out, LEAKY_SLOPE)
        return self.conv5(buffer).mul_(RESIDUAL_SCALE).add_(x)


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, their result scaled by 0.2 and added to the input."""

    def __init__(self, num_feat: int, num_grow: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))).mul_(RESIDUAL_SCALE).add_(x)


class RRDBNet(nn.Module):
    """ESRGAN's generator: conv_first, RRDB blocks, conv_body added to the first features, nearest x2
    upsamplings each with a conv and LeakyReLU, conv_hr with LeakyReLU, conv_last. Real-ESRGAN's x2 and x1
    models pixel-unshuffle the input first (3 * unshuffle^2 channels into conv_first)."""

    def __init__(self, spec: UpscalerSpec):
        super().__init__()
        feat = spec.num_feat
        self.unshuffle = spec.unshuffle
        self.num_up = spec.num_up
        self.conv_first = nn.Conv2d(3 * spec.unshuffle**2, feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(feat, spec.num_grow) for _ in range(spec.num_block)))
        self.conv_body = nn.Conv2d(feat, feat, 3, 1, 1)
        for k in range(1, spec.num_up + 1):
            setattr(self, f"conv_up{k}", nn.Conv2d(feat, feat, 3, 1, 1))
        self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(feat, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = self.conv_body(self.body(feat)).add_(feat)
        for k in range(1, self.num_up + 1):
            up = F.interpolate(feat, scale_factor=2, mode="nearest")
            del feat  # freed before the conv's output is allocated
            feat = F.leaky_relu_(getattr(self, f"conv_up{k}")(up), LEAKY_SLOPE)
            del up
        return self.conv_last(F.leaky_relu_(self.conv_hr(feat), LEAKY_SLOPE))


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact network: 3x3 convolutions with PReLU between them at the input's resolution, the
    last one giving 3 * scale^2 channels that a pixel shuffle turns into the output, plus the input upsampled by
    nearest neighbour."""

    def __init__(self, spec: UpscalerSpec):
        super().__init__()
        feat = spec.num_feat
        self.scale = spec.scale
        layers: list[nn.Module] = [nn.Conv2d(3, feat, 3, 1, 1), nn.PReLU(feat)]
        for _ in range(spec.num_block):
            layers += [nn.Conv2d(feat, feat, 3, 1, 1), nn.PReLU(feat)]
        layers.append(nn.Conv2d(feat, 3 * spec.scale**2, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = F.pixel_shuffle(out, self.scale)
        return out.add_(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


# ----------------------------------------------------------------------------------------------- detection

_BODY = re.compile(r"body\.(\d+)\.")
_ESRGAN_BLOCK = re.compile(r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)")
_ESRGAN_TOP = re.compile(r"model\.(\d+)\.(weight|bias)")


def _shape(state_dict: dict[str, torch.Tensor], key: str, name: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise PostprocessError(f"{name} is missing {key}, which this architecture needs")
    return tuple(state_dict[key].shape)


def detect_upscaler(state_dict: dict[str, torch.Tensor], name: str = "the model") -> UpscalerSpec:
    """The architecture and sizes of an upscaler's weights, from their keys and shapes. Raises PostprocessError
    (naming `name`) for a RIFE file, an unknown architecture or a variant this app does not run."""
    kind = model_kind(state_dict)
    if kind == "interpolator":
        raise PostprocessError(f"{name} is a RIFE frame-interpolation model, not an upscaler")
    if kind is None:
        example = next(iter(state_dict), "")
        raise PostprocessError(f"{name} is not an upscaler this app knows (unknown architecture, e.g. key '{example}')")
    if "conv_first.weight" in state_dict:
        return _detect_basicsr(state_dict, name)
    if "model.0.weight" in state_dict:
        return _detect_esrgan(state_dict, name)
    return _detect_srvgg(state_dict, name)


def _rgb_out(shape: tuple[int, ...], name: str) -> None:
    if shape[0] != 3:
        raise PostprocessError(f"{name} outputs {shape[0]} channels; only RGB (3-channel) upscalers are supported")


def _detect_basicsr(state_dict: dict[str, torch.Tensor], name: str) -> UpscalerSpec:
    feat, in_channels = _shape(state_dict, "conv_first.weight", name)[:2]
    unshuffle = {3: 1, 12: 2, 48: 4}.get(in_channels)
    if unshuffle is None:
        raise PostprocessError(f"{name} takes {in_channels} input channels; only RGB upscalers are supported")
    blocks = {int(m.group(1)) for key in state_dict if (m := _BODY.match(key))}
    num_up = sum(1 for k in range(1, 5) if f"conv_up{k}.weight" in state_dict)
    _rgb_out(_shape(state_dict, "conv_last.weight", name), name)
    if not blocks or num_up == 0:
        raise PostprocessError(f"{name} is an RRDBNet without {'blocks' if not blocks else 'upsampling'}: not supported")
    grow = _shape(state_dict, "body.0.rdb1.conv1.weight", name)[0]
    scale = 2**num_up // unshuffle
    return UpscalerSpec("rrdbnet", scale, feat, max(blocks) + 1, grow, unshuffle, num_up, "basicsr")


def _detect_esrgan(state_dict: dict[str, torch.Tensor], name: str) -> UpscalerSpec:
    blocks = {int(m.group(1)) for key in state_dict if (m := _ESRGAN_BLOCK.fullmatch(key))}
    num_block = max(blocks) + 1
    tops = sorted({int(m.group(1)) for key in state_dict if (m := _ESRGAN_TOP.fullmatch(key))})
    feat, in_channels = _shape(state_dict, "model.0.weight", name)[:2]
    if in_channels != 3:
        raise PostprocessError(f"{name} takes {in_channels} input channels; only RGB upscalers are supported")
    # After model.0 and the residual trunk (model.1) come, for each x2 step, (upsample, conv, LeakyReLU), then
    # the HR conv, a LeakyReLU and the last conv: convs at 3, 6, ..., then 3n + 2 and 3n + 4.
    num_up = (len(tops) - 3) if tops and tops[0] == 0 else -1
    expected = [0, *(3 * k for k in range(1, num_up + 1)), 3 * num_up + 2, 3 * num_up + 4]
    if num_up < 0 or tops != expected:
        raise PostprocessError(f"{name} is an ESRGAN model in a layout this app does not know (top-level layers {tops})")
    for k in range(1, num_up + 1):
        if _shape(state_dict, f"model.{3 * k}.weight", name)[0] != feat:
            # pixel-shuffle upsamplers give feat * 4 channels before the shuffle
            raise PostprocessError(f"{name} upsamples by pixel shuffle, which this app does not support")
    _rgb_out(_shape(state_dict, f"model.{tops[-1]}.weight", name), name)
    if f"model.1.sub.{num_block}.weight" not in state_dict:
        raise PostprocessError(f"{name} is an ESRGAN model without its trunk convolution (model.1.sub.{num_block})")
    grow = _shape(state_dict, "model.1.sub.0.RDB1.conv1.0.weight", name)[0]
    # The original code also had a x3 variant (one nearest x3 step) that has the same keys as x2; it was not
    # published as a community format, so one upsampling step is taken to be x2.
    return UpscalerSpec("rrdbnet", 2**num_up, feat, num_block, grow, 1, num_up, "esrgan")


def _detect_srvgg(state_dict: dict[str, torch.Tensor], name: str) -> UpscalerSpec:
    indices = sorted({int(m.group(1)) for key in state_dict if (m := _BODY.match(key))})
    last = indices[-1]
    if indices != list(range(last + 1)) or last % 2:
        raise PostprocessError(f"{name} has SRVGG layers out of order ({indices[:6]}...)")
    for index in range(1, last, 2):
        if len(_shape(state_dict, f"body.{index}.weight", name)) != 1:
            raise PostprocessError(f"{name} has no PReLU at body.{index}: only SRVGG models with PReLU are supported")
    feat, in_channels = _shape(state_dict, "body.0.weight", name)[:2]
    if in_channels != 3:
        raise PostprocessError(f"{name} takes {in_channels} input channels; only RGB upscalers are supported")
    out_channels = _shape(state_dict, f"body.{last}.weight", name)[0]
    scale = math.isqrt(out_channels // 3)
    if out_channels != 3 * scale * scale:
        raise PostprocessError(f"{name} ends in {out_channels} channels, not 3 * scale^2: not an RGB SRVGG upscaler")
    return UpscalerSpec("srvgg", scale, feat, (last - 2) // 2)


def _basicsr_keys(state_dict: dict[str, torch.Tensor], spec: UpscalerSpec) -> dict[str, torch.Tensor]:
    """The original ESRGAN `model.N` keys renamed to Real-ESRGAN's (same tensors)."""
    tops = {0: "conv_first", 3 * spec.num_up + 2: "conv_hr", 3 * spec.num_up + 4: "conv_last"}
    tops.update({3 * k: f"conv_up{k}" for k in range(1, spec.num_up + 1)})
    renamed = {}
    for key, value in state_dict.items():
        if block := _ESRGAN_BLOCK.fullmatch(key):
            index, rdb, conv, kind = block.groups()
            key = f"body.{index}.rdb{rdb}.conv{conv}.{kind}"
        elif key.startswith(f"model.1.sub.{spec.num_block}."):
            key = "conv_body." + key.rsplit(".", 1)[1]
        elif (top := _ESRGAN_TOP.fullmatch(key)) and int(top.group(1)) in tops:
            key = f"{tops[int(top.group(1))]}.{top.group(2)}"
        renamed[key] = value
    return renamed


def build_network(spec: UpscalerSpec) -> nn.Module:
    """An untrained network of this architecture and size."""
    return RRDBNet(spec) if spec.arch == "rrdbnet" else SRVGGNetCompact(spec)


# ----------------------------------------------------------------------------------------------- running


def _spans(length: int, tile: int, overlap: int, align: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis: (start, end) of what each tile delivers and (start, end) of what it reads, the
    overlap added on either side where the frame has pixels. All bounds are multiples of `align`."""
    if tile <= 0 or length <= tile:
        return [(0, length, 0, length)]
    count = math.ceil(length / tile)
    step = math.ceil(math.ceil(length / count) / align) * align  # even tiles, not a thin last one
    overlap = math.ceil(overlap / align) * align
    return [(start, min(start + step, length), max(0, start - overlap), min(length, start + step + overlap))
            for start in range(0, length, step)]  # fmt: skip


class Upscaler:
    """A loaded upscaling network, ready to run frame after frame."""

    def __init__(self, network: nn.Module, spec: UpscalerSpec, name: str, device: torch.device, dtype: torch.dtype,
                 tile: int, overlap: int):  # fmt: skip
        self.network, self.spec, self.name = network, spec, name
        self.arch, self.scale = spec.arch, spec.scale
        self.device, self.dtype = device, dtype
        self.tile = tile  # the largest side (input pixels) a tile delivers; 0: the whole frame at once
        self.overlap = overlap  # input pixels each tile reads beyond what it delivers, where the frame has them
        # On CUDA the network runs in NHWC, cuDNN's own layout for fp16: NCHW costs a transposed copy of every
        # activation (twice the peak memory, measured) for no speed.
        self.channels_last = device.type == "cuda"
        self._staging: torch.Tensor | None = None  # pinned host memory the tiles' results arrive in

    def __repr__(self) -> str:
        return f"Upscaler({self.name}, {self.arch} x{self.scale}, {self.device}, {self.dtype}, tile {self.tile})"

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.network.parameters())

    def working_bytes(self, height: int, width: int) -> int:
        """Peak memory of one tile at this frame size on the device: activations, the tile in and its output."""
        return tile_bytes(self.spec, *self._tile_shape(height, width), self.dtype)

    def _tile_shape(self, height: int, width: int) -> tuple[int, int]:
        u = self.spec.unshuffle
        height, width = math.ceil(height / u) * u, math.ceil(width / u) * u
        return (max(b - a for *_, a, b in _spans(height, self.tile, self.overlap, u)),
                max(b - a for *_, a, b in _spans(width, self.tile, self.overlap, u)))  # fmt: skip

    def __call__(self, frame: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) float RGB in [0, 1] on any device -> (1, 3, scale*H, scale*W) float32 in [0, 1] on the CPU."""
        if frame.ndim != 4 or frame.shape[:2] != (1, 3):
            raise ValueError(f"expected a (1, 3, H, W) frame, got {tuple(frame.shape)}")
        height, width = frame.shape[-2:]
        u = self.spec.unshuffle
        pad_h, pad_w = -height % u, -width % u
        if pad_h or pad_w:  # pixel unshuffle needs sides divisible by its factor; the extra rows are cut off after
            frame = F.pad(frame.float(), (0, pad_w, 0, pad_h), mode="replicate")
        while True:
            try:
                out = self._run(frame)
                break
            except torch.OutOfMemoryError:
                # the memory free when the tile was chosen went to someone else: halve it and run the frame again
                if self.tile == MIN_TILE or self.device.type != "cuda":
                    raise
                largest = max(frame.shape[-2:])
                self.tile = max(MIN_TILE, (self.tile if self.tile > 0 else largest) // 2)
                torch.cuda.empty_cache()
        return out[..., : height * self.scale, : width * self.scale]

    @torch.inference_mode()
    def _run(self, frame: torch.Tensor) -> torch.Tensor:
        s, u = self.scale, self.spec.unshuffle
        height, width = frame.shape[-2:]
        out = torch.empty((1, 3, height * s, width * s), dtype=torch.float32)
        for y0, y1, ry0, ry1 in _spans(height, self.tile, self.overlap, u):
            for x0, x1, rx0, rx1 in _spans(width, self.tile, self.overlap, u):
                tile = frame[..., ry0:ry1, rx0:rx1].to(self.device, self.dtype)
                if self.channels_last:
                    tile = tile.contiguous(memory_format=torch.channels_last)
                result = self.network(tile)[..., (y0 - ry0) * s : (y1 - ry0) * s, (x0 - rx0) * s : (x1 - rx0) * s]
                out[..., y0 * s : y1 * s, x0 * s : x1 * s] = self._to_host(result.float().clamp_(0, 1))
        return out

    def _to_host(self, result: torch.Tensor) -> torch.Tensor:
        """A tile's result in CPU memory. From a GPU it goes through pinned memory: a copy to pageable memory is
        several times slower (an 8K float frame: 7 ms pinned against 300 ms, measured)."""
        if self.device.type != "cuda":
            return result.cpu()
        if self._staging is None or self._staging.numel() < result.numel():
            try:
                self._staging = torch.empty(result.numel(), dtype=torch.float32, pin_memory=True)
            except RuntimeError:  # pinned memory refused (a small limit on some systems): the plain way
                return result.cpu()
        view = self._staging[: result.numel()].view(result.shape)
        view.copy_(result.contiguous(), non_blocking=True)  # NCHW on the GPU, then one plain transfer
        torch.cuda.current_stream(self.device).synchronize()  # before the view is read, or reused by the next tile
        return view


def tile_bytes(spec: UpscalerSpec, height: int, width: int, dtype: torch.dtype) -> int:
    """Device memory one (height, width) tile takes while it runs: activations, the tile and its float32 result."""
    size = torch.empty((), dtype=dtype).element_size()
    pixels = height * width
    return spec.activation_elements(height, width) * size + 3 * pixels * (size + 4 * spec.scale**2)


def tile_for_budget(spec: UpscalerSpec, budget: int, dtype: torch.dtype, overlap: int | None = None) -> int:
    """The largest tile side (a multiple of 16 input pixels, at least MIN_TILE) whose square, with the overlap on
    both sides, runs within `budget` bytes."""
    overlap = spec.overlap if overlap is None else overlap
    tile = MIN_TILE
    while tile < 8192 and tile_bytes(spec, tile + 16 + 2 * overlap, tile + 16 + 2 * overlap, dtype) <= budget:
        tile += 16
    return tile


def memory_budget(device: torch.device) -> int:
    """Bytes one tile may take on `device`: a share of its free memory (of available RAM on the CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    elif device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        free = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    else:
        from ..memory.sensing import system_ram

        free = system_ram()[0] or 4 << 30  # unknown: assume a small machine
    return int(free * MEMORY_SHARE)


# ----------------------------------------------------------------------------------------------- loading


def _known_name(path: Path) -> str:
    return next((name for name, model in KNOWN_MODELS.items() if model.file == path.name), path.name)


def load_upscaler(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                  tile: int | None = None, overlap: int | None = None) -> Upscaler:  # fmt: skip
    """Load an upscaler file (`.pth` bare or with `params`/`params_ema`, `.safetensors`) strictly: every weight
    used, none missing. dtype None: float16 on CUDA, float32 elsewhere. tile None: the largest that fits the
    device's free memory (on the CPU, the whole frame when it fits the RAM budget); 0: always the whole frame.
    overlap None: the architecture's (exact for SRVGG, measured for RRDBNet; see RRDB_OVERLAP)."""
    path, device = Path(path), torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    state_dict = read_state_dict(path)
    spec = detect_upscaler(state_dict, path.name)
    if spec.layout == "esrgan":
        state_dict = _basicsr_keys(state_dict, spec)
    network = build_network(spec)
    missing, unexpected = _mismatch(network, state_dict)
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unused key {unexpected[0]}"
        raise PostprocessError(f"{path.name} does not fit the {spec.arch} x{spec.scale} it looks like ({detail})")
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # a shape that does not fit
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise PostprocessError(f"{path.name} does not fit the {spec.arch} x{spec.scale} it looks like ({first})") from None
    network.eval().requires_grad_(False).to(device, dtype)
    if device.type == "cuda":
        network.to(memory_format=torch.channels_last)
    overlap = spec.overlap if overlap is None else overlap
    if tile is None:
        tile = tile_for_budget(spec, memory_budget(device), dtype, overlap)
    return Upscaler(network, spec, _known_name(path), device, dtype, tile, overlap)


def _mismatch(network: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = set(network.state_dict())
    return sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)


def resize_to(frame: torch.Tensor, scale: float | tuple[int, int]) -> torch.Tensor:
    """Resize an upscaled frame by `scale` (0.5 turns a x4 model's output into x2 of its input) or to (height,
    width): antialiased bicubic, so a downscale averages the detail it drops instead of aliasing it."""
    height, width = frame.shape[-2:]
    size = scale if isinstance(scale, tuple) else (round(height * scale), round(width * scale))
    if tuple(size) == (height, width):
        return frame
    antialias = size[0] < height or size[1] < width
    return F.interpolate(frame, size=size, mode="bicubic", align_corners=False, antialias=antialias).clamp_(0, 1)
