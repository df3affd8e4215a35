"""ComfyUI's model files as ComfyUI users keep them: the tiny models saved in ComfyUI's folders and key names load
weight for weight as the repos do, reproduce a golden case, and a file that is not one of them is refused in one
line."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CASE_DIRS, TINY_MODELS, case_inputs, hub_cache_from, load_case, needs_shared, run_cli
from huggingface_hub import constants
from safetensors.torch import load_file, save_file

from framepack.engine import generate
from framepack.events import Done
from framepack.loading import llama_from_files, load_models
from framepack.media.reading import read_frames
from framepack.models import ModelSource, ModelsMissingError
from framepack.models.comfyui import ComfyUIError, find_transformer, load_component, vae_key
from framepack.models.components import load_transformer
from framepack.models.download import missing_parts
from framepack.models.sources import HUNYUAN_REPO, REDUX_REPO, TRANSFORMER_REPOS
from framepack.settings import Settings

pytestmark = needs_shared

HUNYUAN, REDUX = TINY_MODELS / HUNYUAN_REPO, TINY_MODELS / REDUX_REPO
LATENT_ATOL = 1e-4


def repo_weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def comfy_vae(weights: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """The VAE under ComfyUI's names, its attention as 1x1x1 convolutions as ComfyUI stores it."""
    out = {}
    for name, tensor in weights.items():
        key = vae_key(name, levels)
        out[key] = tensor.reshape(*tensor.shape, 1, 1, 1) if ".attn_1." in key and tensor.ndim == 2 else tensor
    return out


def save_comfyui_models(root: Path, llama_name: str = "llava_llama3_fp16.safetensors") -> Path:
    """The tiny models in a ComfyUI models folder, as ComfyUI's published files name their tensors."""
    for folder in ("text_encoders", "vae", "clip_vision", "diffusion_models"):
        (root / folder).mkdir(parents=True)
    llama = {f"model.{k}": v for k, v in repo_weights(HUNYUAN / "text_encoder").items()}
    llama["lm_head.weight"] = torch.randn(llama["model.embed_tokens.weight"].shape)  # unused by FramePack
    save_file(llama, str(root / "text_encoders" / llama_name))
    clip = repo_weights(HUNYUAN / "text_encoder_2")
    width = clip["text_model.final_layer_norm.weight"].shape[0]
    save_file({**clip, "text_projection.weight": torch.randn(width, width)}, str(root / "text_encoders" / "clip_l.safetensors"))
    save_file(comfy_vae(repo_weights(HUNYUAN / "vae"), 4), str(root / "vae" / "hunyuan_video_vae_bf16.safetensors"))
    save_file(repo_weights(REDUX / "image_encoder"), str(root / "clip_vision" / "sigclip_vision_patch14_384.safetensors"))
    for variant, name in (("original", "FramePackI2V_HY_bf16.safetensors"), ("f1", "FramePack_F1_I2V_HY_20250503_fp32.safetensors")):
        transformer = load_transformer(TINY_MODELS / TRANSFORMER_REPOS[variant], torch.float32)
        save_file({f"model.diffusion_model.{k}": v for k, v in transformer.state_dict().items()}, str(root / "diffusion_models" / name))
    return root


def config_root(root: Path) -> Path:
    """A local model root with only the repos' configs and tokenizers (no weights), as ComfyUI users fetch them. The
    transformers' configs too: without them a transformer file is read with the published (13B) architecture."""
    for repo in (HUNYUAN_REPO, REDUX_REPO, *TRANSFORMER_REPOS.values()):
        for file in (TINY_MODELS / repo).rglob("*.json"):
            if file.name.endswith(".index.json"):
                continue
            target = root / repo / file.relative_to(TINY_MODELS / repo)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, target)
    return root


@pytest.fixture(scope="module")
def comfy(tmp_path_factory) -> Path:
    return save_comfyui_models(tmp_path_factory.mktemp("ComfyUI") / "models")


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> Path:
    return config_root(tmp_path_factory.mktemp("configs"))


def test_the_vae_keys_are_comfyuis():
    """ComfyUI's names (its decoder lists the levels from the largest, the middle block and attention renamed)."""
    assert vae_key("decoder.up_blocks.0.resnets.2.conv1.conv.weight", 4) == "decoder.up.3.block.2.conv1.conv.weight"
    assert vae_key("decoder.up_blocks.3.resnets.0.conv_shortcut.conv.bias", 4) == "decoder.up.0.block.0.nin_shortcut.conv.bias"
    assert vae_key("decoder.up_blocks.1.upsamplers.0.conv.conv.weight", 4) == "decoder.up.2.upsample.conv.conv.weight"
    assert vae_key("encoder.down_blocks.0.downsamplers.0.conv.conv.weight", 4) == "encoder.down.0.downsample.conv.conv.weight"
    assert vae_key("encoder.mid_block.resnets.1.norm2.weight", 4) == "encoder.mid.block_2.norm2.weight"
    assert vae_key("decoder.mid_block.attentions.0.to_out.0.weight", 4) == "decoder.mid.attn_1.proj_out.weight"
    assert vae_key("decoder.mid_block.attentions.0.group_norm.bias", 4) == "decoder.mid.attn_1.norm.bias"
    assert vae_key("encoder.conv_norm_out.weight", 4) == "encoder.norm_out.weight"
    assert vae_key("post_quant_conv.weight", 4) == "post_quant_conv.weight"


@pytest.mark.parametrize("name", ["text_encoder", "text_encoder_2", "vae", "image_encoder"])
def test_each_comfyui_file_loads_the_repos_weights_exactly(comfy, tiny_models, name):
    models = tiny_models("original")
    folder = REDUX / "image_encoder" if name == "image_encoder" else HUNYUAN / name
    path = next(p for p in comfy.rglob("*.safetensors") if p.parent.name != "diffusion_models" and
                {"text_encoder": "llava", "text_encoder_2": "clip_l", "vae": "vae", "image_encoder": "sigclip"}[name] in p.name)  # fmt: skip
    loaded = load_component(name, path, folder, torch.float32).state_dict()
    reference = getattr(models, name).state_dict()
    assert loaded.keys() == reference.keys()
    for key, tensor in reference.items():
        assert torch.equal(loaded[key], tensor), key


def test_a_siglip_file_without_its_pooling_head_gives_the_same_image_states(comfy, tiny_models, tmp_path):
    weights = load_file(comfy / "clip_vision" / "sigclip_vision_patch14_384.safetensors")
    headless = tmp_path / "sigclip_vision_patch14_384.safetensors"
    save_file({k: v for k, v in weights.items() if not k.startswith("vision_model.head.")}, str(headless))
    encoder = load_component("image_encoder", headless, REDUX / "image_encoder", torch.float32)
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = tiny_models("original").image_encoder(pixel_values=pixels).last_hidden_state
    assert torch.equal(encoder(pixel_values=pixels).last_hidden_state, expected)


def test_a_scaled_fp8_llama_is_dequantised_by_its_scales(tmp_path):
    """ComfyUI's fp8_scaled layout: each 8-bit weight times its one-number scale, exactly; the rest as stored."""
    weights = {f"model.{k}": v for k, v in repo_weights(HUNYUAN / "text_encoder").items()}
    scaled, expected = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for key, tensor in weights.items():
        if key.endswith("proj.weight"):
            scale = tensor.abs().max() / 448
            stored = (tensor / scale).to(torch.float8_e4m3fn)
            scaled.update({key: stored, key.replace(".weight", ".scale_weight"): scale.reshape(())})
            expected[key.removeprefix("model.")] = stored.float() * scale
        else:
            scaled[key] = tensor
            expected[key.removeprefix("model.")] = tensor
    path = tmp_path / "llava_llama3_fp8_scaled.safetensors"
    save_file(scaled, str(path))
    loaded = load_component("text_encoder", path, HUNYUAN / "text_encoder", torch.float32).state_dict()
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key
    # Scales per block of rows cannot be applied as one number per tensor: refused, not approximated.
    key = next(k for k in scaled if k.endswith(".scale_weight"))
    scaled[key] = torch.ones(scaled[key.replace(".scale_weight", ".weight")].shape[0], 1)
    save_file(scaled, str(path))
    with pytest.raises(ComfyUIError, match="not one: only per-tensor scaled 8-bit files are dequantised exactly"):
        load_component("text_encoder", path, HUNYUAN / "text_encoder", torch.float32)


def test_files_that_are_not_comfyuis_are_refused_in_one_line(comfy, tmp_path):
    vae = load_file(comfy / "vae" / "hunyuan_video_vae_bf16.safetensors")
    cases = {
        "an SD VAE": ({"decoder.conv_in.weight": torch.zeros(8, 4, 3, 3), "encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)},
                      "is not ComfyUI's HunyuanVideo VAE: none of its 2 tensors is one (e.g. decoder.conv_in.weight)"),
        "a cut file": ({k: v for k, v in vae.items() if "decoder.up.0." not in k}, "is not a whole HunyuanVideo VAE"),
        "one too many": ({**vae, "decoder.extra.weight": torch.zeros(1)}, "has 1 tensors the HunyuanVideo VAE does not (e.g. decoder.extra.weight)"),
        "another size": ({**vae, "decoder.norm_out.weight": torch.zeros(7)}, "is for another model: its decoder.norm_out.weight is (7,)"),
        "packed blocks": ({**vae, "decoder.conv_in.conv.weight": torch.zeros(8, 16, 3, 3, 3, dtype=torch.uint8)},
                          "stores decoder.conv_in.conv.weight as packed U8 blocks, which this app cannot dequantise exactly"),
    }  # fmt: skip
    for label, (tensors, message) in cases.items():
        path = tmp_path / "hunyuan_video_vae_bf16.safetensors"
        save_file(tensors, str(path))
        with pytest.raises(ComfyUIError) as raised:
            load_component("vae", path, HUNYUAN / "vae", torch.float32)
        assert message in str(raised.value) and "\n" not in str(raised.value), (label, str(raised.value))


def test_the_transformer_is_found_by_variant_and_several_are_refused(comfy, tmp_path):
    assert find_transformer(comfy.parent, "original").name == "FramePackI2V_HY_bf16.safetensors"  # the ComfyUI folder too
    assert find_transformer(comfy, "f1").name == "FramePack_F1_I2V_HY_20250503_fp32.safetensors"
    empty = tmp_path / "models"
    (empty / "diffusion_models").mkdir(parents=True)
    assert find_transformer(empty, "f1") is None
    for name in ("FramePackI2V_HY_bf16.safetensors", "FramePackI2V_HY_fp8_e4m3fn.safetensors"):
        (empty / "diffusion_models" / name).touch()
    with pytest.raises(ComfyUIError, match="Several FramePack transformers .* choose one with --transformer-file"):
        find_transformer(empty, "original")


def test_a_golden_case_through_comfyuis_files(comfy, configs, tmp_path):
    """The whole job on ComfyUI's files (configs and tokenizers from a root that holds only those) reproduces the
    original FramePack's latents and frames."""
    raw, case_dir = load_case("v1_original")
    settings = Settings.from_dict(raw)
    transformer = find_transformer(comfy, settings.variant)
    source = ModelSource(models_dir=configs, transformer_file=transformer, comfyui_dir=comfy)
    models = load_models(settings.variant, source, device="cpu", dtype="float32")
    assert models.sources["comfyui"] == str(comfy.resolve()) and models.sources["transformer_file"] == str(transformer)
    done = [e for e in generate(models, settings, case_inputs(raw, case_dir), tmp_path) if isinstance(e, Done)][0]
    expected = load_file(CASE_DIRS["v1_original"] / "expected.safetensors")
    latents = load_file(done.latents_path)["latents"]
    assert latents.shape == expected["video_latents"].shape
    assert (latents - expected["video_latents"]).abs().max().item() <= LATENT_ATOL
    # The video: its frames are the golden frames (luma, as the golden tests compare H.264's lossy frames).
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    decoded, golden = read_frames(done.video_path).astype(np.float32) @ luma, expected["video_frames_uint8"].numpy() @ luma
    assert decoded.shape == golden.shape and np.abs(decoded - golden).mean() < 4.0
    # A record names the folder, so a resume loads the same files again.
    assert ModelSource.recorded(models.sources).comfyui_dir == comfy.resolve()


def test_the_command_line_refuses_a_folder_without_the_files(tmp_path):
    (tmp_path / "models" / "vae").mkdir(parents=True)
    result = run_cli("generate", "--image", str(next(iter(CASE_DIRS.values())) / "input.png"), "--prompt", "a cat",
                     "--comfyui-models", str(tmp_path / "models"), "--output-dir", str(tmp_path / "out"), "--quiet")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "No HunyuanVideo Llama text encoder in" in result.stderr and "llava_llama3_fp16.safetensors" in result.stderr


def test_only_the_configs_come_from_a_hub_cache_and_offline_the_message_says_which(comfy, configs, tmp_path, monkeypatch):
    """ComfyUI users have none of the repos: their configs and tokenizers (small files) are all that is read from a hub
    cache, the transformer repo only where diffusion_models has no FramePack file; offline, the message names the files."""
    transformer = find_transformer(comfy, "original")
    source = ModelSource(cache_dir=hub_cache_from(configs, tmp_path / "hf_download"), transformer_file=transformer,
                         comfyui_dir=comfy)  # fmt: skip
    assert missing_parts(source, "original") == []
    assert missing_parts(replace(source, transformer_file=None), "original") == [(TRANSFORMER_REPOS["original"], ())]
    hunyuan, redux, _ = source.folders("original")
    assert (hunyuan / "vae" / "config.json").is_file() and (redux / "feature_extractor" / "preprocessor_config.json").is_file()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelsMissingError) as raised:
        replace(source, cache_dir=tmp_path / "empty").folders("original")
    message = str(raised.value)
    assert f"hf download {HUNYUAN_REPO}" in message and "configs and tokenizers" in message and "\n" not in message
    assert '--include "text_encoder/config.json"' in message and '--include "tokenizer/*"' in message
    assert '"text_encoder/*"' not in message  # never the 15 GB of weights ComfyUI's file replaces


@pytest.mark.slow
def test_the_command_line_on_a_comfyui_folder_makes_the_model_roots_latents(comfy, configs, tmp_path):
    job = ["--image", str(CASE_DIRS["v1_original"] / "input.png"), "--prompt", "a cat", "--seconds", "0.8",
           "--latent-window-size", "3", "--steps", "2", "--height", "48", "--width", "80", "--no-teacache",
           "--dtype", "float32", "--output-dir", str(tmp_path), "--quiet"]  # fmt: skip
    comfy_job = run_cli("generate", *job, "--job-name", "comfy", "--comfyui-models", str(comfy.parent),
                        "--hf-cache", str(hub_cache_from(configs, tmp_path / "hf_download")))  # fmt: skip
    assert comfy_job.returncode == 0, comfy_job.stderr
    local = run_cli("generate", *job, "--job-name", "local", "--models", str(TINY_MODELS))
    assert local.returncode == 0, local.stderr
    a, b = (load_file(tmp_path / f"{name}.latents.safetensors")["latents"] for name in ("comfy", "local"))
    assert torch.equal(a, b)
    record = json.loads((tmp_path / "comfy.json").read_text())["models"]
    assert record["comfyui"] == str(comfy.parent.resolve())  # the ComfyUI folder, as given
    assert record["transformer_file"] == str(comfy / "diffusion_models" / "FramePackI2V_HY_bf16.safetensors")


def test_where_ram_is_short_the_llama_is_read_layer_by_layer_from_comfyuis_file(comfy, tiny_models, tmp_path):
    streamed = llama_from_files(HUNYUAN / "text_encoder", torch.float32, torch.device("cpu"), comfy)
    ids = torch.tensor([[0, 5, 9, 17, 4]])
    expected = tiny_models("original").text_encoder(ids, output_hidden_states=True).hidden_states[-3]
    assert torch.equal(streamed(ids, output_hidden_states=True).hidden_states[-3], expected)
    scaled = tmp_path / "models"
    (scaled / "text_encoders").mkdir(parents=True)
    save_file({"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn), "model.norm.weight": torch.ones(64)},
              str(scaled / "text_encoders" / "llava_llama3_fp8_scaled.safetensors"))  # fmt: skip
    with pytest.raises(ComfyUIError, match="scaled 8-bit, which cannot be read layer by layer"):
        llama_from_files(HUNYUAN / "text_encoder", torch.float32, torch.device("cpu"), scaled)


def test_the_app_takes_the_folders_transformer_of_its_variant_and_refuses_a_folder_without_the_files(comfy, configs, tmp_path):
    from framepack.app import start as ui

    common = ["--outputs", str(tmp_path / "out"), "--models", str(configs)]
    app = ui.create_app("f1", ui.parse_args([*common, "--comfyui-models", str(comfy)]))
    try:
        assert app.front.source.comfyui_dir == comfy.resolve()
        assert app.front.source.transformer_file == comfy / "diffusion_models" / "FramePack_F1_I2V_HY_20250503_fp32.safetensors"
    finally:
        app.front.close()
    (tmp_path / "bare" / "text_encoders").mkdir(parents=True)
    shutil.copy(comfy / "text_encoders" / "clip_l.safetensors", tmp_path / "bare" / "text_encoders")
    with pytest.raises(SystemExit) as refused:
        ui.main("original", [*common, "--comfyui-models", str(tmp_path / "bare")])
    assert str(refused.value) == (
        f"error: No HunyuanVideo Llama text encoder in {tmp_path / 'bare' / 'text_encoders'} (ComfyUI keeps it there as "
        f"llava_llama3_fp16.safetensors)"
    )


def test_the_doctor_counts_comfyuis_files_as_present(comfy, configs, tmp_path):
    """A model root with only the repos' configs: without ComfyUI's folder the weights are missing, with it every part
    is there and nothing would download."""
    from framepack.doctor import Places, models_and_disk

    without, _ = models_and_disk(Places(configs, tmp_path / "hub", tmp_path / "out", "f1"))
    assert without.status == "fail" and "of 8 parts present" in without.found
    models, disk = models_and_disk(Places(configs, tmp_path / "hub", tmp_path / "out", "f1", comfy))
    assert models.status == "ok", models
    assert "8 of 8 parts present" in models.found and "from ComfyUI's" in models.found and "transformer" in models.found
    assert disk.status == "ok"
