"""The desktop app through its API (gradio_client) against the running app on the tiny models."""

import concurrent.futures
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from helpers import IMAGE, REPO, TINY_MODELS, free_port, needs_shared
from PIL import Image

from framepack.app import start as ui
from framepack.app.service import AppService
from framepack.app.views import event_updates
from framepack.app.wiring import Handlers
from framepack.media.images import nearest_bucket
from framepack.media.reading import probe
from framepack.settings import Settings

pytestmark = needs_shared

# Small, fast jobs: a 3-latent window makes 12 frames a section (13, 25, 37, ... frames in all).
FAST = {"resolution": 128, "steps": 3, "latent_window_size": 3}
PARAMETERS = [
    "input_image", "prompt", "negative_prompt", "seed", "total_second_length", "resolution", "latent_window_size",
    "steps", "cfg", "distilled_cfg", "cfg_rescale", "gpu_memory_preservation", "use_teacache", "mp4_crf", "end_image",
    "end_strength", "keyframes", "keyframe_times", "blank_start", "prompt_blend_sections", "loras", "lora_weights",
]  # fmt: skip
CONTROLS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tiny-framepack" / "cases-controls"
PREVIEW, PROGRESS, INFO, VIDEO, MESSAGE = range(5)


def frames_of(**settings) -> int:
    return Settings(**{**FAST, **settings}).num_frames


def stopped_frames(**settings) -> set[int]:
    """Frame counts of a job stopped after 1 .. n-1 of its n sections (the start frame comes with the last)."""
    plan = Settings(**{**FAST, **settings})
    return {4 * done * plan.latent_window_size - 3 for done in range(1, plan.num_sections)}


def submit(client: Client, image: Path | None = IMAGE, **params):
    return client.submit(handle_file(str(image)) if image else None, api_name="/generate", **params)


def run(client: Client, image: Path | None = IMAGE, **params) -> list[tuple]:
    """Every update the job streamed, in order (the last one is the final state of the page)."""
    job = submit(client, image, **params)
    job.result()
    return job.outputs()


def texts(updates: list[tuple], index: int) -> list[str]:
    return [u[index] for u in updates if isinstance(u[index], str)]


def saved_video(message: str, outputs: Path) -> Path:
    """The video in the outputs folder that the final message names (by its name only: no server paths)."""
    match = re.search(r"saved as `([^`/\\]+\.mp4)` in the outputs folder", message)
    assert match, message
    return outputs / match.group(1)


@pytest.fixture
def client(app_server) -> Client:  # noqa: F811
    return Client(app_server.url, verbose=False)


def test_view_api_lists_named_parameters_with_page_defaults(client: Client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    params = endpoints["/generate"]["parameters"]
    assert [p["parameter_name"] for p in params] == PARAMETERS
    defaults = {p["parameter_name"]: p["parameter_default"] for p in params}
    assert all(p["parameter_has_default"] for p in params)
    expected = Settings()
    assert defaults == {
        "input_image": None, "prompt": expected.prompt, "negative_prompt": expected.negative_prompt, "seed": 31337,
        "total_second_length": 5, "resolution": 640, "latent_window_size": 9, "steps": 25, "cfg": 1, "distilled_cfg": 10,
        "cfg_rescale": 0, "gpu_memory_preservation": 6, "use_teacache": True, "mp4_crf": 16, "end_image": None,
        "end_strength": 1, "keyframes": None, "keyframe_times": "", "blank_start": "grey", "prompt_blend_sections": 0,
        "loras": [], "lora_weights": "",
    }  # fmt: skip
    assert "/stop" in endpoints and endpoints["/stop"]["parameters"] == []
    assert sorted(endpoints) == ["/branch", "/extend", "/generate", "/jobs", "/postprocess", "/queue_add", "/queue_cancel", "/queue_list",
                                 "/queue_retry", "/resume", "/stop"]  # fmt: skip
    assert endpoints["/queue_add"]["parameters"] == params  # the same job as /generate, queued without streaming
    extend = [p["parameter_name"] for p in endpoints["/extend"]["parameters"]]
    assert extend == ["video", *[name for name in PARAMETERS[1:] if name != "blank_start"]]


def test_job_streams_previews_progress_and_a_growing_video(client: Client, app_server):  # noqa: F811
    updates = run(client, prompt="a girl dances", seed=7, total_second_length=0.8, **FAST)

    # Latent previews: the window's 3 latent frames side by side at 1/8 of the video size.
    previews = texts(updates, PREVIEW)
    assert len(previews) == 2 * FAST["steps"]
    height, width = nearest_bucket(*Image.open(IMAGE).size[::-1], FAST["resolution"])
    assert Image.open(previews[0]).size == (3 * width // 8, height // 8)

    progress = texts(updates, PROGRESS)
    # Sections count in generation order (the original makes the end first) and name their time range.
    assert any("Section 1 of 2 (0.40–0.80 s) · step 1 of 3" in p for p in progress)
    assert any("Section 2 of 2 (0.00–0.40 s) · step 3 of 3" in p for p in progress)
    widths = [float(w) for p in progress for w in re.findall(r"width: ([\d.]+)%", p)]
    assert widths[-1] == 100.0 and max(widths[:-1]) <= 100.0

    # The video grows after each section and ends with the expected frame count.
    videos = texts(updates, VIDEO)
    assert [probe(v).frames for v in videos[:2]] == [9, 25]
    final = updates[-1]
    assert probe(final[VIDEO]).frames == frames_of(total_second_length=0.8) == 25
    assert "Frames so far: 25" in final[INFO]
    assert final[MESSAGE].startswith("Finished")

    # The outputs folder holds the video and its latents, and no intermediate copies.
    video = saved_video(final[MESSAGE], app_server.outputs)
    assert probe(video).frames == 25
    # The page got its own copy, not a path into the outputs folder.
    assert Path(final[VIDEO]).name == video.name and app_server.outputs not in Path(final[VIDEO]).parents
    job_files = sorted(p.name for p in app_server.outputs.iterdir() if video.stem.split(".")[0] in p.name)
    assert job_files == [f"{video.stem}.json", f"{video.stem}.latents.safetensors", video.name]


def test_stop_mid_job_leaves_a_playable_video(client: Client, app_server):  # noqa: F811
    job = submit(client, prompt="a cat walks", seed=3, total_second_length=2.0, **FAST)  # 5 sections
    stop_sent = False
    for update in job:
        if not stop_sent and isinstance(update[VIDEO], str):  # the first section is finished
            client.predict(api_name="/stop")
            stop_sent = True
    final = job.outputs()[-1]
    assert stop_sent and final[MESSAGE].startswith("Stopped after"), final[MESSAGE]
    frames = probe(final[VIDEO]).frames
    assert frames in stopped_frames(total_second_length=2.0)
    assert probe(saved_video(final[MESSAGE], app_server.outputs)).frames == frames
    assert f"Frames so far: {frames}" in final[INFO]


def test_a_stopped_job_resumes_from_the_page(client: Client, app_server):  # noqa: F811
    job = submit(client, prompt="a dog runs", seed=4, total_second_length=2.0, **FAST)  # 5 sections
    for update in job:
        if isinstance(update[VIDEO], str):
            client.predict(api_name="/stop")
            break
    job.result()
    stopped = saved_video(job.outputs()[-1][MESSAGE], app_server.outputs)
    assert probe(stopped).frames in stopped_frames(total_second_length=2.0)

    resumed = client.submit(handle_file(str(stopped)), api_name="/resume")
    resumed.result()
    final = resumed.outputs()[-1]
    assert final[MESSAGE].startswith("Finished"), final[MESSAGE]
    assert saved_video(final[MESSAGE], app_server.outputs) == stopped
    assert probe(stopped).frames == frames_of(total_second_length=2.0)

    nothing = client.submit(handle_file(str(stopped.with_suffix(".json"))), api_name="/resume")
    nothing.result()
    assert "nothing to resume" in nothing.outputs()[-1][MESSAGE]

    # Keep its first section, redo the rest with another seed: a new job, the source untouched.
    branched = client.submit(handle_file(str(stopped)), keep_sections=1, seed=77, api_name="/branch")
    branched.result()
    final = branched.outputs()[-1]
    assert final[MESSAGE].startswith("Finished"), final[MESSAGE]
    branch_video = saved_video(final[MESSAGE], app_server.outputs)
    assert branch_video != stopped and probe(branch_video).frames == frames_of(total_second_length=2.0)
    record = json.loads(branch_video.with_suffix(".json").read_text())
    assert record["origin"] == {"branched_from": {"job": stopped.stem, "sections": 1}} and record["settings"]["seed"] == 77
    refused = client.submit(handle_file(str(stopped)), keep_sections=2.5, api_name="/branch")
    refused.result()
    assert "keep_sections: give a whole number of sections" in refused.outputs()[-1][MESSAGE]

    # This app runs the original variant, whose length is fixed; the reason is shown.
    refused = client.submit(handle_file(str(stopped)), add_seconds=2, api_name="/resume")
    refused.result()
    assert "only F1 videos can be made longer" in refused.outputs()[-1][MESSAGE]


def test_stop_from_another_session_does_not_touch_this_job(app_server):  # noqa: F811
    owner, other = Client(app_server.url, verbose=False), Client(app_server.url, verbose=False)
    job = submit(owner, prompt="waves", seed=5, total_second_length=1.2, **FAST)
    next(iter(job))  # the job has started
    other.predict(api_name="/stop")
    job.result()
    final = job.outputs()[-1]
    assert final[MESSAGE].startswith("Finished") and probe(final[VIDEO]).frames == frames_of(total_second_length=1.2) == 37


def test_two_concurrent_clients_get_their_own_results(app_server):  # noqa: F811
    first, second = Client(app_server.url, verbose=False), Client(app_server.url, verbose=False)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        one = pool.submit(run, first, prompt="a dog runs", seed=1, total_second_length=0.4, **FAST)
        two = pool.submit(run, second, prompt="a bird flies", seed=2, total_second_length=0.8, **FAST)
        streams = one.result(), two.result()

    names = []
    for updates, frames in zip(streams, (13, 25)):
        final = updates[-1]
        assert final[MESSAGE].startswith("Finished") and probe(final[VIDEO]).frames == frames
        # Every video this client saw is its own job's (one file name), never the other's.
        own = {Path(v).name for v in texts(updates, VIDEO)}
        assert own == {saved_video(final[MESSAGE], app_server.outputs).name}
        names.append(own)
    assert names[0] != names[1]
    # One GPU: one of the jobs waited for the other, and its page said so.
    assert any("Waiting for the GPU" in m for updates in streams for m in texts(updates, MESSAGE))


def test_user_errors_show_on_the_page_and_the_app_keeps_working(client: Client, tmp_path: Path):
    not_an_image = tmp_path / "holiday.png"
    not_an_image.write_text("this is not a picture")
    cases = [
        ({"image": not_an_image}, "cannot read holiday.png as an image"),
        ({"total_second_length": 500}, "total_second_length: must be between 0.1 and 120"),
        ({"seed": -1}, "seed: must be between 0"),
        ({"steps": 2.5}, "steps: must be a whole number"),
    ]
    for params, expected in cases:
        final = run(client, **{**FAST, **params})[-1]
        assert final[MESSAGE].startswith("**Error:**") and expected in final[MESSAGE], final[MESSAGE]
        assert "Not started" in final[PROGRESS]

    final = run(client, prompt="after the errors", total_second_length=0.4, **FAST)[-1]
    assert final[MESSAGE].startswith("Finished") and probe(final[VIDEO]).frames == 13


def test_a_cancelled_api_call_leaves_its_job_running_and_stop_ends_it(app_server):  # noqa: F811
    """Closing the stream (a closed tab, a cancelled call: anyone with the session's id could) does not stop a job;
    /stop from the session that started it does."""
    client, other = Client(app_server.url, verbose=False), Client(app_server.url, verbose=False)
    left = submit(client, prompt="a horse", seed=9, total_second_length=1.2, **FAST)  # 3 sections
    first_video = next(u[VIDEO] for u in left if isinstance(u[VIDEO], str))
    left.cancel()
    # The worker runs one job at a time, so when the next job is done the left one has ended.
    assert run(other, total_second_length=0.4, **FAST)[-1][MESSAGE].startswith("Finished")
    assert probe(app_server.outputs / Path(first_video).name).frames == 4 * (3 * 3 + 1) - 3  # all of it

    stopped = submit(client, prompt="a horse", seed=10, total_second_length=2.0, **FAST)  # 5 sections
    first_video = next(u[VIDEO] for u in stopped if isinstance(u[VIDEO], str))
    other.predict(api_name="/stop")  # another session's stop: not its job
    client.predict(api_name="/stop")
    stopped.result()
    assert "Stopped" in stopped.outputs()[-1][MESSAGE], stopped.outputs()[-1][MESSAGE]
    video = app_server.outputs / Path(first_video).name
    assert (app_server.outputs / f"{video.stem}.latents.safetensors").is_file()
    assert probe(video).frames in stopped_frames(total_second_length=2.0)


def test_share_without_credentials_warns_and_auth_is_parsed(tmp_path: Path, capsys: pytest.CaptureFixture):
    auth_file = tmp_path / "logins.txt"
    auth_file.write_text("# team\nana:secret1\n\nbo:pa:ss\n")
    out = ["--outputs", str(tmp_path / "out"), "--models", str(TINY_MODELS)]
    args = ui.parse_args(["--share", *out, "--auth", "me:pw", "--auth-file", str(auth_file)])
    assert args.credentials == [("me", "pw"), ("ana", "secret1"), ("bo", "pa:ss")]
    protected = ui.create_app("original", args)
    protected.front.close()
    assert protected.launch_kwargs["auth"] == args.credentials
    assert "anyone with the link" not in capsys.readouterr().err

    open_app = ui.create_app("f1", ui.parse_args(["--share", *out]))
    open_app.front.close()
    assert "anyone with the link can use" in capsys.readouterr().err
    # The outputs folder is never served as it is; uploads have a size limit.
    assert open_app.launch_kwargs["blocked_paths"] == [str((tmp_path / "out").resolve())]
    assert "allowed_paths" not in open_app.launch_kwargs
    assert open_app.launch_kwargs["max_file_size"] == 500 * 1024 * 1024

    network = ui.create_app("original", ui.parse_args(["--server", "0.0.0.0", *out]))
    network.front.close()
    assert "--server 0.0.0.0 without --auth" in capsys.readouterr().err
    local = ui.create_app("original", ui.parse_args(["--server", "127.0.0.1", *out]))
    local.front.close()
    assert "WARNING" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ui.parse_args(["--auth", "nopassword"])


@pytest.mark.slow
def test_f1_entry_point_serves_a_protected_page(tmp_path: Path):
    port = free_port()
    command = [sys.executable, "demo_gradio_f1.py", "--models", str(TINY_MODELS), "--outputs", str(tmp_path / "out"),
               "--port", str(port), "--auth", "tester:secret"]  # fmt: skip
    log = (tmp_path / "app.log").open("w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        url = None
        for line in proc.stdout:  # blocks until the server reports its address (or the process exits)
            if match := re.search(r"Running on local URL:\s+(\S+)", line):
                url = match.group(1).rstrip("/")
                break
        assert url == f"http://127.0.0.1:{port}", (tmp_path / "app.log").read_text()
        assert httpx.get(f"{url}/config").status_code == 401
        client = Client(url, auth=("tester", "secret"), verbose=False)
        assert client.config["title"] == "FramePack-F1"
        final = run(client, prompt="a robot waves", total_second_length=0.4, **FAST)[-1]
        assert final[MESSAGE].startswith("Finished") and probe(final[VIDEO]).frames == 13
        video = saved_video(final[MESSAGE], tmp_path / "out")
        # Seconds added to a finished F1 video make a new, longer video; the shorter one stays.
        extended = client.submit(handle_file(str(video)), add_seconds=0.4, api_name="/resume")
        extended.result()
        last = extended.outputs()[-1]
        assert last[MESSAGE].startswith("Finished"), last[MESSAGE]
        longer = saved_video(last[MESSAGE], tmp_path / "out")
        assert longer != video and probe(longer).frames == 25 and probe(video).frames == 13
        # F1 generates forwards: an end frame is refused, not ignored.
        end = handle_file(str(CONTROLS / "c1_original_end" / "end.png"))
        refused = run(client, prompt="a robot waves", total_second_length=0.4, end_image=end, **FAST)[-1]
        assert "F1 generates forwards and has no slot for an end frame" in refused[MESSAGE]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_worker_queues_jobs_reports_positions_and_cancels_a_waiting_job(tmp_path: Path):
    from framepack.events import Done, Error, Status
    from framepack.media.images import load_image
    from framepack.models import ModelSource
    from framepack.queue.front import QueueFront, Waiting

    worker = QueueFront("original", ModelSource(models_dir=TINY_MODELS), tmp_path)
    try:
        image = load_image(IMAGE)
        running = worker.submit(Settings(**FAST, total_second_length=0.4), image, session="tab-1")
        first = running.events()
        assert next(first) == Status("Loading models (first job only)")  # it runs: the worker took it
        waiting = worker.submit(Settings(**FAST, total_second_length=0.4), image, session="tab-2")
        events = waiting.events()
        assert next(events) == Waiting(1)
        waiting.cancel()
        rest = list(events)  # ends at once, while the first job still runs
        assert len(rest) == 1 and isinstance(rest[0], Done) and rest[0].stopped and rest[0].video_path is None
        first = list(first)
        assert isinstance(first[-1], Done) and first[-1].frames == 13 and not first[-1].stopped
        assert not any(isinstance(e, (Waiting, Error)) for e in first)
    finally:
        worker.close()


def test_missing_models_give_a_clear_message(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from framepack.events import Error
    from framepack.media.images import load_image
    from framepack.models import ModelSource
    from framepack.queue.front import QueueFront

    worker = QueueFront("f1", ModelSource(models_dir=tmp_path / "empty"), tmp_path / "out")
    try:
        *_, last = worker.submit(Settings(variant="f1", **FAST), load_image(IMAGE)).events()
    finally:
        worker.close()
    # The page says what is wrong without the server's folders; the log, for whoever runs the app, says which.
    assert isinstance(last, Error) and "model files are missing" in last.message and str(tmp_path) not in last.message
    assert "Model files not found" in caplog.text and str(tmp_path / "empty") in caplog.text
    assert event_updates(last)[MESSAGE] == f"**Error:** {last.message}"


def test_section_controls_through_the_api(client: Client, app_server):  # noqa: F811
    end, keyframe = CONTROLS / "c1_original_end" / "end.png", CONTROLS / "c2_original_timed" / "keyframe_0.png"
    job = submit(
        client, prompt="a cat sits [0s: it looks around] [0.5s: it jumps]", total_second_length=1.2, end_image=handle_file(str(end)),
        end_strength=0.5, keyframes=[handle_file(str(keyframe))], keyframe_times="0.8", prompt_blend_sections=1, **FAST,
    )  # fmt: skip
    job.result()
    updates = job.outputs()
    final = updates[-1]
    assert final[MESSAGE].startswith("Finished"), final[MESSAGE]
    # The progress line names each section's time range; the original variant makes the end first.
    assert any("Section 1 of 3 (0.80–1.20 s)" in p for p in texts(updates, PROGRESS))
    assert any('0.80–1.20 s (generated 1st): "it jumps" · keyframe 1 · then the end frame' in m for m in texts(updates, MESSAGE))
    manifest = json.loads(saved_video(final[MESSAGE], app_server.outputs).with_suffix(".json").read_text())
    settings = manifest["settings"]
    assert settings["prompt"] == "a cat sits" and settings["prompts"] == [[0.0, "it looks around"], [0.5, "it jumps"]]
    assert settings["end_strength"] == 0.5 and settings["prompt_blend_sections"] == 1
    assert manifest["inputs"]["end_image"]["name"] == "end.png"
    assert manifest["inputs"]["keyframes"] == [
        {"seconds": 0.8, "name": "keyframe_0.png", "sha256": hashlib.sha256(keyframe.read_bytes()).hexdigest()}
    ]
    # 0.5 s falls inside the second section (0.4–0.8 s): "it jumps" takes over at the next start.
    assert [row["prompt"] for row in manifest["schedule"]] == ["it looks around", "it looks around", "it jumps"]

    # Loading that video's settings restores the timed prompt, strength and keyframe times, and names the images.

    result = AppService(None, "original").settings_of_file(str(saved_video(final[MESSAGE], app_server.outputs)))
    loaded, message = result.values, result.message
    assert loaded["prompt"] == "a cat sits [0s: it looks around] [0.5s: it jumps]"
    assert (loaded["end_strength"], loaded["keyframe_times"], loaded["prompt_blend_sections"]) == (0.5, "0.8", 1)
    assert "the end image end.png" in message and "keyframe keyframe_0.png (0.8 s)" in message


def test_without_a_start_image_the_video_starts_from_a_blank_frame(client: Client):
    updates = run(client, image=None, blank_start="white", prompt="fireworks", total_second_length=0.4, **FAST)
    assert updates[-1][MESSAGE].startswith("Finished") and probe(updates[-1][VIDEO]).frames == 13
    assert "No start image: starting from a white frame" in texts(updates, MESSAGE)


def test_bad_section_controls_get_a_clear_message(client: Client, tmp_path: Path):
    keyframe = handle_file(str(CONTROLS / "c2_original_timed" / "keyframe_0.png"))
    not_an_image = tmp_path / "end.png"
    not_an_image.write_text("no")
    cases = [
        ({"keyframes": [keyframe]}, "give one time per keyframe image: 1 image(s), 0 time(s)"),
        ({"keyframes": [keyframe], "keyframe_times": "soon"}, "keyframe_times: 'soon' is not a number"),
        ({"keyframes": [keyframe], "keyframe_times": "0"}, "a keyframe at 0 s would replace the start image"),
        ({"keyframes": [keyframe], "keyframe_times": "5"}, "5 s governs no section: the last section starts at 0.8 s"),
        ({"prompt": "a [1 s: b"}, "malformed timed prompt near '[1 s: b'"),
        ({"end_strength": 2}, "end_strength: must be between 0 and 1"),
        ({"blank_start": "pink"}, "blank_start: must be one of grey, black, white, noise"),
        ({"end_image": handle_file(str(not_an_image))}, "cannot read end.png as an image"),
    ]
    for params, expected in cases:
        final = run(client, **{**FAST, "total_second_length": 1.2, **params})[-1]
        assert final[MESSAGE].startswith("**Error:**") and expected in final[MESSAGE], (params, final[MESSAGE])
        assert "Not started" in final[PROGRESS]


def test_extend_a_video_through_the_api(client: Client, app_server, tmp_path: Path):  # noqa: F811
    from helpers import make_clip

    clip = make_clip(tmp_path / "clip.webm", 30, 30, (64, 48), codec="libvpx-vp9", fmt="webm")
    job = client.submit(handle_file(str(clip)), prompt="more", total_second_length=0.4, api_name="/extend", **FAST)
    job.result()
    final = job.outputs()[-1]
    assert final[MESSAGE].startswith("Finished"), final[MESSAGE]
    video = saved_video(final[MESSAGE], app_server.outputs)
    assert probe(video).frames == 30 + 12
    assert json.loads(video.with_suffix(".json").read_text())["origin"]["extended_video"]["name"] == "clip.webm"
    not_a_video = tmp_path / "clip.mp4"
    not_a_video.write_text("no")
    for params, expected in (({}, "no video: upload the video to extend first"),
                             ({"video": handle_file(str(not_a_video))}, "clip.mp4 is not a video this app can read")):  # fmt: skip
        job = client.submit(**{"video": None, **params}, total_second_length=0.4, api_name="/extend", **FAST)
        job.result()
        assert expected in job.outputs()[-1][MESSAGE]


def test_the_page_shows_each_model_only_its_own_controls(tmp_path: Path):
    """F1's page has no end frame (it generates forwards) and says how it counts kept sections; only F1's page adds
    seconds to a finished video; without LoRA files the LoRA panel says where they go."""
    import gradio as gr

    from framepack.app.wiring import build_app

    for variant in ("original", "f1"):
        demo = build_app(None, variant, lora_folder=tmp_path / "no-loras")
        blocks = list(demo.blocks.values())
        by_id = {getattr(b, "elem_id", None): b for b in blocks}
        accordions = [b.label for b in blocks if isinstance(b, gr.Accordion)]
        assert by_id["fp-end-image"].visible == (variant == "original")
        assert ("End frame and keyframes" in accordions) == (variant == "original") and ("Keyframes" in accordions) == (variant == "f1")
        assert by_id["fp-add-seconds"].visible == (variant == "f1") and by_id["fp-extend-seconds"].visible
        assert ("END backwards" in by_id["fp-keep"].info) == (variant == "original")
        assert "no-loras" in by_id["fp-lora-hint"].value


def test_the_timeline_says_the_real_length_and_what_the_video_starts_from():
    handlers = Handlers(AppService(None, "original"), "local")
    asked_five = handlers.timeline("a girl", 5, 9, input_image="girl.png")
    assert asked_five.startswith("**4 sections: a 4.83 s video** (5 s asked;") and "No start image" not in asked_five
    assert asked_five.count("· start image") == 4
    blank = handlers.timeline("a girl", 2.4, 9, blank_start="noise")
    assert "No start image: a text-to-video from a noise frame." in blank and blank.count("· the noise frame") == 2
    assert "start image" not in blank.replace("No start image", "")
    exact = handlers.timeline("a girl", 73 / 30, 9, input_image="girl.png")
    assert exact.startswith("**2 sections: a 2.43 s video**\n")  # nothing to explain when the length is what was asked
    # The same words under the length slider, as the length or the window changes.
    assert handlers.length_note(5, 9) == "4 sections: a 4.83 s video" and handlers.length_note(5, 5) == "8 sections: a 5.37 s video"
    assert handlers.length_note(0.1, 9) == "1 section: a 1.23 s video"


def test_queue_rows_say_what_a_job_is_in_words():
    from framepack.app.views import queue_row
    from framepack.jobs.spec import JobSpec
    from framepack.queue.store import QueuedJob

    text_to_video = QueuedJob("j1", "local", JobSpec("generate", settings={"prompt": ""}), state="done", progress=1.0)
    rest = QueuedJob("j2", "local", JobSpec("resume", source="j1"), state="queued")
    stopped = QueuedJob("j3", "local", JobSpec("generate", settings={"prompt": "a girl"}), state="stopped", progress=0.4)
    assert queue_row(text_to_video)[5] == "(no prompt)" and queue_row(rest)[5] == "the rest of j1"
    assert queue_row(stopped)[1:3] == ["stopped: can be resumed (Retry)", "40%"]
    f1_job = QueuedJob("j4", "local", JobSpec("generate", settings={"prompt": "a cat"}), variant="f1")
    assert queue_row(f1_job)[-1] == "FramePack-F1" and queue_row(stopped)[-1] == "FramePack"


def test_keyframe_times_without_their_images_wait_for_them_in_the_timeline():
    """Right after loading a job's settings the keyframe times are there and the images not yet: no error."""
    handlers = Handlers(AppService(None, "original"), "local")
    shown = handlers.timeline("a girl", 2.4, 9, keyframe_times="1.2", input_image="girl.png")
    assert "**Error" not in shown and "Keyframe times 1.2 are set: add their images to use them." in shown
    assert handlers.timeline("a girl", 2.4, 9, keyframes=["k.png"], keyframe_times="1.2, 2").startswith("**Error:**")


def test_the_app_says_what_the_machine_lacks_before_its_memory_plan(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    """With no GPU and an empty model folder the first lines say so, in that order, and name every missing part."""
    from framepack import doctor
    from framepack.memory.sensing import detect_device
    from framepack.models import ModelsMissingError

    # This machine as one without a GPU, whatever runs the test.
    monkeypatch.setattr(doctor, "nvidia_smi", lambda: doctor.Smi(False))
    monkeypatch.setattr(doctor, "detect_device", lambda device=None: detect_device("cpu"))
    args = ui.parse_args(["--models", str(tmp_path / "empty"), "--outputs", str(tmp_path / "outputs")], "original")
    with pytest.raises(ModelsMissingError):
        ui.create_app("original", args)
    said = capsys.readouterr().err
    device, models = said.index("WARN: Device: runs on the CPU"), said.index("FAIL: Model files: ")
    assert device < models
    for part in ("text_encoder 15.0 GB", "vae 0.5 GB", "image_encoder 0.9 GB", "lllyasviel/FramePackI2V_HY (25.8 GB)"):
        assert part in said[models:]
    assert "hf download lllyasviel/FramePackI2V_HY --local-dir" in said


def test_the_progress_bar_says_the_time_elapsed_and_left():
    """The estimate counts only what this run has done: a job resumed at 50 % is not taken for a fast one."""
    from framepack.app.views import SamplingClock
    from framepack.events import Progress

    now = [100.0]
    clock = SamplingClock(lambda: now[0])

    def at(section: int, step: int) -> Progress:
        return Progress(section, 4, step, 10, 0, None, (0.0, 1.2))

    assert clock.timing(at(3, 1)) == "0:00 elapsed"  # resumed after two of four sections: 52.5 %
    now[0] = 160.0
    assert clock.timing(at(3, 6)) == "1:00 elapsed, about 2:48 left"  # 12.5 % in a minute, 35 % to go
    now[0] = 100.0 + 3725
    assert clock.timing(at(4, 10)).startswith("1:02:05 elapsed")
    updates = event_updates(at(3, 6), timing="1:00 elapsed, about 2:48 left")
    assert "65% · 1:00 elapsed, about 2:48 left" in updates[1]
