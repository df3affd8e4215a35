"""Where the weights come from and how every component is loaded.

The same code loads the published Hugging Face repos (cached in `./hf_download`) and a local model root laid
out as `<root>/<org>/<name>/<subfolder>`, so the tiny test models go through exactly what users run.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from transformers import (
    CLIPTextModel,
    LlamaModel,
    PreTrainedTokenizerBase,
    SiglipImageProcessorPil,
    SiglipVisionModel,
)


if TYPE_CHECKING:
    from .loading import ComponentLoader
    from .lora import LoraState
    from .placement import Placement

logger = logging.getLogger(__name__)

# A model set's components with weights, in the order they load (the transformer first: see `load_models`).
COMPONENTS = ("transformer", "text_encoder", "text_encoder_2", "image_encoder", "vae")
HUNYUAN_REPO = "hunyuanvideo-community/HunyuanVideo"
REDUX_REPO = "lllyasviel/flux_redux_bfl"
TRANSFORMER_REPOS = {
    "original": "lllyasviel/FramePackI2V_HY",
    "f1": "lllyasviel/FramePack_F1_I2V_HY_20250503",
}
DEFAULT_CACHE_DIR = Path("hf_download")
# The published transformers' architecture (both variants), for a single-file transformer without its repo at hand
# and for plans made without weights. The tests check it against the real config.
PUBLISHED_TRANSFORMER = {
    "attention_head_dim": 128, "guidance_embeds": True, "has_clean_x_embedder": True, "has_image_proj": True,
    "image_proj_dim": 1152, "in_channels": 16, "mlp_ratio": 4.0, "num_attention_heads": 24, "num_layers": 20,
    "num_refiner_layers": 2, "num_single_layers": 40, "out_channels": 16, "patch_size": 2, "patch_size_t": 1,
    "pooled_projection_dim": 768, "qk_norm": "rms_norm", "rope_axes_dim": [16, 56, 56], "rope_theta": 256.0,
    "text_embed_dim": 4096,
}  # fmt: skip


class ModelsMissingError(RuntimeError):
    """Weights are neither in the local model root nor in the hub cache, and cannot be downloaded."""


@dataclass(frozen=True)
class ModelSource:
    """Where weights are read from: a local model root, or the hub cached under `cache_dir`."""

    models_dir: Path | None = None
    cache_dir: Path = DEFAULT_CACHE_DIR
    revisions: tuple[tuple[str, str], ...] = ()  # (repo, revision): hub repos pinned to what a job was made with
    transformer_file: Path | None = None  # a single-file transformer in place of the variant's repo (see checkpoints)

    def __post_init__(self) -> None:
        if self.models_dir is not None:
            object.__setattr__(self, "models_dir", Path(self.models_dir))
        if self.transformer_file is not None:
            object.__setattr__(self, "transformer_file", Path(self.transformer_file).resolve())
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    @classmethod
    def recorded(cls, sources: dict[str, str], cache_dir: str | Path = DEFAULT_CACHE_DIR) -> ModelSource:
        """Where a job's record says its models came from (see `describe`): the local model root, or the hub
        repos at the revisions used, and the single-file transformer if one was used."""
        sources = dict(sources)
        file = sources.pop("transformer_file", None)
        pins = tuple(tuple(value.split("@", 1)) for value in sources.values() if _HUB_SOURCE.fullmatch(value))
        local = [Path(value) for value in sources.values() if not _HUB_SOURCE.fullmatch(value)]
        if local:  # a repo folder is <root>/<owner>/<name>
            return cls(models_dir=local[0].parents[1], cache_dir=cache_dir, transformer_file=file)
        return cls(cache_dir=cache_dir, revisions=pins, transformer_file=file)

    def describe(self, repo: str, folder: Path) -> str:
        """Where `repo` was read from: the local folder, or the hub repo and the snapshot (revision) cached."""
        return str(folder.resolve()) if self.models_dir else f"{repo}@{folder.name}"

    def folders(self, variant: str) -> tuple[Path, Path, Path | None]:
        """The HunyuanVideo, Redux and transformer folders of `variant` (downloading what is missing, if allowed);
        no transformer folder where a transformer file takes its place."""
        return (
            self.folder(HUNYUAN_REPO, ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")),
            self.folder(REDUX_REPO, ("feature_extractor", "image_encoder")),
            self.folder(TRANSFORMER_REPOS[variant]) if self.transformer_file is None else None,
        )

    def sources(self, variant: str) -> dict[str, str]:
        """What a job's record says of these models (see `describe`), found without loading them."""
        hunyuan, redux, transformer = self.folders(variant)
        found = {"hunyuan": self.describe(HUNYUAN_REPO, hunyuan), "redux": self.describe(REDUX_REPO, redux)}
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
                path = Path(hf_hub_download(repo, "config.json", revision=revision, cache_dir=self.cache_dir))
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
                raise ModelsMissingError(
                    f"Model files not found: {wanted}. A local model root must be laid out like the hub repos "
                    f"(<root>/{repo}/...); download them with `hf download {repo} --local-dir {root}`."
                )
            return root
        patterns = [f"{s}/*" for s in subfolders] if subfolders else None
        revision = dict(self.revisions).get(repo)
        try:
            return Path(snapshot_download(repo, revision=revision, cache_dir=self.cache_dir, allow_patterns=patterns))
        except LocalEntryNotFoundError:
            parts = f" (folders {', '.join(subfolders)})" if subfolders else ""
            raise ModelsMissingError(
                f"The weights of {repo}{parts} are not in {self.cache_dir} and cannot be downloaded now "
                f"(offline). Connect to the internet and run the app once to download them, or run "
                f"`hf download {repo} --cache-dir {self.cache_dir}`, or point --models at a local model root."
            ) from None


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


@dataclass
class ModelSet:
    """Every component one generation needs, with the variant and the places they were loaded from.

    A component is None while it is out of memory (a per-phase lifetime, see `framepack.loading.components`);
    `loader` brings it back. `prompt_cache` keeps the encoded prompts, most recently used last.
    """

    variant: str
    text_encoder: LlamaModel | None
    text_encoder_2: CLIPTextModel | None
    tokenizer: PreTrainedTokenizerBase
    tokenizer_2: PreTrainedTokenizerBase
    vae: AutoencoderKLHunyuanVideo
    feature_extractor: SiglipImageProcessorPil
    image_encoder: SiglipVisionModel | None
    transformer: HunyuanVideoFramepackTransformer3DModel | None
    sources: dict[str, str]
    attention: str = "sdpa"  # the attention backend in use (see framepack.attention)
    compiled: bool = False
    placement: Placement | None = None  # where the components live and move (None: all on one device)
    loras: LoraState | None = None  # the LoRAs on the transformer (see framepack.lora)
    fuse_loras: bool | None = None  # merge LoRAs into the weights; None: where memory allows
    loader: ComponentLoader | None = None  # loads a component again after it left memory
    prompt_cache: OrderedDict[str, Any] = field(default_factory=OrderedDict)  # prompt text -> PromptEmbeds

    @property
    def device(self) -> torch.device:
        """Where the transformer computes: its placement's device (a streamed transformer's weights rest on the
        CPU between calls), else where its weights are."""
        if self.placement is not None:
            return self.placement.device
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype (known while it is out of memory too)."""
        return self.transformer.dtype if self.transformer is not None else self.loader.transformer_dtype


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtypes(dtype: str | None, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """(transformer dtype, encoder/VAE dtype). FramePack runs bf16 + fp16 on GPUs; CPUs compute in fp32."""
    if dtype is None:
        if device.type == "cpu":
            return torch.float32, torch.float32
        return torch.bfloat16, torch.float16
    transformer_dtype = getattr(torch, dtype)
    encoder_dtype = torch.float32 if transformer_dtype == torch.float32 else torch.float16
    return transformer_dtype, encoder_dtype


def load_transformer(
    folder: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> HunyuanVideoFramepackTransformer3DModel:
    """Load a FramePack transformer with diffusers' class; its output head is kept in float32 like FramePack's."""
    transformer = HunyuanVideoFramepackTransformer3DModel.from_pretrained(folder, torch_dtype=dtype)
    transformer.eval().requires_grad_(False)
    keep_output_head_in_float32(transformer)
    return transformer


def keep_output_head_in_float32(transformer: HunyuanVideoFramepackTransformer3DModel) -> None:
    """Run the final norm and projection in float32 whatever the model dtype, as FramePack does for quality.

    The pre-hook upcasts the head's inputs; the model then returns float32 predictions.
    """
    transformer.norm_out.float()
    transformer.proj_out.float()
    if getattr(transformer.norm_out, "_framepack_fp32_hook", False):
        return

    def upcast(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(a.float() if torch.is_tensor(a) else a for a in args)

    transformer.norm_out.register_forward_pre_hook(upcast)
    transformer.norm_out._framepack_fp32_hook = True


def compile_blocks(transformer: torch.nn.Module, backend: str = "inductor") -> None:
    """Compile each transformer block once; the blocks repeat, so this compiles fast and reuses well.

    Whole-model compilation would recompile for every section shape; the step-cache hooks stay outside.
    """
    for block in (*transformer.transformer_blocks, *transformer.single_transformer_blocks):
        block.compile(backend=backend, dynamic=True)
