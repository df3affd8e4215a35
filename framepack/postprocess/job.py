"""Post-processing as a job of the queue: a finished job's video made into a file of its own beside it (the job's
video, latents and record stay as they are, so it can still be resumed, extended or branched; its record lists the
new file with what was done and its SHA-256), or an uploaded video made into a file named after the post-processing
job. A job's colours are matched to its start image, as kept with its latents."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..controls import JobImages
from ..events import Done, Event
from ..files import file_sha256
from ..jobs.paths import JobPaths, RecordError, working_on
from ..jobs.record import JobRecord, add_derived
from . import PostprocessError
from .pipeline import PostprocessOptions, default_output, postprocess


def job_output(source: JobPaths, options: PostprocessOptions) -> Path:
    """Where a job's post-processed video goes: beside it, named after it and what was done (`<job>.x4-60fps.mp4`)."""
    return default_output(source.video, options)


def postprocess_job(
    options: dict[str, Any], stop: threading.Event, *, source: JobPaths | None = None, video: Path | None = None,
    output_dir: Path | None = None, job_id: str | None = None, device: str | torch.device | None = None,
    cache_dir: Path = Path("hf_download"),
) -> Iterator[Event]:  # fmt: skip
    """Post-process the finished job `source`, or the uploaded `video` into `output_dir` under the name of the job
    `job_id`. Raises PostprocessError or RecordError for what cannot be done, before anything is written."""
    chosen = PostprocessOptions.from_dict(options)
    if source is None:
        if video is None or output_dir is None or job_id is None:
            raise PostprocessError("nothing to post-process: give a job or a video")
        output = default_output(Path(output_dir) / f"{job_id}{Path(video).suffix}", chosen)
        yield from postprocess(Path(video), output, chosen, device=device, cache_dir=cache_dir, stop=stop)
        return
    record = JobRecord.load(source)
    if record.state != "done" or not source.video.is_file():
        raise RecordError(f"{source.job_id} is not finished: post-process it once it is done")
    with working_on(source):  # the job's files stay as they are while its video is read
        reference = _start_image(source) if chosen.color_match == "start" else None
        output = job_output(source, chosen)
        for event in postprocess(source.video, output, chosen, reference=reference, device=device, cache_dir=cache_dir, stop=stop):
            if isinstance(event, Done) and event.video_path is not None:
                digest = file_sha256(output) if output.is_file() else None  # a PNG folder has no one digest
                add_derived(source, {"what": "postprocess", "settings": chosen.to_dict(), "file": output.name, "sha256": digest})
            yield event


def _start_image(source: JobPaths) -> np.ndarray | None:
    """The job's start image as it kept it (resized like the video); None when its latents file lacks it."""
    try:
        return JobImages.load(source.latents).start
    except (OSError, KeyError, ValueError):
        return None
