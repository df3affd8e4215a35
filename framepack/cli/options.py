"""The options that describe a job on the command line (`generate`, `queue add`, batch lines, and the settings a
branch or an extension changes), and reading them into checked settings and inputs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..controls import BLANK_STARTS, JobInputs, Keyframe, plan_schedule, prepare_images
from ..engine.stepcache import DEFAULT_THRESHOLDS_TEXT
from ..lora import LoraSpec, read_lora
from ..memory.sizes import ModelConfigs
from ..models.components import meta_transformer
from ..settings import CACHE_METHODS, DTYPES, VARIANTS, Settings
from .postprocess import add_postprocess_options

# CLI option -> Settings field, for options whose names differ. Options left out keep the Settings default.
_SETTING_OF = {"seconds": "total_second_length", "teacache": "use_teacache", "crf": "mp4_crf"}
_SETTING_OPTIONS = (
    "variant", "prompt", "negative_prompt", "seed", "seconds", "latent_window_size", "steps", "cfg",
    "distilled_cfg", "cfg_rescale", "teacache", "cache_method", "cache_threshold", "resolution", "height", "width",
    "dtype", "crf", "end_strength", "prompt_blend_sections",
)  # fmt: skip


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """What a new video is made from: its images and its settings (`generate`, `queue add`, `batch`)."""
    parser.add_argument("--image", type=Path, help="the start image (leave it out to start from a blank frame)")
    parser.add_argument("--blank-start", choices=BLANK_STARTS, default="grey", help="the blank start frame without --image (default grey)")
    parser.add_argument("--end-image", type=Path, help="the video's last frame (original variant)")
    add_setting_options(parser)
    add_postprocess_options(parser)


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


def setting_changes(args: argparse.Namespace) -> dict[str, object]:
    """The settings the options give (those left out are not there)."""
    given = {_SETTING_OF.get(name, name): getattr(args, name) for name in _SETTING_OPTIONS}
    return {name: value for name, value in given.items() if value is not None}


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(**setting_changes(args))


def keyframe_arg(text: str) -> Keyframe:
    """`SECONDS:PATH` (the first colon splits, so Windows paths work)."""
    seconds, _, path = text.partition(":")
    try:
        return Keyframe(float(seconds.strip().removesuffix("s")), Path(path))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not SECONDS:PATH, e.g. 2.4:turn.png") from None


def checked_job(args: argparse.Namespace) -> tuple[Settings, JobInputs]:
    """The job the options describe, its images read and every control checked (before tens of GB of models load,
    or before it joins the queue): its settings and its inputs as given (files, by path). Raises SettingsError or
    ImageError."""
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
