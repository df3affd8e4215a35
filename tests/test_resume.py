"""Nothing lost: a job killed mid-way resumes to the video an uninterrupted run makes; manifests record jobs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CASES, IMAGE, REPO, TINY_MODELS, needs_shared
from safetensors.torch import load_file

from framepack.engine import generate, resume_job
from framepack.events import Done, Error, Progress, SectionDone
from framepack.media.reading import probe, read_frames
from framepack.settings import Settings

pytestmark = needs_shared
JOB = ["--prompt", "a girl dances", "--seconds", "6", "--steps", "2", "--height", "64", "--width", "96", "--seed", "7"]


def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "framepack", *args, "--models", str(TINY_MODELS), "--quiet"]
    return subprocess.Popen(command, cwd=REPO, env=env, text=True, **kwargs)


# Runs the CLI in a process that kills itself (SIGKILL: no cleanup of any kind) at an exact point: in the middle of
# the `number`-th atomic write of the file named `target`, after its temporary file is written and before the
# rename that would publish it. Where the kill lands does not depend on timing.
KILL_DURING_WRITE = """
import contextlib, os, signal, sys
import framepack.files as files
from framepack.cli import main

target, number, writes = sys.argv[1], int(sys.argv[2]), 0
atomic_path = files.atomic_path

@contextlib.contextmanager
def killing_atomic_path(path):
    global writes
    with atomic_path(path) as tmp:
        yield tmp
        writes += os.path.basename(path) == target
        if writes == number:
            os.kill(os.getpid(), signal.SIGKILL)

for module in list(sys.modules.values()):  # every module that writes through it, wherever it was imported
    if getattr(module, "__name__", "").startswith("framepack") and getattr(module, "atomic_path", None) is atomic_path:
        module.atomic_path = killing_atomic_path
sys.exit(main(sys.argv[3:]))
"""


def kill_during_write(target: str, number: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", KILL_DURING_WRITE, target, str(number), *args, "--models", str(TINY_MODELS), "--quiet"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "variant, target, number, resumes_after",
    [
        ("original", "job.checkpoint.safetensors", 2, 1),  # a section's checkpoint
        ("original", "job.mp4", 3, 2),  # a section's video update (its checkpoint comes after it)
        ("original", "job.latents.safetensors", 1, 5),  # the video's latents, once all sections are done
        ("original", "job.json", 6, 5),  # the record that says "done" (five sections said "running" before)
        ("f1", "job.mp4", 2, 1),
    ],
)
@pytest.mark.slow
def test_killed_job_resumes_to_the_uninterrupted_video(tmp_path, uninterrupted, variant, target, number, resumes_after):
    out = tmp_path / "killed"
    killed = kill_during_write(target, number, "generate", "--variant", variant, "--image", str(IMAGE), *JOB,
                               "--output-dir", str(out), "--job-name", "job")  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # The kill left a half-written file behind, and everything published before it is whole.
    assert [p.name for p in out.iterdir() if p.name.startswith(f".{target}.")], sorted(p.name for p in out.iterdir())
    manifest = json.loads((out / "job.json").read_text())
    assert manifest["state"] == "running" and 1 <= manifest["sections_done"] <= 5
    assert probe(out / "job.mp4").frames > 0  # what a kill leaves behind plays

    resumed = cli("resume", str(out / "job.mp4"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"Resuming after section {resumes_after} of 5" in stderr

    whole = uninterrupted(variant)
    latents, expected = load_file(out / "job.latents.safetensors")["latents"], load_file(whole / "job.latents.safetensors")["latents"]
    assert latents.shape == expected.shape
    # Bit-identical wherever we measured; MKL on some Intel CPUs may still round the last bits of a few products
    # differently in another process, so allow float32 rounding (a wrong noise draw or context is off by ~1).
    differing = (latents - expected).abs().amax(dim=(0, 1, 3, 4))  # per latent frame: which sections went astray
    assert differing.max() <= 1e-4, f"latent frames that differ: {differing.nonzero().flatten().tolist()}, max {differing.max():g}"
    frames, expected_frames = read_frames(out / "job.mp4"), read_frames(whole / "job.mp4")
    assert frames.shape == expected_frames.shape == (4 * (5 * 9 + 1) - 3, 64, 96, 3)
    assert np.abs(frames.astype(float) - expected_frames).mean() < 3  # same frames, encoded again
    assert json.loads((out / "job.json").read_text())["state"] == "done"
    # Nothing is left of the kill: no temporary file, no parts folder, no checkpoint.
    assert sorted(p.name for p in out.iterdir()) == ["job.json", "job.latents.safetensors", "job.mp4"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The outputs of the uninterrupted job, per variant (made once)."""
    made = {}

    def get(variant: str) -> Path:
        if variant not in made:
            folder = tmp_path_factory.mktemp(f"whole-{variant}")
            whole = cli("generate", "--variant", variant, "--image", str(IMAGE), *JOB, "--output-dir", str(folder),
                        "--job-name", "job", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            assert whole.wait(timeout=300) == 0, whole.stderr.read()
            made[variant] = folder
        return made[variant]

    return get


def test_the_app_tidies_what_killed_jobs_left_and_spares_live_ones(tmp_path):
    from framepack.jobs.paths import JobLock, JobPaths, sweep_outputs

    def leftovers(job: str, resumable: bool) -> JobPaths:
        paths = JobPaths(tmp_path, job)
        paths.parts_dir.mkdir()
        (paths.parts_dir / "00001.mp4").write_bytes(b"segment")
        (paths.parts_dir / ".00002.mp4.0123abcd.tmp").write_bytes(b"half a segment")
        (tmp_path / f".{job}.checkpoint.safetensors.89abcdef.tmp").write_bytes(b"half a checkpoint")
        paths.video.write_bytes(b"video")
        if resumable:
            paths.checkpoint.write_bytes(b"checkpoint")
        return paths

    resumable, finished, live = leftovers("resumable", True), leftovers("finished", False), leftovers("live", True)
    stray = tmp_path / ".gone.json.00ff00ff.tmp"  # a job killed before its first section: no parts folder
    stray.write_text("{")
    other = tmp_path / ".notes.txt"  # not ours: never touched
    other.write_text("keep")
    lock = JobLock(live)  # another process is working on this one
    assert lock.acquire()
    try:
        assert sweep_outputs(tmp_path) == 3
    finally:
        lock.release()
    # A resumable job keeps its parts but not its half-written files; a finished one keeps only its outputs.
    assert sorted(p.name for p in resumable.parts_dir.iterdir()) == ["00001.mp4", "lock"]
    assert not finished.parts_dir.exists() and finished.video.is_file()
    assert not stray.exists() and other.read_text() == "keep"
    # The live job's files are all still there.
    assert (live.parts_dir / ".00002.mp4.0123abcd.tmp").exists()
    assert (tmp_path / ".live.checkpoint.safetensors.89abcdef.tmp").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".resumable.", ".finished.")) and p.suffix == ".tmp"]


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
    image = {"name": "input.png", "sha256": hashlib.sha256(IMAGE.read_bytes()).hexdigest()}
    assert manifest["inputs"] == {"image": image, "end_image": None, "keyframes": []}
    assert [row["prompt"] for row in manifest["schedule"]] == ["wave"] * settings.num_sections
    # The settings, inputs and the job's name travel with the video (a renamed copy still finds its job; access is the
    # record's say).
    embedded = json.loads(probe(tmp_path / "job.mp4").metadata["comment"])
    assert embedded == {"framepack": settings.to_dict(), "inputs": manifest["inputs"], "loras": [], "job": "job"}

    # The stopped job resumes in place and finishes; the checkpoint and segments are then removed.
    final = list(resume_job(tiny_models("f1"), tmp_path / "job.json", previews=False))[-1]
    assert isinstance(final, Done) and not final.stopped and final.sections_done == settings.num_sections
    assert probe(tmp_path / "job.mp4").frames == settings.num_frames
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.json", "job.latents.safetensors", "job.mp4"]
    nothing = list(resume_job(tiny_models("f1"), tmp_path / "job.json"))
    assert isinstance(nothing[-1], Error) and "nothing to resume" in nothing[-1].message


def test_the_app_loads_settings_from_a_previous_output(tiny_models, tmp_path):
    from framepack.app.fields import LOADABLE
    from framepack.app.service import AppService

    service = AppService(None, "f1")  # loading settings needs no queue
    settings = Settings(variant="f1", total_second_length=1.2, steps=2, height=64, width=96, prompt="jump", seed=5,
                        cfg=1.5, negative_prompt="still", mp4_crf=20)  # fmt: skip
    done = list(generate(tiny_models("f1"), settings, IMAGE, tmp_path, job_id="old", previews=False))[-1]
    assert isinstance(done, Done)
    expected = {name: getattr(settings, name, None) for name in LOADABLE}
    expected.update(keyframe_times="", loras=[], lora_weights="")
    for source in (tmp_path / "old.mp4", tmp_path / "old.json"):
        loaded = service.settings_of_file(str(source))
        assert "blank_start" not in loaded.values  # the job had a start image: the choice stays as it is
        assert loaded.values == {name: value for name, value in expected.items() if name != "blank_start"}
        assert loaded.message == f"Loaded the settings of {source.name}; add the start image input.png and press Start."
    not_ours = tmp_path / "other.json"
    not_ours.write_text("{}")
    refused = service.settings_of_file(str(not_ours))
    assert refused.error and refused.message.startswith("other.json holds no FramePack settings")


@pytest.mark.slow
def test_a_finished_f1_video_extends_to_the_longer_uninterrupted_video(tiny_models, tmp_path):
    from framepack.engine import add_seconds

    models = tiny_models("f1")
    short = Settings(variant="f1", total_second_length=2.4, steps=2, height=64, width=96, prompt="run", seed=3)
    assert isinstance(list(generate(models, short, IMAGE, tmp_path / "ext", job_id="job", previews=False))[-1], Done)
    longer = short.replace(total_second_length=3.6)
    assert isinstance(list(generate(models, longer, IMAGE, tmp_path / "one", job_id="job", previews=False))[-1], Done)
    short_video = read_frames(tmp_path / "ext" / "job.mp4")

    result = run_extend_cli(tmp_path / "ext" / "job.mp4", "1.2", "--job-name", "longer")
    assert result.returncode == 0, result.stderr
    expected = load_file(tmp_path / "one" / "job.latents.safetensors")["latents"]
    assert torch.equal(load_file(tmp_path / "ext" / "longer.latents.safetensors")["latents"], expected)
    frames, expected_frames = read_frames(tmp_path / "ext" / "longer.mp4"), read_frames(tmp_path / "one" / "job.mp4")
    assert frames.shape == expected_frames.shape == (longer.num_frames, 64, 96, 3)
    assert np.abs(frames.astype(float) - expected_frames).mean() < 3
    manifest = json.loads((tmp_path / "ext" / "longer.json").read_text())
    assert manifest["state"] == "done" and manifest["sections_done"] == 3
    assert manifest["settings"]["total_second_length"] == longer.total_second_length
    assert manifest["origin"] == {"lengthened_from": {"job": "job", "seconds": 1.2}}
    # The shorter video stays as it was, beside the new one.
    assert np.array_equal(read_frames(tmp_path / "ext" / "job.mp4"), short_video)
    assert json.loads((tmp_path / "ext" / "job.json").read_text())["settings"]["total_second_length"] == 2.4
    files = sorted(p.name for p in (tmp_path / "ext").iterdir())
    assert files == ["job.json", "job.latents.safetensors", "job.mp4", "longer.json", "longer.latents.safetensors", "longer.mp4"]

    original = Settings(variant="original", total_second_length=1.2, steps=1, height=64, width=96)
    list(generate(tiny_models("original"), original, IMAGE, tmp_path / "orig", job_id="job", previews=False))
    refused = list(add_seconds(tiny_models("original"), tmp_path / "orig" / "job.mp4", 1.2))[-1]
    assert isinstance(refused, Error) and "only F1 videos can be made longer" in refused.message


def run_extend_cli(path: Path, seconds: str, *more: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "framepack", "resume", str(path), "--add-seconds", seconds, "--models",
               str(TINY_MODELS), "--quiet", *more]  # fmt: skip
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_controls_survive_a_stop_and_an_extension_adds_timed_prompts(tiny_models, tmp_path):
    from framepack.controls import JobInputs, Keyframe
    from framepack.engine import add_seconds

    models = tiny_models("f1")
    keyframe = CASES.parent / "cases-controls" / "c3_f1_timed" / "keyframe_0.png"
    inputs = JobInputs(IMAGE, keyframes=[Keyframe(0.8, keyframe)])
    short = Settings(variant="f1", total_second_length=1.2, latent_window_size=3, steps=2, height=48, width=80,
                     prompt="a [0s: she walks] [0.8s: she waves]", seed=12)  # fmt: skip
    stop = threading.Event()
    for event in generate(models, short, inputs, tmp_path / "job", job_id="job", stop=stop, previews=False):
        if isinstance(event, SectionDone):
            stop.set()
    assert isinstance(event, Done) and event.stopped
    final = list(resume_job(models, tmp_path / "job" / "job.json", previews=False))[-1]
    assert isinstance(final, Done) and not final.stopped

    # The longer video adds a prompt for its own seconds; the result is the longer job made at once.
    extended = list(add_seconds(models, tmp_path / "job" / "job.mp4", 0.8, prompt="[1.2s: she sits down]",
                                job_id="longer", previews=False))  # fmt: skip
    assert isinstance(extended[-1], Done), extended[-1]
    longer = short.replace(total_second_length=2.0, prompts=short.prompts + ((1.2, "she sits down"),))
    once = list(generate(models, longer, inputs, tmp_path / "once", job_id="job", previews=False))[-1]
    assert torch.equal(load_file(tmp_path / "job" / "longer.latents.safetensors")["latents"], load_file(once.latents_path)["latents"])
    manifest = json.loads((tmp_path / "job" / "longer.json").read_text())
    assert manifest["settings"]["prompts"] == [[0.0, "she walks"], [0.8, "she waves"], [1.2, "she sits down"]]
    assert manifest["inputs"]["keyframes"][0]["seconds"] == 0.8  # the images it goes on with, kept

    refused = list(add_seconds(models, tmp_path / "job" / "job.mp4", 0.8, prompt="[0.4s: too early]"))[-1]
    assert isinstance(refused, Error) and "0.4 s is in the part already made" in refused.message


def test_resume_loads_the_models_the_job_was_made_with(tiny_models, tmp_path):
    """A job made from a local model root resumes without repeating --models: its record says where they are."""
    models = tiny_models("f1")
    settings = Settings(variant="f1", total_second_length=1.2, latent_window_size=3, steps=2, height=48, width=80, prompt="x")
    stop = threading.Event()
    for event in generate(models, settings, IMAGE, tmp_path / "job", job_id="job", stop=stop, previews=False):
        if isinstance(event, SectionDone):
            stop.set()
    assert isinstance(event, Done) and event.stopped
    recorded = json.loads((tmp_path / "job" / "job.json").read_text())["models"]
    assert recorded["transformer"] == str((TINY_MODELS / "lllyasviel" / "FramePack_F1_I2V_HY_20250503").resolve())
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "framepack", "resume", str(tmp_path / "job" / "job.mp4"), "--quiet"]  # no --models
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    whole = list(generate(models, settings, IMAGE, tmp_path / "whole", job_id="job", previews=False))[-1]
    assert torch.equal(load_file(tmp_path / "job" / "job.latents.safetensors")["latents"], load_file(whole.latents_path)["latents"])


@pytest.mark.slow
def test_the_apps_resume_uses_the_models_the_job_was_made_with(tmp_path):
    """In the app too: a job made from another model root resumes on those models, then new jobs on the app's."""
    import shutil

    from framepack.events import Status
    from framepack.models import ModelSource
    from framepack.queue.front import QueueFront

    elsewhere = tmp_path / "other-root"
    shutil.copytree(TINY_MODELS, elsewhere)
    worker = QueueFront("f1", ModelSource(models_dir=TINY_MODELS), tmp_path / "out")
    other = QueueFront("f1", ModelSource(models_dir=elsewhere), tmp_path / "out")
    try:
        settings = Settings(variant="f1", total_second_length=1.2, latent_window_size=3, steps=2, height=48, width=80)
        job = other.submit(settings, IMAGE)
        for event in job.events():
            if isinstance(event, SectionDone):
                job.cancel()
        assert isinstance(event, Done) and event.stopped
        events = list(worker.submit_resume(job.id).events())
        assert Status("Loading the models this job was made with") in events and isinstance(events[-1], Done)
        assert worker.runners[0].keeper.models.sources["transformer"].startswith(str(elsewhere.resolve()))
        events = list(worker.submit(settings, IMAGE).events())
        assert Status("Loading models again") in events and isinstance(events[-1], Done)
        assert worker.runners[0].keeper.models.sources["transformer"].startswith(str(TINY_MODELS.resolve()))
    finally:
        worker.close()
        other.close()
