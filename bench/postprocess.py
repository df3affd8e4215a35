"""Post-processing speed and memory: frames per second and peak memory (RSS; CUDA peak where there is a GPU) of
each step and model at 640 and 1080 lines, then the whole pipeline on 180 and 1,800 frames (memory must not grow
with the video's length).

No download: RIFE HDv3 is the real `flownet.pkl` when --rife names it, else random weights in its layout; RIFE v4
(4.26's layout), Real-ESRGAN x4plus (RRDBNet) and realesr-general-x4v3 (SRVGG) have random weights in their real
shapes. Speed and memory do not depend on the weights' values. Without CUDA everything runs on the CPU at a small
size by default (the figures then show that the code works, not how fast a GPU is).

    .venv/bin/python bench/postprocess.py                                # CPU: 160 lines, a few frames each
    .venv/bin/python bench/postprocess.py --lines 640 1080 --frames 180 1800 --rife path/to/flownet.pkl
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framepack.events import Done
from framepack.postprocess.colour import ColourMatch
from framepack.postprocess.formats import FORMATS, open_writer, output_format
from framepack.postprocess.pipeline import PostprocessOptions, postprocess, read_frames
from framepack.postprocess.rife import V4, HDv3, load_interpolator
from framepack.postprocess.upscale import UpscalerSpec, build_network, load_upscaler

MB = 1 << 20


def reset_peaks() -> None:
    """Start a new peak: RSS (Linux: writing 5 to clear_refs resets VmHWM) and CUDA's allocator."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the RSS peak is the process's so far
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peaks() -> str:
    rss = "n/a"
    status = Path("/proc/self/status")
    if status.is_file():
        line = next((x for x in status.read_text().splitlines() if x.startswith("VmHWM:")), None)
        rss = f"{int(line.split()[1]) / 1024:7.0f} MB" if line else rss
    if not torch.cuda.is_available():
        return f"RSS {rss}"
    torch.cuda.synchronize()
    return f"RSS {rss}  CUDA {torch.cuda.max_memory_allocated() / MB:7.0f} MB"


def measure(name: str, count: int, work: Callable[[], None], note: str = "") -> None:
    """Run `work` (which handles `count` frames) once warm, then timed; print frames per second and peaks."""
    reset_peaks()
    started = time.perf_counter()
    work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    print(f"  {name:<44} {count / seconds:8.2f} frames/s  {peaks()}  {note}", flush=True)


def texture(height: int, width: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """A smooth random picture panning 2 px per frame (real motion for the flow networks)."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.random((1, 3, height // 8 + 2, (width + 2 * count) // 8 + 2), np.float32))
    big = torch.nn.functional.interpolate(small, scale_factor=8, mode="bicubic")[0].clamp(0, 1).mul(255).byte()
    big = big.permute(1, 2, 0).numpy()
    return [np.ascontiguousarray(big[:height, 2 * i : 2 * i + width]) for i in range(count)]


def make_source(path: Path, height: int, width: int, count: int) -> Path:
    """An H.264 video of the panning texture with an AAC tone, like the app's outputs."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt, video.options = width, height, "yuv420p", {"crf": "16"}
        audio = out.add_stream("aac", rate=44100, layout="stereo")
        frames = texture(height, width, min(count, 60))
        for i in range(count):
            picture = av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")
            picture.pts = i
            out.mux(video.encode(picture))
        out.mux(video.encode())
        total = 44100 * count // 30
        for start in range(0, total, 1024):
            wave = (0.2 * np.sin(2 * np.pi * 440 * np.arange(start, min(start + 1024, total)) / 44100)).astype(np.float32)
            chunk = av.AudioFrame.from_ndarray(np.stack([wave, wave]), format="fltp", layout="stereo")
            chunk.sample_rate, chunk.pts = 44100, start
            out.mux(audio.encode(chunk))
        out.mux(audio.encode(None))
    return path


def random_models(folder: Path, rife: Path | None) -> dict[str, Path]:
    """Model files in the real layouts (random weights where no real file is given)."""
    torch.manual_seed(0)
    files = {"RIFE HDv3": rife} if rife else {}
    if not rife:
        torch.save(HDv3([90, 90, 90], teacher=90).state_dict(), folder / "hdv3.pkl")
        files["RIFE HDv3 (random)"] = folder / "hdv3.pkl"
    torch.save(V4([192, 128, 96, 64, 32], 16, 4, 8).state_dict(), folder / "v4.pkl")
    files["RIFE v4.26 layout (random)"] = folder / "v4.pkl"
    for name, spec in (("RealESRGAN_x4plus", UpscalerSpec("rrdbnet", 4, 64, 23, 32, num_up=2)),
                       ("realesr-general-x4v3", UpscalerSpec("srvgg", 4, 64, 32))):  # fmt: skip
        torch.save(build_network(spec).state_dict(), folder / f"{name}.pth")
        files[name] = folder / f"{name}.pth"
    return files


def to_tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255


def bench_size(lines: int, count: int, models: dict[str, Path], device: torch.device, folder: Path,
               upscale_count: int) -> None:  # fmt: skip
    width = round(lines * 16 / 9 / 16) * 16
    print(f"\n{width}x{lines}, {count} frames per figure, {device}", flush=True)
    frames = texture(lines, width, count + 1)
    source = make_source(folder / f"src{lines}.mp4", lines, width, count)
    measure("decode (PyAV, H.264)", count, lambda: sum(1 for _ in read_frames(source)))
    match = ColourMatch(frames[0])
    measure("colour match (Lab mean/std)", count, lambda: [match(f) for f in frames[:count]])
    for name in FORMATS:
        fmt = output_format(name)
        target = folder / f"out{lines}{fmt.suffix or '_png'}"

        def encode(fmt=fmt, target=target) -> None:
            writer = open_writer(target, fmt, width, lines, Fraction(30), sound=source)
            for frame in frames[:count]:
                writer.add(frame)
            writer.close()

        measure(f"encode {name} ({fmt.label})", count, encode)
    tensors = [to_tensor(f) for f in frames]
    for name, path in models.items():
        if name.startswith("RIFE"):
            rife = load_interpolator(path, device)
            rife.inbetweens(tensors[0], tensors[1], 2)  # warm: kernels, allocator
            note = f"weights {rife.weight_bytes() / MB:.0f} MB, estimate {rife.working_bytes(lines, width) / MB:.0f} MB"
            for factor in (2, 4):

                def pairs(factor=factor, rife=rife) -> None:
                    for i in range(count):
                        rife.inbetweens(tensors[i], tensors[i + 1], factor)

                measure(f"{name} x{factor} (input frames)", count, pairs, note)
            del rife
        elif upscale_count:
            upscaler = load_upscaler(path, device)
            upscaler(tensors[0])
            note = f"tile {upscaler.tile}, estimate {upscaler.working_bytes(lines, width) / MB:.0f} MB"
            measure(f"{name} x4", upscale_count, lambda up=upscaler: [up(t) for t in tensors[:upscale_count]], note)
            del upscaler
        if device.type == "cuda":
            torch.cuda.empty_cache()


def bench_flat(count: int, lines: int, rife: Path, device: torch.device, folder: Path) -> None:
    """The whole pipeline on one video length, in this (fresh) process so the RSS peak is its own."""
    width = round(lines * 16 / 9 / 16) * 16
    options = PostprocessOptions(interpolate=2, interpolation_model=str(rife), color_match="start")
    source = make_source(folder / f"flat{count}.mp4", lines, width, count)
    reset_peaks()
    started = time.perf_counter()
    events = postprocess(source, folder / f"flat{count}.out.mp4", options, device=device)
    done = [e for e in events if isinstance(e, Done)][-1]
    seconds = time.perf_counter() - started
    print(f"  {count:5d} frames -> {done.frames:5d}  {count / seconds:7.2f} input frames/s  {peaks()}", flush=True)


def flat_check(frames: list[int], lines: int, rife: Path, device: torch.device) -> None:
    """Each video length in a process of its own (spawned, not forked)."""
    width = round(lines * 16 / 9 / 16) * 16
    print(f"\nwhole pipeline (colour match, RIFE x2, H.264 with sound) at {width}x{lines}, {device}", flush=True)
    for count in frames:
        command = [sys.executable, __file__, "--flat-run", str(count), "--flat-lines", str(lines), "--rife", str(rife),
                   "--device", str(device)]  # fmt: skip
        subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--lines", type=int, nargs="+", default=[640, 1080] if cuda else [160])
    parser.add_argument("--count", type=int, default=30 if cuda else 3, help="frames per figure")
    parser.add_argument("--frames", type=int, nargs="+", default=[180, 1800], help="video lengths for the flat check")
    parser.add_argument("--flat-lines", type=int, default=640 if cuda else 64)
    parser.add_argument("--rife", type=Path, help="the real RIFE HDv3 flownet.pkl (else random weights)")
    parser.add_argument("--flat-run", type=int, help=argparse.SUPPRESS)  # one length of the flat check
    parser.add_argument("--upscale-count", type=int, default=4 if cuda else 1,
                        help="frames per upscaler figure (0: skip them; a CPU takes minutes per frame)")  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.flat_run:
            bench_flat(args.flat_run, args.flat_lines, args.rife, device, folder)
            return
        print(f"torch {torch.__version__}, PyAV {av.__version__}, {torch.cuda.get_device_name() if cuda else 'no CUDA'}")
        models = random_models(folder, args.rife)
        for lines in args.lines:
            bench_size(lines, args.count, models, device, folder, args.upscale_count)
        rife = next(path for name, path in models.items() if name.startswith("RIFE HDv3"))
        if args.rife is None:
            rife = Path(tempfile.gettempdir()) / "framepack-bench-hdv3.pkl"
            torch.save(torch.load(models["RIFE HDv3 (random)"]), rife)  # outlives this folder for the child runs
        flat_check(args.frames, args.flat_lines, rife, device)


if __name__ == "__main__":
    main()
