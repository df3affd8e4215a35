"""The headless command line: `python -m framepack COMMAND` (or the `framepack` command).

Each command is a module with `add_parsers(subcommands)`, which sets its handler; `COMMANDS` lists them, so a new
command is a module and one line there. A failure a user causes or meets prints one line (`error: ...`); the full
log, tracebacks included, goes to `framepack.log` in the outputs folder, and with `--verbose` to the terminal too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..engine.errors import USER_ERRORS
from ..models import ModelsMissingError
from . import app, loras, memory, queue, running

COMMANDS = (running, queue, memory, loras, app)
LOG_NAME = "framepack.log"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="framepack", description="FramePack image-to-video, headless.")
    parser.add_argument("--verbose", action="store_true", help="show the full log, tracebacks included, in the terminal")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_file = _log_to(args)
    try:
        return args.handler(args)
    except (*USER_ERRORS, ModelsMissingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else is a bug or a broken machine: one line here, the traceback in the log
        logging.getLogger("framepack.cli").error("The command failed", exc_info=exc)
        where = f"; the full log is in {log_file}" if log_file else ""
        print(f"error: {type(exc).__name__}: {exc}{where}", file=sys.stderr)
        return 1


def _log_to(args: argparse.Namespace) -> Path | None:
    """Warnings go to the terminal (with tracebacks only with --verbose); everything goes to the outputs folder's log
    file, where there is an outputs folder to write."""
    console = logging.StreamHandler()
    console.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s") if args.verbose else _OneLine())
    handlers: list[logging.Handler] = [console]
    folder = getattr(args, "output_dir", None) or (Path(args.path).parent if getattr(args, "path", None) else None)
    log_file = None
    if folder is not None:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            log_file = Path(folder) / LOG_NAME
            file = logging.FileHandler(log_file, encoding="utf-8")
            file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            handlers.append(file)
        except OSError:
            log_file = None  # a folder that cannot be written: the job itself will say so
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    return log_file


class _OneLine(logging.Formatter):
    """A log record as one line: the message, without the traceback (that goes to the log file)."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return super().format(record)
