"""The outputs folder's job queue from the command line: `queue add|list|cancel|run` and `batch FILE`. The queue is
the app's too: a running app notices what is added here, and `queue run` runs what the app left waiting."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..controls import JobInputs
from ..events import Done, Error, SectionDone
from ..jobs.paths import LOCAL_USER, new_job_id
from ..kinds import inputs_spec
from ..lora import LoraError
from ..media.images import ImageError
from ..memory.planning import MemoryPlanError
from ..models import ModelsMissingError
from ..models.checkpoints import CheckpointError
from ..options import (
    add_runtime_options,
    add_worker_options,
    model_source,
    worker_plans,
)
from ..postprocess import PostprocessError
from ..queue.cluster import ClusterError
from ..queue.front import JobEvent, QueueFront
from ..queue.repair import open_store
from ..queue.store import (
    QueuedJob,
    SqliteJobStore,
    front_alive,
    input_folder,
    remove_inputs,
)
from ..settings import VARIANTS, Settings, SettingsError
from .batchfile import read_batch
from .options import add_job_options, check_loras, checked_job
from .postprocess import after_job


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """`queue` and `batch`."""
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
    for command in (run, batch):
        add_runtime_options(command)
        add_worker_options(command)
    queue.set_defaults(handler=run_queue)
    batch.set_defaults(handler=run_batch)


def run_queue(args: argparse.Namespace) -> int:
    if args.queue_command == "run":
        return run_workers(args)
    store = opened_store(args.output_dir)
    try:
        if args.queue_command == "add":
            settings, given = checked_job(args)
            check_loras(given.loras, settings.variant, None)
            print(queue_job(store, args.output_dir, settings, given, after_job(args)).id)
            return 0
        if args.queue_command == "list":
            for job in store.list():
                print(queue_line(job))
            return 0
        return max(cancel_in_store(store, args.output_dir, job_id) for job_id in args.job_ids)
    finally:
        store.close()


def queue_job(store: SqliteJobStore, output_dir: Path, settings: Settings, given: JobInputs,
              options: dict[str, object] | None = None) -> QueuedJob:  # fmt: skip
    """Add a checked job to the store, for any front to run, as the person at this machine; `options` say what runs
    after it."""
    job_id = new_job_id()
    try:
        spec = inputs_spec("generate", settings, given, keep_in=input_folder(output_dir.resolve(), job_id), options=options)
    except (ImageError, OSError):
        remove_inputs(output_dir.resolve(), job_id)
        raise
    return store.add(QueuedJob(job_id, LOCAL_USER, spec, settings.variant))


def queue_line(job: QueuedJob) -> str:
    """One job of `queue list`: id, state, progress, worker, video and its last message."""
    worker = job.worker.split("/", 1)[-1] if job.worker else "-"
    prompt = str(job.spec.settings.get("prompt") or job.spec.kind)[:40]
    return f"{job.id}  {job.state:8} {job.progress:4.0%}  {worker:10} {job.video or '-':32} {prompt!r}  {job.message}"


def cancel_in_store(store: SqliteJobStore, output_dir: Path, job_id: str) -> int:
    """Stop one job from outside the process running it: a waiting one now, a running one at its next step (or now,
    when the process that ran it is gone: it must not run again when an app starts)."""
    job = store.get(job_id)
    if job is None or not job.active:
        print(f"error: no waiting or running job {job_id!r}", file=sys.stderr)
        return 1
    if job.state == "queued" or not front_alive(output_dir, job.worker):
        store.update(job_id, state="stopped", finished=time.time(), message="Stopped", front=None)
        print(f"{job_id}: stopped")
    else:
        store.update(job_id, stop_requested=True)
        print(f"{job_id}: stops after its current step")
    return 0


def opened_store(output_dir: Path) -> SqliteJobStore:
    """The outputs folder's job store; if it had to be set aside and rebuilt, the line that says so."""
    store, note = open_store(output_dir)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    return store


def run_batch(args: argparse.Namespace) -> int:
    lines, problems = read_batch(args.file, add_job_options, args)
    checked = []
    for line, job_args in lines:
        try:
            settings, given = checked_job(job_args)
            check_loras(given.loras, settings.variant, args.models)
            checked.append((settings, given, after_job(job_args)))
        except (SettingsError, ImageError, LoraError, PostprocessError) as exc:
            problems.append(f"{args.file.name}:{line}: {exc}")
    if problems:
        print("\n".join(f"error: {problem}" for problem in problems), file=sys.stderr)
        print(f"error: nothing was queued: fix the line(s) above in {args.file}", file=sys.stderr)
        return 2
    store = opened_store(args.output_dir)
    try:
        for settings, given, after in checked:
            print(f"queued {queue_job(store, args.output_dir, settings, given, after).id}")
    finally:
        store.close()
    return run_workers(args)


def run_workers(args: argparse.Namespace) -> int:
    """Run what waits in the outputs folder's queue (each variant's jobs on its own models), then stop; 0 if every job
    that ran finished, 1 if one failed, 130 when stopped with Ctrl-C (the running jobs go back in line and go on from
    their last finished section next time)."""
    store = opened_store(args.output_dir)
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
        try:
            front = QueueFront(variant, model_source(args, variant), args.output_dir, args.attention, args.compile,
                               plans=worker_plans(args, variant), ray=args.ray, on_event=report)  # fmt: skip
        except (ModelsMissingError, MemoryPlanError, CheckpointError, SettingsError, ClusterError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{variant}: {len(front.runners)} worker(s): {', '.join(r.name.split('/', 1)[-1] for r in front.runners)}")
        try:
            front.wait_idle()
        except KeyboardInterrupt:
            print("\nStopping: the running jobs go back in line...", file=sys.stderr)
            return 130
        finally:
            front.close(timeout=120)
    return 1 if failed else 0
