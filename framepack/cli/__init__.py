"""The headless command line: `python -m framepack COMMAND` (or the `framepack` command).

Each command is a module with `add_parsers(subcommands)`, which sets its handler; `COMMANDS` lists them, so a new
command is a module and one line there. A failure a user causes or meets prints one line (`error: ...`); the full
log, tracebacks included, goes to `.logs/framepack.log` in the outputs folder when something fails (see `logs`), and
with `--verbose` to the terminal too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..engine.errors import USER_ERRORS
from ..models import ModelsMissingError
from . import app, doctor, download, logs, loras, memory, postprocess, queue, running

COMMANDS = (running, queue, postprocess, memory, loras, app, doctor, download)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="framepack", description="FramePack image-to-video, headless.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parsers(commands)
    _add_verbose(parser)
    return parser


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    """`--verbose` on every command, wherever a user puts it."""
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show the full log, tracebacks included, in the terminal")  # fmt: skip
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for child in set(action.choices.values()):
            if child.add_help:  # `app` passes its options on to the page's own parser
                _add_verbose(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if hasattr(args, "page_options"):  # the page's commands hand the rest to the page's own parser
        args.page_options = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    folder = getattr(args, "output_dir", None) or (Path(args.path).parent if getattr(args, "path", None) else None)
    logs.configure(folder, getattr(args, "verbose", False))
    try:
        return args.handler(args)
    except (*USER_ERRORS, ModelsMissingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else is a bug or a broken machine: one line here, the traceback in the log
        logging.getLogger("framepack.cli").error("The command failed", exc_info=exc)
        where = f"; the full log is in {logs.log_file()}" if logs.log_file() else ""
        print(f"error: {type(exc).__name__}: {exc}{where}", file=sys.stderr)
        return 1
