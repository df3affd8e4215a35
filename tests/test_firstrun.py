"""The first run: the weights download from a stand-in hub on 127.0.0.1 (see hub_standin) into an empty cache, with
the size said first, a disk check, progress on the command line and on the page, going on from an interrupted
download, and a message naming what to fetch where when offline."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import constants

from framepack.events import Download, Error, Status
from framepack.models import ModelsMissingError, ModelSource
from framepack.models import download as dl
from framepack.models.sources import HUNYUAN_REPO, fetch_commands
from helpers import IMAGE, REPO, TINY_MODELS, needs_shared
from hub_standin import COMMIT, hub_standin

pytestmark = needs_shared
VAE = "vae/diffusion_pytorch_model.safetensors"


@pytest.fixture
def hub(monkeypatch):
    """The stand-in hub serving the tiny models, with huggingface_hub in this process pointed at it."""
    with hub_standin(TINY_MODELS) as standin:
        monkeypatch.setattr(constants, "ENDPOINT", standin.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield standin


def blob_of(cache: Path, repo: str, path: str) -> Path:
    return (dl.storage(cache, repo) / "snapshots" / COMMIT / path).resolve()


def test_a_download_into_an_empty_cache_gets_every_file_with_progress(hub, tmp_path):
    source = ModelSource(cache_dir=tmp_path / "cache")
    said, seen = [], []
    # The free space is given: the disk's own changes as other tests write beside this one.
    plan = dl.ensure_models(source, "original", seen.append, said.append, disk_free=lambda path: 78_400_000_000)
    wanted = sum(f.stat().st_size for repo in ("hunyuanvideo-community/HunyuanVideo", "lllyasviel/flux_redux_bfl",
                                               "lllyasviel/FramePackI2V_HY") for f in (TINY_MODELS / repo).rglob("*") if f.is_file())  # fmt: skip
    assert plan is not None and plan.total == wanted and len(plan.files) == 22
    assert said == [f"Downloading 22 files, 2.7 MB (78.4 GB free at {tmp_path / 'cache'}) ..."]
    assert seen[-1] == Download(wanted, wanted, "", 22, 22)
    assert [e.done for e in seen] == sorted(e.done for e in seen)  # it only goes forwards
    for repo, path in ((HUNYUAN_REPO, VAE), ("lllyasviel/FramePackI2V_HY", "config.json")):
        assert blob_of(tmp_path / "cache", repo, path).read_bytes() == (TINY_MODELS / repo / path).read_bytes()
    assert (dl.storage(tmp_path / "cache", HUNYUAN_REPO) / "refs" / "main").read_text() == COMMIT
    # Complete now: nothing is asked of the hub again, and loading finds the folders offline.
    asked = len(hub.requests)
    assert dl.ensure_models(source, "original") is None and len(hub.requests) == asked
    assert dl.missing_parts(source, "f1") == [("lllyasviel/FramePack_F1_I2V_HY_20250503", ())]


def test_a_connection_dropped_part_way_goes_on_with_a_range_request(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16384)  # so the half before the drop reaches the disk
    hub.drop_once.add(VAE)
    source = ModelSource(cache_dir=tmp_path)
    dl.ensure_models(source, "original")
    gets = hub.file_gets(VAE)
    assert gets[0] == "" and len(gets) == 2 and gets[1].startswith("bytes=") and gets[1] != "bytes=0-"
    assert blob_of(tmp_path, HUNYUAN_REPO, VAE).read_bytes() == (TINY_MODELS / HUNYUAN_REPO / VAE).read_bytes()


def test_a_download_stopped_in_an_earlier_run_goes_on_where_it_stopped(hub, tmp_path):
    data = (TINY_MODELS / HUNYUAN_REPO / VAE).read_bytes()
    etag = hashlib.sha256(data).hexdigest()
    blobs = dl.storage(tmp_path, HUNYUAN_REPO) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{etag}.incomplete").write_bytes(data[:100_000])  # what a killed run left
    source = ModelSource(cache_dir=tmp_path)
    said, seen = [], []
    plan = dl.ensure_models(source, "original", seen.append, said.append)
    assert plan.partial == 100_000 and "0.1 MB of it fetched before" in said[0]
    assert seen[0].done == 100_000
    assert hub.file_gets(VAE) == ["bytes=100000-"]
    assert blob_of(tmp_path, HUNYUAN_REPO, VAE).read_bytes() == data
    assert not (blobs / f"{etag}.incomplete").exists()


def test_a_download_the_disk_cannot_hold_is_refused_in_one_line_before_anything_is_fetched(hub, tmp_path):
    source = ModelSource(cache_dir=tmp_path)
    with pytest.raises(dl.NotEnoughDiskError) as caught:
        dl.ensure_models(source, "original", disk_free=lambda path: dl.GB)
    message = str(caught.value)
    assert "\n" not in message and "needs 2.7 MB" in message and f"1.0 GB free at {tmp_path}" in message
    assert not any("/resolve/" in path for _, path, _ in hub.requests)
    assert not any(tmp_path.rglob("*.safetensors*"))


def test_the_plan_counts_only_what_is_missing_with_fakes(tmp_path):
    files = [dl.RemoteFile("o/r", "a/w.safetensors", 300, "e1"), dl.RemoteFile("o/r", "a/config.json", 10, "e2"),
             dl.RemoteFile("o/r", "b/other.bin", 999, "e3")]  # fmt: skip
    done = dl.storage(tmp_path, "o/r") / "snapshots" / "c1" / "a" / "config.json"
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    (dl.storage(tmp_path, "o/r") / "blobs").mkdir()
    (dl.storage(tmp_path, "o/r") / "blobs" / "e1.incomplete").write_bytes(b"x" * 120)
    plan = dl.plan_download(ModelSource(cache_dir=tmp_path), [("o/r", ("a",))], lambda repo, rev: ("c1", files))
    assert [f.path for f in plan.files] == ["a/w.safetensors"] and plan.started == (120,) and plan.remaining == 180
    fetched, seen = [], []

    def fetcher(file, commit, hub_dir, on_bytes):
        fetched.append((file.path, commit))
        on_bytes(100)
        on_bytes(80)

    dl.download(plan, seen.append, fetcher)
    assert fetched == [("a/w.safetensors", "c1")] and [e.done for e in seen] == [120, 220, 300, 300]
    assert (dl.storage(tmp_path, "o/r") / "refs" / "main").read_text() == "c1"
    dl.check_disk(plan, 180 + dl.DISK_MARGIN)
    with pytest.raises(dl.NotEnoughDiskError):
        dl.check_disk(plan, 179 + dl.DISK_MARGIN)


def test_offline_with_an_empty_cache_names_what_to_fetch_and_where(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelsMissingError) as caught:
        dl.ensure_models(ModelSource(cache_dir=tmp_path), "f1")
    message = str(caught.value)
    assert "HF_HUB_OFFLINE" in message and str(tmp_path) in message
    assert f'hf download {HUNYUAN_REPO} --include "text_encoder/*"' in message
    assert f"hf download lllyasviel/FramePack_F1_I2V_HY_20250503 --cache-dir {tmp_path}" in message


def test_the_offline_hint_run_as_it_reads_fetches_what_was_missing_and_no_more(tmp_path):
    """The `hf download` commands the message gives, run against the stand-in: afterwards nothing is missing, and
    HunyuanVideo's transformer (which the app does not use) was left out."""
    hf = Path(sys.executable).with_name("hf.exe" if os.name == "nt" else "hf")
    if not hf.is_file():
        pytest.skip(f"huggingface_hub's hf command is not beside {sys.executable}")
    served = tmp_path / "served"
    shutil.copytree(TINY_MODELS, served)
    unused = served / HUNYUAN_REPO / "transformer" / "config.json"
    unused.parent.mkdir()
    unused.write_text("{}")
    source = ModelSource(cache_dir=tmp_path / "cache")
    hint = fetch_commands(dl.missing_parts(source, "original"), cache_dir=source.hub_dir)
    with hub_standin(served) as hub:
        for command in hint.split("; "):
            words = shlex.split(command)
            assert words[0] == "hf"
            done = subprocess.run([str(hf), *words[1:]], capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"})  # fmt: skip
            assert done.returncode == 0, done.stderr[-2000:]
    assert dl.missing_parts(source, "original") == []
    assert not list(dl.storage(source.hub_dir, HUNYUAN_REPO).glob("snapshots/*/transformer"))


def test_no_hub_at_all_gives_the_same_message(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelsMissingError, match="cannot be reached.*hf download"):
        dl.ensure_models(ModelSource(cache_dir=tmp_path), "original")


def test_the_first_job_of_the_queue_shows_the_download_on_its_page(hub, tmp_path, monkeypatch):
    from framepack.app.views import event_updates
    from framepack.queue.runners import ModelKeeper

    keeper = ModelKeeper("original", ModelSource(cache_dir=tmp_path / "cache"), tmp_path, "auto", False, None)
    events = list(keeper._download(keeper.source))
    downloads = [e for e in events if isinstance(e, Download)]
    assert isinstance(events[0], Status) and events[0].message.startswith("Downloading 22 files")
    assert downloads and downloads[-1].fraction == 1.0
    assert downloads[-1].line() == "Downloading models: 2.7 of 2.7 MB"
    _, bar, _, _, message = event_updates(Download(1_500_000_000, 42_100_000_000, "vae/x.safetensors", 3, 22))
    assert "Downloading models: 1.5 of 42.1 GB (file 4 of 22: vae/x.safetensors)" in bar and message.startswith("Downloading")
    # A disk too small: the job ends with an error saying so, before anything is fetched.
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9, free=0))
    full = ModelKeeper("original", ModelSource(cache_dir=tmp_path / "small"), tmp_path, "auto", False, None)
    events = list(full._download(full.source))
    assert len(events) == 1 and isinstance(events[0], Error) and "Not enough disk space" in events[0].message


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "framepack", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})  # fmt: skip


@pytest.mark.slow
def test_generate_downloads_into_an_empty_cache_then_runs_from_it(tmp_path):
    job = ["--image", str(IMAGE), "--prompt", "a cat", "--seconds", "0.4", "--latent-window-size", "2", "--steps", "2",
           "--width", "64", "--height", "48", "--device", "cpu", "--no-teacache", "--hf-cache", str(tmp_path / "cache")]  # fmt: skip
    with hub_standin(TINY_MODELS) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        done = cli("generate", *job, "--output-dir", str(tmp_path / "out"), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Downloading 22 files, 2.7 MB (" in done.stderr and "Downloading models" in done.stderr
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 1
    again = cli("generate", *job, "--output-dir", str(tmp_path / "again"), env={"HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0 and "Downloading" not in again.stderr, again.stderr[-3000:]


def test_generate_offline_with_an_empty_cache_says_what_to_fetch(tmp_path):
    done = cli("generate", "--image", str(IMAGE), "--prompt", "a cat", "--device", "cpu", "--hf-cache", str(tmp_path),
               "--output-dir", str(tmp_path / "out"), env={"HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "hf download" in last and str(tmp_path) in last


def test_without_symlinks_the_files_themselves_go_in_the_snapshots(hub, tmp_path, monkeypatch):
    """Windows without developer mode cannot make symlinks: the cache holds the files in its snapshots instead, and
    a second run finds them complete."""
    monkeypatch.setattr(dl, "are_symlinks_supported", lambda *args: False)
    source = ModelSource(cache_dir=tmp_path / "cache")
    assert dl.ensure_models(source, "original") is not None
    pointer = dl.storage(tmp_path / "cache", HUNYUAN_REPO) / "snapshots" / COMMIT / VAE
    assert pointer.is_file() and not pointer.is_symlink()
    assert pointer.read_bytes() == (TINY_MODELS / HUNYUAN_REPO / VAE).read_bytes()
    asked = len(hub.requests)
    assert dl.ensure_models(source, "original") is None and len(hub.requests) == asked


# ----------------------------------------------------------------------------------------------- `framepack download`


def test_the_download_command_fetches_everything_then_finds_it_all_there(hub, tmp_path, capsys):
    from framepack.cli import main

    assert main(["download", "--hf-cache", str(tmp_path), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("Downloading 22 files, 2.7 MB (") and out.strip() == f"The FramePack models are all in {tmp_path}."
    assert dl.missing_parts(ModelSource(cache_dir=tmp_path), "original") == []
    assert blob_of(tmp_path, HUNYUAN_REPO, VAE).read_bytes() == (TINY_MODELS / HUNYUAN_REPO / VAE).read_bytes()
    asked = len(hub.requests)
    assert main(["download", "--hf-cache", str(tmp_path)]) == 0  # again: nothing is asked of the hub
    assert capsys.readouterr().out.strip() == f"The FramePack models are all in {tmp_path}: nothing to download."
    assert len(hub.requests) == asked
    # F1 shares all but its transformer: only that repo is fetched.
    assert main(["download", "--f1", "--hf-cache", str(tmp_path), "--quiet"]) == 0
    f1 = [f for f in (TINY_MODELS / "lllyasviel/FramePack_F1_I2V_HY_20250503").iterdir() if f.is_file()]
    assert capsys.readouterr().err.startswith(f"Downloading {len(f1)} files, {dl.gb(sum(f.stat().st_size for f in f1))} (")
    assert not any(HUNYUAN_REPO in path for _, path, _ in hub.requests[asked:])


def test_the_download_command_stopped_with_ctrl_c_goes_on_where_it_stopped(hub, tmp_path, capsys, monkeypatch):
    """Ctrl-C while the VAE is half fetched: exit 130 with what to do; run again, only the rest of it is asked for."""
    import signal
    import threading

    from framepack.cli import main

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16384)  # so the half before Ctrl-C reaches the disk
    hub.hold_once.add(VAE)

    def press_ctrl_c() -> None:
        if hub.held.wait(timeout=120):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # as a terminal's Ctrl-C does

    # Python's own Ctrl-C (KeyboardInterrupt), as in a terminal, whatever handler an earlier test's library left.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    try:
        code = main(["download", "--hf-cache", str(tmp_path), "--quiet"])
    finally:
        hub.release.set()
        presser.join()
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and "Run the same command again to go on where the download stopped." in capsys.readouterr().err
    (part,) = dl.storage(tmp_path, HUNYUAN_REPO).glob("blobs/*.incomplete")
    fetched = part.stat().st_size
    assert 0 < fetched < (TINY_MODELS / HUNYUAN_REPO / VAE).stat().st_size

    assert main(["download", "--hf-cache", str(tmp_path), "--quiet"]) == 0
    assert f"{fetched / 1e6:.1f} MB of it fetched before" in capsys.readouterr().err
    assert hub.file_gets(VAE) == ["", f"bytes={fetched}-"]
    assert blob_of(tmp_path, HUNYUAN_REPO, VAE).read_bytes() == (TINY_MODELS / HUNYUAN_REPO / VAE).read_bytes()


def test_the_download_command_offline_says_what_to_fetch_in_one_line(tmp_path, monkeypatch, capsys):
    from framepack.cli import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["download", "--f1", "--hf-cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert f"hf download lllyasviel/FramePack_F1_I2V_HY_20250503 --cache-dir {tmp_path}" in err
