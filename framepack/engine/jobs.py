"""The engine's entry points, one per kind of job. Each is a generator of events whose last one is always `Done` or
`Error`, whatever fails: it takes the job's lock, asks its start (`framepack.engine.starts`) where the job begins,
and runs the one section loop (`framepack.engine.loop`). Stopping goes through a `threading.Event`: the job ends
after the current sampler step and leaves a playable video of the sections that were finished.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..controls import ImageSource, JobInputs, Keyframe
from ..events import Done, Event, Status
from ..jobs.paths import (
    LOCAL_USER,
    JobPaths,
    is_job_name,
    job_paths,
    new_job_id,
    working_on,
)
from ..lora import LoraSpec
from ..media.reading import ReadingStopped
from ..models import ModelSet
from ..settings import Settings, SettingsError
from .errors import guarded
from .loop import run_sections
from .starts import branch_start, longer_start, new_start, resume_start, video_start
from .state import JobStart


def generate(
    models: ModelSet, settings: Settings, inputs: JobInputs | ImageSource | None, output_dir: str | Path = "outputs", *,
    stop: threading.Event | None = None, job_id: str | None = None, previews: bool = True, owner: str = LOCAL_USER,
) -> Iterator[Event]:  # fmt: skip
    """Make a video from images and a prompt. `inputs` is the start image, or `JobInputs` with an end image and
    keyframes too (None: a grey blank start). `owner` is recorded with the job: only they may go on with it."""
    if not isinstance(inputs, JobInputs):
        inputs = JobInputs(inputs)
    paths = JobPaths(Path(output_dir), job_id or new_job_id())
    yield from _run(models, paths, lambda: new_start(settings, inputs, owner), stop, previews, variant=settings.variant)


def resume_job(models: ModelSet, path: str | Path, *, stop: threading.Event | None = None, previews: bool = True) -> Iterator[Event]:
    """Go on with the stopped or killed job that `path` (its video, record or checkpoint) belongs to, in its own
    folder, under its own name, exactly as if it had not stopped."""
    paths = job_paths(path)
    yield from _run(models, paths, lambda: resume_start(paths), stop, previews)


def add_seconds(
    models: ModelSet, path: str | Path, seconds: float, *, prompt: str = "", job_id: str | None = None,
    owner: str = LOCAL_USER, stop: threading.Event | None = None, previews: bool = True,
) -> Iterator[Event]:  # fmt: skip
    """A new video: the finished F1 job of `path` made `seconds` longer, exactly as if it had been made that long at
    once (`prompt` may add timed prompts for the added seconds, "[6s: he sits down]"). The source stays as it is."""
    source = job_paths(path)
    paths = JobPaths(source.output_dir, job_id or new_job_id())
    start = lambda: longer_start(models, source, paths, seconds, prompt, owner)  # noqa: E731
    yield from _run(models, paths, start, stop, previews, source)


def branch_job(
    models: ModelSet, path: str | Path, keep_sections: int, changes: dict[str, Any] | None = None, *,
    keyframes: Sequence[Keyframe] | None = None, loras: Sequence[LoraSpec] | None = None, job_id: str | None = None,
    owner: str = LOCAL_USER, stop: threading.Event | None = None, previews: bool = True,
) -> Iterator[Event]:  # fmt: skip
    """A new job that keeps the first `keep_sections` sections (in generation order) of the job `path` belongs to,
    with their latents and frames, and generates the rest with the source's settings and `changes` (a new seed,
    prompts, steps, ...; not the geometry). `keyframes` and `loras` replace the source's when given. The source
    stays as it was; the new one records where it branched from."""
    source = job_paths(path)
    paths = JobPaths(source.output_dir, job_id or new_job_id())
    start = lambda: branch_start(models, source, paths, keep_sections, changes or {}, keyframes, loras, owner)  # noqa: E731
    yield from _run(models, paths, start, stop, previews, source)


def extend_video(
    models: ModelSet, settings: Settings, video: str | Path, output_dir: str | Path = "outputs", *,
    end_image: ImageSource | None = None, keyframes: Sequence[Keyframe] = (), loras: Sequence[LoraSpec] = (),
    job_id: str | None = None, owner: str = LOCAL_USER, stop: threading.Event | None = None, previews: bool = True,
    notes: Sequence[str] = (),
) -> Iterator[Event]:  # fmt: skip
    """Make any video longer by `settings.total_second_length` seconds: the output is the video's own frames (resized
    and cropped to the bucket its first frame picks, at 30 fps), then the new ones. Timed controls count from the
    start of the added part. See `framepack.engine.starts.video_start` for the context each model gets. `notes`: what
    reading its images found when they were read before (a queued job's), said as the job starts."""
    paths = JobPaths(Path(output_dir), job_id or new_job_id())
    inputs = JobInputs(None, end_image, tuple(keyframes), loras=tuple(loras), notes=tuple(notes))
    stop = stop or threading.Event()  # the same one for the reading and the sections: a stop while reading ends it
    start = lambda: video_start(models, settings, Path(video), inputs, paths, owner, stop)  # noqa: E731
    yield from _run(models, paths, start, stop, previews, variant=settings.variant, announce=f"Reading {Path(video).name}")


def _run(
    models: ModelSet, paths: JobPaths, start: Callable[[], JobStart], stop: threading.Event | None, previews: bool,
    source: JobPaths | None = None, *, variant: str | None = None, announce: str | None = None,
) -> Iterator[Event]:  # fmt: skip
    """A job's events, with whatever it raises turned into a final `Error`. `start` runs once the job's lock is held,
    after `announce` is said; a new job that goes on from `source` must have another name; a job whose `variant` is
    known before it starts is refused at once on models of the other one."""

    def job() -> Iterator[Event]:
        if not is_job_name(paths.job_id):
            raise SettingsError("job_name", f"{paths.job_id!r} cannot name files: use letters, digits, '_', '-' and '.'")
        if source is not None and paths.job_id == source.job_id:
            raise SettingsError("job_name", "it makes a new job: give it another name than its source")
        if variant is not None and models.variant != variant:
            raise SettingsError("variant", f"the loaded models are the {models.variant} variant, not {variant}")

        def started() -> Iterator[Event]:
            if announce:
                yield Status(announce)
            began = time.perf_counter()
            try:
                begun = start()
            except ReadingStopped:  # stopped while its input was read: nothing was made, nothing is kept
                yield Done(video_path=None, latents_path=None, frames=0, seconds=0.0, sections_done=0, stopped=True,
                           elapsed=time.perf_counter() - began, attention=models.attention)  # fmt: skip
                return
            yield from run_sections(models, begun, paths, stop or threading.Event(), previews)

        yield from _locked(paths, started)

    yield from guarded(job())


def _locked(paths: JobPaths, job: Callable[[], Iterator[Event]]) -> Iterator[Event]:
    """The events of `job` (called once the job's lock is held), its `Done` only once the lock is released and the
    parts folder tidied: whoever sees `Done` sees the files as they stay."""
    done = None
    with working_on(paths):
        for event in job():
            if isinstance(event, Done):
                done = event
            else:
                yield event
    if done is not None:
        yield done
