"""Single-file transformers: bf16, fp16 and fp8 safetensors and GGUF files made from the tiny transformer load
through `--transformer-file`, run jobs, and are refused with a clear message when they do not fit the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel
from helpers import (
    IMAGE,
    REPO,
    SHORT_JOB,
    TINY_MODELS,
    TRANSFORMER_FOLDER,
    check_memory,
    needs_shared,
    section_latents,
    transformer_inputs,
)
from safetensors.torch import load_file, save_file

from framepack.events import Done
from framepack.loading import load_models, load_transformer_fp8
from framepack.lora import LoraSpec, apply_loras
from framepack.media.images import load_image
from framepack.memory.sizes import module_size
from framepack.models import ModelSource
from framepack.models.checkpoints import (
    CheckpointError,
    format_sizes,
    inspect_transformer_file,
    is_quantised,
    load_transformer_file,
)
from framepack.models.components import load_transformer, meta_transformer

pytestmark = needs_shared
CONFIG = json.loads((TRANSFORMER_FOLDER / "config.json").read_text()) if TRANSFORMER_FOLDER.is_dir() else {}
Q8_0, Q4_K = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_K
# Q8_0 keeps 8 bits per weight with a scale per 32: on the tiny model a job's latents stay this close to float32's.
Q8_0_LATENT_ATOL = 0.05


@pytest.fixture(scope="module")
def reference() -> HunyuanVideoFramepackTransformer3DModel:
    return load_transformer(TRANSFORMER_FOLDER, torch.float32)


def write_gguf(path: Path, tensors: dict[str, np.ndarray], quantise) -> Path:
    """A GGUF file as ComfyUI's converters write them ("hyvid" architecture, their key prefix): `quantise(name,
    array)` gives (data, GGUF type) for the tensors it quantises, None for those kept in float32."""
    writer = gguf.GGUFWriter(str(path), "hyvid")
    for name, array in tensors.items():
        quantised = quantise(name, array)
        if quantised is None:
            writer.add_tensor(f"model.diffusion_model.{name}", array.astype(np.float32))
        else:
            data, kind = quantised
            writer.add_tensor(f"model.diffusion_model.{name}", data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def q8_0_file(path: Path, transformer: torch.nn.Module) -> Path:
    def quantise(name: str, array: np.ndarray):
        if array.ndim == 2 and array.shape[1] % 32 == 0:
            return gguf.quants.quantize(array, Q8_0), Q8_0
        return None

    return write_gguf(path, {k: v.float().numpy() for k, v in transformer.state_dict().items()}, quantise)


def random_q4_k(rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """Valid Q4_K blocks of random content (the gguf package cannot quantise to Q4_K): per 256 weights a float16
    scale and minimum, twelve bytes of 6-bit sub-block scales and minima, and 128 bytes of 4-bit values. A weight
    is scale * sub-scale * value - minimum * sub-minimum: these make them about zero on average and below 0.1."""
    blocks = rows * columns // 256
    data = np.empty((blocks, 144), dtype=np.uint8)
    data[:, 0:2] = np.full(blocks, 1e-4, dtype=np.float16).view(np.uint8).reshape(blocks, 2)
    data[:, 2:4] = np.full(blocks, 7.5e-4, dtype=np.float16).view(np.uint8).reshape(blocks, 2)
    data[:, 4:] = rng.integers(0, 256, size=(blocks, 140), dtype=np.uint8)
    return data.reshape(rows, columns // 256 * 144)


# A small transformer whose rows split into whole Q4_K blocks (the tiny model's 32-wide rows do not).
Q4_CONFIG = {**CONFIG, "num_attention_heads": 2, "attention_head_dim": 128, "rope_axes_dim": [16, 56, 56],
             "num_layers": 1, "num_single_layers": 1, "num_refiner_layers": 1}  # fmt: skip


# ------------------------------------------------------------------------------------------ safetensors files


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_file_loads_the_weights_it_holds(reference, tmp_path, dtype):
    """A ComfyUI-style file (its key prefix, one file) in 16 bits: exactly its values, computing in float32."""
    path = tmp_path / "framepack_i2v.safetensors"
    save_file({f"model.diffusion_model.{k}": v.to(dtype) for k, v in reference.state_dict().items()}, str(path))
    transformer, file = load_transformer_file(path, CONFIG, "original", torch.float32)
    assert file.format == {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype] and not file.gguf
    assert file.total_bytes == sum(p.numel() * 2 for p in reference.parameters())
    loaded = transformer.state_dict()
    for name, weight in reference.state_dict().items():
        assert torch.equal(loaded[name], weight.to(dtype).float()), name
    assert transformer.proj_out.weight.dtype == torch.float32 and transformer.dtype == torch.float32


def test_an_fp8_file_loads_as_fp8_storage_exactly_as_fp8_loading_makes_it(reference, tmp_path):
    """An e4m3fn file as published for ComfyUI: the big layers stay 8-bit, and every weight is what `--fp8` makes
    of the same model (layers diffusers keeps wide are upcast from the file's 8 bits)."""
    fp8 = load_transformer_fp8(TRANSFORMER_FOLDER, torch.float32)
    state = {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 else v.bfloat16()) for k, v in reference.state_dict().items()}
    path = tmp_path / "FramePackI2V_HY_fp8_e4m3fn.safetensors"
    save_file(state, str(path))
    transformer, file = load_transformer_file(path, CONFIG, "original", torch.float32)
    assert file.format == "fp8"
    expected = fp8.state_dict()
    for name, weight in transformer.state_dict().items():
        assert weight.dtype == expected[name].dtype, name  # stored as --fp8 stores it
        assert torch.equal(weight.float(), state[name].to(weight.dtype).float()), name  # the file's values
        if state[name].dtype == torch.float8_e4m3fn and weight.dtype == torch.float8_e4m3fn:
            assert torch.equal(weight.float(), expected[name].float()), name
    inputs = transformer_inputs(transformer, 48, 80, 3)
    with torch.no_grad():
        out, reference_out = transformer(**inputs)[0], reference(**inputs)[0]
    assert out.dtype == torch.float32 and (out - reference_out).abs().max() < 0.1 * reference_out.abs().max()


# ------------------------------------------------------------------------------------------ GGUF files


def test_a_q8_0_gguf_file_dequantises_exactly_as_gguf_does(reference, tmp_path):
    path = q8_0_file(tmp_path / "framepack-Q8_0.gguf", reference)
    transformer, file = load_transformer_file(path, CONFIG, "original", torch.float32)
    assert file.gguf and file.format == "q8_0" and is_quantised(transformer)
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    reader = {t.name.removeprefix("model.diffusion_model."): t for t in gguf.GGUFReader(str(path)).tensors}
    quantised = 0
    for name, parameter in transformer.named_parameters():
        if isinstance(parameter, GGUFParameter):
            quantised += 1
            expected = gguf.quants.dequantize(reader[name].data, Q8_0)
            # diffusers dequantises in float16 (scale times value, one rounding): gguf's float32 values, rounded.
            assert torch.equal(dequantize_gguf_tensor(parameter), torch.from_numpy(expected).half()), name
    assert quantised == sum(1 for _, s in file.shapes.items() if len(s) == 2 and s[1] % 32 == 0)
    # The output head computes in float32, dequantised to it.
    assert transformer.proj_out.compute_dtype == torch.float32 and transformer.proj_out.bias.dtype == torch.float32


def test_a_q8_0_job_stays_close_to_the_float_job(tiny_models, reference, tmp_path):
    path = q8_0_file(tmp_path / "framepack-Q8_0.gguf", reference)
    quantised = load_models("original", ModelSource(models_dir=TINY_MODELS, transformer_file=path), device="cpu", dtype="float32")
    latents = section_latents(quantised, SHORT_JOB, tmp_path / "q8")
    expected = section_latents(tiny_models("original"), SHORT_JOB, tmp_path / "float")
    difference = (latents - expected).abs().max().item()
    assert 0 < difference < Q8_0_LATENT_ATOL, difference
    assert quantised.sources == {**quantised.sources, "transformer_file": str(path.resolve())}
    assert "transformer" not in quantised.sources


def test_a_q4_k_file_runs_as_its_dequantised_weights(tmp_path):
    """Q4_K blocks, dequantised by diffusers while the transformer runs, give the output of a float32 model
    holding gguf's own dequantisation of the same blocks."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    with torch.no_grad():
        model = HunyuanVideoFramepackTransformer3DModel.from_config(Q4_CONFIG).eval()
        tensors, q4 = {}, {}
        for name, weight in model.state_dict().items():
            tensors[name] = (weight * 0.2).numpy()
            if weight.ndim == 2 and weight.shape[1] % 256 == 0:
                q4[name] = random_q4_k(*weight.shape, rng)
                tensors[name] = gguf.quants.dequantize(q4[name], Q4_K)
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()})
    assert len(q4) > 10
    path = write_gguf(tmp_path / "small-Q4_K_M.gguf", tensors, lambda name, array: (q4[name], Q4_K) if name in q4 else None)
    transformer, file = load_transformer_file(path, Q4_CONFIG, "original", torch.float32)
    assert file.format == "q4_k"
    assert file.total_bytes == sum(q.nbytes for q in q4.values()) + sum(t.nbytes for n, t in tensors.items() if n not in q4)
    inputs = transformer_inputs(transformer, 48, 80, 3)
    with torch.no_grad():
        out, expected = transformer(**inputs)[0], model(**inputs)[0]
    # diffusers dequantises in float16: the weights differ from gguf's float32 values by float16 rounding.
    difference = ((out - expected).abs().max() / expected.abs().max()).item()
    assert difference < 2e-3, difference


def test_the_memory_plan_sizes_a_gguf_file_from_its_header(reference, tmp_path):
    """The sizes a plan uses for a GGUF file are its tensors' bytes (the non-quantised ones in the compute dtype);
    for a format without a file, every Linear whose rows split into whole blocks is quantised."""
    path = q8_0_file(tmp_path / "framepack-Q8_0.gguf", reference)
    file = inspect_transformer_file(path, CONFIG, "original")
    loaded, _ = load_transformer_file(path, CONFIG, "original", torch.float32)
    planned = meta_transformer(CONFIG)
    torch.nn.Module.to(planned, torch.float32)
    format_sizes(planned, "q8_0", file)
    assert module_size(planned) == module_size(loaded)
    without_file = meta_transformer(CONFIG)
    torch.nn.Module.to(without_file, torch.float32)
    format_sizes(without_file, "q8_0")
    # Without a file the output head (norm_out.linear and proj_out, 64x32 each) stays float32; the file has it quantised.
    head = 2 * (64 * 32 * 4 - 64 * 32 // 32 * 34)
    assert module_size(without_file).total == module_size(loaded).total + head


def test_loras_run_beside_a_quantised_transformer(tiny_models, reference, tmp_path):
    """Fusing into quantised weights is impossible: a LoRA on a GGUF transformer runs beside it, and taking it off
    gives the plain quantised model's output back."""
    from helpers import random_lora, write_lora

    path = q8_0_file(tmp_path / "framepack-Q8_0.gguf", reference)
    quantised = load_models("original", ModelSource(models_dir=TINY_MODELS, transformer_file=path), device="cpu", dtype="float32")
    plain = section_latents(quantised, SHORT_JOB, tmp_path / "plain")
    tensors, _ = random_lora("diffusers", reference, seed=3)
    lora = write_lora(tmp_path, "style.safetensors", tensors)
    with_lora = section_latents(quantised, SHORT_JOB, tmp_path / "lora", [LoraSpec(lora, 1.0)])
    assert not quantised.loras.fused
    assert (with_lora - plain).abs().max() > 1e-3
    apply_loras(quantised, [])
    assert torch.equal(section_latents(quantised, SHORT_JOB, tmp_path / "again"), plain)


def test_a_gguf_transformer_streams_block_by_block_and_is_planned_from_its_header(reference, tmp_path, capsys):
    """Low mode streams a quantised transformer's blocks like any other (here the "GPU" is the CPU); its plan
    counts the file's bytes, which `check-memory --transformer-file` reads from the header alone."""
    from diffusers.hooks import HookRegistry

    from framepack.memory.placement import place_component
    from framepack.memory.planning import plan_memory
    from framepack.memory.sizes import ModelConfigs, ModelSizes

    path = q8_0_file(tmp_path / "framepack-Q8_0.gguf", reference)
    file = inspect_transformer_file(path, CONFIG, "original")
    transformer, _ = load_transformer_file(path, CONFIG, "original", torch.float32)
    inputs = transformer_inputs(transformer, 48, 80, 3)
    with torch.no_grad():
        expected = transformer(**inputs)[0]
    sizes = ModelSizes.from_configs(ModelConfigs.from_folder(TINY_MODELS), torch.float32, torch.float32, transformer_file=file)
    assert sizes["transformer"] == module_size(transformer) and sizes.quantized == "q8_0"
    plan = plan_memory(1 << 30, 64 << 30, device="cpu", mode="low", sizes=sizes, height=48, width=80)
    place_component("transformer", transformer, plan)
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    assert all(HookRegistry.check_if_exists_or_initialize(b).get_hook("group_offloading") for b in blocks)
    with torch.no_grad():
        assert torch.equal(transformer(**inputs)[0], expected)

    code, lines, _ = check_memory("--vram", "6", "--ram", "16", "--models", str(TINY_MODELS), "--transformer-file", str(path), capsys=capsys)
    assert code == 0 and "transformer weights GGUF Q8_0, computing in bfloat16" in lines[1]
    code, _, err = check_memory("--vram", "6", "--transformer-file", str(tmp_path / "FramePack_F1.gguf"), capsys=capsys)
    assert code == 2 and err.strip() == "error: transformer file not found: FramePack_F1.gguf"


# ------------------------------------------------------------------------------------------ refusals


def bad_files(tmp_path: Path, reference) -> list[tuple[Path, str, str]]:
    state = {k: v.bfloat16() for k, v in reference.state_dict().items()}
    cases = []

    def add(name: str, tensors: dict, message: str, variant: str = "original") -> None:
        path = tmp_path / name
        save_file(tensors, str(path))
        cases.append((path, variant, message))

    add("lora.safetensors", {"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, "lora.safetensors is not a FramePack transformer")
    missing = dict(state)
    del missing["proj_out.weight"]
    add("part.safetensors", missing, "part.safetensors is not a whole FramePack transformer: 1 tensors are missing (e.g. proj_out.weight)")
    wan = {**state, "x_embedder.proj.weight": torch.zeros(48, 16, 1, 2, 2, dtype=torch.bfloat16)}
    add("wan.safetensors", wan, "wan.safetensors is for another model: its x_embedder.proj.weight is (48, 16, 1, 2, 2), this model's is (32, 16, 1, 2, 2)")
    add("FramePack_F1_I2V.safetensors", state, "is a FramePack-F1 transformer by its name, but the original FramePack")
    add("FramePackI2V_HY.safetensors", state, "is an original FramePack transformer by its name, but the FramePack-F1", "f1")
    garbage = tmp_path / "broken.gguf"
    garbage.write_bytes(b"GGUF" + os.urandom(64))
    cases.append((garbage, "original", "broken.gguf is not a GGUF file this app can read"))
    text = tmp_path / "notes.safetensors"
    text.write_text("not weights")
    cases.append((text, "original", "notes.safetensors is not a safetensors or GGUF file"))
    cases.append((tmp_path / "absent.gguf", "original", "transformer file not found"))
    return cases


def test_files_for_another_model_or_variant_are_refused_with_one_clear_line(reference, tmp_path):
    for path, variant, message in bad_files(tmp_path, reference):
        with pytest.raises(CheckpointError) as raised:
            inspect_transformer_file(path, CONFIG, variant)
        assert message in str(raised.value) and "\n" not in str(raised.value), (path.name, str(raised.value))


# ------------------------------------------------------------------------------------------ the command line


@pytest.mark.slow
def test_the_command_line_generates_with_a_gguf_file_and_a_branch_loads_it_again(reference, tmp_path):
    """The job's record names the file; a branch of the job (without the options: from the record) loads it
    and, keeping one section with the same settings, makes the same latents."""
    path = q8_0_file(tmp_path / "framepack-Q8_0.gguf", reference)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "framepack", *args, "--quiet"]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    job = ["--image", str(IMAGE), "--prompt", "a cat", "--seconds", "0.8", "--latent-window-size", "3", "--steps", "2",
           "--height", "48", "--width", "80", "--output-dir", str(tmp_path), "--models", str(TINY_MODELS)]  # fmt: skip
    made = cli("generate", *job, "--job-name", "source", "--transformer-file", str(path))
    assert made.returncode == 0, made.stderr
    assert json.loads((tmp_path / "source.json").read_text())["models"]["transformer_file"] == str(path.resolve())
    branched = cli("branch", str(tmp_path / "source.json"), "--keep-sections", "1", "--job-name", "again")
    assert branched.returncode == 0, branched.stderr
    assert json.loads((tmp_path / "again.json").read_text())["models"]["transformer_file"] == str(path.resolve())
    latents = [load_file(tmp_path / f"{name}.latents.safetensors")["latents"] for name in ("source", "again")]
    assert torch.equal(*latents)

    missing = cli("generate", *job, "--transformer-file", str(tmp_path / "missing.gguf"))
    assert missing.returncode == 1 and "error: transformer file not found: missing.gguf" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_the_app_takes_a_transformer_file_and_refuses_a_wrong_one_at_start(reference, tmp_path):
    from framepack.app import start as ui

    path = q8_0_file(tmp_path / "framepack-Q8_0.gguf", reference)
    common = ["--outputs", str(tmp_path / "out"), "--models", str(TINY_MODELS)]
    app = ui.create_app("original", ui.parse_args([*common, "--transformer-file", str(path)]))
    try:
        assert app.front.source.transformer_file == path.resolve()
        job = app.front.submit(SHORT_JOB, load_image(IMAGE))
        *_, last = job.events()
        assert isinstance(last, Done), last
        assert json.loads(Path(last.video_path).with_suffix(".json").read_text())["models"]["transformer_file"] == str(path.resolve())
    finally:
        app.front.close()
    with pytest.raises(SystemExit) as refused:
        ui.main("f1", [*common, "--transformer-file", str(path)])
    assert str(refused.value) == (
        "error: framepack-Q8_0.gguf is an original FramePack transformer by its name, but the FramePack-F1 "
        "(demo_gradio_f1.py, --variant f1) model is running"
    )
