"""The first run's download: what of a variant's weights is missing from the hub cache, how much that is, whether
the disk holds it, and fetching it file by file with progress, going on where an interrupted download stopped.

A download that stops (a lost connection, Ctrl-C, a killed app) leaves `blobs/<etag>.incomplete` in the cache; the
next one asks the server for the rest only (an HTTP Range request). huggingface_hub's own `hf_hub_download` gives a
partial file a name of its own per process and deletes it on failure, so it starts a 10 GB shard over: this module
writes the cache's layout itself (`blobs/<etag>`, `snapshots/<commit>/<path>` linking to it, `refs/<revision>`),
and loading then reads it through huggingface_hub as usual.

Listing and fetching are passed in (`lister`, `fetcher`) so the decisions are tested with fakes as well as against a
stand-in hub."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx2
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.file_download import are_symlinks_supported, get_hf_file_metadata, http_get, repo_folder_name
from huggingface_hub.utils import WeakFileLock, build_hf_headers

from ..events import Download
from .sources import ModelsMissingError, ModelSource, fetch_commands

logger = logging.getLogger(__name__)

GB = 1_000_000_000
# Room left on the disk after the download: the OS, the outputs and the hub's lock files need some.
DISK_MARGIN = 2 * GB
# Subfolders holding configuration only (no weights to check for completeness).
CONFIG_ONLY = ("tokenizer", "tokenizer_2", "feature_extractor")
# What a lost or absent network raises while listing a repo: the download then says what to fetch by hand.
NETWORK_ERRORS = (OfflineModeIsEnabled, httpx2.ConnectError, httpx2.TimeoutException, httpx2.RemoteProtocolError)


def gb(n: float) -> str:
    """A size as the messages give it: GB, or MB where that would read 0.0 GB."""
    return f"{n / GB:.1f} GB" if n >= GB / 10 or n == 0 else f"{n / 1e6:.1f} MB"


class NotEnoughDiskError(ModelsMissingError):
    """The download would not fit on the disk of the hub cache (raised before anything is fetched)."""


@dataclass(frozen=True)
class RemoteFile:
    """A file of a repo on the hub: its size and its blob's name in the cache (the LFS sha256, else the git id)."""

    repo: str
    path: str
    size: int
    etag: str


@dataclass(frozen=True)
class DownloadPlan:
    """The files to fetch into `hub_dir`, the bytes of them an interrupted download already has, and per repo the
    revision asked for and the commit it is now (written to `refs/` once the repo's files are in)."""

    hub_dir: Path
    files: tuple[RemoteFile, ...]
    started: tuple[int, ...] = ()  # per file, the bytes an interrupted download left
    commits: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def partial(self) -> int:
        return sum(self.started)

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def remaining(self) -> int:
        return self.total - self.partial

    def summary(self, free: int) -> str:
        """The line said before the download starts."""
        resumed = f", {gb(self.partial)} of it fetched before" if self.partial else ""
        return (f"Downloading {len(self.files)} files, {gb(self.remaining)} ({gb(free)} free at {self.hub_dir}"
                f"{resumed}) ...")  # fmt: skip


Lister = Callable[[str, str], tuple[str, list[RemoteFile]]]  # (repo, revision) -> (commit, files)
Fetcher = Callable[[RemoteFile, str, Path, Callable[[int], None]], None]  # (file, commit, hub dir, on bytes)


def list_repo(repo: str, revision: str) -> tuple[str, list[RemoteFile]]:
    """The commit `revision` of `repo` is on the hub, and its files with their sizes."""
    info = HfApi(endpoint=constants.ENDPOINT).model_info(repo, revision=revision, files_metadata=True)
    files = [RemoteFile(repo, s.rfilename, s.lfs.size if s.lfs else s.size or 0, s.lfs.sha256 if s.lfs else s.blob_id or "")
             for s in info.siblings or ()]  # fmt: skip
    return str(info.sha), files


def storage(hub_dir: Path, repo: str) -> Path:
    """A repo's folder in the hub cache (`models--org--name`)."""
    return Path(hub_dir) / repo_folder_name(repo_id=repo, repo_type="model")


def weights_complete(folder: Path) -> bool:
    """Whether a model folder holds its weights: every shard its index names, else a weights file."""
    for index in folder.glob("*.index.json"):
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        return bool(shards) and all((folder / shard).is_file() for shard in shards)
    return any(f.is_file() for pattern in ("*.safetensors", "*.bin") for f in folder.glob(pattern))


def missing_parts(source: ModelSource, variant: str) -> list[tuple[str, tuple[str, ...]]]:
    """The repos (with their subfolders) of `variant` not complete in the hub cache, found without the network."""
    missing = []
    for repo, subfolders in source.parts(variant):
        folder = source.cached_folder(repo, subfolders)
        if folder is None or not all(weights_complete(folder / s) for s in subfolders or ("",) if s not in CONFIG_ONLY):
            missing.append((repo, subfolders))
    return missing


def offline_error(source: ModelSource, parts: Sequence[tuple[str, tuple[str, ...]]], why: str) -> ModelsMissingError:
    listed = ", ".join(f"{repo} ({', '.join(subs)})" if subs else repo for repo, subs in parts)
    return ModelsMissingError(
        f"The weights of {listed} are not in {source.hub_dir} and cannot be downloaded now ({why}). Connect to the "
        f"internet and run again, or fetch them on a connected machine into that folder: "
        f"{fetch_commands(parts, cache_dir=source.hub_dir)}; or point --models at a local model root."
    )


def plan_download(source: ModelSource, parts: Sequence[tuple[str, tuple[str, ...]]], lister: Lister = list_repo) -> DownloadPlan:
    """What of `parts` is to fetch: the listed files of their subfolders not in the cache's snapshot of the commit."""
    files, started, commits = [], [], {}
    for repo, subfolders in parts:
        revision = dict(source.revisions).get(repo) or "main"
        commit, listed = lister(repo, revision)
        commits[repo] = (revision, commit)
        folder = storage(source.hub_dir, repo)
        for file in listed:
            if subfolders and not any(file.path.startswith(f"{s}/") for s in subfolders):
                continue
            if (folder / "snapshots" / commit / file.path).is_file():
                continue
            files.append(file)
            part = folder / "blobs" / f"{file.etag}.incomplete"
            started.append(min(file.size, part.stat().st_size) if part.is_file() else 0)
    return DownloadPlan(source.hub_dir, tuple(files), tuple(started), commits)


def free_disk(path: Path) -> int:
    """Free bytes on the disk `path` is (or would be made) on."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_disk(plan: DownloadPlan, free: int) -> None:
    """Refuse, in one line, a download that would not leave DISK_MARGIN free."""
    if plan.remaining + DISK_MARGIN > free:
        raise NotEnoughDiskError(
            f"Not enough disk space for the models: the download needs {gb(plan.remaining)} (and {gb(DISK_MARGIN)} "
            f"spare), {gb(free)} free at {plan.hub_dir}. Free some space there or pass --hf-cache on another disk."
        )


def fetch_file(file: RemoteFile, commit: str, hub_dir: Path, on_bytes: Callable[[int], None]) -> None:
    """Fetch one file into the hub cache, going on from its `.incomplete` part if an earlier try left one."""
    url = f"{constants.ENDPOINT}/{file.repo}/resolve/{commit}/{quote(file.path)}"  # ENDPOINT read now: tests move it
    meta = get_hf_file_metadata(url, retry_on_errors=True, endpoint=constants.ENDPOINT)
    folder = storage(hub_dir, file.repo)
    etag = meta.etag or file.etag
    blob, pointer = folder / "blobs" / etag, folder / "snapshots" / commit / file.path
    blob.parent.mkdir(parents=True, exist_ok=True)
    lock = Path(hub_dir) / ".locks" / folder.name / f"{etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(lock):  # another process fetching the same blob waits, then finds it there
        if not blob.is_file():
            partial = blob.with_name(f"{etag}.incomplete")
            with partial.open("ab") as out:
                relay = _relay(on_bytes)
                http_get(meta.location, out, resume_size=out.tell(), headers=build_hf_headers(),
                         expected_size=meta.size, displayed_filename=file.path, tqdm_class=relay)  # fmt: skip
            os.replace(partial, blob)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if not pointer.is_file():
        pointer.unlink(missing_ok=True)  # a dangling link
        if are_symlinks_supported(hub_dir):
            pointer.symlink_to(os.path.relpath(blob, pointer.parent))
        else:  # Windows without developer mode: the file itself goes in the snapshot, as huggingface_hub does then
            os.replace(blob, pointer)


def _relay(on_bytes: Callable[[int], None]) -> Callable[..., object]:
    """A stand-in for the tqdm class http_get drives: passes each chunk's byte count on."""

    class Relay:
        def __init__(self, **_: object):
            pass

        def update(self, n: float | None = 1) -> None:
            on_bytes(int(n or 0))

        def close(self) -> None:
            pass

        def __enter__(self) -> Relay:
            return self

        def __exit__(self, *_: object) -> None:
            pass

    return Relay


def download(plan: DownloadPlan, progress: Callable[[Download], None] | None = None,
             fetcher: Fetcher = fetch_file) -> None:  # fmt: skip
    """Fetch the plan's files one by one (a stop loses at most the rest of one file), then record each repo's ref."""
    done = plan.partial

    def report(index: int, file: RemoteFile) -> None:
        if progress is not None:
            progress(Download(done, plan.total, file.path, index, len(plan.files)))

    for index, file in enumerate(plan.files):
        report(index, file)

        def on_bytes(n: int, index: int = index, file: RemoteFile = file) -> None:
            nonlocal done
            done += n
            report(index, file)

        fetcher(file, plan.commits[file.repo][1], plan.hub_dir, on_bytes)
        # Exact again after each file (a server that ignored a Range request sent a partial part twice).
        done = sum(f.size for f in plan.files[: index + 1]) + sum(plan.started[index + 1 :])
    for repo, (revision, commit) in plan.commits.items():
        if revision != commit:  # loading finds the snapshot through the ref of the revision it asks for
            ref = storage(plan.hub_dir, repo) / "refs" / revision
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(commit)
    if progress is not None and plan.files:
        progress(Download(plan.total, plan.total, "", len(plan.files), len(plan.files)))


def ensure_models(
    source: ModelSource,
    variant: str,
    progress: Callable[[Download], None] | None = None,
    announce: Callable[[str], None] | None = None,
    lister: Lister = list_repo,
    fetcher: Fetcher = fetch_file,
    disk_free: Callable[[Path], int] = free_disk,
) -> DownloadPlan | None:
    """Download what `variant` needs and the hub cache lacks (None: nothing was missing, or a local model root,
    which never downloads). Says how much first (`announce`), refuses if the disk cannot hold it, and raises
    ModelsMissingError naming what to fetch where when offline."""
    if source.models_dir is not None:
        return None
    parts = missing_parts(source, variant)
    if not parts:
        return None
    if constants.HF_HUB_OFFLINE:
        raise offline_error(source, parts, "HF_HUB_OFFLINE is set")
    try:
        plan = plan_download(source, parts, lister)
    except NETWORK_ERRORS as exc:
        raise offline_error(source, parts, f"the hub cannot be reached: {type(exc).__name__}") from None
    free = disk_free(plan.hub_dir)
    check_disk(plan, free)
    if plan.files:
        logger.info("%s", plan.summary(free))
        if announce is not None:
            announce(plan.summary(free))
    try:
        download(plan, progress, fetcher)
    except NETWORK_ERRORS as exc:
        raise ModelsMissingError(
            f"The download stopped ({type(exc).__name__}: the connection to the hub was lost); run again to go on "
            f"where it stopped."
        ) from None
    return plan
