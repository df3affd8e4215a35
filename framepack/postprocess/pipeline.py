"""The post-processing pipeline: a finished video, frame by frame, through colour matching, upscaling and frame
interpolation into one of the output formats, streamed so memory does not grow with the video's length (the frame
being worked on, the one before it and the frames made between them, plus the networks).

`postprocess(...)` checks everything it can before a model is loaded or a file written (the input is a video, the
models are of the right kinds, the factor is supported, the output is not the input, the format can be encoded)
and raises PostprocessError for the first problem (when the generator is first advanced); it then yields `Status`
lines, `FrameProgress` (input frames done of all, input frames per second) and a final `Done`. Frames are re-timed
at the input's average frame rate (variable-rate inputs come out constant-rate).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from ..events import Done, FrameProgress, Status
from ..media.reading import (
    UPRIGHT,
    Reading,
    Turn,
    VideoInputError,
    check_dynamic_range,
    damage_note,
    opened,
    reading_notes,
    shown_frames,
    turn_of,
    upright_frames,
)
from ..memory.planning import postprocess_phase
from ..memory.sensing import detect_device, system_ram
from ..memory.sizes import gb
from . import PostprocessError
from .colour import MODES, ColourMatch
from .formats import FORMATS, Format, open_writer, output_format
from .rife import (
    Interpolator,
    Thumbnail,
    check_interpolator,
    is_scene_cut,
    load_interpolator,
)
from .upscale import Upscaler, detect_upscaler, load_upscaler, resize_to
from .weights import read_state_dict, resolve_model

DEFAULT_INTERPOLATION_MODEL = "RIFE-HDv3"  # a known name (weights.KNOWN_MODELS), fetched on first use
FACTORS = (1, 2, 4)
MAX_CRF = 63  # libvpx's and SVT-AV1's top; x264 and x265 stop at 51
PROGRESS_EVERY = 0.25  # seconds between FrameProgress events (the last frame always reports)


@dataclass(frozen=True)
class PostprocessOptions:
    """What to do to a video; checked when made (PostprocessError on a bad value)."""

    upscale: str | None = None  # model file path or known name
    scale: float | None = None  # optional target scale after the model (x2 with a x4 model)
    interpolate: int = 1  # 1, 2 or 4
    interpolation_model: str = DEFAULT_INTERPOLATION_MODEL
    color_match: str = "off"  # "off" | "start"
    format: str = "mp4"
    crf: int = 16

    def __post_init__(self) -> None:
        # names in any case, whole numbers given as floats (a form's number field): stored in one spelling
        object.__setattr__(self, "format", str(self.format).lower())
        object.__setattr__(self, "color_match", str(self.color_match).lower())
        for name in ("interpolate", "crf"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                object.__setattr__(self, name, int(value))
        if self.upscale is not None and not str(self.upscale).strip():
            raise PostprocessError("upscale needs a model file or name (leave it out for no upscaling)")
        if self.scale is not None and not 0 < self.scale <= 8:
            raise PostprocessError(f"scale must be above 0 and at most 8, got {self.scale:g}")
        if self.scale is not None and self.upscale is None:
            raise PostprocessError("scale applies after an upscale model: give one with it")
        if self.interpolate not in FACTORS:
            raise PostprocessError(f"interpolation x{self.interpolate} is not supported (x2 or x4, or 1 for none)")
        if not str(self.interpolation_model).strip():
            raise PostprocessError("interpolation_model needs a model file or name")
        if self.color_match not in MODES:
            raise PostprocessError(f"unknown colour match {self.color_match!r} (one of {', '.join(MODES)})")
        if self.format not in FORMATS:
            raise PostprocessError(f"unknown format {self.format!r} (formats: {', '.join(FORMATS)})")
        if not 0 <= self.crf <= MAX_CRF:
            raise PostprocessError(f"crf must be 0 to {MAX_CRF}, got {self.crf}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PostprocessOptions:
        """Options from a dict such as `to_dict` gives (a settings file, a form); missing keys keep their defaults."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise PostprocessError(f"unknown post-processing option {unknown[0]!r}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            values[key] = _convert(key, value)
        return cls(**values)


def _convert(key: str, value: Any) -> Any:
    """A value of a dict (JSON, a form) as the option's type."""
    try:
        if key in ("upscale", "scale") and value in (None, ""):
            return None
        if key == "scale":
            return float(value)
        if key in ("interpolate", "crf"):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        raise PostprocessError(f"bad value for {key}: {value!r}") from None


# ----------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know of an input video."""

    width: int  # as shown (a portrait phone clip is taller than wide)
    height: int
    fps: Fraction
    frames: int  # as the container says, else from the duration; 0 when unknown
    has_sound: bool
    metadata: dict[str, str]
    turn: Turn = UPRIGHT  # how its display matrix turns its frames
    interlaced: bool = False  # its frames are deinterlaced as they are read


def probe(source: Path) -> VideoInfo:
    """The input's size, frame rate and frame count, from its first frame (decoded) and what its file says; what an
    extension would refuse (not a video, only sound, HDR, damaged from its start) is refused here too, as a
    PostprocessError."""
    if source.is_dir():
        raise PostprocessError(f"{source} is a folder, not a video")
    if not source.is_file():
        raise PostprocessError(f"input not found: {source}")
    try:
        with opened(source) as (container, stream):
            check_dynamic_range(source.name, stream)
            fps = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not fps or stream.width <= 0 or stream.height <= 0:
                raise PostprocessError(f"{source.name} is not a video this app can read (no frame rate or size)")
            frames = stream.frames
            if not frames and container.duration:
                frames = round(container.duration / av.time_base * fps)
            facts = Reading()
            turn = turn_of(next(shown_frames(container, stream, source.name, facts)))  # the first: its matrix, its fields
            return VideoInfo(*turn.size(stream.width, stream.height), Fraction(fps), frames, bool(container.streams.audio),
                             dict(container.metadata), turn, facts.deinterlaced)  # fmt: skip
    except VideoInputError as exc:
        raise PostprocessError(str(exc)) from None
    except av.FFmpegError as exc:
        raise PostprocessError(f"{source.name} is not a video this app can read ({type(exc).__name__})") from None


def read_frames(source: Path, facts: Reading | None = None) -> Iterator[np.ndarray]:
    """The input's frames in order, uint8 RGB (H, W, 3), decoded one at a time and read as extensions read them
    (`upright_frames`: turned as players show them, deinterlaced, alpha on white); `facts` hears what was done."""
    try:
        yield from upright_frames(source, facts)
    except VideoInputError as exc:  # the file changed since it was probed
        raise PostprocessError(str(exc)) from None


# ----------------------------------------------------------------------------------------------- checks


def default_output(source: Path, options: PostprocessOptions) -> Path:
    """A name beside the input that says what was done, e.g. `clip.x4-60fps-colour.mp4` (a folder
    `clip.60fps-frames` for PNG frames)."""
    source = Path(source)
    fmt = FORMATS[options.format]
    parts = []
    if options.upscale:
        found = re.search(r"x(\d+)", Path(options.upscale).stem)
        parts.append(f"x{options.scale:g}" if options.scale else f"x{found.group(1)}" if found else "upscaled")
    if options.interpolate > 1:
        try:
            parts.append(f"{round(float(probe(source).fps * options.interpolate), 2):g}fps")
        except PostprocessError:
            parts.append(f"{options.interpolate}xfps")
    if options.color_match != "off":
        parts.append("colour")
    if fmt.container is None:
        parts.append("frames")
    elif not parts and source.suffix.lower() == fmt.suffix:
        parts.append(f"crf{options.crf}" if fmt.crf else fmt.name)
    stem = f"{source.stem}.{'-'.join(parts)}" if parts else source.stem
    return source.with_name(stem + fmt.suffix)


def _check_output(source: Path, output: Path, fmt: Format) -> None:
    src, out = source.resolve(), output.resolve()
    if out == src:
        raise PostprocessError(f"the output would overwrite the input ({source.name}); choose another name")
    if fmt.container is None:
        if out in src.parents:
            raise PostprocessError(f"the output folder {output} holds the input; choose another name")
        if out.exists() and not out.is_dir():
            raise PostprocessError(f"{output} is a file; PNG frames go to a folder")
        return
    if out.is_dir():
        raise PostprocessError(f"{output} is a folder; give a file name for {fmt.label}")
    allowed = {".mp4", ".webm"} if fmt.name == "av1" else {fmt.suffix}
    if output.suffix.lower() not in allowed:
        raise PostprocessError(f"{output.name}: {fmt.label} files end in {' or '.join(sorted(allowed))}")


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError):
        raise PostprocessError(f"unknown device {device!r} (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PostprocessError(f"device {device} asked for, but this machine has no CUDA GPU")
    return device


@dataclass
class _Plan:
    """Everything checked, nothing loaded yet."""

    info: VideoInfo
    fmt: Format
    device: torch.device
    size: tuple[int, int]  # output width, height
    fps: Fraction
    upscaler: tuple[Path, int] | None = None  # the file and its scale
    interpolator: tuple[Path, dict[str, torch.Tensor]] | None = None  # the file and its weights


def _plan(source: Path, output: Path, options: PostprocessOptions, device: str | torch.device | None,
          cache_dir: Path) -> _Plan:  # fmt: skip
    """Check the request in the order that costs least: the input, the output, the format, then the model files."""
    info = probe(source)
    fmt = output_format(options.format, output)
    _check_output(source, output, fmt)
    fps = info.fps * options.interpolate
    if fmt.max_fps and fps > fmt.max_fps:
        raise PostprocessError(f"{fmt.label} plays at most {fmt.max_fps:g} fps, not {float(fps):g}: "
                               f"interpolate less or choose a video format (mp4, webm)")  # fmt: skip
    plan = _Plan(info, fmt, _device(device), (info.width, info.height), fps)
    if options.upscale:
        path = resolve_model(options.upscale, "upscaler", cache_dir)
        spec = detect_upscaler(read_state_dict(path), path.name)
        scale = options.scale or spec.scale
        plan.upscaler = (path, spec.scale)
        plan.size = (round(info.width * scale), round(info.height * scale))
    if options.interpolate > 1:
        path = resolve_model(options.interpolation_model, "interpolator", cache_dir)
        weights = read_state_dict(path)
        check_interpolator(weights, path.name)
        plan.interpolator = (path, weights)
    return plan


# ----------------------------------------------------------------------------------------------- running


def _memory_check(plan: _Plan, upscaler: Upscaler | None, interpolator: Interpolator | None) -> str:
    """The post-processing phase as the memory plan counts it (each network's weights and its largest step's working
    memory: an upscaler tile, RIFE at the output size); PostprocessError when it does not fit what is free."""
    width, height = plan.size
    parts = {}
    if upscaler is not None:
        parts[upscaler.name] = (upscaler.weight_bytes(), upscaler.working_bytes(plan.info.height, plan.info.width))
    if interpolator is not None:
        parts[interpolator.name] = (interpolator.weight_bytes(), interpolator.working_bytes(height, width))
    on_gpu = plan.device.type != "cpu"
    free = detect_device(plan.device).vram_free if on_gpu else system_ram()[0]
    phase, fits = postprocess_phase(parts, on_gpu, free)
    need = phase.gpu_bytes if on_gpu else phase.ram_bytes
    where = "GPU memory" if on_gpu else "RAM"
    if not fits:
        raise PostprocessError(f"post-processing needs {gb(need)} of {where} and {gb(free)} is free: close other "
                               "programs, or choose a smaller upscaler or no interpolation")  # fmt: skip
    return f"post-processing needs {gb(need)} of {where}" + (f" ({gb(free)} free)" if free is not None else "")


def _tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame).permute(2, 0, 1)[None].float().div_(255)


def _uint8(frame: torch.Tensor) -> np.ndarray:
    return frame[0].mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


class _Steps:
    """The per-frame steps before interpolation: colour match, then upscale (and resize to the asked scale)."""

    def __init__(self, colour: ColourMatch | None, upscaler: Upscaler | None, size: tuple[int, int],
                 first_is_reference: bool, device: torch.device):  # fmt: skip
        self.colour, self.upscaler, self.size = colour, upscaler, size
        self.first_is_reference, self.device = first_is_reference, device

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self.first_is_reference:
            self.colour, self.first_is_reference = ColourMatch(frame, self.device), False
        if self.colour is not None:
            frame = self.colour(frame)
        if self.upscaler is not None:
            width, height = self.size
            frame = _uint8(resize_to(self.upscaler(_tensor(frame)), (height, width)))
        return frame


def _describe(options: PostprocessOptions, plan: _Plan, upscaler: Upscaler | None,
              interpolator: Interpolator | None) -> str:  # fmt: skip
    """The steps in the user's words, e.g. "colour matching, upscaling x4 (RealESRGAN_x4plus), interpolating x2"."""
    steps = ["colour matching"] if options.color_match != "off" else []
    if upscaler is not None:
        steps.append(f"upscaling to {plan.size[0]}x{plan.size[1]} ({upscaler.name})")
    if interpolator is not None:
        steps.append(f"interpolating x{options.interpolate} ({interpolator.label})")
    steps.append(f"writing {plan.fmt.label}")
    return ", ".join(steps)


def postprocess(source: Path, output: Path, options: PostprocessOptions, *, reference: np.ndarray | None = None,
                device: str | torch.device | None = None, cache_dir: Path = Path("hf_download"),
                stop: threading.Event | None = None) -> Iterator[Status | FrameProgress | Done]:  # fmt: skip
    """Post-process `source` into `output` (see the module docstring). `reference`: the image colours are matched
    to (a job's start image; default the first frame), uint8 RGB (H, W, 3). A set `stop` ends the run after the
    current frame, with nothing left under the output's name. Runs on the GPU when there is one (fp16), else CPU."""
    started = time.monotonic()
    source, output = Path(source), Path(output)
    if reference is not None and (reference.ndim != 3 or reference.shape[-1] != 3 or reference.dtype != np.uint8):
        raise PostprocessError(f"the colour reference must be a uint8 RGB image, got {reference.dtype} {reference.shape}")
    plan = _plan(source, output, options, device, Path(cache_dir))
    upscaler: Upscaler | None = None
    interpolator: Interpolator | None = None
    if plan.upscaler is not None:
        yield Status(f"loading {plan.upscaler[0].name} on {plan.device}")
        upscaler = load_upscaler(plan.upscaler[0], plan.device)
    if plan.interpolator is not None:
        yield Status(f"loading {plan.interpolator[0].name} on {plan.device}")
        interpolator = load_interpolator(plan.interpolator[0], plan.device, state_dict=plan.interpolator[1])
        plan.interpolator = None  # the weights are on the device now; the CPU copy can go
    if upscaler is not None or interpolator is not None:
        yield Status(_memory_check(plan, upscaler, interpolator))
    colour = None
    if options.color_match == "start" and reference is not None:
        colour = ColourMatch(reference, plan.device)
    steps = _Steps(colour, upscaler, plan.size, options.color_match == "start" and reference is None, plan.device)
    stage = _describe(options, plan, upscaler, interpolator)
    yield Status(f"{source.name}: {plan.info.width}x{plan.info.height} at {float(plan.info.fps):g} fps -> "
                 f"{output.name}: {plan.size[0]}x{plan.size[1]} at {float(plan.fps):g} fps; {stage}")  # fmt: skip
    for note in reading_notes(source.name, plan.info.turn, Reading(deinterlaced=plan.info.interlaced)):
        yield Status(note)
    if stop is not None and stop.is_set():
        yield Done(None, None, 0, 0.0, 0, True, time.monotonic() - started)
        return
    writer = open_writer(output, plan.fmt, *plan.size, plan.fps, crf=options.crf, sound=source,
                         metadata=plan.info.metadata)  # fmt: skip
    try:
        for note in writer.notes:
            yield Status(note)
        sequence = _Sequence(interpolator, options.interpolate)
        reported, done, stopped, facts = -PROGRESS_EVERY, 0, False, Reading()
        for frame in read_frames(source, facts):
            if stop is not None and stop.is_set():
                stopped = True
                break
            for made in sequence.push(steps(frame)):
                writer.add(made)
            done += 1
            elapsed = time.monotonic() - started
            if done == plan.info.frames or elapsed - reported >= PROGRESS_EVERY:
                reported = elapsed
                yield FrameProgress(stage, done, max(plan.info.frames, done), done / max(elapsed, 1e-9))
        stopped = stopped or (stop is not None and stop.is_set())
        if not stopped and done == 0:
            raise PostprocessError(f"{source.name} has no picture PyAV can decode")
        if not stopped and done != plan.info.frames:  # the container's count was an estimate: say the true one
            yield FrameProgress(stage, done, done, done / max(time.monotonic() - started, 1e-9))
        if facts.damaged:
            yield Status(damage_note(source.name, facts))
        if stopped:
            writer.abort()
            yield Done(None, None, writer.frames, float(writer.frames / plan.fps), 0, True, time.monotonic() - started)
            return
        for made in sequence.finish():
            writer.add(made)
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    yield Done(path, None, writer.frames, float(writer.frames / plan.fps), 0, False, time.monotonic() - started)


class _Sequence:
    """The output frames in order. Each input frame (exactly as it came out of the steps) completes the frames made
    between the previous one and it, then itself; after the last, it is repeated factor - 1 times so the video
    lasts as long as before. Across a scene cut the earlier frame is repeated instead of interpolating."""

    def __init__(self, interpolator: Interpolator | None, factor: int):
        self.interpolator, self.factor = interpolator, factor
        self.previous: np.ndarray | None = None
        self.thumb: Thumbnail | None = None

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        made: list[np.ndarray] = []
        if self.interpolator is not None:
            thumb = Thumbnail(frame)
            if self.previous is not None and self.thumb is not None:
                if is_scene_cut(self.thumb, thumb):
                    made = [self.previous] * (self.factor - 1)
                else:
                    pair = _tensor(self.previous), _tensor(frame)
                    made = [_uint8(x) for x in self.interpolator.inbetweens(*pair, self.factor)]
            self.thumb = thumb
        self.previous = frame
        return [*made, frame]

    def finish(self) -> list[np.ndarray]:
        if self.previous is None or self.factor == 1:
            return []
        return [self.previous] * (self.factor - 1)
