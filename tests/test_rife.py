"""RIFE frame interpolation: the real HDv3 weights between real frames, the v4 layout with weights made in its
published key layout, strict loading and its errors, scene-cut detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import save_pkl, srvgg_state_dict, v4_state_dict
from PIL import Image
from real_weights import rife_dir

from framepack.postprocess import PostprocessError
from framepack.postprocess.rife import (
    CUT_HISTOGRAM,
    CUT_SSIM,
    Thumbnail,
    cut_measures,
    detect_interpolator,
    is_scene_cut,
    load_interpolator,
)
from framepack.postprocess.weights import read_state_dict


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small frames: one thread is about as fast, and does not stall when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hdv3():
    return load_interpolator(rife_dir() / "train_log" / "flownet.pkl", "cpu")


def demo(name: str) -> np.ndarray:
    return np.asarray(Image.open(rife_dir() / "demo" / name).convert("RGB"))


def tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame.copy()).permute(2, 0, 1)[None].float() / 255


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((x - y) ** 2).mean()))


# ----------------------------------------------------------------------------------------------- HDv3, real weights


def test_hdv3_file_loads_strictly(hdv3):
    file = read_state_dict(rife_dir() / "train_log" / "flownet.pkl")
    assert len(file) == 160 and detect_interpolator(file) == "rife-hdv3"
    assert hdv3.arch == "rife-hdv3" and not hdv3.takes_timestep and hdv3.dtype == torch.float32
    mine = hdv3.net.state_dict()
    assert mine.keys() == file.keys()  # every tensor of the file has its place, the teacher block too
    assert all(mine[k].shape == v.shape for k, v in file.items())
    assert hdv3.weight_bytes() == sum(v.numel() * 4 for v in file.values())
    # about 580 bytes per (padded) pixel in float32 (measured 575 on CUDA), and it grows with the frame
    assert 560 * 1152 * 640 < hdv3.working_bytes(640, 1136) < 700 * 1152 * 640
    assert 2.5 < hdv3.working_bytes(1080, 1920) / hdv3.working_bytes(640, 1136) < 3.2


def test_hdv3_recovers_the_middle_of_a_known_shift(hdv3):
    """Crops of one real frame moved by 0, d and 2d pixels: the frame made between the 0 and 2d crops is the d
    crop, far more closely than a 50/50 blend of the two (HDv3, fp32; measured 44.0 and 38.3 dB for d = 4 and 8
    against 18.3 and 15.7 dB for the blend)."""
    image = demo("I0_0.png")
    h, w = 160, 288
    for d in (4, 8):
        crops = [tensor(image[20 + k * d : 20 + k * d + h, 20 + k * d : 20 + k * d + w]) for k in range(3)]
        made = hdv3.middle(crops[0], crops[2])
        blend = (crops[0] + crops[2]) / 2
        assert made.shape == crops[1].shape and made.dtype == torch.float32
        ours, blended = psnr(made, crops[1]), psnr(blend, crops[1])
        assert ours > 34 and ours > blended + 15, (d, ours, blended)


def test_hdv3_between_real_consecutive_frames(hdv3):
    """Two real consecutive frames: the made middle is closer to each than they are to each other, about equally
    (RIFE runs both ways round and averages), and x4 shares its middle with x2."""
    a, b = (tensor(demo(name)[::2, ::2]) for name in ("I0_0.png", "I0_1.png"))
    quarters = hdv3.inbetweens(a, b, 4)  # by halving: the middle, then the middle of each half
    middle = quarters[1]
    apart, to_a, to_b = psnr(a, b), psnr(middle, a), psnr(middle, b)
    assert to_a > apart + 1.5 and to_b > apart + 1.5 and abs(to_a - to_b) < 1.5, (apart, to_a, to_b)
    assert len(quarters) == 3 and torch.equal(hdv3.between(a, b, 0.25), quarters[0])
    assert psnr(quarters[0], a) > psnr(quarters[2], a)  # the first quarter is nearer the start


def test_hdv3_any_frame_size_and_timestep_rules(hdv3):
    a = tensor(demo("I1_0.png")[:37, :53])
    same = hdv3.middle(a, a)  # 37x53 is padded to 64x64 and cropped back
    assert same.shape == a.shape and psnr(same, a) > 40
    with pytest.raises(ValueError, match="middle frame only"):
        hdv3.between(a, a, 1 / 3)
    with pytest.raises(ValueError, match="power of two"):
        hdv3.inbetweens(a, a, 3)


def test_hdv3_in_half_precision_matches_float32(hdv3):
    half = load_interpolator(rife_dir() / "train_log" / "flownet.pkl", "cpu", torch.float16)
    a, b = (tensor(demo(name)[:32, :64]) for name in ("I2_0.png", "I2_1.png"))
    assert half.dtype == torch.float16 and next(half.net.parameters()).dtype == torch.float16
    assert psnr(half.middle(a, b), hdv3.middle(a, b)) > 40


# ----------------------------------------------------------------------------------------------- v4 layout


def test_v4_layout_loads_strictly_and_runs_at_any_timestep(tmp_path):
    sd = v4_state_dict()
    assert len(sd) == 8 + 5 * (4 + 8 * 3 + 2)  # 158 tensors
    assert detect_interpolator(sd) == "rife-v4"
    training_only = {"teacher.conv0.0.0.weight": torch.zeros(1), "caltime.0.weight": torch.zeros(1)}
    v4 = load_interpolator(save_pkl({**sd, **training_only}, tmp_path / "flownet.pkl"), "cpu")
    assert v4.arch == "rife-v4" and v4.takes_timestep and v4.net.state_dict().keys() == sd.keys()
    assert v4.multiple(64, 64) == 128  # the 1/16 block, then 4x down inside it, twice
    a, b = torch.rand(1, 3, 45, 70), torch.rand(1, 3, 45, 70)
    quarters = v4.inbetweens(a, b, 4)
    assert len(quarters) == 3 and all(q.shape == a.shape and 0 <= q.min() and q.max() <= 1 for q in quarters)
    assert not torch.equal(v4.between(a, b, 1 / 3), v4.between(a, b, 2 / 3))  # the timestep reaches the blocks


def test_v4_wiring_flow_and_mask_channels(tmp_path):
    """Zero weights but the last block's output bias: flow towards frame 0 of +3 px in x and a saturated mask make
    the output frame 0 sampled 3 px to the right (backward warping); a mask of -20 gives frame 1's warp instead."""
    sd = {k: torch.zeros_like(v) if not k.endswith("beta") else v for k, v in v4_state_dict().items()}
    bias = sd["block4.lastconv.0.bias"]  # PixelShuffle(2): output channel c comes from bias[4c:4c+4]
    bias[0:4] = 3.0  # flow to frame 0, x
    bias[16:20] = 20.0  # mask: all frame 0
    v4 = load_interpolator(save_pkl(sd, tmp_path / "v4.pkl"), "cpu")
    a, b = torch.rand(1, 3, 32, 48), torch.rand(1, 3, 32, 48)
    out = v4.middle(a, b)
    assert torch.allclose(out[..., :-3], a[..., 3:], atol=1e-5)
    bias[16:20] = -20.0
    bias[8:12] = -2.0  # flow to frame 1, x
    out = load_interpolator(save_pkl(sd, tmp_path / "v4b.pkl"), "cpu").middle(a, b)
    assert torch.allclose(out[..., 2:], b[..., :-2], atol=1e-5)


def test_v4_with_a_wrong_shape_names_the_file(tmp_path):
    sd = v4_state_dict()
    sd["block2.conv0.0.0.weight"] = torch.zeros(48, 27, 3, 3)  # 27 input channels: not what the layout gives
    with pytest.raises(PostprocessError, match=r"bad\.pkl does not fit the RIFE v4 layout"):
        load_interpolator(save_pkl(sd, tmp_path / "bad.pkl"), "cpu")


def test_an_upscaler_or_other_file_is_refused_by_name(tmp_path):
    torch.save(srvgg_state_dict(), tmp_path / "realesr-tiny.pth")
    with pytest.raises(PostprocessError, match=r"^realesr-tiny\.pth is a Real-ESRGAN upscaler, not a frame-interpolation model$"):
        load_interpolator(tmp_path / "realesr-tiny.pth", "cpu")
    torch.save({"block0.something.weight": torch.zeros(3)}, tmp_path / "odd.pkl")
    with pytest.raises(PostprocessError, match="a RIFE model of a layout this app does not run"):
        load_interpolator(tmp_path / "odd.pkl", "cpu")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(PostprocessError, match="other.pt is not a RIFE model"):
        load_interpolator(tmp_path / "other.pt", "cpu")


# ----------------------------------------------------------------------------------------------- scene cuts


def test_scene_cuts_on_real_frames():
    """Consecutive frames of a shot and a shot panned fast are one scene; frames of different shots are a cut."""
    shots = {name: Thumbnail(demo(name)) for name in ("I0_0.png", "I0_1.png", "I1_0.png", "I1_1.png", "I2_0.png", "I2_1.png")}
    for k in "012":
        assert not is_scene_cut(shots[f"I{k}_0.png"], shots[f"I{k}_1.png"])
        assert min(cut_measures(shots[f"I{k}_0.png"], shots[f"I{k}_1.png"])) > 0.75
    for x, y in (("0", "1"), ("0", "2"), ("1", "2")):
        assert is_scene_cut(shots[f"I{x}_0.png"], shots[f"I{y}_1.png"])
    image = demo("I0_0.png")
    for shift in (8, 24, 48):  # 2 %, 7 % and 13 % of the frame's width in one frame
        panned = Thumbnail(image[:200, :360]), Thumbnail(image[shift : 200 + shift, shift : 360 + shift])
        assert not is_scene_cut(*panned), cut_measures(*panned)
    assert 0 < CUT_SSIM < 1 and 0 < CUT_HISTOGRAM < 1
