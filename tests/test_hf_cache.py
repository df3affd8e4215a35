"""`--hf-cache` takes the `hf_download` folder of a FramePack or FramePack-Studio install as it is (their repos are in
its `hub` folder), and the memory plan sizes the models cached there."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import CASES, SHORT_JOB, TINY_MODELS, hub_cache_from, needs_shared, run_cli
from safetensors.torch import load_file

from framepack.memory.planning import check_before_loading
from framepack.memory.sensing import DeviceMemory
from framepack.memory.sizes import GB, ModelConfigs, file_configs
from framepack.models import ModelSource
from framepack.models.sources import HUNYUAN_REPO, PUBLISHED_TRANSFORMER, TRANSFORMER_REPOS, hub_cache

pytestmark = needs_shared

# A CPU with room for anything, so plans differ only in what they size.
ROOMY_CPU = DeviceMemory(torch.device("cpu"), "CPU", None, None, 4000 * GB, 4000 * GB, 0)


@pytest.fixture(scope="module")
def hf_download(tmp_path_factory):
    """A FramePack-style `hf_download` (HF_HOME) holding the tiny models in its `hub` folder."""
    return hub_cache_from(TINY_MODELS, tmp_path_factory.mktemp("framepack") / "hf_download")


def test_the_hub_folder_is_used_where_it_holds_repos(tmp_path, hf_download):
    assert hub_cache(hf_download) == hf_download / "hub"
    assert ModelSource(cache_dir=hf_download).hub_dir == hf_download / "hub"
    ours = tmp_path / "ours"
    (ours / "models--lllyasviel--FramePackI2V_HY").mkdir(parents=True)
    (ours / "hub").mkdir()  # empty: not a cache
    assert hub_cache(ours) == ours
    assert hub_cache(tmp_path / "not there yet") == tmp_path / "not there yet"  # where downloads will go


def test_models_are_found_in_the_hub_folder_without_downloading(hf_download):
    source = ModelSource(cache_dir=hf_download)
    hunyuan, redux, transformer = source.folders("f1")
    assert hunyuan.parent.parent.name == "models--hunyuanvideo-community--HunyuanVideo"
    assert transformer.parent.parent.name == "models--lllyasviel--FramePack_F1_I2V_HY_20250503"
    assert source.cached_folder(TRANSFORMER_REPOS["original"]) is not None
    assert source.cached_folder(TRANSFORMER_REPOS["original"], ("vae",)) is None  # no such subfolder
    tiny = json.loads((TINY_MODELS / TRANSFORMER_REPOS["f1"] / "config.json").read_text())
    assert source.transformer_config("f1")["num_layers"] == tiny["num_layers"] != PUBLISHED_TRANSFORMER["num_layers"]


@pytest.mark.slow
def test_generate_through_a_framepack_hf_download_matches_the_model_root(tmp_path, hf_download):
    job = SHORT_JOB
    common = ["--image", str(CASES / "v1_original" / "input.png"), "--prompt", "a cat", "--seed", str(job.seed),
              "--seconds", str(job.total_second_length), "--latent-window-size", str(job.latent_window_size),
              "--steps", str(job.steps), "--height", str(job.height), "--width", str(job.width), "--no-teacache",
              "--dtype", "float32", "--output-dir", str(tmp_path), "--quiet"]  # fmt: skip
    cached = run_cli("generate", "--hf-cache", str(hf_download), "--job-name", "cached", *common)
    assert cached.returncode == 0, cached.stderr
    local = run_cli("generate", "--models", str(TINY_MODELS), "--job-name", "local", *common)
    assert local.returncode == 0, local.stderr
    a, b = (load_file(tmp_path / f"{name}.latents.safetensors")["latents"] for name in ("cached", "local"))
    assert torch.equal(a, b)
    record = json.loads((tmp_path / "cached.json").read_text())
    assert TRANSFORMER_REPOS["original"] + "@" in json.dumps(record)  # the hub repo at its cached revision


def test_the_memory_plan_sizes_the_cached_models(tmp_path, hf_download):
    assert file_configs(None, "f1", cache_dir=hf_download) == ModelConfigs.from_folder(TINY_MODELS, "f1")
    tiny = check_before_loading(SHORT_JOB, memory=ROOMY_CPU, cache_dir=hf_download)
    published = check_before_loading(SHORT_JOB, memory=ROOMY_CPU)
    assert "transformer (0.0 GB)" in tiny.report() and "transformer (0.0 GB)" not in published.report()
    assert tiny.peak_ram < published.peak_ram / 20
    # An empty cache downloads the published model, so that is what is planned (its advice can try --fp8 then).
    empty = check_before_loading(SHORT_JOB, memory=ROOMY_CPU, cache_dir=tmp_path / "empty")
    assert empty.report() == published.report()


def test_a_partial_cache_plans_the_published_configs_of_what_is_missing(tmp_path):
    only_hunyuan = tmp_path / "models"
    (only_hunyuan / "hunyuanvideo-community").mkdir(parents=True)
    (only_hunyuan / HUNYUAN_REPO).symlink_to(TINY_MODELS / HUNYUAN_REPO)
    configs = file_configs(None, "original", cache_dir=hub_cache_from(only_hunyuan, tmp_path / "hf_download"))
    tiny = ModelConfigs.from_folder(TINY_MODELS)
    published = ModelConfigs.published()
    assert (configs.text_encoder, configs.vae) == (tiny.text_encoder, tiny.vae)
    assert (configs.transformer, configs.image_encoder) == (published.transformer, published.image_encoder)
