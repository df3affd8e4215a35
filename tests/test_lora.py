"""LoRA: every file format, against weights merged by hand, fused and unfused, several at once, exactly undone,
with fp8 storage, streaming and step caches, and a clear line for every bad file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers import (
    IMAGE,
    TINY_MODELS,
    load_case,
    needs_shared,
    random_lora,
    run_cli,
    section_latents,
    write_lora,
)
from safetensors.torch import load_file, save_file

from framepack.controls import JobInputs
from framepack.engine import generate, resume_job
from framepack.events import Done, Error, SectionDone
from framepack.loading import load_models
from framepack.lora import FORMATS, LoraError, LoraSpec, linear_modules, read_lora
from framepack.models import ModelSource
from framepack.settings import Settings

pytestmark = needs_shared
JOB = Settings(total_second_length=0.8, latent_window_size=3, steps=2, height=48, width=80, use_teacache=False,
               prompt="a girl dances", seed=3)  # fmt: skip


@pytest.fixture(scope="module")
def models():
    """A model set of its own: these tests load, fuse and remove LoRAs on it."""
    loaded = load_models("original", ModelSource(models_dir=TINY_MODELS), device="cpu", dtype="float32")
    yield loaded
    loaded.fuse_loras = None


@pytest.fixture(scope="module")
def hand_merged():
    """A second model set whose weights the tests change by hand (restored after each use)."""
    merged = load_models("original", ModelSource(models_dir=TINY_MODELS), device="cpu", dtype="float32")

    def run(deltas: dict[str, torch.Tensor], out: Path, settings: Settings = JOB) -> torch.Tensor:
        modules = dict(merged.transformer.named_modules())
        saved = {name: modules[name].weight.detach().clone() for name in deltas}
        try:
            with torch.no_grad():
                for name, delta in deltas.items():
                    modules[name].weight += delta
            return section_latents(merged, settings, out)
        finally:
            with torch.no_grad():
                for name, weight in saved.items():
                    modules[name].weight.copy_(weight)

    return run


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_equals_weights_merged_by_hand(models, hand_merged, tmp_path, fmt):
    tensors, deltas = random_lora(fmt, models.transformer, seed=len(fmt))
    path = write_lora(tmp_path, f"{fmt}.safetensors", tensors)
    file = read_lora(path, models.transformer)
    assert file.format == fmt  # detected from the keys, not skipped as something else
    assert sorted(file.target_names) == sorted(deltas)

    weight = 0.8
    expected = hand_merged({name: weight * delta for name, delta in deltas.items()}, tmp_path / "hand")
    for fuse in (True, False):
        models.fuse_loras = fuse
        latents = section_latents(models, JOB, tmp_path / f"fused-{fuse}", [LoraSpec(path, weight)])
        assert (latents - expected).abs().max() <= 1e-4, (fmt, fuse, (latents - expected).abs().max())
    base = section_latents(models, JOB, tmp_path / "base")
    assert (base - expected).abs().max() > 1e-2  # the LoRA did something


def test_diffusers_metadata_alpha_scales_the_adapter(models, hand_merged, tmp_path):
    tensors, deltas = random_lora("diffusers", models.transformer, seed=5, rank=4)
    path = write_lora(tmp_path, "meta.safetensors", tensors, {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 2})})
    assert {module.scale for module in read_lora(path, models.transformer).modules} == {0.5}
    expected = hand_merged({name: 0.5 * delta for name, delta in deltas.items()}, tmp_path / "hand")
    models.fuse_loras = None
    assert (section_latents(models, JOB, tmp_path / "lora", [LoraSpec(path)]) - expected).abs().max() <= 1e-4


def test_two_loras_with_their_weights_then_none_gives_the_plain_model_back_exactly(models, hand_merged, tmp_path):
    first, first_deltas = random_lora("musubi", models.transformer, seed=11)
    second, second_deltas = random_lora("kohya", models.transformer, seed=12)
    paths = write_lora(tmp_path, "a.safetensors", first), write_lora(tmp_path, "b.safetensors", second)
    deltas = {name: 0.7 * delta for name, delta in first_deltas.items()}
    for name, delta in second_deltas.items():
        deltas[name] = deltas.get(name, 0) + 0.4 * delta
    expected = hand_merged(deltas, tmp_path / "hand")
    plain = section_latents(models, JOB, tmp_path / "plain")
    transformer = models.transformer
    for fuse in (True, False):
        models.fuse_loras = fuse
        specs = [LoraSpec(paths[0], 0.7), LoraSpec(paths[1], 0.4)]
        assert (section_latents(models, JOB, tmp_path / f"both-{fuse}", specs) - expected).abs().max() <= 1e-4
        # Weight 0 turns one off without unloading it; a weight change does not reload anything.
        only_first = hand_merged({name: 0.7 * delta for name, delta in first_deltas.items()}, tmp_path / "hand1")
        specs = [LoraSpec(paths[0], 0.7), LoraSpec(paths[1], 0.0)]
        assert (section_latents(models, JOB, tmp_path / f"off-{fuse}", specs) - only_first).abs().max() <= 1e-4
        assert len(models.loras.files) == 2 and models.transformer is transformer
        # No LoRA: the weights are the loaded ones, bit for bit.
        assert torch.equal(section_latents(models, JOB, tmp_path / f"none-{fuse}"), plain)
        assert not any(hasattr(m, "base_layer") for m in transformer.modules())
    models.fuse_loras = None


def test_after_loras_the_golden_case_reproduces_exactly(models, tmp_path):
    raw, case_dir = load_case("v1_original")
    settings = Settings.from_dict(raw)
    tensors, _ = random_lora("comfyui", models.transformer, seed=21)
    path = write_lora(tmp_path, "c.safetensors", tensors)
    section_latents(models, settings.replace(total_second_length=1.2), tmp_path / "with", [LoraSpec(path)])
    latents = section_latents(models, settings, tmp_path / "after")
    expected = load_file(case_dir / "expected.safetensors")
    golden = torch.cat([expected[f"section_{i:03d}"] for i in range(settings.num_sections)], dim=2)
    assert (latents - golden).abs().max() <= 1e-4
    fresh = load_models("original", ModelSource(models_dir=TINY_MODELS), device="cpu", dtype="float32")
    assert torch.equal(latents, section_latents(fresh, settings, tmp_path / "fresh"))


def test_loras_with_fp8_storage_streaming_and_step_caches(hand_merged, tmp_path):
    from helpers import low_plan_on_cpu

    from framepack.memory.placement import apply_plan

    models = load_models("original", ModelSource(models_dir=TINY_MODELS), device="cpu", dtype="float32")
    tensors, deltas = random_lora("musubi", models.transformer, seed=31)
    path = write_lora(tmp_path, "m.safetensors", tensors)
    expected = hand_merged(deltas, tmp_path / "hand")
    # Streamed block by block (diffusers' group offloading): the LoRA is applied unfused, around the streaming.
    models.placement = apply_plan(models, low_plan_on_cpu(models, resident_blocks=1))
    streamed = section_latents(models, JOB, tmp_path / "streamed", [LoraSpec(path)])
    assert not models.loras.fused and (streamed - expected).abs().max() <= 1e-4
    # With TeaCache and MagCache too: the caches sit on the blocks, the LoRA inside them.
    for method in ("teacache", "magcache"):
        cached = JOB.replace(use_teacache=True, cache_method=method)
        with_lora = section_latents(models, cached, tmp_path / f"{method}", [LoraSpec(path)])
        assert (with_lora - hand_merged(deltas, tmp_path / f"hand-{method}", cached)).abs().max() <= 1e-4
    # fp8 storage: the adapter computes in the compute dtype beside the 8-bit weights.
    models.placement = apply_plan(models, dataclasses.replace(low_plan_on_cpu(models), fp8=True))
    fp8 = section_latents(models, JOB, tmp_path / "fp8", [LoraSpec(path)])
    fp8_plain = section_latents(models, JOB, tmp_path / "fp8-plain")
    assert (fp8 - expected).norm() / expected.norm() < 0.1  # 3 mantissa bits: a few percent
    assert (fp8 - fp8_plain).abs().max() > 1e-2


def test_the_job_record_keeps_its_loras_and_a_resume_checks_them(models, tmp_path):
    import threading

    tensors, _ = random_lora("musubi", models.transformer, seed=41)
    path = write_lora(tmp_path, "style.safetensors", tensors)
    stop = threading.Event()
    settings = JOB.replace(total_second_length=2.0)
    for event in generate(models, settings, JobInputs(IMAGE, loras=(LoraSpec(path, 0.6),)), tmp_path / "out", job_id="job", stop=stop):
        if isinstance(event, SectionDone):
            stop.set()
    manifest = json.loads((tmp_path / "out" / "job.json").read_text())
    [lora] = manifest["loras"]
    assert (lora["name"], lora["weight"], lora["format"]) == ("style.safetensors", 0.6, "musubi")
    assert len(lora["sha256"]) == 64
    from framepack.media.reading import probe

    shared = json.loads(probe(tmp_path / "out" / "job.mp4").metadata["comment"])["loras"]
    assert shared == [{"name": "style.safetensors", "sha256": lora["sha256"], "weight": 0.6}]  # no server path

    # A resume uses the same LoRA; if the file changed it says so instead of going on with other weights.
    save_file({k: v + 1 for k, v in tensors.items()}, str(path))
    refused = list(resume_job(models, tmp_path / "out" / "job.json"))[-1]
    assert isinstance(refused, Error) and "the LoRA style.safetensors changed since this job began" in refused.message
    save_file(tensors, str(path))
    done = list(resume_job(models, tmp_path / "out" / "job.json", previews=False))[-1]
    assert isinstance(done, Done) and not done.stopped
    whole = list(generate(models, settings, JobInputs(IMAGE, loras=(LoraSpec(path, 0.6),)), tmp_path / "whole", job_id="job"))[-1]
    assert torch.equal(load_file(done.latents_path)["latents"], load_file(whole.latents_path)["latents"])


def bad_files(tmp_path: Path, transformer) -> list[tuple[Path, str]]:
    text = tmp_path / "notes.safetensors"
    text.write_text("not a tensor file")
    other_keys = write_lora(tmp_path, "vae.safetensors", {"decoder.conv.weight": torch.zeros(2, 2)})
    good, _ = random_lora("musubi", transformer, seed=51)
    other_model = write_lora(tmp_path, "sdxl.safetensors", {
        "lora_unet_input_blocks_1_0_emb_layers_1.lora_down.weight": torch.zeros(2, 8),
        "lora_unet_input_blocks_1_0_emb_layers_1.lora_up.weight": torch.zeros(8, 2),
    })  # fmt: skip
    wider = {k: (torch.zeros(v.shape[0], v.shape[1] * 2) if k.endswith("lora_down.weight") else v) for k, v in good.items()}
    shapes = write_lora(tmp_path, "wider.safetensors", wider)
    partial = write_lora(tmp_path, "partial.safetensors", {**good, **{
        "lora_unet_unknown_block_0_proj.lora_down.weight": torch.zeros(3, 4),
        "lora_unet_unknown_block_0_proj.lora_up.weight": torch.zeros(4, 3),
    }})  # fmt: skip
    return [
        (text, "notes.safetensors is not a safetensors file"),
        (other_keys, "vae.safetensors is not a LoRA: none of its 1 tensors is a lora_A/lora_B or lora_down/lora_up pair"),
        (other_model, "sdxl.safetensors is not a LoRA for FramePack's transformer: none of its 1 modules"),
        (shapes, "wider.safetensors: lora_unet_single_transformer_blocks_0_attn_to_v is 64 -> 32 wide, the model's "
                 "single_transformer_blocks.0.attn.to_v 32 -> 32: it is for another model"),
        (partial, "partial.safetensors matches only 5 of its 6 modules"),
        (tmp_path / "gone.safetensors", "gone.safetensors: file not found"),
    ]


def test_bad_files_get_one_line_naming_the_file(models, tmp_path):
    for path, message in bad_files(tmp_path, models.transformer):
        with pytest.raises(LoraError) as info:
            read_lora(path, models.transformer)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
        event = list(generate(models, JOB, JobInputs(IMAGE, loras=(LoraSpec(path),)), tmp_path / "out"))[-1]
        assert isinstance(event, Error) and message in event.message


def test_lora_arguments_keep_windows_paths():
    assert LoraSpec.parse("style.safetensors") == LoraSpec(Path("style.safetensors"), 1.0)
    assert LoraSpec.parse("style.safetensors:0.5") == LoraSpec(Path("style.safetensors"), 0.5)
    assert LoraSpec.parse(r"C:\loras\style.safetensors:-0.25") == LoraSpec(Path(r"C:\loras\style.safetensors"), -0.25)
    assert LoraSpec.parse(r"C:\loras\style.safetensors") == LoraSpec(Path(r"C:\loras\style.safetensors"), 1.0)


@pytest.mark.slow
def test_the_command_line_applies_loras_and_explains_files(models, tmp_path, capsys):
    from framepack.cli import main

    tensors, _ = random_lora("kohya", models.transformer, seed=61)
    path = write_lora(tmp_path, "kohya.safetensors", tensors)
    info = run_cli("lora-info", str(path), "--models", str(TINY_MODELS))
    assert info.returncode == 0, info.stderr
    assert "format: kohya (HunyuanVideo)" in info.stdout and "rank: 3" in info.stdout
    assert "alpha: 2; scale alpha/rank: 0.666667" in info.stdout
    assert "single_transformer_blocks.N.proj_mlp x1" in info.stdout and "fits: yes" in info.stdout

    job = ["generate", "--models", str(TINY_MODELS), "--image", str(IMAGE), "--seconds", "0.8", "--latent-window-size",
           "3", "--steps", "2", "--height", "48", "--width", "80", "--output-dir", str(tmp_path / "out"), "--quiet"]  # fmt: skip
    done = run_cli(*job, "--lora", f"{path}:0.5", "--job-name", "styled")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "styled.json").read_text())["loras"][0]["weight"] == 0.5
    capsys.readouterr()
    for bad, message in bad_files(tmp_path, models.transformer):  # refused before anything loads
        assert main([*job, "--lora", str(bad)]) == 1
        assert f"error: {message}" in capsys.readouterr().err
    assert main(["lora-info", str(bad_files(tmp_path, models.transformer)[4][0]), "--models", str(TINY_MODELS)]) == 1
    assert "matches only 5 of its 6 modules" in capsys.readouterr().err


def test_the_memory_plan_counts_a_rank_32_lora_of_the_real_model(tmp_path):
    from framepack.lora import lora_bytes
    from framepack.memory.planning import plan_memory
    from framepack.memory.sizes import GB, ModelConfigs
    from framepack.models.components import meta_transformer

    configs = ModelConfigs.published()
    transformer = meta_transformer(configs.transformer)
    tensors, touched = {}, 0
    for name, (width, rows) in linear_modules(transformer).items():
        if name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and "norm" not in name:
            key = f"lora_unet_{name.replace('.', '_')}"  # musubi-tuner's choice: the blocks' Linears, no norms
            tensors[f"{key}.lora_down.weight"] = torch.zeros(32, width, dtype=torch.bfloat16)
            tensors[f"{key}.lora_up.weight"] = torch.zeros(rows, 32, dtype=torch.bfloat16)
            touched += width * rows * 2
    path = write_lora(tmp_path, "r32.safetensors", tensors)
    lora = lora_bytes([path], configs, torch.bfloat16)
    adapters = sum(t.numel() for t in tensors.values()) * 2
    assert (lora.adapters, lora.touched) == (adapters, touched)
    assert 0.25 * GB < adapters < 0.3 * GB and 18 * GB < touched < 18.2 * GB  # most of the 25.7 GB of weights
    for vram, mode in ((80, "high"), (8, "low")):
        plain = plan_memory(vram * GB, 128 * GB)
        with_lora = plan_memory(vram * GB, 128 * GB, lora=lora)
        assert with_lora.mode == plain.mode == mode
        gpu = with_lora.phase("sampling").gpu_bytes - plain.phase("sampling").gpu_bytes
        ram = with_lora.phase("sampling").ram_bytes - plain.phase("sampling").ram_bytes
        # High: adapters on the GPU, the fused layers' originals in RAM. Low: adapters stream with the blocks.
        assert (gpu, ram) == ((adapters, lora.touched) if mode == "high" else (0, adapters))
    # Where the originals would not fit in the RAM left, the LoRA runs unfused and costs no RAM at all.
    tight, tight_lora = plan_memory(80 * GB, 40 * GB), plan_memory(80 * GB, 40 * GB, lora=lora)
    assert tight_lora.phase("sampling").ram_bytes == tight.phase("sampling").ram_bytes
    assert not any("fused" in item for item in tight_lora.phase("sampling").on_cpu)


def test_the_app_offers_the_lora_folder_and_applies_the_chosen_ones(models, tmp_path):
    from gradio_client import Client, handle_file
    from helpers import running_app

    folder = tmp_path / "loras"
    folder.mkdir()
    good, _ = random_lora("musubi", models.transformer, seed=71)
    write_lora(folder, "style.safetensors", good)
    for bad, _ in bad_files(tmp_path, models.transformer)[:5]:
        (folder / bad.name).write_bytes(bad.read_bytes())
    with running_app(tmp_path / "outputs", "--loras", str(folder)) as app:
        client = Client(app.url, verbose=False)
        endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]
        names = [p["parameter_name"] for p in endpoint["parameters"]]
        assert names[-2:] == ["loras", "lora_weights"]

        def run(**params):
            job = client.submit(handle_file(str(IMAGE)), total_second_length=0.4, resolution=128, steps=2,
                                latent_window_size=3, api_name="/generate", **params)  # fmt: skip
            job.result()
            return job.outputs()[-1][4]

        message = run(loras=["style.safetensors"], lora_weights="0.5")
        assert message.startswith("Finished"), message
        name = message.split("saved as `")[1].split(".mp4")[0]
        [lora] = json.loads((app.outputs / f"{name}.json").read_text())["loras"]
        assert (lora["name"], lora["weight"]) == ("style.safetensors", 0.5)
        # Loading that job's settings chooses its LoRA again, at its weight.
        from framepack.app.service import AppService

        loaded = AppService(None, "original", lora_folder=folder).settings_of_file(str(app.outputs / f"{name}.mp4")).values
        assert (loaded["loras"], loaded["lora_weights"]) == (["style.safetensors"], "style.safetensors=0.5")
        assert run(loras=["style.safetensors"], lora_weights="style.safetensors=0.25").startswith("Finished")
        # Every bad file gets its one line; names outside the folder are not reached.
        for bad, expected in bad_files(tmp_path, models.transformer)[:5]:
            assert expected in run(loras=[bad.name]), bad.name
        assert "there is no LoRA named '../outputs/x.safetensors'" in run(loras=["../outputs/x.safetensors"])
        assert "give one weight per LoRA: 1 LoRA(s), 2 weight(s)" in run(loras=["style.safetensors"], lora_weights="1, 2")
        # After all that, a job without LoRAs runs on the plain model.
        assert run().startswith("Finished")


def test_a_chosen_lora_is_checked_when_it_is_chosen(tmp_path):
    """The page reads a chosen LoRA file against the model's shapes at once (not after Start)."""
    from types import SimpleNamespace

    from helpers import random_lora

    from framepack.app.service import AppService
    from framepack.memory.sizes import ModelConfigs
    from framepack.models import ModelSource
    from framepack.models.components import meta_transformer

    transformer = meta_transformer(ModelConfigs.from_folder(TINY_MODELS, "original").transformer)
    tensors, _ = random_lora("musubi", transformer, 1)
    save_file(tensors, str(tmp_path / "good.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    front = SimpleNamespace(source=ModelSource(models_dir=TINY_MODELS), output_dir=tmp_path / "outputs")
    service = AppService(front, "original", lora_folder=tmp_path)
    assert service.check_loras(["good.safetensors"]) == "" and service.check_loras([]) == ""
    problem = service.check_loras(["good.safetensors", "broken.safetensors"])
    assert "broken.safetensors" in problem and "\n" not in problem
    assert "no LoRA named 'elsewhere.safetensors'" in service.check_loras(["elsewhere.safetensors"])
