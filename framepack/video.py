"""Video I/O: decoding sections to pixels, blending them into one video, latent previews and MP4 files.

Frames are final once no later section can blend into them; final frames are encoded to H.264 once, as
segments, and the MP4 the user sees is a remux of those segments (no re-encoding of what was encoded).
"""

from __future__ import annotations

import errno
import collections
import contextlib
import queue
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from .files import atomic_path, file_sha256, publish, temporary_path

FPS = 30

# ComfyUI's linear projection of HunyuanVideo latents to RGB (16 channels -> 3), used for live previews.
LATENT_RGB_FACTORS = (
    (-0.0395, -0.0331, 0.0445), (0.0696, 0.0795, 0.0518), (0.0135, -0.0945, -0.0282), (0.0108, -0.0250, -0.0765),
    (-0.0209, 0.0032, 0.0224), (-0.0804, -0.0254, -0.0639), (-0.0991, 0.0271, -0.0669), (-0.0646, -0.0422, -0.0400),
    (-0.0696, -0.0595, -0.0894), (-0.0799, -0.0208, -0.0375), (0.1166, 0.1627, 0.0962), (0.1165, 0.0432, 0.0407),
    (-0.2315, -0.1920, -0.1355), (-0.0270, 0.0401, -0.0821), (-0.0616, -0.0997, -0.0727), (0.0249, -0.0469, -0.1703),
)  # fmt: skip
LATENT_RGB_BIAS = (0.0259, -0.0192, -0.0761)


def latent_preview(latents: torch.Tensor) -> np.ndarray:
    """A cheap RGB preview of (1, 16, T, h, w) latents: the T frames side by side, uint8 (h, T*w, 3)."""
    weight = torch.tensor(LATENT_RGB_FACTORS, device=latents.device, dtype=latents.dtype).T[:, :, None, None, None]
    bias = torch.tensor(LATENT_RGB_BIAS, device=latents.device, dtype=latents.dtype)
    rgb = torch.nn.functional.conv3d(latents, weight, bias=bias).clamp(0, 1)
    rgb = (rgb[0] * 255).to(torch.uint8).cpu()  # (3, T, h, w)
    return rgb.permute(2, 1, 3, 0).flatten(1, 2).numpy()  # (h, T*w, 3)


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Decode scaled latents (1, 16, T, h, w) to float pixels in [-1, 1], (1, 3, 4T-3, H, W), on the CPU."""
    scaled = latents / vae.config.scaling_factor
    return vae.decode(scaled.to(device=vae.device, dtype=vae.dtype)).sample.float().cpu()


def to_uint8_frames(pixels: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) float pixels in [-1, 1] to (T, H, W, 3) uint8, truncating like FramePack."""
    frames = (pixels.float().clamp(-1, 1) * 127.5 + 127.5).to(torch.uint8)
    return frames[0].permute(1, 2, 3, 0).contiguous().numpy()


def blend(earlier: torch.Tensor, later: torch.Tensor, overlap: int) -> torch.Tensor:
    """Join two clips (B, C, T, H, W) whose last/first `overlap` frames show the same moment, cross-fading linearly."""
    if overlap <= 0:
        return torch.cat([earlier, later], dim=2)
    weights = torch.linspace(1, 0, overlap, dtype=earlier.dtype, device=earlier.device).view(1, 1, -1, 1, 1)
    mixed = weights * earlier[:, :, -overlap:] + (1 - weights) * later[:, :, :overlap]
    return torch.cat([earlier[:, :, :-overlap], mixed, later[:, :, overlap:]], dim=2)


class FrameAssembler:
    """Blends decoded section clips into the video, keeping in memory only the frames a later clip can change.

    With `prepend` (the original variant) each clip is earlier in time than the video so far and is blended in
    front; otherwise (F1) after. `add` returns the frames that became final, as uint8.
    """

    def __init__(self, overlap: int, prepend: bool, open_frames: torch.Tensor | None = None, final_frames: int = 0):
        self.overlap = overlap
        self.prepend = prepend
        # Float frames at the growing edge (a resumed job starts with its earlier ones; none: an empty tensor too).
        self.open = open_frames if open_frames is not None and open_frames.shape[2] else None
        self.final_frames = final_frames

    def add(self, clip: torch.Tensor) -> np.ndarray:
        if self.open is None:
            video = clip
        elif self.prepend:
            video = blend(clip, self.open, self.overlap)
        else:
            video = blend(self.open, clip, self.overlap)
        keep = min(self.overlap, video.shape[2])
        if self.prepend:
            self.open, final = video[:, :, :keep], video[:, :, keep:]
        else:
            self.open, final = video[:, :, video.shape[2] - keep :], video[:, :, : video.shape[2] - keep]
        self.final_frames += final.shape[2]
        return to_uint8_frames(final)

    def open_frames(self) -> np.ndarray:
        return to_uint8_frames(self.open) if self.open is not None else np.zeros((0, 0, 0, 3), np.uint8)

    @property
    def num_frames(self) -> int:
        return self.final_frames + (self.open.shape[2] if self.open is not None else 0)


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
    for frame in frames:
        encoder.add(frame)
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
                tag, error = self._done.get(block=wait)
            except queue.Empty:
                break
            self._pending -= 1
            if error is None:
                results.append(tag)
            else:
                self.error = VideoWriterError(f"writing the video failed: {describe_write_error(error)}")
                self.error.__cause__ = error
        return results

    def close(self) -> None:
        """End the thread after the queued updates."""
        self._tasks.put(None)
        self._thread.join()

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
    """Read a video's stream facts, counting frames by decoding (container counts can be missing)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return VideoInfo(
            frames=frames,
            fps=float(stream.average_rate),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            codec=stream.codec_context.name,
            pix_fmt=stream.codec_context.pix_fmt,
            metadata=dict(container.metadata),
        )


def read_frames(path: str | Path) -> np.ndarray:
    """All frames of a video as uint8 (T, H, W, 3)."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


class VideoInputError(ValueError):
    """A video given to extend cannot be used; the message names the file and says why, in one line."""


@dataclass
class InputVideo:
    """What reading an input video found: its frame rate, how many frames it has at 30 fps, its first frame and
    its last frames at the video's size (the rest went to the caller as they came)."""

    name: str
    sha256: str
    fps: float
    frames: int
    width: int
    height: int
    first: np.ndarray
    tail: list[np.ndarray]


def check_video(path: str | Path) -> None:
    """Refuse at once what is not a video (reading it whole is the job's work): VideoInputError says why."""
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoInputError(f"{path.name} has no video stream")
    except FileNotFoundError:
        raise VideoInputError(f"video file not found: {path.name}") from None
    except (av.FFmpegError, OSError) as exc:
        raise VideoInputError(f"{path.name} is not a video this app can read ({type(exc).__name__})") from None


def read_video(
    path: str | Path,
    size_of: Callable[[np.ndarray], tuple[int, int]],
    tail: int,
    passed: Callable[[np.ndarray], None],
) -> InputVideo:
    """Decode a video once, start to end, at 30 fps (a frame shows until the next one's time), each frame resized
    and cropped to the (height, width) `size_of` gives for the first one. Only the last `tail` frames are kept;
    the ones before are handed to `passed` in order, so memory does not grow with the video's length."""
    from .conditioning import resize_and_center_crop

    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise VideoInputError(f"{path.name} is not a video this app can read ({type(exc).__name__})") from None
    with container:
        if not container.streams.video:
            raise VideoInputError(f"{path.name} has no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or FPS)
        kept: collections.deque[np.ndarray] = collections.deque(maxlen=tail)
        size: tuple[int, int] | None = None
        first = None
        emitted = decoded = 0
        pending, pending_time, start = None, 0.0, None

        def emit(frame: np.ndarray) -> None:
            nonlocal emitted
            if len(kept) == kept.maxlen:
                passed(kept[0])
            kept.append(frame)
            emitted += 1

        def fitted(frame: av.VideoFrame) -> np.ndarray:
            nonlocal size, first
            rgb = frame.to_ndarray(format="rgb24")
            if size is None:
                size = size_of(rgb)
            image = resize_and_center_crop(rgb, size[1], size[0])
            if first is None:
                first = image
            return image

        try:
            for frame in container.decode(stream):
                time = frame.time if frame.time is not None else decoded / rate
                start = time if start is None else start
                if pending is not None:
                    image = fitted(pending)
                    # Output frame k shows the last frame that began by k/30 s, give or take a quarter frame
                    # (containers round timestamps, to the millisecond in WebM).
                    while (emitted + 0.25) / FPS < time - start:
                        emit(image)
                pending, pending_time = frame, time - start
                decoded += 1
        except (av.FFmpegError, OSError) as exc:  # a file cut short or damaged part way
            raise VideoInputError(f"{path.name} breaks after {decoded} frames ({type(exc).__name__}); cut the video before that point") from None
        if pending is None:
            raise VideoInputError(f"{path.name} has no frames")
        image = fitted(pending)
        while emitted < max(1, round((pending_time + 1 / rate) * FPS)):  # the last frame lasts 1/rate
            emit(image)
        width, height = stream.codec_context.width, stream.codec_context.height
    return InputVideo(path.name, file_sha256(path), rate, emitted, width, height, first, list(kept))


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
