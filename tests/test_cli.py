"""`python -m framepack generate` end to end on the tiny models."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from helpers import CASES, CONTROL_CASES, TINY_MODELS, needs_shared, run_cli
from safetensors.torch import load_file

from framepack.media.reading import probe

pytestmark = needs_shared


def test_generate_writes_video_and_latents(tmp_path):
    result = run_cli(
        "generate", "--models", str(TINY_MODELS), "--variant", "f1", "--image", str(CASES / "v1_original" / "input.png"),
        "--prompt", "The girl dances gracefully, with clear movements, full of charm.", "--negative-prompt", "static",
        "--seed", "5", "--seconds", "2.4", "--latent-window-size", "5", "--steps", "3", "--cfg", "1.5",
        "--distilled-cfg", "8", "--cfg-rescale", "0.3", "--no-teacache", "--height", "64", "--width", "96",
        "--dtype", "float32", "--crf", "20", "--output-dir", str(tmp_path), "--job-name", "clip",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    video, latents = tmp_path / "clip.mp4", tmp_path / "clip.latents.safetensors"
    assert f"video: {video}" in result.stdout and f"latents: {latents}" in result.stdout
    sections = round(2.4 * 30 / 20)  # 4 sections of 5 latent frames
    info = probe(video)
    assert (info.frames, info.fps, info.codec, info.pix_fmt) == (4 * (sections * 5 + 1) - 3, 30.0, "h264", "yuv420p")
    tensor = load_file(latents)["latents"]
    assert tensor.shape == (1, 16, sections * 5 + 1, 8, 12) and tensor.dtype == torch.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.json", "clip.latents.safetensors", "clip.mp4"]


@pytest.mark.slow
def test_bad_settings_are_reported_without_traceback(tmp_path):
    image = str(CASES / "v1_original" / "input.png")
    result = run_cli("generate", "--models", str(TINY_MODELS), "--image", image, "--steps", "0")
    assert result.returncode == 2
    assert "error: steps: must be between 1 and 100, got 0" in result.stderr
    assert "Traceback" not in result.stderr

    result = run_cli("generate", "--models", str(TINY_MODELS), "--image", str(tmp_path / "nope.png"))
    assert result.returncode == 2 and "image file not found" in result.stderr

    not_image = tmp_path / "text.png"
    not_image.write_text("hello")
    result = run_cli("generate", "--models", str(TINY_MODELS), "--image", str(not_image), "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 2 and "cannot read text.png as an image" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_weights_message(tmp_path):
    image = str(CASES / "v1_original" / "input.png")
    result = run_cli("generate", "--models", str(tmp_path), "--image", image)
    assert result.returncode == 1
    assert "Model files not found" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_check_memory_command():
    fits = run_cli("check-memory", "--vram", "8", "--ram", "64", "--resolution", "640")
    assert fits.returncode == 0, fits.stderr
    last = fits.stdout.strip().splitlines()[-1]
    assert last.startswith("peak GPU ") and last.endswith(" GB: fits")
    assert "Mode: low" in fits.stdout and "streamed block by block" in fits.stdout

    high = run_cli("check-memory", "--vram", "80", "--ram", "128")
    assert high.returncode == 0 and "Mode: high" in high.stdout

    too_small = run_cli("check-memory", "--vram", "3", "--ram", "64")
    assert too_small.returncode == 1
    assert too_small.stdout.strip().splitlines()[-1].endswith(": does not fit")
    assert "--fp8" in too_small.stdout and "--resolution" in too_small.stdout


def test_fp8_weights_run_end_to_end(tmp_path):
    result = run_cli(
        "generate", "--models", str(TINY_MODELS), "--image", str(CASES / "v1_original" / "input.png"), "--seconds", "1.2",
        "--resolution", "128", "--steps", "2", "--dtype", "bfloat16", "--fp8", "--output-dir", str(tmp_path),
        "--job-name", "fp8", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert probe(tmp_path / "fp8.mp4").frames == 37


def test_section_controls_from_the_command_line(tmp_path):
    c1, c2 = CONTROL_CASES / "c1_original_end", CONTROL_CASES / "c2_original_timed"
    prompt = "A cat sits. [0s: The cat looks out of the window.] [1.4s: The cat jumps down and walks away.]"
    result = run_cli(
        "generate", "--models", str(TINY_MODELS), "--image", str(c2 / "input.png"), "--end-image", str(c1 / "end.png"),
        "--end-strength", "0.5", "--keyframe", f"2.0:{c2 / 'keyframe_0.png'}", "--prompt", prompt, "--seconds", "2.6",
        "--latent-window-size", "5", "--steps", "2", "--height", "64", "--width", "96", "--output-dir", str(tmp_path),
        "--job-name", "ctl", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Where each control lands, in time order.
    assert '0.00–0.67 s (generated 4th): "The cat looks out of the window." · start image' in result.stderr
    assert '2.00–2.67 s (generated 1st): "The cat jumps down and walks away." · keyframe 1 · then the end frame' in result.stderr
    manifest = json.loads((tmp_path / "ctl.json").read_text())
    assert manifest["settings"]["prompt"] == "A cat sits."
    assert manifest["settings"]["prompts"] == [[0.0, "The cat looks out of the window."], [1.4, "The cat jumps down and walks away."]]
    assert manifest["settings"]["end_strength"] == 0.5
    sha = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in (("end", c1 / "end.png"), ("key", c2 / "keyframe_0.png"))}
    assert manifest["inputs"]["end_image"] == {"name": "end.png", "sha256": sha["end"]}
    assert manifest["inputs"]["keyframes"] == [{"seconds": 2.0, "name": "keyframe_0.png", "sha256": sha["key"]}]
    assert [row["start_slot"] for row in manifest["schedule"]] == ["start image"] * 3 + ["keyframe 1"]
    assert json.loads(probe(tmp_path / "ctl.mp4").metadata["comment"])["inputs"] == manifest["inputs"]
    assert probe(tmp_path / "ctl.mp4").frames == 81


def test_text_to_video_starts_from_a_blank_frame(tmp_path):
    result = run_cli(
        "generate", "--models", str(TINY_MODELS), "--blank-start", "noise", "--prompt", "fireworks", "--seconds", "1.2",
        "--steps", "1", "--height", "64", "--width", "96", "--output-dir", str(tmp_path), "--job-name", "t2v", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "No start image: starting from a noise frame" in result.stderr
    assert json.loads((tmp_path / "t2v.json").read_text())["inputs"]["image"] == {"blank": "noise"}
    assert probe(tmp_path / "t2v.mp4").frames == 37


def test_bad_controls_get_one_line_before_anything_loads(tmp_path, capsys):
    from framepack.cli import main

    c2 = CONTROL_CASES / "c2_original_timed"
    start, key = str(c2 / "input.png"), str(c2 / "keyframe_0.png")
    cases = [
        (["--prompt", "a [2x: b]"], "malformed timed prompt near '[2x: b]'"),
        (["--prompt", "a [1s: b] [1s: c]"], "two timed prompts at 1 s"),
        (["--variant", "f1", "--end-image", key], "no slot for an end frame"),
        (["--keyframe", f"0:{key}"], "a keyframe at 0 s would replace the start image"),
        (["--keyframe", f"9:{key}"], "9 s governs no section: the last section starts at 2.4 s"),
        (["--keyframe", f"1:{key}", "--keyframe", f"1.0:{key}"], "two keyframes at 1 s"),
        (["--keyframe", "soon:x.png"], "'soon:x.png' is not SECONDS:PATH"),
        (["--end-image", str(tmp_path / "missing.png")], "image file not found: missing.png"),
    ]
    for args, message in cases:
        # A models folder that does not exist: the error must come before any loading.
        try:
            code = main(["generate", "--models", str(tmp_path / "none"), "--image", start, "--seconds", "4", *args])
        except SystemExit as exit:  # argparse's own errors
            code = exit.code
        stderr = capsys.readouterr().err
        assert code == 2 and message in stderr and "Traceback" not in stderr, (args, stderr)


@pytest.mark.slow
def test_the_app_commands_hand_their_options_to_the_page():
    """`framepack app --help` is the page's help (the options of demo_gradio.py); other commands still refuse what
    they do not know."""
    for command in ("app", "app-f1"):
        shown = run_cli(command, "--help", timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert "--port" in shown.stdout and "--share" in shown.stdout and "--inbrowser" in shown.stdout
    refused = run_cli("check-memory", "--no-such-option", timeout=120)
    assert refused.returncode == 2 and "unrecognized arguments: --no-such-option" in refused.stderr
