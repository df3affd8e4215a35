"""The installer: its choice of PyTorch build and attention packages for a machine (setup_rules, and install.py's
dry run as a user runs it), its answers when something is wrong, the packaging metadata, and `pip install .`."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path, name: str):
    """A file as a module of its own, the way install.py loads setup_rules (no `import framepack`: that imports
    torch, which a machine being set up does not have yet)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


rules = load(ROOT / "framepack" / "setup_rules.py", "test_install_setup_rules")
installer = load(ROOT / "install.py", "test_install_installer")


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """A command's result with its output as text; the test checks its exit status."""
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)


TORCH = "2.13.0"
GPUS = {
    "RTX 5090": ("NVIDIA GeForce RTX 5090", (12, 0)),
    "RTX 4090": ("NVIDIA GeForce RTX 4090", (8, 9)),
    "RTX 3060": ("NVIDIA GeForce RTX 3060", (8, 6)),
    "GTX 1060": ("NVIDIA GeForce GTX 1060 6GB", (6, 1)),
}
# new: runs CUDA 13.0; old: CUDA 12.8 (enough for Blackwell in general, but PyTorch 2.13 has no 12.8
# build); ancient: CUDA 12.2, too old for both of PyTorch 2.13's CUDA builds.
DRIVERS = {
    "windows": {"new": "581.57", "old": "572.16", "ancient": "537.58"},
    "linux": {"new": "580.95.05", "old": "570.133.07", "ancient": "535.247.01"},
}
DRIVERS["macos"] = DRIVERS["linux"]
# (card, driver) -> the build on Windows and Linux, or "needs <build>": refused, naming that build's driver.
EXPECTED = {
    ("RTX 5090", "new"): "cu130", ("RTX 5090", "old"): "needs cu130", ("RTX 5090", "ancient"): "needs cu130",
    ("RTX 4090", "new"): "cu130", ("RTX 4090", "old"): "cu126", ("RTX 4090", "ancient"): "needs cu126",
    ("RTX 3060", "new"): "cu130", ("RTX 3060", "old"): "cu126", ("RTX 3060", "ancient"): "needs cu126",
    ("GTX 1060", "new"): "cu126", ("GTX 1060", "old"): "cu126", ("GTX 1060", "ancient"): "needs cu126",
}  # fmt: skip
MIN_DRIVER = {("cu130", "windows"): "580.88", ("cu130", "linux"): "580.65.06",
              ("cu126", "windows"): "560.76", ("cu126", "linux"): "560.28.03"}  # fmt: skip
CASES = [(os_name, card, age) for os_name in ("windows", "linux", "macos") for card in (*GPUS, "none")
         for age in ("new", "old", "ancient")]  # fmt: skip


def machine(os_name: str, card: str, age: str = "new", arch: str | None = None):
    gpus = ()
    if card != "none":
        name, capability = GPUS[card]
        gpus = (rules.Gpu(name, DRIVERS[os_name][age], capability, "nvidia-smi"),)
    return rules.Machine(os_name, arch or ("arm64" if os_name == "macos" else "x86_64"), gpus)


@pytest.mark.parametrize(("os_name", "card", "age"), CASES, ids=["-".join(case) for case in CASES])
def test_torch_build_for_each_machine(os_name, card, age):
    choice = rules.choose_torch(machine(os_name, card, age), TORCH)
    if os_name == "macos":
        assert (choice.problem, choice.requirement, choice.index_url) == (None, f"torch=={TORCH}", None)
        assert "MPS" in choice.reasons[0]
        return
    if card == "none":
        if os_name == "windows":  # PyPI's Windows torch has no CUDA anyway; the CPU index says so plainly
            assert (choice.requirement, choice.index_url) == (f"torch=={TORCH}+cpu", f"{rules.PYTORCH_INDEX}/cpu")
        else:  # the configured index: a CI machine's mirror has the CPU wheel
            assert (choice.requirement, choice.index_url) == (f"torch=={TORCH}", None)
        assert "no NVIDIA GPU" in choice.reasons[0] and not choice.cuda
        return
    expected = EXPECTED[card, age]
    if expected.startswith("needs "):
        build = expected.split()[1]
        assert choice.problem and not choice.cuda and choice.requirement == ""
        assert f"needs driver {MIN_DRIVER[build, os_name]} or newer" in choice.problem
        assert f"({build})" in choice.problem and "--cpu" in choice.problem
        return
    assert choice.problem is None and choice.cuda
    assert choice.requirement == f"torch=={TORCH}+{expected}"
    assert choice.index_url == f"https://download.pytorch.org/whl/{expected}"
    assert any(reason.startswith(f"{expected}: ") and GPUS[card][0] in reason for reason in choice.reasons)


@pytest.mark.parametrize("os_name", ["windows", "linux"])
@pytest.mark.parametrize("card", [*GPUS, "none"])
def test_cpu_flag_takes_the_cpu_build_whatever_the_card(os_name, card):
    choice = rules.choose_torch(machine(os_name, card, "ancient"), TORCH, cpu=True)
    assert choice.problem is None and not choice.cuda
    assert (choice.requirement, choice.index_url) == (f"torch=={TORCH}+cpu", "https://download.pytorch.org/whl/cpu")


def test_reasons_say_why_a_build_was_passed_over():
    pascal = rules.choose_torch(machine("linux", "GTX 1060", "new"), TORCH)
    assert any("not cu130" in reason and "(6.1)" in reason for reason in pascal.reasons)
    ada_old_driver = rules.choose_torch(machine("windows", "RTX 4090", "old"), TORCH)
    assert any("580.88 would allow" in reason and "cu130" in reason for reason in ada_old_driver.reasons)


def test_mixed_cards_take_the_newest_cards_build_and_warn_about_the_other():
    gpus = (rules.Gpu("NVIDIA GeForce GTX 1080", "580.95.05", (6, 1)),
            rules.Gpu("NVIDIA GeForce RTX 5090", "580.95.05", (12, 0)))  # fmt: skip
    choice = rules.choose_torch(rules.Machine("linux", "x86_64", gpus), TORCH)
    assert choice.build == "cu130" and [g.name for g in choice.gpus] == ["NVIDIA GeForce RTX 5090"]
    assert any("GTX 1080" in reason and "will not use it" in reason for reason in choice.reasons)


def test_cards_no_build_supports_and_unknown_cards_are_refused():
    kepler = rules.Machine("linux", "x86_64", (rules.Gpu("NVIDIA GeForce GTX 780", "580.95.05", (3, 5)),))
    assert "no CUDA build" in rules.choose_torch(kepler, TORCH).problem
    mystery = rules.Machine("windows", "x86_64", (rules.Gpu("NVIDIA Mystery 9000", "581.57", None),))
    assert "--compute-cap" in rules.choose_torch(mystery, TORCH).problem


def test_intel_mac_is_refused():
    assert "Intel" in rules.choose_torch(machine("macos", "none", arch="x86_64"), TORCH).problem


def test_wsl_reads_the_windows_driver_column():
    # 580.70 meets Linux's 580.65.06 for CUDA 13.0 but not Windows' 580.88: under WSL the driver is Windows'.
    card = (rules.Gpu("NVIDIA GeForce RTX 4090", "580.70", (8, 9)),)
    assert rules.choose_torch(rules.Machine("linux", "x86_64", card), TORCH).build == "cu130"
    assert rules.choose_torch(rules.Machine("linux", "x86_64", card, wsl=True), TORCH).build == "cu126"


@pytest.mark.parametrize(
    ("driver", "column", "cuda"),
    [("570.65", "windows", (12, 8)), ("570.64", "windows", (12, 6)), ("570.26", "linux", (12, 8)),
     ("580.88", "windows", (13, 0)), ("580.82", "windows", (12, 9)), ("595.45.04", "linux", (13, 2)),
     ("520.06", "windows", (11, 8)), ("450.80.02", "linux", None)],
)  # fmt: skip
def test_newest_cuda_a_driver_runs(driver, column, cuda):
    assert rules.max_cuda_for_driver(driver, column) == cuda


@pytest.mark.parametrize(
    ("name", "capability"),
    [("NVIDIA GeForce RTX 5090", (12, 0)), ("NVIDIA GeForce RTX 5070 Ti", (12, 0)),
     ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", (12, 0)), ("NVIDIA B200", (10, 0)),
     ("NVIDIA H100 80GB HBM3", (9, 0)), ("NVIDIA GeForce RTX 4060 Laptop GPU", (8, 9)), ("NVIDIA L40S", (8, 9)),
     ("NVIDIA A100-SXM4-80GB", (8, 0)), ("NVIDIA A10", (8, 6)), ("NVIDIA GeForce RTX 3060", (8, 6)),
     ("NVIDIA RTX A6000", (8, 6)), ("Tesla T4", (7, 5)), ("NVIDIA GeForce GTX 1660 SUPER", (7, 5)),
     ("Tesla V100-SXM2-16GB", (7, 0)), ("Tesla P100-PCIE-16GB", (6, 0)), ("NVIDIA GeForce GTX 1060 6GB", (6, 1)),
     ("NVIDIA TITAN X (Pascal)", (6, 1)), ("GeForce GTX TITAN X", (5, 2)), ("NVIDIA Mystery 9000", None)],
)  # fmt: skip
def test_compute_capability_from_the_gpu_name(name, capability):
    assert rules.capability_from_name(name) == capability


def test_kernels_run_on_later_minor_versions_of_the_same_major_only():
    assert rules.has_kernels(((8, 6),), (8, 9)) and rules.has_kernels(((6, 0),), (6, 1))
    assert not rules.has_kernels(((9, 0),), (10, 0)) and not rules.has_kernels(((8, 6),), (8, 0))


def attention(os_name: str, card: str, names=rules.ATTENTION_NAMES, arch: str | None = None):
    target = machine(os_name, card, "new", arch)
    torch = rules.choose_torch(target, TORCH)
    return {name: rules.choose_attention(name, target, torch) for name in names}


def test_attention_packages_on_windows_with_ampere():
    picked = attention("windows", "RTX 3060")
    assert picked["sage"].packages == ("sageattention==1.0.6", "triton-windows>=3.7,<3.8")
    assert picked["xformers"].packages == ("xformers",)
    assert picked["xformers"].index_url == "https://download.pytorch.org/whl/cu130"
    assert picked["flash"].packages == () and "no Windows wheels" in picked["flash"].reason


def test_attention_packages_on_linux_never_take_triton_windows():
    picked = attention("linux", "RTX 4090")
    assert picked["sage"].packages == ("sageattention==1.0.6", "triton>=3.7,<3.8")
    assert not any("triton-windows" in package for choice in picked.values() for package in choice.packages)
    assert picked["flash"].packages == () and "source" in picked["flash"].reason


@pytest.mark.parametrize(("os_name", "card"), [("macos", "none"), ("linux", "none"), ("windows", "none")])
def test_attention_packages_are_skipped_without_a_cuda_build(os_name, card):
    for choice in attention(os_name, card).values():
        assert choice.packages == () and "NVIDIA GPU" in choice.reason


def test_attention_packages_skipped_where_unconfirmed():
    blackwell = attention("windows", "RTX 5090")
    assert blackwell["sage"].packages == () and "8.x-9.x" in blackwell["sage"].reason
    pascal = attention("linux", "GTX 1060")
    assert pascal["sage"].packages == () and pascal["xformers"].packages == ()
    arm = attention("linux", "RTX 4090", arch="arm64")
    assert arm["xformers"].packages == () and "x86_64" in arm["xformers"].reason


def test_parse_nvidia_smi_with_and_without_compute_cap():
    gpus = rules.parse_nvidia_smi("NVIDIA GeForce RTX 4090, 581.57, 8.9\nNVIDIA A10, 581.57, [N/A]\n", True)
    assert [(g.capability, g.capability_from) for g in gpus] == [((8, 9), "nvidia-smi"), ((8, 6), "the GPU name")]
    old = rules.parse_nvidia_smi("NVIDIA GeForce GTX 1060 6GB, 470.82.01\n", False)
    assert (old[0].driver, old[0].capability) == ("470.82.01", (6, 1))
    with pytest.raises(ValueError):
        rules.parse_nvidia_smi("NVIDIA GeForce RTX 4090, not-a-driver, 8.9\n", True)


# install.py as a user runs it: from a folder holding only what it needs before anything is installed (no
# framepack/__init__.py: importing the package would need torch), so a dry run shows it creates nothing.


@pytest.fixture
def bare_copy(tmp_path):
    (tmp_path / "framepack").mkdir()
    shutil.copy(ROOT / "framepack" / "setup_rules.py", tmp_path / "framepack")
    for name in ("install.py", "requirements.txt", "requirements-test.txt"):
        shutil.copy(ROOT / name, tmp_path)
    return tmp_path


def run_installer(folder: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=path if path is not None else str(folder / "no-such-bin"))
    return run([sys.executable, str(folder / "install.py"), *args], env=env, cwd=folder, timeout=120)


def test_dry_run_on_windows_rtx5090_with_new_driver(bare_copy):
    done = run_installer(bare_copy, "--dry-run", "--os", "windows", "--gpu", "NVIDIA GeForce RTX 5090",
                         "--driver", "581.57", "--compute-cap", "12.0", "--with", "sage,flash,xformers")  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "compute capability 12.0 (from --compute-cap)" in out
    cu130 = "https://download.pytorch.org/whl/cu130"
    assert f"would run: .venv\\Scripts\\python.exe -m pip install torch==2.13.0+cu130 --index-url {cu130}" in out
    assert re.search(r"^attention sage: skip: .*8\.x-9\.x", out, re.MULTILINE)
    assert re.search(r"^attention flash: skip: .*no Windows wheels", out, re.MULTILINE)
    assert f"--only-binary=:all: --index-url {cu130} xformers torch==2.13.0+cu130" in out
    assert not (bare_copy / ".venv").exists()


def test_dry_run_refuses_rtx5090_with_old_windows_driver_and_names_the_driver(bare_copy):
    rtx5090 = ("--os", "windows", "--gpu", "NVIDIA GeForce RTX 5090", "--driver", "572.16")
    done = run_installer(bare_copy, "--dry-run", *rtx5090)
    assert done.returncode == 2
    assert "compute capability 12.0 (from the GPU name)" in done.stdout
    assert "driver 572.16 is too old" in done.stderr and "580.88 or newer on Windows" in done.stderr
    assert "Traceback" not in done.stderr and "would run" not in done.stdout
    with_cpu = run_installer(bare_copy, "--dry-run", *rtx5090, "--cpu")
    assert with_cpu.returncode == 0
    assert "pip install torch==2.13.0+cpu --index-url https://download.pytorch.org/whl/cpu" in with_cpu.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="plans for this machine: a Linux one")
def test_dry_run_on_a_linux_machine_without_gpu_takes_the_configured_index(bare_copy):
    done = run_installer(bare_copy, "--dry-run", "--test")  # this machine, with no nvidia-smi on PATH
    assert done.returncode == 0, done.stderr
    assert "gpu: none (nvidia-smi not found)" in done.stdout
    assert re.search(r"^would run: \S+ -m pip install torch==2\.13\.0$", done.stdout, re.MULTILINE)
    assert "-r requirements-test.txt" in done.stdout and "--no-deps -e ." in done.stdout
    assert not (bare_copy / ".venv").exists()


def test_dry_run_for_macos_skips_every_attention_package(bare_copy):
    done = run_installer(bare_copy, "--dry-run", "--os", "macos", "--with", "sage", "--with", "flash,xformers")
    assert done.returncode == 0, done.stderr
    assert "machine: macos arm64" in done.stdout
    assert "would run: .venv/bin/python -m pip install torch==2.13.0\n" in done.stdout
    assert len(re.findall(r"^attention \w+: skip: needs an NVIDIA GPU", done.stdout, re.MULTILINE)) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--with", "sage,turbo"], "--with takes"), (["--gpu", "NVIDIA GeForce RTX 4090"], "--gpu needs --driver"),
     (["--os", "windows"], "use them with --dry-run"),
     (["--dry-run", "--os", "linux", "--gpu", "NVIDIA GeForce RTX 4090", "--driver", "five"], "not a driver version")],
)  # fmt: skip
def test_bad_arguments_are_one_line_errors(bare_copy, args, message):
    if args[:2] == ["--os", "windows"] and sys.platform == "win32":
        args = ["--os", "linux"]
    done = run_installer(bare_copy, *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def fake_nvidia_smi(folder: Path, reply: str, old_driver: bool = False, fail: bool = False) -> str:
    """A folder holding a stand-in nvidia-smi (a .bat on Windows) to put first on PATH. `old_driver`: it knows no
    compute_cap field, like drivers before it had one; `fail`: it cannot reach the driver."""
    folder.mkdir()
    name = reply.rsplit(", ", 1)[0]
    if os.name == "nt":
        lines = ["@echo off"]
        if fail:
            lines += ["echo NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", "exit /b 9"]
        elif old_driver:
            refuse = '(echo Field "compute_cap" is not a valid field. & exit /b 2)'
            lines += [f'echo %* | find "compute_cap" >nul && {refuse}', f"echo {name}"]
        else:
            lines += [f"echo {reply}"]
        (folder / "nvidia-smi.bat").write_text("\r\n".join(lines) + "\r\n")
    else:
        body = f'echo "{reply}"'
        if fail:
            body = 'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9'
        elif old_driver:
            refuse = 'echo \'Field "compute_cap" is not a valid field to query.\'; exit 2'
            body = f'case "$*" in *compute_cap*) {refuse};; esac\necho "{name}"'
        script = folder / "nvidia-smi"
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    return str(folder)


needs_nvidia_smi_host = pytest.mark.skipif(sys.platform == "darwin", reason="macOS setup never asks nvidia-smi")


def expected_min_driver(build: str) -> str:
    column = rules.driver_column(installer.this_os(), installer.is_wsl())
    return rules.min_driver(next(b.cuda for b in rules.CUDA_BUILDS if b.tag == build), column)


@needs_nvidia_smi_host
def test_dry_run_reads_nvidia_smi_and_names_the_driver_an_rtx5090_needs(bare_copy):
    path = fake_nvidia_smi(bare_copy / "bin", "NVIDIA GeForce RTX 5090, 570.133.07, 12.0")
    done = run_installer(bare_copy, "--dry-run", path=path)
    assert done.returncode == 2
    assert "gpu: NVIDIA GeForce RTX 5090, driver 570.133.07, compute capability 12.0 (from nvidia-smi)" in done.stdout
    assert f"needs driver {expected_min_driver('cu130')} or newer" in done.stderr
    assert "https://www.nvidia.com/drivers" in done.stderr and "Traceback" not in done.stderr


@needs_nvidia_smi_host
def test_dry_run_with_an_nvidia_smi_too_old_for_compute_cap_uses_the_name(bare_copy):
    path = fake_nvidia_smi(bare_copy / "bin", "NVIDIA GeForce GTX 1060 6GB, 470.82.01, 6.1", old_driver=True)
    done = run_installer(bare_copy, "--dry-run", path=path)
    assert done.returncode == 2
    assert "compute capability 6.1 (from the GPU name)" in done.stdout
    assert f"needs driver {expected_min_driver('cu126')} or newer" in done.stderr


@needs_nvidia_smi_host
def test_a_broken_driver_stops_setup_unless_cpu_is_asked_for(bare_copy):
    path = fake_nvidia_smi(bare_copy / "bin", "x, 1, 1.0", fail=True)
    done = run_installer(bare_copy, "--dry-run", path=path)
    assert done.returncode == 2 and "nvidia-smi failed" in done.stderr and "--cpu" in done.stderr
    assert run_installer(bare_copy, "--dry-run", "--cpu", path=path).returncode == 0


def test_too_old_python_gets_one_line(bare_copy):
    code = ("import runpy, sys; sys.version_info = (3, 9, 18, 'final', 0); "
            f"runpy.run_path({str(bare_copy / 'install.py')!r}, run_name='__main__')")  # fmt: skip
    done = run([sys.executable, "-c", code], timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: FramePack needs Python 3.10 or newer; this is Python 3.9.18")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_failing_pip_shows_its_last_lines_and_a_network_hint():
    script = ("import sys\nfor i in range(40): print('line', i)\n"
              "print('NewConnectionError: Failed to establish a new connection')\nsys.exit(1)")  # fmt: skip
    with pytest.raises(installer.SetupError) as failure:
        installer.run_command([sys.executable, "-c", script], "install PyTorch")
    message = str(failure.value)
    assert message.startswith("install PyTorch failed (exit status 1)")
    assert "line 39" in message and "line 20" not in message
    assert "could not be reached" in message


@pytest.mark.skipif(sys.platform == "darwin", reason="plans a CUDA build for this machine")
def test_install_runs_torch_first_and_survives_a_failing_attention_package(monkeypatch, capsys):
    """The steps in order, with pip stubbed: PyTorch from its index before the requirements, then the package;
    an attention package that pip cannot install is skipped with pip's words, and setup still succeeds."""
    ran = []

    def fake_pip(command, what):
        ran.append(command[3:])
        if "sageattention==1.0.6" in command:
            raise installer.SetupError(installer.failure_message(what, 1, ["ERROR: No matching distribution found"]))

    monkeypatch.setattr(installer, "ensure_venv", lambda rules: "venv-python")
    monkeypatch.setattr(installer, "run_command", fake_pip)
    monkeypatch.setattr(installer, "check_torch", lambda python, torch: None)
    args = installer.parse_args(["--gpu", "NVIDIA GeForce RTX 4090", "--driver", "581.57", "--compute-cap", "8.9",
                                 "--with", "sage,xformers", "--quiet"], rules)  # fmt: skip
    assert installer.install(args, rules) == 0
    build = "cu130"
    index = f"https://download.pytorch.org/whl/{build}"
    assert ran[:4] == [
        ["install", "-q", "--upgrade", "pip"], ["install", "-q", f"torch==2.13.0+{build}", "--index-url", index],
        ["install", "-q", "-r", "requirements.txt"], ["install", "-q", "--no-deps", "-e", "."],
    ]  # fmt: skip
    assert ran[4][-3:] == ["sageattention==1.0.6", rules.TRITON_PACKAGE[installer.this_os()], f"torch==2.13.0+{build}"]
    assert ran[5][-2:] == ["xformers", f"torch==2.13.0+{build}"] and "--only-binary=:all:" in ran[5]
    out = capsys.readouterr().out
    assert "warning: skipped: install sage" in out and "No matching distribution found" in out and "Ready:" in out


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_setup_sh_passes_its_arguments_and_checks_the_python(bare_copy):
    shutil.copy(ROOT / "setup.sh", bare_copy)
    env = dict(os.environ, PATH=f"{bare_copy / 'no-such-bin'}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable)
    done = run(["bash", "setup.sh", "--dry-run", "--test", "--os", "macos"], env=env, cwd=bare_copy, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "machine: macos arm64" in done.stdout and "-r requirements-test.txt" in done.stdout
    assert not (bare_copy / ".venv").exists()
    old = bare_copy / "python3.9"
    old.write_text('#!/bin/sh\ncase "$1" in -V) echo "Python 3.9.18";; *) exit 1;; esac\n')
    old.chmod(0o755)
    done = run(["bash", "setup.sh"], env=dict(env, PYTHON=str(old)), cwd=bare_copy, timeout=60)
    assert done.returncode == 1 and "needs Python 3.10 or newer" in done.stderr and "Python 3.9.18" in done.stderr


@pytest.mark.parametrize("name", ["setup.bat", "run.bat", "run_f1.bat"])
def test_windows_scripts_have_crlf_line_ends(name):
    # cmd.exe misreads labels and blocks in a batch file with bare LF line ends.
    data = (ROOT / name).read_bytes()
    assert data.count(b"\n") == data.count(b"\r\n") > 0


def test_windows_start_scripts_run_the_venv_python():
    for name, script in (("run.bat", "demo_gradio.py"), ("run_f1.bat", "demo_gradio_f1.py")):
        text = (ROOT / name).read_text()
        assert f'".venv\\Scripts\\python.exe" {script} %*' in text and "setup.bat first" in text


# Packaging metadata


def requirement_lines(name: str) -> list[str]:
    lines = [line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-r")]


def test_pyproject_pins_agree_with_the_requirements_files():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == sorted(requirement_lines("requirements.txt"))
    test_extra = requirement_lines("requirements-test.txt")
    assert sorted(project["optional-dependencies"]["test"]) == sorted(test_extra)
    assert project["optional-dependencies"]["ray"] == [line for line in test_extra if line.startswith("ray==")]
    assert project["requires-python"] == f">={rules.PYTHON_RANGE[0][0]}.{rules.PYTHON_RANGE[0][1]}"
    assert project["scripts"] == {"framepack": "framepack.cli:main"}


def test_setup_rules_describe_the_pinned_torch():
    """The build tables are for one PyTorch release: bumping torch in requirements.txt means revisiting them."""
    pin = installer.torch_pin(ROOT / "requirements.txt")
    assert pin.rsplit(".", 1)[0] == rules.TORCH_SERIES
    for build in rules.CUDA_BUILDS:
        assert rules.min_driver(build.cuda, "linux") and rules.min_driver(build.cuda, "windows")


def subcommands(help_text: str) -> set[str]:
    choices = re.search(r"\{([\w,-]+)\}", help_text)
    return set(choices.group(1).split(",")) if choices else set()


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_gives_the_framepack_command(tmp_path):
    """`pip install .` into a fresh venv, then `framepack --help`.

    Installing every dependency again would download gigabytes, so the fresh venv sees this environment's
    packages through a .pth file in its site-packages naming this environment's site-packages: pip finds every
    dependency satisfied and installs only framepack. (--system-site-packages would not do: a venv made from
    inside a venv gets the base interpreter's site-packages, not the venv's.) The fresh venv is made without pip:
    this environment's pip, seen through the same file, installs into it, and no setuptools of ensurepip's
    shadows the newer one a dependency asks for. Building needs setuptools from the package index (pip's build
    isolation). The project is copied first, so that the build's egg-info and build/ folders land in the copy,
    not in the checkout."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "framepack", source / "framepack", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    paths = run([str(python), "-c", "import sysconfig, json; print(json.dumps(sysconfig.get_paths()))"], timeout=60)
    fresh = json.loads(paths.stdout)
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(fresh["purelib"], "dev-environment.pth").write_text("\n".join(sorted(ours)) + "\n")
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    done = run([str(python), "-m", "pip", "install", str(source)], env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    installed = re.findall(r"^Successfully installed (.+)$", done.stdout, re.MULTILINE)
    assert [words.split() for words in installed] == [["framepack-0.1.0"]], done.stdout
    site = Path(fresh["purelib"])
    assert (site / "framepack" / "postprocess" / "__init__.py").is_file()  # subpackages come along
    assert not (site / "tests").exists() and not (site / "bench").exists()  # and nothing but framepack
    command = Path(fresh["scripts"], "framepack.exe" if os.name == "nt" else "framepack")
    help_run = run([str(command), "--help"], cwd=tmp_path, timeout=300)
    assert help_run.returncode == 0, help_run.stderr
    reference = run([sys.executable, "-m", "framepack", "--help"], cwd=ROOT, timeout=300)
    assert subcommands(help_run.stdout) and subcommands(help_run.stdout) == subcommands(reference.stdout)
    where = run([str(python), "-c", "import framepack; print(framepack.__file__)"], cwd=tmp_path, timeout=300)
    assert Path(where.stdout.strip()).resolve().is_relative_to(site.resolve()), where.stdout + where.stderr
