"""Output formats of post-processing, written as a stream: `open_writer(...)`, then `add(frame)` one frame at a
time, then `close()` (or `abort()`). Files are written under a temporary name beside the output and renamed into
place when finished; a PNG folder is built under a temporary folder name and renamed the same way. On failure or a
stop nothing is left under the output's name.

| name   | what                          | container            | picture                  | sound                       |
| mp4    | H.264 (libx264), CRF          | MP4, index first     | yuv420p                  | AAC copied, else re-encoded |
| h265   | HEVC (libx265), CRF, `hvc1`   | MP4, index first     | yuv420p                  | AAC copied, else re-encoded |
| webm   | VP9 (libvpx), CRF             | WebM                 | yuv420p                  | Opus/Vorbis copied, else Opus |
| av1    | AV1 (SVT-AV1), CRF            | MP4 (WebM if the output ends in .webm) | yuv420p | as mp4 (as webm)         |
| prores | ProRes 422 HQ (prores_ks)     | MOV                  | yuv422p10le (10-bit 4:2:2) | AAC copied, else re-encoded |
| gif    | GIF, a palette per frame      | GIF                  | 256 colours              | none                        |
| webp   | animated WebP (libwebp), q 90 | WebP, loops          | yuv420p                  | none                        |
| png    | a folder of numbered PNGs     | folder               | RGB, lossless            | none                        |
| ffv1   | FFV1, lossless                | Matroska (.mkv)      | RGB (bgr0), lossless     | any codec copied            |

H.264 and HEVC in yuv420p need an even width and height: an odd side gets one more row or column, a copy of the
last one (no picture is lost; the other formats keep odd sizes). `crf` applies to mp4, h265, webm and av1 (VP9 and
AV1 count 0-63, so the same number gives a little more quality there); ProRes, GIF, WebP, PNG and FFV1 ignore it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av
import numpy as np
from PIL import Image

from ..files import publish, temporary_path
from . import PostprocessError


@dataclass(frozen=True)
class Format:
    """How one output format is written."""

    name: str
    label: str
    suffix: str  # the output's file suffix; "" for the PNG folder
    container: str | None  # PyAV's muxer name; None for the PNG folder
    codec: str  # the video encoder
    pix_fmt: str
    even: bool = False  # needs an even width and height
    audio: str | None = None  # the audio encoder for sound it cannot copy; None: the format holds no sound
    copies: tuple[str, ...] = ()  # audio codecs copied as they are ("*": any)
    crf: bool = False  # takes `crf`
    options: dict[str, str] = field(default_factory=dict)  # the encoder's
    container_options: dict[str, str] = field(default_factory=dict)
    codec_tag: str | None = None
    max_fps: float | None = None  # players cannot show more


_FASTSTART = {"movflags": "+faststart"}  # the index first: players start before the whole file is read

FORMATS: dict[str, Format] = {
    "mp4": Format("mp4", "H.264 MP4", ".mp4", "mp4", "libx264", "yuv420p", True, "aac", ("aac",), True,
                  container_options=_FASTSTART),
    # `hvc1` (parameter sets in the sample description) is the tag Apple's players open; FFmpeg's default is hev1.
    "h265": Format("h265", "HEVC MP4", ".mp4", "mp4", "libx265", "yuv420p", True, "aac", ("aac",), True,
                   {"x265-params": "log-level=error"}, _FASTSTART, codec_tag="hvc1"),
    # Bitrate 0 makes libvpx's CRF a constant quality, not a cap; row-mt and cpu-used 4 keep it usably fast.
    "webm": Format("webm", "VP9 WebM", ".webm", "webm", "libvpx-vp9", "yuv420p", False, "libopus", ("opus", "vorbis"),
                   True, {"b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"}),
    "av1": Format("av1", "AV1 MP4", ".mp4", "mp4", "libsvtav1", "yuv420p", False, "aac", ("aac",), True,
                  {"preset": "8"}, _FASTSTART),
    "prores": Format("prores", "ProRes 422 HQ MOV", ".mov", "mov", "prores_ks", "yuv422p10le", False, "aac", ("aac",),
                     options={"profile": "3", "vendor": "apl0"}),
    # Browsers show an animation frame of 10 ms or less for 100 ms. GIF delays count hundredths of a second, so
    # 50 fps (2/100 s) is the most a GIF shows; WebP counts milliseconds, so up to 90 fps (11 ms).
    "gif": Format("gif", "GIF", ".gif", "gif", "gif", "pal8", max_fps=50.0),
    "webp": Format("webp", "animated WebP", ".webp", "webp", "libwebp_anim", "yuv420p",
                   options={"quality": "90"}, container_options={"loop": "0"}, max_fps=90.0),
    "png": Format("png", "PNG frames", "", None, "png", "rgb24"),
    "ffv1": Format("ffv1", "FFV1 MKV (lossless)", ".mkv", "matroska", "ffv1", "bgr0", False, "flac", ("*",)),
}  # fmt: skip


def output_format(name: str, output: Path | None = None) -> Format:
    """The Format of a name, checked against this PyAV build (PostprocessError naming the format and the missing
    encoder). AV1 goes in WebM with Opus sound when the output ends in `.webm`."""
    fmt = FORMATS.get(name.lower())
    if fmt is None:
        raise PostprocessError(f"unknown format {name!r} (formats: {', '.join(FORMATS)})")
    if fmt.name == "av1" and output is not None and output.suffix.lower() == ".webm":
        fmt = replace(fmt, label="AV1 WebM", suffix=".webm", container="webm", audio="libopus",
                      copies=("opus", "vorbis"), container_options={})  # fmt: skip
    if fmt.container is not None:
        missing = [codec for codec in (fmt.codec, fmt.audio) if codec and not _has_encoder(codec)]
        if missing:
            raise PostprocessError(f"format {fmt.name} needs the {missing[0]} encoder, which this PyAV build lacks")
        if fmt.container not in av.formats_available:
            raise PostprocessError(f"format {fmt.name} needs the {fmt.container} muxer, which this PyAV build lacks")
    return fmt


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False
    return True


def even_size(width: int, height: int, fmt: Format) -> tuple[int, int]:
    """The picture size a format writes for frames of width x height."""
    return (width + width % 2, height + height % 2) if fmt.even else (width, height)


class Writer(Protocol):
    """What `open_writer` returns."""

    notes: list[str]  # what the writer did that the user should know (sound kept or not, size changed)
    frames: int

    def add(self, frame: np.ndarray) -> None: ...
    def close(self) -> Path: ...
    def abort(self) -> None: ...


def open_writer(path: Path, fmt: Format, width: int, height: int, fps: Fraction, *, crf: int = 16,
                sound: Path | None = None, metadata: dict[str, str] | None = None) -> Writer:  # fmt: skip
    """A streamed writer of uint8 RGB frames (height, width, 3) at `fps` to `path`, with the first audio track of
    `sound` (usually the input video) where the format holds sound."""
    if fmt.container is None:
        return PngFolderWriter(path, width, height)
    return AvWriter(path, fmt, width, height, fps, crf=crf, sound=sound, metadata=metadata)


class AvWriter:
    """A video file written through PyAV, sound interleaved with the picture by time."""

    def __init__(self, path: Path, fmt: Format, width: int, height: int, fps: Fraction, *, crf: int = 16,
                 sound: Path | None = None, metadata: dict[str, str] | None = None):  # fmt: skip
        self.path, self.fmt, self.fps = Path(path), fmt, Fraction(fps)
        self.width, self.height = width, height
        self.frames = 0
        self.notes: list[str] = []
        self._tmp = temporary_path(self.path)
        if fmt.codec == "libsvtav1":
            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration otherwise (errors only)
        self._out = av.open(str(self._tmp), "w", format=fmt.container, options=dict(fmt.container_options))
        self._sound: _Sound | None = None
        try:
            self._out.metadata.update(metadata or {})
            self._stream = self._video_stream(crf)
            if fmt.audio is None:
                self.notes.append(f"{fmt.label} holds no sound")
            elif sound is not None:
                self._sound = _Sound.open(sound, self._out, fmt)
                self.notes.append(self._sound.note if self._sound else "the input has no sound")
        except BaseException:
            self.abort()
            raise

    def _video_stream(self, crf: int) -> av.VideoStream:
        stream = self._out.add_stream(self.fmt.codec, rate=self.fps)
        stream.width, stream.height = even_size(self.width, self.height, self.fmt)
        stream.pix_fmt = self.fmt.pix_fmt
        options = dict(self.fmt.options)
        if self.fmt.crf:
            options["crf"] = str(int(crf))
        stream.options = options
        if self.fmt.codec_tag:
            stream.codec_tag = self.fmt.codec_tag
        if (stream.width, stream.height) != (self.width, self.height):
            self.notes.append(f"{self.fmt.label} needs even sides: {self.width}x{self.height} written as "
                              f"{stream.width}x{stream.height}, the last row/column repeated")  # fmt: skip
        return stream

    def add(self, frame: np.ndarray) -> None:
        _check_frame(frame, self.width, self.height)
        pad_h, pad_w = self._stream.height - self.height, self._stream.width - self.width
        if pad_h or pad_w:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        picture = _pal8_frame(frame) if self.fmt.pix_fmt == "pal8" else av.VideoFrame.from_ndarray(frame, format="rgb24")
        picture.pts = self.frames
        self._out.mux(self._stream.encode(picture))
        self.frames += 1
        if self._sound is not None:  # sound up to the picture's time, so the two stay interleaved
            self._sound.until(float(self.frames / self.fps))

    def close(self) -> Path:
        """Finish the file and put it in place."""
        try:
            self._out.mux(self._stream.encode())
            if self._sound is not None:
                self._sound.until(None)
            self._out.close()
            publish(self._tmp, self.path)
        finally:
            self.abort()  # a no-op for what is published
        return self.path

    def abort(self) -> None:
        """Give up: the partial file is removed, nothing is put in place."""
        if self._sound is not None:
            self._sound.close()
        self._out.close()
        self._tmp.unlink(missing_ok=True)


def _check_frame(frame: np.ndarray, width: int, height: int) -> None:
    if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape {(height, width, 3)}, got {frame.dtype} {frame.shape}")


def _pal8_frame(frame: np.ndarray) -> av.VideoFrame:
    """A GIF frame: the frame's own 256-colour palette (octree, fast and close to median cut) and its indices."""
    quantized = Image.fromarray(frame).quantize(256, method=Image.Quantize.FASTOCTREE)
    colours = np.array(quantized.getpalette()[: 256 * 3], np.uint8).reshape(-1, 3)
    palette = np.zeros((256, 4), np.uint8)  # PyAV takes the palette as rows of A, R, G, B
    palette[:, 0] = 255
    palette[: len(colours), 1:] = colours
    return av.VideoFrame.from_ndarray((np.asarray(quantized), palette), format="pal8")


class _Sound:
    """The first audio track of the input, carried into the output: its packets copied where the container takes
    its codec, else decoded and encoded to the container's codec. `until(t)` writes what plays before t."""

    def __init__(self, source: av.container.InputContainer, stream: av.AudioStream, out: av.container.OutputContainer,
                 fmt: Format):  # fmt: skip
        self._source, self._in, self._out = source, stream, out
        codec = stream.codec_context.name
        self.copy = "*" in fmt.copies or codec in fmt.copies
        if self.copy:
            self._stream = out.add_stream_from_template(stream)
            self.note = f"sound: {codec} copied"
        else:
            assert fmt.audio is not None
            rate = 48000 if fmt.audio == "libopus" else stream.rate  # Opus runs at 48 kHz
            self._stream = out.add_stream(fmt.audio, rate=rate, layout=stream.layout.name)
            self.note = f"sound: {codec} re-encoded to {self._stream.codec_context.name}"
        self._packets = source.demux(stream)
        self._waiting: av.Packet | None = None
        self._finished = False

    @classmethod
    def open(cls, path: Path, out: av.container.OutputContainer, fmt: Format) -> _Sound | None:
        """The sound of `path`, ready to go into `out`; None if it has none."""
        source = av.open(str(path))
        if not source.streams.audio:
            source.close()
            return None
        try:
            return cls(source, source.streams.audio[0], out, fmt)
        except BaseException:
            source.close()
            raise

    def until(self, seconds: float | None) -> None:
        """Write the packets that start before `seconds` (all that are left for None)."""
        while not self._finished:
            packet = self._waiting if self._waiting is not None else next(self._packets, None)
            self._waiting = None
            if packet is None:
                self._finished = True
                if not self.copy:
                    self._out.mux(self._stream.encode(None))  # what the encoder still holds
                return
            if packet.dts is None:  # the demuxer's last, empty packet: it flushes the decoder
                if not self.copy:
                    self._write(packet)
                continue
            start = packet.pts if packet.pts is not None else packet.dts
            if seconds is not None and start * packet.time_base > seconds:
                self._waiting = packet
                return
            self._write(packet)

    def _write(self, packet: av.Packet) -> None:
        if self.copy:
            packet.stream = self._stream
            self._out.mux(packet)
            return
        for frame in packet.decode():
            self._out.mux(self._stream.encode(frame))

    def close(self) -> None:
        self._source.close()


class PngFolderWriter:
    """Numbered PNG frames (`000000.png`, ...) in a folder, built under a temporary name and renamed into place."""

    def __init__(self, path: Path, width: int, height: int):
        self.path, self.width, self.height = Path(path), width, height
        self.frames = 0
        self.notes = ["PNG frames hold no sound"]
        self._tmp = temporary_path(self.path)
        self._tmp.mkdir()

    def add(self, frame: np.ndarray) -> None:
        _check_frame(frame, self.width, self.height)
        # compress_level 1: several times faster than the default, the frames stay lossless
        Image.fromarray(frame).save(self._tmp / f"{self.frames:06d}.png", compress_level=1)
        self.frames += 1

    def close(self) -> Path:
        """Put the folder in place; an existing folder of that name is replaced (moved aside first, then removed)."""
        old = None
        try:
            if self.path.is_dir():
                old = temporary_path(self.path)
                os.replace(self.path, old)
            os.chmod(self._tmp, 0o755)
            os.replace(self._tmp, self.path)
        except BaseException:
            if old is not None and not self.path.exists():
                os.replace(old, self.path)
            self.abort()
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


__all__ = ["FORMATS", "Format", "Writer", "even_size", "open_writer", "output_format"]
