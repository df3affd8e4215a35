"""`doctor`: whether this machine is ready to run FramePack and, where it is not, what to do (see
`framepack.doctor`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..doctor import Places, diagnose, ready, report
from ..options import add_model_options
from ..settings import VARIANTS


def add_parsers(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "doctor", help="check that this machine is ready to run FramePack, and say what to do where it is not",
        description="Check Python, PyTorch against the GPU and its driver, memory, disk, attention backends, video "
                    "encoders, the model files and the memory plan; exit 0 when ready, 1 when not.",
    )  # fmt: skip
    add_model_options(parser)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"), help="where files go (default ./outputs)")
    parser.add_argument("--comfyui-models", type=Path, metavar="DIR",
                        help="ComfyUI's models folder whose text encoders, VAE, SigLIP and FramePack transformer are used")
    parser.add_argument("--variant", choices=VARIANTS, default="original", help="model variant (default original)")
    parser.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    findings = diagnose(Places(args.models, args.hf_cache, args.output_dir, args.variant, args.comfyui_models))
    print(report(findings))
    return 0 if ready(findings) else 1
