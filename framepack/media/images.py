"""Images as users give them: any file, PIL image or array read as upright RGB, fitted to FramePack's buckets."""

from __future__ import annotations

import io
import math
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps

try:  # HEIC/HEIF, what phones save photos as: PIL (and so the page's uploads) opens them once this is registered
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # an install made before it was a requirement: load_image says what to do for such a file
    pillow_heif = None

HEIF_SUFFIXES = (".heic", ".heif", ".hif")

# FramePack's 640 buckets as (height, width); every side is a multiple of 16 and the areas are close to 640².
BUCKETS_640: tuple[tuple[int, int], ...] = (
    (416, 960), (448, 864), (480, 832), (512, 768), (544, 704), (576, 672), (608, 640),
    (640, 608), (672, 576), (704, 544), (768, 512), (832, 480), (864, 448), (960, 416),
)  # fmt: skip


def buckets(resolution: int = 640) -> list[tuple[int, int]]:
    """The aspect buckets for a target resolution: FramePack's 640 set, scaled to `resolution`² area."""
    if resolution == 640:
        return list(BUCKETS_640)
    scale = resolution / 640
    return [(max(16, round(h * scale / 16) * 16), max(16, round(w * scale / 16) * 16)) for h, w in BUCKETS_640]


SMALLEST_RESOLUTION = 128


def resolution_for(height: int, width: int, resolution: int) -> int:
    """The bucket resolution for a picture of this size: `resolution`, or its own for a smaller one. An input video
    is never scaled up past its own size (a 160x120 clip extended at 640 is slower and no sharper)."""
    own = max(SMALLEST_RESOLUTION, math.isqrt(height * width) // 16 * 16)
    return min(resolution, own)


def nearest_bucket(height: int, width: int, resolution: int = 640) -> tuple[int, int]:
    """The bucket (height, width) whose aspect is nearest the image's; on a tie the later bucket wins, as in FramePack."""
    best, best_metric = None, float("inf")
    for bucket_h, bucket_w in buckets(resolution):
        metric = abs(height * bucket_w - width * bucket_h)
        if metric <= best_metric:
            best, best_metric = (bucket_h, bucket_w), metric
    return best


# A resize that would make more than this many times the pixels it keeps scales only the part kept.
MAX_CROPPED_AWAY = 4


def resize_and_center_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Cover (width, height) with a Lanczos resize, then crop the centre. An image of that size is kept as is."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    pil = Image.fromarray(image)
    scale = max(width / pil.width, height / pil.height)
    resized_w, resized_h = round(pil.width * scale), round(pil.height * scale)
    box = ((resized_w - width) / 2, (resized_h - height) / 2, (resized_w + width) / 2, (resized_h + height) / 2)
    if resized_w * resized_h > MAX_CROPPED_AWAY * width * height:
        # A strip far from the video's shape (1 px wide, 4000 tall) would be scaled whole to gigabytes first: scale
        # just the middle that is kept, straight to the video's size. Ordinary images keep FramePack's exact way.
        source = tuple(edge / scale for edge in box)
        return np.array(pil.resize((width, height), Image.LANCZOS, box=source))
    pil = pil.resize((resized_w, resized_h), Image.LANCZOS)
    return np.array(pil.crop(box))


def crop_note(name: str, shape: tuple[int, ...], width: int, height: int) -> str | None:
    """A line for an image whose shape is so far from the video's that cropping it keeps less than half of it."""
    h, w = shape[:2]
    if min(w * height, h * width) >= 0.5 * max(w * height, h * width):
        return None
    scale = max(width / w, height / h)
    used = f"{max(1, round(width / scale))}x{max(1, round(height / scale))}"
    return f"{name} is {w}x{h}, far from the {width}x{height} video's shape: only its middle {used} is used"


class ImageError(ValueError):
    """The input image cannot be used; the message says why in one line."""


# The most pixels an image file is decoded at (64 MP: 192 MB as RGB; Pillow's own limit, if lower, counts too). A
# JPEG over it is decoded reduced by its DCT scaling (1/2 to 1/8, cheaper than a full decode); any other is refused
# from its header, before a pixel is decoded. The video is at most a few megapixels: nothing is lost.
IMAGE_PIXEL_BUDGET = 64_000_000


def pixel_budget() -> int:
    return min(IMAGE_PIXEL_BUDGET, Image.MAX_IMAGE_PIXELS or IMAGE_PIXEL_BUDGET)


def open_header(path: str | Path) -> Image.Image:
    """The image file opened (its header read, no pixel decoded), whatever its size: Pillow's own open refuses one
    past twice its pixel limit as a "decompression bomb" before we can decode it reduced."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError:
        if not isinstance(path, (str, Path)):  # a stream: refused as Pillow refuses it
            raise
    Image.init()
    with open(path, "rb") as probe:
        prefix = probe.read(16)
    for format_id in Image.ID:  # as Image.open tries its plugins, without the size check
        factory, accept = Image.OPEN[format_id]
        if accept is None or accept(prefix):
            handle = open(path, "rb")  # noqa: SIM115 (the image keeps it until it is loaded)
            try:
                return factory(handle, str(path))
            except (SyntaxError, IndexError, TypeError, struct.error):
                handle.close()
    raise OSError("cannot identify image file")


def within_budget(pil: Image.Image, name: str, notes: list[str] | None) -> Image.Image:
    """The opened image ready to decode in at most pixel_budget() pixels: a bigger JPEG reduced by its DCT scaling
    (said in `notes`), any other bigger one refused (ImageError), neither decoded yet."""
    budget, (width, height) = pixel_budget(), pil.size
    if width * height <= budget:
        return pil
    if pil.format == "JPEG":
        factor = 2 ** math.ceil(math.log2(math.sqrt(width * height / budget)))  # draft scales by 1/2, 1/4 or 1/8
        if factor <= 8:
            pil.draft(pil.mode, (math.ceil(width / factor), math.ceil(height / factor)))
            if notes is not None:
                notes.append(f"{name} is {width}x{height} ({width * height / 1e6:.0f} MP): it is read reduced to {pil.width}x{pil.height}")
            return pil
    pil.close()
    raise ImageError(f"{name} is {width}x{height} ({width * height / 1e6:.0f} MP), more than the {budget / 1e6:g} MP "
                     "this app decodes; save it smaller first")  # fmt: skip


def load_image(source: str | Path | Image.Image | np.ndarray, notes: list[str] | None = None) -> np.ndarray:
    """Any image a user may give (path, PIL image or array) as RGB uint8 HxWx3.

    Photos (HEIC/HEIF too) are turned upright by their EXIF orientation and converted to sRGB by their ICC
    profile, transparency (alpha or a transparent colour) is composited on white, animated images give their first
    frame and 16-bit or palette images are converted. A file past the pixel budget is read reduced or refused (`within_budget`); what was done
    is said in `notes`.
    """
    if isinstance(source, np.ndarray):
        array = source
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ImageError(f"expected an HxWx3 or HxWx4 image array, got shape {array.shape}")
        if array.dtype != np.uint8:
            raise ImageError(f"expected a uint8 image array, got {array.dtype}")
        pil = Image.fromarray(array)
    elif isinstance(source, Image.Image):
        pil = source
    else:
        if isinstance(source, (str, Path)) and Path(source).is_file() and Path(source).stat().st_size == 0:
            raise ImageError(f"{Path(source).name} is empty")  # PIL would say it cannot identify it
        try:
            pil = within_budget(open_header(source), Path(str(source)).name, notes)
            pil.load()
        except FileNotFoundError:
            raise ImageError(f"image file not found: {Path(str(source)).name}") from None
        except ImageError:  # past the pixel budget: its own line
            raise
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{Path(str(source)).name} has too many pixels to read safely ({exc})") from None
        except (OSError, SyntaxError, ValueError) as exc:
            if pillow_heif is None and Path(str(source)).suffix.lower() in HEIF_SUFFIXES:
                name = Path(str(source)).name
                raise ImageError(f"{name} is a HEIC/HEIF photo: reading it needs pillow-heif (pip install -r requirements.txt)") from None
            # The library's message may name the full path; the file's name is enough.
            reason = str(exc).replace(str(source), Path(str(source)).name)
            raise ImageError(f"cannot read {Path(str(source)).name} as an image ({reason})") from None
    pil = to_srgb(ImageOps.exif_transpose(pil))
    if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale 0..65535 to 0..255 rather than clipping.
        pil = Image.fromarray(np.clip(np.asarray(pil, dtype=np.float64) / 257, 0, 255).round().astype(np.uint8))
    # Alpha, or one colour (a GIF's or PNG's palette index, a grey level, an RGB value) that stands for see-through.
    if pil.mode in ("RGBA", "LA", "PA") or "transparency" in pil.info:
        rgba = pil.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        pil = Image.alpha_composite(white, rgba)
    return np.array(pil.convert("RGB"))


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def to_srgb(pil: Image.Image) -> Image.Image:
    """An image with an embedded ICC profile (Adobe RGB, Display P3, a printer's CMYK...) in sRGB, its colours as a
    colour-managed viewer shows them, alpha kept; untagged and sRGB images as they are. A profile that is damaged or
    does not fit the image's mode is ignored, as browsers ignore it."""
    icc = pil.info.get("icc_profile")
    if not icc:
        return pil
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if ImageCms.getProfileDescription(profile).strip().lower().startswith("srgb"):
            return pil  # most cameras' and phones' profile: converting it would only round
        if pil.mode == "P":
            pil = pil.convert("RGBA" if "transparency" in pil.info else "RGB")
        alpha = pil.getchannel("A") if pil.mode in ("RGBA", "LA") else None
        colour = pil.convert(pil.mode[:-1]) if alpha is not None else pil
        if colour.mode not in ("RGB", "L", "CMYK"):
            return pil
        # The profile's own rendering intent, as viewers use it (matrix profiles: colorimetric whichever is named).
        intent = ImageCms.getDefaultIntent(profile)
        converted = ImageCms.profileToProfile(colour, profile, SRGB, renderingIntent=intent, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return pil
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def target_size(image: np.ndarray, resolution: int, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """(height, width) of the video: the explicit size if given, else the nearest bucket for `resolution`."""
    if height is not None and width is not None:
        return height, width
    return nearest_bucket(image.shape[0], image.shape[1], resolution)

