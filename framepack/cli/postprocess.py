"""`framepack postprocess INPUT ...`: upscale, interpolate, colour-match and convert a finished video from
the command line, with a progress bar on stderr. Bad input ends with one `error: ...` line and exit status 2;
nothing is left half-written and the input is never overwritten."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..events import Done, FrameProgress, Status
from ..postprocess import PostprocessError
from ..postprocess.formats import FORMATS
from ..postprocess.pipeline import (
    DEFAULT_INTERPOLATION_MODEL,
    PostprocessOptions,
    default_output,
    postprocess,
)
from ..postprocess.weights import KNOWN_MODELS

# Frames done of all, time, and the pipeline's own frames per second (input frames), not tqdm's rate between two
# (throttled) updates.
_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} frames [{elapsed}<{remaining}{postfix}]"
# An output name's suffix says the format when --format is not given.
_FORMAT_OF_SUFFIX = {".mp4": "mp4", ".webm": "webm", ".mov": "prores", ".gif": "gif", ".webp": "webp", ".mkv": "ffv1"}


def add_parsers(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `postprocess` command."""
    parser = subparsers.add_parser(
        "postprocess", help="upscale, interpolate, colour-match or convert a finished video",
        description="Post-process a video frame by frame (memory does not grow with its length). The result goes "
        "beside the input under a name that says what was done, unless --output names it.",
    )  # fmt: skip
    parser.add_argument("input", type=Path, help="the video to post-process (never overwritten)")
    parser.add_argument("--output", type=Path, help="where the result goes (png: a folder)")
    add_postprocess_options(parser, "--crf")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU if there is one)")
    parser.add_argument("--hf-cache", type=Path, default=Path("hf_download"), help="where known models are kept")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    parser.set_defaults(handler=run)
    return parser


def add_postprocess_options(parser: argparse.ArgumentParser, crf_flag: str = "--post-crf") -> None:
    """The post-processing choices: the command's own, and a job's (`generate` and the others run them after the job,
    as a job of its own; there the quality option is --post-crf, beside the job's own --crf)."""
    upscalers = ", ".join(name for name, model in KNOWN_MODELS.items() if model.kind == "upscaler")
    interpolators = ", ".join(name for name, model in KNOWN_MODELS.items() if model.kind == "interpolator")
    add = parser.add_argument
    add("--upscale", metavar="MODEL", help=f"Real-ESRGAN model file or known name ({upscalers})")
    add("--scale", type=float, help="final scale after the upscale model (e.g. 2 with a x4 model)")
    add("--interpolate", type=int, default=1, metavar="N", help="frames per input frame: 2 or 4 (RIFE); fps goes up as much, duration stays")
    add("--interpolation-model", default=DEFAULT_INTERPOLATION_MODEL, metavar="MODEL",
        help=f"RIFE model file or known name ({interpolators}; default {DEFAULT_INTERPOLATION_MODEL})")  # fmt: skip
    add("--color-match", "--colour-match", default="off", metavar="MODE",
        help="start: match every frame's colours to the first frame's (a job's: its start image's; off by default)")  # fmt: skip
    add("--format", metavar="FORMAT", help=f"{', '.join(FORMATS)} (default: from --output's suffix, else mp4)")
    add(crf_flag, dest="post_crf", type=int, default=16, help="quality for mp4, h265, webm, av1 (lower is better)")


def options_from_args(args: argparse.Namespace) -> PostprocessOptions:
    """The command's options as PostprocessOptions (PostprocessError on a bad value)."""
    fmt = args.format
    if fmt is None:
        output = getattr(args, "output", None)
        fmt = _FORMAT_OF_SUFFIX.get(output.suffix.lower(), "mp4") if output else "mp4"
    return PostprocessOptions(
        upscale=args.upscale, scale=args.scale, interpolate=args.interpolate,
        interpolation_model=args.interpolation_model, color_match=args.color_match.lower(), format=fmt.lower(),
        crf=args.post_crf,
    )  # fmt: skip


def after_job(args: argparse.Namespace) -> dict[str, object]:
    """A job spec's options for what its options ask to run after it, checked now (PostprocessError), before anything
    loads or is queued; empty when nothing was asked."""
    asked = args.upscale or args.interpolate != 1 or args.color_match.lower() != "off" or args.format
    return {"postprocess": options_from_args(args).to_dict()} if asked else {}


def run(args: argparse.Namespace) -> int:
    """Run the command: 0 done, 2 bad input, 1 failed while running, 130 interrupted (Ctrl+C)."""
    bar: tqdm | None = None
    try:
        options = options_from_args(args)
        output = args.output or default_output(args.input, options)
        for event in postprocess(args.input, output, options, device=args.device, cache_dir=args.hf_cache):
            if isinstance(event, FrameProgress) and not args.quiet:
                if bar is None:
                    bar = tqdm(total=event.total or None, unit="frame", desc="postprocess", file=sys.stderr,
                               bar_format=_BAR)  # fmt: skip
                bar.total = max(bar.total or 0, event.total) or None
                bar.set_postfix_str(f"{event.fps:.1f} fps", refresh=False)
                bar.update(event.done - bar.n)
            elif isinstance(event, Status) and not args.quiet:
                if bar is not None:  # tqdm writes to stdout unless told: stdout is for the output's path alone
                    bar.write(event.message, file=sys.stderr)
                else:
                    _stderr(event.message)
            elif isinstance(event, Done):
                _close(bar)
                print(event.video_path)
    except PostprocessError as exc:
        _close(bar)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close(bar)
        print("\nstopped: nothing was written", file=sys.stderr)
        return 130
    except (OSError, RuntimeError, ValueError) as exc:  # the disk filled up, an encoder or the GPU failed
        _close(bar)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
        print(f"error: {type(exc).__name__}: {detail}", file=sys.stderr)
        return 1
    return 0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _close(bar: tqdm | None) -> None:
    if bar is not None:
        bar.close()

