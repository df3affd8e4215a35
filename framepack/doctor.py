"""`framepack doctor`: whether this machine is ready to run FramePack and, where it is not, what to do.

Each check is a small pure function from what was read off the machine (the torch build, nvidia-smi's answer,
free memory and disk, the model files found) to `Finding`s, so the decisions are tested with faked inputs; the
readers (`torch_build`, `nvidia_smi`, ...) are separate and `diagnose` runs everything, each check guarded, so a
broken machine gives findings, never a traceback. Which PyTorch build fits which GPU and driver is
`framepack.setup_rules`' (the tables setup installs by); the memory verdict is the plan the app makes before
loading (`check_before_loading`).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import huggingface_hub.constants
import torch

from . import setup_rules as rules
from .memory.planning import MemoryPlan, MemoryPlanError, check_before_loading
from .memory.sensing import DeviceMemory, detect_device
from .memory.sizes import GB, gb, published_sizes
from .models import ModelsMissingError, ModelSource, comfyui
from .models.attention import availability
from .models.download import free_disk, weights_complete
from .models.sources import DEFAULT_CACHE_DIR, HUNYUAN_REPO, REDUX_REPO, TRANSFORMER_REPOS, fetch_commands
from .settings import Settings

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    """One check's result: what it is about, ok/warn/fail, what was found, and what to do ('' when nothing)."""

    name: str
    status: Status
    found: str
    fix: str = ""


@dataclass(frozen=True)
class TorchBuild:
    """The installed torch: its version, the CUDA it was built for (None: a CPU-only build), the GPU
    architectures it has kernels for (`torch.cuda.get_arch_list()`: "sm_90" machine code, "compute_90" PTX), the
    GPUs it can use (name, compute capability) and why it cannot use CUDA where it cannot."""

    version: str
    cuda: str | None
    arch_list: tuple[str, ...] = ()
    gpus: tuple[tuple[str, rules.Capability], ...] = ()
    cuda_error: str = ""


@dataclass(frozen=True)
class SmiGpu:
    """A card as nvidia-smi lists it: name, driver, compute capability (see `setup_rules.Gpu`) and memory."""

    gpu: rules.Gpu
    memory_mib: int | None = None


@dataclass(frozen=True)
class Smi:
    """nvidia-smi's answer: not found (`found` False), the cards it lists, or why it failed."""

    found: bool
    gpus: tuple[SmiGpu, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class Host:
    """What PyTorch's builds depend on besides the GPUs: the OS, the processor, WSL (a Windows driver)."""

    os: str
    arch: str = "x86_64"
    wsl: bool = False


# ----------------------------------------------------------------------------------------------- reading the machine


def torch_build() -> TorchBuild:
    """The installed torch as `TorchBuild` describes it."""
    cuda = torch.version.cuda
    if not cuda:
        return TorchBuild(torch.__version__, None)
    gpus: tuple[tuple[str, rules.Capability], ...] = ()
    error = ""
    try:
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            gpus = tuple((torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i)) for i in range(count))
        else:
            error = "torch.cuda.is_available() is False"
    except (RuntimeError, AssertionError) as exc:  # a broken driver or CUDA runtime says so here
        error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TorchBuild(torch.__version__, cuda, tuple(torch.cuda.get_arch_list()), gpus, error)


def host() -> Host:
    os_name = {"Windows": "windows", "Darwin": "macos"}.get(platform.system(), "linux")
    arch = "arm64" if platform.machine().lower() in ("arm64", "aarch64") else "x86_64"
    return Host(os_name, arch, os_name == "linux" and "microsoft" in platform.release().lower())


SMI_FIELDS = "name,driver_version,memory.total,compute_cap"


def locate_nvidia_smi(where: Host, environ: Mapping[str, str] = os.environ,
                      is_file: Callable[[str], bool] = os.path.isfile) -> str | None:  # fmt: skip
    """nvidia-smi on PATH, or on Windows where the driver installs it (older drivers leave it off PATH)."""
    return rules.find_nvidia_smi(where.os, shutil.which("nvidia-smi"), environ, is_file)


def nvidia_smi() -> Smi:
    """Ask nvidia-smi for the cards; drivers too old for the compute_cap field get the query without it."""
    exe = locate_nvidia_smi(host())
    if exe is None:
        return Smi(False)
    output = ""
    for fields in (SMI_FIELDS, SMI_FIELDS.rsplit(",", 1)[0]):
        try:
            done = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                                  text=True, errors="replace", timeout=60, check=False)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            return Smi(True, error=f"nvidia-smi did not run: {exc}")
        output = (done.stdout + done.stderr).strip()
        if done.returncode == 0:
            try:
                return Smi(True, parse_smi(done.stdout, fields.endswith("compute_cap")))
            except ValueError as exc:
                return Smi(True, error=f"cannot read nvidia-smi's answer: {exc}")
    return Smi(True, error=f"nvidia-smi failed: {output.splitlines()[-1] if output else 'no output'}")


def parse_smi(text: str, with_capability: bool = True) -> tuple[SmiGpu, ...]:
    """Cards from `--query-gpu=name,driver_version,memory.total[,compute_cap] --format=csv,noheader` (names may
    hold commas, so fields are split from the right); the capability falls back to the name table."""
    found = []
    for line in filter(str.strip, text.splitlines()):
        fields = [part.strip() for part in line.rsplit(",", 3 if with_capability else 2)]
        if len(fields) < 3:
            raise ValueError(f"unexpected nvidia-smi line: {line!r}")
        memory = re.match(r"(\d+)\s*MiB", fields[2])
        listed = f"{fields[0]}, {fields[1]}" + (f", {fields[3]}" if len(fields) > 3 else "")
        (gpu,) = rules.parse_nvidia_smi(listed, len(fields) > 3)
        found.append(SmiGpu(gpu, int(memory.group(1)) if memory else None))
    return tuple(found)


# ----------------------------------------------------------------------------------------------- pure checks


def check_python(version: Sequence[int]) -> Finding:
    low, high = rules.PYTHON_RANGE
    found = ".".join(map(str, version[:3]))
    if low <= tuple(version[:2]) <= high:
        return Finding("Python", "ok", found)
    wanted = f"{low[0]}.{low[1]} to {high[0]}.{high[1]}"
    return Finding("Python", "fail", f"{found}: PyTorch {rules.TORCH_SERIES} publishes wheels for Python {wanted}",
                   f"install Python {wanted} and run setup again (setup.sh, or setup.bat on Windows)")  # fmt: skip


def arch_capabilities(arch_list: Sequence[str]) -> tuple[tuple[rules.Capability, ...], tuple[rules.Capability, ...]]:
    """(machine code, PTX) capabilities of `torch.cuda.get_arch_list()`: "sm_120" is (12, 0), "sm_90a" (9, 0),
    "compute_90" PTX for 9.0."""
    code, ptx = [], []
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+?)(\d)[a-z]?", arch)
        if match:
            (code if match.group(1) == "sm" else ptx).append((int(match.group(2)), int(match.group(3))))
    return tuple(code), tuple(ptx)


def runs_on(arch_list: Sequence[str], capability: rules.Capability) -> bool:
    """Whether a torch built for `arch_list` has kernels for a GPU of `capability`: machine code of the same major
    and no newer minor (setup_rules.has_kernels), or PTX of an older architecture, which the driver compiles."""
    code, ptx = arch_capabilities(arch_list)
    return rules.has_kernels(code, capability) or any(p <= capability for p in ptx)


def torch_fix(machine: rules.Machine, version: str) -> str:
    """What to run for a torch that fits `machine` (its GPUs and their driver), in setup's words."""
    base = version.split("+")[0]
    choice = rules.choose_torch(machine, base)
    if choice.problem:  # e.g. a driver too old for the build the card needs: that build once the driver is new
        capable = [b for b in rules.CUDA_BUILDS
                   if all(g.capability and rules.has_kernels(rules.build_kernels(b, machine.arch), g.capability)
                          for g in machine.gpus)]  # fmt: skip
        if not capable:
            return choice.problem
        index = capable[0].index_url
        return f'{choice.problem} After that: python -m pip install "torch=={base}+{capable[0].tag}" --index-url {index}'
    index = f" --index-url {choice.index_url}" if choice.index_url else ""
    return (f'run setup again (setup.sh, or setup.bat on Windows), or in this environment: python -m pip install '
            f'"{choice.requirement}"{index}')  # fmt: skip


def check_torch(build: TorchBuild, smi: Smi, where: Host) -> list[Finding]:
    """The torch build against the cards: a CPU-only build with an NVIDIA GPU, a build without kernels for a
    card ("no kernel image is available"), CUDA that does not start."""
    gpus = tuple(card.gpu for card in smi.gpus)
    machine = rules.Machine(where.os, where.arch, gpus, where.wsl)
    if build.cuda is None:
        found = f"{build.version}, a CPU-only build"
        if gpus:
            return [Finding("PyTorch", "fail", f"{found}, but nvidia-smi shows {gpus[0].name}: the GPU goes unused",
                            torch_fix(machine, build.version))]  # fmt: skip
        return [Finding("PyTorch", "ok", found)]
    findings = [Finding("PyTorch", "ok", f"{build.version}, built for CUDA {build.cuda}; kernels for "
                                         f"{', '.join(build.arch_list) or 'no GPU architectures'}")]  # fmt: skip
    cards = [(g.name, g.capability) for g in gpus] or list(build.gpus)
    for name, capability in cards:
        if capability is None:
            findings.append(Finding("GPU kernels", "warn", f"{name}: compute capability unknown",
                                    f"look it up at {rules.GPU_CAPABILITY_PAGE}"))  # fmt: skip
        elif runs_on(build.arch_list, capability):
            findings.append(Finding("GPU kernels", "ok", f"{name} (sm_{capability[0]}{capability[1]}): torch has "
                                                         "kernels for it"))  # fmt: skip
        else:
            findings.append(Finding(
                "GPU kernels", "fail",
                f"{name} is compute capability {rules.format_capability(capability)} (sm_{capability[0]}{capability[1]})"
                f", which this torch (CUDA {build.cuda}) has no kernels for: every GPU operation would fail with "
                "\"CUDA error: no kernel image is available for execution on the device\"",
                torch_fix(machine, build.version)))  # fmt: skip
    if cards and build.cuda_error and all(f.status == "ok" for f in findings):
        findings.append(Finding("GPU kernels", "fail", f"torch cannot start CUDA: {build.cuda_error}",
                                f"update or repair the NVIDIA driver ({rules.DRIVER_DOWNLOAD})"))  # fmt: skip
    return findings


def check_driver(smi: Smi, build: TorchBuild, where: Host) -> Finding:
    """The NVIDIA driver against the CUDA torch was built for (NVIDIA's minimum drivers, setup_rules')."""
    if not smi.found:
        return Finding("NVIDIA driver", "ok", "nvidia-smi not found: no NVIDIA GPU to use")
    if smi.error:
        return Finding("NVIDIA driver", "fail", smi.error, f"install or repair the NVIDIA driver ({rules.DRIVER_DOWNLOAD})")
    if not smi.gpus:
        return Finding("NVIDIA driver", "warn", "nvidia-smi lists no GPU")
    driver = min((card.gpu.driver for card in smi.gpus), key=rules.parse_version)
    column = rules.driver_column(where.os, where.wsl)
    newest = rules.max_cuda_for_driver(driver, column)
    found = f"{driver}" + (f" (runs CUDA up to {newest[0]}.{newest[1]})" if newest else "")
    cuda = re.match(r"(\d+)\.(\d+)", build.cuda or "")
    need = rules.min_driver((int(cuda.group(1)), int(cuda.group(2))), column) if cuda else None
    if need and rules.parse_version(driver) < rules.parse_version(need):
        return Finding("NVIDIA driver", "fail", f"{found}: torch's CUDA {build.cuda} needs {need} or newer",
                       f"install the current driver from {rules.DRIVER_DOWNLOAD}")  # fmt: skip
    return Finding("NVIDIA driver", "ok", found)


def check_device(memory: DeviceMemory, smi: Smi) -> Finding:
    """The device jobs run on, and its memory (nvidia-smi's total where torch sees no GPU)."""
    if memory.device.type == "cpu":
        slow = ": far too slow for the real model (hours a video)"
        listed = "; ".join(f"{c.gpu.name}, {gb(c.memory_mib * 2**20)}" for c in smi.gpus if c.memory_mib)
        if listed:  # the GPU is there and torch does not use it: the PyTorch findings say why
            return Finding("Device", "warn", f"runs on the CPU{slow}; nvidia-smi shows {listed}, unused",
                           "make torch use the GPU (the PyTorch and GPU kernels findings say how)")  # fmt: skip
        return Finding("Device", "warn", f"runs on the CPU{slow}", "an NVIDIA GPU with 6 GB or more")
    total = memory.vram_total or 0
    found = f"{memory.device}: {memory.name}, {gb(memory.vram_free or 0)} free of {gb(total)}"
    if memory.device.type == "cuda" and total < 6 * GB:
        return Finding("Device", "warn", f"{found}: below the 6 GB FramePack needs", "a GPU with 6 GB or more")
    return Finding("Device", "ok", found)


def check_ram(ram_free: int | None, ram_total: int | None, swap_free: int | None) -> Finding:
    if ram_total is None:
        return Finding("System memory", "warn", "unknown (no /proc/meminfo, psutil not installed)", "pip install psutil")
    swap = f", swap {gb(swap_free)} free" if swap_free is not None else ""
    return Finding("System memory", "ok", f"RAM {gb(ram_free or 0)} free of {gb(ram_total)}{swap}")


def check_disk(name: str, path: Path, free: int, needed: int = 0, spare: int = 5 * GB) -> Finding:
    """Free disk where files go: a failure below `needed` (what would download), a warning below `spare` more."""
    found = f"{gb(free)} free at {path}" + (f", {gb(needed)} to download" if needed else "")
    if free < needed:
        return Finding(name, "fail", found, f"free {gb(needed - free)} there or point the option at another disk")
    if free < needed + spare:
        return Finding(name, "warn", f"{found}: little room left", "free some disk space there")
    return Finding(name, "ok", found)


def check_attention(unavailable: dict[str, str | None], sdpa_error: str | None) -> Finding:
    """PyTorch's SDPA must run; SageAttention, flash-attn and xformers are optional speed-ups."""
    usable = [name for name, reason in unavailable.items() if reason is None and name != "sdpa"]
    why: dict[str, list[str]] = {}  # one reason often holds for all ("needs an NVIDIA GPU"): said once
    for name, reason in unavailable.items():
        if reason is not None:
            why.setdefault(reason.removeprefix(f"{name} "), []).append(name)
    if sdpa_error:
        return Finding("Attention", "fail", f"PyTorch SDPA fails: {sdpa_error}", "reinstall torch (run setup again)")
    found = f"sdpa runs; {', '.join(usable) or 'no optional backend'} usable" + "".join(
        f"; {', '.join(names)} not ({reason})" for reason, names in why.items())  # fmt: skip
    return Finding("Attention", "ok", found)


REQUIRED_ENCODERS = ("libx264",)  # the MP4 writer's
OPTIONAL_ENCODERS = ("libx265", "libvpx-vp9", "libsvtav1", "prores_ks", "libwebp_anim", "ffv1")  # post-processing's


def check_encoders(can_encode: Callable[[str], bool]) -> Finding:
    lacking = [name for name in REQUIRED_ENCODERS if not can_encode(name)]
    others = [name for name in OPTIONAL_ENCODERS if can_encode(name)]
    found = f"{', '.join(REQUIRED_ENCODERS)}" + (f"; also {', '.join(others)}" if others else "")
    if lacking:
        return Finding("Video encoders", "fail", f"PyAV lacks {', '.join(lacking)}",
                       "reinstall PyAV from PyPI (its wheels bundle FFmpeg with x264): pip install --force-reinstall av")
    return Finding("Video encoders", "ok", found)


@dataclass(frozen=True)
class ModelPart:
    """A subfolder of a repo the app loads (the repo itself for ""), and the component its weights are."""

    repo: str
    subfolder: str
    component: str | None  # None: configuration files only (tokenizers, processors)

    @property
    def label(self) -> str:
        return f"{self.repo}/{self.subfolder}" if self.subfolder else self.repo


def model_parts(variant: str) -> tuple[ModelPart, ...]:
    hunyuan = [ModelPart(HUNYUAN_REPO, s, None if s.startswith("tokenizer") else s)
               for s in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")]  # fmt: skip
    redux = [ModelPart(REDUX_REPO, "feature_extractor", None), ModelPart(REDUX_REPO, "image_encoder", "image_encoder")]
    return (*hunyuan, *redux, ModelPart(TRANSFORMER_REPOS[variant], "", "transformer"))


def check_models(found: dict[ModelPart, bool], sizes: dict[str, int], where: str, local: bool, offline: bool) -> Finding:
    """Which model files are here and which would download, with the published sizes. A local model root
    never downloads, nor does an offline hub: what is missing there fails."""
    present = [part.label for part, here in found.items() if here]
    missing = [part for part, here in found.items() if not here]
    lines = [f"in {where}: {len(present)} of {len(found)} parts present"]
    if missing:
        total = sum(sizes.get(part.component or "", 0) for part in missing)
        by_repo: dict[str, list[str]] = {}
        for part in missing:
            size = gb(sizes[part.component]) if part.component in sizes else ""
            by_repo.setdefault(part.repo, []).append(" ".join(filter(None, (part.subfolder, size))))
        listed = "; ".join(f"{repo} ({', '.join(filter(None, parts)) or 'configs'})" for repo, parts in by_repo.items())
        lines.append(f"would download {gb(total)}: {listed}")
    found_text = "; ".join(lines)
    wanted = [(part.repo, (part.subfolder,) if part.subfolder else ()) for part in missing]
    if not missing:
        return Finding("Model files", "ok", found_text)
    if local:
        return Finding("Model files", "fail", found_text.replace("would download", "missing"),
                       fetch_commands(wanted, local_root=where))  # fmt: skip
    fetch = fetch_commands(wanted, cache_dir=where)
    if offline:
        return Finding("Model files", "fail", f"{found_text} (HF_HUB_OFFLINE is set: nothing downloads)",
                       f"connect and unset HF_HUB_OFFLINE, or fetch them on a connected machine: {fetch}")
    return Finding("Model files", "warn", found_text, f"they download on the first run; to fetch them now: {fetch}")


def check_plan(plan: MemoryPlan, sized: str) -> Finding:
    """The memory plan's verdict for the default settings (`sized`: which models it sized)."""
    found = f"{plan.mode} mode ({plan.reason}), {sized}: {plan.summary()}"
    if plan.fits:
        return Finding("Memory plan", "ok", found)
    return Finding("Memory plan", "fail", f"{found}; {plan.problem().splitlines()[0]}",
                   "; ".join(plan.advice) or "framepack check-memory shows where the memory goes")  # fmt: skip


# ----------------------------------------------------------------------------------------------- running them


@dataclass(frozen=True)
class Places:
    """Where the models come from and the outputs go, as the other commands' options say."""

    models: Path | None = None
    hf_cache: Path = DEFAULT_CACHE_DIR
    output_dir: Path = Path("outputs")
    variant: str = "original"
    comfyui: Path | None = None  # ComfyUI's models folder, whose files replace the repos' weights


# What a check may raise on a broken machine or install; anything else is a bug and reaches the CLI's handler.
CHECK_ERRORS = (OSError, RuntimeError, ValueError, ImportError, subprocess.SubprocessError)


def diagnose(places: Places) -> list[Finding]:
    """Every check for this machine, in the order `report` prints them."""
    findings = [check_python(sys.version_info)]
    build, smi, where = torch_build(), nvidia_smi(), host()
    findings += guarded("PyTorch", lambda: check_torch(build, smi, where))
    findings += guarded("NVIDIA driver", lambda: [check_driver(smi, build, where)])
    try:
        memory = detect_device()
    except RuntimeError:  # CUDA that does not start (reported above): what the CPU has
        memory = detect_device("cpu")
    findings.append(check_device(memory, smi))
    findings.append(check_ram(memory.ram_free, memory.ram_total, memory.swap_free))
    findings += guarded("Attention", lambda: [check_attention(availability(memory.device), sdpa_error(memory.device))])
    findings += guarded("Video encoders", lambda: [check_encoders(can_encode)])
    findings += guarded("Model files", lambda: models_and_disk(places))
    outputs = places.output_dir
    findings += guarded("Disk (outputs)", lambda: [check_disk("Disk (outputs)", outputs, free_disk(outputs))])
    findings += guarded("Memory plan", lambda: [memory_plan(places, memory)])
    return findings


def before_start(places: Places) -> list[Finding]:
    """What the app says at start, before its memory plan, where it is not ok: the GPU and PyTorch build, then
    the model files (a plan that does not fit then reads after what explains it: no GPU, missing weights)."""
    build, smi, where = torch_build(), nvidia_smi(), host()
    findings = guarded("PyTorch", lambda: check_torch(build, smi, where))
    try:
        memory = detect_device()
    except RuntimeError:
        memory = detect_device("cpu")
    findings.append(check_device(memory, smi))
    findings += guarded("Model files", lambda: models_and_disk(places))
    return [finding for finding in findings if finding.status != "ok"]


def guarded(name: str, check: Callable[[], list[Finding]]) -> list[Finding]:
    try:
        return check()
    except CHECK_ERRORS as exc:
        return [Finding(name, "fail", f"could not check: {type(exc).__name__}: {exc}")]


def sdpa_error(device: torch.device) -> str | None:
    """Why PyTorch's scaled dot-product attention fails on `device` (a build without kernels for the GPU), or None."""
    try:
        q = torch.randn(1, 2, 16, 64, device=device, dtype=torch.float16 if device.type == "cuda" else torch.float32)
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except RuntimeError as exc:
        return str(exc).strip().splitlines()[0]
    return None


def can_encode(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False
    return True


def models_and_disk(places: Places) -> list[Finding]:
    """The model files' finding and the free disk where they are (or would download to)."""
    source = ModelSource(places.models, places.hf_cache)
    where = places.models if places.models is not None else source.hub_dir
    found, in_comfyui = {}, set()
    for part in model_parts(places.variant):
        folder = source.cached_folder(part.repo, (part.subfolder,) if part.subfolder else ())
        if places.comfyui is not None and comfyui_holds(places.comfyui, part, places.variant):
            in_comfyui.add(part)  # its weights are ComfyUI's file; its config (a transformer needs none) the repo's
            found[part] = part.component == "transformer" or folder is not None
        else:
            found[part] = folder is not None and (part.component is None or weights_complete(folder / part.subfolder))
    stored = published_sizes(torch.bfloat16, torch.float16)  # the published weights' dtypes (model-configs)
    sizes = {name: stored[name].total for name in stored.components}
    local, offline = places.models is not None, bool(huggingface_hub.constants.HF_HUB_OFFLINE)
    models = check_models(found, {**sizes, **{p.component: 0 for p in in_comfyui}}, str(where), local, offline)
    if in_comfyui:
        named = ", ".join(part.component or part.label for part in in_comfyui)
        models = Finding(models.name, models.status, f"{models.found}; from ComfyUI's {places.comfyui}: {named}", models.fix)
    needed = 0 if local else sum(sizes.get(p.component or "", 0) for p, here in found.items() if not here and p not in in_comfyui)
    return [models, check_disk("Disk (models)", where, free_disk(where), needed)]


def comfyui_holds(root: Path, part: ModelPart, variant: str) -> bool:
    """Whether ComfyUI's models folder `root` holds the weights of `part` (as `--comfyui-models` would load them)."""
    try:
        if part.component == "transformer":
            return comfyui.find_transformer(root, variant) is not None
        return part.component in comfyui.PARTS and comfyui.component_file(root, part.component).is_file()
    except comfyui.ComfyUIError:  # none there, or several transformers: the repo's weights are checked instead
        return False


def memory_plan(places: Places, memory: DeviceMemory) -> Finding:
    """The plan `check_before_loading` makes for the default settings, of the models found (published otherwise)."""
    settings = Settings(variant=places.variant)
    where = {"models_dir": places.models, "cache_dir": places.hf_cache}
    sized = f"models in {places.models}" if places.models else "models in the hub cache (published where missing)"
    try:
        try:
            plan = check_before_loading(settings, memory=memory, **where)
        except ModelsMissingError:  # the local root lacks files (reported above): size the published model
            plan, sized = check_before_loading(settings, memory=memory), "the published models"
    except MemoryPlanError as exc:
        plan = exc.plan
    return check_plan(plan, sized)


MARKS = {"ok": "ok", "warn": "warn", "fail": "FAIL"}


def report(findings: Sequence[Finding]) -> str:
    """One screen: a line per finding, its fix under it, and the verdict last."""
    width = max(len(f.name) for f in findings)
    lines = ["FramePack doctor"]
    for f in findings:
        lines.append(f"  {MARKS[f.status]:<4}  {f.name:<{width}}  {f.found}")
        if f.fix:
            lines.append(f"  {'':<4}  {'':<{width}}  -> {f.fix}")
    failed = [f.name for f in findings if f.status == "fail"]
    warned = [f.name for f in findings if f.status == "warn"]
    if failed:
        lines.append(f"Not ready: {len(failed)} problem(s) to fix ({', '.join(dict.fromkeys(failed))}).")
    else:
        lines.append("Ready" + (f", with warnings ({', '.join(dict.fromkeys(warned))})." if warned else "."))
    return "\n".join(lines)


def ready(findings: Sequence[Finding]) -> bool:
    return not any(f.status == "fail" for f in findings)
