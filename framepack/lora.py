"""LoRA for the FramePack transformer: the file formats trainers write, mapped onto the model's modules, applied
through diffusers' PEFT integration (several at once, each with its weight), fused when the set stays, undone
exactly.

Formats, told apart by their keys:
- diffusers / PEFT: `transformer.<module>.lora_A.weight` / `lora_B.weight` (alpha = rank unless the file's
  `lora_adapter_metadata` says otherwise);
- ComfyUI: `diffusion_model.<module>.lora_A|lora_down ...`;
- musubi-tuner (FramePack): `lora_unet_<module with "_" for ".">.lora_down.weight`, `.lora_up.weight`, `.alpha`;
- kohya (HunyuanVideo): `lora_unet_double_blocks_<n>_img_attn_qkv.lora_down.weight`, `single_blocks_<n>_linear1` ...;
- original HunyuanVideo names with lora_A/lora_B (diffusion-pipe, finetrainers): `double_blocks.<n>.img_attn_qkv`.
Original names with fused rows (q/k/v, and the single blocks' `linear1` = q, k, v, MLP) are split by the model's
real sizes; the down matrix is shared by the pieces. A module's scale is alpha / rank where the file gives an
alpha, else 1. Each LoRA becomes one PEFT adapter whose `lora_A` carries that scale.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .memory.placement import place_component
from .memory.planning import fuses_loras
from .memory.sizes import LoraBytes, ModelConfigs
from .models.checkpoints import is_quantised
from .models.components import ModelSet, meta_transformer
from .models.fp8 import has_fp8

FORMATS = {
    "diffusers": "diffusers / PEFT",
    "comfyui": "ComfyUI",
    "musubi": "musubi-tuner (FramePack)",
    "kohya": "kohya (HunyuanVideo)",
    "hunyuan": "HunyuanVideo names (diffusion-pipe, finetrainers)",
}
# The tensor names of one LoRA module's parts, whichever tool wrote them.
_PARTS = {
    "lora_A.weight": "down", "lora_down.weight": "down", "lora_B.weight": "up", "lora_up.weight": "up", "alpha": "alpha",
}  # fmt: skip
_PREFIXES = ("base_model.model.", "transformer.", "diffusion_model.", "model.diffusion_model.", "lora_unet_")

# Original HunyuanVideo module names (dots) -> the diffusers modules they became, in order; a fused module's
# rows are split over its pieces. "{n}" is a block number.
_DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn_proj": ("attn.to_out.0",),
    "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp.fc1": ("ff.net.0.proj",),
    "img_mlp.fc2": ("ff.net.2",),
    "txt_mlp.fc1": ("ff_context.net.0.proj",),
    "txt_mlp.fc2": ("ff_context.net.2",),
    "img_mod.linear": ("norm1.linear",),
    "txt_mod.linear": ("norm1_context.linear",),
}
_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.linear": ("norm.linear",),
}
_GLOBAL = {
    "time_in.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "time_in.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "guidance_in.mlp.0": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.mlp.2": "time_text_embed.guidance_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",  # its output halves are (shift, scale); diffusers' (scale, shift)
}


class LoraError(ValueError):
    """A LoRA file cannot be used; the message names the file and says what is wrong, in one line."""


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and the weight to apply it with (0 turns it off without unloading it)."""

    path: Path
    weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "weight", float(self.weight))

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """`PATH[:WEIGHT]`: the weight is what follows the last colon when it reads as a number (so
        `C:\\loras\\a.safetensors` keeps its drive letter)."""
        path, sep, weight = text.rpartition(":")
        if sep:
            try:
                return cls(Path(path), float(weight))
            except ValueError:
                pass
        return cls(Path(text))


@dataclass
class LoraModule:
    """One module of a LoRA file, mapped onto the model: the diffusers modules it adds to, with the rows of `up`
    that belong to each."""

    source: str  # the module's name in the file
    down: torch.Tensor  # (rank, in)
    up: torch.Tensor  # (out, rank)
    alpha: float | None
    targets: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # (module, indices of `up`'s rows)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank


@dataclass
class LoraFile:
    """A LoRA file read and matched against a transformer."""

    path: Path
    sha256: str
    format: str
    modules: list[LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ranks(self) -> list[int]:
        return sorted({module.rank for module in self.modules})

    @property
    def alphas(self) -> list[float]:
        return sorted({module.alpha for module in self.modules if module.alpha is not None})

    @property
    def target_names(self) -> list[str]:
        return [name for module in self.modules for name, _ in module.targets]

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter as diffusers' `load_lora_adapter` takes it (prefix None): the scale folded into lora_A."""
        state = {}
        for module in self.modules:
            down = (module.down.float() * module.scale).contiguous()
            for name, rows in module.targets:
                state[f"{name}.lora_A.weight"] = down
                state[f"{name}.lora_B.weight"] = module.up.float()[rows].contiguous()
        return state

    def nbytes(self, dtype: torch.dtype) -> int:
        """What the adapter holds once loaded in `dtype` (a fused row split shares nothing once loaded)."""
        size = torch.empty(0, dtype=dtype).element_size()
        return sum(module.down.numel() + module.up[rows].numel() for module in self.modules for _, rows in module.targets) * size


def linear_modules(transformer: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every Linear of the model by name, as a model without adapters names them."""
    found = {}
    for name, module in transformer.named_modules():
        base = getattr(module, "base_layer", None)  # a PEFT-wrapped layer answers for its base
        layer = base if isinstance(base, torch.nn.Linear) else module
        if isinstance(layer, torch.nn.Linear) and not name.endswith(".base_layer") and ".lora_" not in name:
            found[name] = (layer.in_features, layer.out_features)
    return found


def original_names(linears: dict[str, tuple[int, int]]) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """Original HunyuanVideo module names -> (diffusers module, rows of the fused output) for this model, by its
    real sizes."""
    mapping: dict[str, list[tuple[str, torch.Tensor]]] = {}

    def add(original: str, pieces: Sequence[str]) -> None:
        if not all(piece in linears for piece in pieces):
            return
        rows, start = [], 0
        for piece in pieces:
            size = linears[piece][1]
            rows.append((piece, torch.arange(start, start + size)))
            start += size
        mapping[original] = rows

    blocks = {int(m.group(1)) for name in linears if (m := re.match(r"transformer_blocks\.(\d+)\.", name))}
    singles = {int(m.group(1)) for name in linears if (m := re.match(r"single_transformer_blocks\.(\d+)\.", name))}
    for n in sorted(blocks):
        for original, pieces in _DOUBLE.items():
            add(f"double_blocks.{n}.{original}", [f"transformer_blocks.{n}.{p}" for p in pieces])
    for n in sorted(singles):
        for original, pieces in _SINGLE.items():
            add(f"single_blocks.{n}.{original}", [f"single_transformer_blocks.{n}.{p}" for p in pieces])
    for original, name in _GLOBAL.items():
        add(original, [name])
    if "final_layer.adaLN_modulation.1" in mapping:  # (shift, scale) rows become diffusers' (scale, shift)
        name, rows = mapping["final_layer.adaLN_modulation.1"][0]
        mapping["final_layer.adaLN_modulation.1"] = [(name, rows.roll(len(rows) // 2))]
    return mapping


def read_lora(path: str | Path, transformer: torch.nn.Module) -> LoraFile:
    """Read a LoRA file and match it against `transformer`. Raises `LoraError` for a file that is not a LoRA,
    one for another model (nothing matches, or shapes differ) or one that matches only part of its modules."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in keys}
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise LoraError(f"{path.name}: file not found") from None
    except (OSError, SafetensorError) as exc:
        raise LoraError(f"{path.name} is not a safetensors file ({type(exc).__name__})") from None

    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        for suffix, part in _PARTS.items():
            if key.endswith("." + suffix):
                parts.setdefault(key[: -len(suffix) - 1], {})[part] = tensor
                break
    parts = {name: p for name, p in parts.items() if "down" in p or "up" in p}
    if not parts:
        raise LoraError(f"{path.name} is not a LoRA: none of its {len(keys)} tensors is a lora_A/lora_B or lora_down/lora_up pair")

    linears = linear_modules(transformer)
    originals = original_names(linears)
    underscored = {name.replace(".", "_"): name for name in linears}
    underscored_originals = {name.replace(".", "_"): name for name in originals}
    default_alpha = _metadata_alpha(metadata)
    formats, modules, unmatched = set(), [], []
    for source, found in sorted(parts.items()):
        if "down" not in found or "up" not in found:
            raise LoraError(f"{path.name}: {source} has only one of its two matrices")
        prefix = next((p for p in _PREFIXES if source.startswith(p)), "")
        name = source[len(prefix) :]
        if prefix == "lora_unet_":
            name = underscored.get(name) or underscored_originals.get(name) or name
        kind = "original" if name in originals else "diffusers" if name in linears else None
        if kind is None:
            unmatched.append(source)
            continue
        formats.add(_format(prefix, kind))
        targets = originals[name] if kind == "original" else [(name, torch.arange(linears[name][1]))]
        alpha = found.get("alpha")
        module = LoraModule(source, found["down"], found["up"], float(alpha) if alpha is not None else default_alpha, targets)
        _check_shapes(path, module, linears)
        modules.append(module)
    if not modules:
        example = unmatched[0] if unmatched else "?"
        raise LoraError(f"{path.name} is not a LoRA for FramePack's transformer: none of its {len(unmatched)} modules (e.g. {example}) is in the model")  # fmt: skip
    if unmatched:
        raise LoraError(
            f"{path.name} matches only {len(modules)} of its {len(modules) + len(unmatched)} modules "
            f"(not in the model: {', '.join(unmatched[:3])}{', ...' if len(unmatched) > 3 else ''}): it is for another model or variant"
        )
    if len(formats) > 1:
        raise LoraError(f"{path.name} mixes key formats ({', '.join(sorted(formats))}); it cannot be read reliably")
    return LoraFile(path, digest, formats.pop(), modules, metadata)


# Metadata that trainers write about what a LoRA was trained on (kohya/musubi "ss_" keys, the model spec).
_TRAINED_ON = ("modelspec.architecture", "ss_base_model_version", "ss_network_module", "ss_output_name")


def describe_lora(file: LoraFile, variant: str) -> str:
    """What `lora-info` prints: format, rank, alpha, the model's layers it changes (grouped), and the fit."""
    scales = sorted({round(module.scale, 6) for module in file.modules})
    groups: dict[str, int] = {}
    for name in file.target_names:
        pattern = re.sub(r"\.\d+\.", ".N.", name)
        groups[pattern] = groups.get(pattern, 0) + 1
    lines = [
        f"file: {file.name}",
        f"sha256: {file.sha256}",
        f"format: {FORMATS[file.format]}",
        f"rank: {', '.join(map(str, file.ranks))}",
        f"alpha: {', '.join(f'{a:g}' for a in file.alphas) or 'none given (alpha = rank)'}; scale alpha/rank: {', '.join(f'{x:g}' for x in scales)}",
        f"modules: {len(file.modules)} in the file, changing {len(file.target_names)} layers of the model:",
        *(f"  {pattern} x{count}" for pattern, count in groups.items()),
    ]
    lines += [f"{key}: {file.metadata[key]}" for key in _TRAINED_ON if key in file.metadata]
    lines.append(f"fits: yes, every module matches the {variant} variant's transformer in name and shape")
    return "\n".join(lines)


def _format(prefix: str, kind: str) -> str:
    if prefix == "lora_unet_":
        return "kohya" if kind == "original" else "musubi"
    if kind == "original":
        return "hunyuan"
    return "comfyui" if "diffusion_model." in prefix else "diffusers"


def _metadata_alpha(metadata: dict[str, str]) -> float | None:
    """diffusers writes the adapter's config into the file: alpha = lora_alpha, when it differs from the rank."""
    try:
        config = json.loads(metadata["lora_adapter_metadata"])
        return float(config["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        return None


def _check_shapes(path: Path, module: LoraModule, linears: dict[str, tuple[int, int]]) -> None:
    rank, width = module.down.shape if module.down.ndim == 2 else (None, None)
    rows = sum(len(indices) for _, indices in module.targets)
    in_features = linears[module.targets[0][0]][0]
    if module.down.ndim != 2 or module.up.ndim != 2 or module.up.shape[1] != rank:
        raise LoraError(f"{path.name}: {module.source} has matrices of shapes {tuple(module.down.shape)} and {tuple(module.up.shape)}, not a LoRA pair")  # fmt: skip
    if width != in_features or module.up.shape[0] != rows:
        raise LoraError(
            f"{path.name}: {module.source} is {width} -> {module.up.shape[0]} wide, the model's {module.targets[0][0]} "
            f"{in_features} -> {rows}: it is for another model"
        )


@dataclass(frozen=True)
class AppliedLora:
    """A LoRA as a job applied it: what its record keeps, and what a resume checks."""

    name: str
    path: str
    sha256: str
    format: str
    weight: float

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "format": self.format, "weight": self.weight}


class LoraState:
    """The LoRAs on one transformer: one PEFT adapter per file, each with its weight, fused or not.

    `apply` brings the transformer to a set of (file, weight) without reloading it: files already loaded stay
    (by SHA-256), others are read, those no longer wanted are unloaded. Fused, the weights of the touched layers
    are kept aside first and put back bit for bit when the set changes (PEFT's own unmerge subtracts, which
    leaves rounding in the weights).
    """

    def __init__(self, transformer: torch.nn.Module):
        self.transformer = transformer
        self.files: dict[str, LoraFile] = {}  # adapter name -> file
        self.weights: dict[str, float] = {}  # adapter name -> weight, in the order set
        self.fused = False
        self._originals: dict[str, torch.Tensor] = {}  # touched layer -> its weight before fusing (on the CPU)
        self._hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> SHA-256

    def apply(self, specs: Sequence[LoraSpec], fuse: bool | Callable[[int], bool]) -> tuple[list[AppliedLora], bool]:
        """Make `specs` the transformer's LoRAs; `fuse` merges them into the weights (faster sampling), or says
        whether to from the bytes of the layers they touch (which fusing keeps a copy of). Returns what was
        applied, and whether the transformer's adapters changed (streaming must then be set up again)."""
        wanted: dict[str, float] = {}
        new: dict[str, LoraFile] = {}
        for spec in specs:
            digest = self._sha256(spec.path)
            name = f"lora_{digest[:16]}"
            if name in wanted:
                raise LoraError(f"{spec.path.name} is given twice")
            wanted[name] = spec.weight
            if name not in self.files:
                new[name] = read_lora(spec.path, self.transformer)
        if callable(fuse):
            fuse = fuse(self._touched_bytes([self.files.get(name) or new[name] for name in wanted]))
        unchanged = wanted == self.weights and not new
        changed = bool(new) or set(wanted) != set(self.files)
        if self.fused and not (unchanged and fuse):
            self._unfuse()
        for name in [n for n in self.files if n not in wanted]:
            self.transformer.delete_adapters(name)
            del self.files[name]
        for name, file in new.items():
            self._load(name, file)
        self.weights = wanted
        if not self.files:
            self._remove_layers()
        else:
            self.transformer.set_adapters(list(wanted), list(wanted.values()))
            if fuse and not self.fused:
                self._fuse()
        applied = [
            AppliedLora(self.files[name].name, str(spec.path), self.files[name].sha256, self.files[name].format, spec.weight)
            for name, spec in zip(wanted, specs)
        ]
        return applied, changed

    def _touched_bytes(self, files: Sequence[LoraFile]) -> int:
        modules = dict(self.transformer.named_modules())
        touched = {name for file in files for name in file.target_names}
        weights = (getattr(modules[name], "base_layer", modules[name]).weight for name in touched)
        return sum(weight.numel() * weight.element_size() for weight in weights)

    def _sha256(self, path: Path) -> str:
        try:
            stat = path.stat()
        except OSError:
            raise LoraError(f"{path.name}: file not found") from None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._hashes[key]

    def _load(self, name: str, file: LoraFile) -> None:
        self.transformer.load_lora_adapter(file.peft_state_dict(), adapter_name=name, prefix=None)
        # PEFT gives the adapter its base layer's dtype; fp8-stored layers compute in another dtype (and a float8
        # matrix product does not exist on most devices), so the adapter takes the compute dtype.
        compute = self.transformer.dtype
        for module in self.transformer.modules():
            for part in (getattr(module, "lora_A", None), getattr(module, "lora_B", None)):
                if isinstance(part, torch.nn.ModuleDict) and name in part:
                    part[name].to(compute)
        self.files[name] = file

    def _fuse(self) -> None:
        modules = dict(self.transformer.named_modules())
        touched = {target for file in self.files.values() for target in file.target_names}
        self._originals = {name: modules[name].base_layer.weight.detach().to("cpu", copy=True) for name in touched}
        self.transformer.fuse_lora(adapter_names=list(self.weights))
        self.fused = True

    def _unfuse(self) -> None:
        self.transformer.unfuse_lora()
        modules = dict(self.transformer.named_modules())
        with torch.no_grad():
            for name, weight in self._originals.items():
                modules[name].base_layer.weight.copy_(weight)
        self._originals = {}
        self.fused = False

    def _remove_layers(self) -> None:
        """With no LoRA left, the PEFT wrappers go too: the transformer is as it was loaded."""
        if getattr(self.transformer, "peft_config", None) is not None or any(
            hasattr(m, "base_layer") for m in self.transformer.modules()
        ):
            self.transformer.unload_lora()

    def memory(self) -> LoraBytes:
        """For a memory plan of the loaded set: the adapters are parameters of the transformer already (its
        sizes count them); the fused layers' originals are not."""
        return LoraBytes(adapters=0, touched=sum(t.numel() * t.element_size() for t in self._originals.values()))


def apply_loras(models: ModelSet, specs: Sequence[LoraSpec]) -> list[AppliedLora]:
    """Bring the model set's transformer to the job's LoRAs. They are fused where the transformer sits whole on
    one device in its own dtype and the copies of the touched layers fit in the RAM the plan leaves free; with
    fp8 storage, quantised (GGUF) weights, a streamed transformer or too little RAM they run beside it, unfused.
    `models.fuse_loras` overrides that, except that quantised weights cannot take a LoRA in."""
    if models.loras is None:
        if not specs:
            return []
        models.loras = LoraState(models.transformer)
    plan = models.placement.plan if models.placement is not None else None
    streamed = plan is not None and plan.mode == "low"

    def fuse(touched: int) -> bool:
        if models.fuse_loras is not None and not is_quantised(models.transformer):
            return models.fuse_loras
        mode = plan.mode if plan is not None else "cpu"
        room = None if plan is None or plan.ram_free is None else plan.ram_free - plan.peak_ram
        return fuses_loras(mode, has_fp8(models.transformer), is_quantised(models.transformer), touched, room)

    applied, changed = models.loras.apply(specs, fuse)
    if changed and streamed:
        # The adapters' weights must stream with their blocks: set the streaming up again around them.
        place_component("transformer", models.transformer, models.placement.plan)
    return applied


def specs_from_record(entries: Sequence[dict[str, object]]) -> list[LoraSpec]:
    """The LoRAs a job was made with, as its record lists them, checked to be the same files (SHA-256): a job
    must not go on with other weights than it began with."""
    specs = []
    for entry in entries:
        path = Path(str(entry["path"]))
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            raise LoraError(f"the LoRA {entry['name']} this job was made with is gone; put it back to go on") from None
        if digest != entry["sha256"]:
            raise LoraError(f"the LoRA {entry['name']} changed since this job began (SHA-256 differs); it cannot go on with other weights")  # fmt: skip
        specs.append(LoraSpec(path, float(entry["weight"])))
    return specs


def lora_bytes(paths: Sequence[str | os.PathLike], configs: ModelConfigs, dtype: torch.dtype) -> LoraBytes:
    """What LoRA files add to a plan, matched against the transformer of `configs` built on the meta device."""
    transformer = meta_transformer(configs.transformer, dtype)
    files = [read_lora(path, transformer) for path in paths]
    modules = dict(transformer.named_modules())
    touched = {name for file in files for name in file.target_names}
    weights = (modules[name].weight for name in touched)
    return LoraBytes(sum(file.nbytes(dtype) for file in files), sum(w.numel() * w.element_size() for w in weights))

