"""Fixtures: the tiny model sets loaded once per run, and the app serving this machine on a free port. Helpers that
are not fixtures are in helpers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

# Tests compare runs made in different processes bit for bit. MKL may choose its thread count (and, on Intel CPUs,
# its code path) per call, which changes the last bits; fix both before torch loads it here or in a child process.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import pytest  # noqa: E402
from helpers import TINY, TINY_MODELS, AppServer, running_app
from pages import CHROMIUM, CHROMIUM_ARGS


def pytest_configure(config: pytest.Config) -> None:
    # Without the fixtures the golden and model tests skip; in CI that would pass a run that tested little.
    if os.environ.get("CI", "").lower() in ("true", "1") and not TINY_MODELS.is_dir():
        raise pytest.UsageError(f"CI is set but the shared fixtures are missing: {TINY} (they must sit beside the checkout)")


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


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """The original-variant app on the tiny models, serving this machine only."""
    with running_app(tmp_path_factory.mktemp("outputs")) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)  # a busy machine answers slowly; a wait that fails still fails, later
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
