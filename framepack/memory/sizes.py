"""Sizes, from the real architectures built on the `meta` device (no memory): what each component's weights take
in the dtypes and formats the app loads them in. GB = 10**9 bytes everywhere."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    LlamaConfig,
    LlamaModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from ..models.checkpoints import GGUF_BLOCKS, TransformerFile, format_sizes
from ..models.components import COMPONENTS, ModelSet
from ..models.fp8 import enable_fp8, has_fp8
from ..models.sources import (
    DEFAULT_CACHE_DIR,
    HUNYUAN_REPO,
    PUBLISHED_TRANSFORMER,
    REDUX_REPO,
    TRANSFORMER_REPOS,
    ModelSource,
)

GB = 1_000_000_000


def gb(n: int | float) -> str:
    return f"{n / GB:.1f} GB"


# The published configurations (what the app downloads; the transformer's is in `framepack.models`), so a plan
# needs no weights. The tests check them against ../shared/model-configs; the VAE uses diffusers' default AutoencoderKLHunyuanVideo configuration.
PUBLISHED_TEXT_ENCODER = {
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128320, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "max_position_embeddings": 8192,
}  # fmt: skip


PUBLISHED_TEXT_ENCODER_2 = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768,
}  # fmt: skip


PUBLISHED_IMAGE_ENCODER = {
    "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
    "image_size": 384, "patch_size": 14,
}  # fmt: skip


@dataclass(frozen=True)
class ModuleSize:
    """Bytes of a component's weights, as diffusers' group offloading would stream them.

    `blocks` are the members of the component's direct ModuleLists in execution order (diffusers' block-level
    groups of one); the rest (`remainder`) moves as one group for every forward. Leaf-level offloading moves
    one Linear/Conv/Embedding at a time: `largest_leaf` bytes, `largest_leaf_numel` weights.
    """

    total: int
    blocks: tuple[int, ...] = ()
    largest_leaf: int = 0
    largest_leaf_numel: int = 0
    leaf_total: int = 0

    @property
    def remainder(self) -> int:
        return self.total - sum(self.blocks)

    @property
    def not_in_leaves(self) -> int:
        return self.total - self.leaf_total


def _tensor_bytes(tensors: Iterator[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def module_size(module: torch.nn.Module) -> ModuleSize:
    """Sizes from the module's actual parameters and buffers (on any device, `meta` included)."""
    blocks: list[int] = []
    for child in module.children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
            blocks += [_tensor_bytes(itertools.chain(b.parameters(), b.buffers())) for b in child]
    leaves = [m for m in module.modules() if isinstance(m, _GO_LC_SUPPORTED_PYTORCH_LAYERS)]
    leaf_bytes = [_tensor_bytes(itertools.chain(m.parameters(), m.buffers())) for m in leaves]
    return ModuleSize(
        total=_tensor_bytes(itertools.chain(module.parameters(), module.buffers())),
        blocks=tuple(blocks),
        largest_leaf=max(leaf_bytes, default=0),
        largest_leaf_numel=max((sum(p.numel() for p in m.parameters()) for m in leaves), default=0),
        leaf_total=sum(leaf_bytes),
    )


@dataclass(frozen=True)
class ModelConfigs:
    """The five configurations that decide memory: diffusers configs as dicts, transformers configs as dicts."""

    transformer: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]
    image_encoder: dict[str, Any]
    vae: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def published(cls) -> ModelConfigs:
        return cls(PUBLISHED_TRANSFORMER, PUBLISHED_TEXT_ENCODER, PUBLISHED_TEXT_ENCODER_2, PUBLISHED_IMAGE_ENCODER)

    @classmethod
    def from_folder(
        cls, root: str | os.PathLike, variant: str = "original", transformer: dict[str, Any] | None = None
    ) -> ModelConfigs:
        """Read the config.json files of a local model root laid out like the hub repos (see ModelSource); the
        `transformer` config where it is given (a single-file transformer's, and the root may lack its repo).

        A missing folder raises ModelsMissingError with the same message loading would give.
        """
        source = ModelSource(models_dir=root)

        def read(repo: str, subfolder: str = "") -> dict[str, Any]:
            folder = source.folder(repo, (subfolder,) if subfolder else ())
            return json.loads((folder / subfolder / "config.json").read_text())

        return cls(
            transformer=transformer if transformer is not None else read(TRANSFORMER_REPOS[variant]),
            text_encoder=read(HUNYUAN_REPO, "text_encoder"),
            text_encoder_2=read(HUNYUAN_REPO, "text_encoder_2"),
            image_encoder=read(REDUX_REPO, "image_encoder"),
            vae=read(HUNYUAN_REPO, "vae"),
        )

    @classmethod
    def cached(
        cls, cache_dir: str | os.PathLike, variant: str = "original", transformer: dict[str, Any] | None = None
    ) -> ModelConfigs:
        """The configs of the repos in a hub cache (`--hf-cache`), read without downloading; each one not cached
        is the published one, which is what would be downloaded in its place."""
        source = ModelSource(cache_dir=Path(cache_dir))
        published = cls.published()

        def read(name: str, repo: str, subfolder: str = "") -> dict[str, Any]:
            folder = source.cached_folder(repo, (subfolder,) if subfolder else ())
            if folder is None:
                return getattr(published, name)
            return json.loads((folder / subfolder / "config.json").read_text())

        return cls(
            transformer=transformer if transformer is not None else read("transformer", TRANSFORMER_REPOS[variant]),
            text_encoder=read("text_encoder", HUNYUAN_REPO, "text_encoder"),
            text_encoder_2=read("text_encoder_2", HUNYUAN_REPO, "text_encoder_2"),
            image_encoder=read("image_encoder", REDUX_REPO, "image_encoder"),
            vae=read("vae", HUNYUAN_REPO, "vae"),
        )

    @classmethod
    def of(cls, models: ModelSet) -> ModelConfigs:
        """The configs of a loaded set (of a component out of memory, as it was loaded)."""

        def config(name: str) -> dict[str, Any]:
            module = getattr(models, name)
            if module is None:
                return models.loader.configs[name]
            return dict(module.config) if isinstance(module.config, dict) else module.config.to_dict()

        return cls(**{name: config(name) for name in COMPONENTS})


def _clean(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "class"}


def build_meta_models(
    configs: ModelConfigs, transformer_dtype: torch.dtype, encoder_dtype: torch.dtype, fp8: bool = False
) -> dict[str, torch.nn.Module]:
    """The five components on the `meta` device, in the dtypes the app loads them in (no memory is used).

    The transformer's output head is float32 as `keep_output_head_in_float32` makes it; with `fp8` diffusers'
    layerwise casting is enabled exactly as `enable_fp8` does on the real model.
    """
    with torch.device("meta"):
        transformer = HunyuanVideoFramepackTransformer3DModel.from_config(configs.transformer)
        vae = AutoencoderKLHunyuanVideo.from_config(configs.vae)
        text_encoder = LlamaModel(LlamaConfig.from_dict(_clean(configs.text_encoder)))
        text_encoder_2 = CLIPTextModel(CLIPTextConfig.from_dict(_clean(configs.text_encoder_2)))
        image_encoder = SiglipVisionModel(SiglipVisionConfig.from_dict(_clean(configs.image_encoder)))
    # nn.Module.to, not ModelMixin.to: the latter warns about float32 modules that the head handles below.
    torch.nn.Module.to(transformer, transformer_dtype)
    torch.nn.Module.to(vae, encoder_dtype)
    for module in (text_encoder, text_encoder_2, image_encoder):
        module.to(encoder_dtype)
    transformer.norm_out.float()
    transformer.proj_out.float()
    if fp8:
        enable_fp8(transformer)
    return {
        "transformer": transformer,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "image_encoder": image_encoder,
        "vae": vae,
    }


@dataclass(frozen=True)
class ModelSizes:
    """Weight sizes of every component, the configs behind them, and the dtypes they were sized in.

    `transformer_loaded` is the most the transformer takes while it loads (fp8 is cast tensor by tensor as it is
    read, so that is its fp8 size too). `quantized` names the GGUF quantisation of a quantised transformer.
    """

    components: dict[str, ModuleSize]
    configs: ModelConfigs
    transformer_dtype: torch.dtype
    encoder_dtype: torch.dtype
    fp8: bool
    transformer_loaded: int
    quantized: str = ""

    def __getitem__(self, name: str) -> ModuleSize:
        return self.components[name]

    @property
    def total(self) -> int:
        return sum(size.total for size in self.components.values())

    @classmethod
    def from_configs(
        cls,
        configs: ModelConfigs,
        transformer_dtype: torch.dtype,
        encoder_dtype: torch.dtype,
        fp8: bool = False,
        transformer_format: str | None = None,
        transformer_file: TransformerFile | None = None,
    ) -> ModelSizes:
        """Sizes of the components of `configs` in the dtypes given, the transformer stored as `transformer_format`
        says (see `checkpoints.FORMATS`) or as `transformer_file` holds it (its header's bytes)."""
        fmt = transformer_file.format if transformer_file is not None else transformer_format
        fp8 = fp8 or fmt == "fp8"
        meta = build_meta_models(configs, transformer_dtype, encoder_dtype, fp8)
        quantized = fmt if fmt in GGUF_BLOCKS else ""
        if quantized:
            format_sizes(meta["transformer"], quantized, transformer_file)
        sizes = {name: module_size(module) for name, module in meta.items()}
        return cls(sizes, configs, transformer_dtype, encoder_dtype, fp8, sizes["transformer"].total, quantized)

    @classmethod
    def of(cls, models: ModelSet) -> ModelSizes:
        """Sizes of a loaded model set, from its actual tensors (fp8 if its transformer is layerwise-cast)."""
        def size(name: str) -> ModuleSize:
            module = getattr(models, name)
            return module_size(module) if module is not None else models.loader.sizes[name]

        sizes = {name: size(name) for name in COMPONENTS}
        fp8 = models.placement.plan.fp8 if models.transformer is None else has_fp8(models.transformer)
        quantized = models.loader.quantized if models.loader is not None else ""
        return cls(sizes, ModelConfigs.of(models), models.dtype, models.vae.dtype, fp8, sizes["transformer"].total, quantized)


@lru_cache(maxsize=8)
def published_sizes(
    transformer_dtype: torch.dtype = torch.bfloat16, encoder_dtype: torch.dtype = torch.float16, fp8: bool = False
) -> ModelSizes:
    return ModelSizes.from_configs(ModelConfigs.published(), transformer_dtype, encoder_dtype, fp8)


@dataclass(frozen=True)
class LoraBytes:
    """What a job's LoRAs weigh besides the transformer's sizes: their adapters in the compute dtype (0 for a
    loaded set, whose transformer holds them already), and the weights of the layers they touch (kept aside
    while fused, to be put back exactly)."""

    adapters: int
    touched: int


def file_configs(
    models_dir: str | os.PathLike | None, variant: str, transformer_file: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ModelConfigs:
    """The configs a plan sizes: a local model root's, else those in the hub cache `cache_dir` (published where
    not cached), else the published ones; the transformer's taken as loading takes it for a single-file
    transformer (its repo's config where at hand, else the published one)."""
    transformer = None
    if transformer_file is not None:
        cache = DEFAULT_CACHE_DIR if cache_dir is None else cache_dir
        transformer = ModelSource(models_dir, cache, transformer_file=transformer_file).transformer_config(variant)
    if models_dir is not None:
        return ModelConfigs.from_folder(models_dir, variant, transformer)
    if cache_dir is not None:
        return ModelConfigs.cached(cache_dir, variant, transformer)
    published = ModelConfigs.published()
    return published if transformer is None else replace(published, transformer=transformer)

