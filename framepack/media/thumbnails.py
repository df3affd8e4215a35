"""A video's thumbnail: its last frame, small, as a JPEG (what a list of jobs shows of each one)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

from ..files import atomic_path
from .reading import main_stream, rgb_of, turn_of

# The longer side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 160


def last_frame(path: str | Path) -> np.ndarray:
    """The last frame of a video as RGB uint8 (H, W, 3), as a player shows it. Only the end is decoded: from the
    last keyframe before the stream's end (a long video costs no more than a short one). ValueError if it cannot."""
    try:
        return _last_frame(path)
    except av.FFmpegError as exc:
        raise ValueError(f"{Path(path).name} cannot be read ({type(exc).__name__})") from None


def _last_frame(path: str | Path) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = main_stream(container)
        if stream is None:
            raise ValueError(f"{Path(path).name} holds no video")
        last = None
        if stream.duration:
            container.seek((stream.start_time or 0) + stream.duration, stream=stream, backward=True)
            for last in container.decode(stream):
                pass
        if last is None:  # no duration, or the seek found nothing: read it all
            container.seek(0)
            for last in container.decode(stream):
                pass
        if last is None:
            raise ValueError(f"{Path(path).name} holds no frames")
        return turn_of(last).apply(rgb_of(last))  # as a player shows it


def write_thumbnail(video: str | Path, target: str | Path, size: int = THUMBNAIL_SIZE) -> Path:
    """Write the last frame of `video`, its longer side `size` pixels, as a JPEG at `target` (atomically)."""
    image = Image.fromarray(last_frame(video))
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    target = Path(target)
    with atomic_path(target) as tmp:
        image.save(tmp, format="JPEG", quality=90)
    return target
