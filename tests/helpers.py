"""Shared test helpers: where the tiny models and golden cases are, the app on a free port, made videos and clips,
random LoRAs and post-processing weights, the command line in a subprocess, clips stored turned. Test files import from
here (and the browser tests from pages.py), never from each other; fixtures live in conftest.py."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from framepack.controls import JobInputs
from framepack.engine import generate
from framepack.events import Done, SectionDone
from framepack.lora import linear_modules
from framepack.memory.planning import MemoryPlan, plan_memory
from framepack.memory.sizes import GB, ModelSizes
from framepack.settings import Settings

REPO = Path(__file__).resolve().parents[1]
# The modules each test LoRA changes: fused rows where a format has them, split by hand here.
DOUBLE_QKV = ("attn.to_q", "attn.to_k", "attn.to_v")


SINGLE_LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


SHARED = REPO.parent / "shared"


TINY = SHARED / "fixtures" / "tiny-framepack"


TINY_MODELS = TINY / "models"


CASES = TINY / "cases"


MODEL_CONFIGS = SHARED / "model-configs"


CONTROL_CASES = TINY / "cases-controls"  # section controls: timed prompts, end frames, keyframes


CASE_DIRS = {p.name: p for folder in (CASES, CONTROL_CASES) if folder.is_dir() for p in sorted(folder.iterdir())}


CASE_NAMES = list(CASE_DIRS)
IMAGE = CASES / "v1_original" / "input.png"
# The original variant's tiny transformer folder, and a short job that checks a transformer's output end to end.
TRANSFORMER_FOLDER = TINY_MODELS / "lllyasviel" / "FramePackI2V_HY"
SHORT_JOB = Settings(total_second_length=0.8, latent_window_size=3, steps=3, height=48, width=80, use_teacache=False, seed=5)


needs_shared = pytest.mark.skipif(
    not TINY_MODELS.is_dir(), reason=f"the shared fixtures are not beside the checkout ({TINY} is missing)"
)


def load_case(name: str) -> tuple[dict, Path]:
    case_dir = CASE_DIRS[name]
    return json.loads((case_dir / "settings.json").read_text()), case_dir


def case_inputs(raw: dict, case_dir: Path):
    """A case's images as the engine takes them: start image, end image and keyframes (files in the case)."""
    from framepack.controls import JobInputs, Keyframe

    end = case_dir / raw["end_image"] if raw.get("end_image") else None
    keyframes = [Keyframe(seconds, case_dir / name) for seconds, name in raw.get("keyframes", [])]
    return JobInputs(case_dir / raw["image"], end, keyframes)



def hub_cache_from(root: Path, hf_home: Path, revision: str = "0123456789abcdef" * 2 + "01234567") -> Path:
    """`hf_home` made into a hub cache of the model root `root` (`<root>/<org>/<name>/...`) as FramePack and
    FramePack-Studio keep theirs (HF_HOME=hf_home): `hub/models--org--name/snapshots/<revision>/...` linking to
    the files, and `refs/main` naming that revision. Returns `hf_home`."""
    for repo in sorted(p for org in root.iterdir() if org.is_dir() for p in org.iterdir() if p.is_dir()):
        cached = hf_home / "hub" / f"models--{repo.parent.name}--{repo.name}"
        for file in (f for f in repo.rglob("*") if f.is_file()):
            link = cached / "snapshots" / revision / file.relative_to(repo)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(file)
        (cached / "refs").mkdir(parents=True, exist_ok=True)
        (cached / "refs" / "main").write_text(revision)
    return hf_home


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class AppServer:
    url: str
    outputs: Path


@contextlib.contextmanager
def running_app(outputs: Path, *args: str, variant: str = "original") -> Iterator[AppServer]:
    """The app on the tiny models, built from its command line (plus `args`) as `main` builds it."""
    if not TINY_MODELS.is_dir():
        pytest.skip(f"the tiny FramePack models are not beside the checkout ({TINY_MODELS} is missing)")
    from framepack.app import start as ui

    port = free_port()
    argv = ["--models", str(TINY_MODELS), "--outputs", str(outputs), "--port", str(port), *args]
    app = ui.create_app(variant, ui.parse_args(argv, variant))
    app.launch(prevent_thread_lock=True, quiet=True)
    try:
        yield AppServer(f"http://127.0.0.1:{port}", outputs)
    finally:
        app.close()



def make_clip(path: Path, frames: int, fps: int, size: tuple[int, int], codec: str = "libx264", fmt: str | None = None,
               audio: bool = False) -> Path:  # fmt: skip
    """A clip whose frames are told apart by their brightness and a moving bar, optionally with a tone."""
    width, height = size
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p" if codec == "mjpeg" else "yuv420p"
        sound = container.add_stream("aac", rate=44100, layout="mono") if audio else None
        for index in range(frames):
            image = np.full((height, width, 3), 40 + (index * 7) % 180, np.uint8)
            image[:, (index * 3) % width] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            samples = round(44100 * frames / fps)
            for start in range(0, samples, 1024):
                count = min(1024, samples - start)
                tone = np.sin(np.arange(start, start + count, dtype=np.float32)[None] * 0.05)
                frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 44100, start
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path



TONE = 440.0  # Hz, the sine of the test videos' sound


def make_video(path: Path, frames: list[np.ndarray], fps: Fraction | int = 30, *, sound: str | None = "aac",
               codec: str = "libx264", container: str | None = None) -> Path:  # fmt: skip
    """A test video of `frames` (uint8 RGB), with a TONE Hz sine as long as the picture (`sound`: its codec, AAC at
    44.1 kHz or Opus at 48 kHz; None: silent). libx264 at CRF 0 unless `codec` says otherwise (ffv1: lossless)."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height = w, h
        video.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        if codec == "libx264":
            video.options = {"crf": "0"}
        audio = out.add_stream(sound, rate=48000 if sound == "libopus" else 44100, layout="stereo") if sound else None
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i
            out.mux(video.encode(picture))
        out.mux(video.encode())
        if audio is not None:
            rate = audio.rate
            total = round(rate * len(frames) / Fraction(fps))
            for start in range(0, total, 960):
                t = np.arange(start, min(start + 960, total)) / rate
                wave = (0.3 * np.sin(2 * np.pi * TONE * t)).astype(np.float32)
                chunk = av.AudioFrame.from_ndarray(np.stack([wave, wave]), format="fltp", layout="stereo")
                chunk.sample_rate, chunk.pts = rate, start
                out.mux(audio.encode(chunk))
            out.mux(audio.encode(None))
    return path


def moving_frames(count: int, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """A random texture panning right by 1 px per frame: detail in brightness every 4 px, colour that changes
    slowly across it (as 4:2:0 chroma can hold it)."""
    rng = np.random.default_rng(seed)
    width = w + count
    grey = rng.integers(40, 216, (h // 4 + 2, width // 4 + 2), dtype=np.uint8)
    detail = np.asarray(Image.fromarray(grey).resize((grey.shape[1] * 4, grey.shape[0] * 4), Image.Resampling.BICUBIC))
    x = np.linspace(0, 1, width)[None, :, None]
    tint = np.array([0.7, 0.85, 1.0]) + 0.3 * np.array([1.0, -0.5, -1.0]) * x  # a slow sweep of hue
    big = np.clip(detail[:h, :width, None] * tint, 0, 255).astype(np.uint8)
    return [np.ascontiguousarray(big[:, i : i + w]) for i in range(count)]


def decoded(path: Path) -> tuple[list[np.ndarray], Fraction]:
    """All frames of a video (uint8 RGB) and its average frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], Fraction(stream.average_rate)


def sound_of(path: Path) -> tuple[str, float, float]:
    """The first audio track's codec, length in seconds and strongest frequency."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [f.to_ndarray()[0] for f in container.decode(stream)]
        samples = np.concatenate(chunks).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
        peak = np.fft.rfftfreq(len(samples), 1 / stream.rate)[spectrum.argmax()]
        return stream.codec_context.name, len(samples) / stream.rate, float(peak)



# Practical-RIFE 4.25/4.26 as published (train_log/IFNet_HDv3.py): an encoder `encode` (Conv 3->16 stride 2, two
# Conv 16->16, ConvTranspose 16->4), then five IFBlocks of widths 192, 128, 96, 64, 32. Block 0 takes both frames,
# both feature maps and the timestep (3+3+4+4+1 = 15 channels); the others take the warped frames and features,
# the timestep, the mask, 8 carried feature channels and the flow (28). Each block: conv0 = two stride-2 convs
# (c/2, c), convblock = 8 ResConvs (conv c->c and a per-channel `beta`), lastconv = ConvTranspose c->4*13 and a
# PixelShuffle(2) (13 = flow 4 + mask 1 + carried 8).
V4_WIDTHS = (192, 128, 96, 64, 32)


def v4_state_dict(widths=V4_WIDTHS, hidden=16, features=4, carried=8, seed=0) -> dict[str, torch.Tensor]:
    """Random weights in the published v4 key layout (written from the description above, not from the module)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    sd = {"encode.cnn0.weight": rand(hidden, 3, 3, 3), "encode.cnn0.bias": rand(hidden)}
    for i in (1, 2):
        sd[f"encode.cnn{i}.weight"], sd[f"encode.cnn{i}.bias"] = rand(hidden, hidden, 3, 3), rand(hidden)
    sd["encode.cnn3.weight"], sd["encode.cnn3.bias"] = rand(hidden, features, 4, 4), rand(features)
    for i, c in enumerate(widths):
        cin = 6 + 2 * features + 1 + (0 if i == 0 else 1 + carried + 4)
        p = f"block{i}."
        sd[p + "conv0.0.0.weight"], sd[p + "conv0.0.0.bias"] = rand(c // 2, cin, 3, 3), rand(c // 2)
        sd[p + "conv0.1.0.weight"], sd[p + "conv0.1.0.bias"] = rand(c, c // 2, 3, 3), rand(c)
        for k in range(8):
            sd[p + f"convblock.{k}.conv.weight"], sd[p + f"convblock.{k}.conv.bias"] = rand(c, c, 3, 3), rand(c)
            sd[p + f"convblock.{k}.beta"] = torch.ones(1, c, 1, 1)
        sd[p + "lastconv.0.weight"], sd[p + "lastconv.0.bias"] = rand(c, 4 * (5 + carried), 4, 4), rand(4 * (5 + carried))
    return sd


def save_pkl(sd: dict[str, torch.Tensor], path):
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)  # as the training code saves it (DataParallel)
    return path


def srvgg_state_dict(scale: int = 2, feat: int = 8) -> dict[str, torch.Tensor]:
    """A tiny SRVGGNetCompact (Real-ESRGAN's compact upscaler) in its key layout."""
    return {
        "body.0.weight": torch.zeros(feat, 3, 3, 3), "body.0.bias": torch.zeros(feat), "body.1.weight": torch.ones(feat),
        "body.2.weight": torch.zeros(feat, feat, 3, 3), "body.2.bias": torch.zeros(feat), "body.3.weight": torch.ones(feat),
        "body.4.weight": torch.zeros(3 * scale * scale, feat, 3, 3), "body.4.bias": torch.zeros(3 * scale * scale),
    }  # fmt: skip



def random_lora(fmt: str, transformer, seed: int, rank: int = 3, alpha: float | None = 2.0):
    """A LoRA file's tensors in `fmt` for the tiny transformer, and the change it means for each diffusers module
    (up @ down * alpha / rank, rows split by hand)."""
    generator = torch.Generator().manual_seed(seed)
    linears = linear_modules(transformer)
    tensors, deltas = {}, {}

    def pair(key: str, pieces: list[str], down_name: str, up_name: str, with_alpha: bool) -> None:
        width = linears[pieces[0]][0]
        rows = [linears[piece][1] for piece in pieces]
        down = torch.randn(rank, width, generator=generator) * 0.3
        up = torch.randn(sum(rows), rank, generator=generator) * 0.3
        tensors[f"{key}.{down_name}"], tensors[f"{key}.{up_name}"] = down, up
        scale = 1.0
        if with_alpha:
            tensors[f"{key}.alpha"] = torch.tensor(alpha)
            scale = alpha / rank
        start = 0
        for piece, size in zip(pieces, rows):
            deltas[piece] = up[start : start + size] @ down * scale
            start += size

    if fmt in ("kohya", "hunyuan"):
        fused = {
            "double_blocks.0.img_attn_qkv": [f"transformer_blocks.0.{p}" for p in DOUBLE_QKV],
            "double_blocks.1.txt_mlp.fc1": ["transformer_blocks.1.ff_context.net.0.proj"],
            "single_blocks.1.linear1": [f"single_transformer_blocks.1.{p}" for p in SINGLE_LINEAR1],
            "single_blocks.0.linear2": ["single_transformer_blocks.0.proj_out"],
        }
        for original, pieces in fused.items():
            if fmt == "kohya":
                pair(f"lora_unet_{original.replace('.', '_')}", pieces, "lora_down.weight", "lora_up.weight", True)
            else:
                pair(f"diffusion_model.{original}", pieces, "lora_A.weight", "lora_B.weight", False)
        return tensors, deltas
    modules = ["transformer_blocks.0.attn.to_q", "transformer_blocks.1.ff.net.2", "single_transformer_blocks.1.proj_mlp",
               "single_transformer_blocks.0.attn.to_v", "transformer_blocks.0.attn.add_k_proj"]  # fmt: skip
    for module in modules:
        if fmt == "diffusers":
            pair(f"transformer.{module}", [module], "lora_A.weight", "lora_B.weight", False)
        elif fmt == "comfyui":
            pair(f"diffusion_model.{module}", [module], "lora_down.weight", "lora_up.weight", True)
        else:  # musubi
            pair(f"lora_unet_{module.replace('.', '_')}", [module], "lora_down.weight", "lora_up.weight", True)
    return tensors, deltas



def write_lora(tmp_path: Path, name: str, tensors: dict, metadata: dict | None = None) -> Path:
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path



def section_latents(models, settings: Settings, out: Path, loras=()) -> torch.Tensor:
    events = list(generate(models, settings, JobInputs(IMAGE, loras=tuple(loras)), out, previews=False))
    assert isinstance(events[-1], Done), events[-1]
    return torch.cat([e.latents for e in events if isinstance(e, SectionDone)], dim=2)



def transformer_inputs(transformer, height: int, width: int, window: int, device="cpu", dtype=torch.float32) -> dict:
    cfg = transformer.config
    h, w = height // 8, width // 8
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    return dict(
        hidden_states=rand(1, 16, window, h, w),
        timestep=torch.tensor([500.0], device=device, dtype=dtype),
        guidance=torch.tensor([10000.0], device=device, dtype=dtype),
        encoder_hidden_states=rand(1, 7, cfg.text_embed_dim),
        encoder_attention_mask=torch.ones(1, 7, dtype=torch.bool, device=device),
        pooled_projections=rand(1, cfg.pooled_projection_dim),
        image_embeds=rand(1, 16, cfg.image_proj_dim),
        indices_latents=torch.arange(1, window + 1, device=device),
        latents_clean=rand(1, 16, 2, h, w),
        indices_latents_clean=torch.tensor([0, window + 1], device=device),
        latents_history_2x=rand(1, 16, 2, h, w),
        indices_latents_history_2x=torch.arange(window + 2, window + 4, device=device),
        latents_history_4x=rand(1, 16, 16, h, w),
        indices_latents_history_4x=torch.arange(window + 4, window + 20, device=device),
        return_dict=False,
    )


def check_memory(*argv: str, capsys) -> tuple[int, list[str], str]:
    parser = argparse.ArgumentParser(prog="framepack")
    from framepack.cli.memory import add_parsers

    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["check-memory", *argv])
    code = args.handler(args)
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err


def low_plan_on_cpu(models, **changes) -> MemoryPlan:
    """A low-memory plan whose "GPU" is the CPU, so group offloading can be installed and run here."""
    sizes = ModelSizes.of(models)
    plan = plan_memory(1 * GB, 64 * GB, device="cpu", mode="low", sizes=sizes, fp8=sizes.fp8, height=128, width=128)
    return dataclasses.replace(plan, transformer=dataclasses.replace(plan.transformer, **changes))



def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "framepack", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


# A clip as a phone stores it (see turned_clip): colours in its corners show which way up it is read.
RED, GREEN, GREY = (255, 0, 0), (0, 255, 0), (128, 128, 128)


def turned_clip(path: Path, degrees: float, hflip: bool = False, vflip: bool = False, frames: int = 3) -> Path:
    """A 64x32 clip stored landscape, red in its top-left corner and green in its top-right, with a display matrix
    that turns it `degrees` anticlockwise (PyAV's sense, as `frame.rotation` reads it back) then mirrors it."""
    image = np.full((32, 64, 3), GREY, np.uint8)
    image[:8, :8], image[:8, -8:] = RED, GREEN
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt, stream.options = 64, 32, "yuv420p", {"crf": "0"}
        stream.set_display_rotation(degrees, hflip, vflip)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def corner(image: np.ndarray, where: str) -> np.ndarray:
    """The mean colour of a 4x4 patch inside the named corner's 8x8 block."""
    rows = slice(2, 6) if where[0] == "t" else slice(-6, -2)
    cols = slice(2, 6) if where[1] == "l" else slice(-6, -2)
    return image[rows, cols].reshape(-1, 3).mean(axis=0)
