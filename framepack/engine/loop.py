"""The section loop: one job from its start (`framepack.engine.starts`) to its finished files.

Each section is sampled (a `Progress` per step), then committed: decoded, blended into the video, its latents and a
checkpoint saved, and handed to the job's video sink, which encodes it while the next section samples. The record
says a section is done once its video update and checkpoint are on disk; whatever ends the job, what was made is
kept and the job can go on from it.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import torch

from ..controls import (
    JobImages,
    SectionSchedule,
    describe_schedule,
    plan_schedule,
    prepare_images,
    timeline,
)
from ..events import Done, Event, Progress, SectionDone, Status
from ..jobs.checkpoint import Checkpoint, load_latents, save_latents
from ..jobs.paths import JobPaths, RecordError
from ..jobs.record import JobRecord
from ..loading import components, ensure_loaded, phase, replan
from ..lora import AppliedLora, apply_loras
from ..models import ModelSet
from ..models.components import LLAMA_MAX_TOKENS
from ..packing import LatentHistory, SectionPlan, join_sections, plan_sections
from ..sampling import make_denoiser, sample_unipc, section_sigmas
from ..settings import FPS, Settings, SettingsError
from .conditioning import (
    Conditioning,
    encode_conditioning,
    prompt_embeds,
    prompt_texts,
    prompt_token_count,
    section_inputs,
)
from .frames import FrameAssembler, decode_latents, latent_preview
from .sinks import SegmentedMp4, VideoSink
from .starts import INPUT_AUDIO, PAST_LATENTS
from .state import JobStart, section_noise
from .stepcache import StepCache, configure_cache


@dataclass
class _Run:
    """What a running job holds between its sections."""

    models: ModelSet
    settings: Settings
    paths: JobPaths
    images: JobImages
    schedule: SectionSchedule
    cond: Conditioning
    plans: list[SectionPlan]
    history: LatentHistory
    assembler: FrameAssembler
    generator: torch.Generator
    record: JobRecord
    checkpoint_images: tuple[dict[str, torch.Tensor], dict[str, str]]
    sink: VideoSink
    extended: dict[str, Any] | None

    def written(self, wait: bool = False) -> list[SectionDone]:
        """Note the sections whose video update, checkpoint and record are on disk (the writer saved them); their
        events, to report."""
        events = []
        for plan, frames, latents, counts in self.sink.finished(wait):
            self.record.sections_done = plan.index + 1
            events.append(SectionDone(plan.index + 1, len(self.plans), self.paths.video, frames, frames / FPS, latents, counts))
        return events


def run_sections(models: ModelSet, start: JobStart, paths: JobPaths, stop: threading.Event, previews: bool) -> Iterator[Event]:
    """The job itself, from `start` to `Done`; the caller holds its lock."""
    started = time.perf_counter()
    run = yield from _prepare(models, start, paths)
    settings, stopped, outcome = run.settings, False, "failed"
    try:
        # Set up inside the guard: whatever happens from here on, the transformer is left without it.
        cache = configure_cache(models.transformer, settings.step_cache, settings.cache_threshold, settings.steps)
        run.record.step_cache = {"method": cache.method, "threshold": cache.threshold} if cache else None
        cache_text = f"{cache.method} (threshold {cache.threshold:g})" if cache else "off"
        height, width = run.images.start.shape[:2]
        yield Status(f"Sampling {len(run.plans)} sections at {width}x{height}; attention: {models.attention}; step cache: {cache_text}")
        for plan in run.plans[run.history.sections_done :]:
            section_started = time.perf_counter()
            result = yield from _sample_section(run, plan, cache, stop, previews)
            if result is None:  # stopped before the section's last step
                stopped = True
                break
            yield Status(f"Decoding section {plan.index + 1} of {len(run.plans)}")
            _commit_section(run, plan, result, cache, section_started)
            if stop.is_set():
                stopped = not plan.is_last
                break
        yield from run.written(wait=True)
        if run.sink.error is not None:
            raise run.sink.error
        outcome = "stopped" if stopped else "done"
    except GeneratorExit:  # the consumer closed the stream: a stop, not a failure
        outcome = "stopped"
        raise
    finally:
        # Whatever ends the job (done, stopped, an error, the consumer closing the stream), keep what was made:
        # the pending video updates and their checkpoints too, so that a failed job can be resumed.
        if outcome != "done":
            run.written(wait=True)
        run.sink.close()
        configure_cache(models.transformer, None)  # leave the shared transformer without this job's cache
        latents_path = _finish(run, outcome)
    frames = run.assembler.num_frames
    yield Done(
        video_path=paths.video if paths.video.exists() else None, latents_path=latents_path, frames=frames,
        seconds=frames / FPS, sections_done=run.record.sections_done, stopped=stopped,
        elapsed=time.perf_counter() - started, attention=models.attention, step_cache=settings.step_cache,
    )  # fmt: skip


def _prepare(models: ModelSet, start: JobStart, paths: JobPaths) -> Iterator[Event]:
    """Everything before the first section: images, schedule, conditioning, LoRAs, the state made before, the record
    and the video sink. Yields what the user should hear, returns the `_Run`."""
    settings, inputs, resume = start.settings, start.inputs, start.checkpoint
    if models.variant != settings.variant:
        raise SettingsError("variant", f"the loaded models are the {models.variant} variant, not {settings.variant}")
    for note in start.notes:
        yield Status(note)
    images = prepare_images(inputs, settings)
    for note in images.notes:
        yield Status(note)
    schedule = plan_schedule(settings, images.keyframe_times, images.end is not None)
    if inputs.image is None:
        yield Status(f"No start image: starting from a {inputs.blank_start} frame")
    yield Status("Encoding prompt and image")
    for text in dict.fromkeys([settings.prompt, *(text for _, text in settings.prompts)]):
        if prompt_token_count(models, text) > LLAMA_MAX_TOKENS:
            yield Status(f"A prompt is longer than {LLAMA_MAX_TOKENS} tokens; the text past that is ignored: {text[:40]}...")
    if models.placement is not None:
        # "GPU memory to preserve" and the size decide how many transformer blocks stay on the GPU.
        models.placement = replan(models, models.placement, settings)
    embeds = yield from prompt_embeds(models, prompt_texts(settings, schedule))
    with components(models, "image_encoder", "vae"):
        cond = encode_conditioning(models, settings, images, schedule, embeds)
    if ensure_loaded(models, "transformer"):
        yield Status("Loaded the transformer again (it left memory while the text encoders ran)")
    if inputs.loras or models.loras is not None:
        yield Status(f"Applying {len(inputs.loras)} LoRA(s)" if inputs.loras else "Removing the LoRAs of the last job")
    loras = apply_loras(models, inputs.loras)

    plans = plan_sections(settings.variant, settings.num_sections, settings.latent_window_size)
    history = LatentHistory(settings.variant, cond.start_latent, settings.latent_window_size, cond.end_latent)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    extended = (start.origin or {}).get("extended_video")  # a job that continues a video file (`video_start`)
    if extended and extended.get("past"):
        history.continue_from(load_latents(paths.parts_dir / PAST_LATENTS))
    if resume is None:
        assembler, segments = FrameAssembler(settings.frames_per_section, history.prepends), []
    else:
        history.restore([load_latents(paths.section_latents(i)) for i in range(resume.sections_done)])
        assembler = FrameAssembler(settings.frames_per_section, history.prepends, resume.open_frames, resume.final_frames)
        segments = [paths.parts_dir / name for name in resume.segments]
        generator.set_state(resume.rng_state)
        if resume.sections_done:
            yield Status(f"Resuming after section {resume.sections_done} of {len(plans)}")
    record = _record(models, start, paths, images, schedule, loras)
    if settings.prompts or images.keyframes or images.end is not None:
        yield Status("Sections (time order):\n" + "\n".join(timeline(record.schedule)))
    tensors, metadata = images.to_tensors()  # saved with every checkpoint, for a resume
    metadata["loras"] = json.dumps(record.loras)
    metadata["origin"] = json.dumps(record.origin)
    audio = paths.parts_dir / INPUT_AUDIO if extended and extended.get("audio") else None
    # The settings (and what the images were) travel inside the MP4 too: a video alone is enough to vary it.
    shared_loras = [{key: lora[key] for key in ("name", "sha256", "weight")} for lora in record.loras]  # no paths
    # The job's name too: a renamed copy of the video still says which job it is (its owner's record decides access).
    comment = {"comment": json.dumps({"framepack": settings.to_dict(), "inputs": record.inputs, "loras": shared_loras,
                                      "job": paths.job_id})}  # fmt: skip
    sink = SegmentedMp4(paths, settings, history.prepends, segments, extended["prefix"] if extended else 0, audio, comment)
    return _Run(models, settings, paths, images, schedule, cond, plans, history, assembler, generator, record,
                (tensors, metadata), sink, extended)  # fmt: skip


def _record(
    models: ModelSet, start: JobStart, paths: JobPaths, images: JobImages, schedule: SectionSchedule,
    loras: list[AppliedLora],
) -> JobRecord:  # fmt: skip
    """The job's record as it begins (written once a section is on disk). A resumed job keeps what its record said
    of its inputs and origin and the seconds its sections took."""
    settings, done = start.settings, start.checkpoint.sections_done if start.checkpoint is not None else 0
    previous = None
    if start.checkpoint is not None and paths.manifest.is_file():
        try:
            previous = JobRecord.load(paths)
        except RecordError:
            previous = None  # the checkpoint says all that matters; the record is written anew
    return JobRecord(
        state="running", sections_done=done, sections=settings.num_sections, owner=start.owner,
        settings=settings.to_dict(), inputs=(previous and previous.inputs) or start.inputs.describe(),
        schedule=describe_schedule(schedule, settings, images.end is not None), loras=[lora.to_dict() for lora in loras],
        origin=(previous and previous.origin) or start.origin, models=models.sources,
        dtype=str(models.dtype).removeprefix("torch."), device=str(models.device), attention=models.attention,
        memory_mode=models.placement.plan.mode if models.placement is not None else None, versions=library_versions(),
        section_seconds=previous.section_seconds[:done] if previous else [], video=paths.video.name,
        latents=paths.latents.name, derived=previous.derived if previous else [],
    )  # fmt: skip


def _sample_section(
    run: _Run, plan: SectionPlan, cache: StepCache | None, stop: threading.Event, previews: bool
) -> Iterator[Event]:
    """Sample one section (a `Progress` per step, and the `SectionDone` of earlier sections as their files land);
    returns its latents, or None when a stop came before its last step."""
    models, settings = run.models, run.settings
    if cache is not None:
        cache.reset()
    height, width = run.images.start.shape[:2]
    noise = section_noise(run.generator, settings, height // 8, width // 8)
    sigmas = section_sigmas(settings.steps, settings.latent_window_size, height // 8, width // 8)
    denoise = make_denoiser(
        models.transformer, section_inputs(models, run.cond, run.history, plan), cfg=settings.cfg,
        cfg_rescale=settings.cfg_rescale, distilled_cfg=settings.distilled_cfg, steps=settings.steps,
    )  # fmt: skip
    for step in sample_unipc(denoise, noise.to(models.device), sigmas.to(models.device)):
        preview = latent_preview(step.denoised) if previews else None
        span = run.schedule.section_range(plan.index, settings.latent_window_size)
        yield Progress(plan.index + 1, len(run.plans), step.step + 1, step.total, run.assembler.num_frames, preview, span)
        yield from run.written()
        if run.sink.error is not None:
            raise run.sink.error
        if stop.is_set():
            break
    if stop.is_set() and step.step + 1 < step.total:
        return None
    return step.denoised.float().cpu()


def _commit_section(run: _Run, plan: SectionPlan, result: torch.Tensor, cache: StepCache | None, started: float) -> None:
    """Decode a sampled section into the video and save what a resume needs; the video update and the checkpoint
    after it go to the sink's thread, off the sampling path."""
    models, settings, paths = run.models, run.settings, run.paths
    with phase(models, models.vae):
        clip = decode_latents(models.vae, run.history.add(plan, result))
    if run.extended and plan.is_last and run.history.prepends:
        clip = clip[:, :, 1:]  # the frame of the start slot: the extended video's last frame, which it has
    final = run.assembler.add(clip)
    counts = cache.counts() if cache is not None else {}
    save_latents(paths.section_latents(plan.index), run.history.newest)
    tensors, metadata = run.checkpoint_images
    checkpoint = Checkpoint(
        job_id=paths.job_id, settings=settings.to_dict(), sections_done=run.history.sections_done,
        rng_state=run.generator.get_state(), open_frames=run.assembler.open, final_frames=run.assembler.final_frames,
        segments=[], images=tensors, owner=run.record.owner, image_metadata=metadata,
    )  # fmt: skip
    run.record.section_seconds.append(round(time.perf_counter() - started, 3))
    record = dataclasses.replace(run.record, sections_done=checkpoint.sections_done, section_seconds=list(run.record.section_seconds))

    def publish(segments: list[Path]) -> None:
        checkpoint.save_after(paths.checkpoint, segments)
        record.save(paths)  # with its checkpoint: a process killed from here on leaves a job its record names

    tag = (plan, run.assembler.num_frames, result, counts)
    run.sink.add(final, run.assembler.open_frames(), tag, publish)


def _finish(run: _Run, outcome: str) -> Path | None:
    """Leave the job's files finished or resumable, in an order where a crash at any point does the same: the
    video's latents, then the record, then (for a done job) the checkpoint. The parts folder goes last, when
    the job's lock is released. Returns the latents file, if any section is on disk."""
    paths, record = run.paths, run.record
    if not record.sections_done:  # sections whose video update and checkpoint are on disk
        return None
    sections = [load_latents(paths.section_latents(i)) for i in range(record.sections_done)]
    save_latents(paths.latents, join_sections(run.settings.variant, run.history.lead, sections), *run.images.to_tensors())
    record.state = outcome
    record.save(paths)
    if outcome == "done":  # nothing left to resume
        paths.checkpoint.unlink(missing_ok=True)
    return paths.latents


def library_versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "av": av.__version__}  # fmt: skip
