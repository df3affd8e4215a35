"""Post-processing as jobs: after a job from the command line, a batch file and the API, as a job of its own whose
result the finished job's record lists, with the job's own files untouched; bad choices refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from helpers import (
    IMAGE,
    TINY_MODELS,
    decoded,
    make_clip,
    needs_shared,
    run_cli,
    running_app,
)
from real_weights import rife_dir

from framepack.media.reading import probe
from framepack.queue.store import SqliteJobStore

pytestmark = needs_shared
SMALL = ["--seconds", "0.8", "--latent-window-size", "3", "--steps", "2", "--height", "48", "--width", "80"]


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory) -> Path:
    """A hub cache holding the known RIFE model as a first use would have downloaded it (no network here)."""
    cache = tmp_path_factory.mktemp("hf_download")
    (cache / "postprocess").mkdir()
    shutil.copyfile(rife_dir() / "train_log" / "flownet.pkl", cache / "postprocess" / "RIFE-HDv3-flownet.pkl")
    return cache


def derived_of(record: Path) -> list[dict]:
    return json.loads(record.read_text())["derived"]


@pytest.mark.slow
def test_generate_then_its_postprocessing_as_a_job_of_its_own(tmp_path, hf_cache):
    out = tmp_path / "out"
    ran = run_cli("generate", "--image", str(IMAGE), "--prompt", "a cat", *SMALL, "--models", str(TINY_MODELS),
                  "--output-dir", str(out), "--job-name", "cat", "--interpolate", "2", "--color-match", "start",
                  "--hf-cache", str(hf_cache), "--quiet")  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    made, video = out / "cat.60fps-colour.mp4", probe(out / "cat.mp4")
    assert ran.stdout.strip().endswith(f"video: {made}")
    result = probe(made)
    assert (result.frames, result.fps) == (2 * video.frames, 2 * video.fps)
    [entry] = derived_of(out / "cat.json")
    assert entry["file"] == made.name and entry["settings"]["interpolate"] == 2 and len(entry["sha256"]) == 64
    # The job's own video is the one it made: resume, extend and branch keep working on it.
    assert probe(out / "cat.mp4").frames == video.frames and json.loads((out / "cat.json").read_text())["state"] == "done"
    refused = run_cli("generate", "--image", str(IMAGE), *SMALL, "--models", str(TINY_MODELS), "--output-dir",
                      str(out), "--interpolate", "3")  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.strip() == "error: interpolation x3 is not supported (x2 or x4, or 1 for none)"


@pytest.mark.slow
def test_a_batch_line_asks_for_post_processing(tmp_path, hf_cache):
    out, folder = tmp_path / "out", tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(IMAGE, folder / "start.png")
    shutil.copyfile(hf_cache / "postprocess" / "RIFE-HDv3-flownet.pkl", folder / "rife.pkl")
    lines = [{"image": "start.png", "prompt": "-a dash first", "interpolate": 2, "interpolation_model": "rife.pkl"},
             {"image": "start.png", "prompt": "plain", "format": "webm"}]  # fmt: skip
    batch = folder / "jobs.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    ran = run_cli("batch", str(batch), "--output-dir", str(out), "--models", str(TINY_MODELS), *SMALL, timeout=600)
    assert ran.returncode == 0, ran.stderr
    jobs = SqliteJobStore.in_folder(out).list()
    assert sorted(job.spec.kind for job in jobs) == ["generate", "generate", "postprocess", "postprocess"]
    assert {job.state for job in jobs} == {"done"}
    generated = {job.spec.settings["prompt"]: job for job in jobs if job.spec.kind == "generate"}
    assert set(generated) == {"-a dash first", "plain"}  # a prompt may begin with "-"
    dashed = derived_of(out / f"{generated['-a dash first'].id}.json")
    assert [entry["file"] for entry in dashed] == [f"{generated['-a dash first'].id}.60fps.mp4"]
    plain = derived_of(out / f"{generated['plain'].id}.json")
    assert [entry["file"] for entry in plain] == [f"{generated['plain'].id}.webm"]
    assert probe(out / plain[0]["file"]).codec == "vp9"

    bad = folder / "bad.jsonl"
    bad.write_text(json.dumps({"image": "start.png", "format": "tiff"}) + "\n")
    refused = run_cli("batch", str(bad), "--output-dir", str(out), "--models", str(TINY_MODELS))
    assert refused.returncode == 2 and "bad.jsonl:1: unknown format 'tiff'" in refused.stderr


def test_postprocess_through_the_api_a_job_and_an_upload(tmp_path, hf_cache):
    with running_app(tmp_path / "out", "--hf-cache", str(hf_cache)) as app:
        client = Client(app.url, verbose=False)
        job = client.submit(handle_file(str(IMAGE)), prompt="a cat", total_second_length=0.8, latent_window_size=3,
                            steps=2, resolution=128, api_name="/generate")  # fmt: skip
        job.result()
        name = job.outputs()[-1][4].split("`")[1].removesuffix(".mp4")
        made = client.submit(job=name, interpolate=2, color_match="start", format="webm", api_name="/postprocess")
        made.result()
        progress, message, video, file = made.outputs()[-1]
        assert message.startswith("Finished: 50 frames") and f"`{name}.60fps-colour.webm`" in message
        assert Path(video).suffix == ".webm" and len(decoded(Path(video))[0]) == 50
        assert [entry["file"] for entry in derived_of(app.outputs / f"{name}.json")] == [f"{name}.60fps-colour.webm"]

        clip = make_clip(tmp_path / "clip.mp4", 12, 30, (64, 48))
        upload = client.submit(handle_file(str(clip)), format="gif", api_name="/postprocess")
        upload.result()
        progress, message, video, file = upload.outputs()[-1]
        assert message.startswith("Finished: 12 frames") and Path(file).suffix == ".gif" and video is None

        for values, expected in (
            ({"job": name, "interpolate": 3}, "interpolation x3 is not supported"),
            ({"job": name, "format": "tiff"}, "unknown format 'tiff'"),
            ({"job": name, "upscale": str(hf_cache / "postprocess" / "RIFE-HDv3-flownet.pkl")}, "unknown upscaler"),
            ({"job": "someone_elses"}, "you have no job named 'someone_elses'"),
        ):
            refused = client.submit(**values, api_name="/postprocess")
            refused.result()
            assert expected in refused.outputs()[-1][1], (values, refused.outputs()[-1][1])
        fresh = Client(app.url, verbose=False).submit(api_name="/postprocess")  # a session that made nothing
        fresh.result()
        assert "nothing to post-process: make a video first, or upload one" in fresh.outputs()[-1][1]
        not_video = tmp_path / "notes.mp4"
        not_video.write_text("not a video")
        refused = client.submit(handle_file(str(not_video)), api_name="/postprocess")
        refused.result()
        assert "notes.mp4 is not a video this app can read" in refused.outputs()[-1][1]
