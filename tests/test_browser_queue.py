"""The Queue tab in a real browser: thumbnails of finished jobs in its gallery and table, a click that chooses a job, a
stopped job that says it can be resumed, and the Generate tab's one status place."""

import json
import re

from helpers import IMAGE
from pages import ARTIFACTS, BROWSER_TESTS

pytestmark = BROWSER_TESTS

ONE_SECTION = {"resolution": 128, "steps": 2, "latent_window_size": 3, "total_second_length": 0.4}
# Every picture in the table has loaded (a broken link would have no natural width).
PICTURES_LOADED = """(count) => {
    const pictures = [...document.querySelectorAll('#fp-queue [role=gridcell] img')];
    return pictures.length >= count && pictures.every(p => p.complete && p.naturalWidth > 0);
}"""

# Each header is one line inside its cell, and the last column ends inside the table's box (nothing to scroll to).
HEADERS_FIT = """(table) => {
    const box = document.querySelector(table).getBoundingClientRect();
    return [...document.querySelectorAll(`${table} thead th`)].every(header => {
        const text = document.createRange();
        text.selectNodeContents(header.querySelector('.header'));
        const label = header.querySelector('.header'), cell = header.getBoundingClientRect();
        return text.getClientRects().length === 1 && label.scrollWidth <= label.clientWidth && cell.right <= box.right + 1;
    });
}"""


def stopped_job(client, outputs) -> tuple[str, str]:
    """A five-section job stopped once its first section is in its video; its id and how much of it is kept."""
    from gradio_client import handle_file

    job = client.submit(handle_file(str(IMAGE)), prompt="a stopped one", api_name="/generate",
                        **{**ONE_SECTION, "total_second_length": 2.0})  # fmt: skip
    for update in job:
        if isinstance(update[3], str):  # the first section's video
            client.predict(api_name="/stop")
            break
    job.result()
    message = job.outputs()[-1][4]
    assert message.startswith("Stopped after"), message
    name = message.split("saved as `")[1].split(".mp4")[0]
    record = json.loads((outputs / f"{name}.json").read_text())
    assert 0 < record["sections_done"] < record["sections"] == 5
    return name, f"{record['sections_done'] / 5:.0%}"


def test_the_gallery_shows_finished_jobs_and_a_click_chooses_one(browser, app_server):
    from gradio_client import Client, handle_file
    from playwright.sync_api import expect

    client = Client(app_server.url, verbose=False)
    stopped, kept = stopped_job(client, app_server.outputs)
    finished = [client.predict(handle_file(str(IMAGE)), prompt=f"a girl {what}", api_name="/queue_add", **ONE_SECTION)
                for what in ("waves", "bows")]  # fmt: skip

    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(app_server.url)
    status = page.locator("#fp-status")  # the Generate tab's one status place: bar, message and frames together
    for part in ("#fp-progress", "#fp-message", "#fp-info"):
        expect(status.locator(part)).to_have_count(1)
    page.get_by_role("tab", name="Queue").click()
    table, gallery = page.locator("#fp-queue"), page.locator("#fp-gallery")
    row = lambda job: table.get_by_role("row").filter(has_text=job)  # noqa: E731
    for job_id in finished:
        expect(row(job_id)).to_contain_text("done", timeout=120_000)
    expect(row(stopped)).to_contain_text("stopped: can be resumed (Retry)")
    expect(row(stopped)).to_contain_text(kept)  # its finished sections, what a retry keeps
    expect(gallery.locator("img")).to_have_count(2, timeout=10_000)  # finished jobs only, not the stopped one
    page.wait_for_function(PICTURES_LOADED, arg=3, timeout=10_000)  # and each job with a video has its picture
    assert page.evaluate(HEADERS_FIT, "#fp-queue"), page.evaluate(HEADERS_FIT.replace("every", "map"), "#fp-queue")

    # The newest finished job comes first; a click on the second picture chooses the older one.
    chosen = page.locator("#fp-queue-job input")
    gallery.locator("img").nth(1).click()
    expect(chosen).to_have_value(re.compile(re.escape(finished[0])), timeout=10_000)  # its label starts with the id
    expect(page.locator("#fp-queue-message")).to_contain_text(f"Chose {finished[0]}")
    page.locator("#fp-queue-open").click()
    expect(page.locator("#fp-queue-video video")).to_be_visible(timeout=10_000)
    # A click on a row chooses that row's job.
    row(stopped).get_by_text("stopped: can be resumed").click()
    expect(chosen).to_have_value(re.compile(re.escape(stopped)), timeout=10_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_queue_gallery.png"), full_page=True)
    page.get_by_role("tab", name="Generate").click()
    mine = page.locator("#fp-my-jobs").get_by_role("row").filter(has_text=stopped)
    expect(mine).to_contain_text(kept)  # the tab's own list says the same
    expect(mine).to_contain_text("can be resumed")
    assert page.evaluate(HEADERS_FIT, "#fp-my-jobs"), page.evaluate(HEADERS_FIT.replace("every", "map"), "#fp-my-jobs")
    page.screenshot(path=str(ARTIFACTS / "browser_queue_generate.png"), full_page=True)
    page.close()
