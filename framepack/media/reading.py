"""Reading videos users give: their facts, their frames at 30 fps streamed start to end, and their sound. Every frame
is read upright, as a player shows it: phones store a portrait clip as landscape pictures and a display matrix that
says how to turn (and mirror) them."""

from __future__ import annotations

import collections
import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from ..files import atomic_path, file_sha256
from ..settings import FPS
from .images import resize_and_center_crop


@dataclass(frozen=True)
class Turn:
    """How a player shows a stored frame: turned `clockwise` degrees (0, 90, 180 or 270), then mirrored left to right
    if `mirror`. Every display matrix of quarter turns and flips is one of these eight."""

    clockwise: int = 0
    mirror: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        turned = np.rot90(image, -self.clockwise // 90)
        return np.ascontiguousarray(turned[:, ::-1] if self.mirror else turned)

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) shown for a stored (width, height)."""
        return (height, width) if self.clockwise in (90, 270) else (width, height)

    def describe(self) -> str:
        """What was done, for a note ("" for nothing)."""
        turned = {0: "", 90: "turned 90° clockwise", 180: "turned 180°", 270: "turned 90° anticlockwise"}[self.clockwise]
        return " and ".join(part for part in (turned, "mirrored" if self.mirror else "") if part)


UPRIGHT = Turn()


def turn_of(frame: av.VideoFrame) -> Turn:
    """The turn a frame's display matrix asks for, read as FFmpeg's own player and its autorotate do (fftools: a
    quarter turn by the rotation, the matrix's signs telling a mirrored one apart). Angles other than quarter
    turns are left alone, as they are there."""
    matrix = next((side for side in frame.side_data if side.type.name == "DISPLAYMATRIX"), None)
    if matrix is None:
        return UPRIGHT
    m = np.frombuffer(bytes(memoryview(matrix))[:36], np.int32)
    theta = -frame.rotation % 360  # PyAV gives the angle anticlockwise, in [-180, 180]
    if theta in (90, 270):
        # 90: "transpose=clock", or "cclock_flip" (a plain transpose) when m[3] > 0; 270: "cclock", or "clock_flip".
        return Turn(theta, bool(m[3] > 0) if theta == 90 else bool(m[3] < 0))
    hflip, vflip = bool(m[0] < 0) if theta == 180 else False, bool(m[4] < 0)
    if theta not in (0, 180) or (theta == 180 and not (hflip or vflip)):
        return UPRIGHT
    # A vertical flip is a half turn and a mirror; both flips, a half turn.
    return Turn(180 if vflip else 0, hflip != vflip)


def rgb_of(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as RGB uint8 (H, W, 3); a video with alpha (ProRes 4444, QuickTime Animation, FFV1) has its
    see-through parts composited on white, as images are (plain RGB would show whatever colour lies under them)."""
    if not any(component.is_alpha for component in frame.format.components):
        return frame.to_ndarray(format="rgb24")
    rgba = frame.to_ndarray(format="rgba").astype(np.float32)
    alpha = rgba[..., 3:] / 255
    return (rgba[..., :3] * alpha + 255 * (1 - alpha) + 0.5).astype(np.uint8)


# Video streams that are not the video: a song's cover, a thumbnail.
NOT_THE_VIDEO = av.stream.Disposition.attached_pic | av.stream.Disposition.timed_thumbnails


def main_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    """The picture a player shows: of the video streams that are not a cover or a thumbnail, those marked default (or
    all, if none is), and of them the largest (the first of equals). None for a file without one."""
    pictures = [stream for stream in container.streams.video if not stream.disposition & NOT_THE_VIDEO]
    preferred = [stream for stream in pictures if stream.disposition & av.stream.Disposition.default] or pictures
    return max(preferred, key=lambda stream: stream.codec_context.width * stream.codec_context.height, default=None)


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int
    codec: str
    pix_fmt: str
    metadata: dict[str, str]


def probe(path: str | Path) -> VideoInfo:
    """Read a video's stream facts, counting frames by decoding (container counts can be missing); the size is
    the one shown (a portrait phone clip is taller than wide)."""
    with av.open(str(path)) as container:
        stream = main_stream(container)
        frames, turn = 0, UPRIGHT
        for frame in container.decode(stream):
            turn = turn_of(frame) if frames == 0 else turn
            frames += 1
        width, height = turn.size(stream.codec_context.width, stream.codec_context.height)
        return VideoInfo(
            frames=frames,
            fps=float(stream.average_rate),
            width=width,
            height=height,
            codec=stream.codec_context.name,
            pix_fmt=stream.codec_context.pix_fmt,
            metadata=dict(container.metadata),
        )


def shown_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a video as it is shown, from its first frame only."""
    with av.open(str(path)) as container:
        stream = main_stream(container)
        first = next(iter(container.decode(stream)))
        width, height = turn_of(first).size(stream.codec_context.width, stream.codec_context.height)
        return height, width


def frames_said(path: str | Path) -> int | None:
    """How many frames a video's file says it has (no frame decoded); None where it does not say (MKV, WebM, GIF) or
    the file cannot be read."""
    try:
        with av.open(str(path)) as container:
            stream = main_stream(container)
            return (stream.frames or None) if stream is not None else None
    except (av.FFmpegError, OSError):
        return None


def read_frames(path: str | Path) -> np.ndarray:
    """All frames of a video as uint8 (T, H, W, 3), as `upright_frames` reads them."""
    return np.stack(list(upright_frames(path)))


class VideoInputError(ValueError):
    """A video given to extend cannot be used; the message names the file and says why, in one line."""


class ReadingStopped(Exception):
    """A stop was requested while an input video was being read: the job ends as stopped, having made nothing."""


# The longest an input video may be: it is read at 30 fps, a frame held until the next one's time, so a file of a
# few frames far apart (0 s, 1 s, 3 hours) would otherwise expand to millions of frames. Ten minutes is 18,000.
MAX_INPUT_SECONDS = 600
MAX_INPUT_FRAMES = MAX_INPUT_SECONDS * FPS


def stop_reading(stop: threading.Event | None) -> None:
    """Raise ReadingStopped if a stop was requested (called every few frames wherever an input is read)."""
    if stop is not None and stop.is_set():
        raise ReadingStopped()


@dataclass
class InputVideo:
    """What reading an input video found: its frame rate, how many frames it has at 30 fps, its size as shown,
    its first frame and its last frames at the video's size (the rest went to the caller as they came), and how
    its frames were turned upright."""

    name: str
    sha256: str
    fps: float
    frames: int
    width: int
    height: int
    first: np.ndarray
    tail: list[np.ndarray]
    turn: Turn = UPRIGHT
    facts: Reading = field(default_factory=lambda: Reading())


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@contextlib.contextmanager
def opened(path: Path) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """The video and its picture stream; VideoInputError for a file that is missing, empty, not a video PyAV reads,
    or one without pictures (a song, a voice memo)."""
    if not path.exists():
        raise VideoInputError(f"video file not found: {path.name}")
    if path.is_dir():
        raise VideoInputError(f"{path.name} is a folder, not a video")
    if path.stat().st_size == 0:
        raise VideoInputError(f"{path.name} is empty")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError):  # FFmpeg's reason ("InvalidDataError") says nothing more to a user
        raise VideoInputError(f"{path.name} is not a video this app can read: not a video file, or a damaged one") from None
    with container:
        if (stream := main_stream(container)) is None:  # a song with its cover has a picture, but no video
            cover = " and its cover picture" if container.streams.video else ""
            sound = f" (only sound{cover})" if container.streams.audio else ""
            raise VideoInputError(f"{path.name} has no video stream{sound}")
        yield container, stream


def seconds_of(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    """How long the file says its picture lasts (the container's duration, else the stream's); None if unsaid."""
    if container.duration:
        return container.duration / av.time_base
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def check_length(path: Path, container: av.container.InputContainer, stream: av.VideoStream) -> None:
    """VideoInputError for a video longer than MAX_INPUT_SECONDS, from what its file says (no frame is decoded; the
    packets are counted only for the refusal's line). The reader enforces the limit too, for a file that lies."""
    seconds = seconds_of(container, stream)
    if seconds is None or seconds * FPS <= MAX_INPUT_FRAMES + 0.5:
        return
    frames = stream.frames
    if not frames:  # MKV and WebM do not count them: count the packets (no decoding)
        with av.open(str(path)) as again:
            frames = sum(1 for packet in again.demux(again.streams.video[stream.index]) if packet.size)
    raise too_long(path.name, f"{plural(frames, 'frame')} over {seconds:g} s", round(seconds * FPS))


# HDR transfers (AVCOL_TRC_*): PQ (HDR10, Dolby Vision's base) and HLG (phones' and broadcasters' HDR).
HDR_TRANSFERS = {16: "PQ", 18: "HLG"}


def check_dynamic_range(name: str, stream: av.VideoStream) -> None:
    """VideoInputError for an HDR video: read as SDR its colours come out washed out and dim, and tone-mapping it
    needs libavfilter's zscale (libzimg), which PyAV's FFmpeg does not have."""
    if (transfer := HDR_TRANSFERS.get(int(stream.codec_context.color_trc or 0))) is None:
        return
    raise VideoInputError(f"{name} is HDR ({transfer}); convert it to SDR first, e.g. ffmpeg -i {name} -vf "
                          "zscale=t=linear:npl=100,format=gbrpf32le,tonemap=hable,zscale=p=bt709:t=bt709:m=bt709,"
                          "format=yuv420p sdr.mp4, or export it as SDR (Rec. 709) from the phone or editor")  # fmt: skip


def too_long(name: str, what: str, shown: int) -> VideoInputError:
    return VideoInputError(f"{name} has {what}: at 30 fps that is {shown} frames, more than the {MAX_INPUT_FRAMES} "
                           f"({MAX_INPUT_SECONDS // 60} minutes) an input video may have; cut it shorter first")  # fmt: skip


@dataclass
class Reading:
    """What reading a video found besides its frames, for the job's notes."""

    deinterlaced: bool = False  # its frames were interlaced: each was deinterlaced (DEINTERLACER)
    frames: int = 0  # decoded (not at 30 fps)
    seconds: float = 0.0  # from the first frame's start to the last one's end
    gaps: tuple[float, float] = (0.0, 0.0)  # the shortest and longest time between two frames' starts
    damaged: bool = False  # the file breaks (or ends) after `frames` frames, `seconds` in: the frames before are used
    packets_end: float = 0.0  # where the packets of all streams end, in seconds: a file cut short ends early

    @property
    def average_rate(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def variable(self) -> bool:
        """Frames not evenly spaced, beyond a container's rounding of timestamps (to the millisecond in WebM)."""
        shortest, longest = self.gaps
        return self.frames > 2 and longest - shortest > max(0.0021, 0.05 * longest)


# bwdif (yadif's successor in FFmpeg): one frame out per frame in, only the frames marked interlaced are touched,
# the field order read from each frame.
DEINTERLACER = ("bwdif", "mode=send_frame:parity=auto:deint=interlaced")


def decoded(container: av.container.InputContainer, stream: av.VideoStream, facts: Reading) -> Iterator[av.VideoFrame]:
    """The stream's frames, demuxed with the file's other streams so that `facts.packets_end` says where the file
    really ends (a file cut short ends before the length its header gives, in every stream)."""
    start = (container.start_time or 0) / av.time_base
    for packet in container.demux():
        if packet.pts is not None and packet.time_base:
            end = float((packet.pts + (packet.duration or 0)) * packet.time_base) - start
            facts.packets_end = max(facts.packets_end, end)
        if packet.stream.index == stream.index:
            yield from packet.decode()  # the empty packet at the end flushes the decoder


def deinterlaced(frames: Iterator[av.VideoFrame], stream: av.VideoStream, facts: Reading) -> Iterator[av.VideoFrame]:
    """The frames as a player shows them: when the first is interlaced (a camcorder's or a TV recording's fields
    woven into one picture, which combs wherever something moves), all go through DEINTERLACER; else as they are."""
    graph = None
    for frame in frames:
        if graph is None:
            if not frame.interlaced_frame:
                yield frame
                yield from frames
                return
            graph, facts.deinterlaced = av.filter.Graph(), True
            source, sink = graph.add_buffer(template=stream), graph.add("buffersink")
            source.link_to(worker := graph.add(*DEINTERLACER))
            worker.link_to(sink)
            graph.configure()
        graph.vpush(frame)
        yield from _pulled(graph)
    if graph is not None:
        graph.vpush(None)  # the filter holds a frame back (it looks at the next one): let it go
        yield from _pulled(graph)


def _pulled(graph: av.filter.Graph) -> Iterator[av.VideoFrame]:
    while True:
        try:
            yield graph.vpull()
        except (av.BlockingIOError, av.EOFError):  # it needs more input, or has given all
            return


def shown_frames(container: av.container.InputContainer, stream: av.VideoStream, name: str, facts: Reading,
                 ) -> Iterator[av.VideoFrame]:  # fmt: skip
    """The stream's frames at its own rate, as a player shows them: interlaced ones deinterlaced, and of a file that
    breaks or ends early the frames before (`facts.damaged`). VideoInputError for a video damaged from its start or
    without frames. Every reader of a user's video reads it through this."""
    began = False
    try:
        for frame in deinterlaced(decoded(container, stream, facts), stream, facts):
            began = True
            yield frame
    except (av.FFmpegError, OSError):  # a file cut short or damaged part way: the frames before are used
        if not began:
            raise VideoInputError(f"{name} is damaged from its start: not one frame of it can be decoded") from None
        facts.damaged = True
    if not began:
        raise VideoInputError(f"{name} has no frames")


def shown_at_30_fps(container: av.container.InputContainer, stream: av.VideoStream, name: str,
                    stop: threading.Event | None = None, facts: Reading | None = None,
                    ) -> Iterator[tuple[av.VideoFrame, int]]:  # fmt: skip
    """Each decoded frame with how many frames at 30 fps show it (a frame shows until the next one's time; 0 for one
    a faster video drops; the last one for its own duration), as `shown_frames` gives them; `facts` hears what was
    found. VideoInputError for what `shown_frames` refuses and a video running past MAX_INPUT_FRAMES at 30 fps;
    ReadingStopped once `stop` is set."""
    facts = facts if facts is not None else Reading()
    rate = float(stream.average_rate or stream.guessed_rate or FPS)
    emitted = 0
    pending, pending_time, start, shortest, longest = None, 0.0, None, math.inf, 0.0
    for frame in shown_frames(container, stream, name, facts):
        stop_reading(stop)
        time = frame.time if frame.time is not None else facts.frames / rate
        start = time if start is None else start
        if pending is not None:
            shortest, longest = min(shortest, time - start - pending_time), max(longest, time - start - pending_time)
            # Output frame k shows the last frame that began by k/30 s, give or take a quarter frame
            # (containers round timestamps, to the millisecond in WebM).
            count = max(0, math.ceil((time - start) * FPS - 0.25) - emitted)
            if emitted + count > MAX_INPUT_FRAMES:
                raise too_long(name, f"a frame at {time - start:g} s", emitted + count)
            yield pending, count
            emitted += count
        pending, pending_time = frame, time - start
        facts.frames += 1
    # The last frame lasts as long as it says, unless that is longer than any gap between the frames (a muxer's
    # guess from a nominal rate, which a variable-rate video's may be far from): then as long as the frames before
    # it on average. A single frame lasts 1/rate without a duration of its own.
    own = float(pending.duration * pending.time_base) if pending.duration and pending.time_base else 0.0
    average = pending_time / (facts.frames - 1) if facts.frames > 1 else 1 / rate
    lasts = own if own and (facts.frames == 1 or own <= longest + 0.0021) else average
    facts.seconds, facts.gaps = pending_time + lasts, (shortest, longest) if facts.frames > 1 else (lasts, lasts)
    declared = seconds_of(container, stream)
    if declared is not None and declared - max(facts.packets_end, facts.seconds) > max(0.5, 2 * lasts):
        facts.damaged = True  # the header's length was written when the file was whole
    last = max(0, max(1, round(facts.seconds * FPS)) - emitted)
    if emitted + last > MAX_INPUT_FRAMES:
        raise too_long(name, f"its last frame at {pending_time:g} s", emitted + last)
    yield pending, last


def damage_note(name: str, facts: Reading) -> str:
    return f"{name} is damaged after {plural(facts.frames, 'frame')} ({facts.seconds:.2f} s): the frames before are used"


def too_short(name: str, frames: int, needed: int, why: str) -> VideoInputError:
    return VideoInputError(f"{name} has {plural(frames, 'frame')} at 30 fps; extending it needs at least {needed} ({why})")


def check_video(path: str | Path, needs: tuple[int, str] | None = None) -> None:
    """Refuse at once what is not a video, and with `needs` (the fewest frames at 30 fps, and what for) one too short
    to use: VideoInputError says why in one line. Only the frames `needs` asks for are decoded (reading the whole
    video is the job's work), so a long video is checked as fast as a short one."""
    path = Path(path)
    with opened(path) as (container, stream):
        check_length(path, container, stream)
        check_dynamic_range(path.name, stream)
        if needs is None:
            return
        frames, facts = 0, Reading()
        for _, count in shown_at_30_fps(container, stream, path.name, facts=facts):
            frames += count
            if frames >= needs[0]:
                return
        error = too_short(path.name, frames, *needs)
        raise VideoInputError(f"{damage_note(path.name, facts)}, but {error}") if facts.damaged else error


def read_video(
    path: str | Path,
    size_of: Callable[[np.ndarray], tuple[int, int]],
    tail: int,
    passed: Callable[[np.ndarray], None],
    stop: threading.Event | None = None,
) -> InputVideo:
    """Decode a video once, start to end, at 30 fps (a frame shows until the next one's time), each frame upright,
    resized and cropped to the (height, width) `size_of` gives for the first one. Only the last `tail` frames are
    kept; the ones before are handed to `passed` in order, so memory does not grow with the video's length.
    ReadingStopped once `stop` is set (looked at before each frame is handed on: a held frame may be many)."""
    path = Path(path)
    kept: collections.deque[np.ndarray] = collections.deque(maxlen=tail)
    size, first, shown, turn, emitted, facts = (0, 0), None, (0, 0), UPRIGHT, 0, Reading()
    with opened(path) as (container, stream):
        check_length(path, container, stream)
        check_dynamic_range(path.name, stream)
        rate = float(stream.average_rate or stream.guessed_rate or FPS)
        for frame, count in shown_at_30_fps(container, stream, path.name, stop, facts):
            if first is None:  # the first frame's display matrix is the stream's; its upright size picks the bucket
                turn = turn_of(frame)
            elif not count:
                continue
            rgb = turn.apply(rgb_of(frame))
            if first is None:
                size, shown = size_of(rgb), (rgb.shape[1], rgb.shape[0])
            image = resize_and_center_crop(rgb, size[1], size[0])
            first = image if first is None else first
            for _ in range(count):
                stop_reading(stop)
                if len(kept) == kept.maxlen:
                    passed(kept[0])
                kept.append(image)
            emitted += count
    rate = facts.average_rate if facts.variable else rate  # a variable rate's nominal one may be far from it
    return InputVideo(path.name, file_sha256(path), rate, emitted, *shown, first, list(kept), turn, facts)


def upright_frames(path: str | Path, facts: Reading | None = None) -> Iterator[np.ndarray]:
    """Every frame of a video at its own rate, uint8 RGB (H, W, 3), as a player shows it and as an extension reads it:
    the main video stream, turned by the first frame's display matrix, deinterlaced, alpha on white; of a file that
    breaks part way the frames before (`facts` hears what was done). VideoInputError, before any frame, for a file
    that is missing, empty, not a video, only sound or HDR, and for one damaged from its start."""
    path, facts = Path(path), facts if facts is not None else Reading()
    with opened(path) as (container, stream):
        check_dynamic_range(path.name, stream)
        stream.thread_type = "AUTO"  # decoding on every core: post-processing reads whole videos
        rate, turn, start = float(stream.average_rate or stream.guessed_rate or FPS), None, None
        for frame in shown_frames(container, stream, path.name, facts):
            turn = turn_of(frame) if turn is None else turn
            if frame.time is not None:
                start = frame.time if start is None else start
                facts.seconds = frame.time - start + 1 / rate
            facts.frames += 1
            yield turn.apply(rgb_of(frame))
        declared = seconds_of(container, stream)
        if declared is not None and declared - max(facts.packets_end, facts.seconds) > max(0.5, 2 / rate):
            facts.damaged = True  # cut short: it ends before the length its header gives (as in shown_at_30_fps)


def reading_notes(name: str, turn: Turn, facts: Reading) -> list[str]:
    """What reading a video did that its user should hear: turned by its display matrix, deinterlaced, cut short."""
    notes = []
    if turned := turn.describe():
        notes.append(f"{name} is shown {turned} (its display matrix): its frames are read that way up")
    if facts.deinterlaced:
        notes.append(f"{name} is interlaced: its frames are deinterlaced ({DEINTERLACER[0]}), as a player shows them")
    if facts.damaged:
        notes.append(damage_note(name, facts))
    return notes


def extract_audio(source: str | Path, target: str | Path) -> Path | None:
    """The source's first audio track as AAC in its own file (None without one), to go with its frames."""
    with av.open(str(source)) as container:
        if not container.streams.audio:
            return None
        audio = container.streams.audio[0]
        rate = audio.codec_context.sample_rate or 48000
        layout = "stereo" if (audio.codec_context.channels or 2) > 1 else "mono"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        with atomic_path(Path(target)) as tmp, av.open(str(tmp), "w", format="mp4") as out:
            stream = out.add_stream("aac", rate=rate, layout=layout)
            for frame in container.decode(audio):
                for chunk in resampler.resample(frame):
                    out.mux(stream.encode(chunk))
            for chunk in resampler.resample(None):
                out.mux(stream.encode(chunk))
            out.mux(stream.encode())
    return Path(target)

