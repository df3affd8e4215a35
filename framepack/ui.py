"""The desktop app: a Gradio page over the engine, one background worker for the GPU, and the command line.

Each browser session (and each gradio_client) has its own jobs in a `gr.State`; the Start handler streams
page updates from its job's events and stops the job when the stream ends for any reason (End, a closed
tab, a cancelled API call).

Every job belongs to a user: the login with `--auth`; without logins, the person at this machine when the app
serves only this machine, or else each browser session. Only a job's owner can resume or extend it, or list
it. The outputs folder is never served: the page gets a copy of each video in a private folder of Gradio's
cache, under a name nobody else can guess, and names outputs relative to the outputs folder.
"""

import argparse
import dataclasses
import html
import inspect
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from .media.images import ImageError
from .lora import LoraSpec
from .controls import BLANK_STARTS, JobInputs, Keyframe, describe_schedule, plan_schedule, prepare_images, timeline
from .events import Done, Error, Progress, SectionDone, Status
from .memory.planning import MemoryPlanError, check_before_loading
from .models import ModelSource, ModelsMissingError
from .outputs import LOCAL_USER, job_name, settings_of_output, sweep_outputs
from .models.attention import ATTENTION_CHOICES
from .engine.stepcache import DEFAULT_THRESHOLDS_TEXT
from .models.checkpoints import CheckpointError
from .settings import CACHE_METHODS, FPS, MAX_SECONDS, Settings, SettingsError
from .media.reading import VideoInputError, check_video
from .jobs import QueuedJob
from .cli import add_worker_options
from .cluster import ClusterError
from .worker import MAX_JOBS_PER_OWNER, Job, JobEvent, Waiting, Worker

DEFAULTS = Settings()
TITLES = {"original": "FramePack", "f1": "FramePack-F1"}
EXAMPLE_PROMPTS = (
    "The girl dances gracefully, with clear movements, full of charm.",
    "A character doing some simple body movements.",
    "The man turns his head and smiles warmly at the camera.",
    "Leaves sway gently in the wind as the camera slowly pushes in.",
)
# Jobs beyond this many wait in Gradio's own queue instead of holding a server thread each.
MAX_ACTIVE_REQUESTS = 8
# Uploads (images; videos to extend) larger than this are refused by Gradio with a message.
MAX_UPLOAD_MB = 500
LOCAL_ADDRESSES = ("127.0.0.1", "localhost", "::1")
# Gradio copies every version of the growing video and every preview into its temp cache; prune it
# every 30 minutes of files older than 2 hours (the finished video stays in the outputs folder).
TEMP_CACHE_PRUNING = (1800, 7200)
CACHE_LABELS = {"teacache": "TeaCache", "magcache": "MagCache", "first_block": "First Block Cache"}

CSS = """
.fp-progress { display: flex; flex-direction: column; gap: 6px; padding: 4px 0; }
.fp-progress-text { font-size: 0.95em; }
.fp-progress-track { height: 12px; border-radius: 6px; background: var(--neutral-200, #e5e7eb); overflow: hidden; }
.fp-progress-fill { height: 100%; background: var(--color-accent, #f97316); transition: width 0.2s ease; }
"""

Updates = tuple[Any, Any, Any, Any, Any]  # preview, progress, info, video, message


class Session:
    """The jobs of one browser session or API client (the value of a `gr.State`, so never shared)."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.page = False  # a browser page (API clients never load one): Start queues the job when the GPU is busy

    def stop(self) -> int:
        """Stop every job of this session; returns how many there were."""
        jobs = list(self.jobs)
        for job in jobs:
            job.cancel()
        return len(jobs)


QUEUE_COLUMNS = ["Job", "State", "Progress", "Worker", "Owner", "Prompt", "Video", "Message"]
QUEUE_REFRESH_SECONDS = 2.0


def mark_page(session: Session) -> Session:
    session.page = True
    return session


def queue_entry(job: QueuedJob) -> dict[str, Any]:
    """What `/queue_list` says of a job."""
    return {
        "job": job.id, "kind": job.spec.kind, "state": job.state, "progress": round(job.progress, 4),
        "worker": job.worker.split("/", 1)[-1] if job.worker else None, "owner": job.owner,
        "prompt": job.spec.settings.get("prompt"), "source": job.spec.source, "video": job.video,
        "message": job.message, "created": job.created, "started": job.started, "finished": job.finished,
    }  # fmt: skip


def queue_row(job: QueuedJob) -> list[str]:
    """A job as a row of the Queue tab's table."""
    entry = queue_entry(job)
    what = entry["prompt"] or f"{job.spec.kind} of {job.spec.source}"
    return [job.id, job.state, f"{job.progress:.0%}", entry["worker"] or "", job.owner, what[:80], job.video or "",
            job.message]  # fmt: skip


def progress_html(fraction: float, text: str) -> str:
    """An HTML progress bar with a caption."""
    percent = max(0.0, min(1.0, fraction)) * 100
    return (
        f'<div class="fp-progress"><div class="fp-progress-text">{html.escape(text)}</div>'
        f'<div class="fp-progress-track"><div class="fp-progress-fill" style="width: {percent:.1f}%"></div></div></div>'
    )


def frames_line(frames: int) -> str:
    """The line under the progress bar: frames generated so far and the video's length."""
    return f"Frames so far: {frames} · video length: {frames / FPS:.2f} s ({FPS} fps)"


def error_message(text: str) -> str:
    """How a user's mistake or a failed job reads on the page."""
    return f"**Error:** {text}"


def event_updates(event: JobEvent, show_video: Callable[[Path], str] = str) -> Updates:
    """The page updates for one job event; outputs that do not change are skipped. `show_video` gives the
    page its own copy of a video of the outputs folder."""
    skip = gr.skip()
    if isinstance(event, Waiting):
        text = f"Waiting for the GPU: position {event.position} in line"
        return skip, progress_html(0, text), skip, skip, text
    if isinstance(event, Status):
        return skip, skip, skip, skip, event.message
    if isinstance(event, Progress):
        where = f"Section {event.section} of {event.sections} ({event.span[0]:.2f}–{event.span[1]:.2f} s)"
        bar = progress_html(event.fraction, f"{where} · step {event.step} of {event.steps} · {event.fraction:.0%}")
        preview = event.preview if event.preview is not None else skip
        return preview, bar, frames_line(event.frames), skip, f"Sampling {where.lower()}"
    if isinstance(event, SectionDone):
        text = f"Section {event.section} of {event.sections} finished"
        return skip, skip, frames_line(event.frames), show_video(event.video_path), text
    if isinstance(event, Done):
        if event.video_path is None:
            text = "Stopped before the first section was finished; no video was written."
            return skip, progress_html(0, "Stopped"), skip, None, text
        made = f"{event.frames} frames ({event.seconds:.2f} s of video) in {event.elapsed:.1f} s"
        summary = f"{made}, saved as `{event.video_path.name}` in the outputs folder"
        if event.stopped:
            state, text = "Stopped", f"Stopped after {event.sections_done} section(s): {summary}"
        else:
            state, text = "Finished", f"Finished: {summary}"
        return skip, progress_html(1, state), frames_line(event.frames), show_video(event.video_path), text
    return skip, progress_html(0, "Failed"), skip, skip, error_message(event.message)


SETTING_NAMES = frozenset(field.name for field in dataclasses.fields(Settings))
# The page's settings controls, in the order of `/generate`'s parameters after the image (`keyframe_times`
# and `blank_start` are the inputs' part, the rest are settings).
PAGE_SETTINGS = (
    "prompt", "negative_prompt", "seed", "total_second_length", "resolution", "latent_window_size", "steps", "cfg",
    "distilled_cfg", "cfg_rescale", "gpu_memory_preservation", "use_teacache", "mp4_crf", "end_strength",
    "keyframe_times", "blank_start", "prompt_blend_sections", "loras", "lora_weights",
)  # fmt: skip


def previous_settings(path: str | None, lora_folder: Path | None = None) -> tuple[Any, ...]:
    """Updates for the settings controls (then the status line) from a previous output's MP4 or manifest: the
    prompt with its timed groups, the keyframes' times and the LoRAs (those in `lora_folder`) with their
    weights; the images themselves are named, to be added again."""
    skip_all = tuple(gr.skip() for _ in PAGE_SETTINGS)
    if not path:
        return (*skip_all, gr.skip())
    try:
        saved, extras = settings_of_output(path)
    except ValueError as exc:
        return (*skip_all, error_message(str(exc)))
    return settings_updates(saved, extras["inputs"], extras["loras"], Path(path).name, lora_folder)


def settings_updates(
    saved: dict[str, Any], inputs: dict[str, Any], loras: list[dict[str, Any]], name: str, lora_folder: Path | None
) -> tuple[Any, ...]:
    """Updates for the settings controls (then the status line) from a job's settings, what its record says of
    its images (`inputs`) and its LoRAs (name and weight); `name` names the job in the message."""
    try:
        settings = Settings.from_dict(saved)
    except SettingsError as exc:
        return (*(gr.skip() for _ in PAGE_SETTINGS), error_message(f"{name}: {exc}"))
    keyframes = inputs.get("keyframes") or []
    start = inputs.get("image") or {}
    values = {
        **settings.to_dict(),
        "prompt": settings.prompt_text,
        "keyframe_times": ", ".join(f"{k['seconds']:g}" for k in keyframes),
        "blank_start": start.get("blank", gr.skip()),
        "loras": [lora["name"] for lora in loras],
        "lora_weights": ", ".join(f"{lora['name']}={lora['weight']:g}" for lora in loras),
    }
    available = set(list_loras(lora_folder)) if lora_folder is not None else set()
    if missing := [lora["name"] for lora in loras if lora["name"] not in available]:
        values["loras"] = gr.skip()
        values["lora_weights"] = gr.skip()
    wanted = [f"the start image {start['name']}" if "name" in start else "the start image"]
    if inputs.get("end_image"):
        wanted.append(f"the end image {inputs['end_image']['name']}")
    wanted += [f"keyframe {k['name']} ({k['seconds']:g} s)" for k in keyframes]
    message = f"Loaded the settings of {name}; add {', '.join(wanted)} and press Start."
    if loras and missing:
        message += f" Its LoRAs are not all in the LoRA folder ({', '.join(missing)}): choose them again."
    return (*(values.get(name, gr.skip()) for name in PAGE_SETTINGS), message)


def list_loras(folder: Path | None) -> list[str]:
    """The LoRA files (.safetensors) in the app's LoRA folder, by name."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors" and p.is_file())


def lora_specs(folder: Path | None, names: list[str] | None, weights: str | None) -> tuple[LoraSpec, ...]:
    """The chosen LoRAs of the LoRA folder with their weights: "0.7, 0.4" in the order chosen, or by name
    ("a.safetensors=0.7, b.safetensors=0.4", as the page writes them); a LoRA without one gets 1."""
    names = list(names or [])
    available = list_loras(folder)
    for name in names:
        if name not in available:  # only names listed in the folder: nothing outside it can be reached
            raise SettingsError("loras", f"there is no LoRA named {name!r} in the LoRA folder")
    by_name = lora_weights_by_name(weights, names)
    return tuple(LoraSpec(folder / name, by_name.get(name, 1.0)) for name in names)


def lora_weights_by_name(text: str | None, names: list[str]) -> dict[str, float]:
    """The weights text as {name: weight}: pairs "name=weight", or numbers in the order of `names`."""
    if "=" not in (text or ""):
        values = parse_numbers(text, "lora_weights")
        if values and len(values) != len(names):
            raise SettingsError("lora_weights", f"give one weight per LoRA: {len(names)} LoRA(s), {len(values)} weight(s)")
        return dict(zip(names, values))
    weights = {}
    for part in (text or "").split(","):
        name, _, value = part.strip().rpartition("=")
        if part.strip():
            weights[name.strip()] = (parse_numbers(value, "lora_weights") or [1.0])[0]
    return weights


def job_inputs_of(
    image: Any, end_image: Any, keyframes: Any, keyframe_times: str, blank_start: str, loras: tuple[LoraSpec, ...] = ()
) -> JobInputs:
    """The job's images from the page's raw payloads, read into memory; keyframes pair with their times in order."""
    files = [image_path(item) for item in (keyframes or [])]
    times = parse_times(keyframe_times, len(files))
    pairs = [Keyframe(seconds, path) for seconds, path in zip(times, files)]
    return JobInputs(image_path(image), image_path(end_image), pairs, blank_start or "grey", loras=loras).load()


def parse_numbers(text: str | None, field_name: str) -> list[float]:
    """Numbers from "1.2, 2.4s" (a trailing "s" for seconds is allowed)."""
    numbers = []
    for part in (text or "").replace(";", ",").split(","):
        if part.strip():
            try:
                numbers.append(float(part.strip().removesuffix("s")))
            except ValueError:
                raise SettingsError(field_name, f"{part.strip()!r} is not a number") from None
    return numbers


def parse_times(text: str | None, count: int) -> list[float]:
    """`count` times in seconds from "1.2, 2.4s" (one per keyframe image)."""
    times = parse_numbers(text, "keyframe_times")
    if len(times) != count:
        raise SettingsError("keyframe_times", f"give one time per keyframe image: {count} image(s), {len(times)} time(s)")
    return times


def section_timeline(
    variant: str, prompt: str, total_second_length: float, latent_window_size: int, keyframes: Any = None,
    keyframe_times: str = "", end_image: Any = None,
) -> str:  # fmt: skip
    """The page's timeline of the sections before Start: each one's time range, prompt and start-slot image."""
    try:
        settings = Settings(variant=variant, prompt=prompt, total_second_length=total_second_length,
                            latent_window_size=latent_window_size)  # fmt: skip
        names = [Path(image_path(item) or "").name for item in (keyframes or [])]
        keyed = sorted(zip(parse_times(keyframe_times, len(names)), names))
        has_end = image_path(end_image) is not None
        rows = describe_schedule(plan_schedule(settings, [seconds for seconds, _ in keyed], has_end), settings, has_end)
    except SettingsError as exc:
        return error_message(str(exc))
    for row in rows:  # name the keyframe images
        if row["start_slot"].startswith("keyframe "):
            row["start_slot"] += f" ({keyed[int(row['start_slot'].split()[1]) - 1][1]})"
    return "**Sections, in time order**\n\n" + "\n".join(f"- {line}" for line in timeline(rows))


def image_path(value: Any) -> str | None:
    """The uploaded file's path from the Image component's raw payload (a FileData dict) or a plain path."""
    if isinstance(value, dict):
        return value.get("path")
    return value or None


class PageCopies:
    """The page's own copies of one job's videos, in a folder of Gradio's cache with an unguessable name.

    Gradio serves its cache, never the outputs folder, and hands each path only to the page it answers, so a
    job's video reaches its owner's page and no one else's. Each version gets a folder of its own (the video
    is rewritten after every section); a hard link costs nothing where the cache shares the disk.
    """

    def __init__(self, cache_dir: str | Path):
        self.folder = Path(cache_dir) / f"framepack-{secrets.token_urlsafe(24)}"
        self.count = 0

    def __call__(self, video: Path) -> str:
        self.count += 1
        target = self.folder / str(self.count) / video.name
        target.parent.mkdir(parents=True)
        try:
            os.link(video, target)  # the outputs are replaced, never changed in place: a link is a snapshot
        except OSError:
            shutil.copyfile(video, target)
        return str(target)


def build_app(
    worker: Worker,
    variant: str,
    job_options: dict[str, Any] | None = None,
    identity: str = "local",
    lora_folder: Path | None = None,
) -> gr.Blocks:
    """The page: inputs and settings on the left, the live preview, progress and growing video on the right.

    `job_options` are settings fixed for the app's lifetime (e.g. the step cache method), given as flags.
    `identity` says who owns a job: "login" (the user logged in with `--auth`), "session" (each browser
    session: the app is open to others without logins) or "local" (the one person at this machine).
    `lora_folder` holds the LoRA files the page offers.
    """
    title = TITLES[variant]
    job_options = job_options or {}

    def owner_of(request: gr.Request | None) -> str:
        if request is None or identity == "local":
            return LOCAL_USER
        if identity == "login":
            return f"user:{request.username}"
        return f"session:{request.session_hash}"

    def session_of(request: gr.Request | None) -> str | None:
        return request.session_hash if request else None

    def generate(
        session: Session,
        input_image: Any = None,
        prompt: str = DEFAULTS.prompt,
        negative_prompt: str = DEFAULTS.negative_prompt,
        seed: int = DEFAULTS.seed,
        total_second_length: float = DEFAULTS.total_second_length,
        resolution: int = DEFAULTS.resolution,
        latent_window_size: int = DEFAULTS.latent_window_size,
        steps: int = DEFAULTS.steps,
        cfg: float = DEFAULTS.cfg,
        distilled_cfg: float = DEFAULTS.distilled_cfg,
        cfg_rescale: float = DEFAULTS.cfg_rescale,
        gpu_memory_preservation: float = DEFAULTS.gpu_memory_preservation,
        use_teacache: bool = DEFAULTS.use_teacache,
        mp4_crf: int = DEFAULTS.mp4_crf,
        end_image: Any = None,
        end_strength: float = DEFAULTS.end_strength,
        keyframes: Any = None,
        keyframe_times: str = "",
        blank_start: str = "grey",
        prompt_blend_sections: int = DEFAULTS.prompt_blend_sections,
        loras: list[str] | None = None,
        lora_weights: str = "",
        request: gr.Request | None = None,
    ) -> Iterator[Updates]:
        """Generate a video from an image and a prompt; streams (preview, progress, frames, video, status).

        The prompt may hold timed prompts ("[2.4s: he turns around]"); `keyframes` are images with one time
        each in `keyframe_times` ("1.2, 2.4"); without an image the video starts from a `blank_start` frame.
        `loras` are file names in the app's LoRA folder, `lora_weights` their weights ("0.7, 0.4"; none: 1).
        """
        fields = {name: value for name, value in locals().items() if name in SETTING_NAMES}  # the parameters
        yield from start(session, request, fields, input_image, None, end_image, keyframes, keyframe_times, blank_start,
                         loras, lora_weights)  # fmt: skip

    def extend(
        session: Session,
        video: Any = None,
        prompt: str = DEFAULTS.prompt,
        negative_prompt: str = DEFAULTS.negative_prompt,
        seed: int = DEFAULTS.seed,
        total_second_length: float = DEFAULTS.total_second_length,
        resolution: int = DEFAULTS.resolution,
        latent_window_size: int = DEFAULTS.latent_window_size,
        steps: int = DEFAULTS.steps,
        cfg: float = DEFAULTS.cfg,
        distilled_cfg: float = DEFAULTS.distilled_cfg,
        cfg_rescale: float = DEFAULTS.cfg_rescale,
        gpu_memory_preservation: float = DEFAULTS.gpu_memory_preservation,
        use_teacache: bool = DEFAULTS.use_teacache,
        mp4_crf: int = DEFAULTS.mp4_crf,
        end_image: Any = None,
        end_strength: float = DEFAULTS.end_strength,
        keyframes: Any = None,
        keyframe_times: str = "",
        prompt_blend_sections: int = DEFAULTS.prompt_blend_sections,
        loras: list[str] | None = None,
        lora_weights: str = "",
        request: gr.Request | None = None,
    ) -> Iterator[Updates]:
        """Make a video longer by `total_second_length` seconds: its frames first, then the new ones (any
        container, codec, size and frame rate); the other parameters are `generate`'s. Streams like `generate`."""
        fields = {name: value for name, value in locals().items() if name in SETTING_NAMES}  # the parameters
        if image_path(video) is None:
            message = "no video: upload the video to extend first"
            yield gr.skip(), progress_html(0, "Not started"), gr.skip(), gr.skip(), error_message(message)
            return
        yield from start(session, request, fields, None, video, end_image, keyframes, keyframe_times, "grey", loras,
                         lora_weights)  # fmt: skip

    def start(
        session: Session, request: gr.Request | None, fields: dict[str, Any], image: Any, video: Any, end_image: Any,
        keyframes: Any, keyframe_times: str, blank_start: str, loras: list[str] | None, lora_weights: str,
    ) -> Iterator[Updates]:  # fmt: skip
        """Check a page's job and queue it: a new video, or (`video`) the extension of one."""
        try:
            settings, inputs = checked_job(fields, image, video, end_image, keyframes, keyframe_times, blank_start,
                                           loras, lora_weights)  # fmt: skip
        except (SettingsError, ImageError, VideoInputError) as exc:
            gr.Warning(str(exc))
            yield gr.skip(), progress_html(0, "Not started"), gr.skip(), gr.skip(), error_message(str(exc))
            return
        owner, tab = owner_of(request), session_of(request)
        if video is None:
            yield from queue_or_follow(session, lambda live: worker.submit(settings, inputs, owner, tab, live))
        else:
            video_file = Path(image_path(video))
            yield from queue_or_follow(session, lambda live: worker.submit_extension(settings, video_file, inputs, owner, tab, live))

    def resume(
        session: Session,
        previous: Any = None,
        add_seconds: float = 0,
        add_prompt: str = "",
        request: gr.Request | None = None,
    ) -> Iterator[Updates]:
        """Finish a stopped job of this app, named by its video or record, or make a finished F1 video
        `add_seconds` longer (with timed prompts for the added seconds in `add_prompt`); streams like `generate`."""
        path = image_path(previous)
        if path is None:
            message = "no job to resume: drop the video (.mp4) or record (.json) of a stopped job first"
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), error_message(message)
            return
        # The file's name says which job is meant; whether the caller may touch it is the job record's say.
        owner, tab, name = owner_of(request), session_of(request), job_name(path)
        seconds, prompt = float(add_seconds or 0), add_prompt or ""
        yield from queue_or_follow(session, lambda live: worker.submit_resume(name, owner, tab, seconds, prompt, live))

    def branch(
        session: Session,
        previous: Any = None,
        keep_sections: int = 1,
        seed: int = DEFAULTS.seed,
        prompt: str = "",
        request: gr.Request | None = None,
    ) -> Iterator[Updates]:
        """A new job that keeps the first `keep_sections` sections of a previous job of yours (its video or
        record) and redoes the rest with `seed` and `prompt` (empty: the job's own); streams like `generate`."""
        path = image_path(previous)
        if path is None:
            message = "no job to branch from: drop the video (.mp4) or record (.json) of a job first"
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), error_message(message)
            return
        changes: dict[str, Any] = {"seed": seed}
        if prompt and prompt.strip():
            changes["prompt"] = prompt
        try:
            keep = int(keep_sections)
            if keep != float(keep_sections):
                raise ValueError
        except (TypeError, ValueError):
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), error_message("keep_sections: give a whole number of sections")
            return
        owner, tab, name = owner_of(request), session_of(request), job_name(path)
        yield from queue_or_follow(session, lambda live: worker.submit_branch(name, keep, changes, owner, tab, live))

    def checked_job(
        fields: dict[str, Any], image: Any, video: Any, end_image: Any, keyframes: Any, keyframe_times: str,
        blank_start: str, loras: list[str] | None, lora_weights: str,
    ) -> tuple[Settings, JobInputs]:  # fmt: skip
        """A job's settings and inputs from the page's or the API's values, every image read and every control
        checked; raises SettingsError, ImageError or VideoInputError."""
        settings = Settings(variant=variant, **fields, **job_options)
        chosen = lora_specs(lora_folder, loras, lora_weights)
        inputs = job_inputs_of(image, end_image, keyframes, keyframe_times, blank_start, chosen)
        if video is None:
            images = prepare_images(inputs, settings)  # read once, now: an upload may be gone when the job runs
            plan_schedule(settings, images.keyframe_times, images.end is not None)
        else:
            plan_schedule(settings, [k.seconds for k in inputs.keyframes], inputs.end_image is not None)
            check_video(image_path(video))
        return settings, inputs

    def queue_or_follow(session: Session, submit: Callable[[bool], Job]) -> Iterator[Updates]:
        """Start a job and stream it; from a page while the GPU is busy, queue it instead and say so (the
        page stays free, and the job runs even if the page is closed)."""
        if not (session.page and worker.busy()):
            yield from follow(session, submit(True))
            return
        job = submit(False)
        if job.refused:
            message = next(job.events()).message
            gr.Warning(message)
            yield gr.skip(), progress_html(0, "Not started"), gr.skip(), gr.skip(), error_message(message)
            return
        text = f"Queued as job `{job.id}`: it runs when the GPU is free, even if you close this page. See the Queue tab."
        yield gr.skip(), progress_html(0, "Queued"), gr.skip(), gr.skip(), text

    def follow(session: Session, job: Job) -> Iterator[Updates]:
        """Page updates from a job's events; the job stops when the stream ends for any reason."""
        session.jobs.append(job)
        copies = PageCopies(demo.GRADIO_CACHE)
        try:
            yield None, progress_html(0, "Starting"), frames_line(0), None, "Starting"
            for event in job.events():
                if isinstance(event, Error):
                    gr.Warning(event.message)  # a toast too, in case the status line is scrolled away
                yield event_updates(event, copies)
        finally:
            # Also runs when Gradio closes the generator: a closed tab or a cancelled API call.
            job.cancel()
            session.jobs.remove(job)

    def stop(session: Session) -> None:
        """Stop the calling session's job after its current step; the finished sections stay playable."""
        session.stop()

    def on_unload(request: gr.Request) -> None:
        # A closed tab stops its job at once, even one still waiting in line for the GPU.
        worker.cancel_session(request.session_hash)

    def list_jobs(request: gr.Request) -> list[dict[str, Any]]:
        """The caller's previous jobs in the outputs folder, newest first (nobody else's)."""
        return worker.jobs_of(owner_of(request))

    def queue_owner(request: gr.Request | None) -> str | None:
        """Whose jobs the caller sees and controls in the queue: their own, or all for the person at the machine."""
        return None if identity == "local" else owner_of(request)

    def queue_add(*args: Any, **kwargs: Any) -> str:
        """Queue a job with `/generate`'s parameters and return its id at once; it runs when a worker is free,
        whether or not anyone follows it (see `/queue_list`)."""
        call = inspect.signature(generate).bind(*args, **kwargs)
        call.apply_defaults()
        values, request = dict(call.arguments), call.arguments["request"]
        fields = {name: value for name, value in values.items() if name in SETTING_NAMES}
        try:
            settings, inputs = checked_job(fields, values["input_image"], None, values["end_image"], values["keyframes"],
                                           values["keyframe_times"], values["blank_start"], values["loras"],
                                           values["lora_weights"])  # fmt: skip
        except (SettingsError, ImageError) as exc:
            raise gr.Error(str(exc)) from None
        job = worker.submit(settings, inputs, owner_of(request), None, follow=False)
        if job.refused:
            raise gr.Error(next(job.events()).message)
        return job.id

    queue_add.__signature__ = inspect.signature(generate).replace(return_annotation=str)  # as Gradio reads it
    queue_add.__annotations__ = {**generate.__annotations__, "return": "str"}

    def queue_list(request: gr.Request) -> list[dict[str, Any]]:
        """The queue as the caller may see it (their own jobs; everyone's for the person at the machine):
        running, waiting in line order, then ended jobs, newest first."""
        return [queue_entry(job) for job in worker.list_jobs(queue_owner(request))]

    def queue_cancel(job_id: str, request: gr.Request) -> str:
        """Stop one of your jobs: a waiting one at once, a running one after its current step."""
        if not worker.cancel_job(str(job_id), queue_owner(request)):
            raise gr.Error(f"you have no waiting or running job {job_id!r}")
        return f"{job_id}: stopping"

    def queue_retry(job_id: str, request: gr.Request) -> str:
        """Queue a stopped or failed job of yours again; it goes on from its last finished section."""
        if not worker.retry(str(job_id), queue_owner(request)):
            raise gr.Error(f"you have no stopped or failed job {job_id!r}")
        return f"{job_id}: queued again"

    def queue_view(chosen: str | None, request: gr.Request) -> tuple[Any, Any]:
        """The Queue tab's table and job list, refreshed by its timer."""
        jobs = worker.list_jobs(queue_owner(request))
        rows = [queue_row(job) for job in jobs]
        choices = [(f"{job.id} · {row[5][:40]}", job.id) for job, row in zip(jobs, rows)]
        value = chosen if any(job.id == chosen for job in jobs) else (jobs[0].id if jobs else None)
        return gr.update(value=rows), gr.update(choices=choices, value=value)

    def queue_action(action: str, job_id: str | None, request: gr.Request) -> str:
        """One of the Queue tab's buttons on the chosen job; the status line says what happened."""
        if not job_id:
            return "Choose a job first."
        owner = queue_owner(request)
        done = {
            "up": lambda: worker.move(job_id, -1, owner),
            "down": lambda: worker.move(job_id, 1, owner),
            "cancel": lambda: worker.cancel_job(job_id, owner),
            "retry": lambda: worker.retry(job_id, owner),
            "delete": lambda: worker.delete(job_id, owner),
        }[action]()
        if done:
            return {"up": "Moved up.", "down": "Moved down.", "cancel": "Stopping it.", "retry": "Queued again.",
                    "delete": "Deleted, with its files."}[action] + f" (`{job_id}`)"  # fmt: skip
        return {"up": "Only a waiting job moves.", "down": "Only a waiting job moves.", "cancel": "It has ended already.",
                "retry": "Only a stopped or failed job can run again.",
                "delete": "Stop it first: a waiting or running job is not deleted."}[action]  # fmt: skip

    def queue_button(action: str) -> Callable[[str | None, gr.Request], str]:
        def on_click(job_id: str | None, request: gr.Request) -> str:
            return queue_action(action, job_id, request)

        return on_click

    def queue_job_of(job_id: str | None, request: gr.Request | None) -> QueuedJob | None:
        job = worker.store.get(job_id) if job_id else None
        owner = queue_owner(request)
        return job if job is not None and (owner is None or job.owner == owner) else None

    def queue_video(job_id: str | None, request: gr.Request) -> tuple[Any, str]:
        job = queue_job_of(job_id, request)
        if job is None or not job.video or not (worker.output_dir / job.video).is_file():
            return gr.skip(), "That job has no video yet."
        return PageCopies(demo.GRADIO_CACHE)(worker.output_dir / job.video), f"The video of `{job.id}`."

    def queue_settings(job_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        job = queue_job_of(job_id, request)
        if job is None or not job.spec.settings:
            skip_all = tuple(gr.skip() for _ in PAGE_SETTINGS)
            what = "Choose a job first." if job is None else f"`{job.id}` goes on from `{job.spec.source}`: load that job's record."
            return (*skip_all, what)
        loras = [{"name": Path(path).name, "weight": weight} for path, weight in job.spec.loras]
        record = job.spec.options.get("record") or {}
        return settings_updates(job.spec.settings, record, loras, f"job {job.id}", lora_folder)

    with gr.Blocks(title=title, delete_cache=TEMP_CACHE_PRUNING) as demo:
        session = gr.State(Session())  # deep-copied for every new session
        gr.Markdown(f"# {title}\nTurn one image into a video, section by section. The video grows as sections finish.")
        with gr.Tabs():
            with gr.Tab("Generate", elem_id="fp-generate-tab"):
                with gr.Row():
                    with gr.Column():
                        with gr.Tabs():
                            with gr.Tab("Start image"):
                                image_input = gr.Image(
                                    sources=["upload"], type="filepath", label="Start image", height=320, elem_id="fp-image"
                                )
                            with gr.Tab("Extend a video"):
                                video_input = gr.Video(
                                    sources=["upload"], label="Video to continue (its frames come first)", height=320,
                                    elem_id="fp-extend-video",
                                )  # fmt: skip
                                extend_button = gr.Button(
                                    "Extend this video by the video length below", variant="primary", elem_id="fp-extend"
                                )
                        prompt_input = gr.Textbox(
                            label="Prompt", value=DEFAULTS.prompt, lines=2, elem_id="fp-prompt",
                            info='Prompts that change over time: "a man on a beach [0s: he waves] [2.4s: he turns around]"',
                        )  # fmt: skip
                        examples = gr.Dataset(
                            samples=[[p] for p in EXAMPLE_PROMPTS], components=[prompt_input], label="Example prompts (click one)"
                        )
                        with gr.Accordion("End frame and keyframes", open=False):
                            with gr.Row():
                                end_input = gr.Image(
                                    sources=["upload"], type="filepath", label="End image (the video's last frame)", height=200,
                                    elem_id="fp-end-image", visible=variant == "original",
                                )  # fmt: skip
                                keyframes_input = gr.File(
                                    label="Keyframe images", file_count="multiple", file_types=["image"], type="filepath",
                                    elem_id="fp-keyframes",
                                )  # fmt: skip
                            end_strength_input = gr.Slider(
                                0, 1, DEFAULTS.end_strength, step=0.01, label="End frame strength", visible=variant == "original"
                            )
                            keyframe_times_input = gr.Textbox(
                                "", label="Keyframe times (seconds, one per image, in the order of the images)", placeholder="1.2, 2.4",
                                elem_id="fp-keyframe-times",
                                info="From its time on, a keyframe takes the start image's place as each section's anchor.",
                            )  # fmt: skip
                        with gr.Accordion("LoRA", open=False):
                            lora_input = gr.CheckboxGroup(
                                list_loras(lora_folder), label="LoRAs (from the LoRA folder)", elem_id="fp-loras",
                                info="Several at once; each gets a weight below (0 turns one off).",
                            )  # fmt: skip
                            lora_weights_input = gr.Textbox("", visible=False, elem_id="fp-lora-weights")
                            refresh_button = gr.Button("Refresh the LoRA list", size="sm")

                            @gr.render(inputs=[lora_input, lora_weights_input], triggers=[lora_input.change])
                            def weight_sliders(chosen: list[str] | None, weights: str) -> None:
                                """A weight slider for each chosen LoRA; the hidden weights box keeps them by name."""
                                chosen = list(chosen or [])
                                try:
                                    known = lora_weights_by_name(weights, chosen)
                                except SettingsError:
                                    known = {}
                                sliders = [
                                    gr.Slider(-1, 2, known.get(name, 1.0), step=0.05, label=f"Weight of {name}", interactive=True,
                                              elem_id=f"fp-lora-weight-{k}")  # fmt: skip
                                    for k, name in enumerate(chosen)
                                ]
                                for slider in sliders:
                                    slider.change(
                                        lambda *values: ", ".join(f"{n}={v:g}" for n, v in zip(chosen, values)), sliders,
                                        lora_weights_input, queue=False, api_visibility="private",
                                    )  # fmt: skip

                        timeline_output = gr.Markdown(
                            section_timeline(variant, DEFAULTS.prompt, DEFAULTS.total_second_length, DEFAULTS.latent_window_size),
                            elem_id="fp-timeline",
                        )
                        with gr.Row():
                            start_button = gr.Button("Start Generation", variant="primary", elem_id="fp-start")
                            end_button = gr.Button("End Generation", interactive=False, elem_id="fp-end")
                        with gr.Group():
                            teacache_input = gr.Checkbox(
                                value=DEFAULTS.use_teacache,
                                label=f"Use {CACHE_LABELS[(job_options or {}).get('cache_method', DEFAULTS.cache_method)]}",
                                info="Faster, but hands and fingers may get slightly worse.",
                            )
                            seed_input = gr.Number(value=DEFAULTS.seed, label="Seed", precision=0)
                            length_input = gr.Slider(
                                1, MAX_SECONDS, DEFAULTS.total_second_length, step=0.1,
                                label="Total video length (seconds)", elem_id="fp-length",
                            )  # fmt: skip
                            resolution_input = gr.Slider(
                                128, 960, DEFAULTS.resolution, step=16,
                                label="Resolution (bucket target)", elem_id="fp-resolution",
                            )  # fmt: skip
                            steps_input = gr.Slider(
                                1, 100, DEFAULTS.steps, step=1, label="Steps",
                                info="Changing this is not recommended.", elem_id="fp-steps",
                            )  # fmt: skip
                            distilled_input = gr.Slider(
                                1, 32, DEFAULTS.distilled_cfg, step=0.01, label="Distilled CFG scale",
                                info="Changing this is not recommended.",
                            )  # fmt: skip
                        with gr.Accordion("Advanced", open=False):
                            negative_input = gr.Textbox(
                                value=DEFAULTS.negative_prompt, label="Negative prompt", info="Used only when CFG scale > 1."
                            )
                            cfg_input = gr.Slider(1, 32, DEFAULTS.cfg, step=0.01, label="CFG scale")
                            rescale_input = gr.Slider(0, 1, DEFAULTS.cfg_rescale, step=0.01, label="CFG re-scale")
                            window_input = gr.Slider(
                                1, 33, DEFAULTS.latent_window_size, step=1, label="Latent window size", elem_id="fp-window",
                                info="Frames per section = 4 × window − 3. Changing this is not recommended.",
                            )  # fmt: skip
                            memory_input = gr.Slider(
                                0, 128, DEFAULTS.gpu_memory_preservation, step=0.1, label="GPU memory to preserve (GB)",
                                info="Raise it if you run out of memory; larger is slower.",
                            )  # fmt: skip
                            crf_input = gr.Slider(
                                0, 51, DEFAULTS.mp4_crf, step=1, label="MP4 compression (CRF)",
                                info="0 is lossless; lower means better quality and larger files.",
                            )  # fmt: skip
                            blend_input = gr.Slider(
                                0, 8, DEFAULTS.prompt_blend_sections, step=1, label="Prompt fade (sections)",
                                info="A new timed prompt fades in over this many sections; 0 switches at once.",
                            )  # fmt: skip
                            blank_input = gr.Radio(
                                list(BLANK_STARTS), value="grey", label="Without a start image, start from",
                                info="Text to video: the first frame is blank.",
                            )  # fmt: skip
                        with gr.Accordion("Previous output: load its settings, or resume it", open=False):
                            previous_input = gr.File(
                                label="Drop a FramePack video (.mp4) or its record (.json)", file_types=[".mp4", ".json"],
                                type="filepath", elem_id="fp-previous",
                            )  # fmt: skip
                            add_seconds_input = gr.Number(
                                value=0, minimum=0, maximum=MAX_SECONDS, label="Seconds to add (finished FramePack-F1 videos)",
                                info="0 finishes a stopped job; more makes a finished F1 video longer.",
                            )  # fmt: skip
                            add_prompt_input = gr.Textbox(
                                "", label="Prompts for the added seconds (optional)", placeholder="[6s: he sits down]",
                                visible=variant == "f1",
                            )
                            resume_button = gr.Button("Resume this job", elem_id="fp-resume")
                            with gr.Row():
                                keep_input = gr.Number(
                                    value=1, minimum=1, precision=0, label="Sections to keep", elem_id="fp-keep",
                                    info="Counted as the progress bar counts them; the seed and prompt above apply to the rest.",
                                )  # fmt: skip
                                branch_button = gr.Button("Keep the first K sections and redo the rest", elem_id="fp-branch")
                    with gr.Column():
                        preview_output = gr.Image(label="Latent preview", interactive=False, height=200, elem_id="fp-preview")
                        progress_output = gr.HTML(progress_html(0, "Idle"), label="Progress", elem_id="fp-progress")
                        info_output = gr.Markdown(frames_line(0), label="Frames", elem_id="fp-info")
                        video_output = gr.Video(
                            label="Video", autoplay=True, loop=True, interactive=False, height=512, elem_id="fp-video"
                        )
                        message_output = gr.Markdown("", label="Status", elem_id="fp-message")
            with gr.Tab("Queue", elem_id="fp-queue-tab"):
                gr.Markdown(
                    "Every job waits here until a worker is free, and the queue outlives the app: after a restart "
                    "waiting jobs wait and an interrupted one goes on from its last finished section."
                )
                queue_table = gr.Dataframe(
                    headers=QUEUE_COLUMNS, value=[], interactive=False, wrap=True, elem_id="fp-queue",
                    label="Jobs: running, waiting in line order, then ended",
                )  # fmt: skip
                with gr.Row():
                    queue_choice = gr.Dropdown(choices=[], label="Job", elem_id="fp-queue-job", scale=2)
                    up_button = gr.Button("Move up", size="sm", elem_id="fp-queue-up")
                    down_button = gr.Button("Move down", size="sm", elem_id="fp-queue-down")
                    cancel_button = gr.Button("Cancel", size="sm", elem_id="fp-queue-cancel")
                    retry_button = gr.Button("Retry", size="sm", elem_id="fp-queue-retry")
                    delete_button = gr.Button("Delete", size="sm", variant="stop", elem_id="fp-queue-delete")
                with gr.Row():
                    open_button = gr.Button("Open its video", size="sm", elem_id="fp-queue-open")
                    load_button = gr.Button("Load its settings", size="sm", elem_id="fp-queue-load")
                queue_message = gr.Markdown("", elem_id="fp-queue-message")
                queue_video_output = gr.Video(label="Video of the chosen job", interactive=False, elem_id="fp-queue-video")
                # Gradio's own timer refreshes the view; nothing on the server polls.
                queue_timer = gr.Timer(QUEUE_REFRESH_SECONDS)

        job_inputs = [
            session, image_input, prompt_input, negative_input, seed_input, length_input, resolution_input, window_input,
            steps_input, cfg_input, distilled_input, rescale_input, memory_input, teacache_input, crf_input, end_input,
            end_strength_input, keyframes_input, keyframe_times_input, blank_input, blend_input, lora_input,
            lora_weights_input,
        ]  # fmt: skip
        # The controls a previous output's settings fill in, in PAGE_SETTINGS' order (images are added by hand).
        settings_inputs = [c for c in job_inputs[2:] if c not in (end_input, keyframes_input)]
        job_outputs = [preview_output, progress_output, info_output, video_output, message_output]
        buttons = [start_button, end_button]
        busy = (gr.update(interactive=False), gr.update(interactive=True))
        idle = (gr.update(interactive=True), gr.update(interactive=False))

        examples.click(lambda sample: sample[0], [examples], [prompt_input], queue=False, api_visibility="private")
        previous_input.upload(
            partial(previous_settings, lora_folder=lora_folder), [previous_input], [*settings_inputs, message_output],
            queue=False, api_visibility="private",
        )  # fmt: skip
        refresh_button.click(
            lambda: gr.update(choices=list_loras(lora_folder)), None, lora_input, queue=False, api_visibility="private"
        )
        timeline_inputs = [prompt_input, length_input, window_input, keyframes_input, keyframe_times_input, end_input]
        gr.on(
            [component.change for component in timeline_inputs],
            partial(section_timeline, variant),
            timeline_inputs,
            timeline_output,
            queue=False,
            api_visibility="private",
        )
        start_button.click(lambda: busy, None, buttons, queue=False, api_visibility="private").then(
            generate,
            job_inputs,
            job_outputs,
            api_name="generate",
            concurrency_limit=MAX_ACTIVE_REQUESTS,
            # `generate` gets the raw image payload, so an unreadable file gets our message, not a Gradio error.
            preprocess=False,
            show_progress="hidden",
        ).then(lambda: idle, None, buttons, queue=False, api_visibility="private")
        # Outside the queue: End works however many jobs wait in line.
        end_button.click(stop, [session], None, api_name="stop", queue=False)
        resume_button.click(lambda: busy, None, buttons, queue=False, api_visibility="private").then(
            resume,
            [session, previous_input, add_seconds_input, add_prompt_input],
            job_outputs,
            api_name="resume",
            concurrency_limit=MAX_ACTIVE_REQUESTS,
            preprocess=False,
            show_progress="hidden",
        ).then(lambda: idle, None, buttons, queue=False, api_visibility="private")
        extend_button.click(lambda: busy, None, buttons, queue=False, api_visibility="private").then(
            extend,
            [session, video_input, *[c for c in job_inputs[2:] if c is not blank_input]],
            job_outputs,
            api_name="extend",
            concurrency_limit=MAX_ACTIVE_REQUESTS,
            preprocess=False,
            show_progress="hidden",
        ).then(lambda: idle, None, buttons, queue=False, api_visibility="private")
        branch_button.click(lambda: busy, None, buttons, queue=False, api_visibility="private").then(
            branch,
            [session, previous_input, keep_input, seed_input, prompt_input],
            job_outputs,
            api_name="branch",
            concurrency_limit=MAX_ACTIVE_REQUESTS,
            preprocess=False,
            show_progress="hidden",
        ).then(lambda: idle, None, buttons, queue=False, api_visibility="private")
        demo.unload(on_unload)
        demo.load(mark_page, [session], [session], queue=False, api_visibility="private")
        gr.api(list_jobs, api_name="jobs", queue=False)
        # The queue: the API's endpoints, and the Queue tab, refreshed by its timer and after each button.
        hidden_queue_button = gr.Button(visible=False)
        hidden_queue_button.click(queue_add, job_inputs, gr.Textbox(visible=False), api_name="queue_add", preprocess=False)
        gr.api(queue_list, api_name="queue_list", queue=False)
        gr.api(queue_cancel, api_name="queue_cancel", queue=False)
        gr.api(queue_retry, api_name="queue_retry", queue=False)
        refresh = dict(fn=queue_view, inputs=[queue_choice], outputs=[queue_table, queue_choice], queue=False,
                       api_visibility="private")  # fmt: skip
        queue_timer.tick(**refresh)
        for action, button in (("up", up_button), ("down", down_button), ("cancel", cancel_button),
                               ("retry", retry_button)):  # fmt: skip
            button.click(queue_button(action), [queue_choice], [queue_message], queue=False,
                         api_visibility="private").then(**refresh)  # fmt: skip
        delete_button.click(
            queue_button("delete"), [queue_choice], [queue_message], queue=False, api_visibility="private",
            js="(job) => (job && confirm(`Delete job ${job} and its files?`)) ? job : null",
        ).then(**refresh)  # fmt: skip
        open_button.click(queue_video, [queue_choice], [queue_video_output, queue_message], queue=False,
                          api_visibility="private")  # fmt: skip
        load_button.click(queue_settings, [queue_choice], [*settings_inputs, queue_message], queue=False,
                          api_visibility="private")  # fmt: skip
    demo.queue(max_size=64)
    return demo


def parse_credentials(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The `user:password` pairs from `--auth` and the `--auth-file` (one per line, `#` comments)."""
    entries = list(args.auth or [])
    if args.auth_file is not None:
        try:
            lines = Path(args.auth_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read the auth file {args.auth_file}: {exc.strerror}") from None
        entries += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    credentials = []
    for number, entry in enumerate(entries, start=1):
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:  # the entry itself is not echoed: it may hold a password
            raise ValueError(f"credential {number} of {len(entries)} is not of the form user:password")
        credentials.append((user, password))
    return credentials


def parse_args(argv: Sequence[str] | None = None, variant: str = "original") -> argparse.Namespace:
    """The app's command line."""
    parser = argparse.ArgumentParser(description=f"{TITLES[variant]}: image to video, in your browser.")
    add = parser.add_argument
    add("--share", action="store_true", help="also serve through a public gradio.live link")
    add("--server", default="127.0.0.1", metavar="ADDR", help="address to listen on (0.0.0.0: the local network)")
    add("--port", type=int, default=7860, metavar="N", help="port to listen on")
    add("--inbrowser", action="store_true", help="open the page in the default browser")
    add("--models", type=Path, default=None, metavar="DIR", help="local model root laid out like the hub repos")
    add("--outputs", type=Path, default=Path("outputs"), metavar="DIR", help="folder for videos and latents")
    add("--loras", type=Path, default=Path("loras"), metavar="DIR", help="folder of LoRA files the page offers (default ./loras)")
    add("--attention", choices=ATTENTION_CHOICES, default="auto", help="attention backend (default: best installed)")
    add("--compile", action="store_true", help="torch.compile the transformer blocks (slower first section)")
    add("--fp8", action="store_true", help="store the transformer's weights in 8 bits (for GPUs with little memory)")
    add("--fp8-compute", action="store_true",
        help="--fp8, multiplying in fp8 too (faster; GPUs of compute capability 8.9+: RTX 40/50, L4, H100)")  # fmt: skip
    add("--transformer-file", type=Path, metavar="PATH",
        help="a single-file transformer instead of the variant's repo: bf16, fp16 or fp8 .safetensors, or .gguf")  # fmt: skip
    add_worker_options(parser)
    add("--cache-method", choices=CACHE_METHODS, default="teacache", help="the step cache the page's checkbox turns on")
    add("--cache-threshold", type=float, default=None, help=f"its threshold (default {DEFAULT_THRESHOLDS_TEXT})")
    add("--auth", action="append", metavar="USER:PASSWORD", help="require this login (repeatable)")
    add("--auth-file", type=Path, metavar="PATH", help="file of user:password lines (# starts a comment)")
    add("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, metavar="MB", help=f"largest upload (default {MAX_UPLOAD_MB})")
    add("--max-jobs-per-user", type=int, default=MAX_JOBS_PER_OWNER, metavar="N",
        help=f"jobs one user may have waiting or running (default {MAX_JOBS_PER_OWNER})")  # fmt: skip
    args = parser.parse_args(argv)
    if args.max_upload_mb <= 0 or args.max_jobs_per_user < 1:
        parser.error("--max-upload-mb and --max-jobs-per-user must be positive")
    try:
        args.credentials = parse_credentials(args)
        Settings(cache_threshold=args.cache_threshold)  # refuse a bad flag at start-up, not on the first job
    except ValueError as exc:  # SettingsError is a ValueError
        parser.error(str(exc))
    return args


@dataclass
class App:
    """A built app: the page, its worker and the arguments for `launch`."""

    demo: gr.Blocks
    worker: Worker
    launch_kwargs: dict[str, Any]

    def launch(self, **overrides: Any) -> Any:
        """Start serving (blocks unless `prevent_thread_lock=True`)."""
        return self.demo.launch(**{**self.launch_kwargs, **overrides})

    def close(self) -> None:
        """Stop the server and the worker."""
        self.demo.close()
        self.worker.close(timeout=60)


def create_app(variant: str, args: argparse.Namespace) -> App:
    """Build the worker and the page from parsed arguments; warns when anyone may use the app without a login."""
    outputs = Path(args.outputs).resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    # The same memory check as the CLI's, before anything loads: a plan that does not fit stops the app here.
    devices = [f"cuda:{gpu}" for gpu in args.gpus] if args.gpus else [None] * max(1, args.workers)
    plans = [
        check_before_loading(Settings(variant=variant), fp8=args.fp8, device=device, models_dir=args.models,
                             transformer_file=args.transformer_file, fp8_matmuls=args.fp8_compute)
        for device in devices
    ]  # fmt: skip
    print(plans[0].summary(), file=sys.stderr)
    if tidied := sweep_outputs(outputs):
        logging.getLogger(__name__).info("Removed what interrupted writes left of %d job(s) in the outputs folder", tidied)
    source = ModelSource(models_dir=args.models, transformer_file=args.transformer_file)
    worker = Worker(
        variant, source, outputs, attention=args.attention, compile=args.compile, plans=plans,
        max_jobs_per_owner=args.max_jobs_per_user, ray=args.ray,
    )  # fmt: skip
    public = args.share or args.server not in LOCAL_ADDRESSES
    if public and not args.credentials:
        where = "the link" if args.share else f"access to {args.server}:{args.port}"
        print(
            f"WARNING: {'--share' if args.share else '--server ' + args.server} without --auth or --auth-file: anyone "
            f"with {where} can use this app and your GPU (each browser session sees only its own jobs).",
            file=sys.stderr,
        )
    identity = "login" if args.credentials else "session" if public else "local"
    launch_kwargs = {
        "server_name": args.server,
        "server_port": args.port,
        "share": args.share,
        "inbrowser": args.inbrowser,
        "auth": args.credentials or None,
        # Never served as it is: each page gets copies of its own videos (see PageCopies).
        "blocked_paths": [str(outputs)],
        "max_file_size": int(args.max_upload_mb * 1024 * 1024),
        "css": CSS,
    }
    job_options = {"cache_method": args.cache_method, "cache_threshold": args.cache_threshold}
    lora_folder = Path(args.loras).resolve()
    return App(build_app(worker, variant, job_options, identity, lora_folder), worker, launch_kwargs)


def main(variant: str, argv: Sequence[str] | None = None) -> None:
    """Run the app for `variant` ("original" or "f1") until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(variant, parse_args(argv, variant))
    except (MemoryPlanError, CheckpointError, ModelsMissingError, SettingsError, ClusterError) as exc:
        sys.exit(f"error: {exc}")
    app.launch()
