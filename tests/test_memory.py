"""Memory planning and placement: real architectures on the meta device, the tiny set placed on the CPU."""

from __future__ import annotations

import dataclasses
import json
import re
import weakref
from pathlib import Path

import pytest
import torch
from helpers import (
    MODEL_CONFIGS,
    TINY_MODELS,
    check_memory,
    low_plan_on_cpu,
    needs_shared,
    transformer_inputs,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from framepack.engine.conditioning import encode_prompt
from framepack.loading import load_models, replan
from framepack.media.images import BUCKETS_640
from framepack.memory.placement import (
    Placement,
    apply_plan,
    execution_device,
    on_device,
)
from framepack.memory.planning import (
    GPU_OVERHEAD,
    RAM_OVERHEAD,
    MemoryPlanError,
    check_before_loading,
    plan_memory,
)
from framepack.memory.sensing import DeviceMemory, detect_device
from framepack.memory.sizes import (
    GB,
    ModelConfigs,
    ModelSizes,
    build_meta_models,
    published_sizes,
)
from framepack.memory.workload import (
    section_tokens,
    transformer_activation_bytes,
    vae_decode_bytes,
    vae_encode_bytes,
)
from framepack.models import ModelSource
from framepack.models.components import COMPONENTS
from framepack.models.fp8 import FP8, enable_fp8, has_fp8
from framepack.settings import Settings

needs_configs = pytest.mark.skipif(
    not MODEL_CONFIGS.is_dir(), reason=f"the real model configs are not beside the checkout ({MODEL_CONFIGS} is missing)"
)
GPU = torch.device("cuda")


def shared_configs() -> ModelConfigs:
    transformer = json.loads((MODEL_CONFIGS / "framepack_transformer.json").read_text())
    encoders = json.loads((MODEL_CONFIGS / "text_encoders.json").read_text())
    return ModelConfigs(transformer, encoders["text_encoder"], encoders["text_encoder_2"], encoders["image_encoder"])


@pytest.fixture(scope="module")
def real_sizes() -> ModelSizes:
    return ModelSizes.from_configs(shared_configs(), torch.bfloat16, torch.float16)


def bytes_of(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


# ------------------------------------------------------------------------------------------ sizes


@needs_configs
def test_embedded_configs_are_the_published_ones():
    shared = shared_configs()
    published = ModelConfigs.published()
    assert {k: v for k, v in shared.transformer.items() if not k.startswith("_")} == published.transformer
    for name in ("text_encoder", "text_encoder_2", "image_encoder"):
        assert {k: v for k, v in getattr(shared, name).items() if k != "class"} == getattr(published, name), name


@needs_configs
def test_real_component_sizes(real_sizes):
    transformer = real_sizes["transformer"]
    # 12.87 B parameters in bf16, with the output head (norm_out 37.7 M, proj_out 0.4 M bytes) in float32.
    assert 25.70 * GB < transformer.total < 25.80 * GB
    assert transformer.total == 2 * 12_874_314_816 + (37_761_024 + 393_344)
    assert len(transformer.blocks) == 60
    assert set(transformer.blocks[:20]) == {679_662_592} and set(transformer.blocks[20:]) == {283_183_616}
    assert transformer.remainder == transformer.total - 20 * 679_662_592 - 40 * 283_183_616
    assert 0.8 * GB < transformer.remainder < 0.9 * GB
    llama = real_sizes["text_encoder"]
    assert 15.0 * GB < llama.total < 15.02 * GB and len(llama.blocks) == 32
    assert llama.remainder > 1.05 * GB  # the 128k-token embedding table moves as one piece
    assert 0.24 * GB < real_sizes["text_encoder_2"].total < 0.25 * GB
    assert 0.85 * GB < real_sizes["image_encoder"].total < 0.86 * GB
    assert 0.49 * GB < real_sizes["vae"].total < 0.50 * GB
    assert published_sizes().components == real_sizes.components


@needs_configs
def test_fp8_sizes_follow_diffusers_skip_rules(real_sizes):
    fp8 = ModelSizes.from_configs(shared_configs(), torch.bfloat16, torch.float16, fp8=True)
    transformer = build_meta_models(shared_configs(), torch.bfloat16, torch.float16)["transformer"]
    # Independently of diffusers: leaf layers whose names match none of the skip patterns go to 1 byte.
    skip = ("norm", "x_embedder", "context_embedder", "pos_embed", "patch_embed", "^proj_in$", "^proj_out$")
    cast = 0
    for name, module in transformer.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv3d, torch.nn.Embedding)):
            parts = name.split(".")
            prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
            if not any(re.search(p, prefix) for p in skip for prefix in prefixes):
                cast += sum(p.numel() for p in module.parameters())
    expected = real_sizes["transformer"].total - cast  # bf16 (2 bytes) -> fp8 (1 byte)
    assert fp8["transformer"].total == expected
    # The AdaLayerNorm modulation layers stay bf16, so fp8 storage is 16.7 GB rather than half of 25.7 GB.
    assert 16.6 * GB < fp8["transformer"].total < 16.7 * GB
    assert set(fp8["transformer"].blocks[:20]) == {453_114_880}
    # fp8 is cast tensor by tensor as the weights are read: loading never holds the bf16 transformer.
    assert fp8.transformer_loaded == fp8["transformer"].total
    assert fp8["text_encoder"] == real_sizes["text_encoder"]


@pytest.fixture(scope="module")
def fresh_models():
    """A tiny set of our own: placement changes modules, so the session's shared set must not be used."""
    if not TINY_MODELS.is_dir():
        pytest.skip(f"the shared fixtures are not beside the checkout ({TINY_MODELS} is missing)")

    def load(variant: str = "original"):
        return load_models(variant, ModelSource(models_dir=TINY_MODELS), device="cpu", dtype="float32")

    return load


@needs_shared
def test_sizes_from_config_files_match_the_loaded_tiny_models(fresh_models):
    models = fresh_models("f1")
    predicted = ModelSizes.from_configs(ModelConfigs.from_folder(TINY_MODELS, "f1"), torch.float32, torch.float32)
    actual = ModelSizes.of(models)
    for name in COMPONENTS:
        module = getattr(models, name)
        assert predicted[name] == actual[name], name
        assert actual[name].total == bytes_of(module) > 0, name
    blocks = [*models.transformer.transformer_blocks, *models.transformer.single_transformer_blocks]
    assert actual["transformer"].blocks == tuple(bytes_of(b) for b in blocks)

    fp8 = ModelSizes.from_configs(ModelConfigs.from_folder(TINY_MODELS, "f1"), torch.float32, torch.float32, fp8=True)
    enable_fp8(models.transformer)
    assert bytes_of(models.transformer) == fp8["transformer"].total < actual["transformer"].total
    assert ModelSizes.of(models).fp8 and ModelSizes.of(models)["transformer"] == fp8["transformer"]


# ------------------------------------------------------------------------------------ activations


@pytest.mark.parametrize("height, width", [(128, 128), (144, 176)])
@needs_shared
def test_section_tokens_are_what_the_transformer_packs(tiny_models, height, width):
    transformer = tiny_models("original").transformer  # read only: a hook that is removed again
    seen = []
    handle = transformer.transformer_blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            transformer(**transformer_inputs(transformer, height, width, window=3))
    finally:
        handle.remove()
    assert seen == [section_tokens(height, width, 3)[1]]
    assert section_tokens(height, width, 3)[0] == 3 * (height // 16) * (width // 16)


class LiveTensors(TorchDispatchMode):
    """Peak bytes of the tensors alive at once while code runs on the meta device (storage counted once).

    `.item()` cannot run on meta tensors; the one the FramePack transformer calls reads the text length,
    answered with its maximum (512 text + 729 image tokens).
    """

    def __init__(self, scalar: int = 512 + 729):
        super().__init__()
        self.scalar, self.live, self.peak, self.storages = scalar, 0, 0, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            return self.scalar
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                key = tensor.untyped_storage()._cdata
                entry = self.storages.setdefault(key, [tensor.untyped_storage().nbytes(), 0])
                self.live += entry[0] if entry[1] == 0 else 0
                entry[1] += 1
                weakref.finalize(tensor, self._release, key)
        self.peak = max(self.peak, self.live)
        return out

    def _release(self, key: int) -> None:
        entry = self.storages[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.storages[key]


@pytest.fixture
def flash_like_sdpa(monkeypatch):
    """SDPA as a flash/memory-efficient kernel allocates it: the output and a float32 log-sum-exp, no scores."""

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        torch.empty(query.shape[:-1], device=query.device, dtype=torch.float32)
        return query.new_empty(*query.shape[:-1], value.shape[-1])

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)


@needs_configs
@pytest.mark.parametrize("height, width", [(608, 640), (416, 960)])
def test_transformer_activation_estimate_bounds_the_real_forward(flash_like_sdpa, height, width):
    configs = shared_configs()
    transformer = build_meta_models(configs, torch.bfloat16, torch.float16)["transformer"]
    inputs = transformer_inputs(transformer, height, width, 9, device="meta", dtype=torch.bfloat16)
    inputs["encoder_hidden_states"] = torch.empty(1, 512, 4096, device="meta", dtype=torch.bfloat16)
    inputs["encoder_attention_mask"] = torch.ones(1, 512, dtype=torch.bool, device="meta")
    inputs["image_embeds"] = torch.empty(1, 729, 1152, device="meta", dtype=torch.bfloat16)
    with torch.no_grad(), LiveTensors() as live:
        transformer(**inputs)
    estimate = transformer_activation_bytes(configs, height, width, 9)
    assert 1.9 * GB < live.peak < estimate < 1.4 * live.peak


@needs_configs
@pytest.mark.parametrize("tiled", [False, True])
def test_vae_estimates_bound_the_real_decode_and_encode(flash_like_sdpa, tiled):
    vae = build_meta_models(shared_configs(), torch.bfloat16, torch.float16)["vae"]
    if tiled:
        vae.enable_tiling()
    latents = torch.empty(1, 16, 5, 608 // 8, 640 // 8, device="meta", dtype=torch.float16)
    with torch.no_grad(), LiveTensors() as live:
        vae.decode(latents)
    estimate = vae_decode_bytes(dict(vae.config), 608, 640, 5, tiled)
    assert live.peak < estimate < 1.4 * live.peak
    assert live.peak > (15 * GB if not tiled else 2.5 * GB)  # tiling is what makes decoding fit a small GPU
    pixels = torch.empty(1, 3, 1, 608, 640, device="meta", dtype=torch.float16)
    with torch.no_grad(), LiveTensors() as live:
        vae.encode(pixels)
    assert live.peak < vae_encode_bytes(dict(vae.config), 608, 640, tiled) < 1.4 * live.peak


# ------------------------------------------------------------------------------------------ plans


@pytest.mark.parametrize("variant", ["original", "f1"])
@pytest.mark.parametrize("fp8", [False, True])
def test_low_memory_mode_stays_within_6_gb_at_every_640_bucket(variant, fp8):
    sizes = published_sizes(fp8=fp8)
    worst = plan_memory(6 * GB, 64 * GB, resolution=640, variant=variant, fp8=fp8, preserve_gb=6)
    for height, width in BUCKETS_640:
        plan = plan_memory(6 * GB, 64 * GB, height=height, width=width, window=9, variant=variant, fp8=fp8, preserve_gb=6)
        assert plan.mode == "low" and plan.fits_gpu, (height, width)
        assert plan.peak_gpu <= 6 * GB, (height, width, plan.peak_gpu)
        assert plan.transformer.offload_type == "block_level" and plan.transformer.use_stream
        assert plan.transformer.resident_blocks == 0 and plan.vae_tiling
        # The sampling peak counts the streamed weights *and* one section's activations.
        streamed = sizes["transformer"].remainder + 2 * max(sizes["transformer"].blocks)
        activations = transformer_activation_bytes(sizes.configs, height, width, 9)
        sampling = plan.phase("sampling")
        assert sampling.gpu_bytes >= streamed + activations + GPU_OVERHEAD
        decode = vae_decode_bytes(sizes.configs.vae, height, width, 18, True)
        assert plan.phase("decoding").gpu_bytes >= sizes["vae"].total + decode
        assert plan.peak_gpu <= worst.peak_gpu
    assert worst.peak_gpu <= 6 * GB


def test_high_mode_above_60_gb_free_and_low_mode_otherwise():
    high = plan_memory(61 * GB, 128 * GB)
    assert high.mode == "high" and high.fits and not high.vae_tiling
    everything = published_sizes().total
    assert 42 * GB < everything < 43 * GB
    for phase in high.phases:
        assert len(phase.on_gpu) == 5 and phase.on_cpu == () and phase.gpu_bytes > everything
        assert phase.ram_bytes < 6 * GB
    assert high.loading_ram == RAM_OVERHEAD + published_sizes()["transformer"].total
    for free in (60 * GB, 59 * GB, 24 * GB):
        low = plan_memory(free, 128 * GB)
        assert low.mode == "low" and low.transformer.offload_type == "block_level" and low.vae_tiling
        assert low.text_encoder.offload_type == "block_level"
        assert low.phase("sampling").on_gpu[0].startswith("transformer, streamed block by block")
        assert "Llama text encoder" in low.phase("sampling").on_cpu[1]
    assert plan_memory(None, 128 * GB).mode == "cpu"


def test_gpu_memory_to_preserve_decides_how_many_blocks_stay_resident():
    resident = {}
    for preserve in (0, 6, 12, 18, 22):
        plan = plan_memory(24 * GB, 64 * GB, preserve_gb=preserve)
        assert plan.fits
        if preserve <= 18:
            assert plan.transformer_gpu_weights <= 24 * GB - preserve * GB
        resident[preserve] = plan.transformer.resident_blocks
    assert resident[0] > resident[6] > resident[12] > resident[18] > resident[22] == 0
    # Where the weights cannot leave that much free, every block streams (as FramePack does) if it all fits.
    tight = plan_memory(6 * GB, 64 * GB, preserve_gb=6)
    assert tight.fits and tight.transformer.resident_blocks == 0 and not tight.transformer.record_stream
    assert any("less than the 6.0 GB you asked to preserve" in note for note in tight.notes)


def test_a_tiny_gpu_does_not_fit_and_the_plan_says_what_to_change():
    plan = plan_memory(3 * GB, 64 * GB)
    assert not plan.fits and not plan.fits_gpu and plan.fits_ram
    assert plan.transformer.offload_type == "leaf_level"  # the smallest footprint was tried
    text = plan.problem()
    assert "the GPU needs" in text and "3.0 GB is free" in text
    suggested = re.search(r"--resolution (\d+) needs ([\d.]+) GB", text)
    assert suggested and plan_memory(3 * GB, 64 * GB, resolution=int(suggested[1])).fits
    assert "more GPU memory" in text
    with pytest.raises(MemoryPlanError, match="--resolution") as raised:
        check_before_loading(Settings(), memory=DeviceMemory(GPU, "test GPU", 3 * GB, 4 * GB, 64 * GB, 64 * GB))
    assert raised.value.plan.peak_gpu == plan.peak_gpu


def test_too_little_ram_does_not_fit_and_fp8_is_suggested():
    plan = plan_memory(8 * GB, 24 * GB)
    assert plan.fits_gpu and not plan.fits_ram and plan.lifetime == "phase"  # even one component at a time
    assert any(a.startswith("--fp8") and "fits)" in a for a in plan.advice)
    assert plan_memory(8 * GB, 24 * GB, fp8=True).fits
    assert any("system memory" in a for a in plan.advice)
    assert not plan.transformer.pin_memory  # what may need swap is not page-locked
    assert plan_memory(8 * GB, 64 * GB).transformer.pin_memory
    ok = check_before_loading(Settings(), fp8=True, memory=DeviceMemory(GPU, "test GPU", 8 * GB, 8 * GB, 24 * GB, 64 * GB))
    assert ok.fits and ok.fp8


@pytest.mark.parametrize(
    "ram, fp8, fits", [(32, False, True), (24, True, True), (8, False, False), (8, True, False), (64, False, True)]
)
def test_a_6_gb_gpu_with_little_ram_and_no_swap(ram, fp8, fits):
    """FramePack's promise without asking for swap: where RAM is short, each component is in RAM only for its
    phase (the text encoders while prompts are encoded, the transformer the rest of the time)."""
    plan = plan_memory(6 * GB, ram * GB, fp8=fp8, swap_free=0)
    assert plan.fits == fits and plan.swap_needed == (0 if fits else plan.swap_needed)
    sizes = published_sizes(torch.bfloat16, torch.float16, fp8)
    resident = plan_memory(6 * GB, None, fp8=fp8)
    assert resident.lifetime == "resident"
    if plan.lifetime == "resident":
        assert ram == 64 and plan.peak_ram == resident.peak_ram
        return
    # Per phase, against the components' meta-device sizes: text encoding holds the encoders and the VAE and not
    # the transformer; sampling holds the transformer's streamed part and the VAE and not the encoders.
    text, sampling = plan.phase("text encoding"), plan.phase("sampling")
    streamed = sizes["transformer"].total - sum(sizes["transformer"].blocks[: plan.transformer.resident_blocks])
    # Where RAM cannot hold even the Llama alone (8 GB), only the layer being read from its files is in RAM.
    llama = sizes["text_encoder"].total if plan.text_encoder.offload_type != "from_file" else max(sizes["text_encoder"].blocks)
    assert (plan.text_encoder.offload_type == "from_file") == (ram == 8)
    encoders = llama + sizes["text_encoder_2"].total + sizes["vae"].total
    assert text.ram_bytes - resident.phase("text encoding").ram_bytes == encoders - (
        streamed + sizes["text_encoder"].total + sizes["text_encoder_2"].total + sizes["image_encoder"].total + sizes["vae"].total
    )  # fmt: skip
    assert sampling.ram_bytes == resident.phase("sampling").ram_bytes - (
        sizes["text_encoder"].total + sizes["text_encoder_2"].total + sizes["image_encoder"].total
    )
    assert not any("transformer" in item for item in text.on_cpu) and not any("Llama" in item for item in sampling.on_cpu)
    assert any("RAM is short" in note for note in plan.notes)
    assert plan.loading_ram < resident.loading_ram


def test_swap_makes_up_for_missing_ram_and_the_plan_says_so():
    short = plan_memory(8 * GB, 24 * GB)
    assert not short.fits_ram and short.swap_needed == short.peak_ram - 24 * GB > 0
    assert "more system memory" in short.problem()
    with_swap = plan_memory(8 * GB, 24 * GB, swap_free=short.swap_needed)
    assert with_swap.fits and with_swap.peak_ram == short.peak_ram
    assert any(f"{with_swap.swap_needed / GB:.1f} GB beyond free RAM will come from swap" in n for n in with_swap.notes)
    assert not with_swap.transformer.pin_memory  # page-locked memory could not be paged out
    too_little = plan_memory(8 * GB, 24 * GB, swap_free=short.swap_needed - GB)
    assert not too_little.fits and "of swap)" in too_little.problem()
    assert any(a.startswith("free 1.0 GB more system memory") for a in too_little.advice)
    assert plan_memory(8 * GB, 64 * GB, swap_free=100 * GB).swap_needed == 0
    memory_with_swap = DeviceMemory(GPU, "test GPU", 8 * GB, 8 * GB, 24 * GB, 24 * GB, short.swap_needed)
    assert check_before_loading(Settings(), memory=memory_with_swap).fits


@needs_shared
def test_check_before_loading_sizes_a_local_model_root():
    here = detect_device("cpu")
    plan = check_before_loading(Settings(variant="f1", resolution=128), models_dir=TINY_MODELS, memory=here)
    assert plan.mode == "cpu" and plan.fits
    assert plan.loading_ram < RAM_OVERHEAD + 0.1 * GB  # the tiny set, not the 13B model
    with pytest.raises(MemoryPlanError, match="system memory needs"):
        check_before_loading(Settings(), memory=dataclasses.replace(here, ram_free=8 * GB))  # published, float32


def test_loading_holds_one_component_at_a_time_in_high_mode():
    sizes = published_sizes(fp8=True)
    high = plan_memory(70 * GB, 128 * GB, fp8=True)
    # The transformer is loaded in bf16 and cast to fp8 before anything else loads.
    assert high.loading_ram == RAM_OVERHEAD + sizes.transformer_loaded < RAM_OVERHEAD + sizes.total
    low = plan_memory(8 * GB, 64 * GB, fp8=True)
    assert low.loading_ram == RAM_OVERHEAD + sizes.total  # everything stays in RAM in low mode


# ------------------------------------------------------------------------------------- the command


SUMMARY = re.compile(r"^peak GPU (\d+\.\d) GB, peak RAM (\d+\.\d) GB: (fits|does not fit)$")


def test_check_memory_prints_the_plan_and_exits_0_when_it_fits(capsys):
    code, lines, _ = check_memory("--vram", "6", "--ram", "64", capsys=capsys)
    assert code == 0
    plan = plan_memory(6 * GB, 64 * GB)
    match = SUMMARY.match(lines[-1])
    assert match and match[3] == "fits"
    assert float(match[1]) == round(plan.peak_gpu / GB, 1) and float(match[2]) == round(plan.peak_ram / GB, 1)
    text = "\n".join(lines)
    assert "Mode: low" in text
    for phase in ("text encoding", "image encoding", "sampling", "decoding", "loading"):
        assert f"  {phase}: " in text


def test_check_memory_exits_1_with_advice_when_it_does_not_fit(capsys):
    code, lines, _ = check_memory("--vram", "3", "--ram", "64", "--resolution", "640", "--variant", "f1", capsys=capsys)
    assert code == 1
    assert SUMMARY.match(lines[-1])[3] == "does not fit"
    assert any("--resolution" in line for line in lines) and any("--fp8" in line for line in lines)
    code, lines, _ = check_memory(
        "--vram", "80", "--ram", "128", "--height", "544", "--width", "704", "--fp8", capsys=capsys
    )
    assert code == 0 and "Mode: high" in "\n".join(lines) and "544x704" in "\n".join(lines)


def test_check_memory_counts_swap_only_when_told(capsys):
    code, lines, _ = check_memory("--vram", "8", "--ram", "24", capsys=capsys)  # --ram alone: no swap
    assert code == 1 and "free swap 0.0 GB" in lines[0]
    code, lines, _ = check_memory("--vram", "8", "--ram", "24", "--swap", "24", capsys=capsys)
    assert code == 0 and SUMMARY.match(lines[-1])[3] == "fits"
    assert any("will come from swap" in line for line in lines)
    code, _, err = check_memory("--swap", "-1", capsys=capsys)
    assert code == 2 and "must not be negative" in err


def test_check_memory_rejects_bad_sizes(capsys):
    code, lines, err = check_memory("--vram", "6", "--height", "100", "--width", "64", capsys=capsys)
    assert code == 2 and lines == []
    assert "multiple of 16" in err


def test_detect_device_on_this_machine():
    found = detect_device("cpu")
    assert found.device.type == "cpu" and found.vram_free is None
    if found.ram_total is not None:
        assert 0 < found.ram_free <= found.ram_total
    if Path("/proc/meminfo").is_file():
        assert found.swap_free is not None and found.swap_free >= 0


# ---------------------------------------------------------------------------------------- placement


def group_hook(module: torch.nn.Module):
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook("group_offloading") if registry is not None else None


@needs_shared
def test_low_mode_streams_the_transformer_and_llama_and_tiles_the_vae(fresh_models):
    models = fresh_models()
    transformer = models.transformer
    inputs = transformer_inputs(transformer, 128, 128, 3)
    with torch.no_grad():
        reference = transformer(**inputs)[0]
        prompt = encode_prompt(models, "a cat walks")
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]

    placement = apply_plan(models, low_plan_on_cpu(models, resident_blocks=0))
    assert all(group_hook(b) is not None for b in blocks)
    assert group_hook(transformer) is not None  # the embedders and the head move as one group
    assert all(group_hook(layer) is not None for layer in models.text_encoder.layers)
    assert models.vae.use_tiling and placement.device.type == "cpu"
    assert execution_device(transformer).type == "cpu"
    with torch.no_grad():
        assert torch.allclose(transformer(**inputs)[0], reference, rtol=0, atol=1e-6)
        streamed_prompt = encode_prompt(models, "a cat walks")
    assert torch.allclose(streamed_prompt.llama, prompt.llama, rtol=0, atol=1e-6)
    assert torch.equal(streamed_prompt.clip_pooler, prompt.clip_pooler)

    # A new plan re-places the transformer: the first block now stays resident, without hooks.
    apply_plan(models, low_plan_on_cpu(models, resident_blocks=1))
    assert group_hook(blocks[0]) is None and all(group_hook(b) is not None for b in blocks[1:])
    assert len(transformer.transformer_blocks) == transformer.config["num_layers"]  # the lists are whole again
    with torch.no_grad():
        assert torch.allclose(transformer(**inputs)[0], reference, rtol=0, atol=1e-6)

    apply_plan(models, low_plan_on_cpu(models, offload_type="leaf_level"))
    linears = [m for m in transformer.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(group_hook(m) is not None for m in linears)
    assert all(group_hook(b) is None for b in blocks)
    with torch.no_grad():
        assert torch.allclose(transformer(**inputs)[0], reference, rtol=0, atol=1e-6)


@needs_shared
def test_fp8_keeps_the_float32_head_and_stays_close(fresh_models):
    models = fresh_models("f1")
    transformer = models.transformer
    inputs = transformer_inputs(transformer, 128, 128, 3)
    with torch.no_grad():
        reference = transformer(**inputs)[0]
    plan = dataclasses.replace(low_plan_on_cpu(models), fp8=True)
    apply_plan(models, plan)
    assert has_fp8(transformer) and transformer.dtype == torch.float32
    assert transformer.transformer_blocks[0].attn.to_q.weight.dtype == FP8
    assert transformer.transformer_blocks[0].norm1.linear.weight.dtype == torch.float32  # modulation skipped
    assert {p.dtype for m in (transformer.norm_out, transformer.proj_out) for p in m.parameters()} == {torch.float32}
    with torch.no_grad():
        out = transformer(**inputs)[0]
    assert out.dtype == torch.float32 and not torch.equal(out, reference)
    error = (out - reference).norm() / reference.norm()
    assert error < 0.1, error  # 3 mantissa bits: a few percent
    assert all(group_hook(b) is not None for b in transformer.transformer_blocks)


@needs_shared
def test_phase_moves_modules_for_the_block_and_restores_them(fresh_models):
    models = fresh_models()
    vae, clip = models.vae, models.text_encoder_2
    before = {name: p.data_ptr() for name, p in vae.named_parameters()}
    # The meta device stands in for a GPU: it proves the move and that nothing is copied back.
    placement = Placement(dataclasses.replace(low_plan_on_cpu(models), device="meta"))
    with placement.phase(vae, clip):
        assert {p.device.type for p in [*vae.parameters(), *clip.parameters()]} == {"meta"}
    assert {p.device.type for p in [*vae.parameters(), *clip.parameters()]} == {"cpu"}
    assert {name: p.data_ptr() for name, p in vae.named_parameters()} == before

    with pytest.raises(RuntimeError, match="boom"), on_device(vae, "meta"):
        raise RuntimeError("boom")
    assert {p.device.type for p in vae.parameters()} == {"cpu"}

    apply_plan(models, low_plan_on_cpu(models))
    llama = models.text_encoder
    with Placement(dataclasses.replace(low_plan_on_cpu(models), device="meta")).phase(llama):
        assert {p.device.type for p in llama.parameters()} == {"cpu"}  # streamed modules move themselves
    high = Placement(dataclasses.replace(low_plan_on_cpu(models), mode="high", device="meta"))
    with high.phase(vae):
        assert {p.device.type for p in vae.parameters()} == {"cpu"}  # nothing to do: all resident already


@needs_shared
def test_replan_follows_a_jobs_gpu_memory_to_preserve(fresh_models):
    models = fresh_models()
    transformer = models.transformer
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    inputs = transformer_inputs(transformer, 128, 128, 3)
    with torch.no_grad():
        reference = transformer(**inputs)[0]
    placement = apply_plan(models, low_plan_on_cpu(models))
    assert all(group_hook(b) is not None for b in blocks)

    # Nothing to preserve: every (tiny) block fits beside the activations and stays resident.
    roomy = replan(models, placement, Settings(resolution=128, gpu_memory_preservation=0), vram_free=1 * GB)
    assert roomy.plan.transformer.resident_blocks == len(blocks)
    assert all(group_hook(b) is None for b in blocks) and group_hook(transformer) is not None
    with torch.no_grad():
        assert torch.allclose(transformer(**inputs)[0], reference, rtol=0, atol=1e-6)

    # Preserving more than there is: every block streams again.
    tight = replan(models, roomy, Settings(resolution=128, gpu_memory_preservation=6), vram_free=1 * GB)
    assert tight.plan.transformer.resident_blocks == 0 and all(group_hook(b) is not None for b in blocks)
    with pytest.raises(MemoryPlanError, match="the GPU needs"):
        replan(models, tight, Settings(resolution=128), vram_free=1000)
    with torch.no_grad():
        assert torch.allclose(transformer(**inputs)[0], reference, rtol=0, atol=1e-6)


@needs_shared
@pytest.mark.slow
def test_where_ram_is_short_the_text_encoders_come_and_go_and_the_goldens_hold(tmp_path):
    """A per-phase lifetime: the text encoders load for a prompt not seen before and leave after it (the
    transformer leaves meanwhile and comes back); a prompt seen before needs neither. Outputs are identical."""
    from helpers import load_case
    from safetensors.torch import load_file

    from framepack.engine import generate
    from framepack.events import Done, SectionDone, Status

    raw, case_dir = load_case("v1_original")
    settings = Settings.from_dict(raw)
    tiny = ModelSizes.from_configs(ModelConfigs.from_folder(TINY_MODELS), torch.float32, torch.float32)
    options = dict(height=64, width=96, device="cpu", mode="low", sizes=tiny)
    resident = plan_memory(1 * GB, None, **options)
    per_phase = plan_memory(1 * GB, resident.peak_ram - 1, **options)  # a byte too little to keep everything
    assert per_phase.lifetime == "phase" and per_phase.fits

    loads = []
    models = load_models("original", ModelSource(models_dir=TINY_MODELS), dtype="float32", plan=per_phase)
    load = models.loader.load
    models.loader.load = lambda name: loads.append(name) or load(name)
    assert models.text_encoder is None and models.image_encoder is None and models.transformer is not None

    def run(prompt: str, name: str) -> tuple[torch.Tensor, list[str]]:
        events = list(generate(models, settings.replace(prompt=prompt), case_dir / "input.png", tmp_path, job_id=name, previews=False))
        assert isinstance(events[-1], Done), events[-1]
        assert models.text_encoder is None and models.text_encoder_2 is None and models.image_encoder is None
        latents = torch.cat([e.latents for e in events if isinstance(e, SectionDone)], dim=2)
        return latents, [e.message for e in events if isinstance(e, Status)]

    first, messages = run(settings.prompt, "first")
    assert loads == ["text_encoder", "text_encoder_2", "image_encoder", "transformer"]
    assert "Loading the text encoders for 1 new prompt(s)" in messages
    expected = load_file(case_dir / "expected.safetensors")
    golden = torch.cat([expected[f"section_{i:03d}"] for i in range(settings.num_sections)], dim=2)
    assert (first - golden).abs().max() <= 1e-4

    loads.clear()
    again, messages = run(settings.prompt, "again")  # the same prompt: from the cache, no text encoders
    assert loads == ["image_encoder"] and torch.equal(again, first)
    assert not any("text encoders" in m for m in messages)

    loads.clear()
    other, messages = run("A cat jumps.", "other")  # a new prompt: the text encoders come back, then leave
    assert loads == ["text_encoder", "text_encoder_2", "image_encoder", "transformer"]
    assert "Loaded the transformer again (it left memory while the text encoders ran)" in messages
    plain = load_models("original", ModelSource(models_dir=TINY_MODELS), device="cpu", dtype="float32")
    reference = list(generate(plain, settings.replace(prompt="A cat jumps."), case_dir / "input.png", tmp_path, job_id="plain", previews=False))
    assert torch.equal(other, torch.cat([e.latents for e in reference if isinstance(e, SectionDone)], dim=2))


@needs_configs
@pytest.mark.parametrize("fmt", ["q8_0", "q4_k"])
def test_quantised_formats_are_sized_weight_by_weight(fmt):
    """A GGUF transformer's plan sizes: every Linear whose rows split into whole blocks at the format's bytes
    per block, the float32 output head and everything else as before."""
    from framepack.models.checkpoints import GGUF_BLOCKS

    block, block_bytes = GGUF_BLOCKS[fmt]
    plain = build_meta_models(shared_configs(), torch.bfloat16, torch.float16)["transformer"]
    expected = 0
    for module_name, module in plain.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            quantised = isinstance(module, torch.nn.Linear) and name == "weight" and module.in_features % block == 0
            if quantised and not module_name.startswith(("norm_out", "proj_out")):
                expected += parameter.numel() // block * block_bytes
            else:
                expected += parameter.numel() * parameter.element_size()
    sizes = ModelSizes.from_configs(shared_configs(), torch.bfloat16, torch.float16, transformer_format=fmt)
    assert sizes["transformer"].total == expected and sizes.quantized == fmt and not sizes.fp8
    assert sizes["transformer"].total < {"q8_0": 0.55, "q4_k": 0.3}[fmt] * bytes_of(plain)
    assert len(sizes["transformer"].blocks) == 60 and sizes["text_encoder"].total == bytes_of(
        build_meta_models(shared_configs(), torch.bfloat16, torch.float16)["text_encoder"]
    )


@pytest.mark.parametrize(
    "argv, fits, llama_from_files",
    [
        (["--ram", "32"], True, False),
        (["--ram", "24", "--fp8"], True, False),
        (["--ram", "24", "--transformer-format", "fp8"], True, False),
        (["--ram", "16", "--transformer-format", "q4_k"], True, True),
        (["--ram", "16", "--fp8"], False, True),
        (["--ram", "8", "--transformer-format", "q4_k"], False, True),
    ],
)
def test_check_memory_targets_for_a_6_gb_gpu_without_swap(argv, fits, llama_from_files, capsys):
    """32 GB of RAM fits the bf16 transformer, 24 GB an 8-bit one, 16 GB a 4-bit one (the Llama encoder then read
    from its files layer by layer, since it cannot sit in RAM even alone); 8 GB does not fit."""
    code, lines, _ = check_memory("--vram", "6", "--swap", "0", *argv, capsys=capsys)
    text = "\n".join(lines)
    assert (code == 0) == fits and SUMMARY.match(lines[-1])[3] == ("fits" if fits else "does not fit"), text
    assert ("Llama text encoder, read from its files layer by layer" in text) == llama_from_files
    if "q4_k" in argv:
        assert "transformer weights GGUF Q4_K, computing in bfloat16" in text


def test_the_llama_read_from_its_files_counts_one_layer_in_ram():
    """Reading the Llama from its files: RAM holds the layer being read, the GPU its embedding and one layer;
    only where RAM is too short for it to sit there alone."""
    sizes = ModelSizes.from_configs(ModelConfigs.published(), torch.bfloat16, torch.float16, transformer_format="q4_k")
    plan = plan_memory(6 * GB, 16 * GB, swap_free=0, sizes=sizes)
    assert plan.text_encoder.offload_type == "from_file" and plan.lifetime == "phase" and plan.fits
    text = plan.phase("text encoding")
    llama = sizes["text_encoder"]
    assert f"Llama text encoder, the layer being read ({llama.blocks[0] / GB:.1f} GB)" in text.on_cpu
    assert f"Llama text encoder, read from its files layer by layer ({(llama.remainder + llama.blocks[0]) / GB:.1f} GB)" in text.on_gpu
    per_phase = plan_memory(6 * GB, 24 * GB, swap_free=0, sizes=sizes)
    assert per_phase.lifetime == "phase" and per_phase.text_encoder.offload_type == "block_level"
    assert text.ram_bytes == per_phase.phase("text encoding").ram_bytes - llama.total + llama.blocks[0]
    assert plan.phase("sampling") == per_phase.phase("sampling")


@needs_shared
def test_the_llama_read_from_its_files_gives_the_goldens_and_holds_no_layer(tmp_path):
    """Where RAM cannot hold the Llama encoder, its layers are read from the files as they run: the golden
    outputs are the same, and no layer stays in memory."""
    from helpers import load_case
    from safetensors.torch import load_file

    from framepack.engine import generate
    from framepack.events import Done, SectionDone
    from framepack.memory.placement import file_streaming

    raw, case_dir = load_case("v1_original")
    settings = Settings.from_dict(raw)
    tiny = ModelSizes.from_configs(ModelConfigs.from_folder(TINY_MODELS), torch.float32, torch.float32)
    options = dict(height=64, width=96, device="cpu", mode="low", sizes=tiny)
    resident = plan_memory(1 * GB, None, **options)
    per_phase = plan_memory(1 * GB, resident.peak_ram - 1, **options)
    # The tiny Llama is never what RAM cannot hold (the planner's choice is tested on the real sizes above).
    from_files = plan_memory(1 * GB, per_phase.peak_ram, llama_from_files=True, **options)
    assert from_files.text_encoder.offload_type == "from_file" and from_files.lifetime == "phase" and from_files.fits

    models = load_models("original", ModelSource(models_dir=TINY_MODELS), dtype="float32", plan=from_files)
    loaded = []
    load = models.loader.load
    models.loader.load = lambda name: loaded.append(module := load(name)) or module
    events = list(generate(models, settings, case_dir / "input.png", tmp_path, previews=False))
    assert isinstance(events[-1], Done), events[-1]
    expected = load_file(case_dir / "expected.safetensors")
    for i, section in enumerate(e.latents for e in events if isinstance(e, SectionDone)):
        assert (section - expected[f"section_{i:03d}"]).abs().max() <= 1e-4
    llama = next(m for m in loaded if file_streaming(m) is not None)
    layers = llama.config.num_hidden_layers
    assert file_streaming(llama).reads == layers  # one prompt (CFG 1: no negative prompt), each layer read once
    assert all(p.device.type == "meta" for p in llama.layers.parameters())
    assert models.text_encoder is None  # and the rest of it left memory after the phase
