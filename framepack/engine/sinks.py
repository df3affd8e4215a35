"""Where a job's frames go as its sections finish. The section loop hands each finished section to a `VideoSink` and
hears back, in order, which ones are on disk; today's sink is the growing MP4 of segments (`SegmentedMp4`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..jobs.paths import JobPaths
from ..media.mp4 import BackgroundVideoWriter, SegmentedVideo
from ..settings import FPS, Settings


class VideoSink(Protocol):
    """A job's video as it grows. `add` takes the frames that became final and the open edge a later section still
    blends into, and `then`, to call with the segment files once this version is on disk; `finished` hands back the
    tags of the versions done since it was last asked, in order; after a failure `error` holds it."""

    error: BaseException | None

    def add(self, final: np.ndarray, open_frames: np.ndarray, tag: object, then: Callable[[list[Path]], object]) -> None: ...

    def finished(self, wait: bool = False) -> list[object]: ...

    def close(self) -> None: ...


class SegmentedMp4:
    """The job's `<job>.mp4`, rewritten after every section from H.264 segments encoded once (on a writer thread,
    while the next section samples). `segments` are the ones a job that goes on from a checkpoint has already,
    `prefix` how many lead whichever way the video grows (an extended video's own frames), `audio` the sound that
    goes along; `metadata` is written into every version of the file."""

    def __init__(
        self, paths: JobPaths, settings: Settings, prepends: bool, segments: Sequence[Path] = (), prefix: int = 0,
        audio: Path | None = None, metadata: dict[str, str] | None = None,
    ):  # fmt: skip
        self.path = paths.video
        video = SegmentedVideo(paths.parts_dir, prepends, FPS, settings.mp4_crf, list(segments), prefix, audio)
        self._writer = BackgroundVideoWriter(video, metadata)

    @property
    def error(self) -> BaseException | None:
        return self._writer.error

    def add(self, final: np.ndarray, open_frames: np.ndarray, tag: object, then: Callable[[list[Path]], object]) -> None:
        self._writer.submit(final, open_frames, self.path, tag, then)

    def finished(self, wait: bool = False) -> list[object]:
        return self._writer.finished(wait)

    def close(self) -> None:
        self._writer.close()
