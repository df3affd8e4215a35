"""Helpers for the app tests: the tiny models beside the checkout and the app running on a free port.

Import `app_server` into a test module to use it as a fixture.
"""

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tiny-framepack"
MODELS = TINY / "models"
IMAGE = TINY / "cases" / "v1_original" / "input.png"

requires_tiny_models = pytest.mark.skipif(
    not (MODELS / "lllyasviel" / "FramePackI2V_HY" / "config.json").is_file(),
    reason=f"the tiny FramePack models are not beside the checkout ({MODELS} is missing)",
)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class AppServer:
    url: str
    outputs: Path


@contextlib.contextmanager
def running_app(outputs: Path, *args: str, variant: str = "original") -> Iterator[AppServer]:
    """The app on the tiny models, built from its command line (plus `args`) as `main` builds it."""
    if not MODELS.is_dir():
        pytest.skip(f"the tiny FramePack models are not beside the checkout ({MODELS} is missing)")
    from framepack.app import start as ui

    port = free_port()
    argv = ["--models", str(MODELS), "--outputs", str(outputs), "--port", str(port), *args]
    app = ui.create_app(variant, ui.parse_args(argv, variant))
    app.launch(prevent_thread_lock=True, quiet=True)
    try:
        yield AppServer(f"http://127.0.0.1:{port}", outputs)
    finally:
        app.close()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """The original-variant app on the tiny models, serving this machine only."""
    with running_app(tmp_path_factory.mktemp("outputs")) as server:
        yield server
