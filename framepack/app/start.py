"""Starting the app: its command line, the memory check before anything loads, the queue front and the page, and
the warning when anyone may use it without a login. `demo_gradio.py` and `demo_gradio_f1.py` call `main`."""

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from ..doctor import Places, before_start
from ..engine.stepcache import DEFAULT_THRESHOLDS_TEXT
from ..jobs.paths import sweep_outputs
from ..memory.planning import MemoryPlanError
from ..models import ModelsMissingError
from ..models.checkpoints import CheckpointError
from ..options import (
    add_runtime_options,
    add_worker_options,
    model_source,
    worker_plans,
)
from ..queue.cluster import ClusterError
from ..queue.front import QueueFront
from ..queue.policy import MAX_JOBS_PER_OWNER
from ..settings import CACHE_METHODS, Settings, SettingsError
from .guard import LoginGuard
from .views import CSS
from .wiring import TITLES, build_app

# Uploads (images; videos to extend) larger than this are refused by Gradio with a message.
MAX_UPLOAD_MB = 500
LOCAL_ADDRESSES = ("127.0.0.1", "localhost", "::1")


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
    add("--outputs", type=Path, default=Path("outputs"), metavar="DIR", help="folder for videos and latents")
    add("--loras", type=Path, default=Path("loras"), metavar="DIR", help="folder of LoRA files the page offers (default ./loras)")
    add_runtime_options(parser)
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
    """A built app: the page, its queue front and the arguments for `launch`."""

    demo: gr.Blocks
    front: QueueFront
    launch_kwargs: dict[str, Any]

    def launch(self, **overrides: Any) -> Any:
        """Start serving (blocks unless `prevent_thread_lock=True`)."""
        return self.demo.launch(**{**self.launch_kwargs, **overrides})

    def close(self) -> None:
        """Stop the server and the queue's workers."""
        self.demo.close()
        self.front.close(timeout=60)


def create_app(variant: str, args: argparse.Namespace) -> App:
    """Build the queue front and the page from parsed arguments; warns when anyone may use the app without a login."""
    outputs = Path(args.outputs).resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    # First what the machine lacks (a GPU, a CUDA build for it, the weights), so that a memory plan that does not
    # fit reads after what explains it; then the same memory check as the CLI's, which stops the app if it fails.
    for finding in before_start(Places(args.models, args.hf_cache, outputs, variant, getattr(args, "comfyui_models", None))):
        print(f"{finding.status.upper()}: {finding.name}: {finding.found}" + (f"\n  -> {finding.fix}" if finding.fix else ""),
              file=sys.stderr)  # fmt: skip
    plans = worker_plans(args, variant)
    print(plans[0].summary(), file=sys.stderr)
    if tidied := sweep_outputs(outputs):
        logging.getLogger(__name__).info("Removed what interrupted writes left of %d job(s) in the outputs folder", tidied)
    front = QueueFront(
        variant, model_source(args, variant), outputs, attention=args.attention, compile=args.compile, plans=plans,
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
    if args.credentials:  # the login page must not describe the API, and a session id alone must not act
        launch_kwargs["app_kwargs"] = {"middleware": [Middleware(LoginGuard)]}
    if front.store_note:
        print(f"WARNING: {front.store_note}", file=sys.stderr)
    job_options = {"cache_method": args.cache_method, "cache_threshold": args.cache_threshold}
    lora_folder = Path(args.loras).resolve()
    return App(build_app(front, variant, job_options, identity, lora_folder), front, launch_kwargs)


def main(variant: str, argv: Sequence[str] | None = None) -> None:
    """Run the app for `variant` ("original" or "f1") until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(variant, parse_args(argv, variant))
    except (MemoryPlanError, CheckpointError, ModelsMissingError, SettingsError, ClusterError) as exc:
        sys.exit(f"error: {exc}")
    app.launch()

