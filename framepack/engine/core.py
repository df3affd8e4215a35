"""The generation engine: one image and a prompt to a video, section by section, as a stream of typed events.

`generate` is a generator. The UI worker and the CLI both consume it; it holds no global state and never
blocks on anything but computation. Stopping goes through a `threading.Event`: the job ends after the
current sampler step and leaves a playable video of the sections that were finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from safetensors import SafetensorError

from .stepcache import StepCache, configure_cache
from ..events import Done, Error, Event, FrameProgress, Progress, SectionDone, Status  # noqa: F401  (re-exported)
from ..models.components import LLAMA_MAX_TOKENS
from .conditioning import Conditioning, encode_conditioning, encode_frames, encode_prompt, prompt_texts, prompt_token_count
from ..media.images import ImageError, target_size
from ..controls import ImageSource, JobImages, JobInputs, Keyframe, describe_schedule, plan_schedule, prepare_images, timeline
from ..loading import components, ensure_loaded
from ..models.checkpoints import CheckpointError
from ..lora import LoraError, LoraSpec, apply_loras, specs_from_record
from ..memory.planning import MemoryPlanError
from ..loading import replan
from ..models import ModelSet
from ..outputs import LOCAL_USER, Checkpoint, JobBusyError, JobLock, JobPaths, is_job_name, job_name, load_latents, new_job_id, remove_parts_if_unneeded, save_latents, working_on
from ..files import write_json
from ..packing import CONTEXT_FRAMES, LatentHistory, SectionPlan, join_sections, plan_sections
from ..sampling import make_denoiser, sample_unipc, section_sigmas
from ..settings import EPSILON, FPS, Settings, SettingsError, parse_timed_prompt
from ..media.mp4 import BackgroundVideoWriter, Mp4Encoder, SegmentedVideo, VideoWriterError, describe_write_error, trim_mp4
from .frames import FrameAssembler, decode_latents, latent_preview
from ..media.reading import VideoInputError, extract_audio, read_video

logger = logging.getLogger(__name__)




def generate(
    models: ModelSet,
    settings: Settings,
    inputs: JobInputs | ImageSource | None,
    output_dir: str | Path = "outputs",
    *,
    stop: threading.Event | None = None,
    job_id: str | None = None,
    previews: bool = True,
    owner: str = LOCAL_USER,
) -> Iterator[Event]:
    """Run one job and yield its events; the last one is always `Done` or `Error`, whatever fails.

    `inputs` is the start image, or `JobInputs` with an end image and keyframes too (None: a grey blank start).
    `owner` is recorded with the job: only they may resume or extend it (the app checks).
    """
    if not isinstance(inputs, JobInputs):
        inputs = JobInputs(inputs)
    paths = JobPaths(Path(output_dir), job_id or new_job_id())
    yield from _guarded(_new_job(models, settings, inputs, paths, stop or threading.Event(), previews, owner))


def resume_job(
    models: ModelSet, path: str | Path, *, stop: threading.Event | None = None, previews: bool = True
) -> Iterator[Event]:
    """Go on with the stopped or killed job that `path` (its video, record or checkpoint) belongs to, in its
    own folder, under its own name."""
    yield from _guarded(_resume(models, job_paths(path), stop or threading.Event(), previews))


def extend_job(
    models: ModelSet,
    path: str | Path,
    seconds: float,
    *,
    prompt: str = "",
    stop: threading.Event | None = None,
    previews: bool = True,
) -> Iterator[Event]:
    """Make a finished F1 video `seconds` longer, in place, exactly as if it had been made that long at once.
    `prompt` may add timed prompts for the added seconds ("[6s: he sits down]").

    F1 generates forwards, so its state after the last section can be rebuilt from its outputs: the latents
    (and the start image stored with them), the noise generator replayed for the sections made, the frames
    still to blend re-decoded from the last latents, and the video itself cut before those frames.
    """
    yield from _guarded(_extend(models, job_paths(path), seconds, prompt, stop or threading.Event(), previews))


# The shortest video the original model can extend: two latent frames' worth (F1 needs a section's overlap).
MIN_VIDEO_FRAMES = 5
# Settings a branch cannot change: the kept sections were made at this size, window and variant.
GEOMETRY = ("variant", "resolution", "height", "width", "latent_window_size")


def branch_job(
    models: ModelSet,
    path: str | Path,
    keep_sections: int,
    changes: dict[str, Any] | None = None,
    *,
    keyframes: Sequence[Keyframe] | None = None,
    loras: Sequence[LoraSpec] | None = None,
    job_id: str | None = None,
    owner: str = LOCAL_USER,
    stop: threading.Event | None = None,
    previews: bool = True,
) -> Iterator[Event]:
    """A new job that keeps the first `keep_sections` sections (in generation order) of the job `path` belongs
    to, with their latents and frames, and generates the rest with the source's settings and `changes` (a new
    seed, prompts, steps, ...; not the geometry). `keyframes` and `loras` replace the source's when given. The
    source job stays as it was; the new one records where it branched from."""
    source = job_paths(path)
    paths = JobPaths(source.output_dir, job_id or new_job_id())
    yield from _guarded(
        _branch(models, source, paths, keep_sections, changes or {}, keyframes, loras, owner, stop or threading.Event(), previews)
    )


def _branch(
    models: ModelSet,
    source: JobPaths,
    paths: JobPaths,
    keep: int,
    changes: dict[str, Any],
    keyframes: Sequence[Keyframe] | None,
    loras: Sequence[LoraSpec] | None,
    owner: str,
    stop: threading.Event,
    previews: bool,
) -> Iterator[Event]:
    if not is_job_name(paths.job_id):
        raise SettingsError("job_name", f"{paths.job_id!r} cannot name files: use letters, digits, '_', '-' and '.'")
    if paths.job_id == source.job_id:
        raise SettingsError("job_name", "a branch is a new job: give it another name than its source")

    def job() -> Iterator[Event]:
        checkpoint, settings, inputs = _branch_state(models, source, paths, keep, changes, keyframes, loras, owner)
        yield Status(f"Branched from {source.job_id}: keeping its first {keep} section(s)")
        yield from _run(models, settings, inputs, paths, stop, previews, checkpoint, owner)

    yield from _locked(paths, job)


def _branch_state(
    models: ModelSet,
    source: JobPaths,
    paths: JobPaths,
    keep: int,
    changes: dict[str, Any],
    keyframes: Sequence[Keyframe] | None,
    loras: Sequence[LoraSpec] | None,
    owner: str,
) -> tuple[Checkpoint, Settings, JobInputs]:
    """The new job's state after the kept sections, as a checkpoint: their latents and encoded frames in its
    parts folder (the frames re-decoded from the latents, which gives the same frames), the noise generator of
    the new seed after as many draws, the frames still to blend."""
    lock = JobLock(source)
    if not lock.acquire():  # its record and latents change while it runs
        raise SettingsError("branch", f"{source.job_id} is running: stop it or let it finish first")
    try:
        manifest = json.loads(source.manifest.read_text(encoding="utf-8"))
        original = Settings.from_dict(manifest["settings"])
        done = int(manifest["sections_done"])
        latents, images = load_latents(source.latents), JobImages.load(source.latents)
    except FileNotFoundError:
        raise SettingsError("branch", f"there is no job named {source.job_id}") from None
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise SettingsError("branch", f"the record or latents of {source.job_id} are damaged ({type(exc).__name__})") from exc
    finally:
        lock.release()
        remove_parts_if_unneeded(source)  # the lock's file may have made its parts folder
    if changed := [name for name in GEOMETRY if name in changes and changes[name] != getattr(original, name)]:
        raise SettingsError(changed[0], f"a branch keeps the source's {', '.join(changed)}: its kept sections were made with them")  # fmt: skip
    settings = original.replace(**changes)
    if original.variant == "original" and settings.num_sections != original.num_sections:
        raise SettingsError("total_second_length", "the original variant generates from the end backwards: a branch keeps its length")  # fmt: skip
    if not 1 <= keep <= done:
        raise SettingsError("keep_sections", f"{source.job_id} has {done} finished section(s): keep 1 to {done}")
    if keep >= settings.num_sections:
        raise SettingsError("keep_sections", f"keeping {keep} of {settings.num_sections} sections leaves nothing to redo")
    w = settings.latent_window_size
    # The kept sections' latents, in generation order: the original's video ends with section 0.
    if settings.variant == "original":
        end = latents.shape[2]
        chunks = [latents[:, :, end - (g + 1) * w : end - g * w] for g in range(keep)]
    else:
        chunks = [latents[:, :, 1 + g * w : 1 + (g + 1) * w] for g in range(keep)]
    history = LatentHistory(settings.variant, latents[:, :, :1], w)  # F1's video begins with its start latent
    assembler = FrameAssembler(settings.frames_per_section, history.prepends)
    video = SegmentedVideo(paths.parts_dir, history.prepends, FPS, settings.mp4_crf)
    for plan, chunk in zip(plan_sections(settings.variant, settings.num_sections, w), chunks):
        with phase(models, models.vae):
            clip = decode_latents(models.vae, history.add(plan, chunk))
        video.add_final(assembler.add(clip))
        save_latents(paths.section_latents(plan.index), history.newest)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    for _ in range(keep):  # the noise the kept sections drew, so the rest draws what it would have
        torch.randn((1, 16, w, *latents.shape[3:]), generator=generator, dtype=torch.float32)
    if loras is None:
        loras = specs_from_record(manifest.get("loras", []))
    if keyframes is None:
        keyframes = [Keyframe(seconds, image) for seconds, image in images.keyframes]
    inputs = JobInputs(images.start, images.end, tuple(keyframes), loras=tuple(loras))
    fitted = prepare_images(inputs, settings)
    tensors, metadata = fitted.to_tensors()
    metadata["loras"] = "[]"  # the job records the LoRAs it applies when it runs
    metadata["origin"] = json.dumps({"branched_from": {"job": source.job_id, "sections": keep}})
    checkpoint = Checkpoint(
        paths.job_id, settings.to_dict(), keep, generator.get_state(), assembler.open, assembler.final_frames,
        [segment.name for segment in video.segments], tensors, owner, metadata,
    )  # fmt: skip
    return checkpoint, settings, inputs


# Files in an extension job's parts folder: the input's own frames (the video's first segment), its sound, and
# (F1) the latents of its last frames.
INPUT_SEGMENT, INPUT_AUDIO, PAST_LATENTS = "input.mp4", "audio.m4a", "past.safetensors"


def extend_video(
    models: ModelSet,
    settings: Settings,
    video: str | Path,
    output_dir: str | Path = "outputs",
    *,
    end_image: ImageSource | None = None,
    keyframes: Sequence[Keyframe] = (),
    loras: Sequence[LoraSpec] = (),
    job_id: str | None = None,
    owner: str = LOCAL_USER,
    stop: threading.Event | None = None,
    previews: bool = True,
) -> Iterator[Event]:
    """Make any video longer by `settings.total_second_length` seconds: the output is the video's own frames
    (resized and cropped to the bucket its first frame picks, at 30 fps), then the new ones.

    F1 continues forwards: its context is the latents of the video's last frames (VAE-encoded from them), its
    start slot the video's first frame, and the first new section cross-fades over the video's last 4w-3
    frames as any section does. The original model generates the new seconds from their far end (the end
    frame, if given) back towards the video: its start slot is the video's last frame, and the new part's first
    frame, which repeats it, is left out. Timed controls count from the start of the added part.
    """
    paths = JobPaths(Path(output_dir), job_id or new_job_id())
    inputs = JobInputs(None, end_image, tuple(keyframes), loras=tuple(loras))
    yield from _guarded(_extend_video(models, settings, Path(video), inputs, paths, stop or threading.Event(), previews, owner))


def _extend_video(
    models: ModelSet, settings: Settings, video: Path, inputs: JobInputs, paths: JobPaths, stop: threading.Event,
    previews: bool, owner: str,
) -> Iterator[Event]:  # fmt: skip
    if not is_job_name(paths.job_id):
        raise SettingsError("job_name", f"{paths.job_id!r} cannot name files: use letters, digits, '_', '-' and '.'")
    if models.variant != settings.variant:
        raise SettingsError("variant", f"the loaded models are the {models.variant} variant, not {settings.variant}")

    def job() -> Iterator[Event]:
        yield Status(f"Reading {video.name}")
        checkpoint, start_inputs, notes = _video_start(models, settings, video, inputs, paths, owner)
        for note in notes:
            yield Status(note)
        yield from _run(models, settings, start_inputs, paths, stop, previews, checkpoint, owner)

    yield from _locked(paths, job)


def _video_start(
    models: ModelSet, settings: Settings, video: Path, inputs: JobInputs, paths: JobPaths, owner: str
) -> tuple[Checkpoint, JobInputs, list[str]]:
    """The extension job's state before its first section, as a checkpoint: the input's frames encoded once into
    the first segment as they are decoded (only the last ones stay in memory), its sound, and for F1 the frames
    to blend into and the latents of the last ones."""
    w = settings.latent_window_size
    forwards = settings.variant == "f1"
    overlap = settings.frames_per_section
    # F1 packs up to 19 latent frames of history and decodes the last window with the first new one.
    tail = 4 * max(CONTEXT_FRAMES, w) - 3 if forwards else 1
    encoder: Mp4Encoder | None = None

    def passed(frame: np.ndarray) -> None:
        nonlocal encoder
        if encoder is None:
            encoder = Mp4Encoder(paths.parts_dir / INPUT_SEGMENT, frame.shape[1], frame.shape[0], FPS, settings.mp4_crf)
        encoder.add(frame)

    try:
        found = read_video(video, lambda image: target_size(image, settings.resolution, settings.height, settings.width), tail, passed)
        needed = overlap if forwards else MIN_VIDEO_FRAMES
        if found.frames < needed:
            why = "a section's overlap" if forwards else "two latent frames"
            raise VideoInputError(f"{video.name} has {found.frames} frames at 30 fps; extending it needs at least {needed} ({why})")
        kept = np.stack(found.tail)
        final = kept[: len(kept) - overlap] if forwards else kept
        for frame in final:
            passed(frame)
        segments = [encoder.close().name] if encoder is not None else []
    except BaseException:
        if encoder is not None:
            encoder.abort()
        raise
    notes = [f"{video.name}: {found.frames} frames at 30 fps, {found.width}x{found.height} -> {kept.shape[2]}x{kept.shape[1]}"]
    if abs(found.fps - FPS) > 0.01:
        notes.append(f"{video.name} runs at {found.fps:g} fps: its frames are shown at 30 fps, each for as long as it lasts")
    audio = extract_audio(video, paths.parts_dir / INPUT_AUDIO)
    if forwards:
        with phase(models, models.vae):
            past = encode_frames(models, kept)
        save_latents(paths.parts_dir / PAST_LATENTS, past)
        open_frames = torch.from_numpy(kept[len(kept) - overlap :]).float().permute(3, 0, 1, 2)[None] / 127.5 - 1
    else:
        open_frames = None
    start = found.first if forwards else found.tail[-1]
    start_inputs = JobInputs(start, inputs.end_image, inputs.keyframes, loras=inputs.loras).load()
    images = prepare_images(start_inputs, settings)
    tensors, metadata = images.to_tensors()
    record = {"name": found.name, "sha256": found.sha256, "fps": round(found.fps, 3), "frames": found.frames,
              "frames_encoded": len(kept) if forwards else 1, "prefix": len(segments), "audio": audio is not None,
              "past": forwards}  # fmt: skip
    metadata["origin"] = json.dumps({"extended_video": record})
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    final_frames = found.frames - (overlap if forwards else 0)
    checkpoint = Checkpoint(
        paths.job_id, settings.to_dict(), 0, generator.get_state(), open_frames, final_frames, segments, tensors,
        owner, metadata,
    )  # fmt: skip
    return checkpoint, start_inputs, notes


def job_paths(path: str | Path) -> JobPaths:
    """The files of the job that `path` (its video, record, latents or checkpoint) belongs to."""
    path = Path(path)
    return JobPaths(path.parent, job_name(path))


def failure_message(exc: BaseException) -> str:
    """What a user is told when a job fails: what went wrong and what to do, never a server path or a
    traceback (an unexpected failure's details go to the log)."""
    if isinstance(exc, (SettingsError, ImageError, MemoryPlanError, JobBusyError, LoraError, VideoInputError, CheckpointError)):
        return str(exc)
    if isinstance(exc, torch.OutOfMemoryError):
        return (
            "Out of GPU memory. Finished sections are kept. Try a smaller resolution, fewer seconds per "
            "section (latent window), more 'GPU memory to preserve', or close other programs using the GPU."
        )
    if isinstance(exc, (VideoWriterError, OSError, SafetensorError)):
        logger.error("Writing a job's files failed", exc_info=exc)
        cause = exc.__cause__ if isinstance(exc, VideoWriterError) and exc.__cause__ else exc
        return (
            f"Writing the job's files failed ({describe_write_error(cause)}). Finished sections are kept: "
            "make room in the outputs folder, then resume the job."
        )
    logger.error("A job failed", exc_info=exc)
    return (
        f"The job failed ({type(exc).__name__}). Finished sections are kept and can be resumed; "
        "the details are in the app's log."
    )


def _guarded(events: Iterator[Event]) -> Iterator[Event]:
    """A job's events, with whatever it raises turned into a final `Error`: a failed job never takes its
    consumer (the app's worker, the CLI) down with it."""
    try:
        yield from events
    except Exception as exc:
        yield Error(failure_message(exc), exc)


def _new_job(
    models: ModelSet,
    settings: Settings,
    inputs: JobInputs,
    paths: JobPaths,
    stop: threading.Event,
    previews: bool,
    owner: str,
) -> Iterator[Event]:
    if not is_job_name(paths.job_id):
        raise SettingsError("job_name", f"{paths.job_id!r} cannot name files: use letters, digits, '_', '-' and '.'")
    yield from _locked(paths, lambda: _run(models, settings, inputs, paths, stop, previews, None, owner))


def _locked(paths: JobPaths, job: Callable[[], Iterator[Event]]) -> Iterator[Event]:
    """The events of `job` (called once the job's lock is held), its `Done` only once the lock is released and
    the parts folder tidied: whoever sees `Done` sees the files as they stay."""
    done = None
    with working_on(paths):
        for event in job():
            if isinstance(event, Done):
                done = event
            else:
                yield event
    if done is not None:
        yield done


def _resume(models: ModelSet, paths: JobPaths, stop: threading.Event, previews: bool) -> Iterator[Event]:
    def job() -> Iterator[Event]:
        checkpoint = read_checkpoint(paths)  # under the lock, which also removed what a killed process left
        settings = Settings.from_dict(checkpoint.settings)
        loras = specs_from_record(json.loads(checkpoint.image_metadata.get("loras", "[]")))
        inputs = JobImages.from_tensors(checkpoint.images, checkpoint.image_metadata).inputs(loras)
        yield from _run(models, settings, inputs, paths, stop, previews, checkpoint, checkpoint.owner)

    yield from _locked(paths, job)


def read_checkpoint(paths: JobPaths) -> Checkpoint:
    """The job's checkpoint, checked: it loads, its settings are valid and the files it needs are there."""
    if not is_job_name(paths.job_id) or not paths.checkpoint.is_file():
        raise SettingsError("resume", f"{paths.job_id} has nothing to resume (the job is done, or no section of it finished)")
    try:
        checkpoint = Checkpoint.load(paths.checkpoint)
        Settings.from_dict(checkpoint.settings)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:  # a SettingsError is a ValueError
        raise SettingsError(
            "resume",
            f"the checkpoint of {paths.job_id} is damaged or was written by another version of the app "
            f"({type(exc).__name__}); its video and latents so far are kept, but it cannot be resumed",
        ) from exc
    needed = [paths.section_latents(i) for i in range(checkpoint.sections_done)]
    needed += [paths.parts_dir / name for name in checkpoint.segments]
    if missing := [path.name for path in needed if not path.is_file()]:
        raise SettingsError("resume", f"{paths.job_id} cannot be resumed: {len(missing)} of its saved parts are missing")
    return checkpoint


def _extend(
    models: ModelSet, paths: JobPaths, seconds: float, prompt: str, stop: threading.Event, previews: bool
) -> Iterator[Event]:
    def job() -> Iterator[Event]:
        checkpoint, settings = _extension(models, paths, seconds, prompt)  # if it fails, its files go with the parts
        loras = specs_from_record(json.loads(checkpoint.image_metadata.get("loras", "[]")))
        inputs = JobImages.from_tensors(checkpoint.images, checkpoint.image_metadata).inputs(loras)
        yield from _run(models, settings, inputs, paths, stop, previews, checkpoint, checkpoint.owner)

    yield from _locked(paths, job)


def _extension(models: ModelSet, paths: JobPaths, seconds: float, prompt: str) -> tuple[Checkpoint, Settings]:
    stem = paths.job_id
    try:
        manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
        settings = Settings.from_dict(manifest["settings"])
        state, done = manifest["state"], int(manifest["sections_done"])
    except FileNotFoundError:
        raise SettingsError("extend", f"there is no job named {stem}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SettingsError("extend", f"the record of {stem} is damaged ({type(exc).__name__})") from exc
    if settings.variant != "f1":
        raise SettingsError("variant", "only F1 videos can be extended: the original variant generates from the end "
                            "backwards, so its length is fixed when it starts")  # fmt: skip
    if (manifest.get("origin") or {}).get("extended_video"):
        raise SettingsError("extend", f"{stem} continues another video: extend it as any video (the extend command, or the page's video)")  # fmt: skip
    if state != "done":
        raise SettingsError("extend", f"{stem} is not finished: resume it first")
    longer = settings.replace(total_second_length=round(settings.total_second_length + seconds, 6))
    if longer.num_sections <= done:
        raise SettingsError("seconds", f"{seconds:g} s is less than half a section; nothing to add")
    longer = longer.replace(prompts=settings.prompts + _added_prompts(prompt, done * 4 * settings.latent_window_size / FPS))
    try:
        latents, images = load_latents(paths.latents), JobImages.load(paths.latents)
    except (OSError, SafetensorError, KeyError, ValueError) as exc:
        raise SettingsError("extend", f"the latents of {stem} are missing or damaged ({type(exc).__name__})") from exc
    w = settings.latent_window_size
    if latents.ndim != 5 or latents.shape[2] != done * w + 1:
        raise SettingsError("extend", f"the latents of {stem} do not match its record ({done} sections)")
    for index, chunk in enumerate(latents[:, :, 1:].split(w, dim=2)):
        save_latents(paths.section_latents(index), chunk)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    for _ in range(done):  # the noise the made sections drew
        torch.randn((1, 16, w, *latents.shape[3:]), generator=generator, dtype=torch.float32)
    # The frames a next section blends into are the end of the last decoded clip (see LatentHistory.add).
    with phase(models, models.vae):
        clip = decode_latents(models.vae, latents[:, :, -2 * w :] if done > 1 else latents)
    open_frames = clip[:, :, -settings.frames_per_section :]
    final_frames = 4 * latents.shape[2] - 3 - open_frames.shape[2]
    trim_mp4(paths.video, paths.parts_dir / "00001.mp4", final_frames)
    owner = manifest.get("owner", LOCAL_USER)
    tensors, metadata = images.to_tensors()
    metadata["loras"] = json.dumps(manifest.get("loras", []))
    checkpoint = Checkpoint(
        stem, longer.to_dict(), done, generator.get_state(), open_frames, final_frames, ["00001.mp4"], tensors, owner,
        metadata,
    )  # fmt: skip
    return checkpoint, longer


def _added_prompts(prompt: str, made: float) -> tuple[tuple[float, str], ...]:
    """The timed prompts an extension adds; they may govern only the sections it adds (from `made` seconds)."""
    base, pairs = parse_timed_prompt(prompt)
    if base:
        raise SettingsError("prompt", f"give the added seconds' prompts as timed groups, e.g. [{made:g}s: he sits down]")
    if early := [seconds for seconds, _ in pairs if seconds < made - EPSILON]:
        raise SettingsError("prompt", f"{early[0]:g} s is in the part already made; an extension's timed prompts start at {made:g} s or later")  # fmt: skip
    return pairs


def _run(
    models: ModelSet,
    settings: Settings,
    inputs: JobInputs,
    paths: JobPaths,
    stop: threading.Event,
    previews: bool,
    resume: Checkpoint | None,
    owner: str,
) -> Iterator[Event]:
    """The job itself; the caller holds its lock. With `resume`, it goes on after the checkpoint's sections."""
    started = time.perf_counter()
    if models.variant != settings.variant:
        raise SettingsError("variant", f"the loaded models are the {models.variant} variant, not {settings.variant}")
    images = prepare_images(inputs, settings)
    schedule = plan_schedule(settings, images.keyframe_times, images.end is not None)
    height, width = images.start.shape[:2]
    if inputs.image is None:
        yield Status(f"No start image: starting from a {inputs.blank_start} frame")

    yield Status("Encoding prompt and image")
    for text in dict.fromkeys([settings.prompt, *(text for _, text in settings.prompts)]):
        if prompt_token_count(models, text) > LLAMA_MAX_TOKENS:
            yield Status(f"A prompt is longer than {LLAMA_MAX_TOKENS} tokens; the text past that is ignored: {text[:40]}...")
    if models.placement is not None:
        # "GPU memory to preserve" and the size decide how many transformer blocks stay on the GPU.
        models.placement = replan(models, models.placement, settings)
    embeds = yield from _prompt_embeds(models, prompt_texts(settings, schedule))
    with components(models, "image_encoder", "vae"):
        cond = encode_conditioning(models, settings, images, schedule, embeds)
    if ensure_loaded(models, "transformer"):
        yield Status("Loaded the transformer again (it left memory while the text encoders ran)")
    if inputs.loras or models.loras is not None:
        yield Status(f"Applying {len(inputs.loras)} LoRA(s)" if inputs.loras else "Removing the LoRAs of the last job")
    loras = apply_loras(models, inputs.loras)

    window = settings.latent_window_size
    plans = plan_sections(settings.variant, settings.num_sections, window)
    history = LatentHistory(settings.variant, cond.start_latent, window, cond.end_latent)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    # A job that continues an existing video (see `extend_video`) starts from a checkpoint that says so.
    origin = json.loads(resume.image_metadata.get("origin", "null")) if resume is not None else None
    extended = (origin or {}).get("extended_video")
    if extended and extended.get("past"):
        history.continue_from(load_latents(paths.parts_dir / PAST_LATENTS))
    if resume is None:
        assembler = FrameAssembler(settings.frames_per_section, history.prepends)
        segments = []
    else:
        history.restore([load_latents(paths.section_latents(i)) for i in range(resume.sections_done)])
        assembler = FrameAssembler(settings.frames_per_section, history.prepends, resume.open_frames, resume.final_frames)
        segments = [paths.parts_dir / name for name in resume.segments]
        generator.set_state(resume.rng_state)
        if resume.sections_done:
            yield Status(f"Resuming after section {resume.sections_done} of {len(plans)}")
    sigmas = section_sigmas(settings.steps, window, height // 8, width // 8)
    image_tensors, image_metadata = images.to_tensors()  # saved with every checkpoint, for a resume
    image_metadata["loras"] = json.dumps([lora.to_dict() for lora in loras])
    record = JobRecord(paths, settings, models, resume, owner, inputs.describe())  # written once a section is on disk
    record.loras = [lora.to_dict() for lora in loras]
    image_metadata["origin"] = json.dumps(record.origin)
    record.schedule = describe_schedule(schedule, settings, images.end is not None)
    if settings.prompts or images.keyframes or images.end is not None:
        yield Status("Sections (time order):\n" + "\n".join(timeline(record.schedule)))

    audio = paths.parts_dir / INPUT_AUDIO if extended and extended.get("audio") else None
    video = SegmentedVideo(paths.parts_dir, history.prepends, FPS, settings.mp4_crf, segments, extended["prefix"] if extended else 0, audio)
    # The settings (and what the images were) travel inside the MP4 too: a video alone is enough to vary it.
    shared_loras = [{key: lora[key] for key in ("name", "sha256", "weight")} for lora in record.loras]  # no paths
    metadata = {"comment": json.dumps({"framepack": settings.to_dict(), "inputs": record.inputs, "loras": shared_loras})}
    writer = BackgroundVideoWriter(video, metadata)

    def written(wait: bool = False) -> list[SectionDone]:
        """Record the sections whose video update and checkpoint are on disk; their events, to report."""
        events = []
        for plan, frames, latents, counts in writer.finished(wait):
            record.write("running", plan.index + 1)
            events.append(SectionDone(plan.index + 1, len(plans), paths.video, frames, frames / FPS, latents, counts))
        return events

    stopped, outcome = False, "failed"
    try:
        # Set up inside the guard: whatever happens from here on, the transformer is left without it.
        cache = configure_cache(models.transformer, settings.step_cache, settings.cache_threshold, settings.steps)
        record.cache = cache
        cache_text = f"{cache.method} (threshold {cache.threshold:g})" if cache else "off"
        yield Status(f"Sampling {len(plans)} sections at {width}x{height}; attention: {models.attention}; step cache: {cache_text}")
        for plan in plans[history.sections_done :]:
            section_started = time.perf_counter()
            if cache is not None:
                cache.reset()
            noise = torch.randn((1, 16, window, height // 8, width // 8), generator=generator, dtype=torch.float32)
            denoise = make_denoiser(
                models.transformer,
                _section_inputs(models, cond, history, plan),
                cfg=settings.cfg,
                cfg_rescale=settings.cfg_rescale,
                distilled_cfg=settings.distilled_cfg,
                steps=settings.steps,
            )
            for step in sample_unipc(denoise, noise.to(models.device), sigmas.to(models.device)):
                preview = latent_preview(step.denoised) if previews else None
                yield Progress(
                    plan.index + 1, len(plans), step.step + 1, step.total, assembler.num_frames, preview,
                    schedule.section_range(plan.index, window),
                )  # fmt: skip
                yield from written()
                if writer.error is not None:
                    raise writer.error
                if stop.is_set():
                    break
            if stop.is_set() and step.step + 1 < step.total:
                stopped = True
                break

            yield Status(f"Decoding section {plan.index + 1} of {len(plans)}")
            result = step.denoised.float().cpu()
            with phase(models, models.vae):
                clip = decode_latents(models.vae, history.add(plan, result))
            if extended and plan.is_last and history.prepends:
                clip = clip[:, :, 1:]  # the frame of the start slot: the extended video's last frame, which it has
            final = assembler.add(clip)
            counts = cache.counts() if cache is not None else {}
            save_latents(paths.section_latents(plan.index), history.newest)
            checkpoint = Checkpoint(
                paths.job_id, settings.to_dict(), history.sections_done, generator.get_state(), assembler.open,
                assembler.final_frames, [], image_tensors, owner, image_metadata,
            )  # fmt: skip
            record.timings.append(round(time.perf_counter() - section_started, 3))
            # Encoding runs on the writer's thread while the next section samples.
            tag = (plan, assembler.num_frames, result, counts)
            # The checkpoint follows its section's video update, on the writer's thread: off the sampling path.
            writer.submit(final, assembler.open_frames(), paths.video, tag, partial(checkpoint.save_after, paths.checkpoint))
            if stop.is_set():
                stopped = not plan.is_last
                break
        yield from written(wait=True)
        if writer.error is not None:
            raise writer.error
        outcome = "stopped" if stopped else "done"
    except GeneratorExit:  # the consumer closed the stream: a stop, not a failure
        outcome = "stopped"
        raise
    finally:
        # Whatever ends the job (done, stopped, an error, the consumer closing the stream), keep what was made:
        # the pending video updates and their checkpoints too, so that a failed job can be resumed.
        if outcome != "done":
            written(wait=True)
        writer.close()
        configure_cache(models.transformer, None)  # leave the shared transformer without this job's cache
        latents_path = _finish(paths, settings, history.lead, images, record, outcome)

    frames = assembler.num_frames
    yield Done(
        video_path=paths.video if paths.video.exists() else None,
        latents_path=latents_path,
        frames=frames,
        seconds=frames / FPS,
        sections_done=record.sections_done,
        stopped=stopped,
        elapsed=time.perf_counter() - started,
        attention=models.attention,
        step_cache=settings.step_cache,
    )


def _finish(
    paths: JobPaths, settings: Settings, lead: torch.Tensor, images: JobImages, record: JobRecord, outcome: str,
) -> Path | None:
    """Leave the job's files finished or resumable, in an order where a crash at any point does the same: the
    video's latents, then the record, then (for a done job) the checkpoint. The parts folder goes last, when
    the job's lock is released. Returns the latents file, if any section is on disk."""
    sections_done = record.sections_done  # sections whose video update and checkpoint are on disk
    if not sections_done:
        return None
    sections = [load_latents(paths.section_latents(i)) for i in range(sections_done)]
    save_latents(paths.latents, join_sections(settings.variant, lead, sections), *images.to_tensors())
    record.write(outcome, sections_done)
    if outcome == "done":  # nothing left to resume
        paths.checkpoint.unlink(missing_ok=True)
    return paths.latents


class JobRecord:
    """The job's manifest (`<job>.json`): settings, models, owner, runtime, state and timings, rewritten atomically."""

    def __init__(
        self,
        paths: JobPaths,
        settings: Settings,
        models: ModelSet,
        resume: Checkpoint | None,
        owner: str,
        inputs: dict[str, Any] | None,
    ):
        self.paths, self.settings, self.models, self.owner = paths, settings, models, owner
        self.cache: StepCache | None = None
        self.schedule: list[dict[str, Any]] = []
        self.loras: list[dict[str, Any]] = []
        previous = json.loads(paths.manifest.read_text()) if resume is not None and paths.manifest.is_file() else {}
        # The input files' names and SHA-256: a resumed job is given their pixels, so the first record says.
        self.inputs = previous.get("inputs") or inputs
        # Where the job came from when it did not start from images alone (a branch of another job).
        self.origin = previous.get("origin") or json.loads(resume.image_metadata.get("origin", "null")) if resume else None
        self.timings: list[float] = previous.get("section_seconds", [])[: resume.sections_done if resume else 0]
        self.sections_done = resume.sections_done if resume is not None else 0

    def write(self, state: str, sections_done: int) -> None:
        self.sections_done = sections_done
        models = self.models
        write_json(self.paths.manifest, {
            "state": state,
            "sections_done": sections_done,
            "sections": self.settings.num_sections,
            "owner": self.owner,
            "settings": self.settings.to_dict(),
            "inputs": self.inputs,
            "schedule": self.schedule,
            "loras": self.loras,
            "origin": self.origin,
            "seed": self.settings.seed,
            "variant": self.settings.variant,
            "models": models.sources,
            "dtype": str(models.dtype).removeprefix("torch."),
            "device": str(models.device),
            "attention": models.attention,
            "step_cache": {"method": self.cache.method, "threshold": self.cache.threshold} if self.cache else None,
            "memory_mode": models.placement.plan.mode if models.placement is not None else None,
            "versions": library_versions(),
            "section_seconds": self.timings,
            "video": self.paths.video.name,
            "latents": self.paths.latents.name,
        })  # fmt: skip


def library_versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "av": av.__version__}  # fmt: skip


# Encoded prompts a model set keeps, so a prompt used again does not need the text encoders (which, where RAM is
# short, must be loaded for it). A prompt's states take about 2 MB at most.
PROMPT_CACHE_SIZE = 64


def _prompt_embeds(models: ModelSet, texts: list[str]) -> Iterator[Event]:
    """The prompts' conditioning, from the model set's cache or, for those it lacks, encoded now (the text
    encoders loaded for it if they are out of memory); yields a Status when that happens, returns the embeds."""
    cache = models.prompt_cache
    missing = [text for text in texts if text not in cache]
    if missing:
        if models.text_encoder is None:
            yield Status(f"Loading the text encoders for {len(missing)} new prompt(s)")
        with components(models, "text_encoder", "text_encoder_2"):
            for text in missing:
                cache[text] = encode_prompt(models, text).cpu()
    for text in texts:
        cache.move_to_end(text)
    while len(cache) > PROMPT_CACHE_SIZE:
        cache.popitem(last=False)
    return {text: cache[text] for text in texts}


def phase(models: ModelSet, *modules: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Bring CPU-resident modules to the GPU for one phase of the job (low-memory mode); else nothing."""
    return models.placement.phase(*modules) if models.placement is not None else contextlib.nullcontext()


def _section_inputs(
    models: ModelSet, cond: Conditioning, history: LatentHistory, plan: SectionPlan
) -> dict[str, dict[str, torch.Tensor]]:
    """The transformer's inputs for one section, per pass ("positive"/"negative"): the section's prompt and
    packed context (its start slot, and the history at 1x/2x/4x) with the RoPE frame indices of everything."""
    device, dtype = models.device, models.dtype
    positive, start_slot = cond.section(plan.index)
    context = history.context(start_slot)
    shared = {
        "image_embeds": cond.image_embeds.to(device, dtype),
        "indices_latents": plan.latent_indices.to(device),
        "latents_clean": context.clean.to(device, dtype),
        "indices_latents_clean": plan.clean_indices.to(device),
        "latents_history_2x": context.history_2x.to(device, dtype),
        "indices_latents_history_2x": plan.clean_2x_indices.to(device),
        "latents_history_4x": context.history_4x.to(device, dtype),
        "indices_latents_history_4x": plan.clean_4x_indices.to(device),
    }
    inputs = {}
    for name, embeds in (("positive", positive), ("negative", cond.negative)):
        states, mask = embeds.padded()
        inputs[name] = {
            "encoder_hidden_states": states.to(device, dtype),
            "encoder_attention_mask": mask.to(device),
            "pooled_projections": embeds.clip_pooler.to(device, dtype),
            **shared,
        }
    return inputs
