"""Real-ESRGAN's ncnn models (a `.param` layer list and a `.bin` of weights) as PyTorch state dicts in the layout of
the published Real-ESRGAN `.pth` files (BasicSR's key names), so that tests load real trained weights through the
same loader a user's `.pth` goes through.

ncnn's files, as far as these models use them: the `.param` text starts with the magic 7767517 and the layer and
blob counts, then one line per layer: type, name, input and output counts, the blob names, then `key=value`
parameters (a key of -23300-k holds parameter k as an array, `count,v1,v2,...`). The `.bin` holds, layer after
layer in that order, a Convolution's weights as a 4-byte tag (0x01306B47: float16 follows, padded to 4 bytes;
0: float32 follows) in PyTorch's (out, in, kh, kw) order, then its bias as bare float32; a PReLU's slopes as bare
float32. Every other layer these models use carries no weights.

The converter checks the graph against the structure the state dict implies (channel counts, which convolutions
carry a LeakyReLU and its slope, the residual scalings, the upsampling modes) and reports those facts, so a test
can hold the architecture under test to the published graph rather than to the converter's assumptions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

MAGIC = 7767517
FP16_TAG = 0x01306B47
FP32_TAG = 0
LEAKY_RELU = 2  # ncnn's fused activation type 2: LeakyReLU, its slope in parameter 10


@dataclass
class Layer:
    """One `.param` line."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, int | float | list[float]]

    def number(self, key: int, default: int = 0) -> int:
        return int(self.params.get(key, default))  # type: ignore[arg-type]


@dataclass
class Converted:
    """A converted model: its state dict in the published layout and what the ncnn graph says about it."""

    arch: str  # "rrdbnet" | "srvgg"
    state_dict: dict[str, torch.Tensor]
    facts: dict[str, object] = field(default_factory=dict)


def parse_param(text: str) -> list[Layer]:
    """The layers of a `.param` file's text."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if int(lines[0][0]) != MAGIC:
        raise ValueError("not an ncnn .param file (wrong magic number)")
    layer_count = int(lines[1][0])
    layers = []
    for parts in lines[2 : 2 + layer_count]:
        kind, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
        inputs, outputs = parts[4 : 4 + n_in], parts[4 + n_in : 4 + n_in + n_out]
        params: dict[int, int | float | list[float]] = {}
        for item in parts[4 + n_in + n_out :]:
            key, _, value = item.partition("=")
            number = int(key)
            if number <= -23300:  # an array: its count first
                params[-23300 - number] = [float(v) for v in value.split(",")[1:]]
            else:
                params[number] = float(value) if any(c in value for c in ".eE") else int(value)
        layers.append(Layer(kind, name, inputs, outputs, params))
    if len(layers) != layer_count:
        raise ValueError(f"the .param file lists {len(layers)} layers, its header {layer_count}")
    return layers


class _Bin:
    """Reads a `.bin` front to back."""

    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def tagged(self, count: int) -> np.ndarray:
        tag = int.from_bytes(self.data[self.offset : self.offset + 4], "little")
        self.offset += 4
        if tag == FP16_TAG:
            values = np.frombuffer(self.data, np.float16, count, self.offset).astype(np.float32)
            self.offset += (count * 2 + 3) // 4 * 4
            return values
        if tag == FP32_TAG:
            return self.raw(count)
        raise ValueError(f"unsupported ncnn weight storage (tag {tag:#x}): only float16 and float32 are read")

    def raw(self, count: int) -> np.ndarray:
        values = np.frombuffer(self.data, np.float32, count, self.offset).copy()
        self.offset += count * 4
        return values


def read_weights(layers: list[Layer], data: bytes) -> list[dict[str, np.ndarray]]:
    """Each layer's arrays in `.bin` order: `weight` and `bias` of a Convolution, `weight` (slopes) of a PReLU."""
    reader, weights = _Bin(data), []
    for layer in layers:
        arrays: dict[str, np.ndarray] = {}
        if layer.type == "Convolution":
            out_channels, kernel, size = layer.number(0), layer.number(1), layer.number(6)
            arrays["weight"] = reader.tagged(size).reshape(out_channels, size // (out_channels * kernel * kernel),
                                                           kernel, kernel)  # fmt: skip
            if layer.number(5):
                arrays["bias"] = reader.raw(out_channels)
        elif layer.type == "PReLU":
            arrays["weight"] = reader.raw(layer.number(0))
        elif layer.type not in ("Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle"):
            raise ValueError(f"layer type {layer.type} ({layer.name}) is not one these converters know")
        weights.append(arrays)
    if reader.offset != len(data):
        raise ValueError(f"the .bin holds {len(data)} bytes, the layers read {reader.offset}")
    return weights


def convert(param: str | Path, weights_file: str | Path | None = None) -> Converted:
    """Convert an ncnn Real-ESRGAN model (RRDBNet or SRVGGNetCompact) to the published `.pth` layout."""
    param = Path(param)
    layers = parse_param(param.read_text())
    weights = read_weights(layers, Path(weights_file or param.with_suffix(".bin")).read_bytes())
    if any(layer.type == "PReLU" for layer in layers):
        return _srvgg(layers, weights)
    return _rrdbnet(layers, weights)


def _conv(state: dict[str, torch.Tensor], name: str, arrays: dict[str, np.ndarray]) -> None:
    state[f"{name}.weight"] = torch.from_numpy(arrays["weight"])
    state[f"{name}.bias"] = torch.from_numpy(arrays["bias"])


def _leaky_slope(layer: Layer) -> float | None:
    if layer.number(9) != LEAKY_RELU:
        return None
    return float(layer.params[10][0])  # type: ignore[index]


def _rrdbnet(layers: list[Layer], weights: list[dict[str, np.ndarray]]) -> Converted:
    """conv_first; per block 3 dense blocks of 5 convolutions; conv_body; conv_up1, conv_up2; conv_hr; conv_last."""
    convs = [(layer, arrays) for layer, arrays in zip(layers, weights, strict=True) if layer.type == "Convolution"]
    num_block, rest = divmod(len(convs) - 6, 15)
    if rest or num_block < 1:
        raise ValueError(f"{len(convs)} convolutions is not an RRDBNet's count (6 + 15 per block)")
    names = ["conv_first"]
    names += [f"body.{b}.rdb{r}.conv{c}" for b in range(num_block) for r in (1, 2, 3) for c in range(1, 6)]
    names += ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    num_feat, num_grow = convs[0][1]["weight"].shape[0], convs[1][1]["weight"].shape[0]
    state: dict[str, torch.Tensor] = {}
    activated = []
    for name, (layer, arrays) in zip(names, convs, strict=True):
        shape = arrays["weight"].shape
        expected_in, expected_out = num_feat, num_feat
        if name == "conv_first":
            expected_in = 3
        elif ".rdb" in name:
            index = int(name[-1])
            expected_in, expected_out = num_feat + (index - 1) * num_grow, num_grow if index < 5 else num_feat
        elif name == "conv_last":
            expected_out = 3
        if shape != (expected_out, expected_in, 3, 3):
            raise ValueError(f"{layer.name} ({name}) has weights of shape {shape}")
        slope = _leaky_slope(layer)
        if slope is not None:
            activated.append((name, slope))
        _conv(state, name, arrays)
    scalings = sorted({tuple(layer.params.get(1, [])) for layer in layers if layer.type == "Eltwise"})  # type: ignore[arg-type]
    interps = [(layer.number(0), layer.params.get(1), layer.params.get(2)) for layer in layers if layer.type == "Interp"]
    facts = {
        "num_block": num_block, "num_feat": num_feat, "num_grow": num_grow,
        # names of the convolutions followed by a LeakyReLU, and the slopes used
        "leaky": sorted({name.rsplit(".", 1)[-1] for name, _ in activated}),
        "leaky_slopes": sorted({round(slope, 6) for _, slope in activated}),
        "residual_scalings": scalings,  # Eltwise sums: (weight of the branch, weight of the skip)
        "interp": interps,  # (mode 1 nearest / 2 bilinear / 3 bicubic, height factor, width factor)
        "output_resize": None,
    }  # fmt: skip
    return Converted("rrdbnet", state, facts)


def _srvgg(layers: list[Layer], weights: list[dict[str, np.ndarray]]) -> Converted:
    """body.0 conv, then (PReLU, conv) pairs, the last conv giving 3*scale^2 channels for the pixel shuffle."""
    state: dict[str, torch.Tensor] = {}
    index = 0
    for layer, arrays in zip(layers, weights, strict=True):
        if layer.type == "Convolution":
            if index % 2 or layer.number(9):
                raise ValueError(f"{layer.name}: SRVGG convolutions sit at even places and carry no activation")
            _conv(state, f"body.{index}", arrays)
            index += 1
        elif layer.type == "PReLU":
            if index % 2 == 0:
                raise ValueError(f"{layer.name}: a PReLU must follow a convolution")
            state[f"body.{index}.weight"] = torch.from_numpy(arrays["weight"])
            index += 1
    shuffles = [layer.number(0) for layer in layers if layer.type == "PixelShuffle"]
    interps = [(layer.number(0), layer.params.get(1), layer.params.get(2)) for layer in layers if layer.type == "Interp"]
    last = state[f"body.{index - 1}.weight"]
    scale = math.isqrt(last.shape[0] // 3)
    if shuffles != [scale] or last.shape[0] != 3 * scale * scale:
        raise ValueError(f"the last convolution's {last.shape[0]} channels do not match pixel shuffle {shuffles}")
    # The ncnn x2 and x3 variants are the x4 network with a bicubic resize after it (a trailing Interp, mode 3).
    resize = interps[-1][1] if interps and interps[-1][0] == 3 else None
    facts = {
        "num_conv": (index - 3) // 2, "num_feat": state["body.0.weight"].shape[0], "scale": scale,
        "interp": interps, "output_resize": resize,
    }  # fmt: skip
    return Converted("srvgg", state, facts)
