"""Running one job from the command line: `generate`, `resume` (and `resume --add-seconds`), `extend` and `branch`.
Each builds the job's spec, checks what it can before tens of GB of models load, loads them, and runs the spec
through `framepack.kinds.execute`, the path every queued job takes too, with a progress bar."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from ..controls import JobInputs, plan_schedule
from ..engine.errors import USER_ERRORS
from ..engine.starts import added_prompts
from ..events import Done, Download, Error, Event, FrameProgress, Progress, SectionDone, Status
from ..jobs.checkpoint import read_checkpoint
from ..jobs.paths import LOCAL_USER, JobPaths, new_job_id
from ..jobs.record import JobRecord, job_of_file
from ..jobs.spec import JobSpec
from ..kinds import (
    JobContext,
    add_seconds_spec,
    branch_spec,
    execute,
    follow_up,
    inputs_spec,
    recorded_models,
    resume_spec,
)
from ..loading import load_models
from ..lora import LoraSpec, lora_bytes
from ..media.images import load_image
from ..memory.planning import check_before_loading
from ..memory.sizes import file_configs
from ..models import ModelSet, ModelsMissingError, ModelSource
from ..models.components import default_device, resolve_dtypes
from ..models.download import ensure_models
from ..options import add_runtime_options, model_source
from ..settings import Settings
from .logs import log_file
from .options import (
    add_job_options,
    add_setting_options,
    checked_job,
    setting_changes,
    settings_from_args,
)
from .postprocess import add_postprocess_options, after_job

logger = logging.getLogger("framepack.cli")
# What loading the models may meet that a user can mend: the exit status then says the job did not start (1).
LOAD_ERRORS = (*USER_ERRORS, ModelsMissingError)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """`generate`, `resume`, `extend` and `branch`."""
    gen = commands.add_parser("generate", help="generate a video from an image and a prompt")
    add_job_options(gen)
    gen.add_argument("--output-dir", type=Path, default=Path("outputs"), help="where files go (default ./outputs)")
    gen.add_argument("--job-name", help="file name stem of the outputs (default: time and random suffix)")
    gen.set_defaults(handler=run_generate)
    res = commands.add_parser("resume", help="finish a stopped or killed job, exactly as if it had not stopped")
    res.add_argument("path", type=Path, help="the job's record (.json), video (.mp4) or checkpoint")
    res.add_argument("--add-seconds", type=float, help="a new video: this finished F1 video that many seconds longer")
    res.add_argument("--prompt", default="", help='with --add-seconds: timed prompts for the added seconds, "[6s: he sits down]"')
    res.add_argument("--job-name", help="with --add-seconds: file name stem of the new video (default: time and random suffix)")
    add_postprocess_options(res)
    res.set_defaults(handler=run_resume)
    ext = commands.add_parser(
        "extend", help="make any video longer: its frames first, then new ones",
        description="Continue a video (any container and codec PyAV reads, any size and frame rate) by --seconds. "
        "F1 continues forwards from its last frames; the original model generates the new part from its far end back "
        "towards the video.",
    )  # fmt: skip
    ext.add_argument("video", type=Path, help="the video to continue")
    ext.add_argument("--end-image", type=Path, help="the added part's last frame (original variant)")
    add_setting_options(ext)
    add_postprocess_options(ext)
    ext.add_argument("--output-dir", type=Path, default=Path("outputs"), help="where files go (default ./outputs)")
    ext.add_argument("--job-name", help="file name stem of the outputs (default: time and random suffix)")
    ext.set_defaults(handler=run_extend)
    branch = commands.add_parser(
        "branch", help="a new job that keeps the first sections of another and redoes the rest",
        description="Keep the first K sections (as the progress bar numbers them) of a job and generate the rest "
        "with its settings and the ones given here. Settings of the geometry (size, window, variant; the original "
        "variant's length) cannot change. A new --prompt (plain or timed) replaces the job's prompts.",
    )  # fmt: skip
    branch.add_argument("path", type=Path, help="the source job's record (.json) or video (.mp4)")
    branch.add_argument("--keep-sections", type=int, required=True, metavar="K", help="how many of its first sections to keep")
    add_setting_options(branch, for_branch=True)
    add_postprocess_options(branch)
    branch.add_argument("--job-name", help="file name stem of the new job (default: time and random suffix)")
    branch.set_defaults(handler=run_branch)
    for command in (gen, res, ext, branch):
        add_runtime_options(command)
        command.add_argument("--quiet", action="store_true", help="no progress bar")


def run_generate(args: argparse.Namespace) -> int:
    settings, inputs = checked_job(args)  # its files, which the job reads again as it starts
    spec = inputs_spec("generate", settings, inputs, options=after_job(args))
    return _run(args, spec, args.job_name or new_job_id(), args.output_dir, settings, settings.num_sections, inputs.loras)


def source_of(path: Path) -> JobPaths:
    """The job a video or record is (what it names, else the job whose video has its content: a copy under any name),
    in the folder the file is in."""
    return JobPaths(Path(path).parent, job_of_file(path, Path(path).parent))


def run_resume(args: argparse.Namespace) -> int:
    source = source_of(args.path)
    if args.add_seconds is not None:
        saved = JobRecord.load(source).settings_object(source.job_id)
        longer = saved.replace(total_second_length=round(saved.total_second_length + args.add_seconds, 6))
        added_prompts(args.prompt, saved.num_sections * 4 * saved.latent_window_size / 30)  # refused now, not after loading
        spec = add_seconds_spec(source.job_id, args.add_seconds, args.prompt, after_job(args))
        sections = max(0, longer.num_sections - saved.num_sections)
        return _run(args, spec, args.job_name or new_job_id(), source.output_dir, saved, sections)
    if args.prompt:
        print("error: --prompt goes with --add-seconds (a stopped job resumes with its own prompts)", file=sys.stderr)
        return 2
    checkpoint = read_checkpoint(source)
    settings = Settings.from_dict(checkpoint.settings)
    return _run(args, resume_spec(source.job_id), source.job_id, source.output_dir, settings,
                settings.num_sections - checkpoint.sections_done)  # fmt: skip


def run_extend(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    # Read the images, check the controls and the video (building the spec checks it) before loading anything; the
    # video is read whole by the job itself.
    given = JobInputs(None, args.end_image, args.keyframe or (), loras=args.lora or ())
    images = given.load()
    plan_schedule(settings, [k.seconds for k in images.keyframes], images.end_image is not None)
    spec = inputs_spec("extend", settings, given, args.video, options=after_job(args))
    return _run(args, spec, args.job_name or new_job_id(), args.output_dir, settings, settings.num_sections, given.loras)


def run_branch(args: argparse.Namespace) -> int:
    source = source_of(args.path)
    changes = setting_changes(args)
    settings = JobRecord.load(source).settings_object(source.job_id)
    if "prompt" in changes:
        changes["prompts"] = ()  # a new prompt, plain or timed, replaces the job's prompts
    settings = settings.replace(**changes)
    for keyframe in args.keyframe or ():
        load_image(keyframe.image)  # an unreadable image is refused before the models load
    keyframes = tuple(args.keyframe) if args.keyframe is not None else None
    loras = tuple(args.lora) if args.lora is not None else None
    spec = branch_spec(source.job_id, args.keep_sections, changes, keyframes, loras, after_job(args))
    sections = max(0, settings.num_sections - args.keep_sections)
    return _run(args, spec, args.job_name or new_job_id(), source.output_dir, settings, sections, loras or ())


def _run(
    args: argparse.Namespace, spec: JobSpec, job_id: str, output_dir: Path, settings: Settings, sections: int,
    loras: Sequence[LoraSpec] = (),
) -> int:  # fmt: skip
    """Load the models the job needs and run it with a progress bar; 1 when they cannot be loaded."""
    try:
        models = load_for(args, settings, loras, recorded_models(spec, job_id, 1, output_dir))
    except LOAD_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    context = lambda stop: JobContext(models, job_id, LOCAL_USER, spec, output_dir, Path.cwd(), stop, previews=False)  # noqa: E731
    code = follow(lambda stop: execute(context(stop)), sections * settings.steps, args.quiet)
    after = follow_up(spec, job_id) if code == 0 else None
    if after is None:
        return code
    # What the job asked to run after it, as the queue runs it: a job of its own, on the job's finished video.
    later = lambda stop: JobContext(None, new_job_id(), LOCAL_USER, after, output_dir, Path.cwd(), stop,  # noqa: E731
                                    device=args.device, cache_dir=args.hf_cache)  # fmt: skip
    return follow(lambda stop: execute(later(stop)), 0, args.quiet)


def load_for(
    args: argparse.Namespace, settings: Settings, loras: Sequence[LoraSpec] = (), made_with: dict[str, str] | None = None
) -> ModelSet:
    """Check memory, then load the models for `settings` (and `loras`). A job that goes on from a previous one runs
    on the models its record names (`made_with`: a local model root, or the hub repos at their revisions), unless
    --models says otherwise. Raises the errors a user can mend (memory, missing files, a bad LoRA)."""
    source = model_source(args, settings.variant)
    if args.models is None and made_with is not None:
        source = ModelSource.recorded(made_with, args.hf_cache)
        if args.transformer_file is not None:
            source = replace(source, transformer_file=args.transformer_file.resolve())
    fetch_models(source, settings.variant, getattr(args, "quiet", False))  # the first run: before sizing the models
    lora = None
    if loras:  # matched against the model's architecture before anything loads
        device = torch.device(args.device) if args.device else default_device()
        configs = file_configs(source.models_dir, settings.variant, source.transformer_file, source.cache_dir)
        lora = lora_bytes([spec.path for spec in loras], configs, resolve_dtypes(settings.dtype, device)[0])
    # The same check as the app's: say what will not fit before loading tens of GB.
    plan = check_before_loading(
        settings, fp8=args.fp8, device=args.device, models_dir=source.models_dir, lora=lora,
        transformer_file=source.transformer_file, fp8_matmuls=args.fp8_compute, cache_dir=source.cache_dir,
    )  # fmt: skip
    return load_models(settings.variant, source, None, settings.dtype, args.attention, args.compile, plan)


def fetch_models(source: ModelSource, variant: str, quiet: bool) -> None:
    """Download what the hub cache lacks of `variant`'s models: how much, then a progress bar of bytes."""
    bar: tqdm | None = None

    def progress(event: Download) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=event.total, initial=event.done, unit="B", unit_scale=True, disable=quiet, file=sys.stderr,
                       desc="Downloading models")  # fmt: skip
        bar.set_postfix_str(event.file, refresh=False)
        bar.update(event.done - bar.n)

    try:
        ensure_models(source, variant, progress, lambda text: print(text, file=sys.stderr))
    finally:
        if bar is not None:
            bar.close()


def follow(start: Callable[[threading.Event], Iterator[Event]], total_steps: int, quiet: bool) -> int:
    """Run a job's event stream with a progress bar; the first Ctrl-C stops it after the current step."""
    stop = threading.Event()

    def on_interrupt(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nStopping after this step (Ctrl-C again to abort now)...", file=sys.stderr)

    previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    bar = tqdm(total=total_steps, disable=quiet, unit="step", file=sys.stderr)
    try:
        for event in start(stop):
            if isinstance(event, Progress):
                bar.set_description(f"section {event.section}/{event.sections}")
                bar.update(1)
            elif isinstance(event, FrameProgress):  # a step that works frame by frame (post-processing)
                bar.unit, bar.total = "frame", event.total or None
                bar.set_description(event.stage)
                bar.set_postfix_str(f"{event.fps:.1f} frames/s", refresh=False)
                bar.update(event.done - bar.n)
            elif isinstance(event, SectionDone):
                bar.set_postfix_str(f"{event.frames} frames, {event.seconds:.2f} s")
            elif isinstance(event, Status):
                bar.write(event.message, file=sys.stderr)
            elif isinstance(event, Download):  # a queued job's first run (`queue run`)
                bar.set_description(event.line())
            elif isinstance(event, Error):
                bar.close()
                if event.exception is not None and not isinstance(event.exception, USER_ERRORS):
                    logger.error("The job failed", exc_info=event.exception)  # the traceback goes to the log file
                where = f" (the full log: {log_file()})" if log_file() else ""
                print(f"error: {event.message}{where}", file=sys.stderr)
                return 1
            elif isinstance(event, Done):
                bar.close()
                return report(event)
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous_handler)
    return 1


def report(done: Done) -> int:
    if done.video_path is None:
        print("Stopped before the first section finished; nothing was written.")
        return 130
    state = f"Stopped after {done.sections_done} sections" if done.stopped else "Done"
    ran = f" (attention {done.attention})" if done.latents_path is not None else ""
    print(f"{state}: {done.frames} frames, {done.seconds:.2f} s of video in {done.elapsed:.1f} s{ran}")
    print(f"video: {done.video_path}")
    if done.latents_path is not None:
        print(f"latents: {done.latents_path}")
    return 130 if done.stopped else 0
