"""What a model set is: its components with weights, their dtypes and devices, and the transformer's own needs
(its float32 output head, compiled blocks)."""

from __future__ import annotations

import os
from collections import OrderedDict
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
from transformers import (
    CLIPTextModel,
    LlamaModel,
    PreTrainedTokenizerBase,
    SiglipImageProcessorPil,
    SiglipVisionModel,
)

# A model set's components with weights, in the order they load (the transformer first: see `load_models`).
COMPONENTS = ("transformer", "text_encoder", "text_encoder_2", "image_encoder", "vae")


LLAMA_MAX_TOKENS = 256  # FramePack crops the Llama prompt to this many tokens
TEXT_LENGTH = 512  # the transformer's fixed text length (padded or cropped, with a mask)
CLIP_MAX_TOKENS = 77


# A model set is placed, reloaded and given LoRAs by parts above this one (`framepack.memory`, `framepack.loading`,
# `framepack.lora`); it names only what it asks of them, so nothing here imports those parts.


class Placed(Protocol):
    """A model set's placement (`framepack.memory.placement.Placement`): the plan it follows, where it computes, and
    phases that bring modules to the GPU."""

    plan: Any

    @property
    def device(self) -> torch.device: ...

    def phase(self, *modules: torch.nn.Module) -> AbstractContextManager[None]: ...


class Reloader(Protocol):
    """A model set's loader (`framepack.loading.ComponentLoader`): a component back in memory after it left."""

    transformer_dtype: torch.dtype
    plan: Any
    sizes: dict[str, Any]
    configs: dict[str, dict[str, Any]]
    quantized: str

    def load(self, name: str) -> torch.nn.Module: ...


class Adapters(Protocol):
    """The LoRAs on a model set's transformer (`framepack.lora.LoraState`)."""

    def memory(self) -> Any: ...


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
    placement: Placed | None = None  # where the components live and move (None: all on one device)
    loras: Adapters | None = None  # the LoRAs on the transformer (see framepack.lora)
    fuse_loras: bool | None = None  # merge LoRAs into the weights; None: where memory allows
    loader: Reloader | None = None  # loads a component again after it left memory
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



def meta_transformer(config: dict[str, Any], dtype: torch.dtype | None = None) -> HunyuanVideoFramepackTransformer3DModel:
    """The transformer of `config` on the meta device: its modules and shapes, no memory."""
    with torch.device("meta"):
        transformer = HunyuanVideoFramepackTransformer3DModel.from_config(config)
    if dtype is not None:
        torch.nn.Module.to(transformer, dtype)
    return transformer
