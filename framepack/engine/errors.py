"""What a user is told when a job fails: what went wrong and what to do, never a server path or a traceback (an
unexpected failure's details go to the log)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from safetensors import SafetensorError

from ..events import Error, Event
from ..jobs.paths import JobBusyError, RecordError
from ..lora import LoraError
from ..media.images import ImageError
from ..media.mp4 import VideoWriterError, describe_write_error
from ..media.reading import VideoInputError
from ..memory.planning import MemoryPlanError
from ..models.checkpoints import CheckpointError
from ..postprocess import PostprocessError
from ..settings import SettingsError

logger = logging.getLogger(__name__)
# Failures a user causes or can mend; their messages are written for them.
USER_ERRORS = (SettingsError, ImageError, MemoryPlanError, JobBusyError, LoraError, VideoInputError, CheckpointError, RecordError,
               PostprocessError)  # fmt: skip


def failure_message(exc: BaseException) -> str:
    """What a user is told when a job fails: what went wrong and what to do, never a server path or a
    traceback (an unexpected failure's details go to the log)."""
    if isinstance(exc, USER_ERRORS):
        return str(exc)
    if isinstance(exc, torch.OutOfMemoryError):
        return (
            "Out of GPU memory. Finished sections are kept. Try a smaller resolution, fewer seconds per "
            "section (latent window), more 'GPU memory to preserve', or close other programs using the GPU."
        )
    if isinstance(exc, (VideoWriterError, OSError, SafetensorError)):
        logger.error("Writing a job's files failed", exc_info=exc)
        cause = exc.__cause__ if isinstance(exc, VideoWriterError) and exc.__cause__ else exc
        return (
            f"Writing the job's files failed ({describe_write_error(cause)}). Finished sections are kept: "
            "make room in the outputs folder, then resume the job."
        )
    logger.error("A job failed", exc_info=exc)
    return (
        f"The job failed ({type(exc).__name__}). Finished sections are kept and can be resumed; "
        "the details are in the app's log."
    )


def guarded(events: Iterator[Event]) -> Iterator[Event]:
    """A job's events, with whatever it raises turned into a final `Error`: a failed job never takes its
    consumer (the app's worker, the CLI) down with it."""
    try:
        yield from events
    except Exception as exc:
        yield Error(failure_message(exc), exc)

