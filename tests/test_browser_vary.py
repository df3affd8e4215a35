"""The page as people use it, in a real browser: a job is loaded again (its images too), varied, resumed, branched and
made longer; the Extend tab keeps a small clip small; the F1 page shows no end frame."""

import hashlib
import json
import shutil
from collections.abc import Iterator

import pytest
from helpers import CONTROL_CASES as CONTROLS
from helpers import make_clip, running_app
from playwright.sync_api import TimeoutError as PageTimeout
from playwright.sync_api import expect
from pages import ARTIFACTS, add_end_frame_and_keyframe, BROWSER_TESTS, VIDEO_PLAYING, open_extend_tab, open_page, set_number

from framepack.media.reading import probe
from framepack.settings import Settings

pytestmark = BROWSER_TESTS
LOAD = "Previous output: load its settings, or resume it"


@pytest.fixture(scope="module")
def f1_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The FramePack-F1 app on the tiny models, serving this machine only."""
    with running_app(tmp_path_factory.mktemp("f1-outputs"), variant="f1") as server:
        yield server


def saved_name(page, said: str = "saved as ") -> str:
    """The job name in the status line's "saved as `<job>.mp4`"."""
    return page.locator("#fp-message").inner_text().split(said)[1].split(".mp4")[0].strip("` ")


def finished(page, timeout: float = 120_000, not_of: str = "") -> str:
    """Wait for the page's job to finish (another job than `not_of`, whose message may still be there); the name of
    its video."""
    try:
        page.wait_for_function(
            """(old) => { const text = document.querySelector('#fp-message').innerText;
                          return text.includes('Finished') && (!old || !text.includes(old)); }""",
            arg=not_of, timeout=timeout,
        )  # fmt: skip
    except PageTimeout:
        said = {name: page.locator(f"#{name}").inner_text() for name in ("fp-message", "fp-progress", "fp-info")}
        raise AssertionError(f"the job did not finish in {timeout / 1000:g} s; the page says {said}") from None
    return saved_name(page)


def load_previous(page, video) -> None:
    """Open "Previous output" and drop a video there, as a person does."""
    page.get_by_text(LOAD).click()
    page.locator("#fp-previous input[type=file]").set_input_files(str(video))


def test_a_timed_prompt_job_branches_with_a_new_timed_prompt(browser, app_server):
    page = open_page(browser, app_server.url, seconds=1.2, prompt="A room. [0s: lights on] [0.4s: lights off]")
    page.get_by_text("Advanced").click()
    set_number(page, "fp-window", 3)  # three sections of 0.4 s
    add_end_frame_and_keyframe(page, CONTROLS)
    expect(page.locator("#fp-timeline")).to_contain_text("keyframe 1 (keyframe_0.png)")
    page.locator("#fp-start").click()
    source = finished(page)
    page.close()

    # Loaded on a fresh page, the job brings its images back: the timeline shows them, and no error.
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(app_server.url)
    load_previous(page, app_server.outputs / f"{source}.mp4")
    expect(page.locator("#fp-message")).to_contain_text(f"Loaded the settings of {source}.mp4 with its images")
    expect(page.locator("#fp-prompt textarea")).to_have_value("A room. [0s: lights on] [0.4s: lights off]")
    page.get_by_text("End frame and keyframes").click()
    for image in ("#fp-image img", "#fp-end-image img"):
        expect(page.locator(image)).to_be_visible()
    expect(page.locator("#fp-keyframes").get_by_role("cell", name="keyframe_0.png")).to_be_visible()
    expect(page.locator("#fp-timeline")).to_contain_text('0.80–1.20 s (generated 1st): "lights off" · keyframe 1 (keyframe_0.png) · then the end frame')
    expect(page.locator("#fp-timeline-strip img")).to_have_count(4)  # start, start, then the keyframe and the end frame
    assert "Error" not in page.locator("#fp-timeline").inner_text() + page.locator("#fp-message").inner_text()
    # The strip says, in time order, what a branch keeping one section keeps: the original model made the end first.
    set_number(page, "fp-keep", 1)
    expect(page.locator("#fp-timeline-strip")).to_contain_text("A branch makes 0.00–0.80 s again and keeps 0.80–1.20 s.")
    page.locator("#fp-prompt textarea").fill("A room. [0s: lights on] [0.4s: a cat walks in]")
    page.locator("#fp-branch").click()
    branch = finished(page, not_of=source)
    record = json.loads((app_server.outputs / f"{branch}.json").read_text())
    assert record["origin"] == {"branched_from": {"job": source, "sections": 1}}
    assert record["settings"]["prompts"] == [[0.0, "lights on"], [0.4, "a cat walks in"]]
    assert json.loads((app_server.outputs / f"{source}.json").read_text())["settings"]["prompts"][1] == [0.4, "lights off"]
    page.close()


def test_a_renamed_video_loads_with_its_start_image_resumes_and_branches(browser, app_server, tmp_path):
    page = open_page(browser, app_server.url, seconds=2.4)
    page.get_by_text("Advanced").click()
    set_number(page, "fp-window", 3)  # six sections of 0.4 s: End comes in well before the last
    page.locator("#fp-start").click()
    page.wait_for_function(VIDEO_PLAYING, timeout=120_000)  # a section is finished
    page.locator("#fp-end").click()
    expect(page.locator("#fp-message")).to_contain_text("Stopped after", timeout=60_000)
    source = saved_name(page)
    renamed = shutil.copy(app_server.outputs / f"{source}.mp4", tmp_path / "first_job.mp4")
    page.close()

    page = browser.new_page(viewport={"width": 1400, "height": 1300})  # a fresh page: nothing on it yet
    page.goto(app_server.url)
    load_previous(page, renamed)
    expect(page.locator("#fp-message")).to_contain_text("Loaded the settings of first_job.mp4 with its images")
    expect(page.locator("#fp-image img")).to_be_visible()  # its start image is back
    expect(page.locator("#fp-timeline-strip img").first).to_be_visible()  # and in the strip
    expect(page.locator("#fp-timeline")).not_to_contain_text("Error")
    page.locator("#fp-resume").click()
    expect(page.locator("#fp-message")).to_contain_text(f"saved as {source}.mp4", timeout=180_000)
    assert json.loads((app_server.outputs / f"{source}.json").read_text())["state"] == "done"
    assert probe(app_server.outputs / f"{source}.mp4").frames == Settings(total_second_length=2.4, latent_window_size=3).num_frames

    set_number(page, "fp-keep", 2)
    page.locator("#fp-branch").click()
    branch = finished(page, timeout=180_000, not_of=source)
    assert json.loads((app_server.outputs / f"{branch}.json").read_text())["origin"]["branched_from"]["job"] == source
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_renamed.png"), full_page=True)
    page.close()


def test_seconds_added_to_a_finished_f1_video_make_a_second_video(browser, f1_server):
    page = open_page(browser, f1_server.url, seconds=1.2)
    page.locator("#fp-start").click()
    short = finished(page)
    short_video = f1_server.outputs / f"{short}.mp4"
    before, frames = hashlib.sha256(short_video.read_bytes()).hexdigest(), probe(short_video).frames

    load_previous(page, short_video)
    expect(page.locator("#fp-message")).to_contain_text(f"Loaded the settings of {short}.mp4 with its images")
    set_number(page, "fp-add-seconds", 1.2)
    page.locator("#fp-resume").click()
    longer = finished(page, not_of=short)
    assert probe(f1_server.outputs / f"{longer}.mp4").frames > frames
    assert hashlib.sha256(short_video.read_bytes()).hexdigest() == before  # the shorter one is unchanged
    assert json.loads((f1_server.outputs / f"{longer}.json").read_text())["origin"]["lengthened_from"]["job"] == short
    page.close()


def test_the_extend_tab_keeps_a_small_clip_small(browser, app_server, tmp_path):
    clip = make_clip(tmp_path / "small.mp4", 30, 30, (160, 120))
    page = open_extend_tab(browser, app_server.url, clip)
    page.locator("#fp-prompt textarea").fill("The bar keeps moving.")
    set_number(page, "fp-extend-seconds", 1.2)
    set_number(page, "fp-steps", 3)  # the resolution stays at 640: the clip's own size caps it
    page.locator("#fp-extend").click()
    made = probe(app_server.outputs / f"{finished(page)}.mp4")
    assert made.height <= 120 and made.width <= 160, (made.height, made.width)  # not the 640 bucket
    page.close()


def test_the_f1_page_has_no_end_frame_controls(browser, f1_server):
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(f1_server.url)
    page.get_by_text("Keyframes", exact=True).click()
    expect(page.locator("#fp-keyframes")).to_be_visible()
    expect(page.locator("#fp-end-image")).to_be_hidden()
    for words in ("End frame", "End image"):  # neither the accordion's title nor a control says it
        expect(page.get_by_text(words).filter(visible=True)).to_have_count(0)
    page.get_by_text(LOAD).click()
    expect(page.locator("#fp-add-seconds")).to_be_visible()  # F1 makes finished videos longer
    # Under the length slider: what the length really makes, as it changes.
    expect(page.locator("#fp-length-note")).to_have_text("4 sections: a 4.83 s video")
    set_number(page, "fp-length", 2.4)
    expect(page.locator("#fp-length-note")).to_have_text("2 sections: a 2.43 s video")
    page.close()
