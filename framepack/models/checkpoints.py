"""Single-file transformer checkpoints users already have: bf16, fp16 and fp8 (e4m3fn, as published for ComfyUI)
safetensors files, and GGUF files (Q8_0 and the k-quants, through diffusers' GGUF support).

`inspect_transformer_file` reads only a file's header (names, shapes, storage types): enough to check that it is a
FramePack transformer and to plan its memory. `load_transformer_file` loads it into diffusers' class.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel
from safetensors import SafetensorError, safe_open

from .components import keep_output_head_in_float32, meta_transformer
from .fp8 import enable_fp8

# GGUF quantisations diffusers can run, by their names in lower case: (weights per block, bytes per block).
GGUF_BLOCKS = {
    "q8_0": (32, 34), "q6_k": (256, 210), "q5_k": (256, 176), "q5_1": (32, 24), "q5_0": (32, 22),
    "q4_k": (256, 144), "q4_1": (32, 20), "q4_0": (32, 18), "iq4_xs": (256, 136), "iq4_nl": (32, 18),
    "q3_k": (256, 110), "q2_k": (256, 84),
}  # fmt: skip
# The storage formats a memory plan can be made for without a file (`check-memory --transformer-format`).
FORMATS = ("bf16", "fp16", "fp8", "q8_0", "q6_k", "q5_k", "q4_k")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "model.")
_SAFETENSORS_DTYPES = {
    "BF16": ("bf16", torch.bfloat16), "F16": ("fp16", torch.float16), "F32": ("fp32", torch.float32),
    "F8_E4M3": ("fp8", torch.float8_e4m3fn),
}  # fmt: skip
_F1_NAME = re.compile(r"(?:^|[^a-z0-9])f1(?:[^a-z0-9]|$)", re.IGNORECASE)
_OUTPUT_HEAD = ("norm_out.", "proj_out.")


class CheckpointError(ValueError):
    """A transformer file cannot be used; the message names the file and says why, in one line."""


@dataclass(frozen=True)
class TransformerFile:
    """What a transformer file's header says: its format, and its tensors' names, shapes and bytes."""

    path: Path
    format: str  # bf16, fp16, fp8, fp32, or a GGUF quantisation in lower case (q8_0, q4_k, ...)
    shapes: dict[str, tuple[int, ...]]
    formats: dict[str, str]  # each tensor's own storage format
    nbytes: dict[str, int]

    @property
    def gguf(self) -> bool:
        return self.format in GGUF_BLOCKS

    @property
    def total_bytes(self) -> int:
        return sum(self.nbytes.values())

    @property
    def looks_like_f1(self) -> bool:
        """The published F1 files say so in their names; the two variants' tensors are the same shapes."""
        return bool(_F1_NAME.search(self.path.stem))


def strip_prefix(name: str) -> str:
    """A tensor's name in diffusers' transformer, whatever prefix the exporting tool put before it."""
    return next((name[len(p) :] for p in _PREFIXES if name.startswith(p)), name)


def inspect_transformer_file(path: str | os.PathLike, config: dict[str, Any], variant: str) -> TransformerFile:
    """Read a single-file transformer's header and check it against the architecture of `config`: every tensor
    there and of the same shape, and the variant its name gives. Raises `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"transformer file not found: {path.name}")
    found = _gguf_header(path) if path.suffix.lower() == ".gguf" else _safetensors_header(path)
    expected = {name: tuple(p.shape) for name, p in meta_transformer(config).named_parameters()}
    shapes = {name: shape for name, (shape, _, _) in found.items()}
    unknown = sorted(set(shapes) - set(expected))
    missing = sorted(set(expected) - set(shapes))
    if len(unknown) == len(shapes):
        example = f" (e.g. {unknown[0]})" if unknown else ""
        raise CheckpointError(f"{path.name} is not a FramePack transformer: none of its {len(shapes)} tensors is one{example}")
    if unknown or missing:
        detail = f"{len(missing)} tensors are missing (e.g. {missing[0]})" if missing else f"it has {len(unknown)} tensors this model does not (e.g. {unknown[0]})"
        raise CheckpointError(f"{path.name} is not a whole FramePack transformer: {detail}")
    wrong = [name for name, shape in shapes.items() if shape != expected[name]]
    if wrong:
        name = wrong[0]
        raise CheckpointError(f"{path.name} is for another model: its {name} is {shapes[name]}, this model's is {expected[name]}")
    # The format is what most of the big matrices are stored in (norms and biases stay wider in every format).
    matrices = [fmt for shape, fmt, _ in found.values() if len(shape) == 2]
    file = TransformerFile(
        path, max(set(matrices), key=matrices.count), shapes, {n: f for n, (_, f, _) in found.items()},
        {n: b for n, (_, _, b) in found.items()},
    )  # fmt: skip
    if file.format not in (*GGUF_BLOCKS, "bf16", "fp16", "fp32", "fp8"):
        raise CheckpointError(f"{path.name} stores its weights as {file.format}, which this app cannot load")
    if file.looks_like_f1 != (variant == "f1"):
        said = "a FramePack-F1" if file.looks_like_f1 else "an original FramePack"
        wanted = "FramePack-F1 (demo_gradio_f1.py, --variant f1)" if variant == "f1" else "original FramePack (demo_gradio.py, --variant original)"
        raise CheckpointError(f"{path.name} is {said} transformer by its name, but the {wanted} model is running")
    return file


def _safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], str, int]]:
    try:
        with safe_open(str(path), "pt") as f:
            found = {}
            for key in f.keys():
                tensor = f.get_slice(key)
                shape, dtype = tuple(tensor.get_shape()), tensor.get_dtype()
                fmt, torch_dtype = _SAFETENSORS_DTYPES.get(dtype, (dtype.lower(), torch.float32))
                found[strip_prefix(key)] = (shape, fmt, torch_dtype.itemsize * _numel(shape))
            return found
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path.name} is not a safetensors or GGUF file ({type(exc).__name__})") from None


def _gguf_header(path: Path) -> dict[str, tuple[tuple[int, ...], str, int]]:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path.name} is not a GGUF file this app can read ({type(exc).__name__})") from None
    names = {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}
    found = {}
    for tensor in reader.tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # GGUF lists dimensions innermost first
        fmt = names.get(tensor.tensor_type.name, tensor.tensor_type.name.lower())
        found[strip_prefix(tensor.name)] = (shape, fmt, int(tensor.n_bytes))
    return found


def _numel(shape: Iterable[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def load_transformer_file(
    path: str | os.PathLike, config: dict[str, Any], variant: str, dtype: torch.dtype, fp8: bool = False,
    matmuls: bool = False,
) -> tuple[HunyuanVideoFramepackTransformer3DModel, TransformerFile]:  # fmt: skip
    """Load a single-file transformer with the architecture of `config`, computing in `dtype`, its output head in
    float32 as always. An fp8 file (or `fp8`) keeps its big layers in 8 bits, exactly as `--fp8` stores them
    (diffusers' layerwise casting; `matmuls`: multiplying in fp8 too); a GGUF file stays quantised and each
    layer is dequantised as it runs."""
    file = inspect_transformer_file(path, config, variant)
    if file.gguf:
        if matmuls:
            raise CheckpointError(f"{file.path.name} is GGUF, which computes in bf16: fp8 compute needs 16-bit or fp8 weights")
        return _load_gguf(file, config, dtype), file

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        with safe_open(str(file.path), "pt") as f:
            for key in f.keys():
                yield strip_prefix(key), f.get_tensor(key)

    fp8 = fp8 or matmuls or file.format == "fp8"
    return transformer_from_tensors(config, tensors(), file.path.name, dtype, fp8, matmuls), file


def transformer_from_tensors(
    config: dict[str, Any], tensors: Iterable[tuple[str, torch.Tensor]], source: str, dtype: torch.dtype, fp8: bool,
    matmuls: bool = False,
) -> HunyuanVideoFramepackTransformer3DModel:  # fmt: skip
    """The transformer of `config` computing in `dtype` (its output head in float32), its weights cast tensor by
    tensor as they are read, to fp8 storage where `fp8` says (diffusers' layerwise casting, as `--fp8`; with
    `matmuls` multiplying in fp8 too): the same weights as loading it whole and casting it then, without ever
    holding it at the file's precision."""
    transformer = meta_transformer(config)
    torch.nn.Module.to(transformer, dtype)
    transformer.norm_out.float()
    transformer.proj_out.float()
    if fp8:
        enable_fp8(transformer, matmuls)  # on the meta device: each tensor's storage dtype, and the casting hooks
    assign_weights(transformer, tensors, source)
    transformer.eval().requires_grad_(False)
    keep_output_head_in_float32(transformer)
    return transformer


def assign_weights(model: torch.nn.Module, tensors: Iterable[tuple[str, torch.Tensor]], source: str) -> None:
    """Put each (name, tensor) into `model` (built on the meta device) as a parameter of the dtype it has there,
    one tensor at a time, so memory never holds a weight at two precisions for long. Every parameter must come."""
    owners = dict(model.named_modules())
    missing = {name for name, _ in model.named_parameters()}
    for key, tensor in tensors:
        owner_name, _, attribute = key.rpartition(".")
        owner = owners.get(owner_name)
        current = getattr(owner, attribute, None) if owner is not None else None
        if not isinstance(current, torch.nn.Parameter) or tuple(current.shape) != tuple(tensor.shape):
            raise CheckpointError(f"{source} holds {key} {tuple(tensor.shape)}, which the FramePack transformer does not have")
        owner._parameters[attribute] = torch.nn.Parameter(tensor.to(current.dtype), requires_grad=False)
        missing.discard(key)
    if missing:
        raise CheckpointError(f"{source} lacks {len(missing)} tensors of the FramePack transformer (e.g. {sorted(missing)[0]})")


def _load_gguf(file: TransformerFile, config: dict[str, Any], dtype: torch.dtype) -> HunyuanVideoFramepackTransformer3DModel:
    from diffusers import GGUFQuantizationConfig
    from diffusers.loaders import single_file_model

    # diffusers' single-file loader lists the classes it knows and does not list this one yet; the published files
    # use diffusers' own tensor names, so only the exporters' prefixes need to go.
    single_file_model.SINGLE_FILE_LOADABLE_CLASSES.setdefault(
        "HunyuanVideoFramepackTransformer3DModel", {"checkpoint_mapping_fn": _strip_prefixes}
    )
    with tempfile.TemporaryDirectory(prefix="framepack-config-") as folder:
        (Path(folder) / "config.json").write_text(json.dumps({"_class_name": "HunyuanVideoFramepackTransformer3DModel", **config}))
        try:
            transformer = HunyuanVideoFramepackTransformer3DModel.from_single_file(
                str(file.path), config=folder, quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
                torch_dtype=dtype, local_files_only=True,
            )  # fmt: skip
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{file.path.name} could not be loaded as a GGUF transformer ({type(exc).__name__}: {str(exc)[:200]})") from exc
    transformer.eval().requires_grad_(False)
    _quantised_head_in_float32(transformer)
    return transformer


def _strip_prefixes(checkpoint: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return {strip_prefix(key): value for key, value in checkpoint.items()}


def _quantised_head_in_float32(transformer: HunyuanVideoFramepackTransformer3DModel) -> None:
    """The output head in float32 as `keep_output_head_in_float32` makes it, where some of its layers may be
    quantised: those dequantise to float32, the others are cast (casting a quantised tensor would ruin it)."""
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    for head in (transformer.norm_out, transformer.proj_out):
        for module in head.modules():
            if isinstance(module, GGUFLinear):
                module.compute_dtype = torch.float32
            for name, parameter in module.named_parameters(recurse=False):
                if not isinstance(parameter, GGUFParameter):
                    module._parameters[name] = torch.nn.Parameter(parameter.float(), requires_grad=False)
    keep_output_head_in_float32(transformer)


def is_quantised(transformer: torch.nn.Module) -> bool:
    """Whether the transformer holds quantised (GGUF) weights: LoRAs then run beside them, unfused."""
    return getattr(transformer, "is_quantized", False)


def format_sizes(transformer: torch.nn.Module, fmt: str, file: TransformerFile | None = None) -> None:
    """Make a meta-device transformer's parameters take the bytes they take in GGUF format `fmt`: a file's own
    bytes per tensor where there is one, else every Linear weight whose rows split into whole blocks quantised
    (the output head aside), the rest in the compute dtype, as diffusers loads them. A quantised weight becomes a
    uint8 tensor of its blocks' bytes, as diffusers holds it, so the plan's sizes count it as it will be."""
    block, block_bytes = GGUF_BLOCKS[fmt]
    for module_name, module in transformer.named_modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            full = f"{module_name}.{name}" if module_name else name
            if file is not None:
                quantised, nbytes = file.formats[full] in GGUF_BLOCKS, file.nbytes[full]
            else:
                quantised = isinstance(module, torch.nn.Linear) and name == "weight" and module.in_features % block == 0
                quantised = quantised and not full.startswith(_OUTPUT_HEAD)
                nbytes = parameter.numel() // block * block_bytes
            if quantised:
                module._parameters[name] = torch.nn.Parameter(
                    torch.empty((parameter.shape[0], nbytes // parameter.shape[0]), dtype=torch.uint8, device="meta"),
                    requires_grad=False,
                )
