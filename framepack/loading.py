"""Loading a model set: every component from its source, placed at once as a memory plan says.

This sits above what the components are (`framepack.models`), how memory is planned (`framepack.plan`) and how
components are placed (`framepack.placement`).
"""

from __future__ import annotations

import logging

import torch
from diffusers import AutoencoderKLHunyuanVideo
from transformers import AutoTokenizer, CLIPTextModel, LlamaModel, SiglipImageProcessorPil, SiglipVisionModel

from .attention import set_attention
from .models import ModelSet, ModelSource, compile_blocks, default_device, load_transformer, resolve_dtypes
from .placement import Placement, place_component
from .plan import MemoryPlan

logger = logging.getLogger(__name__)


def load_models(
    variant: str,
    source: ModelSource | None = None,
    device: torch.device | str | None = None,
    dtype: str | None = None,
    attention: str = "auto",
    compile: bool = False,
    plan: MemoryPlan | None = None,
) -> ModelSet:
    """Load every component of `variant` ("original" or "f1") onto `device`.

    Components are loaded one at a time from safetensors, so system memory never holds the whole set twice.
    `attention` picks the transformer's attention backend ("auto": the best one installed); `compile` runs
    its blocks through torch.compile. With a memory `plan` (see `framepack.plan`) every component is
    loaded on the CPU and placed by the plan at once (fp8, streaming, on the GPU only while used);
    without one everything goes to `device`.
    """
    source = source or ModelSource()
    if plan is not None:
        device = torch.device(plan.device)
    device = torch.device(device) if device is not None else default_device()
    transformer_dtype, encoder_dtype = resolve_dtypes(dtype, device)

    def place(name: str, module: torch.nn.Module) -> torch.nn.Module:
        module.eval().requires_grad_(False)
        return place_component(name, module, plan) if plan is not None else module.to(device)

    # Resolve every folder before loading anything, so a missing download is reported at once.
    hunyuan, redux, transformer_folder = source.folders(variant)

    # One component at a time, each placed before the next loads; the transformer first, so that fp8 storage
    # shrinks it before the encoders take their share of RAM.
    logger.info("Loading the %s transformer from %s", variant, transformer_folder)
    transformer = place("transformer", load_transformer(transformer_folder, transformer_dtype))
    logger.info("Loading text encoders from %s", hunyuan)
    text_encoder = place("text_encoder", LlamaModel.from_pretrained(hunyuan / "text_encoder", dtype=encoder_dtype))
    text_encoder_2 = place("text_encoder_2", CLIPTextModel.from_pretrained(hunyuan / "text_encoder_2", dtype=encoder_dtype))
    tokenizer = AutoTokenizer.from_pretrained(hunyuan / "tokenizer")
    tokenizer_2 = AutoTokenizer.from_pretrained(hunyuan / "tokenizer_2")
    logger.info("Loading VAE from %s", hunyuan)
    vae = place("vae", AutoencoderKLHunyuanVideo.from_pretrained(hunyuan / "vae", torch_dtype=encoder_dtype))
    logger.info("Loading image encoder from %s", redux)
    # The PIL backend, as FramePack ran it: a torchvision-based processor may resize differently.
    feature_extractor = SiglipImageProcessorPil.from_pretrained(redux / "feature_extractor")
    image_encoder = place("image_encoder", SiglipVisionModel.from_pretrained(redux / "image_encoder", dtype=encoder_dtype))
    backend, _ = set_attention(transformer, attention, device)
    if compile:
        compile_blocks(transformer)

    return ModelSet(
        variant=variant,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        vae=vae,
        feature_extractor=feature_extractor,
        image_encoder=image_encoder,
        transformer=transformer,
        sources=source.sources(variant),
        attention=backend,
        compiled=compile,
        placement=Placement(plan) if plan is not None else None,
    )
