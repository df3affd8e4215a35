"""`framepack doctor`: the checks' decisions on faked machines, and the command on this one (no GPU), with a faked
nvidia-smi first on PATH and a faked torch build."""

from __future__ import annotations

import os
import stat
import sys

import pytest
from helpers import TINY_MODELS, needs_shared, run_cli

from framepack import doctor
from framepack import setup_rules as rules
from framepack.cli import main
from framepack.doctor import Finding, Host, Smi, SmiGpu, TorchBuild, model_parts
from framepack.memory.sizes import GB
from framepack.setup_rules import Gpu

RTX_5090 = "NVIDIA GeForce RTX 5090, 575.64.03, 32607 MiB, 12.0"
# PyTorch's CUDA 12.6 build: no Blackwell kernels (setup_rules.CUDA_BUILDS).
CU126 = TorchBuild("2.13.0+cu126", "12.6", ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"))
CPU_TORCH = TorchBuild("2.13.0+cpu", None)
LINUX = Host("linux")
SECTIONS = ("Python", "PyTorch", "NVIDIA driver", "Device", "System memory", "Attention", "Video encoders",
            "Model files", "Disk (models)", "Disk (outputs)", "Memory plan")  # fmt: skip


def smi(*lines: str) -> Smi:
    return Smi(True, doctor.parse_smi("\n".join(lines)))


def fake_nvidia_smi(folder, monkeypatch, answer: str = RTX_5090) -> None:
    """An `nvidia-smi` first on PATH that answers the doctor's query with `answer`."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!{sys.executable}\nimport sys\nprint({answer!r})\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def doctor_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["doctor", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out


# ----------------------------------------------------------------------------------------------- decisions


def test_nvidia_smi_lines_are_read():
    (card,) = doctor.parse_smi(RTX_5090)
    assert card == SmiGpu(Gpu("NVIDIA GeForce RTX 5090", "575.64.03", (12, 0), "nvidia-smi"), 32607)
    (old,) = doctor.parse_smi("NVIDIA GeForce RTX 4090, 560.35, 24564 MiB", with_capability=False)
    assert old.gpu.capability == (8, 9) and old.gpu.capability_from == "the GPU name"
    with pytest.raises(ValueError):
        doctor.parse_smi("garbage")


SYSTEM32_SMI = r"C:\Windows\System32\nvidia-smi.exe"
NVSMI = r"C:\Program Files\NVIDIA Corporation\NVSMI\nvidia-smi.exe"


@pytest.mark.parametrize(
    ("os_name", "on_path", "environ", "files", "found"),
    [
        ("windows", None, {}, {NVSMI}, NVSMI),  # an older driver: off PATH, in NVSMI
        ("windows", None, {}, {SYSTEM32_SMI, NVSMI}, SYSTEM32_SMI),  # the current driver's place first
        ("windows", None, {"SystemRoot": r"D:\WINNT"}, {r"D:\WINNT\System32\nvidia-smi.exe"}, r"D:\WINNT\System32\nvidia-smi.exe"),
        ("windows", None, {"ProgramFiles": r"E:\Apps"}, {r"E:\Apps\NVIDIA Corporation\NVSMI\nvidia-smi.exe"},
         r"E:\Apps\NVIDIA Corporation\NVSMI\nvidia-smi.exe"),
        ("windows", None, {}, set(), None),  # no driver
        ("windows", r"C:\Tools\nvidia-smi.exe", {}, {NVSMI}, r"C:\Tools\nvidia-smi.exe"),  # PATH wins
        ("linux", None, {}, {SYSTEM32_SMI, NVSMI}, None),  # the Windows places mean nothing elsewhere
        ("linux", "/usr/bin/nvidia-smi", {}, set(), "/usr/bin/nvidia-smi"),
    ],
)  # fmt: skip
def test_nvidia_smi_is_found_where_the_windows_driver_installs_it(os_name, on_path, environ, files, found):
    assert rules.find_nvidia_smi(os_name, on_path, environ, files.__contains__) == found


def test_the_doctor_runs_the_nvidia_smi_it_finds_off_path_on_windows(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi on PATH
    asked: list[str] = []

    def is_file(path: str) -> bool:
        asked.append(path)
        return path == NVSMI

    assert doctor.locate_nvidia_smi(Host("windows"), {}, is_file) == NVSMI and asked == [SYSTEM32_SMI, NVSMI]
    assert doctor.locate_nvidia_smi(LINUX, {}, is_file) is None
    fake_nvidia_smi(tmp_path / "bin", monkeypatch)  # stands in for the NVSMI one: what it answers is read
    monkeypatch.setattr(doctor, "locate_nvidia_smi", lambda where: str(tmp_path / "bin" / "nvidia-smi"))
    monkeypatch.setattr(doctor, "host", lambda: Host("windows"))
    found = doctor.nvidia_smi()
    assert found.found and [card.gpu.name for card in found.gpus] == ["NVIDIA GeForce RTX 5090"]


def test_torch_arch_lists_against_capabilities():
    assert doctor.arch_capabilities(["sm_90a", "sm_120", "compute_90"]) == (((9, 0), (12, 0)), ((9, 0),))
    assert doctor.runs_on(CU126.arch_list, (8, 9))  # sm_86 code runs on 8.9
    assert not doctor.runs_on(CU126.arch_list, (12, 0))
    assert doctor.runs_on([*CU126.arch_list, "compute_90"], (12, 0))  # PTX: the driver compiles it


def test_rtx_50_on_a_cuda_12_6_build_is_the_no_kernel_image_case():
    findings = doctor.check_torch(CU126, smi(RTX_5090), LINUX)
    (kernels,) = [f for f in findings if f.name == "GPU kernels"]
    assert kernels.status == "fail" and "no kernel image is available" in kernels.found and "12.0" in kernels.found
    # The build with Blackwell kernels needs a newer driver than 575: both are named, the driver first.
    assert "580.65.06" in kernels.fix and 'pip install "torch==2.13.0+cu130"' in kernels.fix
    assert "download.pytorch.org/whl/cu130" in kernels.fix
    driver = doctor.check_driver(smi(RTX_5090), TorchBuild("2.13.0+cu130", "13.0"), LINUX)
    assert driver.status == "fail" and "580.65.06" in driver.found


def test_a_cpu_only_torch_with_an_nvidia_gpu_fails_with_the_build_to_install():
    card = "NVIDIA GeForce RTX 4090, 581.15, 24564 MiB, 8.9"
    (finding,) = doctor.check_torch(CPU_TORCH, smi(card), Host("windows"))
    assert finding.status == "fail" and "CPU-only" in finding.found and "RTX 4090" in finding.found
    assert 'pip install "torch==2.13.0+cu130" --index-url https://download.pytorch.org/whl/cu130' in finding.fix
    assert doctor.check_torch(CPU_TORCH, Smi(False), LINUX) == [Finding("PyTorch", "ok", "2.13.0+cpu, a CPU-only build")]


def test_a_matching_build_and_driver_pass():
    build = TorchBuild("2.13.0+cu130", "13.0", ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"),
                       (("NVIDIA GeForce RTX 5090", (12, 0)),))  # fmt: skip
    card = "NVIDIA GeForce RTX 5090, 580.82.07, 32607 MiB, 12.0"
    assert all(f.status == "ok" for f in doctor.check_torch(build, smi(card), LINUX))
    assert doctor.check_driver(smi(card), build, LINUX).status == "ok"
    broken = Smi(True, error="nvidia-smi failed: couldn't communicate with the NVIDIA driver")
    assert doctor.check_driver(broken, build, LINUX).status == "fail"


def test_missing_model_files_are_listed_with_their_download_sizes():
    parts = model_parts("original")
    found = {part: part.component != "transformer" for part in parts}
    sizes = {"transformer": 25_800_000_000, "text_encoder": 15 * GB}
    finding = doctor.check_models(found, sizes, "hf_download", local=False, offline=False)
    assert finding.status == "warn" and "would download 25.8 GB: lllyasviel/FramePackI2V_HY (25.8 GB)" in finding.found
    assert "hf download lllyasviel/FramePackI2V_HY --cache-dir hf_download" in finding.fix
    offline = doctor.check_models(found, sizes, "hf_download", local=False, offline=True)
    assert offline.status == "fail" and "HF_HUB_OFFLINE" in offline.found
    no_llama = {part: part.subfolder != "text_encoder" for part in parts}
    local = doctor.check_models(no_llama, sizes, "models", local=True, offline=False)
    assert local.status == "fail" and "missing 15.0 GB" in local.found
    assert local.fix == ('hf download hunyuanvideo-community/HunyuanVideo --include "text_encoder/*" '
                         "--local-dir models/hunyuanvideo-community/HunyuanVideo")
    # Two subfolders of a repo: one --include each (hf download reads a second word after one as a file name).
    none_here = doctor.check_models(dict.fromkeys(parts, False), sizes, "hf_download", local=False, offline=False)
    assert ('hf download hunyuanvideo-community/HunyuanVideo --include "text_encoder/*" --include "text_encoder_2/*" '
            '--include "tokenizer/*" --include "tokenizer_2/*" --include "vae/*" --cache-dir hf_download; '
            'hf download lllyasviel/flux_redux_bfl --include "feature_extractor/*" --include "image_encoder/*" '
            "--cache-dir hf_download; hf download lllyasviel/FramePackI2V_HY --cache-dir hf_download") in none_here.fix


def test_disk_encoders_and_attention_verdicts(tmp_path):
    assert doctor.check_disk("Disk (models)", tmp_path, 10 * GB, needed=42 * GB).status == "fail"
    assert doctor.check_disk("Disk (models)", tmp_path, 44 * GB, needed=42 * GB).status == "warn"
    assert doctor.check_disk("Disk (outputs)", tmp_path, 100 * GB).status == "ok"
    assert doctor.check_encoders(lambda name: name != "libx264").status == "fail"
    assert doctor.check_encoders(lambda name: name == "libx264").status == "ok"
    gpu_only = {"sdpa": None, "sage": "sage needs an NVIDIA GPU", "flash": "flash needs an NVIDIA GPU", "xformers": None}
    finding = doctor.check_attention(gpu_only, None)
    assert finding.status == "ok" and "xformers usable" in finding.found
    assert "sage, flash not (needs an NVIDIA GPU)" in finding.found
    assert doctor.check_attention(gpu_only, "CUDA error: no kernel image is available").status == "fail"


def test_a_check_that_raises_becomes_a_finding():
    def broken() -> list[Finding]:
        raise OSError("disk gone")

    (finding,) = doctor.guarded("Disk (models)", broken)
    assert finding.status == "fail" and "disk gone" in finding.found
    assert doctor.ready([Finding("a", "ok", ""), Finding("b", "warn", "")])
    assert not doctor.ready([Finding("a", "ok", ""), Finding("b", "fail", "")])


# ----------------------------------------------------------------------------------------------- the command


@needs_shared
def test_doctor_on_this_machine_with_the_tiny_models(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(doctor, "nvidia_smi", lambda: Smi(False))  # whatever this machine has
    monkeypatch.setattr(doctor, "torch_build", lambda: CPU_TORCH)
    code, out = doctor_cli(capsys, "--models", str(TINY_MODELS), "--output-dir", str(tmp_path / "out"))
    for section in SECTIONS:
        assert f"  {section}  " in out, section
    assert "runs on the CPU" in out and "8 of 8 parts present" in out
    assert code == 0 and out.strip().splitlines()[-1].startswith("Ready")


@needs_shared
def test_rtx_5090_with_a_cuda_12_6_torch_names_what_to_run(tmp_path, capsys, monkeypatch):
    fake_nvidia_smi(tmp_path / "bin", monkeypatch)
    monkeypatch.setattr(doctor, "torch_build", lambda: CU126)
    code, out = doctor_cli(capsys, "--models", str(TINY_MODELS), "--output-dir", str(tmp_path / "out"))
    assert code == 1
    assert "FAIL  GPU kernels" in out and "no kernel image is available" in out and "RTX 5090" in out
    assert 'python -m pip install "torch==2.13.0+cu130" --index-url https://download.pytorch.org/whl/cu130' in out
    assert "ok    NVIDIA driver   575.64.03" in out  # enough for CUDA 12.6; the fix asks for 580 with cu130
    assert out.strip().splitlines()[-1].startswith("Not ready")


def test_missing_models_would_download_with_sizes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(doctor, "nvidia_smi", lambda: Smi(False))
    code, out = doctor_cli(capsys, "--hf-cache", str(tmp_path / "hf_download"), "--variant", "f1",
                           "--output-dir", str(tmp_path / "out"))  # fmt: skip
    (line,) = [line for line in out.splitlines() if "  Model files  " in line]
    assert line.startswith("  warn") or "HF_HUB_OFFLINE" in line  # offline test runs cannot download
    assert "0 of 8 parts present; would download 42.4 GB" in line
    assert "lllyasviel/FramePack_F1_I2V_HY_20250503 (25.8 GB)" in line and "text_encoder 15.0 GB" in line
    assert code in (0, 1)


@needs_shared
def test_doctor_command_with_a_cpu_torch_and_an_nvidia_gpu(tmp_path, monkeypatch):
    """Through `python -m framepack doctor`: this machine's torch is CPU-only, and nvidia-smi (faked) shows a GPU."""
    import torch

    if torch.version.cuda:
        pytest.skip("this machine's torch is a CUDA build")
    fake_nvidia_smi(tmp_path / "bin", monkeypatch, "NVIDIA GeForce RTX 4090, 581.15, 24564 MiB, 8.9")
    result = run_cli("doctor", "--models", str(TINY_MODELS), "--output-dir", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "FAIL  PyTorch" in result.stdout
    assert "a CPU-only build, but nvidia-smi shows NVIDIA GeForce RTX 4090" in result.stdout
    assert '"torch==' in result.stdout and "+cu130" in result.stdout
    assert "Not ready" in result.stdout.strip().splitlines()[-1]
