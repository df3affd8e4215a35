"""Post-processing model files (Real-ESRGAN upscalers, RIFE interpolators): reading them whatever their container,
telling their kinds apart by their keys, and fetching the known ones by name from where their authors publish them.
"""

from __future__ import annotations

import hashlib
import http.client
import pickle
import re
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..files import FileLock, atomic_path, publish
from . import PostprocessError

# Containers the training code of these models wrapped their weights in, in the order they are preferred: the
# exponential moving average of Real-ESRGAN's training, its plain weights, a Lightning-style state dict.
_WRAPPERS = ("params_ema", "params", "state_dict", "model")

ModelKind = Literal["upscaler", "interpolator"]
Progress = Callable[[int, int], None]  # (bytes done, bytes in all; 0 while the server has not said)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A model file's tensors: `.safetensors`, or a PyTorch pickle (`.pth`, `.pkl`, `.pt`, `.ckpt`) read with
    `weights_only` (no code in it runs). Wrappers (`params_ema`, `params`, ...) and DataParallel's `module.`
    prefix are removed. Raises PostprocessError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PostprocessError(f"model file not found: {path.name}")
    try:
        if path.suffix.lower() == ".safetensors":
            data: object = load_file(str(path))
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, SafetensorError, EOFError, pickle.UnpicklingError) as exc:
        raise PostprocessError(f"{path.name} is not a model file this app can read ({type(exc).__name__})") from None
    while isinstance(data, dict) and (wrapper := next((key for key in _WRAPPERS if isinstance(data.get(key), dict)), None)):
        data = data[wrapper]
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise PostprocessError(f"{path.name} holds no model weights")
    return {key.removeprefix("module."): value for key, value in data.items()}


# ----------------------------------------------------------------------------------------------- kinds

# RIFE's flow networks name their stages `block0`, `block1`, ... (`block_tea` is the training-time teacher that
# some releases keep); Practical-RIFE 4.x adds an `encode` feature head. No upscaler uses these names.
_INTERPOLATOR_KEY = re.compile(r"(block\d+|block_tea|encode)\.")
_ESRGAN_KEY = re.compile(r"model\.1\.sub\.\d+\.RDB\d\.conv\d\.0\.weight")


def model_kind(state_dict: dict[str, torch.Tensor]) -> ModelKind | None:
    """What a state dict (as `read_state_dict` returns it) is, by its keys: a Real-ESRGAN/ESRGAN upscaler
    (RRDBNet in either key layout, or SRVGGNetCompact), a RIFE frame interpolator, or neither (None)."""
    keys = state_dict.keys()
    if "conv_first.weight" in keys and "conv_last.weight" in keys:
        return "upscaler"  # RRDBNet, Real-ESRGAN's (BasicSR's) key names
    if "model.0.weight" in keys and any(_ESRGAN_KEY.fullmatch(key) for key in keys):
        return "upscaler"  # RRDBNet, the original ESRGAN code's `model.N` names
    first, slopes = state_dict.get("body.0.weight"), state_dict.get("body.1.weight")
    if first is not None and first.ndim == 4 and slopes is not None and slopes.ndim == 1:
        return "upscaler"  # SRVGGNetCompact: convolutions with PReLU slopes between them
    if any(_INTERPOLATOR_KEY.match(key) for key in keys):
        return "interpolator"
    return None


# ----------------------------------------------------------------------------------------------- known models

_REAL_ESRGAN = "https://github.com/xinntao/Real-ESRGAN/releases/download"


@dataclass(frozen=True)
class KnownModel:
    """A model the app can fetch by name: where its publisher serves it and what the file must be."""

    kind: ModelKind
    url: str
    file: str  # its name in the cache folder
    size: int | None = None  # bytes, where the published file's size is known
    sha256: str | None = None
    member: str | None = None  # where the URL serves a zip archive: the weights' file name inside it


# The Real-ESRGAN files are the assets of the project's GitHub releases (the URLs its inference script and model
# zoo name); sizes and digests are those of the published files. The RIFE files have no release asset: HDv3's
# `flownet.pkl` is the copy FramePack-Studio fetches from the Hugging Face repository AlexWortega/RIFE, and
# Practical-RIFE 4.26 is the archive its author put on Hugging Face (hzwer/RIFE) beside the Google Drive link.
KNOWN_MODELS: dict[str, KnownModel] = {
    "RealESRGAN_x4plus": KnownModel(
        "upscaler", f"{_REAL_ESRGAN}/v0.1.0/RealESRGAN_x4plus.pth", "RealESRGAN_x4plus.pth",
        67040989, "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
    ),
    "RealESRGAN_x2plus": KnownModel(
        "upscaler", f"{_REAL_ESRGAN}/v0.2.1/RealESRGAN_x2plus.pth", "RealESRGAN_x2plus.pth",
        67061725, "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
    ),
    "RealESRGAN_x4plus_anime_6B": KnownModel(
        "upscaler", f"{_REAL_ESRGAN}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth", "RealESRGAN_x4plus_anime_6B.pth",
        17938799, "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da",
    ),
    "realesr-general-x4v3": KnownModel(
        "upscaler", f"{_REAL_ESRGAN}/v0.2.5.0/realesr-general-x4v3.pth", "realesr-general-x4v3.pth",
        4885111, "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292",
    ),
    "realesr-animevideov3": KnownModel(
        "upscaler", f"{_REAL_ESRGAN}/v0.2.5.0/realesr-animevideov3.pth", "realesr-animevideov3.pth",
        2504012, "b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d",
    ),
    "RIFE-HDv3": KnownModel(
        "interpolator", "https://huggingface.co/AlexWortega/RIFE/resolve/main/flownet.pkl", "RIFE-HDv3-flownet.pkl",
    ),
    "RIFE-v4.26": KnownModel(
        "interpolator", "https://huggingface.co/hzwer/RIFE/resolve/main/RIFEv4.26_0921.zip",
        "RIFE-v4.26-flownet.pkl", member="flownet.pkl",
    ),
}  # fmt: skip

_KINDS = {"upscaler": "an upscaler", "interpolator": "a frame-interpolation model"}


def known_model(name: str) -> tuple[str, KnownModel] | None:
    """The known model a name stands for (any case, with or without its file's extension), or None."""
    wanted = name.strip().lower()
    for known, model in KNOWN_MODELS.items():
        if wanted in (known.lower(), model.file.lower(), Path(model.file).stem.lower()):
            return known, model
    return None


def resolve_model(name_or_path: str | Path, kind: ModelKind, cache_dir: str | Path = "hf_download",
                  progress: Progress | None = None) -> Path:  # fmt: skip
    """The file to load for a model: an existing path as it is; a known name (KNOWN_MODELS) from
    `<cache_dir>/postprocess/`, downloaded there first if missing. Raises PostprocessError saying what to download
    from where when it cannot be fetched, and when the name is neither a file nor a known model."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    found = known_model(str(name_or_path))
    if found is None:
        names = ", ".join(name for name, model in KNOWN_MODELS.items() if model.kind == kind)
        raise PostprocessError(f"{path.name} is neither a model file nor a known model (known: {names})")
    name, model = found
    if model.kind != kind:
        raise PostprocessError(f"{name} is {_KINDS[model.kind]}, not {_KINDS[kind]}")
    target = Path(cache_dir) / "postprocess" / model.file
    if target.is_file():
        return target
    if model.member is None:
        return download(model.url, target, size=model.size, sha256=model.sha256, progress=progress)
    archive = target.with_name(model.url.rsplit("/", 1)[-1])
    download(model.url, archive, size=model.size, sha256=model.sha256, progress=progress,
             instead=f"download {model.url}, take {model.member} out of it and put it at {target}")  # fmt: skip
    _extract(archive, model.member, target)
    archive.unlink()
    return target


def _extract(archive: Path, member: str, target: Path) -> None:
    """Copy the file named `member` (in whichever folder of the archive) to `target`, atomically."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            names = sorted((n for n in zipped.namelist() if Path(n).name == member and "__MACOSX" not in n), key=len)
            if not names:
                raise PostprocessError(f"{archive.name} holds no {member}")
            with zipped.open(names[0]) as source, atomic_path(target) as tmp, open(tmp, "wb") as out:
                while block := source.read(1 << 20):
                    out.write(block)
    except zipfile.BadZipFile:
        archive.unlink()
        raise PostprocessError(f"{archive.name} is not a zip archive; it was removed so the next try fetches it again") from None


# ----------------------------------------------------------------------------------------------- download


class _Incomplete(ConnectionError):
    """The server ended a transfer before the bytes it announced."""


def download(url: str, target: str | Path, *, size: int | None = None, sha256: str | None = None,
             progress: Progress | None = None, attempts: int = 4, retry_delay: float = 1.0, timeout: float = 30.0,
             instead: str | None = None) -> Path:  # fmt: skip
    """Fetch `url` into `target`. The bytes go to `.<name>.partial` beside it; a transfer that breaks resumes from
    what is there with an HTTP Range request, in this call (up to `attempts` tries) or a later one. The finished
    file replaces `target` in one rename once its size and SHA-256 (where given) are right. Raises
    PostprocessError saying where to get the file by hand (`instead`, if given, is that sentence)."""
    target = Path(target)
    partial = target.with_name(f".{target.name}.partial")
    lock = FileLock(target.with_name(f".{target.name}.lock"))
    instead = instead or f"download {url} and put it at {target}"
    if not lock.acquire():
        raise PostprocessError(f"{target.name} is being downloaded by another process; try again when it is done")
    reason = "no attempt made"
    try:
        for attempt in range(attempts):
            try:
                _fetch(url, partial, size, progress, timeout)
                break
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code not in (408, 416, 429):  # the server would answer the same again
                    raise PostprocessError(f"cannot download {target.name} (HTTP {exc.code}): {instead}") from None
                reason = f"HTTP {exc.code}"
            except (OSError, http.client.HTTPException) as exc:  # offline, refused, reset, timed out, cut short
                reason = str(getattr(exc, "reason", "") or exc) or type(exc).__name__
            if attempt + 1 < attempts:
                time.sleep(retry_delay * 2**attempt)
        else:
            raise PostprocessError(f"cannot download {target.name} ({reason}): {instead}")
        _check(partial, size, sha256, target.name, instead)
        publish(partial, target)
    finally:
        lock.release()
    return target


def _fetch(url: str, partial: Path, size: int | None, progress: Progress | None, timeout: float) -> None:
    """One request: the rest of the file after what `partial` holds, appended to it."""
    have = partial.stat().st_size if partial.is_file() else 0
    if size is not None and have >= size:
        if have == size:
            return
        partial.unlink()  # longer than the published file: not a prefix of it
        have = 0
    headers = {"User-Agent": "FramePack"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after what we have: complete if the server's total agrees
            if _content_range_total(exc.headers.get("Content-Range")) == have:
                return
            partial.unlink()
        raise
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the range and sends the whole file: start over
        length = response.headers.get("Content-Length")
        total = _content_range_total(response.headers.get("Content-Range"))
        if total is None:
            total = have + int(length) if length is not None else size
        with open(partial, "ab" if have else "wb") as file:
            while block := response.read(1 << 20):
                file.write(block)
                have += len(block)
                if progress is not None:
                    progress(have, total or 0)
    if total is not None and have < total:
        raise _Incomplete(f"the connection closed after {have} of {total} bytes")


def _content_range_total(value: str | None) -> int | None:
    """The full size in a `Content-Range: bytes a-b/total` (or `bytes */total`) header."""
    match = re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+)", (value or "").strip())
    return int(match.group(1)) if match else None


def _check(partial: Path, size: int | None, sha256: str | None, name: str, instead: str) -> None:
    """Refuse a finished download that is not the published file (removed, so the next try starts afresh)."""
    problem = None
    if size is not None and partial.stat().st_size != size:
        problem = f"{partial.stat().st_size} bytes, not {size}"
    elif sha256 is not None:
        digest = hashlib.sha256()
        with open(partial, "rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
        if digest.hexdigest() != sha256.lower():
            problem = "its SHA-256 is not the published file's"
    if problem:
        partial.unlink()
        raise PostprocessError(f"the download of {name} is damaged ({problem}): {instead}")
