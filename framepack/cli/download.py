"""`download`: fetch the models a job needs ahead of time, the way the first job would (the size said first, the
disk checked, a progress bar of bytes, an interrupted download going on where it stopped); exit 0 once all are
in the hub cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..models import ModelsMissingError, ModelSource
from ..models.download import missing_parts
from ..models.sources import DEFAULT_CACHE_DIR
from .running import fetch_models

NAMES = {"original": "FramePack", "f1": "FramePack-F1"}


def add_parsers(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "download", help="download the models a job needs now, instead of on the first job",
        description="Download the models FramePack (or FramePack-F1, with --f1) needs into the hub cache: how much "
                    "first, then a progress bar; run it again after an interruption to go on where it stopped. "
                    "Exit 0 once every model is there.",
    )  # fmt: skip
    parser.add_argument("--f1", action="store_true", help="the FramePack-F1 models (default: FramePack's)")
    parser.add_argument("--hf-cache", type=Path, default=DEFAULT_CACHE_DIR, metavar="DIR",
                        help="hub cache folder, e.g. the hf_download folder of a FramePack or FramePack-Studio "
                             f"install (default ./{DEFAULT_CACHE_DIR})")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_download)


def run_download(args: argparse.Namespace) -> int:
    variant = "f1" if args.f1 else "original"
    source = ModelSource(cache_dir=args.hf_cache)
    if not missing_parts(source, variant):
        print(f"The {NAMES[variant]} models are all in {source.hub_dir}: nothing to download.")
        return 0
    try:
        fetch_models(source, variant, args.quiet)
    except KeyboardInterrupt:  # what is fetched stays, a file part way through included
        print("\nStopped. Run the same command again to go on where the download stopped.", file=sys.stderr)
        return 130
    if missing := missing_parts(source, variant):  # the hub lacked a file the models need
        listed = ", ".join(f"{repo} ({', '.join(subfolders)})" if subfolders else repo for repo, subfolders in missing)
        raise ModelsMissingError(f"After the download, {source.hub_dir} still lacks the weights of {listed}.")
    print(f"The {NAMES[variant]} models are all in {source.hub_dir}.")
    return 0
