"""Branching a job from a section: the kept sections stay bit for bit, the rest follows the new settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from helpers import IMAGE, REPO, TINY_MODELS, needs_shared
from safetensors.torch import load_file

from framepack.engine import branch_job, generate
from framepack.events import Done, Error, SectionDone
from framepack.jobs.paths import JobLock, JobPaths
from framepack.media.reading import read_frames
from framepack.settings import Settings

pytestmark = needs_shared
# Five sections of three latent frames (0.4 s each).
JOB = dict(total_second_length=2.0, latent_window_size=3, steps=2, height=48, width=80, prompt="a girl dances", seed=4)


def sections_of(events) -> list[torch.Tensor]:
    assert isinstance(events[-1], Done), events[-1]
    return [e.latents for e in events if isinstance(e, SectionDone)]


@pytest.fixture(scope="module", params=["original", "f1"])
def source(request, tiny_models, tmp_path_factory):
    """A finished 5-section job of each variant, and its sections' latents in generation order."""
    variant = request.param
    folder = tmp_path_factory.mktemp(variant)
    settings = Settings(variant=variant, **JOB)
    sections = sections_of(list(generate(tiny_models(variant), settings, IMAGE, folder, job_id="source", previews=False)))
    return {"variant": variant, "folder": folder, "settings": settings, "sections": sections, "models": tiny_models(variant)}


def test_a_branch_with_the_same_settings_is_the_same_job(source):
    folder, models = source["folder"], source["models"]
    events = list(branch_job(models, folder / "source.mp4", 2, job_id="same", previews=False))
    assert [e.section for e in events if isinstance(e, SectionDone)] == [3, 4, 5]  # only the rest is made
    assert torch.equal(load_file(folder / "same.latents.safetensors")["latents"], load_file(folder / "source.latents.safetensors")["latents"])
    frames, expected = read_frames(folder / "same.mp4"), read_frames(folder / "source.mp4")
    assert frames.shape == expected.shape and np.abs(frames.astype(float) - expected).mean() < 1  # encoded again
    manifest = json.loads((folder / "same.json").read_text())
    assert manifest["origin"] == {"branched_from": {"job": "source", "sections": 2}} and manifest["state"] == "done"
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(("same", ".same"))) == [
        "same.json", "same.latents.safetensors", "same.mp4"
    ]  # fmt: skip


def test_a_new_seed_keeps_the_first_sections_and_changes_every_later_one(source):
    folder, models, kept = source["folder"], source["models"], 2
    events = list(branch_job(models, folder / "source.json", kept, {"seed": 99, "prompt": "a girl spins"}, job_id="seed",
                             previews=False))  # fmt: skip
    redone = sections_of(events)
    assert len(redone) == 3 and all(not torch.allclose(a, b, atol=1e-3) for a, b in zip(redone, source["sections"][kept:]))
    latents = load_file(folder / "seed.latents.safetensors")["latents"]
    original = load_file(folder / "source.latents.safetensors")["latents"]
    w = JOB["latent_window_size"]
    if source["variant"] == "f1":  # the kept sections are the video's beginning: their frames are the source's
        assert torch.equal(latents[:, :, : 1 + kept * w], original[:, :, : 1 + kept * w])
        frames, expected = read_frames(folder / "seed.mp4"), read_frames(folder / "source.mp4")
        shared = 4 * (kept * w + 1) - 3 - (4 * w - 3)  # up to the frames the first redone section blends into
        assert np.abs(frames[:shared].astype(float) - expected[:shared]).mean() < 1
    else:  # the original makes the end first: the kept sections are the video's end
        assert torch.equal(latents[:, :, -kept * w :], original[:, :, -kept * w :])
    manifest = json.loads((folder / "seed.json").read_text())
    assert manifest["settings"]["seed"] == 99 and manifest["settings"]["prompt"] == "a girl spins"
    assert json.loads((folder / "source.json").read_text())["settings"]["seed"] == 4  # the source is untouched


def test_geometry_and_impossible_branches_are_refused_with_a_reason(source):
    folder, models = source["folder"], source["models"]
    cases = [
        (2, {"latent_window_size": 5}, "a branch keeps the source's latent_window_size"),
        (2, {"height": 64, "width": 96}, "a branch keeps the source's height, width"),
        (2, {"variant": "f1" if source["variant"] == "original" else "original"}, "a branch keeps the source's variant"),
        (0, {}, "source has 5 finished section(s): keep 1 to 5"),
        (5, {}, "keeping 5 of 5 sections leaves nothing to redo"),
    ]
    if source["variant"] == "original":
        cases.append((2, {"total_second_length": 3.2}, "the original variant generates from the end backwards: a branch keeps its length"))
    for keep, changes, message in cases:
        last = list(branch_job(models, folder / "source.json", keep, changes, job_id="refused"))[-1]
        assert isinstance(last, Error) and message in last.message, (changes, last)
    assert not list(folder.glob("refused*")) and not (folder / ".refused.parts").exists()
    nothing = list(branch_job(models, folder / "nobody.json", 1))[-1]
    assert isinstance(nothing, Error) and "there is no job named nobody" in nothing.message


def test_an_f1_branch_may_run_longer(tiny_models, tmp_path):
    models = tiny_models("f1")
    settings = Settings(variant="f1", **JOB)
    made = sections_of(list(generate(models, settings, IMAGE, tmp_path, job_id="short", previews=False)))
    redone = sections_of(list(branch_job(models, tmp_path / "short.json", 3, {"total_second_length": 2.8}, job_id="longer",
                                         previews=False)))  # fmt: skip
    assert len(redone) == 4 and all(torch.equal(a, b) for a, b in zip(redone, made[3:]))  # same seed: the same sections
    assert json.loads((tmp_path / "longer.json").read_text())["sections"] == 7


def test_a_running_job_cannot_be_branched(source):
    folder, models = source["folder"], source["models"]
    lock = JobLock(JobPaths(folder, "source"))  # as the process running it holds
    assert lock.acquire()
    try:
        last = list(branch_job(models, folder / "source.json", 1, job_id="busy"))[-1]
    finally:
        lock.release()
    assert isinstance(last, Error) and "source is running: stop it or let it finish first" in last.message


@pytest.mark.slow
def test_branch_from_the_command_line(tiny_models, tmp_path):
    settings = Settings(variant="f1", **JOB)
    list(generate(tiny_models("f1"), settings, IMAGE, tmp_path, job_id="cli_source", previews=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "framepack", "branch", str(tmp_path / "cli_source.mp4"), "--keep-sections", "2",
               "--seed", "7", "--job-name", "cli_branch", "--models", str(TINY_MODELS), "--quiet"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Branched from cli_source: keeping its first 2 section(s)" in result.stderr
    assert json.loads((tmp_path / "cli_branch.json").read_text())["origin"]["branched_from"]["job"] == "cli_source"
    refused = subprocess.run([*command, "--resolution", "320"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "a branch keeps the source's resolution" in refused.stderr


def test_stopping_a_branch_leaves_it_resumable(source):
    from framepack.engine import resume_job

    folder, models = source["folder"], source["models"]
    stop = threading.Event()
    for event in branch_job(models, folder / "source.json", 1, {"seed": 12}, job_id="stopped", stop=stop, previews=False):
        if isinstance(event, SectionDone):
            stop.set()
    assert isinstance(event, Done) and event.stopped
    done = list(resume_job(models, folder / "stopped.json", previews=False))[-1]
    assert isinstance(done, Done) and not done.stopped
    whole = list(branch_job(models, folder / "source.json", 1, {"seed": 12}, job_id="whole", previews=False))[-1]
    assert torch.equal(load_file(done.latents_path)["latents"], load_file(whole.latents_path)["latents"])
    assert json.loads((folder / "stopped.json").read_text())["origin"]["branched_from"] == {"job": "source", "sections": 1}


def test_a_timed_prompt_job_branches_with_a_new_timed_prompt_and_its_own_prompt_unchanged(tiny_models, tmp_path):
    """A new prompt, plain or timed, replaces the source's timed prompts; the source's prompt as the page loads it
    (its text with the timed groups) counts as unchanged."""
    models = tiny_models("f1")
    timed = Settings(variant="f1", **{**JOB, "prompt": "a room. [0s: lights on] [0.8s: lights off]"})
    source = sections_of(list(generate(models, timed, IMAGE, tmp_path, job_id="timed", previews=False)))

    new = "a room. [0s: lights on] [0.8s: lights off] [1.2s: a cat walks in]"  # sections start every 0.4 s
    events = list(branch_job(models, tmp_path / "timed.mp4", 2, {"prompt": new}, job_id="cat", previews=False))
    assert isinstance(events[-1], Done), events[-1]
    settings = json.loads((tmp_path / "cat.json").read_text())["settings"]
    assert (settings["prompt"], settings["prompts"]) == ("a room.", [[0.0, "lights on"], [0.8, "lights off"], [1.2, "a cat walks in"]])
    made = sections_of(events)
    assert torch.equal(made[0], source[2])  # the section from 0.8 s has the same prompt: the same section
    assert not torch.equal(made[1], source[3]) and not torch.equal(made[2], source[4])  # from 1.2 s the cat

    same = list(branch_job(models, tmp_path / "timed.json", 2, {"prompt": timed.prompt_text}, job_id="same", previews=False))
    assert [torch.equal(a, b) for a, b in zip(sections_of(same), source[2:])] == [True, True, True]


def test_a_renamed_timed_prompt_video_branches_and_grows_from_the_command_line(tiny_models, tmp_path):
    """The command line finds a job by what its video says, not by the file's name: a renamed copy branches with a new
    timed prompt (which replaces the job's, with no "not both" refusal) and is made longer as a new video."""
    import shutil

    timed = Settings(variant="f1", **{**JOB, "total_second_length": 1.2, "prompt": "a room. [0s: lights on] [0.4s: lights off]"})
    list(generate(tiny_models("f1"), timed, IMAGE, tmp_path, job_id="room", previews=False))
    renamed = shutil.copy(tmp_path / "room.mp4", tmp_path / "my favourite.mp4")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    common = ["--models", str(TINY_MODELS), "--quiet"]
    branch = [sys.executable, "-m", "framepack", "branch", str(renamed), "--keep-sections", "1", "--job-name", "cat",
              "--prompt", "a room. [0s: lights on] [0.8s: a cat walks in]", *common]  # fmt: skip
    result = subprocess.run(branch, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "cat.json").read_text())
    assert record["origin"]["branched_from"] == {"job": "room", "sections": 1}
    assert (record["settings"]["prompt"], record["settings"]["prompts"]) == ("a room.", [[0.0, "lights on"], [0.8, "a cat walks in"]])

    longer = [sys.executable, "-m", "framepack", "resume", str(renamed), "--add-seconds", "0.4", "--job-name", "longer", *common]
    result = subprocess.run(longer, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "longer.json").read_text())["origin"] == {"lengthened_from": {"job": "room", "seconds": 0.4}}
    assert len(read_frames(tmp_path / "longer.mp4")) > len(read_frames(tmp_path / "room.mp4")) == timed.num_frames  # both stay
