"""Where the weights come from: the published Hugging Face repos (cached in `./hf_download`) or a local model root
laid out like them (`<root>/<org>/<name>/<subfolder>`), so the tiny test models go through what users run.

The cache may be the `hf_download` folder of a FramePack or FramePack-Studio install as it is: those apps set
HF_HOME to it, so their repos sit in `hf_download/hub/models--*`; this app passes the folder as the hub cache
itself (`hf_download/models--*`). `hub_cache` tells the two apart."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import LocalEntryNotFoundError

logger = logging.getLogger(__name__)

HUNYUAN_REPO = "hunyuanvideo-community/HunyuanVideo"


REDUX_REPO = "lllyasviel/flux_redux_bfl"


TRANSFORMER_REPOS = {
    "original": "lllyasviel/FramePackI2V_HY",
    "f1": "lllyasviel/FramePack_F1_I2V_HY_20250503",
}


DEFAULT_CACHE_DIR = Path("hf_download")


# The parts of the repos the app loads (HunyuanVideo's repo also holds a transformer it does not use).
HUNYUAN_SUBFOLDERS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")


REDUX_SUBFOLDERS = ("feature_extractor", "image_encoder")


# The published transformers' architecture (both variants), for a single-file transformer without its repo at hand
# and for plans made without weights. The tests check it against the real config.
PUBLISHED_TRANSFORMER = {
    "attention_head_dim": 128, "guidance_embeds": True, "has_clean_x_embedder": True, "has_image_proj": True,
    "image_proj_dim": 1152, "in_channels": 16, "mlp_ratio": 4.0, "num_attention_heads": 24, "num_layers": 20,
    "num_refiner_layers": 2, "num_single_layers": 40, "out_channels": 16, "patch_size": 2, "patch_size_t": 1,
    "pooled_projection_dim": 768, "qk_norm": "rms_norm", "rope_axes_dim": [16, 56, 56], "rope_theta": 256.0,
    "text_embed_dim": 4096,
}  # fmt: skip


def hub_cache(cache_dir: str | Path) -> Path:
    """The hub cache in `cache_dir`: its `hub` folder where that holds repos (`models--*`, the layout of an app
    that sets HF_HOME to the folder, as FramePack and FramePack-Studio do), else the folder itself."""
    cache_dir = Path(cache_dir)
    hub = cache_dir / "hub"
    return hub if hub.is_dir() and any(hub.glob("models--*")) else cache_dir


class ModelsMissingError(RuntimeError):
    """Weights are neither in the local model root nor in the hub cache, and cannot be downloaded."""


@dataclass(frozen=True)
class ModelSource:
    """Where weights are read from: a local model root, or the hub cached under `cache_dir`."""

    models_dir: Path | None = None
    cache_dir: Path = DEFAULT_CACHE_DIR
    revisions: tuple[tuple[str, str], ...] = ()  # (repo, revision): hub repos pinned to what a job was made with
    transformer_file: Path | None = None  # a single-file transformer in place of the variant's repo (see checkpoints)
    # ComfyUI's models folder (see `comfyui`): its text encoders, VAE and SigLIP replace those repos' weights, whose
    # configs and tokenizers (small files) are still read from the local root or the hub cache.
    comfyui_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.models_dir is not None:
            object.__setattr__(self, "models_dir", Path(self.models_dir))
        if self.transformer_file is not None:
            object.__setattr__(self, "transformer_file", Path(self.transformer_file).resolve())
        if self.comfyui_dir is not None:
            object.__setattr__(self, "comfyui_dir", Path(self.comfyui_dir).resolve())
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    @classmethod
    def recorded(cls, sources: dict[str, str], cache_dir: str | Path = DEFAULT_CACHE_DIR) -> ModelSource:
        """Where a job's record says its models came from (see `describe`): the local model root, or the hub
        repos at the revisions used, and the single-file transformer if one was used."""
        sources = dict(sources)
        file = sources.pop("transformer_file", None)
        comfyui = sources.pop("comfyui", None)
        pins = tuple(tuple(value.split("@", 1)) for value in sources.values() if _HUB_SOURCE.fullmatch(value))
        local = [Path(value) for value in sources.values() if not _HUB_SOURCE.fullmatch(value)]
        if local:  # a repo folder is <root>/<owner>/<name>
            return cls(models_dir=local[0].parents[1], cache_dir=cache_dir, transformer_file=file, comfyui_dir=comfyui)
        return cls(cache_dir=cache_dir, revisions=pins, transformer_file=file, comfyui_dir=comfyui)

    @property
    def hub_dir(self) -> Path:
        """The hub cache the repos are read from and downloaded to (see `hub_cache`)."""
        return hub_cache(self.cache_dir)

    def describe(self, repo: str, folder: Path) -> str:
        """Where `repo` was read from: the local folder, or the hub repo and the snapshot (revision) cached."""
        return str(folder.resolve()) if self.models_dir else f"{repo}@{folder.name}"

    def parts(self, variant: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The repos `variant` loads, each with the subfolders it needs (none: the whole repo); the transformer's
        repo only where no transformer file takes its place."""
        parts = ((HUNYUAN_REPO, HUNYUAN_SUBFOLDERS), (REDUX_REPO, REDUX_SUBFOLDERS))
        if self.comfyui_dir is not None:
            parts = ()  # their weights are ComfyUI's; `folder` fetches the few small files still wanted
        return parts if self.transformer_file is not None else (*parts, (TRANSFORMER_REPOS[variant], ()))

    def folders(self, variant: str) -> tuple[Path, Path, Path | None]:
        """The HunyuanVideo, Redux and transformer folders of `variant` (downloading what is missing, if allowed);
        no transformer folder where a transformer file takes its place."""
        return (
            self.folder(HUNYUAN_REPO, HUNYUAN_SUBFOLDERS),
            self.folder(REDUX_REPO, REDUX_SUBFOLDERS),
            self.folder(TRANSFORMER_REPOS[variant]) if self.transformer_file is None else None,
        )

    def sources(self, variant: str) -> dict[str, str]:
        """What a job's record says of these models (see `describe`), found without loading them."""
        hunyuan, redux, transformer = self.folders(variant)
        found = {"hunyuan": self.describe(HUNYUAN_REPO, hunyuan), "redux": self.describe(REDUX_REPO, redux)}
        if self.comfyui_dir is not None:
            found["comfyui"] = str(self.comfyui_dir)
        if transformer is None:
            return {**found, "transformer_file": str(self.transformer_file)}
        return {**found, "transformer": self.describe(TRANSFORMER_REPOS[variant], transformer)}

    def transformer_config(self, variant: str) -> dict[str, Any]:
        """The transformer's architecture: its repo's config.json where it is at hand (the local root, the hub
        cache, or a download of that one small file), else the published one, which both variants share."""
        repo = TRANSFORMER_REPOS[variant]
        try:
            if self.models_dir is not None:
                path = self.folder(repo) / "config.json"
            else:
                revision = dict(self.revisions).get(repo)
                path = Path(hf_hub_download(repo, "config.json", revision=revision, cache_dir=self.hub_dir))
            return json.loads(path.read_text())
        except (ModelsMissingError, LocalEntryNotFoundError, OSError):
            logger.info("Using the published configuration of the FramePack transformer (%s has none at hand)", repo)
            return dict(PUBLISHED_TRANSFORMER)

    def folder(self, repo: str, subfolders: tuple[str, ...] = ()) -> Path:
        """The local folder holding `repo` (with at least `subfolders`), downloading it if allowed."""
        if self.models_dir is not None:
            root = self.models_dir / repo
            missing = [s for s in subfolders or ("",) if not (root / s / _CONFIG_OF.get(s, "")).exists()]
            if missing:
                wanted = ", ".join(str(root / s) for s in missing)
                files = [self._pattern(s).removesuffix("/*") for s in subfolders]  # ComfyUI's: configs only
                raise ModelsMissingError(
                    f"Model files not found: {wanted}. A local model root must be laid out like the hub repos "
                    f"(<root>/{repo}/...); download them with "
                    f"`{fetch_commands([(repo, files)], local_root=self.models_dir)}`."
                )
            return root
        patterns = [self._pattern(s) for s in subfolders] if subfolders else None
        revision = dict(self.revisions).get(repo)
        try:
            return Path(snapshot_download(repo, revision=revision, cache_dir=self.hub_dir, allow_patterns=patterns))
        except LocalEntryNotFoundError:
            parts = f" (folders {', '.join(subfolders)})" if subfolders else ""
            wanted = [pattern.removesuffix("/*") for pattern in patterns or ()]
            raise ModelsMissingError(
                f"The {'configs and tokenizers' if self.comfyui_dir else 'weights'} of {repo}{parts} are not in "
                f"{self.hub_dir} and cannot be downloaded now "
                f"(offline). Connect to the internet and run the app once to download them, or run "
                f"`{fetch_commands([(repo, wanted)], cache_dir=self.hub_dir)}`, or point --models at a local "
                f"model root."
            ) from None

    def _pattern(self, subfolder: str) -> str:
        """The files of `subfolder` to fetch: all of them, or with ComfyUI's weights only its config (tokenizers and
        the feature extractor's settings are small files of their own)."""
        config = _CONFIG_OF[subfolder]
        return f"{subfolder}/config.json" if self.comfyui_dir is not None and config == "config.json" else f"{subfolder}/*"

    def cached_folder(self, repo: str, subfolders: tuple[str, ...] = ()) -> Path | None:
        """The folder holding `repo` with the config files of `subfolders` (the repo's own without), found here
        without downloading or asking the hub; None where any is missing."""
        if self.models_dir is not None:
            root = self.models_dir / repo
            return root if all((root / s / _CONFIG_OF.get(s, "")).is_file() for s in subfolders or ("",)) else None
        revision = dict(self.revisions).get(repo)
        folder = None
        for subfolder in subfolders or ("",):
            name = f"{subfolder}/{_CONFIG_OF[subfolder]}" if subfolder else "config.json"
            found = try_to_load_from_cache(repo, name, cache_dir=self.hub_dir, revision=revision)
            if not isinstance(found, str):  # None: not cached; a sentinel: known not to exist
                return None
            folder = Path(found).parents[1 if subfolder else 0]
        return folder


def fetch_commands(parts: Iterable[tuple[str, Sequence[str]]], cache_dir: str | Path | None = None,
                   local_root: str | Path | None = None) -> str:  # fmt: skip
    """The `hf download` commands that fetch `parts` (repo, subfolders or files in them; none: the whole repo) into the hub cache
    `cache_dir`, or into the local model root `local_root` (each repo in `<root>/<repo>`), joined by "; ". Only the
    subfolders named: HunyuanVideo's repo also holds a transformer the app does not use. `hf download` takes one
    pattern per `--include` (a second word after it would be read as a file name)."""
    if (cache_dir is None) == (local_root is None):
        raise ValueError("fetch_commands needs either cache_dir or local_root")
    wanted: dict[str, list[str]] = {}
    for repo, subfolders in parts:
        wanted.setdefault(repo, []).extend(subfolders or ("",))
    commands = []
    for repo, names in wanted.items():
        patterns = (name if "/" in name else f"{name}/*" for name in dict.fromkeys(names))  # a subfolder, or one file
        include = "" if "" in names else "".join(f' --include "{pattern}"' for pattern in patterns)
        target = f"--cache-dir {cache_dir}" if cache_dir is not None else f"--local-dir {Path(local_root) / repo}"
        commands.append(f"hf download {repo}{include} {target}")
    return "; ".join(commands)


# How `ModelSource.describe` names a hub snapshot: "owner/name@<commit>".
_HUB_SOURCE = re.compile(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}")


# The file whose presence shows a subfolder is really there (tokenizers have no config.json).
_CONFIG_OF = {
    "": "config.json",
    "text_encoder": "config.json",
    "text_encoder_2": "config.json",
    "vae": "config.json",
    "image_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "tokenizer_2": "tokenizer_config.json",
    "feature_extractor": "preprocessor_config.json",
}

