"""The page's fields, declared once: each one's API parameter, the setting it fills, its default and its control.

The API's signatures (`/generate`, `/extend`, `/queue_add`), the handlers' parameter lists, the layout's controls
and the loading of a previous job's settings are all built from `FIELDS`, in its order: a new control is one row.
"""

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from ..controls import BLANK_STARTS
from ..postprocess.formats import FORMATS
from ..postprocess.weights import KNOWN_MODELS
from ..settings import MAX_SECONDS, Settings

DEFAULTS = Settings()
CACHE_LABELS = {"teacache": "TeaCache", "magcache": "MagCache", "first_block": "First Block Cache"}


@dataclass(frozen=True)
class Page:
    """What a control's look may depend on: the model the page runs, the app's fixed job options, its LoRA folder."""

    variant: str
    job_options: dict[str, Any] = field(default_factory=dict)
    lora_folder: Path | None = None


@dataclass(frozen=True)
class Field:
    """One control. `name` is its API parameter; `setting` the `Settings` field it fills (None: an image, or text
    parsed into the job's inputs); `loadable`: a previous job's settings fill it in; `endpoints` the API calls that
    take it; `control` builds its Gradio component."""

    name: str
    default: Any
    control: Callable[[Page], gr.components.Component]
    setting: str | None = None
    annotation: Any = Any
    loadable: bool = True
    endpoints: tuple[str, ...] = ("generate", "extend")


def list_loras(folder: Path | None) -> list[str]:
    """The LoRA files (.safetensors) in the app's LoRA folder, by name."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors" and p.is_file())


def _setting(name: str, control: Callable[[Page], gr.components.Component], annotation: Any) -> Field:
    return Field(name, getattr(DEFAULTS, name), control, setting=name, annotation=annotation)


FIELDS: tuple[Field, ...] = (
    # image_mode=None: the upload is handed over as the file it is (Gradio's default converts it to RGB first, which
    # drops transparency, colour profiles and CMYK before load_image can apply them).
    Field("input_image", None, lambda page: gr.Image(sources=["upload"], type="filepath", image_mode=None, label="Start image",
          height=320, elem_id="fp-image"), loadable=False, endpoints=("generate",)),  # fmt: skip
    _setting("prompt", lambda page: gr.Textbox(
        label="Prompt", value=DEFAULTS.prompt, lines=2, elem_id="fp-prompt",
        info='Prompts that change over time: "a man on a beach [0s: he waves] [2.4s: he turns around]"'), str),  # fmt: skip
    _setting("negative_prompt", lambda page: gr.Textbox(
        value=DEFAULTS.negative_prompt, label="Negative prompt", info="Used only when CFG scale > 1."), str),  # fmt: skip
    _setting("seed", lambda page: gr.Number(value=DEFAULTS.seed, label="Seed", precision=0), int),
    _setting("total_second_length", lambda page: gr.Slider(
        1, MAX_SECONDS, DEFAULTS.total_second_length, step=0.1, label="Total video length (seconds)",
        elem_id="fp-length"), float),  # fmt: skip
    _setting("resolution", lambda page: gr.Slider(
        128, 960, DEFAULTS.resolution, step=16, label="Resolution (bucket target)", elem_id="fp-resolution"), int),  # fmt: skip
    _setting("latent_window_size", lambda page: gr.Slider(
        1, 33, DEFAULTS.latent_window_size, step=1, label="Latent window size", elem_id="fp-window",
        info="Frames per section = 4 × window − 3. Changing this is not recommended."), int),  # fmt: skip
    _setting("steps", lambda page: gr.Slider(
        1, 100, DEFAULTS.steps, step=1, label="Steps", info="Changing this is not recommended.", elem_id="fp-steps"), int),  # fmt: skip
    _setting("cfg", lambda page: gr.Slider(1, 32, DEFAULTS.cfg, step=0.01, label="CFG scale"), float),
    _setting("distilled_cfg", lambda page: gr.Slider(
        1, 32, DEFAULTS.distilled_cfg, step=0.01, label="Distilled CFG scale", info="Changing this is not recommended."), float),  # fmt: skip
    _setting("cfg_rescale", lambda page: gr.Slider(0, 1, DEFAULTS.cfg_rescale, step=0.01, label="CFG re-scale"), float),
    _setting("gpu_memory_preservation", lambda page: gr.Slider(
        0, 128, DEFAULTS.gpu_memory_preservation, step=0.1, label="GPU memory to preserve (GB)",
        info="Raise it if you run out of memory; larger is slower."), float),  # fmt: skip
    _setting("use_teacache", lambda page: gr.Checkbox(
        value=DEFAULTS.use_teacache, label=f"Use {CACHE_LABELS[page.job_options.get('cache_method', DEFAULTS.cache_method)]}",
        info="Faster, but hands and fingers may get slightly worse."), bool),  # fmt: skip
    _setting("mp4_crf", lambda page: gr.Slider(
        0, 51, DEFAULTS.mp4_crf, step=1, label="MP4 compression (CRF)",
        info="0 is lossless; lower means better quality and larger files."), int),  # fmt: skip
    Field("end_image", None, lambda page: gr.Image(
        sources=["upload"], type="filepath", image_mode=None, label="End image (the video's last frame)", height=200,
        elem_id="fp-end-image", visible=page.variant == "original"), loadable=False),  # fmt: skip
    _setting("end_strength", lambda page: gr.Slider(
        0, 1, DEFAULTS.end_strength, step=0.01, label="End frame strength", visible=page.variant == "original"), float),  # fmt: skip
    Field("keyframes", None, lambda page: gr.File(
        label="Keyframe images", file_count="multiple", file_types=["image"], type="filepath", elem_id="fp-keyframes"),
        loadable=False),  # fmt: skip
    Field("keyframe_times", "", lambda page: gr.Textbox(
        "", label="Keyframe times (seconds, one per image, in the order of the images)", placeholder="1.2, 2.4",
        elem_id="fp-keyframe-times", info="From its time on, a keyframe takes the start image's place as each section's anchor."),
        annotation=str),  # fmt: skip
    Field("blank_start", "grey", lambda page: gr.Radio(
        list(BLANK_STARTS), value="grey", label="Without a start image, start from",
        info="Text to video: the first frame is blank."), annotation=str, endpoints=("generate",)),  # fmt: skip
    _setting("prompt_blend_sections", lambda page: gr.Slider(
        0, 8, DEFAULTS.prompt_blend_sections, step=1, label="Prompt fade (sections)",
        info="A new timed prompt fades in over this many sections; 0 switches at once."), int),  # fmt: skip
    Field("loras", None, lambda page: gr.CheckboxGroup(
        list_loras(page.lora_folder), label="LoRAs (from the LoRA folder)", elem_id="fp-loras",
        info="Several at once; each gets a weight below (0 turns one off)."), annotation=list[str] | None),  # fmt: skip
    Field("lora_weights", "", lambda page: gr.Textbox("", visible=False, elem_id="fp-lora-weights"), annotation=str),
)
# Post-processing's own controls (the "Post-process" panel and `/postprocess`), in its parameters' order.
UPSCALERS = ("none", *(name for name, model in KNOWN_MODELS.items() if model.kind == "upscaler"))
POSTPROCESS_FIELDS: tuple[Field, ...] = (
    Field("upscale", "none", lambda page: gr.Dropdown(list(UPSCALERS), value="none", label="Upscaler (Real-ESRGAN)",
          elem_id="fp-pp-upscale", info="Downloaded once on first use."), annotation=str, loadable=False,
          endpoints=("postprocess",)),  # fmt: skip
    Field("scale", 0, lambda page: gr.Number(value=0, minimum=0, maximum=8, label="Final scale (0: the model's own)",
          elem_id="fp-pp-scale"), annotation=float, loadable=False, endpoints=("postprocess",)),  # fmt: skip
    Field("interpolate", 1, lambda page: gr.Radio([1, 2, 4], value=1, label="Frames per frame (RIFE: x2 = 60 fps)",
          elem_id="fp-pp-interpolate"), annotation=int, loadable=False, endpoints=("postprocess",)),  # fmt: skip
    Field("color_match", "off", lambda page: gr.Radio(["off", "start"], value="off", label="Match colours to the start",
          elem_id="fp-pp-colour", info="Holds long videos' colours to the first frame (the start image)."),
          annotation=str, loadable=False, endpoints=("postprocess",)),  # fmt: skip
    Field("format", "mp4", lambda page: gr.Dropdown(list(FORMATS), value="mp4", label="Format", elem_id="fp-pp-format"),
          annotation=str, loadable=False, endpoints=("postprocess",)),  # fmt: skip
    Field("crf", DEFAULTS.mp4_crf, lambda page: gr.Slider(0, 51, DEFAULTS.mp4_crf, step=1, label="Quality (CRF)",
          elem_id="fp-pp-crf"), annotation=int, loadable=False, endpoints=("postprocess",)),  # fmt: skip
)
BY_NAME = {f.name: f for f in (*FIELDS, *POSTPROCESS_FIELDS)}
# What a previous job's settings fill in, in this order (its images are added again by hand).
LOADABLE = tuple(f.name for f in FIELDS if f.loadable)
SETTING_NAMES = frozenset(f.setting for f in FIELDS if f.setting)


def endpoint_fields(endpoint: str) -> tuple[Field, ...]:
    """The fields an API call takes, in its parameters' order."""
    return tuple(f for f in (*FIELDS, *POSTPROCESS_FIELDS) if endpoint in f.endpoints)


def signature(fields: Sequence[Field], before: Sequence[inspect.Parameter] = (), returns: Any = inspect.Signature.empty) -> inspect.Signature:
    """A handler's signature as Gradio reads it (parameter names and defaults make the API): the leading parameters,
    the fields with their defaults, then the caller's request."""
    parameters = [
        *before,
        *(inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default, annotation=f.annotation)
          for f in fields),
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request),
    ]  # fmt: skip
    return inspect.Signature(parameters, return_annotation=returns)


def with_signature(function: Callable[..., Any], sig: inspect.Signature, name: str, doc: str) -> Callable[..., Any]:
    """`function` (which takes the bound arguments as one dict) as a handler with `sig`, as Gradio reads it."""
    if inspect.isgeneratorfunction(function):

        def handler(*args: Any, **kwargs: Any) -> Any:
            yield from function(_bound(sig, args, kwargs))

    else:

        def handler(*args: Any, **kwargs: Any) -> Any:
            return function(_bound(sig, args, kwargs))

    handler.__signature__ = sig
    handler.__annotations__ = {p.name: p.annotation for p in sig.parameters.values()} | {"return": sig.return_annotation}
    handler.__name__ = handler.__qualname__ = name
    handler.__doc__ = doc
    return handler


def _bound(sig: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)
