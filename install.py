#!/usr/bin/env python3
"""FramePack's installer: a virtual environment in .venv with the PyTorch build that fits this machine, then the
pinned dependencies, then the `framepack` command.

    python install.py                  the app (setup.sh and setup.bat run this with their arguments)
    python install.py --test           also the test tools (requirements-test.txt)
    python install.py --with sage      also an optional attention package, where a wheel fits
    python install.py --dry-run        print what would be installed and why; install nothing
    python install.py --dry-run --os windows --gpu "NVIDIA GeForce RTX 5090" --driver 572.16
                                       the same for another machine

Standard library only: it runs before anything is installed, with any Python 3.10 or newer. The decisions
(which PyTorch build, which attention packages) are in framepack/setup_rules.py, loaded by its path: importing
the framepack package would import torch. This file parses arguments, runs pip and prints.
"""

from __future__ import annotations

import sys

if sys.version_info[:2] < (3, 10):  # first, in syntax old Pythons read: one line, no traceback
    sys.stderr.write(
        f"error: FramePack needs Python 3.10 or newer; this is Python {'.'.join(map(str, sys.version_info[:3]))} "
        f"({sys.executable}). Install a newer one from https://www.python.org/downloads/ and run setup again.\n"
    )
    sys.exit(1)

import argparse
import collections
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers only: at run time the rules come from load_rules()
    from framepack.setup_rules import AttentionChoice, Gpu, Machine, TorchChoice

ROOT = Path(__file__).resolve().parent
RULES_FILE = ROOT / "framepack" / "setup_rules.py"
VENV = ROOT / ".venv"
TAIL_LINES = 12  # pip's last lines shown when it fails
NETWORK_SIGNS = (
    "NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
    "Name or service not known", "getaddrinfo failed", "ConnectTimeoutError", "Read timed out", "ProxyError",
    "SSLError", "Network is unreachable",
)  # fmt: skip
NOT_FOUND_SIGNS = ("No matching distribution found", "Could not find a version that satisfies")
TORCH_CHECK = (
    "import json, torch\n"
    "cuda = torch.cuda.is_available()\n"
    "mps = getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available()\n"
    "print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda, 'gpu_ok': cuda, 'mps': mps,\n"
    "                  'device': torch.cuda.get_device_name(0) if cuda else None}))\n"
)


class SetupError(Exception):
    """A failure to report as a message, without a traceback; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Step:
    """One pip run: what it does (for messages), pip's arguments, and whether setup stops when it fails."""

    what: str
    pip_args: tuple[str, ...]
    fatal: bool = True


def load_rules() -> ModuleType:
    """framepack/setup_rules.py as a module of its own, without importing the framepack package."""
    spec = importlib.util.spec_from_file_location("framepack_setup_rules", RULES_FILE)
    if spec is None or spec.loader is None or not RULES_FILE.is_file():
        raise SetupError(f"{RULES_FILE} is missing: this copy of FramePack is incomplete")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def parse_args(argv: list[str] | None, rules: ModuleType) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="install.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Create .venv with the PyTorch build for this machine and FramePack's pinned dependencies.",
        epilog="Examples:\n  python install.py --dry-run\n  python install.py --test\n  python install.py --with sage\n"
               '  python install.py --dry-run --os windows --gpu "NVIDIA GeForce RTX 5090" --driver 572.16',
    )  # fmt: skip
    parser.add_argument("--test", action="store_true", help="also install the test tools (requirements-test.txt)")
    parser.add_argument("--cpu", action="store_true", help="install PyTorch's CPU-only build whatever the GPU")
    parser.add_argument("--with", dest="extras", action="append", default=[], metavar="NAMES",
                        help="optional attention packages, comma-separated: sage, flash, xformers (each installed "
                             "only where a wheel fits this platform and torch, else skipped with the reason)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be installed and why; install nothing")
    parser.add_argument("--quiet", action="store_true", help="less of pip's output")
    other = parser.add_argument_group("describing a machine (another one needs --dry-run)")
    other.add_argument("--os", choices=rules.OS_NAMES, help="its operating system (default: this one)")
    other.add_argument("--arch", choices=("x86_64", "arm64"), help="its processor (default: x86_64, arm64 on macos)")
    other.add_argument("--gpu", action="append", default=[], metavar="NAME",
                       help='an NVIDIA card as nvidia-smi names it, e.g. "NVIDIA GeForce RTX 5090" (repeatable or '
                            "comma-separated; default: what nvidia-smi reports here)")
    other.add_argument("--driver", metavar="VERSION", help="the NVIDIA driver version, e.g. 572.16")
    other.add_argument("--compute-cap", metavar="X.Y",
                       help="the cards' compute capability, e.g. 12.0 (comma-separated, one per card)")  # fmt: skip
    args = parser.parse_args(argv)
    args.extras = [name.strip() for value in args.extras for name in value.split(",") if name.strip()]
    unknown = [name for name in args.extras if name not in rules.ATTENTION_NAMES]
    if unknown:
        parser.error(f"--with takes {', '.join(rules.ATTENTION_NAMES)}, not {', '.join(unknown)}")
    args.gpu = [name.strip() for value in args.gpu for name in value.split(",") if name.strip()]
    describes_elsewhere = (args.os and args.os != this_os()) or (args.arch and args.arch != this_arch())
    if describes_elsewhere and not args.dry_run:
        parser.error("--os and --arch describe another machine: use them with --dry-run")
    if args.gpu and not args.driver:
        parser.error("--gpu needs --driver (nvidia-smi's driver_version for the card)")
    return args


def this_os() -> str:
    return {"Windows": "windows", "Darwin": "macos"}.get(platform.system(), "linux")


def this_arch() -> str:
    return "arm64" if platform.machine().lower() in ("arm64", "aarch64") else "x86_64"


def is_wsl() -> bool:
    """Linux under WSL, where nvidia-smi reports the Windows host's driver."""
    return this_os() == "linux" and "microsoft" in platform.release().lower()


def read_nvidia_smi(rules: ModuleType) -> tuple[list[Gpu], str, str | None]:
    """(cards, where they came from, error). Drivers too old for compute_cap get the plain query."""
    exe = rules.find_nvidia_smi(this_os(), shutil.which("nvidia-smi"), os.environ, os.path.isfile)
    if exe is None:
        return [], "nvidia-smi not found", None
    output = ""
    for query, with_capability in (("name,driver_version,compute_cap", True), ("name,driver_version", False)):
        try:
            done = subprocess.run([exe, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                                  check=False, text=True, errors="replace", timeout=60)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return [], "", f"nvidia-smi ({exe}) did not run: {exc}"
        output = (done.stdout + done.stderr).strip()
        if done.returncode == 0:
            try:
                gpus = rules.parse_nvidia_smi(done.stdout, with_capability)
            except ValueError as exc:
                return [], "", f"cannot read nvidia-smi's answer: {exc}"
            return gpus, f"read from {exe}" if gpus else "nvidia-smi lists none", None
    last = output.splitlines()[-1] if output else "no output"
    return [], "", f"nvidia-smi failed ({last}): the NVIDIA driver may be missing or broken"


def describe_machine(args: argparse.Namespace, rules: ModuleType) -> tuple[Machine, str]:
    """The machine to plan for (rules.Machine) and a note saying where its GPU list came from."""
    os_name = args.os or this_os()
    here = os_name == this_os()
    arch = args.arch or (this_arch() if here else ("arm64" if os_name == "macos" else "x86_64"))
    if args.gpu:
        gpus, note = [rules.Gpu(name, args.driver) for name in args.gpu], "as given by --gpu"
    elif args.os or os_name == "macos":
        gpus, note = [], "none given with --gpu" if args.os else "macOS"
    else:
        gpus, note, error = read_nvidia_smi(rules)
        if error:
            if not args.cpu:
                raise SetupError(f"{error}. Install or repair the driver ({rules.DRIVER_DOWNLOAD}) and run setup "
                                 "again, or pass --cpu for the CPU build.", code=2)  # fmt: skip
            note = f"{error} (--cpu given)"
        if (args.driver or args.compute_cap) and not gpus:
            raise SetupError("--driver and --compute-cap describe a card: name it with --gpu", code=2)
    gpus = [override(gpu, args, rules, i, len(gpus)) for i, gpu in enumerate(gpus)]
    return rules.Machine(os_name, arch, tuple(gpus), wsl=here and is_wsl()), note


def override(gpu: Gpu, args: argparse.Namespace, rules: ModuleType, index: int, count: int) -> Gpu:
    """A card with --driver and --compute-cap applied, and its capability from its name if still unknown."""
    try:
        driver = args.driver or gpu.driver
        rules.parse_version(driver)
        capability, source = gpu.capability, gpu.capability_from
        if args.compute_cap:
            caps = [cap for cap in args.compute_cap.split(",") if cap.strip()]
            if len(caps) not in (1, count):
                raise ValueError(f"--compute-cap has {len(caps)} values for {count} cards")
            capability, source = rules.parse_capability(caps[index if len(caps) > 1 else 0]), "--compute-cap"
        elif capability is None:
            capability = rules.capability_from_name(gpu.name)
            source = "the GPU name" if capability else ""
    except ValueError as exc:
        raise SetupError(str(exc), code=2) from None
    return rules.Gpu(gpu.name, driver, capability, source)


def torch_pin(requirements: Path) -> str:
    """The torch version requirements.txt pins (torch==X)."""
    for line in requirements.read_text(encoding="utf-8").splitlines():
        name, _, version = line.split("#")[0].strip().partition("==")
        if name.strip().lower() == "torch" and version.strip():
            return version.strip()
    raise SetupError(f"{requirements.name} pins no torch version (a line torch==X)")


def plan_steps(args: argparse.Namespace, torch: TorchChoice, attention: list[AttentionChoice]) -> list[Step]:
    quiet = ("-q",) if args.quiet else ()
    index = ("--index-url", torch.index_url) if torch.index_url else ()
    steps = [
        Step("upgrade pip", ("install", *quiet, "--upgrade", "pip")),
        Step("install PyTorch", ("install", *quiet, torch.requirement, *index)),
        Step("install the pinned dependencies",
             ("install", *quiet, "-r", "requirements-test.txt" if args.test else "requirements.txt")),
        # Editable and without dependencies (all installed by now): seconds, and it gives the `framepack`
        # command; code changes in this folder apply without reinstalling. Not essential: python -m framepack
        # and demo_gradio.py run from this folder without it.
        Step("install the framepack command", ("install", *quiet, "--no-deps", "-e", "."), fatal=False),
    ]  # fmt: skip
    for choice in attention:
        if choice.packages:
            where = ("--index-url", choice.index_url) if choice.index_url else ()
            # Binary wheels only (no compiling); naming the installed torch keeps pip from replacing it.
            steps.append(Step(f"install {choice.name} ({', '.join(choice.packages)})",
                              ("install", *quiet, "--only-binary=:all:", *where, *choice.packages, torch.requirement),
                              fatal=False))  # fmt: skip
    return steps


def print_decisions(
    machine: Machine, note: str, torch: TorchChoice, attention: list[AttentionChoice], args: argparse.Namespace
) -> None:
    """One line per decision."""
    described = " (as described)" if args.os or args.gpu else ""
    print(f"machine: {machine.os} {machine.arch}{' (WSL)' if machine.wsl else ''}{described}; Python "
          f"{platform.python_version()}")  # fmt: skip
    if machine.gpus:
        print(f"gpus: {note}")
        for gpu in machine.gpus:
            print(f"gpu: {gpu.describe()}")
    else:
        print(f"gpu: none ({note})")
    for reason in torch.reasons:
        print(f"torch: {reason}")
    if torch.problem is None:
        print(f"torch: install {torch.requirement} from {torch.index_url or 'the configured package index'}")
    for choice in attention:
        verdict = f"install {', '.join(choice.packages)}" if choice.packages else "skip"
        print(f"attention {choice.name}: {verdict}: {choice.reason}")
    print(f"requirements: {'requirements-test.txt (the app and the test tools)' if args.test else 'requirements.txt'}")


def venv_python(os_name: str, absolute: bool = True) -> str:
    """The venv's Python: the path to run, or (absolute=False) the one to show for a machine running os_name."""
    if not absolute:
        return r".venv\Scripts\python.exe" if os_name == "windows" else ".venv/bin/python"
    return str(VENV / "Scripts" / "python.exe") if os.name == "nt" else str(VENV / "bin" / "python")


def show_command(words: list[str], os_name: str) -> str:
    return subprocess.list2cmdline(words) if os_name == "windows" else shlex.join(words)


def ensure_venv(rules: ModuleType) -> str:
    """The venv's Python, creating .venv when missing; refuses a venv whose Python PyTorch has no wheels for."""
    python = venv_python(this_os())
    low, high = rules.PYTHON_RANGE
    if not (VENV / "pyvenv.cfg").is_file():
        if sys.version_info[:2] > high:
            raise SetupError(f"PyTorch {rules.TORCH_SERIES} has wheels for Python {low[0]}.{low[1]} to "
                             f"{high[0]}.{high[1]}, not {platform.python_version()}: run setup with an older Python "
                             "(setup.bat: set PYTHON=py -3.12; setup.sh: PYTHON=python3.12)")  # fmt: skip
        print(f"creating .venv with Python {platform.python_version()} ({sys.executable})", flush=True)
        done = subprocess.run([sys.executable, "-m", "venv", str(VENV)], capture_output=True, check=False,
                              text=True, errors="replace")  # fmt: skip
        if done.returncode != 0:
            shutil.rmtree(VENV, ignore_errors=True)  # a half-made venv would fail the next run too
            output = (done.stdout + done.stderr).strip()
            hint = " (Debian and Ubuntu: sudo apt-get install python3-venv)" if "ensurepip" in output else ""
            raise SetupError(f"could not create .venv{hint}: {output.splitlines()[-1] if output else 'no output'}")
    if not Path(python).is_file():
        raise SetupError(f"{python} is missing: the .venv folder is broken; delete it and run setup again")
    done = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, check=False,
                          text=True)  # fmt: skip
    version = tuple(int(part) for part in done.stdout.split()) if done.returncode == 0 else ()
    if not version or not low <= version <= high:
        raise SetupError(f".venv's Python ({'.'.join(map(str, version)) or 'broken'}) is not one PyTorch "
                         f"{rules.TORCH_SERIES} supports ({low[0]}.{low[1]} to {high[0]}.{high[1]}): delete the .venv "
                         "folder and run setup again with a supported Python")  # fmt: skip
    return python


def run_command(command: list[str], what: str) -> None:
    """Run a command in the project folder, echoing its output; a failure raises SetupError with its last lines."""
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1")
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, encoding="utf-8", errors="replace") as process:  # fmt: skip
            assert process.stdout is not None
            for line in process.stdout:
                print(f"  {line.rstrip()}", flush=True)
                tail.append(line.rstrip())
            code = process.wait()
    except OSError as exc:
        raise SetupError(f"{what} failed: cannot run {command[0]}: {exc}") from None
    if code != 0:
        raise SetupError(failure_message(what, code, list(tail)))


def failure_message(what: str, code: int, tail: list[str]) -> str:
    text = "\n".join(tail)
    hint = ""
    if any(sign in text for sign in NETWORK_SIGNS):
        hint = ("\nThe package index could not be reached: check the internet connection (and a proxy, which pip "
                "takes from HTTPS_PROXY) and run setup again.")  # fmt: skip
    elif any(sign in text for sign in NOT_FOUND_SIGNS):
        hint = (f"\npip found no build of a package for Python {platform.python_version()} on this platform, or "
                "could not reach the package index.")  # fmt: skip
    elif "No space left on device" in text:
        hint = "\nThe disk is full: PyTorch's CUDA build needs several GB free."
    lines = "\n".join(f"  {line}" for line in tail) or "  (no output)"
    return f"{what} failed (exit status {code}). Its last lines:\n{lines}{hint}"


def check_torch(python: str, torch: TorchChoice) -> None:
    """Import the installed torch and say what it can use; a CUDA build that sees no GPU gets a warning."""
    done = subprocess.run([python, "-c", TORCH_CHECK], capture_output=True, check=False, text=True, errors="replace",
                          timeout=900)  # fmt: skip
    if done.returncode != 0:
        raise SetupError(failure_message("importing PyTorch", done.returncode,
                                         (done.stdout + done.stderr).strip().splitlines()[-TAIL_LINES:]))  # fmt: skip
    info = json.loads((done.stdout.strip().splitlines() or ["{}"])[-1])
    where = f"the GPU {info['device']}" if info["gpu_ok"] else "Apple's MPS" if info["mps"] else "the CPU only"
    print(f"torch: {info['version']} installed (CUDA {info['cuda'] or 'none'}); it runs on {where}")
    if torch.cuda and not info["gpu_ok"]:
        print("warning: this CUDA build of PyTorch sees no usable GPU; the app would run on the CPU. Check the "
              f"driver (nvidia-smi), or run {venv_python(this_os(), absolute=False)} -c \"import torch; "
              "torch.zeros(1).cuda()\" to see the reason.")  # fmt: skip


def install(args: argparse.Namespace, rules: ModuleType) -> int:
    machine, note = describe_machine(args, rules)
    torch = rules.choose_torch(machine, torch_pin(ROOT / "requirements.txt"), cpu=args.cpu)
    attention = [] if torch.problem else [rules.choose_attention(n, machine, torch) for n in dict.fromkeys(args.extras)]
    print_decisions(machine, note, torch, attention, args)
    if torch.problem:
        raise SetupError(torch.problem, code=2)
    steps = plan_steps(args, torch, attention)
    if args.dry_run:
        shown = venv_python(machine.os, absolute=False)
        if not (VENV / "pyvenv.cfg").is_file() and machine.os == this_os():
            print(f"would create .venv with Python {platform.python_version()} ({sys.executable})")
        for step in steps:
            print(f"would run: {show_command([shown, '-m', 'pip', *step.pip_args], machine.os)}")
        return 0
    python = ensure_venv(rules)
    for step in steps:
        print(f"{step.what}: {show_command(['python', '-m', 'pip', *step.pip_args], machine.os)}", flush=True)
        try:
            run_command([python, "-m", "pip", *step.pip_args], step.what)
        except SetupError as exc:
            if step.fatal:
                raise
            print(f"warning: skipped: {exc}".rstrip(), flush=True)
    check_torch(python, torch)
    if this_os() == "windows":
        print("Ready: run.bat (or run_f1.bat for FramePack-F1) starts the page at http://127.0.0.1:7860")
    else:
        print("Ready: .venv/bin/python demo_gradio.py (or demo_gradio_f1.py), then open http://127.0.0.1:7860")
    return 0


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a Windows console code page must not stop setup over a character
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        rules = load_rules()
        return install(parse_args(argv, rules), rules)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.code
    except KeyboardInterrupt:
        print("\nsetup interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
