"""The GPU check runs the same code without CUDA, on the tiny configs, so it cannot rot before a GPU session."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, needs_shared

pytestmark = needs_shared


@pytest.mark.slow
def test_gpu_check_runs_on_the_tiny_configs_without_cuda(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no CUDA: the CPU with the tiny test configs" in result.stdout
    report = json.loads(out.read_text())
    assert report["cuda"] is False
    rows = {(row["group"], row["name"]): row for row in report["rows"]}
    failed = [f"{name}: {row['note']}" for (_, name), row in rows.items() if row["note"].startswith("failed")]
    assert not failed, failed  # every path ran, or says why it cannot run here
    measured = ["step, float32, attention sdpa", "step, compiled blocks", "step, fp8 storage", "step, fp8 compute",
                "step, resident (no cap)",
                "step, streamed under 6 GB, without streams", "decode one section (19 latents), tiled",
                "Llama text encoder, one prompt"]  # fmt: skip
    for name in measured:
        row = next(row for (_, n), row in rows.items() if n == name)
        assert row["value"] is not None and row["value"] > 0, row
    assert rows[("transformer", "step, fp8 compute")]["note"] == "42 Linears multiplying in fp8 (on the CPU)"
    assert {group for group, _ in rows} == {"transformer", "low memory", "vae", "encoders", "plan"}
