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

from .controls import ARRAY_NAME, ImageSource, JobInputs, Keyframe
from .engine import add_seconds, branch_job, extend_video, generate, resume_job
from .engine.errors import guarded
from .engine.starts import extension_needs
from .events import Event, Status
from .jobs.paths import JobPaths
from .jobs.record import JobRecord, RecordError
from .jobs.spec import JobSpec
from .lora import LoraSpec
from .media.images import load_image, resolution_for
from .media.reading import check_video, shown_size
from .models import ModelSet
from .models.sources import DEFAULT_CACHE_DIR
from .postprocess.job import postprocess_job
from .postprocess.pipeline import PostprocessOptions
from .settings import Settings


@dataclass(frozen=True)
class JobContext:
    """What running a stored job needs besides its spec: the models, its id and owner, the outputs folder, the folder
    its spec's relative file names are in, the stop event, and how many times it was taken up (more than once: it
    was interrupted, lost its worker, or is retried)."""

    models: ModelSet | None  # None for a kind that needs none (post-processing)
    job_id: str
    owner: str
    spec: JobSpec
    output_dir: Path
    inputs_dir: Path
    stop: threading.Event
    attempts: int = 1
    previews: bool = True
    device: str | None = None  # where a kind without models runs (the worker's device)
    cache_dir: Path = DEFAULT_CACHE_DIR  # where known post-processing models are kept

    @property
    def source(self) -> JobPaths | None:
        """The job it goes on from, if any."""
        return JobPaths(self.output_dir, self.spec.source) if self.spec.source else None


@dataclass(frozen=True)
class JobKind:
    """One kind of job. `run` is its engine entry; `makes_files`: it makes a job of its own (its video, record,
    latents; deleted with it), else it works on its source's; `command` how the command line runs it;
    `needs_models`: it runs on the FramePack model set (post-processing has its own, small networks)."""

    name: str
    command: str
    run: Callable[[JobContext], Iterator[Event]]
    makes_files: bool = True
    description: str = ""
    needs_models: bool = True


def spec_inputs(spec: JobSpec, folder: Path) -> JobInputs:
    """The job's images and LoRAs as the engine takes them; relative file names are taken from `folder`."""
    image = lambda name: folder / spec.files[name] if name in spec.files else None  # noqa: E731
    keyframes = tuple(Keyframe(t, image(f"keyframe_{i}")) for i, t in enumerate(spec.keyframe_times))
    loras = tuple(LoraSpec(Path(path), weight) for path, weight in spec.loras)
    return JobInputs(image("image"), image("end_image"), keyframes, spec.blank_start, spec.options.get("record"), loras,
                     spec.options.get("notes", ()))  # fmt: skip


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
        owner=ctx.owner, stop=ctx.stop, previews=ctx.previews, notes=inputs.notes,
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


def _postprocess(ctx: JobContext) -> Iterator[Event]:
    options = ctx.spec.options["postprocess"]
    if ctx.source is not None:
        events = postprocess_job(options, ctx.stop, source=ctx.source, device=ctx.device, cache_dir=ctx.cache_dir)
    else:
        video = ctx.inputs_dir / ctx.spec.files["video"]
        events = postprocess_job(options, ctx.stop, video=video, output_dir=ctx.output_dir, job_id=ctx.job_id,
                                 device=ctx.device, cache_dir=ctx.cache_dir)  # fmt: skip
    yield from guarded(events)  # as the engine's entries do: whatever fails ends the job with a message


KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind("generate", "generate", _generate, description="a video from images and a prompt"),
        JobKind("extend", "extend", _extend, description="any video made longer"),
        JobKind("resume", "resume", _resume, makes_files=False, description="the rest of a stopped job"),
        JobKind("add_seconds", "resume --add-seconds", _add_seconds, description="a finished F1 video made longer"),
        JobKind("branch", "branch", _branch, description="a job's first sections kept, the rest made again"),
        JobKind("postprocess", "postprocess", _postprocess, makes_files=False, needs_models=False,
                description="a finished video upscaled, interpolated, colour-matched or converted"),
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


def files_of(spec: JobSpec, job_id: str, output_dir: Path, output: str | None) -> list[Path]:
    """The files a job made that go when it is deleted: a new job's video, latents, record, checkpoint and what steps
    after it derived from it; a post-processed upload's result (`output`). A job that worked on its source's files
    made none of its own (a resume; a job's post-processing, which its source's record lists)."""
    if kind_of(spec).makes_files:
        paths = JobPaths(output_dir, job_id)
        try:
            derived = [output_dir / entry["file"] for entry in JobRecord.load(paths).derived if "file" in entry]
        except RecordError:
            derived = []
        return [paths.video, paths.latents, paths.manifest, paths.checkpoint, paths.parts_dir, *derived]
    if spec.kind == "postprocess" and spec.source is None and output:
        return [output_dir / output]
    return []


def follow_up(spec: JobSpec, job_id: str) -> JobSpec | None:
    """The job that runs after this one when it is done: its post-processing, if it asked for any (it runs as a job
    of its own, so the video is kept whatever becomes of it)."""
    options = spec.options.get("postprocess")
    if not options or not kind_of(spec).makes_files:
        return None
    return postprocess_spec(options, source=job_id)


def recorded_models(spec: JobSpec, job_id: str, attempts: int, output_dir: Path) -> dict[str, str] | None:
    """The model sources a job must run on: those its source's record names (or its own record's, when it is taken up
    again from a checkpoint); None for a job that runs on the app's own models. RecordError when the record that
    should say cannot be read or does not say: a job must not go on with other weights than it began with."""
    own = JobPaths(output_dir, job_id)
    if not kind_of(spec).needs_models:
        return None
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
    their pixels, and what reading them found goes with the spec, for the job to say). The video is checked first, for every way a job is queued or run: VideoInputError for one that
    is not a video or is too short for `settings` (before anything is copied, and before any model is planned or
    loaded). Raises ImageError or OSError; a copy that failed part way leaves `keep_in` to the caller."""
    if video is not None:
        check_video(video, extension_needs(settings))
        if settings.height is None or settings.width is None:  # the video's own size caps the bucket's
            settings = settings.replace(resolution=resolution_for(*shown_size(video), settings.resolution))
    files: dict[str, str] = {}

    def keep(name: str, item: ImageSource | None, given: dict[str, Any] | None = None) -> None:
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
        else:  # named after the file it was read from, which the job's notes name
            given_name = (given or {}).get("name")
            stem = Path(given_name).stem if given_name and given_name != ARRAY_NAME else "image"
            Image.fromarray(load_image(item)).save(target / f"{stem}.png")
            files[name] = f"{name}/{stem}.png"

    record = inputs.describe()  # of what the user gave, before it is copied
    keep("image", inputs.image, record.get("image"))
    keep("end_image", inputs.end_image, record.get("end_image"))
    for index, (keyframe, given) in enumerate(zip(inputs.keyframes, record.get("keyframes", ()))):
        keep(f"keyframe_{index}", keyframe.image, given)
    keep("video", video)
    return JobSpec(
        kind, settings.to_dict(), files, tuple(k.seconds for k in inputs.keyframes),
        tuple((str(spec.path), spec.weight) for spec in inputs.loras), inputs.blank_start,
        options={"record": record, **({"notes": list(inputs.notes)} if inputs.notes else {}), **(options or {})},
    )  # fmt: skip


def resume_spec(source: str) -> JobSpec:
    return JobSpec("resume", source=source)


def add_seconds_spec(source: str, seconds: float, prompt: str = "", options: dict[str, Any] | None = None) -> JobSpec:
    return JobSpec("add_seconds", source=source, options={"seconds": float(seconds), "prompt": prompt, **(options or {})})


def branch_spec(
    source: str, keep_sections: int, changes: dict[str, Any], keyframes: tuple[Keyframe, ...] | None = None,
    loras: tuple[LoraSpec, ...] | None = None, options: dict[str, Any] | None = None,
) -> JobSpec:  # fmt: skip
    """A branch's spec; `keyframes` (by path) and `loras` replace the source's when given."""
    options = {"keep_sections": int(keep_sections), "changes": dict(changes), "keyframes": keyframes is not None,
               "loras": loras is not None, **(options or {})}  # fmt: skip
    files = {f"keyframe_{i}": str(Path(k.image).resolve()) for i, k in enumerate(keyframes or ())}
    return JobSpec("branch", files=files, keyframe_times=tuple(k.seconds for k in keyframes or ()),
                   loras=tuple((str(spec.path), spec.weight) for spec in loras or ()), source=source, options=options)  # fmt: skip


def postprocess_spec(options: dict[str, Any], source: str | None = None, video: Path | None = None,
                     keep_in: Path | None = None) -> JobSpec:  # fmt: skip
    """Post-processing of the finished job `source`, or of the video file `video` (copied into `keep_in` when given).
    `options` are `PostprocessOptions`' (checked here: PostprocessError on a bad one)."""
    checked = PostprocessOptions.from_dict(options).to_dict()
    files = {}
    if video is not None:
        if keep_in is None:
            files["video"] = str(Path(video).resolve())
        else:
            (keep_in / "video").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(video, keep_in / "video" / Path(video).name)
            files["video"] = f"video/{Path(video).name}"
    return JobSpec("postprocess", files=files, source=source, options={"postprocess": checked})
