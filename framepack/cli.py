"""The headless command line: `python -m framepack generate ...` runs one job with a progress bar; `queue` and
`batch` work the outputs folder's job queue, on one worker, one per GPU or Ray actors."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from .events import Done, Error, Event, Progress, SectionDone, Status
from .engine.core import branch_job, extend_job, extend_video, generate, job_paths, read_checkpoint, resume_job
from .batch import read_batch
from .cluster import ClusterError
from .jobs import QueuedJob, SqliteJobStore
from .lora import LoraError, LoraSpec, describe_lora, read_lora
from .outputs import LOCAL_USER, new_job_id
from .worker import JobEvent, Worker, job_spec
from .memory.planning import MemoryPlan, MemoryPlanError, check_before_loading
from .memory.sizes import ModelConfigs, file_configs
from .lora import lora_bytes
from .models.components import meta_transformer
from .loading import load_models
from .models import ModelSet, ModelSource, ModelsMissingError
from .models.components import default_device, resolve_dtypes
from .models.attention import ATTENTION_CHOICES
from .engine.stepcache import DEFAULT_THRESHOLDS_TEXT
from .models.checkpoints import CheckpointError
from .media.images import ImageError, load_image
from .controls import BLANK_STARTS, JobInputs, Keyframe, plan_schedule, prepare_images
from .settings import CACHE_METHODS, DTYPES, VARIANTS, Settings, SettingsError
from .media.reading import check_video
from .memory.planning import plan_for_settings
from .memory.sensing import detect_device, system_ram, system_swap
from .memory.sizes import GB, ModelSizes
from .models.checkpoints import FORMATS, inspect_transformer_file

# CLI option -> Settings field, for options whose names differ. Options left out keep the Settings default.
_SETTING_OF = {
    "seconds": "total_second_length",
    "teacache": "use_teacache",
    "crf": "mp4_crf",
}
_SETTING_OPTIONS = (
    "variant", "prompt", "negative_prompt", "seed", "seconds", "latent_window_size", "steps", "cfg",
    "distilled_cfg", "cfg_rescale", "teacache", "cache_method", "cache_threshold", "resolution", "height", "width",
    "dtype", "crf", "end_strength", "prompt_blend_sections",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m framepack", description="FramePack image-to-video, headless.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate a video from an image and a prompt")
    add_job_options(gen)
    gen.add_argument("--output-dir", type=Path, default=Path("outputs"), help="where files go (default ./outputs)")
    gen.add_argument("--job-name", help="file name stem of the outputs (default: time and random suffix)")
    res = commands.add_parser("resume", help="finish a stopped or killed job, exactly as if it had not stopped")
    res.add_argument("path", type=Path, help="the job's manifest (.json), video (.mp4) or checkpoint")
    res.add_argument("--add-seconds", type=float, help="make a finished F1 video this many seconds longer")
    res.add_argument("--prompt", default="", help='with --add-seconds: timed prompts for the added seconds, "[6s: he sits down]"')
    ext = commands.add_parser(
        "extend", help="make any video longer: its frames first, then new ones",
        description="Continue a video (any container and codec PyAV reads, any size and frame rate) by --seconds. "
        "F1 continues forwards from its last frames; the original model generates the new part from its far end back "
        "towards the video.",
    )  # fmt: skip
    ext.add_argument("video", type=Path, help="the video to continue")
    ext.add_argument("--end-image", type=Path, help="the added part's last frame (original variant)")
    add_setting_options(ext)
    ext.add_argument("--output-dir", type=Path, default=Path("outputs"), help="where files go (default ./outputs)")
    ext.add_argument("--job-name", help="file name stem of the outputs (default: time and random suffix)")
    branch = commands.add_parser(
        "branch", help="a new job that keeps the first sections of another and redoes the rest",
        description="Keep the first K sections (as the progress bar numbers them) of a job and generate the rest "
        "with its settings and the ones given here. Settings of the geometry (size, window, variant; the original "
        "variant's length) cannot change.",
    )  # fmt: skip
    branch.add_argument("path", type=Path, help="the source job's manifest (.json) or video (.mp4)")
    branch.add_argument("--keep-sections", type=int, required=True, metavar="K", help="how many of its first sections to keep")
    add_setting_options(branch, for_branch=True)
    branch.add_argument("--job-name", help="file name stem of the new job (default: time and random suffix)")
    queue = commands.add_parser(
        "queue", help="the job queue of an outputs folder (the app's too): add, list, cancel, run",
        description="Jobs wait in a queue kept in the outputs folder (jobs.sqlite3): it outlives the app, and the app, "
        "`queue run` and `batch` all work from it.",
    )  # fmt: skip
    queue_commands = queue.add_subparsers(dest="queue_command", required=True)
    add = queue_commands.add_parser("add", help="queue a job (the generate command's options); prints its id")
    add_job_options(add)
    listing = queue_commands.add_parser("list", help="the queue: running, waiting in line order, then ended jobs")
    cancel = queue_commands.add_parser("cancel", help="stop jobs: waiting ones at once, a running one after its step")
    cancel.add_argument("job_ids", nargs="+", metavar="JOB", help="job ids, as `queue list` shows them")
    run = queue_commands.add_parser("run", help="run the queued jobs, then stop")
    batch = commands.add_parser(
        "batch", help="run a JSON Lines or CSV file of jobs",
        description="One job a line, keyed by `image` and the generate command's option names (prompt, seconds, "
        "seed, steps, resolution, ...); the options given here are the defaults. Every line is checked before "
        "anything runs. The jobs join the outputs folder's queue and run with whatever waits there.",
    )  # fmt: skip
    batch.add_argument("file", type=Path, help="the batch file (.jsonl or .csv)")
    add_job_options(batch)
    for command in (add, listing, cancel, run, batch):
        command.add_argument("--output-dir", type=Path, default=Path("outputs"), help="the outputs folder (default ./outputs)")
    for command in (gen, res, ext, branch, run, batch):
        add_runtime_options(command)
    for command in (run, batch):
        add_worker_options(command)
    add_check_memory_parser(commands)
    info = commands.add_parser("lora-info", help="what a LoRA file is: format, rank, alpha, the modules it changes")
    info.add_argument("path", type=Path, help="the LoRA file (.safetensors)")
    info.add_argument("--variant", choices=VARIANTS, default="original", help="the model to match it against")
    info.add_argument("--models", type=Path, help="local model root whose transformer config to use")
    return parser


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """What a new video is made from: its images and its settings (`generate`, `queue add`, `batch`)."""
    parser.add_argument("--image", type=Path, help="the start image (leave it out to start from a blank frame)")
    parser.add_argument("--blank-start", choices=BLANK_STARTS, default="grey", help="the blank start frame without --image (default grey)")
    parser.add_argument("--end-image", type=Path, help="the video's last frame (original variant)")
    add_setting_options(parser)


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """How many workers run the queue, and where."""
    add = parser.add_argument
    add("--gpus", type=gpu_list, metavar="0,1,...", help="one worker per GPU, each with its own models")
    add("--workers", type=int, default=1, metavar="N", help="workers on the one device, without --gpus (default 1)")
    add("--ray", metavar="ADDRESS", help='run the workers as Ray actors, one per GPU, on the cluster at ADDRESS ("local": '
        'start one here; the outputs folder must be a path every node can write)')  # fmt: skip


def gpu_list(text: str) -> list[int]:
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of GPU numbers, e.g. 0,1") from None
    if not gpus or len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of distinct GPU numbers, e.g. 0,1")
    return gpus


def add_setting_options(parser: argparse.ArgumentParser, for_branch: bool = False) -> None:
    """The options that become the job's settings (absent: the default, or for a branch the source's)."""
    defaults = Settings()
    default = (lambda text: "the source's") if for_branch else (lambda text: text)  # noqa: E731
    add = parser.add_argument
    add("--prompt", help='what happens in the video; timed prompts as groups: "a man [0s: he waves] [2.4s: he turns around]"')
    add("--prompt-blend-sections", type=int, help=f"fade a new timed prompt in over this many sections (default {default('0: at once')})")
    add("--end-strength", type=float, help=f"how strongly the end image holds, 0 to 1 (default {default(f'{defaults.end_strength:g}')})")
    add("--keyframe", action="append", default=None, metavar="SECONDS:PATH", type=keyframe_arg,
        help="an image that replaces the start image in each section's start slot from SECONDS on (repeatable)")  # fmt: skip
    add("--lora", action="append", default=None, metavar="PATH[:WEIGHT]", type=LoraSpec.parse,
        help="a LoRA file and its weight (default 1; 0 turns it off); repeatable")  # fmt: skip
    add("--negative-prompt", help="used only when --cfg is above 1")
    add("--variant", choices=VARIANTS, help=f"model variant (default {default(defaults.variant)})")
    add("--seed", type=int, help=f"random seed (default {default(str(defaults.seed))})")
    add("--seconds", type=float, help=f"video length in seconds (default {default(f'{defaults.total_second_length:g}')})")
    add("--latent-window-size", type=int, help=f"latent frames per section (default {default(str(defaults.latent_window_size))})")
    add("--steps", type=int, help=f"sampling steps per section (default {default(str(defaults.steps))})")
    add("--cfg", type=float, help=f"real CFG scale; 1 disables it (default {default(f'{defaults.cfg:g}')})")
    add("--distilled-cfg", type=float, help=f"distilled CFG scale (default {default(f'{defaults.distilled_cfg:g}')})")
    add("--cfg-rescale", type=float, help=f"CFG re-scale 0..1 (default {default(f'{defaults.cfg_rescale:g}')})")
    add("--teacache", action=argparse.BooleanOptionalAction, help="TeaCache: faster, slightly worse hands (default on)")
    add("--cache-method", choices=CACHE_METHODS, help="step cache: FramePack's TeaCache, MagCache or diffusers' First Block Cache")
    add("--cache-threshold", type=float, help=f"step cache threshold (default {DEFAULT_THRESHOLDS_TEXT})")
    add("--resolution", type=int, help=f"bucket target, 128 to 960 (default {default(str(defaults.resolution))})")
    add("--height", type=int, help="explicit height, a multiple of 16 (overrides the bucket; needs --width)")
    add("--width", type=int, help="explicit width, a multiple of 16 (overrides the bucket; needs --height)")
    add("--dtype", choices=DTYPES, help="transformer dtype (default float32 on CPU, bfloat16 on GPU)")
    add("--crf", type=int, help=f"MP4 quality, 0 best to 51 worst (default {default(str(defaults.mp4_crf))})")


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Where the models come from and how they run: shared by every command that generates."""
    add = parser.add_argument
    add("--models", type=Path, help="local model root laid out like the hub repos (default: hub cache)")
    add("--hf-cache", type=Path, default=Path("hf_download"), help="hub cache folder (default ./hf_download)")
    add("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    add("--attention", choices=ATTENTION_CHOICES, default="auto", help="attention backend (default: best installed)")
    add("--compile", action="store_true", help="torch.compile the transformer blocks (slow first section)")
    add("--fp8", action="store_true", help="store the transformer's weights in 8 bits (less memory)")
    add("--fp8-compute", action="store_true",
        help="--fp8, multiplying in fp8 too (faster; GPUs of compute capability 8.9+: RTX 40/50, L4, H100)")  # fmt: skip
    add("--transformer-file", type=Path, metavar="PATH",
        help="a single-file transformer instead of the variant's repo: bf16, fp16 or fp8 .safetensors, or .gguf")  # fmt: skip
    add("--quiet", action="store_true", help="no progress bar")


def setting_changes(args: argparse.Namespace) -> dict[str, object]:
    """The settings the options give (those left out are not there)."""
    given = {_SETTING_OF.get(name, name): getattr(args, name) for name in _SETTING_OPTIONS}
    return {name: value for name, value in given.items() if value is not None}


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(**setting_changes(args))


def keyframe_arg(text: str) -> Keyframe:
    """`SECONDS:PATH` (the first colon splits, so Windows paths work)."""
    seconds, sep, path = text.partition(":")
    try:
        return Keyframe(float(seconds.strip().removesuffix("s")), Path(path))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not SECONDS:PATH, e.g. 2.4:turn.png") from None


def checked_job(args: argparse.Namespace) -> tuple[Settings, JobInputs]:
    """The job the options describe, its images read and every control checked (before tens of GB of models
    load, or before it joins the queue): its settings and its inputs as given (files, by path). Raises
    SettingsError or ImageError."""
    settings = settings_from_args(args)
    given = JobInputs(args.image, args.end_image, args.keyframe or (), args.blank_start, loras=args.lora or ())
    images = prepare_images(given.load(), settings)
    plan_schedule(settings, images.keyframe_times, images.end is not None)
    return settings, given


def check_loras(loras: Sequence[LoraSpec], variant: str, models_dir: Path | None) -> None:
    """Match a queued job's LoRA files against the model's architecture now (raises LoraError), so a bad file is
    reported when the job is queued, not hours later when it runs."""
    if loras:
        configs = ModelConfigs.from_folder(models_dir, variant) if models_dir else ModelConfigs.published()
        transformer = meta_transformer(configs.transformer)
        for spec in loras:
            read_lora(spec.path, transformer)


def run_generate(args: argparse.Namespace) -> int:
    try:
        settings, inputs = checked_job(args)  # its files, which the job reads again as it starts
    except (SettingsError, ImageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    models = _load(args, settings, inputs.loras)
    if models is None:
        return 1
    return _follow(
        lambda stop: generate(models, settings, inputs, args.output_dir, stop=stop, job_id=args.job_name, previews=False),
        settings.num_sections * settings.steps,
        args.quiet,
    )


def run_resume(args: argparse.Namespace) -> int:
    if args.add_seconds is not None:
        return run_extend(args)
    if args.prompt:
        print("error: --prompt goes with --add-seconds (a stopped job resumes with its own prompts)", file=sys.stderr)
        return 2
    try:
        checkpoint = read_checkpoint(job_paths(args.path))
        settings = Settings.from_dict(checkpoint.settings)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    models = _load(args, settings, record=job_paths(args.path).manifest)
    if models is None:
        return 1
    remaining = (settings.num_sections - checkpoint.sections_done) * settings.steps
    return _follow(lambda stop: resume_job(models, args.path, stop=stop, previews=False), remaining, args.quiet)


def run_extend(args: argparse.Namespace) -> int:
    try:
        saved = Settings.from_dict(json.loads(job_paths(args.path).manifest.read_text(encoding="utf-8"))["settings"])
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: cannot read the record of {args.path.name}: {exc}", file=sys.stderr)
        return 2
    models = _load(args, saved, record=job_paths(args.path).manifest)
    if models is None:
        return 1
    longer = saved.replace(total_second_length=round(saved.total_second_length + args.add_seconds, 6))
    total_steps = max(0, longer.num_sections - saved.num_sections) * saved.steps
    return _follow(
        lambda stop: extend_job(models, args.path, args.add_seconds, prompt=args.prompt, stop=stop, previews=False),
        total_steps,
        args.quiet,
    )


def _load(
    args: argparse.Namespace, settings: Settings, loras: Sequence[LoraSpec] = (), record: Path | None = None
) -> ModelSet | None:
    """Check memory, then load the models for `settings` (and `loras`); None (after saying why) if that cannot be done.

    For a job that goes on from a previous one (`record`, its manifest), the models it was made with, as the
    record says (a local model root, or the hub repos at their revisions), unless --models says otherwise.
    """
    source = ModelSource(args.models, args.hf_cache, transformer_file=args.transformer_file)
    if args.models is None and record is not None:
        try:
            source = ModelSource.recorded(json.loads(record.read_text(encoding="utf-8"))["models"], args.hf_cache)
        except (OSError, KeyError, ValueError, TypeError, IndexError):
            pass  # a record without its models: the default place, as for a new job
        if args.transformer_file is not None:
            source = replace(source, transformer_file=args.transformer_file.resolve())
    try:
        lora = None
        if loras:  # matched against the model's architecture before anything loads
            device = torch.device(args.device) if args.device else default_device()
            configs = file_configs(source.models_dir, settings.variant, source.transformer_file)
            lora = lora_bytes([spec.path for spec in loras], configs, resolve_dtypes(settings.dtype, device)[0])
        # The same check as the app's: say what will not fit before loading tens of GB.
        plan = check_before_loading(
            settings, fp8=args.fp8, device=args.device, models_dir=source.models_dir, lora=lora,
            transformer_file=source.transformer_file, fp8_matmuls=args.fp8_compute,
        )  # fmt: skip
        return load_models(settings.variant, source, None, settings.dtype, args.attention, args.compile, plan)
    except (ModelsMissingError, MemoryPlanError, LoraError, CheckpointError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def run_extend_video(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        # Read the images and check the controls before loading anything; the video is read by the job itself.
        images = JobInputs(None, args.end_image, args.keyframe or (), loras=args.lora or ()).load()
        plan_schedule(settings, [k.seconds for k in images.keyframes], images.end_image is not None)
        check_video(args.video)
    except ValueError as exc:  # SettingsError, ImageError, VideoInputError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    models = _load(args, settings, images.loras)
    if models is None:
        return 1
    return _follow(
        lambda stop: extend_video(
            models, settings, args.video, args.output_dir, end_image=images.end_image, keyframes=images.keyframes,
            loras=images.loras, job_id=args.job_name, stop=stop, previews=False,
        ),
        settings.num_sections * settings.steps,
        args.quiet,
    )  # fmt: skip


def run_branch(args: argparse.Namespace) -> int:
    changes = setting_changes(args)
    try:
        source = Settings.from_dict(json.loads(job_paths(args.path).manifest.read_text(encoding="utf-8"))["settings"])
        settings = source.replace(**changes)
        keyframes = None if args.keyframe is None else [Keyframe(k.seconds, load_image(k.image)) for k in args.keyframe]
    except (OSError, KeyError, ValueError) as exc:  # SettingsError and ImageError are ValueErrors
        print(f"error: {exc if isinstance(exc, ValueError) else f'cannot read the record of {args.path.name}'}", file=sys.stderr)
        return 2
    models = _load(args, settings, args.lora or (), record=job_paths(args.path).manifest)
    if models is None:
        return 1
    remaining = max(0, settings.num_sections - args.keep_sections) * settings.steps
    return _follow(
        lambda stop: branch_job(
            models, args.path, args.keep_sections, changes, keyframes=keyframes, loras=args.lora, job_id=args.job_name,
            stop=stop, previews=False,
        ),
        remaining,
        args.quiet,
    )  # fmt: skip


def run_lora_info(args: argparse.Namespace) -> int:
    """Print what a LoRA file is and whether it fits the variant's transformer; 0 if it does, 1 if not."""
    try:
        configs = ModelConfigs.from_folder(args.models, args.variant) if args.models else ModelConfigs.published()
        file = read_lora(args.path, meta_transformer(configs.transformer))
    except (LoraError, ModelsMissingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe_lora(file, args.variant))
    return 0


def _follow(start: Callable[[threading.Event], Iterator[Event]], total_steps: int, quiet: bool) -> int:
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
            elif isinstance(event, SectionDone):
                bar.set_postfix_str(f"{event.frames} frames, {event.seconds:.2f} s")
            elif isinstance(event, Status):
                bar.write(event.message, file=sys.stderr)
            elif isinstance(event, Error):
                bar.close()
                print(f"error: {event.message}", file=sys.stderr)
                if event.exception is not None and not isinstance(event.exception, ValueError):
                    # This is the user's own machine: the detail the app keeps for its log helps here.
                    print(f"detail: {type(event.exception).__name__}: {event.exception}", file=sys.stderr)
                return 1
            elif isinstance(event, Done):
                bar.close()
                return _report(event)
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous_handler)
    return 1


def _report(done: Done) -> int:
    if done.video_path is None:
        print("Stopped before the first section finished; nothing was written.")
        return 130
    state = f"Stopped after {done.sections_done} sections" if done.stopped else "Done"
    print(f"{state}: {done.frames} frames, {done.seconds:.2f} s of video in {done.elapsed:.1f} s (attention {done.attention})")
    print(f"video: {done.video_path}")
    print(f"latents: {done.latents_path}")
    return 130 if done.stopped else 0


# ------------------------------------------------------------------------------------------ the queue


def run_queue(args: argparse.Namespace) -> int:
    store = SqliteJobStore.in_folder(args.output_dir)
    try:
        if args.queue_command == "add":
            try:
                settings, given = checked_job(args)
                check_loras(given.loras, settings.variant, None)
                job = queue_job(store, args.output_dir, settings, given)
            except (SettingsError, ImageError, LoraError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(job.id)
            return 0
        if args.queue_command == "list":
            for job in store.list():
                print(queue_line(job))
            return 0
        if args.queue_command == "cancel":
            return max(cancel_in_store(store, job_id) for job_id in args.job_ids)
    finally:
        store.close()
    return run_workers(args)


def queue_job(store: SqliteJobStore, output_dir: Path, settings: Settings, given: JobInputs) -> QueuedJob:
    """Add a checked job to the store, for any front to run, as the person at this machine."""
    job_id = new_job_id()
    spec = job_spec(output_dir.resolve(), job_id, "generate", settings, given)
    return store.add(QueuedJob(job_id, LOCAL_USER, spec, settings.variant))


def queue_line(job: QueuedJob) -> str:
    """One job of `queue list`: id, state, progress, worker, video and its last message."""
    worker = job.worker.split("/", 1)[-1] if job.worker else "-"
    prompt = str(job.spec.settings.get("prompt", job.spec.kind))[:40]
    return f"{job.id}  {job.state:8} {job.progress:4.0%}  {worker:10} {job.video or '-':32} {prompt!r}  {job.message}"


def cancel_in_store(store: SqliteJobStore, job_id: str) -> int:
    """Stop one job from outside the process running it: a waiting one now, a running one at its next step."""
    job = store.get(job_id)
    if job is None or not job.active:
        print(f"error: no waiting or running job {job_id!r}", file=sys.stderr)
        return 1
    if job.state == "queued":
        store.update(job_id, state="stopped", finished=time.time(), message="Stopped before it started")
        print(f"{job_id}: stopped")
    else:
        store.update(job_id, stop_requested=True)
        print(f"{job_id}: stops after its current step")
    return 0


def run_batch(args: argparse.Namespace) -> int:
    lines, problems = read_batch(args.file, add_job_options, args)
    checked = []
    for line, job_args in lines:
        try:
            settings, given = checked_job(job_args)
            check_loras(given.loras, settings.variant, args.models)
            checked.append((settings, given))
        except (SettingsError, ImageError, LoraError) as exc:
            problems.append(f"{args.file.name}:{line}: {exc}")
    if problems:
        print("\n".join(f"error: {problem}" for problem in problems), file=sys.stderr)
        print(f"error: nothing was queued: fix the line(s) above in {args.file}", file=sys.stderr)
        return 2
    store = SqliteJobStore.in_folder(args.output_dir)
    try:
        for settings, given in checked:
            print(f"queued {queue_job(store, args.output_dir, settings, given).id}")
    finally:
        store.close()
    return run_workers(args)


def run_workers(args: argparse.Namespace) -> int:
    """Run what waits in the outputs folder's queue (each variant's jobs on its own models), then stop; 0 if
    every job that ran finished, 1 if one failed, 130 when stopped with Ctrl-C (the running jobs go back in
    line and go on from their last finished section next time)."""
    store = SqliteJobStore.in_folder(args.output_dir)
    variants = [v for v in VARIANTS if any(job.variant == v for job in store.list(active=True))]
    store.close()
    failed = []

    def report(job: QueuedJob, event: JobEvent) -> None:
        where = f"{job.id} [{job.worker.split('/', 1)[-1] if job.worker else '-'}]"
        if isinstance(event, SectionDone):
            print(f"{where} section {event.section} of {event.sections}: {event.frames} frames", flush=True)
        elif isinstance(event, Done):
            print(f"{where} {'stopped' if event.stopped else 'done'}: {event.video_path or 'nothing written'}", flush=True)
        elif isinstance(event, Error):
            failed.append(job.id)
            print(f"{where} failed: {event.message}", flush=True)

    for variant in variants:
        source = ModelSource(args.models, args.hf_cache, transformer_file=args.transformer_file)
        try:
            plans = worker_plans(args, variant)
            worker = Worker(variant, source, args.output_dir, args.attention, args.compile, plans=plans, ray=args.ray,
                            on_event=report)  # fmt: skip
        except (ModelsMissingError, MemoryPlanError, CheckpointError, SettingsError, ClusterError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{variant}: {len(worker.runners)} worker(s): {', '.join(r.name.split('/', 1)[-1] for r in worker.runners)}")
        try:
            worker.wait_idle()
        except KeyboardInterrupt:
            print("\nStopping: the running jobs go back in line...", file=sys.stderr)
            return 130
        finally:
            worker.close(timeout=120)
    return 1 if failed else 0


def worker_plans(args: argparse.Namespace, variant: str) -> list[MemoryPlan]:
    """A memory plan per worker: one per GPU of --gpus, else --workers on the one device."""
    devices = [f"cuda:{gpu}" for gpu in args.gpus] if args.gpus else [args.device] * max(1, args.workers)
    return [
        check_before_loading(Settings(variant=variant), fp8=args.fp8, device=device, models_dir=args.models,
                             transformer_file=args.transformer_file, fp8_matmuls=args.fp8_compute)
        for device in devices
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        return run_generate(args)
    if args.command == "resume":
        return run_resume(args)
    if args.command == "lora-info":
        return run_lora_info(args)
    if args.command == "branch":
        return run_branch(args)
    if args.command == "extend":
        return run_extend_video(args)
    if args.command == "queue":
        return run_queue(args)
    if args.command == "batch":
        return run_batch(args)
    return run_check_memory(args)


def add_check_memory_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "check-memory",
        help="show where the models would live and whether a job fits in GPU and system memory",
        description="Plan GPU and system memory for a job without loading anything. GB = 10^9 bytes.",
    )
    parser.add_argument("--vram", type=float, help="free GPU memory in GB (default: this machine's; 0 = no GPU)")
    parser.add_argument("--ram", type=float, help="free system memory in GB (default: this machine's)")
    parser.add_argument("--swap", type=float, help="free swap in GB (default: this machine's, or 0 with --ram)")
    parser.add_argument("--resolution", type=int, default=640, help="bucket resolution (default 640: every 640 bucket)")
    parser.add_argument("--height", type=int, help="explicit height, a multiple of 16 (needs --width)")
    parser.add_argument("--width", type=int, help="explicit width, a multiple of 16 (needs --height)")
    parser.add_argument("--latent-window-size", type=int, default=9, help="latent frames per section (default 9)")
    parser.add_argument("--variant", choices=VARIANTS, default="original", help="model variant (default original)")
    parser.add_argument("--fp8", action="store_true", help="store the transformer's weights in 8 bits")
    parser.add_argument("--preserve", type=float, default=6.0, help="GPU memory to preserve in GB (default 6)")
    parser.add_argument("--device", help="cuda, mps or cpu (default: this machine's best, or cuda with --vram)")
    parser.add_argument("--lora", action="append", default=[], metavar="PATH", help="count this LoRA file too (repeatable)")
    parser.add_argument("--models", type=Path, help="local model root whose configs to plan (default: the published ones)")
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument("--transformer-file", type=Path, metavar="PATH",
                         help="plan this single-file transformer (.safetensors or .gguf); reads only its header")  # fmt: skip
    formats.add_argument("--transformer-format", choices=FORMATS,
                         help="plan the transformer stored in this format (GGUF quantisations: q8_0, q6_k, ...)")  # fmt: skip
    parser.set_defaults(handler=run_check_memory)
    return parser


def run_check_memory(args: argparse.Namespace) -> int:
    """Print the plan; 0 when it fits, 1 when it does not, 2 for invalid options."""
    try:
        settings = Settings(
            variant=args.variant,
            resolution=args.resolution,
            height=args.height,
            width=args.width,
            latent_window_size=args.latent_window_size,
            gpu_memory_preservation=args.preserve,
        )
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if any(value is not None and value < 0 for value in (args.vram, args.ram, args.swap)):
        print("error: --vram, --ram and --swap must not be negative", file=sys.stderr)
        return 2
    if args.vram is None:
        detected = detect_device(args.device)
        vram, device = detected.vram_free, detected.device
    else:
        # A given amount means a GPU of that much free memory (CUDA unless --device says otherwise); 0 means none.
        vram, device = (int(args.vram * GB), args.device or "cuda") if args.vram > 0 else (None, "cpu")
    ram = int(args.ram * GB) if args.ram is not None else system_ram()[0]
    # A given --ram describes a machine to plan for, whose swap is unknown unless given too.
    swap = int(args.swap * GB) if args.swap is not None else 0 if args.ram is not None else system_swap()
    transformer_dtype, encoder_dtype = resolve_dtypes(None, torch.device(device))
    fp8 = args.fp8 or args.transformer_format == "fp8"
    try:
        configs = file_configs(args.models, args.variant, args.transformer_file)
        file = inspect_transformer_file(args.transformer_file, configs.transformer, args.variant) if args.transformer_file else None
        sizes = None  # the published model: its advice can try fp8 on it
        if args.models or file or args.transformer_format:
            sizes = ModelSizes.from_configs(configs, transformer_dtype, encoder_dtype, fp8, args.transformer_format, file)
            fp8 = sizes.fp8
        lora = lora_bytes(args.lora, configs, transformer_dtype) if args.lora else None
    except (ModelsMissingError, ValueError) as exc:  # LoraError and CheckpointError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plan = plan_for_settings(settings, vram, ram, fp8=fp8, device=device, swap_free=swap, sizes=sizes, lora=lora)
    print(plan.report())
    return 0 if plan.fits else 1

