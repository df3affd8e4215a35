"""Which PyTorch build and which optional attention packages fit a machine: the tables and pure functions.

install.py loads this file by its path before anything is installed (importing the framepack package would
import torch), and a `framepack doctor` command can import it as `framepack.setup_rules`. So it uses the
standard library only and imports nothing from framepack. Every table names its source. The tables describe
PyTorch TORCH_SERIES; a test ties that to the torch pin in requirements.txt, so bumping torch means revisiting
them.
"""

from __future__ import annotations

import ntpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

TORCH_SERIES = "2.13"

# Python versions PyTorch 2.13 publishes wheels for: ">=3.10, <=3.15" in PyTorch's Release Compatibility
# Matrix (RELEASE.md, row added by https://github.com/pytorch/pytorch/pull/187075).
PYTHON_RANGE: tuple[tuple[int, int], tuple[int, int]] = ((3, 10), (3, 15))

PYTORCH_INDEX = "https://download.pytorch.org/whl"
DRIVER_DOWNLOAD = "https://www.nvidia.com/drivers"
GPU_CAPABILITY_PAGE = "https://developer.nvidia.com/cuda-gpus"

OS_NAMES = ("windows", "linux", "macos")
ATTENTION_NAMES = ("sage", "flash", "xformers")

Capability = tuple[int, int]

# The oldest driver each CUDA release (GA) runs on, by the driver's OS: NVIDIA's CUDA Toolkit Release Notes,
# Table 3 "CUDA Toolkit and Corresponding Driver Versions"
# (https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/index.html). From CUDA 13.0 on that table gives no
# Windows number ("N/A": the Windows installer stopped bundling a driver). For 13.0 the Windows minimum,
# 580.88, is the one PyTorch's 2.12 release notes state for its CUDA 13.0 wheels
# (https://pytorch.org/blog/pytorch-2-12-release-blog/). None: not published, so never assumed.
CUDA_MIN_DRIVER: dict[tuple[int, int], dict[str, str | None]] = {
    (13, 2): {"linux": "595.45.04", "windows": None},
    (13, 1): {"linux": "590.44.01", "windows": None},
    (13, 0): {"linux": "580.65.06", "windows": "580.88"},
    (12, 9): {"linux": "575.51.03", "windows": "576.02"},
    (12, 8): {"linux": "570.26", "windows": "570.65"},
    (12, 6): {"linux": "560.28.03", "windows": "560.76"},
    (12, 5): {"linux": "555.42.02", "windows": "555.85"},
    (12, 4): {"linux": "550.54.14", "windows": "551.61"},
    (12, 3): {"linux": "545.23.06", "windows": "545.84"},
    (12, 2): {"linux": "535.54.03", "windows": "536.25"},
    (12, 1): {"linux": "530.30.02", "windows": "531.14"},
    (12, 0): {"linux": "525.60.13", "windows": "527.41"},
    (11, 8): {"linux": "520.61.05", "windows": "520.06"},
}


@dataclass(frozen=True)
class CudaBuild:
    """One of PyTorch's CUDA builds: its index tag and the compute capabilities it ships kernels (SASS) for."""

    tag: str
    cuda: tuple[int, int]
    kernels: tuple[Capability, ...]  # Linux x86_64 and Windows builds
    kernels_aarch64: tuple[Capability, ...]  # Linux aarch64 builds

    @property
    def index_url(self) -> str:
        return f"{PYTORCH_INDEX}/{self.tag}"

    @property
    def label(self) -> str:
        return f"CUDA {self.cuda[0]}.{self.cuda[1]} build ({self.tag})"


# PyTorch 2.13's CUDA builds, the preferred first. Kernels from PyTorch's CUDA Support Matrix, identical for
# 2.12, 2.13 and 2.14 (RELEASE.md; https://github.com/pytorch/pytorch/pull/182849, /pull/197555, and the 2.14
# RFC https://github.com/pytorch/pytorch/issues/190355):
#   CUDA 12.6.3: Maxwell 5.0, Pascal 6.0, Volta 7.0, Turing 7.5, Ampere 8.0 8.6, Hopper 9.0 (aarch64: 8.0 9.0)
#   CUDA 13.0.x: Turing 7.5, Ampere 8.0 8.6, Hopper 9.0, Blackwell 10.0 12.0 (aarch64: 8.0 9.0 10.0 11.0 12.0)
# Not used: CUDA 13.2 is "experimental" in 2.13 (pull/187075); CUDA 12.8, the first with Blackwell kernels, was
# dropped in 2.12 (https://github.com/pytorch/pytorch/issues/178665). So an RTX 50 card needs cu130 and a driver
# for CUDA 13.0, and Pascal and older need cu126 (CUDA 13 builds have no kernels for them).
CUDA_BUILDS: tuple[CudaBuild, ...] = (
    CudaBuild("cu130", (13, 0), ((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0)),
              ((8, 0), (9, 0), (10, 0), (11, 0), (12, 0))),
    CudaBuild("cu126", (12, 6), ((5, 0), (6, 0), (7, 0), (7, 5), (8, 0), (8, 6), (9, 0)), ((8, 0), (9, 0))),
)  # fmt: skip

# GPU name -> compute capability, for drivers whose nvidia-smi has no compute_cap field. First match wins, so
# the narrower patterns come first. From NVIDIA's tables: https://developer.nvidia.com/cuda-gpus and
# https://developer.nvidia.com/cuda-legacy-gpus.
GPU_NAME_CAPABILITIES: tuple[tuple[str, Capability], ...] = (
    (r"\bGB10\b", (12, 1)),
    (r"RTX PRO \d+ Blackwell|RTX 50\d0", (12, 0)),
    (r"\b(GB300|B300)\b", (10, 3)),
    (r"\b(GB200|B200)\b", (10, 0)),
    (r"\b(GH200|H200|H100)\b", (9, 0)),
    (r"\b(L4|L40S?)\b|RTX \d000 (SFF )?Ada|RTX 40\d0", (8, 9)),
    (r"\b(A100|A30)\b", (8, 0)),
    (r"\b(A40|A10|A16|A2)\b|RTX A\d000|RTX 30\d0", (8, 6)),
    (r"\bT4\b|\bT(400|600|1000)\b|RTX 20\d0|GTX 16\d0|TITAN RTX|Quadro RTX", (7, 5)),
    (r"\bV100\b|TITAN V\b|Quadro GV100", (7, 0)),
    (r"\bP100\b|Quadro GP100", (6, 0)),
    (r"GTX TITAN X\b|GTX 9\d0|\b(M40|M60)\b", (5, 2)),
    (r"GTX 10\d0|TITAN Xp?\b|\b(P4|P40)\b|Quadro P\d+", (6, 1)),
    (r"GTX 750", (5, 0)),
)

# SageAttention 1.0.6 (PyPI's only build: a pure-Python wheel of Triton kernels that declares no
# dependencies, so Triton is named here). Its kernels target Ampere, Ada and Hopper (thu-ml/SageAttention's
# README); on Turing they fail with Triton >= 3.3 (https://github.com/woct0rdho/SageAttention/issues/20) and
# PyTorch 2.13 goes with Triton 3.7, so Turing is left out. On Blackwell the reports disagree (crashes:
# https://github.com/thu-ml/SageAttention/issues/107; runs without a speed-up:
# https://github.com/woct0rdho/SageAttention/issues/87), so it is left out too. Triton for PyTorch 2.13 is 3.7.x
# (https://github.com/triton-lang/triton-windows/issues/42); Windows has it as `triton-windows`, which has no
# Linux wheels (pip's own index answers so), so Linux takes `triton`.
SAGE_PACKAGE = "sageattention==1.0.6"
SAGE_CAPABILITIES: tuple[Capability, Capability] = ((8, 0), (9, 9))
TRITON_PACKAGE = {"windows": "triton-windows>=3.7,<3.8", "linux": "triton>=3.7,<3.8"}
# xformers: wheels for Linux x86_64 and Windows on PyPI and on each of PyTorch's CUDA indexes; every release is
# built for one PyTorch version (xformers 0.0.34 requires torch==2.10.0:
# https://github.com/facebookresearch/xformers/issues/1374), so pip is asked for one that accepts the torch
# just installed, from the same index, and the package is skipped when there is none. Pre-Turing cards are
# left out: no source confirms xformers' kernels for them in these builds.
XFORMERS_MIN_CAPABILITY: Capability = (7, 5)


@dataclass(frozen=True)
class Gpu:
    """One NVIDIA card as nvidia-smi (or the user) describes it."""

    name: str
    driver: str
    capability: Capability | None = None
    capability_from: str = ""  # "nvidia-smi", "the GPU name", "--compute-cap"

    def describe(self) -> str:
        cap = "unknown compute capability"
        if self.capability is not None:
            cap = f"compute capability {format_capability(self.capability)} (from {self.capability_from})"
        return f"{self.name}, driver {self.driver}, {cap}"


@dataclass(frozen=True)
class Machine:
    """What the PyTorch build depends on: OS, CPU architecture, NVIDIA cards, and WSL (a Windows driver)."""

    os: str  # one of OS_NAMES
    arch: str = "x86_64"  # "x86_64" or "arm64"
    gpus: tuple[Gpu, ...] = ()
    wsl: bool = False


@dataclass(frozen=True)
class TorchChoice:
    """The torch to install: a pip requirement, the index to take it from, and why (one line per reason)."""

    build: str  # a CudaBuild tag, "cpu" (PyTorch's CPU index) or "default" (the configured package index)
    requirement: str
    index_url: str | None
    reasons: tuple[str, ...]
    problem: str | None = None  # set when nothing fits: nothing is installed unless the user asks for --cpu
    gpus: tuple[Gpu, ...] = field(default=())  # the cards this build has kernels for

    @property
    def cuda(self) -> bool:
        return self.problem is None and any(self.build == build.tag for build in CUDA_BUILDS)


@dataclass(frozen=True)
class AttentionChoice:
    """An optional attention package: what to pip-install (nothing when skipped) and why."""

    name: str
    packages: tuple[str, ...]
    index_url: str | None
    reason: str


def parse_version(text: str) -> tuple[int, ...]:
    """A driver version such as "572.16" or "570.124.06" as numbers; ValueError if it is not one."""
    parts = text.strip().split(".")
    if not text.strip() or not all(part.isdigit() for part in parts):
        raise ValueError(f"not a driver version: {text!r} (expected numbers like 572.16)")
    return tuple(int(part) for part in parts)


def parse_capability(text: str) -> Capability:
    """A compute capability such as "8.9" as (8, 9); ValueError if it is not one."""
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    if match is None:
        raise ValueError(f"not a compute capability: {text!r} (expected major.minor like 8.9)")
    return int(match.group(1)), int(match.group(2))


def format_capability(capability: Capability) -> str:
    return f"{capability[0]}.{capability[1]}"


def capability_from_name(name: str) -> Capability | None:
    """The compute capability NVIDIA lists for a GPU name, or None for a name the table does not know."""
    for pattern, capability in GPU_NAME_CAPABILITIES:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return capability
    return None


def driver_column(os_name: str, wsl: bool = False) -> str:
    """Which column of the driver table applies. Under WSL, nvidia-smi reports the Windows host's driver, so
    its Windows numbers apply (also the higher, so the safer, of the two in every row that has both)."""
    return "windows" if os_name == "windows" or wsl else "linux"


def min_driver(cuda: tuple[int, int], column: str) -> str | None:
    """The oldest driver NVIDIA lists for a CUDA release on `column` ("linux" or "windows"), None if unlisted."""
    return CUDA_MIN_DRIVER.get(cuda, {}).get(column)


def max_cuda_for_driver(driver: str, column: str) -> tuple[int, int] | None:
    """The newest CUDA release whose listed minimum driver `driver` meets; None when it meets none."""
    version = parse_version(driver)
    fits = [cuda for cuda, need in CUDA_MIN_DRIVER.items()
            if need.get(column) and version >= parse_version(need[column] or "")]  # fmt: skip
    return max(fits) if fits else None


def has_kernels(kernels: tuple[Capability, ...], capability: Capability) -> bool:
    """Whether kernels built for `kernels` run on a GPU of `capability`: code built for X.y runs on X.z for any
    z >= y, never across major versions (CUDA C++ Programming Guide, "Binary Compatibility")."""
    return any(major == capability[0] and minor <= capability[1] for major, minor in kernels)


def build_kernels(build: CudaBuild, arch: str) -> tuple[Capability, ...]:
    return build.kernels_aarch64 if arch == "arm64" else build.kernels


def choose_torch(machine: Machine, torch_version: str, cpu: bool = False) -> TorchChoice:
    """The torch build for `machine` (torch_version as pinned, e.g. "2.13.0"); `cpu` asks for the CPU build."""
    if machine.os == "macos":
        return _macos_choice(machine, torch_version)
    if cpu:
        return _cpu_choice(machine, torch_version, "--cpu: PyTorch's CPU-only build")
    if not machine.gpus:
        if machine.os == "linux":
            # No --index-url: CI machines and mirrors serve torch through the index pip is configured with (a
            # forced index would bypass them). On PyPI that is the CUDA-enabled build, which runs on the CPU too.
            why = ("no NVIDIA GPU found: torch from the package index pip is configured with (on PyPI the "
                   "CUDA-enabled build, which also runs on the CPU; --cpu takes PyTorch's smaller CPU-only build)")
            return TorchChoice("default", f"torch=={torch_version}", None, (why,))
        return _cpu_choice(machine, torch_version, "no NVIDIA GPU found: PyTorch's CPU-only build")
    return _cuda_choice(machine, torch_version)


def _macos_choice(machine: Machine, torch_version: str) -> TorchChoice:
    reasons = ["macOS: PyPI's build (Metal/MPS on Apple silicon; PyTorch has no CUDA build for macOS)"]
    if machine.gpus:
        reasons.append("the NVIDIA cards given are ignored: PyTorch cannot use them on macOS")
    problem = None
    if machine.arch != "arm64":
        # PyTorch 2.2 was the last release with Intel-Mac wheels (https://github.com/pytorch/pytorch/issues/114602).
        problem = (f"PyTorch {TORCH_SERIES} has no build for Intel Macs (x86_64): the last one was 2.2. On an Apple "
                   "silicon Mac, run setup with an arm64 Python (python.org's installer or Homebrew), not "
                   "under Rosetta.")  # fmt: skip
    return TorchChoice("default", f"torch=={torch_version}", None, tuple(reasons), problem)


def _cpu_choice(machine: Machine, torch_version: str, why: str) -> TorchChoice:
    # The CPU index holds only CPU builds; the +cpu label makes pip replace a CUDA torch already installed.
    # PyTorch's aarch64 CPU wheels are left unlabelled here: their label is not confirmed by a source.
    label = "+cpu" if machine.arch == "x86_64" else ""
    return TorchChoice("cpu", f"torch=={torch_version}{label}", f"{PYTORCH_INDEX}/cpu", (why,))


def _cuda_choice(machine: Machine, torch_version: str) -> TorchChoice:
    column = driver_column(machine.os, machine.wsl)
    unknown = [gpu for gpu in machine.gpus if gpu.capability is None]
    if unknown:
        problem = (f"cannot tell the compute capability of {unknown[0].name}: pass --compute-cap X.Y (look it up "
                   f"at {GPU_CAPABILITY_PAGE}), or --cpu for the CPU build")  # fmt: skip
        return TorchChoice("", "", None, (), problem)
    driver = min((gpu.driver for gpu in machine.gpus), key=parse_version)  # one driver serves every card
    ranked = sorted(machine.gpus, key=lambda gpu: gpu.capability or (0, 0), reverse=True)
    # Builds with kernels for every card; failing that, for the most capable card (the others stay unused).
    fitting: list[CudaBuild] = []
    for wanted in (ranked, ranked[:1]):
        fitting = [b for b in CUDA_BUILDS
                   if all(has_kernels(build_kernels(b, machine.arch), g.capability) for g in wanted)]  # fmt: skip
        if fitting:
            break
    top = ranked[0]
    if not fitting:
        oldest = min(cap for b in CUDA_BUILDS for cap in build_kernels(b, machine.arch))
        problem = (f"no CUDA build of PyTorch {TORCH_SERIES} has kernels for {top.name} (compute capability "
                   f"{format_capability(top.capability)}; the oldest it supports is {format_capability(oldest)}): "
                   "pass --cpu for the CPU build")  # fmt: skip
        return TorchChoice("", "", None, (), problem)
    usable = [b for b in fitting if _driver_meets(driver, b, column)]
    if not usable:
        return TorchChoice("", "", None, (), _old_driver_problem(driver, fitting, top, column))
    build = usable[0]
    covered = tuple(g for g in machine.gpus if has_kernels(build_kernels(build, machine.arch), g.capability))
    newest = max_cuda_for_driver(driver, column)
    reasons = [
        f"NVIDIA driver {driver} runs CUDA up to {newest[0]}.{newest[1]} (NVIDIA's minimum drivers, {column})"
        if newest else f"NVIDIA driver {driver}",
        f"{build.tag}: PyTorch {TORCH_SERIES}'s {build.label} has kernels for "
        + ", ".join(f"{g.name} ({format_capability(g.capability)})" for g in covered),
    ]  # fmt: skip
    if build is not fitting[0]:
        better = fitting[0]
        reasons.append(f"a driver >= {min_driver(better.cuda, column)} would allow the newer {better.label}")
    for other in CUDA_BUILDS:
        lacking = [g for g in ranked if not has_kernels(build_kernels(other, machine.arch), g.capability)]
        if other not in fitting and lacking:
            reasons.append(f"not {other.tag}: it has no kernels for {lacking[0].name} "
                           f"({format_capability(lacking[0].capability)})")  # fmt: skip
    for gpu in machine.gpus:
        if gpu not in covered:
            reasons.append(f"warning: {gpu.name} (compute capability {format_capability(gpu.capability)}) has "
                           f"no kernels in {build.tag}: PyTorch will not use it")  # fmt: skip
    return TorchChoice(build.tag, f"torch=={torch_version}+{build.tag}", build.index_url, tuple(reasons), gpus=covered)


def _driver_meets(driver: str, build: CudaBuild, column: str) -> bool:
    need = min_driver(build.cuda, column)
    return need is not None and parse_version(driver) >= parse_version(need)


def _old_driver_problem(driver: str, fitting: list[CudaBuild], top: Gpu, column: str) -> str:
    """The message for a driver older than every build that has kernels for the card: which driver to get."""
    listed = [b for b in fitting if min_driver(b.cuda, column)]
    os_label = "Windows" if column == "windows" else "Linux"
    if not listed:
        return (f"NVIDIA lists no {os_label} driver for the CUDA builds of PyTorch {TORCH_SERIES} that run on "
                f"{top.name}: pass --cpu for the CPU build")  # fmt: skip
    easiest = min(listed, key=lambda b: parse_version(min_driver(b.cuda, column) or "0"))
    which = "only with" if len(fitting) == 1 else "at the least with"
    return (f"NVIDIA driver {driver} is too old: PyTorch {TORCH_SERIES} runs on {top.name} (compute capability "
            f"{format_capability(top.capability)}) {which} its {easiest.label}, which needs driver "
            f"{min_driver(easiest.cuda, column)} or newer on {os_label}. Install the current driver from "
            f"{DRIVER_DOWNLOAD} and run setup again, or pass --cpu for the CPU build (far too slow for the real "
            "model).")  # fmt: skip


def choose_attention(name: str, machine: Machine, torch: TorchChoice) -> AttentionChoice:
    """Whether optional attention package `name` (one of ATTENTION_NAMES) can be installed with `torch`."""
    if name not in ATTENTION_NAMES:
        raise ValueError(f"unknown attention package {name!r}: one of {', '.join(ATTENTION_NAMES)}")
    if not torch.cuda:
        return _skip(name, "needs an NVIDIA GPU and a CUDA build of PyTorch (this install has none)")
    caps = [gpu.capability for gpu in torch.gpus if gpu.capability is not None]
    if name == "flash":
        if machine.os == "windows":
            return _skip(name, "flash-attn publishes no Windows wheels (only community builds exist: "
                               "https://github.com/Dao-AILab/flash-attention/issues/1502)")  # fmt: skip
        return _skip(name, "PyPI has flash-attn only as source (its Linux wheels are GitHub release files, which pip "
                           "cannot select by index); building it needs the CUDA toolkit and a long compile: "
                           "pip install flash-attn --no-build-isolation")  # fmt: skip
    if name == "sage":
        low, high = SAGE_CAPABILITIES
        odd = [gpu for gpu in torch.gpus if gpu.capability is None or not low <= gpu.capability <= high]
        if odd:
            return _skip(name, f"SageAttention 1.0.6 is confirmed only for compute capability 8.x-9.x (Ampere, "
                               f"Ada, Hopper), not {odd[0].name} ({format_capability(odd[0].capability or (0, 0))})")
        return AttentionChoice(name, (SAGE_PACKAGE, TRITON_PACKAGE[machine.os]), None,
                               f"{SAGE_PACKAGE} (Triton kernels) with {TRITON_PACKAGE[machine.os]}, the Triton "
                               f"that goes with PyTorch {TORCH_SERIES}")  # fmt: skip
    if machine.arch != "x86_64":
        return _skip(name, "xformers publishes wheels for x86_64 only")
    if not caps or min(caps) < XFORMERS_MIN_CAPABILITY:
        return _skip(name, f"xformers is not confirmed below compute capability "
                           f"{format_capability(XFORMERS_MIN_CAPABILITY)} (Turing)")  # fmt: skip
    return AttentionChoice(name, ("xformers",), torch.index_url,
                           f"a wheel from {torch.index_url} built for torch {torch.requirement.split('==')[1]}, "
                           "if that index has one (skipped otherwise)")  # fmt: skip


def _skip(name: str, reason: str) -> AttentionChoice:
    return AttentionChoice(name, (), None, reason)


def windows_nvidia_smi_places(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Where NVIDIA's Windows driver installs nvidia-smi.exe: System32 (current drivers, which also put it on PATH
    through System32), and NVSMI under Program Files (older drivers, which leave it off PATH)."""
    system_root = environ.get("SystemRoot") or environ.get("SYSTEMROOT") or r"C:\Windows"
    program_files = environ.get("ProgramFiles") or environ.get("PROGRAMFILES") or r"C:\Program Files"
    return (ntpath.join(system_root, "System32", "nvidia-smi.exe"),
            ntpath.join(program_files, "NVIDIA Corporation", "NVSMI", "nvidia-smi.exe"))  # fmt: skip


def find_nvidia_smi(os_name: str, on_path: str | None, environ: Mapping[str, str],
                    is_file: Callable[[str], bool]) -> str | None:  # fmt: skip
    """nvidia-smi to run: the one on PATH (`on_path`, what shutil.which found), else on Windows the first of the
    driver's own places that holds it (`is_file` asks the file system); None where there is none."""
    if on_path or os_name != "windows":
        return on_path
    return next((place for place in windows_nvidia_smi_places(environ) if is_file(place)), None)


def parse_nvidia_smi(text: str, with_capability: bool) -> list[Gpu]:
    """The cards in nvidia-smi's `--query-gpu=name,driver_version[,compute_cap] --format=csv,noheader` output.
    A compute_cap that is missing or not a number ("[N/A]") falls back to the GPU name table."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [part.strip() for part in line.rsplit(",", 2 if with_capability else 1)]
        if len(fields) < 2:
            raise ValueError(f"unexpected nvidia-smi line: {line!r}")
        name, driver = fields[0], fields[1]
        parse_version(driver)
        capability, source = None, ""
        if with_capability and len(fields) == 3:
            try:
                capability, source = parse_capability(fields[2]), "nvidia-smi"
            except ValueError:
                capability = None
        if capability is None:
            capability = capability_from_name(name)
            source = "the GPU name" if capability else ""
        gpus.append(Gpu(name, driver, capability, source))
    return gpus
