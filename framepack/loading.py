"""Loading a model set: every component from its source, placed at once as a memory plan says.

This sits above what the components are (`framepack.models`), how memory is planned (`framepack.plan`) and how
components are placed (`framepack.placement`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
from safetensors import safe_open
from transformers import (
    AutoTokenizer,
    CLIPTextModel,
    LlamaConfig,
    LlamaModel,
    SiglipImageProcessorPil,
    SiglipVisionModel,
)

from .memory.placement import Placement, place_component, stream_from_files
from .memory.planning import MemoryPlan, MemoryPlanError, plan_for_settings
from .memory.sensing import detect_device, held_by_process
from .memory.sizes import ModelSizes, ModuleSize, module_size
from .models import ModelSet, ModelSource
from .models import comfyui
from .models.attention import set_attention
from .models.checkpoints import load_transformer_file, transformer_from_tensors
from .models.components import (
    COMPONENTS,
    compile_blocks,
    default_device,
    load_transformer,
    resolve_dtypes,
)
from .settings import Settings

logger = logging.getLogger(__name__)


# Components that may leave memory between phases when RAM is short; the VAE, small and used every section, stays.
RELEASABLE = ("transformer", "text_encoder", "text_encoder_2", "image_encoder")
TRANSIENT = ("text_encoder", "text_encoder_2", "image_encoder")  # released right after their phase


@dataclass
class ComponentLoader:
    """Loads any component of a set, placed as the plan says: once at the start, again after it left memory.

    `sizes` and `configs` record each component as first loaded, so a plan can be made while one is out.
    """

    variant: str
    source: ModelSource
    device: torch.device
    transformer_dtype: torch.dtype
    encoder_dtype: torch.dtype
    attention: str
    compile: bool
    plan: MemoryPlan | None
    sizes: dict[str, ModuleSize] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    attention_used: str = "sdpa"
    quantized: str = ""  # the GGUF quantisation of a single-file transformer, once loaded

    def load(self, name: str) -> torch.nn.Module:
        hunyuan, redux, transformer_folder = self.source.folders(self.variant)
        logger.info("Loading the %s", name.replace("_", " "))
        dtype = self.encoder_dtype
        if name == "transformer":
            fp8 = self.plan is not None and self.plan.fp8
            matmuls = self.plan is not None and self.plan.fp8_matmuls
            if self.source.transformer_file is not None:
                config = self.source.transformer_config(self.variant)
                module, file = load_transformer_file(
                    self.source.transformer_file, config, self.variant, self.transformer_dtype, fp8, matmuls
                )
                self.quantized = file.format if file.gguf else ""
            elif fp8:
                module = load_transformer_fp8(transformer_folder, self.transformer_dtype, matmuls)
            else:
                module = load_transformer(transformer_folder, self.transformer_dtype)
        elif name == "text_encoder" and self.plan is not None and self.plan.text_encoder.offload_type == "from_file":
            module = llama_from_files(hunyuan / "text_encoder", dtype, self.device, self.source.comfyui_dir)
        elif self.source.comfyui_dir is not None:  # ComfyUI's files, with the repos' configs
            folder = redux / "image_encoder" if name == "image_encoder" else hunyuan / name
            module = comfyui.load_component(name, comfyui.component_file(self.source.comfyui_dir, name), folder, dtype)
        elif name == "text_encoder":
            module = LlamaModel.from_pretrained(hunyuan / "text_encoder", dtype=dtype)
        elif name == "text_encoder_2":
            module = CLIPTextModel.from_pretrained(hunyuan / "text_encoder_2", dtype=dtype)
        elif name == "vae":
            module = AutoencoderKLHunyuanVideo.from_pretrained(hunyuan / "vae", torch_dtype=dtype)
        else:
            module = SiglipVisionModel.from_pretrained(redux / "image_encoder", dtype=dtype)
        module.eval().requires_grad_(False)
        module = place_component(name, module, self.plan) if self.plan is not None else module.to(self.device)
        self.sizes[name] = module_size(module)
        config = module.config
        self.configs[name] = dict(config) if isinstance(config, dict) else config.to_dict()
        if name == "transformer":
            self.attention_used, _ = set_attention(module, self.attention, self.device)
            if self.compile:
                compile_blocks(module)
        return module


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
    without one everything goes to `device`. With a per-phase lifetime (RAM is short) the text encoders and
    the image encoder are loaded once to check them, then leave memory until a phase needs them.
    """
    source = source or ModelSource()
    if plan is not None:
        device = torch.device(plan.device)
    device = torch.device(device) if device is not None else default_device()
    transformer_dtype, encoder_dtype = resolve_dtypes(dtype, device)
    loader = ComponentLoader(variant, source, device, transformer_dtype, encoder_dtype, attention, compile, plan)
    hunyuan, redux, _ = source.folders(variant)  # every folder resolved before anything loads
    per_phase = plan is not None and plan.lifetime == "phase"
    # One component at a time, each placed before the next loads. The transformer first, so that fp8 storage
    # shrinks it before the encoders take their share of RAM; per phase, the encoders first, each alone.
    order = [*TRANSIENT, "transformer", "vae"] if per_phase else list(COMPONENTS)
    loaded = {}
    for name in order:
        module = loader.load(name)
        loaded[name] = None if per_phase and name in TRANSIENT else module
        del module
        gc.collect()
    return ModelSet(
        variant=variant,
        tokenizer=AutoTokenizer.from_pretrained(hunyuan / "tokenizer"),
        tokenizer_2=AutoTokenizer.from_pretrained(hunyuan / "tokenizer_2"),
        # The PIL backend, as FramePack ran it: a torchvision-based processor may resize differently.
        feature_extractor=SiglipImageProcessorPil.from_pretrained(redux / "feature_extractor"),
        sources=source.sources(variant),
        attention=loader.attention_used,
        compiled=compile,
        placement=Placement(plan) if plan is not None else None,
        loader=loader,
        **loaded,
    )


def release(models: ModelSet, name: str) -> None:
    """Let a component leave memory (it comes back through `models.loader`). A released transformer takes its
    LoRA adapters with it; the next job applies them again."""
    if getattr(models, name) is None:
        return
    setattr(models, name, None)
    if name == "transformer":
        models.loras = None
    gc.collect()
    if models.device.type == "cuda":
        torch.cuda.empty_cache()


def ensure_loaded(models: ModelSet, *names: str) -> list[str]:
    """Load the named components that are out of memory; returns which were. With a per-phase lifetime the text
    encoders need the transformer's room, so it leaves first."""
    missing = [name for name in names if getattr(models, name) is None]
    if missing and lifetime(models) == "phase" and {"text_encoder", "text_encoder_2"} & set(missing):
        release(models, "transformer")
    for name in missing:
        setattr(models, name, models.loader.load(name))
    return missing


def phase(models: ModelSet, *modules: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Bring CPU-resident modules to the GPU for one phase of the job (low-memory mode); else nothing."""
    return models.placement.phase(*modules) if models.placement is not None else contextlib.nullcontext()



@contextlib.contextmanager
def components(models: ModelSet, *names: str) -> Iterator[None]:
    """The named components in memory (and on the GPU, in low mode) for the block; with a per-phase lifetime
    the encoders leave memory after it, however the block ends (a failure must not leave a 15 GB Llama in RAM)."""
    try:
        ensure_loaded(models, *names)
        modules = [getattr(models, name) for name in names]
        with models.placement.phase(*modules) if models.placement is not None else contextlib.nullcontext():
            yield
    finally:
        if lifetime(models) == "phase":
            for name in names:
                if name in TRANSIENT:
                    release(models, name)


def lifetime(models: ModelSet) -> str:
    """"phase" when the plan keeps components in memory only while a phase needs them, else "resident"."""
    return models.placement.plan.lifetime if models.placement is not None else "resident"


def llama_from_files(
    folder: str | os.PathLike, dtype: torch.dtype, device: torch.device, comfyui_dir: Path | None = None
) -> LlamaModel:
    """The Llama text encoder with its decoder layers left in its safetensors files, each read onto `device`
    as it runs (see `placement.stream_from_files`); its embedding and final norm are read onto `device` now. With
    `comfyui_dir` the weights are ComfyUI's file, the config still the repo folder's."""
    folder = Path(folder)
    config = LlamaConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = LlamaModel._from_config(config, dtype=dtype)  # the attention implementation from_pretrained picks
    model.rotary_emb = type(model.rotary_emb)(config=model.config)  # computed at construction, not in the files
    files = {}
    if comfyui_dir is not None:
        files = comfyui.llama_files(comfyui.component_file(comfyui_dir, "text_encoder"))
    for shard in sorted(folder.glob("*.safetensors")) if comfyui_dir is None else ():
        with safe_open(str(shard), "pt") as tensors:
            files.update({key.removeprefix("model."): (shard, key) for key in tensors.keys()})
    expected = {name for name, _ in model.named_parameters()}
    if set(files) != expected:
        missing = sorted(expected - set(files)) or sorted(set(files) - expected)
        raise ValueError(f"the Llama text encoder in {folder} does not match its config (e.g. {missing[0]})")
    stream_from_files(model, "layers", files, device, dtype)
    return model


def load_transformer_fp8(
    folder: str | os.PathLike, dtype: torch.dtype, matmuls: bool = False
) -> HunyuanVideoFramepackTransformer3DModel:
    """The transformer of a model folder with fp8 storage (see `placement.enable_fp8`; `matmuls`: multiplying
    in fp8 too), cast as it is read."""
    folder = Path(folder)

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for shard in sorted(folder.glob("*.safetensors")):
            with safe_open(str(shard), "pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)

    config = HunyuanVideoFramepackTransformer3DModel.load_config(folder)
    return transformer_from_tensors(config, tensors(), folder.name, dtype, fp8=True, matmuls=matmuls)


def replan(
    models: ModelSet, placement: Placement, settings: Settings, *, vram_free: int | None = None
) -> Placement:
    """Re-plan a placed set for a job's settings and re-place what changed; MemoryPlanError if it will not fit.

    The mode, fp8 and how the Llama is read stay as loaded (switching them means moving or reloading tens of GB,
    and a plan of a loaded set sees the Llama's sizes, not where they are). What a job can
    change is how many transformer blocks stay on the GPU ("GPU memory to preserve", the resolution) and
    whether the VAE tiles. Free GPU memory is measured now, counting what this process holds as free
    (`vram_free` overrides it); free RAM is taken from the plan the set was loaded with.
    """
    current = placement.plan
    device = torch.device(current.device)
    if vram_free is None and current.mode != "cpu":
        measured = detect_device(device).vram_free
        vram_free = current.vram_free if measured is None else measured + held_by_process(device)
    lora = models.loras.memory() if models.loras is not None else None
    plan = plan_for_settings(
        settings, vram_free, current.ram_free, fp8=current.fp8, device=device, sizes=ModelSizes.of(models),
        mode=current.mode, swap_free=current.swap_free, lora=lora,
        llama_from_files=current.text_encoder.offload_type == "from_file",
    )  # fmt: skip
    plan = replace(plan, fp8_matmuls=current.fp8_matmuls, transformer_weights=current.transformer_weights)
    if not plan.fits:
        raise MemoryPlanError(plan)
    if models.loader is not None:
        models.loader.plan = plan  # what leaves memory comes back placed by the new plan
    if plan.transformer != current.transformer and models.transformer is not None:
        place_component("transformer", models.transformer, plan)
    if plan.vae_tiling:
        models.vae.enable_tiling()
    elif current.vae_tiling:
        models.vae.disable_tiling()
    return Placement(plan)

