"""The first run in a real browser: the app starts with an empty hub cache and a stand-in for the hub on 127.0.0.1
(see hub_standin), the first job shows the download's progress on the page, the connection drops part way through
a file, the download goes on from there (a Range request), and the job ends with its video."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import TINY_MODELS, AppServer, free_port
from huggingface_hub import constants
from hub_standin import hub_standin
from pages import ARTIFACTS, BROWSER_TESTS, VIDEO_PLAYING, start_job

pytestmark = BROWSER_TESTS
VAE = "vae/diffusion_pytorch_model.safetensors"
# The page's progress bar while the models download: its caption, and how far its fill reaches.
DOWNLOAD_SHOWN = """(file) => {
    const text = document.querySelector('#fp-progress .fp-progress-text');
    const fill = document.querySelector('#fp-progress .fp-progress-fill');
    return text !== null && fill !== null && text.innerText.includes(file) && [text.innerText, fill.style.width];
}"""


@contextmanager
def app_with_an_empty_cache(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppServer]:
    """The original-variant app on the hub cache `folder/hf_download`, empty: its first job downloads the models."""
    from framepack.app import start as ui
    from framepack.memory.planning import check_before_loading
    from framepack.settings import Settings

    # The memory plan of the models that will arrive (the published 13B ones' would stop the app on this machine).
    monkeypatch.setattr(ui, "worker_plans", lambda args, variant: [check_before_loading(Settings(variant=variant), models_dir=TINY_MODELS)])
    port = free_port()
    argv = ["--hf-cache", str(folder / "hf_download"), "--outputs", str(folder / "outputs"), "--port", str(port)]
    app = ui.create_app("original", ui.parse_args(argv, "original"))
    app.launch(prevent_thread_lock=True, quiet=True)
    try:
        yield AppServer(f"http://127.0.0.1:{port}", folder / "outputs")
    finally:
        app.close()


def test_the_first_job_shows_the_download_on_the_page_and_goes_on_after_a_dropped_connection(browser, tmp_path,
                                                                                            monkeypatch):  # fmt: skip
    from playwright.sync_api import expect

    from framepack.models import ModelSource
    from framepack.models.download import missing_parts
    from framepack.queue import runners

    with hub_standin(TINY_MODELS) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16384)  # so the half before the drop reaches the disk
        monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 120)  # the held file waits for the page, not 10 s
        monkeypatch.setattr(runners, "PROGRESS_INTERVAL", 0)  # every chunk's progress reaches the page
        # The VAE's first GET sends half, waits until the page has shown it, then the connection drops.
        hub.hold_once.add(VAE)
        hub.drop_once.add(VAE)
        with app_with_an_empty_cache(tmp_path, monkeypatch) as app:
            try:
                page = start_job(browser, app.url, seconds=1.2)  # one section: 37 frames
                caption, width = page.wait_for_function(DOWNLOAD_SHOWN, arg=VAE, timeout=120_000).json_value()
                assert hub.held.wait(timeout=120)  # the VAE is half fetched (and stays so until released)
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "browser_download.png"), full_page=True)
            finally:  # whatever happened, the held GET ends (dropping the connection) and the job goes on
                hub.release.set()

            said = re.fullmatch(r"Downloading models: ([\d.]+) of ([\d.]+) MB \(file (\d+) of 22: (\S+)\)", caption)
            assert said is not None, caption
            total = sum(f.stat().st_size for repo in ("hunyuanvideo-community/HunyuanVideo", "lllyasviel/flux_redux_bfl",
                                                      "lllyasviel/FramePackI2V_HY") for f in (TINY_MODELS / repo).rglob("*") if f.is_file())  # fmt: skip
            assert float(said[2]) == round(total / 1e6, 1) and said[4] == VAE
            assert 0 < float(said[1]) < float(said[2])
            assert 0 < float(width.removesuffix("%")) < 100
            assert abs(float(width.removesuffix("%")) / 100 - float(said[1]) / float(said[2])) < 0.05

            page.wait_for_function(VIDEO_PLAYING, timeout=180_000)
            expect(page.locator("#fp-message")).to_contain_text("Finished", timeout=60_000)
            assert "Frames so far: 37" in page.locator("#fp-info").inner_text()
            page.close()
        gets = hub.file_gets(VAE)

    # The dropped GET was followed by one for the rest only, and the cache now holds every model, whole.
    assert len(gets) == 2 and gets[0] == "" and re.fullmatch(r"bytes=[1-9]\d*-", gets[1]), gets
    cache = ModelSource(cache_dir=tmp_path / "hf_download")
    assert missing_parts(cache, "original") == []
    (vae,) = cache.hub_dir.glob(f"models--hunyuanvideo-community--HunyuanVideo/snapshots/*/{VAE}")
    assert vae.read_bytes() == (TINY_MODELS / "hunyuanvideo-community/HunyuanVideo" / VAE).read_bytes()
    assert len(list(app.outputs.glob("*.mp4"))) == 1
