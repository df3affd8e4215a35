"""Kinds of job, in one registry: how each one's spec is built, which engine entry runs it, whether it makes files of
its own, how a retry goes on with it, and its name on the command line. The queue's store, its workers and the
command line all run jobs through `execute`, so a job run from the command line and a queued one take one path.

A new kind is a `JobKind` and one line in `KINDS`.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .controls import ImageSource, JobInputs, Keyframe
from .engine import add_seconds, branch_job, extend_video, generate, resume_job
from .events import Event, Status
from .jobs.paths import JobPaths
from .jobs.record import JobRecord, RecordError
from .jobs.spec import JobSpec
from .lora import LoraSpec
from .media.images import load_image
from .models import ModelSet
from .settings import Settings


@dataclass(frozen=True)
class JobContext:
    """What running a stored job needs besides its spec: the models, its id and owner, the outputs folder, the folder
    its spec's relative file names are in, the stop event, and how many times it was taken up (more than once: it
    was interrupted, lost its worker, or is retried)."""

    models: ModelSet
    job_id: str
    owner: str
    spec: JobSpec
    output_dir: Path
    inputs_dir: Path
    stop: threading.Event
    attempts: int = 1
    previews: bool = True

    @property
    def source(self) -> JobPaths | None:
        """The job it goes on from, if any."""
        return JobPaths(self.output_dir, self.spec.source) if self.spec.source else None


@dataclass(frozen=True)
class JobKind:
    """One kind of job. `run` is its engine entry; `makes_files`: it makes a job of its own (its video, record,
    latents; deleted with it), else it works on its source's; `command` how the command line runs it."""

    name: str
    command: str
    run: Callable[[JobContext], Iterator[Event]]
    makes_files: bool = True
    description: str = ""


def spec_inputs(spec: JobSpec, folder: Path) -> JobInputs:
    """The job's images and LoRAs as the engine takes them; relative file names are taken from `folder`."""
    image = lambda name: folder / spec.files[name] if name in spec.files else None  # noqa: E731
    keyframes = tuple(Keyframe(t, image(f"keyframe_{i}")) for i, t in enumerate(spec.keyframe_times))
    loras = tuple(LoraSpec(Path(path), weight) for path, weight in spec.loras)
    return JobInputs(image("image"), image("end_image"), keyframes, spec.blank_start, spec.options.get("record"), loras)


def _generate(ctx: JobContext) -> Iterator[Event]:
    settings = Settings.from_dict(ctx.spec.settings)
    inputs = spec_inputs(ctx.spec, ctx.inputs_dir)
    yield from generate(ctx.models, settings, inputs, ctx.output_dir, stop=ctx.stop, job_id=ctx.job_id, owner=ctx.owner,
                        previews=ctx.previews)  # fmt: skip


def _extend(ctx: JobContext) -> Iterator[Event]:
    inputs = spec_inputs(ctx.spec, ctx.inputs_dir)
    yield from extend_video(
        ctx.models, Settings.from_dict(ctx.spec.settings), ctx.inputs_dir / ctx.spec.files["video"], ctx.output_dir,
        end_image=inputs.end_image, keyframes=inputs.keyframes, loras=inputs.loras, job_id=ctx.job_id,
        owner=ctx.owner, stop=ctx.stop, previews=ctx.previews,
    )  # fmt: skip


def _resume(ctx: JobContext) -> Iterator[Event]:
    yield from resume_job(ctx.models, ctx.source.manifest, stop=ctx.stop, previews=ctx.previews)


def _add_seconds(ctx: JobContext) -> Iterator[Event]:
    options = ctx.spec.options
    yield from add_seconds(ctx.models, ctx.source.manifest, float(options["seconds"]), prompt=options.get("prompt", ""),
                           job_id=ctx.job_id, owner=ctx.owner, stop=ctx.stop, previews=ctx.previews)  # fmt: skip


def _branch(ctx: JobContext) -> Iterator[Event]:
    options = ctx.spec.options
    keyframes = spec_inputs(ctx.spec, ctx.inputs_dir).keyframes if options.get("keyframes") else None
    loras = [LoraSpec(Path(path), weight) for path, weight in ctx.spec.loras] if options.get("loras") else None
    yield from branch_job(
        ctx.models, ctx.source.manifest, int(options["keep_sections"]), options.get("changes", {}), keyframes=keyframes,
        loras=loras, job_id=ctx.job_id, owner=ctx.owner, stop=ctx.stop, previews=ctx.previews,
    )  # fmt: skip


KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind("generate", "generate", _generate, description="a video from images and a prompt"),
        JobKind("extend", "extend", _extend, description="any video made longer"),
        JobKind("resume", "resume", _resume, makes_files=False, description="the rest of a stopped job"),
        JobKind("add_seconds", "resume --add-seconds", _add_seconds, description="a finished F1 video made longer"),
        JobKind("branch", "branch", _branch, description="a job's first sections kept, the rest made again"),
    )
}


def kind_of(spec: JobSpec) -> JobKind:
    """The spec's kind; ValueError for one this version of the app does not know."""
    try:
        return KINDS[spec.kind]
    except KeyError:
        raise ValueError(f"this app cannot run jobs of kind {spec.kind!r} (made by another version?)") from None


def execute(ctx: JobContext) -> Iterator[Event]:
    """The engine's events for a job. A job taken up again (its process died, its worker was lost, or it was
    stopped and retried) goes on from its own checkpoint, if a section of it was finished."""
    kind = kind_of(ctx.spec)
    own = JobPaths(ctx.output_dir, ctx.job_id)
    if ctx.attempts > 1 and kind.makes_files and own.checkpoint.is_file():
        yield Status("Going on from its last finished section")
        yield from resume_job(ctx.models, own.manifest, stop=ctx.stop, previews=ctx.previews)
    else:
        yield from kind.run(ctx)


def recorded_models(spec: JobSpec, job_id: str, attempts: int, output_dir: Path) -> dict[str, str] | None:
    """The model sources a job must run on: those its source's record names (or its own record's, when it is taken up
    again from a checkpoint); None for a job that runs on the app's own models. RecordError when the record that
    should say cannot be read or does not say: a job must not go on with other weights than it began with."""
    own = JobPaths(output_dir, job_id)
    if spec.source:
        paths = JobPaths(output_dir, spec.source)
    elif attempts > 1 and kind_of(spec).makes_files and own.checkpoint.is_file() and own.manifest.is_file():
        paths = own
    else:
        return None
    record = JobRecord.load(paths)
    if not record.models:
        raise RecordError(f"the record of {paths.job_id} does not say which models made it; it cannot go on with others")
    return record.models


# ------------------------------------------------------------------------------------------- building specs


def inputs_spec(kind: str, settings: Settings, inputs: JobInputs, video: Path | None = None,
                keep_in: Path | None = None, options: dict[str, Any] | None = None) -> JobSpec:  # fmt: skip
    """The spec of a job made from images (and `video`): its files by absolute path, or copied into `keep_in` and
    named relative to it (the queue keeps a job's inputs there; images in memory are saved as PNG, which keeps
    their pixels). Raises ImageError or OSError; a copy that failed part way leaves `keep_in` to the caller."""
    files: dict[str, str] = {}

    def keep(name: str, item: ImageSource | None) -> None:
        if item is None:
            return
        if keep_in is None:
            if not isinstance(item, (str, Path)):
                raise ValueError("a job run in place names its images by path")
            files[name] = str(Path(item).resolve())
            return
        target = keep_in / name
        target.mkdir(parents=True, exist_ok=True)
        if isinstance(item, (str, Path)):
            shutil.copyfile(item, target / Path(item).name)
            files[name] = f"{name}/{Path(item).name}"
        else:
            Image.fromarray(load_image(item)).save(target / "image.png")
            files[name] = f"{name}/image.png"

    record = inputs.describe()  # of what the user gave, before it is copied
    keep("image", inputs.image)
    keep("end_image", inputs.end_image)
    for index, keyframe in enumerate(inputs.keyframes):
        keep(f"keyframe_{index}", keyframe.image)
    keep("video", video)
    return JobSpec(
        kind, settings.to_dict(), files, tuple(k.seconds for k in inputs.keyframes),
        tuple((str(spec.path), spec.weight) for spec in inputs.loras), inputs.blank_start,
        options={"record": record, **(options or {})},
    )  # fmt: skip


def resume_spec(source: str) -> JobSpec:
    return JobSpec("resume", source=source)


def add_seconds_spec(source: str, seconds: float, prompt: str = "") -> JobSpec:
    return JobSpec("add_seconds", source=source, options={"seconds": float(seconds), "prompt": prompt})


def branch_spec(
    source: str, keep_sections: int, changes: dict[str, Any], keyframes: tuple[Keyframe, ...] | None = None,
    loras: tuple[LoraSpec, ...] | None = None,
) -> JobSpec:  # fmt: skip
    """A branch's spec; `keyframes` (by path) and `loras` replace the source's when given."""
    options = {"keep_sections": int(keep_sections), "changes": dict(changes), "keyframes": keyframes is not None,
               "loras": loras is not None}  # fmt: skip
    files = {f"keyframe_{i}": str(Path(k.image).resolve()) for i, k in enumerate(keyframes or ())}
    return JobSpec("branch", files=files, keyframe_times=tuple(k.seconds for k in keyframes or ()),
                   loras=tuple((str(spec.path), spec.weight) for spec in loras or ()), source=source, options=options)  # fmt: skip
