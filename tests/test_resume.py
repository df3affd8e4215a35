"""Nothing lost: a job killed mid-way resumes to the video an uninterrupted run makes; manifests record jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from conftest import CASES, TINY_MODELS, needs_shared
from framepack.engine import Done, Error, Progress, SectionDone, generate, resume_job
from framepack.settings import Settings
from framepack.video import probe, read_frames

pytestmark = needs_shared
REPO = Path(__file__).resolve().parents[1]
IMAGE = CASES / "v1_original" / "input.png"
JOB = ["--prompt", "a girl dances", "--seconds", "6", "--steps", "2", "--height", "64", "--width", "96", "--seed", "7"]


def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "framepack", *args, "--models", str(TINY_MODELS), "--quiet"]
    return subprocess.Popen(command, cwd=REPO, env=env, text=True, **kwargs)


def test_killed_job_resumes_to_the_uninterrupted_video(tmp_path):
    for variant in ("original", "f1"):
        out = tmp_path / variant
        whole = cli("generate", "--variant", variant, "--image", str(IMAGE), *JOB, "--output-dir", str(out / "whole"),
                    "--job-name", "job", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        killed = cli("generate", "--variant", variant, "--image", str(IMAGE), *JOB, "--output-dir", str(out / "killed"),
                     "--job-name", "job", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        for line in killed.stderr:  # blocks until the job reports its progress
            if "Decoding section 4 of 5" in line:
                killed.send_signal(signal.SIGKILL)
                break
        killed.wait(timeout=120)
        assert killed.returncode == -signal.SIGKILL
        assert whole.wait(timeout=300) == 0

        job = out / "killed"
        manifest = json.loads((job / "job.json").read_text())
        assert manifest["state"] == "running" and 1 <= manifest["sections_done"] < 5
        assert probe(job / "job.mp4").frames > 0  # what a kill leaves behind plays

        resumed = cli("resume", str(job / "job.mp4"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, stderr
        assert f"Resuming after section {manifest['sections_done']} of 5" in stderr

        expected = load_file(out / "whole" / "job.latents.safetensors")["latents"]
        assert torch.equal(load_file(job / "job.latents.safetensors")["latents"], expected)
        frames, expected_frames = read_frames(job / "job.mp4"), read_frames(out / "whole" / "job.mp4")
        assert frames.shape == expected_frames.shape == (4 * (5 * 9 + 1) - 3, 64, 96, 3)
        assert np.abs(frames.astype(float) - expected_frames).mean() < 3  # same frames, encoded again
        assert json.loads((job / "job.json").read_text())["state"] == "done"
        assert sorted(p.name for p in job.iterdir()) == ["job.json", "job.latents.safetensors", "job.mp4"]


def test_manifest_records_the_job(tiny_models, tmp_path):
    settings = Settings(variant="f1", total_second_length=2.4, steps=2, height=64, width=96, prompt="wave")
    stop = threading.Event()
    states = []
    for event in generate(tiny_models("f1"), settings, IMAGE, tmp_path, job_id="job", stop=stop):
        if isinstance(event, SectionDone):
            manifest = json.loads((tmp_path / "job.json").read_text())
            states.append((manifest["state"], manifest["sections_done"]))
        if isinstance(event, Progress) and event.section == 2:
            stop.set()
    assert isinstance(event, Done) and event.stopped
    assert states[0] == ("running", 1)
    manifest = json.loads((tmp_path / "job.json").read_text())
    assert manifest["state"] == "stopped" and manifest["sections_done"] == event.sections_done
    assert manifest["settings"]["prompt"] == "wave" and manifest["seed"] == 31337 and manifest["variant"] == "f1"
    assert manifest["models"]["transformer"].endswith("lllyasviel/FramePack_F1_I2V_HY_20250503")
    assert manifest["attention"] == "sdpa" and manifest["dtype"] == "float32" and manifest["device"] == "cpu"
    assert manifest["step_cache"] == {"method": "teacache", "threshold": 0.15}
    assert set(manifest["versions"]) >= {"torch", "diffusers", "transformers"}
    assert len(manifest["section_seconds"]) == event.sections_done
    assert manifest["owner"] == "local"
    # The settings travel with the video; the job's name does not (it is the owner's business).
    embedded = json.loads(probe(tmp_path / "job.mp4").metadata["comment"])
    assert embedded == {"framepack": settings.to_dict()}

    # The stopped job resumes in place and finishes; the checkpoint and segments are then removed.
    final = list(resume_job(tiny_models("f1"), tmp_path / "job.json", previews=False))[-1]
    assert isinstance(final, Done) and not final.stopped and final.sections_done == settings.num_sections
    assert probe(tmp_path / "job.mp4").frames == settings.num_frames
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.json", "job.latents.safetensors", "job.mp4"]
    nothing = list(resume_job(tiny_models("f1"), tmp_path / "job.json"))
    assert isinstance(nothing[-1], Error) and "nothing to resume" in nothing[-1].message


def test_the_app_loads_settings_from_a_previous_output(tiny_models, tmp_path):
    from framepack import ui

    settings = Settings(variant="f1", total_second_length=1.2, steps=2, height=64, width=96, prompt="jump", seed=5,
                        cfg=1.5, negative_prompt="still", mp4_crf=20)  # fmt: skip
    done = list(generate(tiny_models("f1"), settings, IMAGE, tmp_path, job_id="old", previews=False))[-1]
    assert isinstance(done, Done)
    for source in (tmp_path / "old.mp4", tmp_path / "old.json"):
        *values, message = ui.previous_settings(str(source))
        assert dict(zip(ui.PAGE_SETTINGS, values)) == {name: getattr(settings, name) for name in ui.PAGE_SETTINGS}
        assert message.startswith("Loaded the settings of old.")
    not_ours = tmp_path / "other.json"
    not_ours.write_text("{}")
    *_, message = ui.previous_settings(str(not_ours))
    assert message.startswith("**Error:** other.json holds no FramePack settings")


def test_a_finished_f1_video_extends_to_the_longer_uninterrupted_video(tiny_models, tmp_path):
    from framepack.engine import extend_job

    models = tiny_models("f1")
    short = Settings(variant="f1", total_second_length=2.4, steps=2, height=64, width=96, prompt="run", seed=3)
    assert isinstance(list(generate(models, short, IMAGE, tmp_path / "ext", job_id="job", previews=False))[-1], Done)
    longer = short.replace(total_second_length=3.6)
    assert isinstance(list(generate(models, longer, IMAGE, tmp_path / "one", job_id="job", previews=False))[-1], Done)

    result = run_extend_cli(tmp_path / "ext" / "job.mp4", "1.2")
    assert result.returncode == 0, result.stderr
    expected = load_file(tmp_path / "one" / "job.latents.safetensors")["latents"]
    assert torch.equal(load_file(tmp_path / "ext" / "job.latents.safetensors")["latents"], expected)
    frames, expected_frames = read_frames(tmp_path / "ext" / "job.mp4"), read_frames(tmp_path / "one" / "job.mp4")
    assert frames.shape == expected_frames.shape == (longer.num_frames, 64, 96, 3)
    assert np.abs(frames.astype(float) - expected_frames).mean() < 3
    manifest = json.loads((tmp_path / "ext" / "job.json").read_text())
    assert manifest["state"] == "done" and manifest["sections_done"] == 3
    assert manifest["settings"]["total_second_length"] == longer.total_second_length
    assert sorted(p.name for p in (tmp_path / "ext").iterdir()) == ["job.json", "job.latents.safetensors", "job.mp4"]

    original = Settings(variant="original", total_second_length=1.2, steps=1, height=64, width=96)
    list(generate(tiny_models("original"), original, IMAGE, tmp_path / "orig", job_id="job", previews=False))
    refused = list(extend_job(tiny_models("original"), tmp_path / "orig" / "job.mp4", 1.2))[-1]
    assert isinstance(refused, Error) and "only F1 videos can be extended" in refused.message


def run_extend_cli(path: Path, seconds: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "framepack", "resume", str(path), "--add-seconds", seconds, "--models",
               str(TINY_MODELS), "--quiet"]  # fmt: skip
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
