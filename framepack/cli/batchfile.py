"""Batch files: many jobs in one JSON Lines or CSV file, for `python -m framepack batch FILE`.

One job a line (JSON Lines: one object a line; CSV: a header row of keys, one job a row), keyed by the `generate`
command's option names with `_` or `-` ("image", "prompt", "seconds", "seed", "steps", "resolution",
"end_image", "keyframe", "lora", ...). The command line gives the defaults; a line's keys override them. Lists
("keyframe", "lora") are JSON arrays or, in CSV, values separated by ";". Relative paths are taken from the
batch file's folder. Every line is read and checked before anything runs, so a bad one is reported with its
line number first.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PATH_KEYS = ("image", "end_image")
MODEL_KEYS = ("upscale", "interpolation_model")


class _Refusal(ValueError):
    pass


class _LineParser(argparse.ArgumentParser):
    """The job options for one line: only what the line gives (no defaults), errors raised, not printed."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Refusal(message)


def read_batch(
    path: Path, add_job_options: Callable[[argparse.ArgumentParser], None], defaults: argparse.Namespace
) -> tuple[list[tuple[int, argparse.Namespace]], list[str]]:
    """The jobs of a batch file, each as (line number, the command line's options with the line's on top), and
    the problems found, each "FILE:LINE: what is wrong"."""
    parser = _LineParser(prog=path.name, add_help=False, argument_default=argparse.SUPPRESS)
    add_job_options(parser)
    options = {action.dest: action for action in parser._actions if action.option_strings}
    jobs, problems = [], []
    try:
        rows = list(_rows(path))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [], [f"{path}: cannot be read ({exc})"]
    if not rows:
        problems.append(f"{path.name}: holds no jobs")
    for line, row in rows:
        try:
            if isinstance(row, _Refusal):
                raise row
            if not isinstance(row, dict):
                raise _Refusal("a line must be a JSON object of option names and values")
            tokens = [token for key, value in row.items() for token in _tokens(key, value, options, path.parent)]
            given = parser.parse_args(tokens)
            jobs.append((line, argparse.Namespace(**{**vars(defaults), **vars(given)})))
        except _Refusal as exc:
            problems.append(f"{path.name}:{line}: {exc}")
    return jobs, problems


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            for row in reader:
                yield reader.line_num, {k: v for k, v in row.items() if k is not None and v not in (None, "")}
        return
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if text.strip() and not text.lstrip().startswith("#"):
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, _Refusal(f"not JSON ({exc.msg})")


def _tokens(key: str, value: Any, options: dict[str, argparse.Action], folder: Path) -> list[str]:
    """The command-line tokens of one key and value."""
    dest = key.strip().replace("-", "_")
    action = options.get(dest)
    if action is None:
        raise _Refusal(f"unknown key {key!r} (keys are the generate command's options: {', '.join(sorted(options))})")
    flag = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
            value = value.strip().lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise _Refusal(f"{key}: give true or false, not {value!r}")
        return [flag if value else f"--no-{flag.removeprefix('--')}"]
    if isinstance(action, argparse._AppendAction):
        values = value if isinstance(value, list) else [part for part in str(value).split(";") if part.strip()]
        return [f"{flag}={_relative(dest, str(item).strip(), folder)}" for item in values]
    if isinstance(value, (list, dict)):
        raise _Refusal(f"{key}: give one value, not {type(value).__name__}")
    # One token, "--flag=value": a value may begin with "-" (a prompt, a negative seed) without reading as an option.
    return [f"{flag}={_relative(dest, str(value), folder)}"]


def _relative(dest: str, value: str, folder: Path) -> str:
    """A path of the line, taken from the batch file's folder when relative (SECONDS:PATH and PATH[:WEIGHT] too)."""
    if dest in PATH_KEYS:
        return str(folder / value)
    if dest in MODEL_KEYS:  # a model file beside the batch file, or a known model's name
        return str(folder / value) if (folder / value).is_file() else value
    if dest == "keyframe" and ":" in value:
        seconds, _, path = value.partition(":")
        return f"{seconds}:{folder / path}"
    if dest == "lora":
        path, sep, weight = value.rpartition(":")
        if sep and _is_number(weight):
            return f"{folder / path}:{weight}"
        return str(folder / value)
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
