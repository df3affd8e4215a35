"""Shared test fixtures: the tiny model set and golden cases beside the checkout, and loaded models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
TINY = SHARED / "fixtures" / "tiny-framepack"
TINY_MODELS = TINY / "models"
CASES = TINY / "cases"
MODEL_CONFIGS = SHARED / "model-configs"
CONTROL_CASES = TINY / "cases-controls"  # section controls: timed prompts, end frames, keyframes
CASE_DIRS = {p.name: p for folder in (CASES, CONTROL_CASES) if folder.is_dir() for p in sorted(folder.iterdir())}
CASE_NAMES = list(CASE_DIRS)

needs_shared = pytest.mark.skipif(
    not TINY_MODELS.is_dir(), reason=f"the shared fixtures are not beside the checkout ({TINY} is missing)"
)


def pytest_configure(config: pytest.Config) -> None:
    # Without the fixtures the golden and model tests skip; in CI that would pass a run that tested little.
    if os.environ.get("CI", "").lower() in ("true", "1") and not TINY_MODELS.is_dir():
        raise pytest.UsageError(f"CI is set but the shared fixtures are missing: {TINY} (they must sit beside the checkout)")


def load_case(name: str) -> tuple[dict, Path]:
    case_dir = CASE_DIRS[name]
    return json.loads((case_dir / "settings.json").read_text()), case_dir


def case_inputs(raw: dict, case_dir: Path):
    """A case's images as the engine takes them: start image, end image and keyframes (files in the case)."""
    from framepack.controls import JobInputs, Keyframe

    end = case_dir / raw["end_image"] if raw.get("end_image") else None
    keyframes = [Keyframe(seconds, case_dir / name) for seconds, name in raw.get("keyframes", [])]
    return JobInputs(case_dir / raw["image"], end, keyframes)


@pytest.fixture(scope="session")
def tiny_models():
    """Loaded tiny model sets by variant, shared by every test (loading is the same code users run)."""
    if not TINY_MODELS.is_dir():
        pytest.skip(f"the shared fixtures are not beside the checkout ({TINY} is missing)")
    from framepack.loading import load_models
    from framepack.models import ModelSource

    cache: dict = {}

    def get(variant: str):
        if variant not in cache:
            cache[variant] = load_models(variant, ModelSource(models_dir=TINY_MODELS), device="cpu", dtype="float32")
        return cache[variant]

    return get
