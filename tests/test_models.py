"""Model loading: the real 13B architecture on the meta device, the tiny set from disk, missing weights."""

from __future__ import annotations

import json
import re

import pytest
import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel
from helpers import MODEL_CONFIGS, TINY_MODELS, needs_shared
from safetensors import safe_open

from framepack.loading import load_models
from framepack.models import ModelsMissingError, ModelSource
from framepack.models.components import (
    keep_output_head_in_float32,
    load_transformer,
    resolve_dtypes,
)
from framepack.models.sources import HUNYUAN_REPO, TRANSFORMER_REPOS

pytestmark = needs_shared


def published_tensor_names(repo: str) -> set[str]:
    folder = TINY_MODELS / repo
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    names = set()
    for shard in set(index["weight_map"].values()):
        with safe_open(folder / shard, "pt") as f:
            names.update(f.keys())
    assert names == set(index["weight_map"])
    return names


@pytest.fixture(scope="module")
def real_transformer():
    config = json.loads((MODEL_CONFIGS / "framepack_transformer.json").read_text())
    assert config["_class_name"] == "HunyuanVideoTransformer3DModelPacked"  # the original project's name
    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel.from_config(config, torch_dtype=torch.bfloat16)
    return model.to(torch.bfloat16)


def block_pattern(name: str) -> str:
    """A tensor name with its block number replaced, so models of different depth can be compared."""
    return re.sub(r"(blocks)\.\d+\.", r"\1.#.", name)


def test_real_transformer_has_the_published_parameter_names(real_transformer):
    names = set(real_transformer.state_dict())
    for variant, repo in TRANSFORMER_REPOS.items():
        published = published_tensor_names(repo)  # the tiny set mirrors the published files (166 tensors)
        assert len(published) == 166
        assert {block_pattern(n) for n in names} == {block_pattern(n) for n in published}, variant
    depth = {(m[1], int(m[2])) for n in names if (m := re.match(r"(\w+blocks)\.(\d+)\.", n))}
    assert {i for kind, i in depth if kind == "transformer_blocks"} == set(range(20))
    assert {i for kind, i in depth if kind == "single_transformer_blocks"} == set(range(40))


def test_real_transformer_size_and_shapes(real_transformer):
    params = sum(p.numel() for p in real_transformer.parameters())
    assert 12.8e9 < params < 13.1e9
    assert params * 2 / 1e9 == pytest.approx(25.7, abs=0.3)  # the published bf16 size
    shapes = {k: tuple(v.shape) for k, v in real_transformer.state_dict().items()}
    assert shapes["x_embedder.proj.weight"] == (3072, 16, 1, 2, 2)
    assert shapes["clean_x_embedder.proj_4x.weight"] == (3072, 16, 4, 8, 8)
    assert shapes["image_projection.up.weight"] == (3072 * 3, 1152)
    assert shapes["context_embedder.proj_in.weight"] == (3072, 4096)
    assert shapes["proj_out.weight"] == (64, 3072)
    assert len(real_transformer.transformer_blocks) == 20 and len(real_transformer.single_transformer_blocks) == 40


def test_output_head_runs_in_float32(real_transformer):
    keep_output_head_in_float32(real_transformer)
    assert real_transformer.proj_out.weight.dtype == torch.float32
    assert real_transformer.norm_out.linear.weight.dtype == torch.float32
    assert real_transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.bfloat16


def test_tiny_bf16_transformer_returns_float32():
    model = load_transformer(TINY_MODELS / TRANSFORMER_REPOS["original"], torch.bfloat16)
    assert model.dtype == torch.bfloat16
    kwargs = dict(
        hidden_states=torch.randn(1, 16, 2, 4, 4, dtype=torch.bfloat16),
        timestep=torch.tensor([500.0], dtype=torch.bfloat16),
        encoder_hidden_states=torch.randn(1, 5, 64, dtype=torch.bfloat16),
        encoder_attention_mask=torch.ones(1, 5, dtype=torch.bool),
        pooled_projections=torch.randn(1, 32, dtype=torch.bfloat16),
        image_embeds=torch.randn(1, 16, 32, dtype=torch.bfloat16),
        indices_latents=torch.arange(1, 3),
        guidance=torch.tensor([10000.0], dtype=torch.bfloat16),
        latents_clean=torch.randn(1, 16, 2, 4, 4, dtype=torch.bfloat16),
        indices_latents_clean=torch.tensor([0, 3]),
        latents_history_2x=torch.randn(1, 16, 2, 4, 4, dtype=torch.bfloat16),
        indices_latents_history_2x=torch.tensor([4, 5]),
        latents_history_4x=torch.randn(1, 16, 16, 4, 4, dtype=torch.bfloat16),
        indices_latents_history_4x=torch.arange(6, 22),
    )
    out = model(**kwargs, return_dict=False)[0]
    assert out.dtype == torch.float32 and out.shape == (1, 16, 2, 4, 4)


def test_tiny_set_loads_from_a_local_root(tiny_models):
    models = tiny_models("f1")
    assert models.variant == "f1"
    assert models.sources["transformer"].endswith(TRANSFORMER_REPOS["f1"])
    assert models.transformer.config.num_layers == 2
    assert models.tokenizer("hello").input_ids[0] == 0  # <|begin_of_text|> is prepended


def test_local_root_missing_a_component(tmp_path):
    with pytest.raises(ModelsMissingError) as info:
        load_models("original", ModelSource(models_dir=tmp_path), device="cpu")
    message = str(info.value)
    assert HUNYUAN_REPO in message and "text_encoder" in message and "hf download" in message


def test_offline_hub_cache_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelsMissingError) as info:
        load_models("f1", ModelSource(cache_dir=tmp_path / "hf_download"), device="cpu")
    message = str(info.value)
    assert HUNYUAN_REPO in message and "offline" in message and "--models" in message


def test_dtypes_by_device():
    assert resolve_dtypes(None, torch.device("cpu")) == (torch.float32, torch.float32)
    assert resolve_dtypes(None, torch.device("cuda")) == (torch.bfloat16, torch.float16)
    assert resolve_dtypes("float32", torch.device("cuda")) == (torch.float32, torch.float32)
    assert resolve_dtypes("bfloat16", torch.device("cpu")) == (torch.bfloat16, torch.float16)


def test_sources_name_the_hub_revision_or_the_local_folder(tmp_path):
    from pathlib import Path

    snapshot = Path("hf_download/models--lllyasviel--FramePackI2V_HY/snapshots/0123abcd")
    assert ModelSource().describe("lllyasviel/FramePackI2V_HY", snapshot) == "lllyasviel/FramePackI2V_HY@0123abcd"
    local = tmp_path / "lllyasviel" / "FramePackI2V_HY"
    assert ModelSource(models_dir=tmp_path).describe("lllyasviel/FramePackI2V_HY", local) == str(local)
