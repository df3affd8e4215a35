"""Where each kind of job begins. Every start returns a `JobStart` for the one section loop (`framepack.engine.loop`):
a new video starts from nothing; the others start from a checkpoint written into the job's own parts folder, which
holds what was made before exactly as an uninterrupted job would have it (latents per section, encoded final frames,
the frames a later section still blends into, and the noise generator after as many draws).

- `resume_start`: a stopped or killed job goes on from its own checkpoint.
- `branch_start`: a new job keeps the first sections of another and redoes the rest with changed settings.
- `longer_start`: a new job makes a finished F1 video longer (F1 generates forwards, so its state after the last
  section can be rebuilt from its outputs).
- `video_start`: a new job continues any video file.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from ..controls import JobImages, JobInputs, Keyframe, prepare_images
from ..jobs.checkpoint import Checkpoint, load_latents, read_checkpoint, save_latents
from ..jobs.paths import JobLock, JobPaths, RecordError, remove_parts_if_unneeded
from ..jobs.record import JobRecord
from ..loading import phase
from ..lora import LoraSpec, specs_from_record
from ..media.images import target_size
from ..media.mp4 import Mp4Encoder, SegmentedVideo, trim_mp4
from ..media.reading import extract_audio, read_video, reading_notes, too_short
from ..models import ModelSet
from ..packing import CONTEXT_FRAMES, LatentHistory, plan_sections
from ..settings import EPSILON, FPS, Settings, SettingsError, parse_timed_prompt
from .conditioning import encode_frames
from .frames import FrameAssembler, decode_latents
from .state import JobStart, replay_noise

# Settings a branch cannot change: the kept sections were made at this size, window and variant.
GEOMETRY = ("variant", "resolution", "height", "width", "latent_window_size")
# The shortest video the original model can extend: two latent frames' worth (F1 needs a section's overlap).
MIN_VIDEO_FRAMES = 5
# Files in an extension job's parts folder: the input's own frames (the video's first segment), its sound, and
# (F1) the latents of its last frames.
INPUT_SEGMENT, INPUT_AUDIO, PAST_LATENTS = "input.mp4", "audio.m4a", "past.safetensors"


def new_start(settings: Settings, inputs: JobInputs, owner: str) -> JobStart:
    """A video made from images and a prompt alone."""
    return JobStart(settings=settings, inputs=inputs, owner=owner)


def resume_start(paths: JobPaths) -> JobStart:
    """The job goes on after its last finished section, with the images and LoRAs its checkpoint keeps."""
    checkpoint = read_checkpoint(paths)  # under the lock, which also removed what a killed process left
    loras = specs_from_record(checkpoint.lora_entries)
    inputs = JobImages.from_tensors(checkpoint.images, checkpoint.image_metadata).inputs(loras)
    return JobStart(settings=Settings.from_dict(checkpoint.settings), inputs=inputs, owner=checkpoint.owner,
                    checkpoint=checkpoint)  # fmt: skip


@contextlib.contextmanager
def reading_source(source: JobPaths) -> Iterator[JobRecord]:
    """The source job's record while its lock is held (its record and latents change while it runs)."""
    lock = JobLock(source)
    if not lock.acquire():
        raise SettingsError("source", f"{source.job_id} is running: stop it or let it finish first")
    try:
        yield JobRecord.load(source)
    finally:
        lock.release()
        remove_parts_if_unneeded(source)  # the lock's file may have made its parts folder


def _source_outputs(source: JobPaths) -> tuple[torch.Tensor, JobImages]:
    try:
        return load_latents(source.latents), JobImages.load(source.latents)
    except (OSError, SafetensorError, KeyError, ValueError) as exc:
        raise RecordError(f"the latents of {source.job_id} are missing or damaged ({type(exc).__name__})") from exc


def branch_start(
    models: ModelSet, source: JobPaths, paths: JobPaths, keep: int, changes: dict[str, Any],
    keyframes: Sequence[Keyframe] | None, loras: Sequence[LoraSpec] | None, owner: str,
) -> JobStart:  # fmt: skip
    """The new job after the kept sections: their latents and encoded frames in its parts folder (the frames
    re-decoded from the latents, which gives the same frames), the noise generator of the new seed after as many
    draws, the frames still to blend. A new prompt (plain or timed) replaces the source's prompts."""
    with reading_source(source) as record:
        original = record.settings_object(source.job_id)
        latents, images = _source_outputs(source)
    done = record.sections_done
    if changed := [name for name in GEOMETRY if name in changes and changes[name] != getattr(original, name)]:
        raise SettingsError(changed[0], f"a branch keeps the source's {', '.join(changed)}: its kept sections were made with them")  # fmt: skip
    if "prompt" in changes and "prompts" not in changes:
        changes = {**changes, "prompts": ()}
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
    if loras is None:
        loras = specs_from_record(record.loras)
    if keyframes is None:
        keyframes = [Keyframe(seconds, image) for seconds, image in images.keyframes]
    inputs = JobInputs(images.start, images.end, tuple(keyframes), loras=tuple(loras))
    checkpoint = made_checkpoint(
        paths, settings, owner, prepare_images(inputs, settings), keep, replay_noise(settings, keep, *latents.shape[3:]),
        assembler.open, assembler.final_frames, [segment.name for segment in video.segments],
        {"branched_from": {"job": source.job_id, "sections": keep}},
    )  # fmt: skip
    note = f"Branched from {source.job_id}: keeping its first {keep} section(s)"
    return JobStart(settings=settings, inputs=inputs, owner=owner, checkpoint=checkpoint, notes=(note,))


def longer_start(models: ModelSet, source: JobPaths, paths: JobPaths, seconds: float, prompt: str, owner: str) -> JobStart:
    """A new job that is the finished F1 job `source` made `seconds` longer, exactly as if it had been made that long
    at once: the latents (and the start image stored with them), the noise generator replayed for the sections
    made, the frames still to blend re-decoded from the last latents, and the video itself cut before those frames.
    `prompt` may add timed prompts for the added seconds ("[6s: he sits down]"). The source stays as it is."""
    with reading_source(source) as record:
        settings = record.settings_object(source.job_id)
        if settings.variant != "f1":
            raise SettingsError("variant", "only F1 videos can be made longer: the original variant generates from the end "
                                "backwards, so its length is fixed when it starts")  # fmt: skip
        if (record.origin or {}).get("extended_video"):
            raise SettingsError("seconds", f"{source.job_id} continues another video: extend it as any video (the extend command, or the page's video)")  # fmt: skip
        if record.state != "done":
            raise SettingsError("seconds", f"{source.job_id} is not finished: resume it first")
        latents, images = _source_outputs(source)
        done, w = record.sections_done, settings.latent_window_size
        longer = settings.replace(total_second_length=round(settings.total_second_length + seconds, 6))
        if longer.num_sections <= done:
            raise SettingsError("seconds", f"{seconds:g} s is less than half a section; nothing to add")
        longer = longer.replace(prompts=settings.prompts + added_prompts(prompt, done * 4 * w / FPS))
        if latents.ndim != 5 or latents.shape[2] != done * w + 1:
            raise RecordError(f"the latents of {source.job_id} do not match its record ({done} sections)")
        for index, chunk in enumerate(latents[:, :, 1:].split(w, dim=2)):
            save_latents(paths.section_latents(index), chunk)
        # The frames a next section blends into are the end of the last decoded clip (see LatentHistory.add).
        with phase(models, models.vae):
            clip = decode_latents(models.vae, latents[:, :, -2 * w :] if done > 1 else latents)
        open_frames = clip[:, :, -settings.frames_per_section :]
        final_frames = 4 * latents.shape[2] - 3 - open_frames.shape[2]
        trim_mp4(source.video, paths.parts_dir / "00001.mp4", final_frames)
    loras = specs_from_record(record.loras)
    checkpoint = made_checkpoint(
        paths, longer, owner, images, done, replay_noise(settings, done, *latents.shape[3:]), open_frames, final_frames,
        ["00001.mp4"], {"lengthened_from": {"job": source.job_id, "seconds": seconds}}, record.loras,
    )  # fmt: skip
    note = f"Making {source.job_id} {seconds:g} s longer as a new video; {source.job_id} stays as it is"
    return JobStart(settings=longer, inputs=images.inputs(loras), owner=owner, checkpoint=checkpoint, notes=(note,))


def added_prompts(prompt: str, made: float) -> tuple[tuple[float, str], ...]:
    """The timed prompts a longer video adds; they may govern only the sections it adds (from `made` seconds)."""
    base, pairs = parse_timed_prompt(prompt)
    if base:
        raise SettingsError("prompt", f"give the added seconds' prompts as timed groups, e.g. [{made:g}s: he sits down]")
    if early := [seconds for seconds, _ in pairs if seconds < made - EPSILON]:
        raise SettingsError("prompt", f"{early[0]:g} s is in the part already made; the added seconds' timed prompts start at {made:g} s or later")  # fmt: skip
    return pairs


def extension_needs(settings: Settings) -> tuple[int, str]:
    """The fewest frames at 30 fps a video must have to be extended with `settings`, and what they are for: F1 blends
    its first section into the video's last frames; the original model needs two latent frames of it."""
    if settings.variant == "f1":
        return settings.frames_per_section, "a section's overlap"
    return MIN_VIDEO_FRAMES, "two latent frames"


def video_start(
    models: ModelSet, settings: Settings, video: Any, inputs: JobInputs, paths: JobPaths, owner: str,
    stop: threading.Event | None = None,
) -> JobStart:  # fmt: skip
    """The extension job's state before its first section: the input's frames encoded once into the first segment
    as they are decoded (only the last ones stay in memory), its sound, and for F1 the frames to blend into and the
    latents of the last ones. F1 continues from the video's last frames with its first frame in the start slot; the
    original model generates towards the video with its last frame in the start slot. A `stop` while the video is
    read raises ReadingStopped, the segment begun removed (the job has made nothing yet)."""
    forwards = settings.variant == "f1"
    overlap = settings.frames_per_section
    # F1 packs up to 19 latent frames of history and decodes the last window with the first new one.
    tail = 4 * max(CONTEXT_FRAMES, settings.latent_window_size) - 3 if forwards else 1
    encoder: Mp4Encoder | None = None

    def passed(frame: np.ndarray) -> None:
        nonlocal encoder
        if encoder is None:
            encoder = Mp4Encoder(paths.parts_dir / INPUT_SEGMENT, frame.shape[1], frame.shape[0], FPS, settings.mp4_crf)
        encoder.add(frame)

    try:
        found = read_video(video, lambda image: target_size(image, settings.resolution, settings.height, settings.width), tail, passed, stop)
        needed, why = extension_needs(settings)
        if found.frames < needed:  # checked before the job was queued; the file may have changed since
            raise too_short(video.name, found.frames, needed, why)
        kept = np.stack(found.tail)
        for frame in kept[: len(kept) - overlap] if forwards else kept:
            passed(frame)
        segments = [encoder.close().name] if encoder is not None else []
    except BaseException:
        if encoder is not None:
            encoder.abort()
        raise
    notes = [f"{video.name}: {found.frames} frames at 30 fps, {found.width}x{found.height} -> {kept.shape[2]}x{kept.shape[1]}"]
    notes += reading_notes(video.name, found.turn, found.facts)
    if found.facts.variable:
        shortest, longest = (round(1 / gap, 2) if gap > 0 else 0 for gap in found.facts.gaps)
        notes.append(f"{video.name} has a variable frame rate ({longest:g} to {shortest:g} fps, {found.fps:.2f} on average): "
                     "its frames are shown at 30 fps, each for as long as it lasts")  # fmt: skip
    elif abs(found.fps - FPS) > 0.01:
        notes.append(f"{video.name} runs at {found.fps:g} fps: its frames are shown at 30 fps, each for as long as it lasts")
    audio = extract_audio(video, paths.parts_dir / INPUT_AUDIO)
    open_frames = None
    if forwards:
        with phase(models, models.vae):
            past = encode_frames(models, kept)
        save_latents(paths.parts_dir / PAST_LATENTS, past)
        open_frames = torch.from_numpy(kept[len(kept) - overlap :]).float().permute(3, 0, 1, 2)[None] / 127.5 - 1
    start = found.first if forwards else found.tail[-1]
    start_inputs = JobInputs(start, inputs.end_image, inputs.keyframes, loras=inputs.loras, notes=inputs.notes).load()
    origin = {"extended_video": {
        "name": found.name, "sha256": found.sha256, "fps": round(found.fps, 3), "frames": found.frames,
        "frames_encoded": len(kept) if forwards else 1, "prefix": len(segments), "audio": audio is not None,
        "past": forwards,
    }}  # fmt: skip
    checkpoint = made_checkpoint(
        paths, settings, owner, prepare_images(start_inputs, settings), 0, replay_noise(settings, 0, 1, 1), open_frames,
        found.frames - (overlap if forwards else 0), segments, origin,
    )  # fmt: skip
    return JobStart(settings=settings, inputs=start_inputs, owner=owner, checkpoint=checkpoint, notes=tuple(notes))


def made_checkpoint(
    paths: JobPaths, settings: Settings, owner: str, images: JobImages, sections_done: int, generator: torch.Generator,
    open_frames: torch.Tensor | None, final_frames: int, segments: list[str], origin: dict[str, Any],
    loras: list[dict[str, Any]] | None = None,
) -> Checkpoint:  # fmt: skip
    """The checkpoint of a job that starts from something made before (`origin` says what). `loras` are the
    recorded LoRAs it goes on with; none: the job records the ones it applies when it runs."""
    tensors, metadata = images.to_tensors()
    metadata["loras"] = json.dumps(loras or [])
    metadata["origin"] = json.dumps(origin)
    return Checkpoint(
        job_id=paths.job_id, settings=settings.to_dict(), sections_done=sections_done, rng_state=generator.get_state(),
        open_frames=open_frames, final_frames=final_frames, segments=segments, images=tensors, owner=owner,
        image_metadata=metadata,
    )  # fmt: skip
