"""Writing MP4s: H.264 segments encoded once and joined without re-encoding, cut on a keyframe, and a writer
thread that encodes while the next section samples.

Frames are final once no later section can blend into them; final frames are encoded to H.264 once, as segments,
and the MP4 the user sees is a remux of those segments.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from ..files import atomic_path, publish, temporary_path
from ..settings import FPS

logger = logging.getLogger(__name__)
# The longest one video update may take (encoding a section's frames and joining the segments) before the job gives
# up on its writer.
WRITE_TIMEOUT_SECONDS = 600.0

class Mp4Encoder:
    """H.264 yuv420p at `fps`, index first, written atomically: `add` frames one at a time, then `close`.

    Every segment of a video is encoded with the same settings, so segments can be joined without re-encoding.
    """

    def __init__(
        self, path: str | Path, width: int, height: int, fps: int = FPS, crf: int = 16, metadata: dict[str, str] | None = None
    ):
        if height % 2 or width % 2:
            raise ValueError(f"H.264 yuv420p needs even sides, got {width}x{height}")
        self.path = Path(path)
        self._tmp = temporary_path(self.path)
        self._container = av.open(str(self._tmp), "w", format="mp4", options={"movflags": "+faststart"})
        try:
            self._container.metadata.update(metadata or {})
            self._stream = self._container.add_stream("libx264", rate=fps)
            self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
            self._stream.options = {"crf": str(int(crf))}
        except BaseException:
            self.abort()
            raise
        self.frames = 0

    def add(self, frame: np.ndarray) -> None:
        self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and put it in place."""
        try:
            self._container.mux(self._stream.encode())
            self._container.close()
            publish(self._tmp, self.path)
        finally:
            self.abort()  # a no-op once published
        return self.path

    def abort(self) -> None:
        """Give up: the partial file is removed, nothing is put in place."""
        self._container.close()
        self._tmp.unlink(missing_ok=True)


def encode_mp4(frames: np.ndarray, path: str | Path, fps: int = FPS, crf: int = 16, metadata: dict[str, str] | None = None) -> Path:
    """Write uint8 frames (T, H, W, 3) as H.264 yuv420p at `fps`, index first, atomically."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    encoder = Mp4Encoder(path, frames.shape[2], frames.shape[1], fps, crf, metadata)
    try:
        for frame in frames:
            encoder.add(frame)
    except BaseException:
        encoder.abort()  # nothing half-written stays, under its name or a temporary one
        raise
    return encoder.close()


def concat_mp4(
    parts: list[Path], path: str | Path, metadata: dict[str, str] | None = None, audio: Path | None = None
) -> Path:
    """Join MP4 segments encoded with the same settings into one file by copying packets (no re-encoding), with
    the packets of an `audio` file's track beside them when given."""
    path = Path(path)
    if len(parts) == 1 and not metadata and audio is None:
        with atomic_path(path) as tmp:
            shutil.copyfile(parts[0], tmp)
        return path
    with contextlib.ExitStack() as files:
        tmp = files.enter_context(atomic_path(path))
        out = files.enter_context(av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}))
        out.metadata.update(metadata or {})
        # Every stream is declared before the first packet goes in (the container's header is written then).
        template = files.enter_context(av.open(str(parts[0]))).streams.video[0]
        out_stream, extradata = out.add_stream_from_template(template), template.codec_context.extradata
        sound = files.enter_context(av.open(str(audio))).streams.audio[0] if audio is not None else None
        sound_out = out.add_stream_from_template(sound) if sound is not None else None
        offset = 0
        for part in parts:
            with av.open(str(part)) as source:
                in_stream = source.streams.video[0]
                if in_stream.codec_context.extradata != extradata:
                    raise ValueError(f"{part} was encoded with other settings and cannot be joined without re-encoding")
                end = offset
                for packet in source.demux(in_stream):
                    if packet.dts is None:  # the demuxer's final flush packet
                        continue
                    packet.stream = out_stream
                    packet.pts += offset
                    packet.dts += offset
                    end = max(end, packet.pts + packet.duration)
                    out.mux(packet)
                offset = end
        if sound is not None:
            for packet in sound.container.demux(sound):
                if packet.dts is not None:
                    packet.stream = sound_out
                    out.mux(packet)
    return path


def trim_mp4(source: str | Path, path: str | Path, frames: int) -> Path:
    """Copy the first `frames` frames of one of our MP4s without re-encoding; the cut must fall on a keyframe
    (it does where a segment of ours begins)."""
    path = Path(path)
    with av.open(str(source)) as src:
        stream = src.streams.video[0]
        packets = [p for p in src.demux(stream) if p.dts is not None]
        frame_ticks = min(p.duration for p in packets if p.duration)
        cut = min(p.pts for p in packets) + frames * frame_ticks
        if not any(p.is_keyframe and p.pts == cut for p in packets):
            raise ValueError(f"{Path(source).name} has no keyframe at frame {frames}; it cannot be cut without re-encoding")
        with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            out_stream = out.add_stream_from_template(stream)
            for packet in packets:
                if packet.pts < cut:
                    packet.stream = out_stream
                    out.mux(packet)
    return path


class SegmentedVideo:
    """An MP4 that grows section by section: final frames are encoded once into segment files in `parts_dir`,
    and `write` joins them, plus the still-open edge frames, into one playable file."""

    def __init__(
        self,
        parts_dir: str | Path,
        prepend: bool,
        fps: int = FPS,
        crf: int = 16,
        segments: list[Path] = (),
        prefix: int = 0,
        audio: Path | None = None,
    ):
        """`prefix` leading segments (an extended video's own frames) stay first whichever way the video grows;
        `audio` goes along (the extended video's sound, for its part)."""
        self.parts_dir = Path(parts_dir)
        self.prepend = prepend
        self.fps, self.crf = fps, crf
        self.segments: list[Path] = list(segments)  # time order; a resumed job starts with its earlier ones
        self.prefix, self.audio = prefix, audio
        self._count = len(self.segments)

    def _encode(self, frames: np.ndarray, name: str) -> Path:
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        return encode_mp4(frames, self.parts_dir / name, fps=self.fps, crf=self.crf)

    def add_final(self, frames: np.ndarray) -> None:
        if len(frames) == 0:
            return
        self._count += 1
        segment = self._encode(frames, f"{self._count:05d}.mp4")
        if self.prepend:
            self.segments.insert(self.prefix, segment)
        else:
            self.segments.append(segment)

    def write(self, path: str | Path, open_frames: np.ndarray, metadata: dict[str, str] | None = None) -> Path:
        """Write the whole video so far to `path`: final segments and the open edge, in time order."""
        parts = list(self.segments)
        if len(open_frames):
            edge = self._encode(open_frames, "edge.mp4")
            parts.insert(self.prefix if self.prepend else len(parts), edge)
        return concat_mp4(parts, path, metadata, self.audio)

    def cleanup(self) -> None:
        shutil.rmtree(self.parts_dir, ignore_errors=True)


class VideoWriterError(RuntimeError):
    """An update of the video could not be written; the updates after it were not attempted."""


class BackgroundVideoWriter:
    """Runs a `SegmentedVideo`'s encoding on its own thread, so it overlaps the next section's sampling.

    `submit` queues one update (newly final frames, the open edge, the file to rewrite, and what to do once
    it is on disk, called on the writer's thread with the segment files) and returns at once; `finished`
    hands back, in order, the tags of the updates done.

    After an update fails, the later ones are not attempted (a video with a gap, or a checkpoint naming a
    segment that was never written, would be worse than stopping): each is reported failed with the first
    error. Whatever stops the thread, every submitted update gets an outcome, so `finished(wait=True)`
    never waits on a thread that died.
    """

    def __init__(self, video: SegmentedVideo, metadata: dict[str, str] | None = None):
        self.video = video
        self.metadata = metadata  # written into every version of the file
        self._tasks: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._pending = 0
        self.error: VideoWriterError | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name="framepack-video-writer", daemon=True)
        self._thread.start()

    def submit(
        self,
        final_frames: np.ndarray,
        open_frames: np.ndarray,
        path: Path,
        tag: object,
        then: Callable[[list[Path]], object] | None = None,
    ) -> None:
        with self._lock:
            self._pending += 1
            if self._stopped:  # the thread has ended: nobody would take it
                self._done.put((tag, VideoWriterError("the video writer stopped")))
            else:
                self._tasks.put((final_frames, open_frames, path, tag, then))

    def finished(self, wait: bool = False) -> list[object]:
        """Tags of the updates completed since the last call, in order; with `wait`, after every submitted
        update has an outcome. Once one has failed, `error` holds its error and no later tag is handed back."""
        results = []
        while self._pending and self.error is None:
            try:
                tag, error = self._done.get(block=wait, timeout=WRITE_TIMEOUT_SECONDS if wait else None)
            except queue.Empty:
                if wait:  # a writer stuck on a hung disk must not hang the job with it
                    self.error = VideoWriterError(f"writing the video failed: no update finished in {WRITE_TIMEOUT_SECONDS:g} s")
                break
            self._pending -= 1
            if error is None:
                results.append(tag)
            else:
                self.error = VideoWriterError(f"writing the video failed: {describe_write_error(error)}")
                self.error.__cause__ = error
        return results

    def close(self) -> None:
        """End the thread after the queued updates (a thread that does not end in time is left behind: it is a daemon
        and touches only the job's parts folder)."""
        self._tasks.put(None)
        self._thread.join(WRITE_TIMEOUT_SECONDS)
        if self._thread.is_alive():
            logger.warning("The video writer did not stop within %g s; it is left behind", WRITE_TIMEOUT_SECONDS)

    def _work(self) -> None:
        error: BaseException | None = None
        try:
            while (task := self._tasks.get()) is not None:
                final_frames, open_frames, path, tag, then = task
                try:
                    if error is None:
                        self.video.add_final(final_frames)
                        self.video.write(path, open_frames, self.metadata)
                        if then is not None:
                            then(list(self.video.segments))
                except Exception as exc:  # any failure (a full disk, a codec error) goes to the engine's thread
                    error = exc
                except BaseException:  # the thread itself is ending: this update did not happen either
                    error = VideoWriterError("the video writer stopped")
                    raise
                finally:
                    self._done.put((tag, error))
        finally:
            with self._lock:  # whatever ended the thread, every update still queued gets an outcome
                self._stopped = True
                while not self._tasks.empty():
                    if (task := self._tasks.get_nowait()) is not None:
                        self._done.put((task[3], error or VideoWriterError("the video writer stopped")))


def describe_write_error(error: BaseException) -> str:
    """One line for a failed write: a full disk is named as such (safetensors and PyAV word it their own way)."""
    text = str(error)
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in text:
        return "the disk is full"
    if isinstance(error, PermissionError):
        return "permission denied"
    return type(error).__name__

