"""The page wired to the app's actions: Gradio handlers (thin: who is calling, then `AppService`) connected to the
layout's controls, and the API's endpoints.

Each browser session (and each gradio_client) has its own followed jobs in a `gr.State`; a streaming handler passes
its job's events to the page and stops the job when the stream ends for any reason (End, a closed tab, a cancelled
API call). Every job belongs to a user: the login with `--auth`; without logins the person at this machine when the
app serves only this machine, or else each browser session.
"""

import inspect
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.events import Dependency

from ..events import Done, Error
from ..jobs.paths import LOCAL_USER
from ..media.images import ImageError
from ..media.reading import VideoInputError, frames_said
from ..postprocess import PostprocessError
from ..queue.front import Job, QueueFront
from ..queue.store import QueuedJob
from ..settings import FPS, Settings, SettingsError
from .board import BOARD_COLUMNS, board_row, clock_text, gallery_items
from .fields import (
    DEFAULTS,
    FIELDS,
    LOADABLE,
    Page,
    endpoint_fields,
    list_loras,
    signature,
    with_signature,
)
from .layout import Controls, build_layout
from .service import AppService, Loaded, lora_weights_by_name, upload_path
from .timeline import Thumbnails, strip_html
from .views import (
    MY_JOBS_COLUMNS,
    PLAYABLE,
    QUEUE_REFRESH_SECONDS,
    PageCopies,
    SamplingClock,
    Updates,
    error_message,
    event_updates,
    frames_line,
    length_words,
    my_job_row,
    postprocess_updates,
    progress_html,
    queue_entry,
    queue_row,
)

TITLES = {"original": "FramePack", "f1": "FramePack-F1"}
# The image controls a loaded job's images go back into, in the order `Handlers._loaded_updates` gives them.
IMAGE_CONTROLS = ("input_image", "end_image", "keyframes")
# Jobs beyond this many wait in Gradio's own queue instead of holding a server thread each.
MAX_ACTIVE_REQUESTS = 8
# The Generate tab's list shows this many of the user's newest jobs.
MY_JOBS_SHOWN = 8
# Gradio copies every version of the growing video and every preview into its temp cache; prune it every 30 minutes
# of files older than 2 hours (the finished video stays in the outputs folder).
TEMP_CACHE_PRUNING = (1800, 7200)
USER_ERRORS = (SettingsError, ImageError, VideoInputError, PostprocessError)


class Session:
    """The jobs one browser session or API client follows (the value of a `gr.State`, so never shared)."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.last_video: str | None = None  # the job whose video this session saw made last (to post-process)
        self.gallery: list[tuple[str, str]] = []  # the Queue tab's gallery as this page shows it: (picture, caption)
        self.page = False  # a browser page (API clients never load one): Start queues the job when the GPU is busy

    def stop(self, mine: Callable[[Job], bool] = lambda job: True) -> int:
        """Stop the jobs of this session that are `mine`; returns how many."""
        jobs = [job for job in self.jobs if mine(job)]
        for job in jobs:
            job.cancel()
        return len(jobs)


class Handlers:
    """The page's handlers over one service. `identity` says who owns a job: "login" (the `--auth` user),
    "session" (each browser session: the app is open to others without logins) or "local" (the person at the
    machine)."""

    def __init__(self, service: AppService, identity: str):
        self.service, self.identity = service, identity
        self.cache_dir: str | None = None  # Gradio's cache folder, once the page exists
        self.thumbnails = Thumbnails()

    def owner_of(self, request: gr.Request | None) -> str:
        if request is None or self.identity == "local":
            return LOCAL_USER
        if self.identity == "login":
            return f"user:{request.username}"
        return f"session:{request.session_hash}"

    def viewer_of(self, request: gr.Request | None) -> str | None:
        """Whose jobs the caller sees and controls in the queue: their own, or all for the person at the machine."""
        return None if self.identity == "local" else self.owner_of(request)

    # --- jobs that stream

    def generate(self, values: dict[str, Any]) -> Iterator[Updates]:
        """Generate a video from an image and a prompt; streams (preview, progress, frames, video, status).

        The prompt may hold timed prompts ("[2.4s: he turns around]"); `keyframes` are images with one time each in
        `keyframe_times` ("1.2, 2.4"); without an image the video starts from a `blank_start` frame. `loras` are file
        names in the app's LoRA folder, `lora_weights` their weights ("0.7, 0.4"; none: 1)."""
        owner, tab = self.owner_of(values["request"]), _session_of(values["request"])
        yield from self._start(values["session"], lambda live: self.service.submit(owner, tab, values, live))

    def extend(self, values: dict[str, Any]) -> Iterator[Updates]:
        """Make a video longer by `total_second_length` seconds: its frames first, then the new ones (any container,
        codec, size and frame rate); the other parameters are `generate`'s. Streams like `generate`."""
        video = upload_path(values["video"])
        if video is None:
            yield _refusal("no video: upload the video to extend first")
            return
        owner, tab = self.owner_of(values["request"]), _session_of(values["request"])
        yield from self._start(values["session"], lambda live: self.service.extend(owner, tab, video, values, live))

    def resume(self, session: Session, previous: Any = None, add_seconds: float = 0, add_prompt: str = "",
               request: gr.Request = None) -> Iterator[Updates]:  # fmt: skip
        """Finish a stopped job of this app, named by its video or record, or make a new, longer video of a finished F1
        video (`add_seconds`, with timed prompts for the added seconds in `add_prompt`); streams like `generate`."""
        path = upload_path(previous)
        if path is None:
            yield _refusal("no job to resume: drop the video (.mp4) or record (.json) of a stopped job first", bar=False)
            return
        owner, tab = self.owner_of(request), _session_of(request)
        yield from self._start(session, lambda live: self.service.resume(owner, tab, path, add_seconds, add_prompt, live))

    def branch(self, session: Session, previous: Any = None, keep_sections: int = 1, seed: int = 31337, prompt: str = "",
               request: gr.Request = None) -> Iterator[Updates]:  # fmt: skip
        """A new job that keeps the first `keep_sections` sections of a previous job of yours (its video or record) and
        redoes the rest with `seed` and `prompt` (empty: the job's own); streams like `generate`."""
        path = upload_path(previous)
        if path is None:
            yield _refusal("no job to branch from: drop the video (.mp4) or record (.json) of a job first", bar=False)
            return
        owner, tab = self.owner_of(request), _session_of(request)
        yield from self._start(session, lambda live: self.service.branch(owner, tab, path, keep_sections, seed, prompt, live))

    def _start(self, session: Session, submit: Callable[[bool], Job]) -> Iterator[Updates]:
        """Start a job and stream it; from a page while the GPU is busy, queue it instead and say so (the page stays
        free, and the job runs even if the page is closed). A user's mistake is one line on the page."""
        live = not (session.page and self.service.front.busy())
        try:
            job = submit(live)
        except USER_ERRORS as exc:
            gr.Warning(str(exc))
            yield _refusal(str(exc))
            return
        if live:
            yield from self._follow(session, job)
        elif job.refused:
            message = next(job.events()).message
            gr.Warning(message)
            yield _refusal(message)
        else:
            text = f"Queued as job `{job.id}`: it runs when the GPU is free, even if you close this page. See the Queue tab."
            yield gr.skip(), progress_html(0, "Queued"), gr.skip(), gr.skip(), text

    def _follow(self, session: Session, job: Job) -> Iterator[Updates]:
        """Page updates from a job's events; the job stops when the stream ends for any reason."""
        session.jobs.append(job)
        copies, clock = PageCopies(self.cache_dir), SamplingClock()
        try:
            yield None, progress_html(0, "Starting"), frames_line(0), None, "Starting"
            for event in job.events():
                if isinstance(event, Error):
                    gr.Warning(event.message)  # a toast too, in case the status line is scrolled away
                if isinstance(event, Done) and event.video_path is not None:
                    session.last_video = event.video_path.stem
                yield event_updates(event, copies, clock.timing(event), clock.sections)
        finally:
            # Also runs when Gradio closes the generator: a closed tab or a cancelled API call. Neither stops the job
            # (anyone holding the session's id could close it); it goes on, and End or /stop stops it.
            job.leave()
            session.jobs.remove(job)

    def stop(self, session: Session, request: gr.Request = None) -> None:
        """Stop the calling session's jobs after their current step, those of the caller's own (by login where there
        are logins); the finished sections stay playable."""
        owner = self.owner_of(request)
        session.stop(lambda job: job.owner == owner)

    def postprocess(self, values: dict[str, Any]) -> Iterator[tuple[Any, Any, Any, Any]]:
        """Upscale, interpolate, colour-match or convert a video: an uploaded `video`, else your finished job named
        `job`, else the last video made in this session. Streams (progress, status, playable result, result file)."""
        request, session = values["request"], values["session"]
        video = upload_path(values["video"])
        job = (values.get("job") or "").strip() or session.last_video
        owner, tab = self.owner_of(request), _session_of(request)
        try:
            handle = self.service.postprocess(owner, tab, values, video, None if video else job)
        except USER_ERRORS as exc:
            gr.Warning(str(exc))
            yield progress_html(0, "Not started"), error_message(str(exc)), gr.skip(), gr.skip()
            return
        copies = PageCopies(self.cache_dir)
        session.jobs.append(handle)
        try:
            yield progress_html(0, "Starting"), "Starting", None, None
            for event in handle.events():
                yield postprocess_updates(event, copies)
        finally:
            handle.cancel()
            session.jobs.remove(handle)

    # --- the API's plain calls

    def queue_add(self, values: dict[str, Any]) -> str:
        """Queue a job with `/generate`'s parameters and return its id at once; it runs when a worker is free, whether
        or not anyone follows it (see `/queue_list`)."""
        try:
            job = self.service.submit(self.owner_of(values["request"]), None, values, follow=False)
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from None
        if job.refused:
            raise gr.Error(next(job.events()).message)
        return job.id

    def add_to_queue(self, values: dict[str, Any]) -> str:
        """Queue the page's job without following it: Start stays free, and the job shows under "Your jobs"."""
        try:
            job_id = self.queue_add(values)
        except gr.Error as exc:
            return error_message(exc.message)
        return f"Queued as job `{job_id}`: it runs when the GPU is free, whether or not this page stays open."

    def my_job_video(self, evt: gr.SelectData, request: gr.Request) -> tuple[Any, str, Any]:
        """A click on a row of "Your jobs" shows that job's video in the tab's player (a finished job's whole, a
        running one's as far as it has come), with its frames and length on the line under the status."""
        job_id = evt.row_value[MY_JOBS_COLUMNS.index("Job")] if evt.row_value else None
        job, video = self.service.video_of(job_id, self.owner_of(request))
        player, said = self._shown_video(job, video)
        frames = frames_said(video) if video is not None and video.suffix.lower() in PLAYABLE else None
        return player, said, frames_line(frames) if frames is not None else gr.skip()

    def _shown_video(self, job: QueuedJob | None, video: Path | None) -> tuple[Any, str]:
        """A player's update and the line under it for a job's video (a format browsers cannot play is named)."""
        if job is None:
            return gr.skip(), "Choose one of your jobs first."
        if video is None:
            return gr.skip(), f"Job `{job.id}` has no video yet ({job.state})."
        if video.suffix.lower() not in PLAYABLE:
            return gr.skip(), f"Job `{job.id}` made `{video.name}`, which browsers do not play: see the outputs folder."
        so_far = " so far" if job.active else ""
        return PageCopies(self.cache_dir)(video), f"The video of job `{job.id}`{so_far}."

    def check_loras(self, names: list[str] | None) -> Any:
        """A chosen LoRA file that does not fit the model is said as soon as it is chosen."""
        problem = self.service.check_loras(names)
        return error_message(problem) if problem else gr.skip()

    def list_jobs(self, request: gr.Request) -> list[dict[str, Any]]:
        """The caller's previous jobs in the outputs folder, newest first (nobody else's)."""
        return self.service.jobs_of(self.owner_of(request))

    def queue_list(self, request: gr.Request) -> list[dict[str, Any]]:
        """The queue as the caller may see it (their own jobs; everyone's for the person at the machine): running,
        waiting in line order, then ended jobs, newest first."""
        return [queue_entry(job) for job in self.service.queue(self.viewer_of(request))]

    def queue_cancel(self, job_id: str, request: gr.Request) -> str:
        """Stop one of your jobs: a waiting one at once, a running one after its current step."""
        if not self.service.front.cancel_job(str(job_id), self.viewer_of(request)):
            raise gr.Error(f"you have no waiting or running job {job_id!r}")
        return f"{job_id}: stopping"

    def queue_retry(self, job_id: str, request: gr.Request) -> str:
        """Queue a stopped or failed job of yours again; it goes on from its last finished section."""
        if self.service.front.job(str(job_id), self.viewer_of(request)) is None:
            raise gr.Error(f"you have no stopped or failed job {job_id!r}")
        if problem := self.service.front.retry(str(job_id), self.viewer_of(request)):
            raise gr.Error(problem)
        return f"{job_id}: queued again"

    # --- the Queue tab and settings loading

    def queue_view(self, chosen: str | None, session: Session, request: gr.Request) -> tuple[Any, Any, Any, Any]:
        """The Queue tab's table, job list and gallery of finished videos, and the Generate tab's "Your jobs" (the
        caller's own, newest first), refreshed by the queue's timer from one read of the queue (the gallery only when
        it changed, so a look at it is not interrupted)."""
        jobs, shown = self.service.queue_board(self.viewer_of(request))
        choices = [(f"{job.id} · {queue_row(job)[5][:40]}", job.id) for job in jobs]
        value = chosen if any(job.id == chosen for job in jobs) else (jobs[0].id if jobs else None)
        items = gallery_items(jobs, shown)
        gallery = gr.skip() if items == session.gallery else gr.update(value=items)
        session.gallery = items
        rows = [board_row(job, shown[job.id]) for job in jobs]
        owner = self.owner_of(request)
        mine = sorted((job for job in jobs if job.owner == owner), key=lambda job: job.created, reverse=True)
        my_rows = [my_job_row(job, shown[job.id].progress, clock_text(shown[job.id].seconds_left) if job.active else "")
                   for job in mine[:MY_JOBS_SHOWN]]  # fmt: skip
        return gr.update(value=rows), gr.update(choices=choices, value=value), gallery, gr.update(value=my_rows)

    def queue_pick(self, session: Session, evt: gr.SelectData) -> tuple[Any, str]:
        """A click on a row of the Queue tab's table, or on a picture of its gallery, chooses that job."""
        if isinstance(evt.index, int):  # the gallery: its pictures are in `session.gallery`'s order
            job_id = session.gallery[evt.index][1].split(" · ")[0] if evt.index < len(session.gallery) else None
        else:
            job_id = evt.row_value[BOARD_COLUMNS.index("Job")] if evt.row_value else None
        if not job_id:
            return gr.skip(), gr.skip()
        return gr.update(value=job_id), f"Chose `{job_id}`: the buttons above act on it."

    def queue_button(self, action: str) -> Callable[[str | None, gr.Request], str]:
        def on_click(job_id: str | None, request: gr.Request) -> str:
            return self.service.queue_action(action, job_id, self.viewer_of(request))

        return on_click

    def queue_video(self, job_id: str | None, request: gr.Request) -> tuple[Any, str]:
        return self._shown_video(*self.service.video_of(job_id, self.viewer_of(request)))

    def queue_settings(self, job_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return self._loaded_updates(self.service.settings_of_job(job_id, self.viewer_of(request)))

    def previous_settings(self, path: str | None, request: gr.Request = None) -> tuple[Any, ...]:
        """Updates for the loadable fields, the image controls (from the copies kept with the caller's job) and the
        status line, from a previous output's MP4 or record."""
        if not path:
            return tuple(gr.skip() for _ in range(len(LOADABLE) + len(IMAGE_CONTROLS) + 1))
        return self._loaded_updates(self.service.settings_of_file(path, self.owner_of(request)))

    def _loaded_updates(self, loaded: Loaded) -> tuple[Any, ...]:
        """The loadable fields, the start, end and keyframe images (the page's own copies of the job's; one it had
        none of, or whose copy is gone, is cleared), then the status line. Without the job's images the page's start
        and end images stay; its keyframe images go when the job's keyframe times replace theirs (no error for a
        count that no longer matches)."""
        message = error_message(loaded.message) if loaded.error else loaded.message
        values = tuple(loaded.values.get(name, gr.skip()) for name in LOADABLE)
        kept = loaded.images
        if kept is None:
            keyframes = None if "keyframe_times" in loaded.values else gr.skip()
            return (*values, gr.skip(), gr.skip(), keyframes, message)
        copies = PageCopies(self.cache_dir)
        start, end = (copies(*found) if found else None for found in (kept.start, kept.end))
        keyframes = [copies(path, name) for _, path, name in kept.keyframes] or None
        return (*values, start, end, keyframes, message)

    def timeline(self, prompt: str, seconds: float, window: int, keyframes: Any = None, keyframe_times: str = "",
                 end_image: Any = None, input_image: Any = None, blank_start: str = "grey") -> str:  # fmt: skip
        """The page's timeline before Start: the video's real length, what it starts from, and its sections."""
        blank = upload_path(input_image) is None
        start = f"the {blank_start or 'grey'} frame" if blank else "start image"
        try:
            lines = self.service.timeline(prompt, seconds, window, keyframes, keyframe_times, end_image, start)
            settings = Settings(total_second_length=seconds, latent_window_size=window)
        except SettingsError as exc:
            return error_message(str(exc))
        length = settings.num_frames / FPS
        head = f"**{length_words(settings)}**"
        if abs(length - float(seconds)) >= 0.005:
            head += f" ({float(seconds):g} s asked; a video grows by whole sections of {settings.frames_per_section + 3} frames)"
        if keyframe_times and keyframe_times.strip() and not keyframes:
            head += f"\n\nKeyframe times {keyframe_times.strip()} are set: add their images to use them."
        if blank:
            head += f"\n\nNo start image: a text-to-video from a {blank_start or 'grey'} frame."
        return head + "\n\n**Sections, in time order**\n\n" + "\n".join(f"- {line}" for line in lines)

    def length_note(self, seconds: float, window: int) -> Any:
        """Under the length slider: what that length really makes."""
        try:
            return length_words(Settings(total_second_length=seconds, latent_window_size=window))
        except SettingsError:
            return gr.skip()  # the timeline says what is wrong

    def timeline_strip(self, prompt: str, seconds: float, window: int, keyframes: Any = None, keyframe_times: str = "",
                       end_image: Any = None, input_image: Any = None, blank_start: str = "grey", previous: Any = None,
                       keep: Any = None) -> str:  # fmt: skip
        """The timeline as a strip of sections with thumbnails of their images; with a previous output loaded, which
        sections a branch keeping `keep` of them keeps and which it makes again. Empty while the settings do not fit
        (the timeline's text says why)."""
        try:
            rows, keyed = self.service.schedule_rows(prompt, seconds, window, keyframes, keyframe_times, end_image)
        except SettingsError:
            return ""
        start = upload_path(input_image)
        anchors = {"start image": self.thumbnails(start), "end frame": self.thumbnails(upload_path(end_image))}
        anchors.update({f"keyframe {k + 1}": self.thumbnails(path) for k, (_, path) in enumerate(keyed)})
        kept = None
        if upload_path(previous) is not None and isinstance(keep, (int, float)) and keep >= 1:
            kept = int(keep)
        return strip_html(rows, anchors, None if start else (blank_start or "grey"), kept)


def _session_of(request: gr.Request | None) -> str | None:
    return request.session_hash if request else None


def _refusal(message: str, bar: bool = True) -> Updates:
    return gr.skip(), progress_html(0, "Not started") if bar else gr.skip(), gr.skip(), gr.skip(), error_message(message)


def build_app(front: QueueFront, variant: str, job_options: dict[str, Any] | None = None, identity: str = "local",
              lora_folder: Any = None) -> gr.Blocks:  # fmt: skip
    """The page over a queue front, its controls built from the fields table and wired to the app's actions."""
    page = Page(variant, job_options or {}, lora_folder)
    handlers = Handlers(AppService(front, variant, job_options, lora_folder), identity)
    with gr.Blocks(title=TITLES[variant], delete_cache=TEMP_CACHE_PRUNING) as demo:
        session = gr.State(Session())  # deep-copied for every new session
        gr.Markdown(f"# {TITLES[variant]}\nTurn one image into a video, section by section. The video grows as sections finish.")
        first = (DEFAULTS.prompt, DEFAULTS.total_second_length, DEFAULTS.latent_window_size)
        controls = build_layout(page, handlers.timeline(*first), handlers.timeline_strip(*first))
        loads = [_wire_jobs(demo, controls, handlers, session, page), _wire_queue(controls, handlers, session)]
        _lora_sliders(controls.fields["loras"], controls.fields["lora_weights"], loads)
    handlers.cache_dir = demo.GRADIO_CACHE
    if handlers.service.board is not None:
        handlers.service.board.cache_dir = demo.GRADIO_CACHE
    demo.queue(max_size=64)
    return demo


def _wire_jobs(demo: gr.Blocks, controls: Controls, handlers: Handlers, session: gr.State, page: Page) -> Dependency:
    """Wires the job buttons and the Generate tab's helpers; returns the event that loads a previous output's settings."""
    fields = controls.fields
    outputs = [controls[name] for name in ("preview", "progress", "info", "video", "message")]
    buttons = [controls["start"], controls["end"]]
    busy = lambda: (gr.update(interactive=False), gr.update(interactive=True))  # noqa: E731
    idle = lambda: (gr.update(interactive=True), gr.update(interactive=False))  # noqa: E731
    state = inspect.Parameter("session", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Session)
    video = inspect.Parameter("video", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Any)
    generate_fields, extend_fields = endpoint_fields("generate"), endpoint_fields("extend")
    generate = with_signature(handlers.generate, signature(generate_fields, [state]), "generate", handlers.generate.__doc__)
    extend = with_signature(handlers.extend, signature(extend_fields, [state, video]), "extend", handlers.extend.__doc__)
    queue_add = with_signature(handlers.queue_add, signature(generate_fields, returns=str), "queue_add", handlers.queue_add.__doc__)
    streams = dict(concurrency_limit=MAX_ACTIVE_REQUESTS, preprocess=False, show_progress="hidden")
    # The Extend tab's own "Seconds to add" is /extend's length (what to add), in the length's place.
    extend_inputs = [controls["extend_seconds"] if f.name == "total_second_length" else fields[f.name] for f in extend_fields]
    private = dict(queue=False, api_visibility="private")
    # Each job button greys Start while its stream runs (Gradio's own queue holds the rest); `preprocess=False`
    # hands the raw upload payloads over, so an unreadable file gets our message, not a Gradio error.
    for button, handler, inputs, name in (
        (controls["start"], generate, [session, *(fields[f.name] for f in generate_fields)], "generate"),
        (controls["extend"], extend, [session, controls["extend_video"], *extend_inputs], "extend"),
        (controls["resume"], handlers.resume, [session, controls["previous"], controls["add_seconds"], controls["add_prompt"]], "resume"),
        (controls["branch"], handlers.branch, [session, controls["previous"], controls["keep"], fields["seed"], fields["prompt"]], "branch"),
    ):  # fmt: skip
        button.click(busy, None, buttons, **private).then(handler, inputs, outputs, api_name=name, **streams).then(
            idle, None, buttons, **private
        )
    pp_fields = endpoint_fields("postprocess")
    job = inspect.Parameter("job", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="", annotation=str)
    postprocess = with_signature(handlers.postprocess, signature(pp_fields, [state, video, job]), "postprocess",
                                 handlers.postprocess.__doc__)  # fmt: skip
    controls["pp_start"].click(
        postprocess, [session, controls["pp_video"], controls["pp_job"], *(fields[f.name] for f in pp_fields)],
        [controls[name] for name in ("pp_progress", "pp_message", "pp_result", "pp_file")], api_name="postprocess",
        **streams,
    )  # fmt: skip
    controls["end"].click(handlers.stop, [session], None, api_name="stop", queue=False)
    demo.load(_mark_page, [session], [session], **private)
    add_to_queue = with_signature(handlers.add_to_queue, signature(generate_fields, returns=str), "add_to_queue",
                                  handlers.add_to_queue.__doc__)  # fmt: skip
    controls["queue_add"].click(add_to_queue, [fields[f.name] for f in generate_fields], controls["message"],
                                preprocess=False, **private)  # fmt: skip
    hidden = gr.Button(visible=False)
    hidden.click(queue_add, [fields[f.name] for f in generate_fields], gr.Textbox(visible=False), api_name="queue_add",
                 preprocess=False)  # fmt: skip
    gr.api(handlers.list_jobs, api_name="jobs", queue=False)
    controls["examples"].click(lambda sample: sample[0], [controls["examples"]], [fields["prompt"]], **private)
    loadable = [fields[name] for name in (f.name for f in FIELDS if f.loadable)]
    images = [fields[name] for name in IMAGE_CONTROLS]
    load = controls["previous"].upload(handlers.previous_settings, [controls["previous"]],
                                       [*loadable, *images, controls["message"]], **private)  # fmt: skip
    fields["loras"].change(handlers.check_loras, [fields["loras"]], [controls["message"]], **private)
    controls["refresh_loras"].click(lambda: gr.update(choices=list_loras(page.lora_folder)), None, fields["loras"], **private)
    timeline_inputs = [fields[name] for name in ("prompt", "total_second_length", "latent_window_size", "keyframes",
                                                  "keyframe_times", "end_image", "input_image", "blank_start")]  # fmt: skip
    # Raw payloads, as the job buttons get them: Gradio's preprocessing opens each image upload, and Pillow refuses
    # to open one past twice its pixel limit before `load_image` can read it reduced or refuse it in words.
    raw = dict(private, preprocess=False)
    gr.on([c.change for c in timeline_inputs], handlers.timeline, timeline_inputs, controls["timeline"], **raw)
    length_inputs = [fields["total_second_length"], fields["latent_window_size"]]
    gr.on([c.change for c in length_inputs], handlers.length_note, length_inputs, controls["length_note"], **private)
    strip_inputs = [*timeline_inputs, controls["previous"], controls["keep"]]
    gr.on([c.change for c in strip_inputs], handlers.timeline_strip, strip_inputs, controls["timeline_strip"], **raw)
    return load


def _lora_sliders(loras: gr.CheckboxGroup, weights: gr.Textbox, loads: list[Dependency]) -> None:
    """Sliders drawn again when the user ticks a LoRA or `loads` put a job's settings back. Not on every `change`:
    Gradio fires that again for one tick, and a late redraw would read the weights from before a slider moved."""
    loaded = gr.State(0)
    for load in loads:  # through the queue: the page fires a State's `change` only after a queued call
        load.then(lambda count: count + 1, loaded, loaded, api_visibility="private")

    @gr.render(inputs=[loras, weights], triggers=[loras.input, loaded.change])
    def weight_sliders(chosen: list[str] | None, text: str) -> None:
        """A weight slider for each chosen LoRA; the hidden weights box keeps them by name."""
        chosen = list(chosen or [])
        try:
            known = lora_weights_by_name(text, chosen)
        except SettingsError:
            known = {}
        sliders = [
            gr.Slider(-1, 2, known.get(name, 1.0), step=0.05, label=f"Weight of {name}", interactive=True,
                      elem_id=f"fp-lora-weight-{k}")  # fmt: skip
            for k, name in enumerate(chosen)
        ]
        # Written in the browser, not by a call to the server: a Start pressed right after a slider moved must not
        # read the weights from before the move.
        pairs = f"(...values) => {json.dumps(chosen)}.map((name, k) => `${{name}}=${{values[k]}}`).join(', ')"
        for slider in sliders:
            slider.change(None, sliders, weights, js=pairs, queue=False, api_visibility="private")


def _wire_queue(controls: Controls, handlers: Handlers, session: gr.State) -> Dependency:
    """Wires the Queue tab and "Your jobs"; returns the event that loads a job's settings."""
    gr.api(handlers.queue_list, api_name="queue_list", queue=False)
    gr.api(handlers.queue_cancel, api_name="queue_cancel", queue=False)
    gr.api(handlers.queue_retry, api_name="queue_retry", queue=False)
    private = dict(queue=False, api_visibility="private")
    choice, message = controls["queue_choice"], controls["queue_message"]
    # Gradio's own timer refreshes the view; nothing on the server polls.
    views = [controls["queue_table"], choice, controls["queue_gallery"], controls["my_jobs"]]
    refresh = dict(fn=handlers.queue_view, inputs=[choice, session], outputs=views, **private)
    for picked in (controls["queue_table"], controls["queue_gallery"]):
        picked.select(handlers.queue_pick, [session], [choice, message], **private)
    controls["my_jobs"].select(handlers.my_job_video, None, [controls["video"], controls["message"], controls["info"]],
                               **private)  # fmt: skip
    gr.Timer(QUEUE_REFRESH_SECONDS).tick(**refresh)
    for action in ("up", "down", "cancel", "retry"):
        controls[f"queue_{action}"].click(handlers.queue_button(action), [choice], [message], **private).then(**refresh)
    controls["queue_delete"].click(
        handlers.queue_button("delete"), [choice], [message], js="(job) => (job && confirm(`Delete job ${job} and its files?`)) ? job : null",
        **private,
    ).then(**refresh)  # fmt: skip
    controls["queue_open"].click(handlers.queue_video, [choice], [controls["queue_video"], message], **private)
    loaded = [controls.fields[name] for name in (*LOADABLE, *IMAGE_CONTROLS)]
    return controls["queue_load"].click(handlers.queue_settings, [choice], [*loaded, message], **private)


def _mark_page(session: Session) -> Session:
    session.page = True
    return session

