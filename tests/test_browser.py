"""A real browser on the page: upload an image, press Start, watch the video play; closing the tab leaves the job running."""

import json
import re
from pathlib import Path

from helpers import IMAGE
from pages import ARTIFACTS, add_end_frame_and_keyframe, BROWSER_TESTS, VIDEO_PLAYING, VIDEO_SHOWN, open_extend_tab, open_page, set_number, start_job

pytestmark = BROWSER_TESTS


def test_page_generates_and_plays_the_video(browser, app_server):
    from playwright.sync_api import expect

    page = start_job(browser, app_server.url, seconds=1.2)  # one section: 37 frames
    page.wait_for_function(VIDEO_PLAYING, timeout=90_000)
    expect(page.locator("#fp-message")).to_contain_text("Finished", timeout=60_000)
    expect(page.locator("#fp-start")).to_be_enabled()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_app.png"), full_page=True)

    message = page.locator("#fp-message").inner_text()
    assert "Error" not in message, message
    toasts = page.locator(".toast-body")  # gr.Warning and Gradio's own errors both show as toasts
    assert toasts.count() == 0, toasts.all_inner_texts()
    assert "Frames so far: 37" in page.locator("#fp-info").inner_text()
    assert page.evaluate(VIDEO_PLAYING)
    page.close()


def test_page_shows_a_user_error_clearly(browser, app_server):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(app_server.url)
    page.locator("#fp-prompt textarea").fill("a girl [2x: she waves]")
    # The timeline says so before Start, and Start says it again.
    expect(page.locator("#fp-timeline")).to_contain_text("malformed timed prompt near '[2x: she waves]'")
    page.locator("#fp-start").click()
    expect(page.locator("#fp-message")).to_contain_text("Error: prompt: malformed timed prompt")
    expect(page.locator(".toast-body")).to_contain_text("malformed timed prompt")
    expect(page.locator("#fp-start")).to_be_enabled()
    page.close()


def test_page_directs_the_video_with_an_end_frame_a_keyframe_and_timed_prompts(browser, app_server):
    import json

    from playwright.sync_api import expect

    controls = IMAGE.parents[2] / "cases-controls"
    page = open_page(browser, app_server.url, seconds=1.2, prompt="A girl stands. [0s: she waves] [0.8s: she spins]")
    page.get_by_text("Advanced").click()
    set_number(page, "fp-window", 3)  # three sections of 0.4 s
    timeline = page.locator("#fp-timeline")
    add_end_frame_and_keyframe(page, controls)
    expect(timeline).to_contain_text('0.00–0.40 s (generated 3rd): "she waves" · start image')
    expect(timeline).to_contain_text('0.80–1.20 s (generated 1st): "she spins" · keyframe 1 (keyframe_0.png) · then the end frame')

    page.locator("#fp-start").click()
    page.wait_for_function(VIDEO_PLAYING, timeout=90_000)
    expect(page.locator("#fp-message")).to_contain_text("Finished", timeout=60_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_controls.png"), full_page=True)
    name = page.locator("#fp-message").inner_text().split("saved as ")[1].split(".mp4")[0].strip("` ")
    manifest = json.loads((app_server.outputs / f"{name}.json").read_text())
    assert manifest["settings"]["prompts"] == [[0.0, "she waves"], [0.8, "she spins"]]
    assert manifest["inputs"]["end_image"]["name"] == "end.png"
    assert [k["seconds"] for k in manifest["inputs"]["keyframes"]] == [0.8]
    assert [row["start_slot"] for row in manifest["schedule"]] == ["start image", "start image", "keyframe 1"]
    page.close()


def test_closing_the_tab_leaves_its_job_running(browser, app_server):
    from gradio_client import Client, handle_file

    from framepack.media.reading import probe

    before = set(app_server.outputs.glob("*.mp4"))
    page = start_job(browser, app_server.url, seconds=2.4, steps=3)  # two sections, 73 frames
    page.wait_for_function(VIDEO_SHOWN, timeout=90_000)  # the first section is finished
    page.close()

    # The worker runs one job at a time, so once this job is done the tab's job has ended: whole.
    client = Client(app_server.url, verbose=False)
    small = {"resolution": 128, "steps": 3, "latent_window_size": 3, "total_second_length": 0.4}
    job = client.submit(handle_file(str(IMAGE)), api_name="/generate", **small)
    job.result()
    api_video = job.outputs()[-1][3]
    [tab_video] = [p for p in set(app_server.outputs.glob("*.mp4")) - before if p.name != Path(api_video).name]
    assert probe(tab_video).frames == 73
    assert json.loads(tab_video.with_suffix(".json").read_text())["state"] == "done"


def test_page_applies_two_loras_with_their_slider_weights(browser, tmp_path):
    import json

    from helpers import random_lora, running_app
    from playwright.sync_api import expect
    from safetensors.torch import save_file

    from framepack.memory.sizes import ModelConfigs
    from framepack.models.components import meta_transformer

    folder = tmp_path / "loras"
    folder.mkdir()
    transformer = meta_transformer(ModelConfigs.from_folder(IMAGE.parents[2] / "models").transformer)  # shapes are enough
    for name, seed in (("style.safetensors", 1), ("motion.safetensors", 2)):
        tensors, _ = random_lora("musubi", transformer, seed)
        save_file(tensors, str(folder / name))
    with running_app(tmp_path / "outputs", "--loras", str(folder)) as app:
        page = open_page(browser, app.url, seconds=1)
        page.get_by_text("LoRA", exact=True).click()
        page.get_by_label("motion.safetensors").check()
        page.get_by_label("style.safetensors").check()
        weight = page.locator("#fp-lora-weight-1 input[type=number]")  # the second one chosen
        expect(page.locator("#fp-lora-weight-1")).to_contain_text("Weight of style.safetensors")
        weight.fill("0.4")
        weight.press("Enter")
        page.locator("#fp-start").click()  # at once, as a quick hand would
        expect(page.locator("#fp-message")).to_contain_text("Finished", timeout=90_000)
        name = page.locator("#fp-message").inner_text().split("saved as ")[1].split(".mp4")[0].strip("` ")
        loras = json.loads((app.outputs / f"{name}.json").read_text())["loras"]
        assert [(lora["name"], lora["weight"]) for lora in loras] == [("motion.safetensors", 1.0), ("style.safetensors", 0.4)]
        # Loading the job back puts its LoRAs and their weights back into the sliders, whatever was chosen since.
        page.get_by_role("checkbox", name="motion.safetensors").uncheck()
        expect(page.locator("#fp-lora-weight-0")).to_contain_text("Weight of style.safetensors")
        page.locator("#fp-lora-weight-0 input[type=number]").fill("1.5")
        page.locator("#fp-lora-weight-0 input[type=number]").press("Enter")
        page.get_by_text("Previous output: load its settings, or resume it").click()
        page.locator("#fp-previous input[type=file]").set_input_files(str(app.outputs / f"{name}.mp4"))
        expect(page.locator("#fp-lora-weight-1")).to_contain_text("Weight of style.safetensors")
        expect(page.locator("#fp-lora-weight-0")).to_contain_text("Weight of motion.safetensors")
        expect(page.locator("#fp-lora-weight-1 input[type=number]")).to_have_value("0.4")
        expect(page.locator("#fp-lora-weight-0 input[type=number]")).to_have_value("1")
        page.close()


def test_page_extends_an_uploaded_video_and_plays_the_result(browser, app_server, tmp_path):
    from helpers import make_clip
    from playwright.sync_api import expect

    from framepack.media.images import nearest_bucket
    from framepack.media.reading import probe

    clip = make_clip(tmp_path / "holiday.mp4", 45, 24, (90, 70))
    page = open_extend_tab(browser, app_server.url, clip)
    page.locator("#fp-prompt textarea").fill("The waves keep rolling.")
    set_number(page, "fp-extend-seconds", 1.2)  # the tab's own length to add: one section at the default window
    set_number(page, "fp-steps", 2)  # the resolution stays 640: the clip's own size caps the bucket
    page.locator("#fp-extend").click()
    page.wait_for_function(VIDEO_PLAYING, timeout=90_000)
    expect(page.locator("#fp-message")).to_contain_text("Finished", timeout=60_000)
    name = page.locator("#fp-message").inner_text().split("saved as ")[1].split(".mp4")[0].strip("` ")
    made = probe(app_server.outputs / f"{name}.mp4")
    assert made.frames == 56 + 36  # 1.875 s at 30 fps, then one section
    assert (made.height, made.width) == nearest_bucket(70, 90, 128)  # not the 640 bucket
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_extend.png"), full_page=True)
    page.close()


def test_the_queue_tab_moves_cancels_and_shows_jobs_changing_state(browser, app_server):
    """Start while the GPU is busy queues the job; the Queue tab moves the second one up, cancels the other, and
    shows the states change as the jobs run."""
    import json

    from gradio_client import Client, handle_file
    from playwright.sync_api import expect

    blocker = Client(app_server.url, verbose=False).predict(
        handle_file(str(IMAGE)), prompt="busy", total_second_length=4.0, resolution=128, steps=3, latent_window_size=3,
        api_name="/queue_add",
    )  # fmt: skip
    page = open_page(browser, app_server.url, seconds=1, prompt="first in line")
    queued: list[str] = []
    for prompt in ("first in line", "second in line"):
        page.locator("#fp-prompt textarea").fill(prompt)
        expect(page.locator("#fp-start")).to_be_enabled()
        page.locator("#fp-start").click()
        seen = json.dumps(queued)
        message = page.wait_for_function(
            f"""() => {{ const text = document.querySelector('#fp-message').innerText;
                        return text.includes('Queued as job') && !{seen}.some(id => text.includes(id)) && text; }}""",
            timeout=30_000,
        ).json_value()  # fmt: skip
        queued.append(message.split("Queued as job ")[1].split(":")[0].strip("` "))
    first, second = queued
    assert first != second

    page.get_by_role("tab", name="Queue").click()
    table = page.locator("#fp-queue")
    row = lambda job: table.get_by_role("row").filter(has_text=job)  # noqa: E731
    expect(table).to_contain_text(second, timeout=10_000)

    text = table.inner_text()
    assert text.find(blocker) < text.find(first) < text.find(second)  # running, then the line in order
    expect(row(blocker)).to_contain_text("running")
    expect(row(second)).to_contain_text("queued")
    choose(page, second)
    page.locator("#fp-queue-up").click()
    expect(page.locator("#fp-queue-message")).to_contain_text(f"Moved up. ({second})")
    page.wait_for_function(f"() => {{ const t = document.querySelector('#fp-queue').innerText; return t.indexOf('{second}') < t.indexOf('{first}'); }}", timeout=10_000)
    choose(page, first)
    page.locator("#fp-queue-cancel").click()
    expect(page.locator("#fp-queue-message")).to_contain_text(f"Cancelled: it will not run. ({first})")  # it waited
    expect(row(first)).to_contain_text("stopped", timeout=10_000)
    expect(row(blocker)).to_contain_text("done", timeout=90_000)
    expect(row(second)).to_contain_text("done", timeout=90_000)  # after the blocker (too quick to catch running)
    expect(row(second)).to_contain_text(f"{second}.mp4")
    choose(page, second)
    page.locator("#fp-queue-open").click()
    expect(page.locator("#fp-queue-video video")).to_be_visible(timeout=10_000)
    page.locator("#fp-queue-load").click()
    expect(page.locator("#fp-queue-message")).to_contain_text(f"Loaded the settings of job {second}")
    page.get_by_role("tab", name="Generate").click()
    expect(page.locator("#fp-prompt textarea")).to_have_value("second in line")
    page.get_by_role("tab", name="Queue").click()
    # Delete asks first; declined, nothing happens; accepted, the job and its files go.
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.locator("#fp-queue-delete").click()  # returns once the dialog was answered: declined, nothing is sent
    assert asked == [f"Delete job {second} and its files?"]
    expect(row(second)).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#fp-queue-delete").click()
    expect(page.locator("#fp-queue-message")).to_contain_text(f"Deleted, with its files. ({second})")
    expect(row(second)).to_have_count(0, timeout=10_000)
    assert not (app_server.outputs / f"{second}.mp4").exists() and not (app_server.outputs / f"{second}.json").exists()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_queue.png"), full_page=True)
    page.close()


def choose(page, job_id: str) -> None:
    """Pick a job in the Queue tab's job list."""
    page.locator("#fp-queue-job input").click()
    page.get_by_role("option", name=job_id).first.click()


QUEUED_ANOTHER = """(known) => {
    const said = document.querySelector('#fp-message').innerText.match(/Queued as job (\\S+):/);
    return said !== null && !known.includes(said[1]);
}"""


def test_one_tab_queues_three_jobs_and_watches_them_finish_in_its_list(browser, app_server):
    from playwright.sync_api import expect

    page = open_page(browser, app_server.url, seconds=1.2)  # one section each
    message, mine = page.locator("#fp-message"), page.locator("#fp-my-jobs")
    ids: list[str] = []
    for prompt in ("a girl waves", "a girl spins", "a girl bows"):
        page.locator("#fp-prompt textarea").fill(prompt)
        page.locator("#fp-queue-add").click()  # always there: nothing waits for the job
        page.wait_for_function(QUEUED_ANOTHER, arg=ids, timeout=30_000)  # each click says its own job's id
        ids.append(re.search(r"Queued as job (\S+):", message.inner_text()).group(1))
    assert len(set(ids)) == 3
    for job_id in ids:
        expect(mine.get_by_role("row").filter(has_text=job_id)).to_contain_text("done", timeout=120_000)
    expect(page.locator("#fp-start")).to_be_enabled()  # the tab never waited for them
    # The list follows each job to its video: a click on a finished row plays that job's video in the tab's player.
    for job_id in (ids[0], ids[2]):
        mine.get_by_role("row").filter(has_text=job_id).get_by_text("done").click()
        expect(message).to_contain_text(f"The video of job {job_id}", timeout=10_000)
        expect(page.locator("#fp-info")).to_contain_text("video length: 1.23 s")  # its 37 frames, not the tab's 0
        expect(page.locator("#fp-video video")).to_have_attribute("src", re.compile(re.escape(f"{job_id}.mp4")))
        page.wait_for_function(VIDEO_PLAYING, timeout=30_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_my_jobs.png"), full_page=True)
    page.close()
