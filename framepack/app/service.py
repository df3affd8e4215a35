"""What the page and its API do, as plain methods that a test can call without a server: each takes the caller (the
job's `owner`, and the browser `session` following it) and the fields' values, checks them, and hands the job to
the queue's front. Nothing here knows Gradio; `framepack.app.wiring` turns these into handlers."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..controls import (
    JobInputs,
    Keyframe,
    describe_schedule,
    plan_schedule,
    prepare_images,
    timeline,
)
from ..engine.starts import extension_needs
from ..jobs.paths import is_job_name, job_name
from ..jobs.record import RecordError, job_of_file, named_job, settings_of_output
from ..kinds import postprocess_spec
from ..lora import LoraError, LoraSpec, read_lora
from ..media.reading import check_video
from ..memory.sizes import ModelConfigs
from ..models.components import meta_transformer
from ..postprocess import PostprocessError
from ..queue.front import Job, QueueFront
from ..queue.store import QueuedJob, input_folder
from ..settings import Settings, SettingsError
from .board import Board, Shown, record_name
from .fields import LOADABLE, SETTING_NAMES, UPSCALERS, list_loras


@dataclass(frozen=True)
class KeptImages:
    """The images a job was made from, as the queue kept them with it: each a (file, name as given) pair; the
    keyframes with their times, in time order. `job` is the job that kept them (a branch's source keeps its)."""

    job: str
    start: tuple[Path, str] | None = None
    end: tuple[Path, str] | None = None
    keyframes: tuple[tuple[float, Path, str], ...] = ()


@dataclass(frozen=True)
class Loaded:
    """A previous job's settings as the fields' values (those it has; the rest stay as they are), what to tell
    the user, and the job's images to put back in the page's image controls (None: none were found)."""

    values: dict[str, Any]
    message: str
    error: bool = False
    images: KeptImages | None = None


# How many previous outputs' settings are read at once, and how long one more waits for its turn.
SETTINGS_READS_AT_ONCE = 2
SETTINGS_READ_WAIT_SECONDS = 5.0


class AppService:
    """The app's actions over one queue front. `job_options` are settings fixed for the app's lifetime (the step
    cache method); `lora_folder` holds the LoRA files the page offers."""

    def __init__(self, front: QueueFront, variant: str, job_options: dict[str, Any] | None = None,
                 lora_folder: Path | None = None):  # fmt: skip
        self.front, self.variant = front, variant
        self.job_options = job_options or {}
        self.lora_folder = lora_folder
        # Reading a previous output's settings parses a file a user gave: a few at a time, whoever asks.
        self._reading = threading.BoundedSemaphore(SETTINGS_READS_AT_ONCE)
        self._meta_transformer: torch.nn.Module | None = None
        self.board = Board(front.output_dir) if front is not None else None  # thumbnails and estimates

    # --- jobs

    def check_job(self, values: dict[str, Any], video: str | None = None) -> tuple[Settings, JobInputs]:
        """A job's settings and inputs from the fields' values, every image read and every control checked (an upload
        may be gone when the job runs); raises SettingsError, ImageError or VideoInputError."""
        settings = Settings(variant=self.variant, **{k: v for k, v in values.items() if k in SETTING_NAMES}, **self.job_options)
        chosen = lora_specs(self.lora_folder, values.get("loras"), values.get("lora_weights"))
        files = [upload_path(item) for item in (values.get("keyframes") or [])]
        keyframes = [Keyframe(s, path) for s, path in zip(parse_times(values.get("keyframe_times"), len(files)), files)]
        image = None if video is not None else upload_path(values.get("input_image"))
        blank = values.get("blank_start") or "grey"
        inputs = JobInputs(image, upload_path(values.get("end_image")), keyframes, blank, loras=chosen).load()
        if video is None:
            images = prepare_images(inputs, settings)
            plan_schedule(settings, images.keyframe_times, images.end is not None)
        else:
            plan_schedule(settings, [k.seconds for k in inputs.keyframes], inputs.end_image is not None)
            check_video(video, extension_needs(settings))  # at once, on the page (queueing it checks it too)
        return settings, inputs

    def submit(self, owner: str, session: str | None, values: dict[str, Any], follow: bool = True) -> Job:
        """Queue a new video (checked first: raises what `check_job` raises; a user at the limit is turned away before
        any upload is read)."""
        if (refused := self.front.turned_away(owner, session)) is not None:
            return refused
        settings, inputs = self.check_job(values)
        return self.front.submit(settings, inputs, owner, session, follow)

    def extend(self, owner: str, session: str | None, video: str, values: dict[str, Any], follow: bool = True) -> Job:
        """Queue the extension of an uploaded video by the length the fields say."""
        if (refused := self.front.turned_away(owner, session)) is not None:
            return refused
        settings, inputs = self.check_job(values, video)
        return self.front.submit_extension(settings, Path(video), inputs, owner, session, follow)

    def job_of(self, previous: str, owner: str) -> str:
        """The job an uploaded previous output is: what it names, else the owner's job with the same video (see
        `job_of_file`); whether the caller may touch it is still the job record's say."""
        return named_job(previous) if self.front is None else job_of_file(previous, self.front.output_dir, owner)

    def resume(self, owner: str, session: str | None, previous: str, add_seconds: float = 0, add_prompt: str = "",
               follow: bool = True) -> Job:  # fmt: skip
        """Queue the rest of a stopped job, or a longer video of a finished F1 job. The file says which job is meant (its
        metadata, so a renamed copy works; else its name); whether the caller may touch it is the job record's say."""
        seconds = float(add_seconds or 0)
        job = self.job_of(previous, owner)
        return self.front.submit_resume(job, owner, session, seconds, add_prompt or "", follow)

    def branch(self, owner: str, session: str | None, previous: str, keep_sections: Any, seed: int, prompt: str = "",
               follow: bool = True) -> Job:  # fmt: skip
        """Queue a new job that keeps the first `keep_sections` sections of a previous job of the caller's and redoes
        the rest with `seed` and `prompt` (empty: the job's own)."""
        try:
            keep = int(keep_sections)
            if keep != float(keep_sections):
                raise ValueError
        except (TypeError, ValueError):
            raise SettingsError("keep_sections", "give a whole number of sections") from None
        changes: dict[str, Any] = {"seed": seed}
        if prompt and prompt.strip():
            changes["prompt"] = prompt
        return self.front.submit_branch(self.job_of(previous, owner), keep, changes, owner, session, follow)

    def postprocess(self, owner: str, session: str | None, values: dict[str, Any], video: str | None = None,
                    job: str | None = None, follow: bool = True) -> Job:  # fmt: skip
        """Queue the post-processing of an uploaded `video`, or else of the caller's finished `job` (its result goes
        beside the job's video and its record lists it); raises PostprocessError for a bad choice."""
        options = {
            "upscale": None if values.get("upscale") in (None, "", "none") else values["upscale"],
            "scale": float(values["scale"]) if values.get("scale") else None, "interpolate": values.get("interpolate") or 1,
            "color_match": values.get("color_match") or "off", "format": values.get("format") or "mp4",
            "crf": values.get("crf", 16),
        }  # fmt: skip
        if options["upscale"] is not None and options["upscale"] not in UPSCALERS:  # names only: no server file is reached
            raise PostprocessError(f"unknown upscaler {options['upscale']!r}: choose one of {', '.join(UPSCALERS[1:])}")
        if video is None and not job:
            raise PostprocessError("nothing to post-process: make a video first, or upload one")
        if (refused := self.front.turned_away(owner, session)) is not None:
            return refused
        if video is not None:
            check_video(video)
            build = lambda folder: postprocess_spec(options, video=Path(video), keep_in=folder)  # noqa: E731
            return self.front.submit_spec(build, owner, session, follow)
        return self.front.submit_spec(postprocess_spec(options, source=job_name(job)), owner, session, follow)

    def check_loras(self, names: Sequence[str] | None) -> str:
        """Whether the chosen LoRA files fit the model (read now, not when the job runs): '' or what is wrong."""
        try:
            for spec in lora_specs(self.lora_folder, names, None):
                read_lora(spec.path, self._shapes())
        except (LoraError, SettingsError) as exc:
            return str(exc)
        return ""

    def _shapes(self) -> torch.nn.Module:
        """The transformer's architecture on the meta device (no memory), to check LoRA files against; made once."""
        if self._meta_transformer is None:
            models_dir = self.front.source.models_dir if self.front is not None else None
            configs = ModelConfigs.from_folder(models_dir, self.variant) if models_dir else ModelConfigs.published()
            self._meta_transformer = meta_transformer(configs.transformer)
        return self._meta_transformer

    def jobs_of(self, owner: str) -> list[dict[str, object]]:
        return self.front.jobs_of(owner)

    # --- the queue (`viewer` None: the person at the machine, who sees and controls every job)

    def queue(self, viewer: str | None) -> list[QueuedJob]:
        return self.front.list_jobs(viewer)

    def queue_board(self, viewer: str | None) -> tuple[list[QueuedJob], dict[str, Shown]]:
        """The viewer's jobs with what the board shows of each: thumbnail, progress, time left (estimated over the
        whole line: other users' jobs ahead count, without being shown)."""
        jobs = self.front.list_jobs(viewer)
        return jobs, self.board.show(jobs, jobs if viewer is None else self.front.list_jobs())

    def queue_action(self, action: str, job_id: str | None, viewer: str | None) -> str:
        """One of the Queue tab's buttons on a job; what happened, in a line."""
        if not job_id:
            return "Choose a job first."
        if action == "retry":
            problem = self.front.retry(job_id, viewer)
            return problem or f"Queued again. (`{job_id}`)"
        before = self.front.job(job_id, viewer)
        done = {
            "up": lambda: self.front.move(job_id, -1, viewer),
            "down": lambda: self.front.move(job_id, 1, viewer),
            "cancel": lambda: self.front.cancel_job(job_id, viewer),
            "delete": lambda: self.front.delete(job_id, viewer),
        }[action]()
        if done:
            cancelled = "Cancelled: it will not run." if before is not None and before.state == "queued" else "Stopping it."
            said = {"up": "Moved up.", "down": "Moved down.", "cancel": cancelled, "delete": "Deleted, with its files."}
            return f"{said[action]} (`{job_id}`)"
        return {"up": "Only a waiting job moves.", "down": "Only a waiting job moves.", "cancel": "It has ended already.",
                "delete": "Stop it first: a waiting or running job is not deleted."}[action]  # fmt: skip

    def video_of(self, job_id: str | None, viewer: str | None) -> tuple[QueuedJob | None, Path | None]:
        """One of the viewer's jobs (None: not theirs, or no such job) and its video as it is now (None: none yet; a
        running job's grows section by section, a resumed job's is its source's)."""
        job = self.front.job(job_id, viewer) if job_id else None
        if job is None:
            return None, None
        return job, self.board.video(job, self.board.record(record_name(job)))

    # --- settings of earlier jobs

    def settings_of_file(self, path: str, owner: str | None = None) -> Loaded:
        """The fields' values from a previous output's MP4 or record: the prompt with its timed groups, the keyframes'
        times and the LoRAs (those in the LoRA folder) with their weights. The images come back from the copies kept
        with the job when the file names a job of `owner`'s; otherwise they are named, to add."""
        if not self._reading.acquire(timeout=SETTINGS_READ_WAIT_SECONDS):
            return Loaded({}, "Other settings are being read; try again in a moment.", error=True)
        try:
            saved, extras = settings_of_output(path)
        except RecordError as exc:
            return Loaded({}, str(exc), error=True)
        finally:
            self._reading.release()
        kept = self.kept_images(self.job_of(path, owner), owner) if owner is not None else None
        return self.settings_values(saved, extras["inputs"], extras["loras"], Path(path).name, kept)

    def settings_of_job(self, job_id: str | None, viewer: str | None) -> Loaded:
        """The fields' values from a queued job of the viewer's."""
        job = self.front.job(job_id, viewer) if job_id else None
        if job is None:
            return Loaded({}, "Choose a job first.")
        if not job.spec.settings:
            return Loaded({}, f"`{job.id}` goes on from `{job.spec.source}`: load that job's record.")
        loras = [{"name": Path(path).name, "weight": weight} for path, weight in job.spec.loras]
        record = job.spec.options.get("record") or {}
        return self.settings_values(job.spec.settings, record, loras, f"job {job.id}", self.kept_images(job.id, viewer))

    def kept_images(self, job_id: str, viewer: str | None) -> KeptImages | None:
        """The images of one of the viewer's jobs (None: anyone's), from the copies the queue keeps in its input folder;
        a branch or a longer video has its source's. None when there is no such job or it kept no images."""
        seen: set[str] = set()
        job = self.front.job(job_id, viewer) if self.front is not None else None
        while job is not None and job.spec.source and job.id not in seen and not _kept_files(job):
            seen.add(job.id)
            job = self.front.job(job.spec.source, viewer)
        if job is None or not _kept_files(job):
            return None
        folder = input_folder(self.front.output_dir, job.id)
        record = job.spec.options.get("record") or {}

        def kept(key: str, described: Any) -> tuple[Path, str] | None:
            relative = job.spec.files.get(key)
            if not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
                return None  # only the queue's own copies, never a path elsewhere
            name = described.get("name") if isinstance(described, dict) else None
            name = name if isinstance(name, str) and is_job_name(name) else Path(relative).name  # the name the user gave
            return (folder / relative, name) if (folder / relative).is_file() else None

        described = record.get("keyframes") or []
        keyframes = [(t, kept(f"keyframe_{i}", described[i] if i < len(described) else None))
                     for i, t in enumerate(job.spec.keyframe_times)]  # fmt: skip
        return KeptImages(
            job.id, kept("image", record.get("image")), kept("end_image", record.get("end_image")),
            tuple((t, *found) for t, found in keyframes if found is not None) if all(f for _, f in keyframes) else (),
        )  # fmt: skip

    def settings_values(self, saved: dict[str, Any], inputs: dict[str, Any], loras: list[dict[str, Any]], name: str,
                        kept: KeptImages | None = None) -> Loaded:  # fmt: skip
        """The fields' values from a job's settings, what its record says of its images (`inputs`) and its LoRAs
        (name and weight); `name` names the job in the message. `kept`: the job's images, put back where they fit."""
        try:
            settings = Settings.from_dict(saved)
        except SettingsError as exc:
            return Loaded({}, f"{name}: {exc}", error=True)
        keyframes = inputs.get("keyframes") or []
        start = inputs.get("image") or {}
        values = {
            **settings.to_dict(), "prompt": settings.prompt_text,
            "keyframe_times": ", ".join(f"{k['seconds']:g}" for k in keyframes),
            "loras": [lora["name"] for lora in loras],
            "lora_weights": ", ".join(f"{lora['name']}={lora['weight']:g}" for lora in loras),
        }  # fmt: skip
        if "blank" in start:
            values["blank_start"] = start["blank"]
        missing = [lora["name"] for lora in loras if lora["name"] not in set(list_loras(self.lora_folder))]
        if missing:
            del values["loras"], values["lora_weights"]
        if kept is not None and [t for t, _, _ in kept.keyframes] != [k["seconds"] for k in keyframes]:
            kept = replace(kept, keyframes=())  # the record's times are not those of the kept images (a branch's own)
        back = kept or KeptImages("")
        wanted = []
        if back.start is None and (kept is None or "blank" not in start):
            wanted.append(f"the start image {start['name']}" if "name" in start else "the start image")
        if inputs.get("end_image") and back.end is None:
            wanted.append(f"the end image {inputs['end_image']['name']}")
        if not back.keyframes:
            wanted += [f"keyframe {k['name']} ({k['seconds']:g} s)" for k in keyframes]
        if kept is None:
            message = f"Loaded the settings of {name}; add {', '.join(wanted)} and press Start."
        elif wanted:
            message = f"Loaded the settings of {name} with its images, except {', '.join(wanted)}: add them and press Start."
        else:
            message = f"Loaded the settings of {name} with its images; press Start to make it again, or change it first."
        if missing:
            message += f" Its LoRAs are not all in the LoRA folder ({', '.join(missing)}): choose them again."
        return Loaded({key: values[key] for key in LOADABLE if key in values}, message, images=kept)

    def timeline(self, prompt: str, seconds: float, window: int, keyframes: Any, keyframe_times: str, end_image: Any,
                 start: str = "start image") -> list[str]:  # fmt: skip
        """The sections before Start, in time order: each one's time range, prompt and start-slot image (`start` names
        what the video starts from: the start image, or a blank frame)."""
        rows, keyed = self.schedule_rows(prompt, seconds, window, keyframes, keyframe_times, end_image)
        for row in rows:  # name the keyframe images
            if row["start_slot"] == "start image":
                row["start_slot"] = start
            elif row["start_slot"].startswith("keyframe "):
                row["start_slot"] += f" ({Path(keyed[int(row['start_slot'].split()[1]) - 1][1]).name})"
        return timeline(rows)

    def schedule_rows(self, prompt: str, seconds: float, window: int, keyframes: Any, keyframe_times: str,
                      end_image: Any) -> tuple[list[dict[str, Any]], list[tuple[float, str]]]:  # fmt: skip
        """The sections in time order (`describe_schedule`'s rows) and the keyframe images' (time, file), sorted by time;
        raises SettingsError for settings or controls that do not fit."""
        settings = Settings(variant=self.variant, prompt=prompt, total_second_length=seconds, latent_window_size=window)
        files = [upload_path(item) or "" for item in (keyframes or [])]
        # Times without their images (just loaded from a job, say) wait for the images: Start checks the pair.
        keyed = sorted(zip(parse_times(keyframe_times, len(files)), files)) if files else []
        has_end = upload_path(end_image) is not None
        return describe_schedule(plan_schedule(settings, [s for s, _ in keyed], has_end), settings, has_end), keyed


def _kept_files(job: QueuedJob) -> bool:
    """Whether the queue kept images of the job's own (a branch or a longer video uses its source's)."""
    return any((key in ("image", "end_image") or key.startswith("keyframe_")) and not Path(path).is_absolute()
               for key, path in job.spec.files.items())  # fmt: skip


def upload_path(value: Any) -> str | None:
    """The uploaded file's path from a component's raw payload (a FileData dict) or a plain path."""
    if isinstance(value, dict):
        return value.get("path")
    return value or None


def lora_specs(folder: Path | None, names: Sequence[str] | None, weights: str | None) -> tuple[LoraSpec, ...]:
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

