"""Section controls: timed prompts, an end frame and keyframes, and the one rule that says which section each
governs.

Sections are numbered in TIME order, t = 0 .. N-1; section t starts at s_t = t * 4w / 30 seconds (w: the latent
window). A control given at S governs every section with s_t >= S (within 1e-6) until the next control of its
kind takes over. The original variant generates backwards (generation index g is time index N-1-g); the rule is
about time either way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from .lora import LoraSpec
from .media.images import crop_note, load_image, resize_and_center_crop, target_size
from .settings import EPSILON, FPS, Settings, SettingsError, check_distinct

BLANK_STARTS: tuple[str, ...] = ("grey", "black", "white", "noise")

ImageSource = str | Path | Image.Image | np.ndarray


@dataclass(frozen=True)
class Keyframe:
    """An image that takes the start image's place in each section's clean start slot from `seconds` on."""

    seconds: float
    image: ImageSource


@dataclass(frozen=True)
class JobInputs:
    """What a job is made from besides its settings: the start image (None: a blank start of the colour
    `blank_start`, for text to video), an optional end image (original variant), keyframes (kept in time order)
    and LoRA files with their weights.

    `record` says what the job record keeps of the images (file names and SHA-256); `load` fills it in. `notes`: what
    reading them did that the user should hear (a big photo read reduced), kept for the job to say once it runs.
    """

    image: ImageSource | None
    end_image: ImageSource | None = None
    keyframes: tuple[Keyframe, ...] = ()
    blank_start: str = "grey"
    record: dict[str, Any] | None = None
    loras: tuple[LoraSpec, ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "keyframes", tuple(sorted(self.keyframes, key=lambda keyframe: keyframe.seconds)))
        object.__setattr__(self, "loras", tuple(self.loras))
        object.__setattr__(self, "notes", tuple(self.notes))
        if self.blank_start not in BLANK_STARTS:
            raise SettingsError("blank_start", f"must be one of {', '.join(BLANK_STARTS)}, got {self.blank_start!r}")

    def load(self) -> JobInputs:
        """The same inputs read into memory (an uploaded file may be gone before a queued job runs), with
        their record and what reading them did. Raises `ImageError` for an image that cannot be read."""
        notes = list(self.notes)
        image = None if self.image is None else load_image(self.image, notes)
        end_image = None if self.end_image is None else load_image(self.end_image, notes)
        keyframes = tuple(Keyframe(k.seconds, load_image(k.image, notes)) for k in self.keyframes)
        return JobInputs(image, end_image, keyframes, self.blank_start, self.describe(), self.loras, tuple(notes))

    def describe(self) -> dict[str, Any]:
        """What the job record keeps of the images: file names and SHA-256, keyframe times, or the blank start."""
        if self.record is not None:
            return self.record
        return {
            "image": describe_image(self.image) if self.image is not None else {"blank": self.blank_start},
            "end_image": describe_image(self.end_image),
            "keyframes": [{"seconds": k.seconds, **describe_image(k.image)} for k in self.keyframes],
        }


@dataclass(frozen=True)
class JobImages:
    """A job's images at the video's size (uint8 HxWx3), ready to encode."""

    start: np.ndarray
    end: np.ndarray | None
    keyframes: tuple[tuple[float, np.ndarray], ...]
    notes: tuple[str, ...] = ()  # what fitting them did that a user would not expect (most of one cropped away)

    @property
    def keyframe_times(self) -> list[float]:
        return [seconds for seconds, _ in self.keyframes]

    def inputs(self, loras: Sequence[LoraSpec] = ()) -> JobInputs:
        """These images (and `loras`) as a job's inputs: a resumed job is given them again."""
        keyframes = tuple(Keyframe(seconds, image) for seconds, image in self.keyframes)
        return JobInputs(self.start, self.end, keyframes, loras=tuple(loras))

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The images as tensors and metadata, for a checkpoint or the latents file."""
        tensors = {"start_image": torch.from_numpy(self.start)}
        if self.end is not None:
            tensors["end_image"] = torch.from_numpy(self.end)
        for k, (_, image) in enumerate(self.keyframes):
            tensors[f"keyframe_image_{k}"] = torch.from_numpy(image)
        return tensors, {"keyframe_times": json.dumps(self.keyframe_times)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> JobImages:
        times = json.loads(metadata.get("keyframe_times", "[]"))
        keyframes = tuple((float(seconds), tensors[f"keyframe_image_{k}"].numpy()) for k, seconds in enumerate(times))
        end = tensors["end_image"].numpy() if "end_image" in tensors else None
        return cls(tensors["start_image"].numpy(), end, keyframes)

    @classmethod
    def load(cls, path: str | Path) -> JobImages:
        """The images stored beside a video's latents."""
        with safe_open(str(path), "pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys() if key != "latents"}
            return cls.from_tensors(tensors, f.metadata() or {})


def prepare_images(inputs: JobInputs, settings: Settings) -> JobImages:
    """Resize and crop every image of the job like the start image (the start image's bucket decides the size;
    a blank start takes the explicit size, or the square bucket of the resolution). The notes begin with those of
    reading the inputs, if they were read before."""
    notes = list(inputs.notes)

    def fit(image: np.ndarray, source: ImageSource, what: str) -> np.ndarray:
        name = Path(source).name if isinstance(source, (str, Path)) else what
        if note := crop_note(name, image.shape, width, height):
            notes.append(note)
        return resize_and_center_crop(image, width, height)

    if inputs.image is None:
        height, width = target_size(np.zeros((1, 1, 3), np.uint8), settings.resolution, settings.height, settings.width)
        start = blank_image(inputs.blank_start, height, width, settings.seed)
    else:
        start = load_image(inputs.image, notes)
        height, width = target_size(start, settings.resolution, settings.height, settings.width)
        start = fit(start, inputs.image, "the start image")
    end = None if inputs.end_image is None else fit(load_image(inputs.end_image, notes), inputs.end_image, "the end image")
    keyframes = tuple((k.seconds, fit(load_image(k.image, notes), k.image, f"the keyframe at {k.seconds:g} s")) for k in inputs.keyframes)
    return JobImages(start, end, keyframes, tuple(notes))


def section_starts(num_sections: int, window: int) -> list[float]:
    """s_t of every section t in time order, in seconds."""
    return [t * 4 * window / FPS for t in range(num_sections)]


def governing(times: list[float], start: float) -> int:
    """The index of the last control (times sorted) with time <= start (within EPSILON); -1 if none."""
    index = -1
    for k, seconds in enumerate(times):
        if seconds <= start + EPSILON:
            index = k
    return index


@dataclass(frozen=True)
class SectionSchedule:
    """Which prompt and which start-slot image govern each section, in TIME order: -1 is the base prompt or
    the start image, k the k-th timed prompt or keyframe. `time_index` maps a generation index to its row
    (and back: the map is its own inverse)."""

    variant: str
    starts: tuple[float, ...]
    prompt_index: tuple[int, ...]
    start_slot: tuple[int, ...]

    def time_index(self, generation_index: int) -> int:
        last = len(self.starts) - 1
        return last - generation_index if self.variant == "original" else generation_index

    def section_range(self, generation_index: int, window: int) -> tuple[float, float]:
        """The time range (seconds) of the section generated `generation_index`-th."""
        start = self.starts[self.time_index(generation_index)]
        return start, start + 4 * window / FPS


def plan_schedule(settings: Settings, keyframe_times: list[float] = (), end_image: bool = False) -> SectionSchedule:
    """The schedule of a job, after checking its images' controls (`Settings` checked the prompts' times): a
    keyframe that governs no section (later than the last section's start), two keyframes at one time, a
    keyframe at 0 s or an end frame with F1 is an error naming the problem."""
    starts = section_starts(settings.num_sections, settings.latent_window_size)
    last = starts[-1]
    if end_image and settings.variant == "f1":
        raise SettingsError("end_image", "FramePack-F1 generates forwards and has no slot for an end frame; use the original model")  # fmt: skip
    for seconds in keyframe_times:
        if seconds > last + EPSILON:
            raise SettingsError("keyframes", f"{seconds:g} s governs no section: the last section starts at {last:g} s, the last usable time")  # fmt: skip
        if seconds <= EPSILON:
            raise SettingsError("keyframes", "a keyframe at 0 s would replace the start image: give that image as the start image")  # fmt: skip
    check_distinct("keyframes", list(keyframe_times), "keyframes")
    return SectionSchedule(
        variant=settings.variant,
        starts=tuple(starts),
        prompt_index=tuple(governing([seconds for seconds, _ in settings.prompts], s) for s in starts),
        start_slot=tuple(governing(list(keyframe_times), s) for s in starts),
    )


def describe_schedule(schedule: SectionSchedule, settings: Settings, has_end: bool = False) -> list[dict[str, Any]]:
    """Each section in time order: its time range, its prompt, its start-slot image (and the end frame's)."""
    window = settings.latent_window_size
    rows = []
    for t, start in enumerate(schedule.starts):
        k, slot = schedule.prompt_index[t], schedule.start_slot[t]
        row = {
            "section": t + 1,
            "generated": schedule.time_index(t) + 1,  # the order the progress bar counts (time index maps back)
            "start": round(start, 6),
            "end": round(start + 4 * window / FPS, 6),
            "prompt": settings.prompt if k < 0 else settings.prompts[k][1],
            "start_slot": "start image" if slot < 0 else f"keyframe {slot + 1}",
        }
        if has_end and t == len(schedule.starts) - 1:
            row["end_frame"] = True
        rows.append(row)
    return rows


def timeline(rows: list[dict[str, Any]]) -> list[str]:
    """`describe_schedule`'s rows as lines a person reads."""
    lines = []
    for row in rows:
        end = " · then the end frame" if row.get("end_frame") else ""
        where = f"{row['start']:.2f}–{row['end']:.2f} s"
        lines.append(f"{where} (generated {_ordinal(row['generated'])}): \"{row['prompt']}\" · {row['start_slot']}{end}")
    return lines


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def blank_image(kind: str, height: int, width: int, seed: int) -> np.ndarray:
    """A start frame for text-to-video: a flat colour, or noise drawn from the job's seed."""
    if kind == "noise":
        return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    value = {"black": 0, "white": 255, "grey": 128}[kind]
    return np.full((height, width, 3), value, dtype=np.uint8)


ARRAY_NAME = "(image data)"  # the record's name for an image given as pixels, not a file


def describe_image(source: ImageSource | None) -> dict[str, str] | None:
    """A job record's entry for an input image: its file name and SHA-256 (of the file, or of the pixels)."""
    if source is None:
        return None
    if isinstance(source, (str, Path)):
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
        return {"name": Path(source).name, "sha256": digest}
    array = np.asarray(source)
    return {"name": ARRAY_NAME, "sha256": hashlib.sha256(array.tobytes()).hexdigest()}
