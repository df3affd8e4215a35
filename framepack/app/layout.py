"""The page's layout: where each field's control and each button and output sits. Controls are built from the fields
table (`framepack.app.fields`); the layout only places them. Called inside a `gr.Blocks`."""

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from ..settings import MAX_SECONDS
from .fields import BY_NAME, DEFAULTS, Page, list_loras
from .board import BOARD_COLUMNS, BOARD_TYPES, BOARD_WIDTHS
from .views import MY_JOBS_COLUMNS, frames_line, length_words, progress_html

EXAMPLE_PROMPTS = (
    "The girl dances gracefully, with clear movements, full of charm.",
    "A character doing some simple body movements.",
    "The man turns his head and smiles warmly at the camera.",
    "Leaves sway gently in the wind as the camera slowly pushes in.",
)


# Sections are kept in the order they were made: the original model makes a video from its end backwards.
KEEP_INFO = {
    "original": "Counted as the progress bar counts them: this model makes the video from its END backwards, so "
                "keeping 1 keeps the last seconds. The seed and prompt above apply to the rest.",
    "f1": "Counted from the start of the video; the seed and prompt above apply to the rest.",
}  # fmt: skip


@dataclass
class Controls:
    """The page's components: `fields` by field name, the rest by what they are."""

    fields: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.fields[name] if name in self.fields else self.parts[name]


def build_layout(page: Page, timeline: str, strip: str = "") -> Controls:
    """Every component of the page, placed: the Generate tab (inputs and settings on the left, the live preview,
    progress and growing video on the right) and the Queue tab. `timeline` is the sections' first description,
    `strip` their first strip of thumbnails."""
    controls = Controls()
    place = lambda name: controls.fields.setdefault(name, BY_NAME[name].control(page))  # noqa: E731
    parts = controls.parts
    with gr.Tabs():
        with gr.Tab("Generate", elem_id="fp-generate-tab"):
            with gr.Row():
                with gr.Column():
                    _inputs(controls, place, page)
                    parts["timeline_strip"] = gr.HTML(strip, elem_id="fp-timeline-strip")
                    parts["timeline"] = gr.Markdown(timeline, elem_id="fp-timeline")
                    with gr.Row():
                        parts["start"] = gr.Button("Start Generation", variant="primary", elem_id="fp-start")
                        parts["queue_add"] = gr.Button("Add to queue", elem_id="fp-queue-add")
                        parts["end"] = gr.Button("End Generation", interactive=False, elem_id="fp-end")
                    parts["my_jobs"] = gr.Dataframe(
                        headers=MY_JOBS_COLUMNS, value=[], interactive=False, wrap=True, elem_id="fp-my-jobs",
                        column_widths=["24%", "23%", "15%", "16%", "22%"],
                        label="Your jobs, newest first: click one to watch its video (the Queue tab has more)",
                    )
                    with gr.Group():
                        for name in ("use_teacache", "seed", "total_second_length", "resolution", "steps", "distilled_cfg"):
                            place(name)
                            if name == "total_second_length":  # what that length makes: whole sections
                                parts["length_note"] = gr.Markdown(length_words(DEFAULTS), elem_id="fp-length-note")
                    with gr.Accordion("Advanced", open=False):
                        for name in ("negative_prompt", "cfg", "cfg_rescale", "latent_window_size",
                                     "gpu_memory_preservation", "mp4_crf", "prompt_blend_sections", "blank_start"):  # fmt: skip
                            place(name)
                    _previous_output(parts, page)
                with gr.Column():
                    parts["preview"] = gr.Image(label="Latent preview", interactive=False, height=320, elem_id="fp-preview")
                    with gr.Column(variant="panel", elem_id="fp-status"):  # where the job stands: bar, times, message
                        parts["progress"] = gr.HTML(progress_html(0, "Idle"), label="Progress", elem_id="fp-progress")
                        parts["message"] = gr.Markdown("", label="Status", elem_id="fp-message")
                        parts["info"] = gr.Markdown(frames_line(0), label="Frames", elem_id="fp-info")
                    parts["video"] = gr.Video(label="Video", autoplay=True, loop=True, interactive=False, height=512,
                                              elem_id="fp-video")  # fmt: skip
                    _postprocess_panel(controls, place)
        with gr.Tab("Queue", elem_id="fp-queue-tab"):
            _queue_tab(parts)
    return controls


def _inputs(controls: Controls, place: Any, page: Page) -> None:
    parts = controls.parts
    end_frame = page.variant == "original"  # F1 generates forwards: it has no end frame to aim at
    with gr.Tabs():
        with gr.Tab("Start image"):
            place("input_image")
        with gr.Tab("Extend a video"):
            parts["extend_video"] = gr.Video(sources=["upload"], label="Video to continue (its frames come first)",
                                             height=320, elem_id="fp-extend-video")  # fmt: skip
            with gr.Row():
                parts["extend_seconds"] = gr.Number(value=DEFAULTS.total_second_length, minimum=0.1, maximum=MAX_SECONDS,
                                                    label="Seconds to add", elem_id="fp-extend-seconds")  # fmt: skip
                parts["extend"] = gr.Button("Extend this video", elem_id="fp-extend")  # Start stays the one primary
    prompt = place("prompt")
    parts["examples"] = gr.Dataset(samples=[[p] for p in EXAMPLE_PROMPTS], components=[prompt],
                                   label="Example prompts (click one)")  # fmt: skip
    with gr.Accordion("End frame and keyframes" if end_frame else "Keyframes", open=False):
        with gr.Row():
            place("end_image")  # hidden on F1's page by its field
            place("keyframes")
        place("end_strength")
        place("keyframe_times")
    if not list_loras(page.lora_folder):
        gr.Markdown(f"No LoRA files yet: put `.safetensors` LoRAs in `{page.lora_folder.name if page.lora_folder else 'loras'}` "
                    "(the app's `--loras` folder) and press Refresh.", elem_id="fp-lora-hint")  # fmt: skip
    with gr.Accordion("LoRA", open=False):
        place("loras")
        place("lora_weights")
        parts["refresh_loras"] = gr.Button("Refresh the LoRA list", size="sm")


def _previous_output(parts: dict[str, Any], page: Page) -> None:
    with gr.Accordion("Previous output: load its settings, or resume it", open=False):
        parts["previous"] = gr.File(label="Drop a FramePack video (.mp4) or its record (.json)", file_types=[".mp4", ".json"],
                                    type="filepath", elem_id="fp-previous")  # fmt: skip
        parts["add_seconds"] = gr.Number(
            value=0, minimum=0, maximum=MAX_SECONDS, label="Seconds to add", visible=page.variant == "f1", elem_id="fp-add-seconds",
            info="0 finishes a stopped job; more makes a new, longer video of a finished video (the shorter one stays).",
        )  # fmt: skip
        parts["add_prompt"] = gr.Textbox("", label="Prompts for the added seconds (optional)", placeholder="[6s: he sits down]",
                                         visible=page.variant == "f1")  # fmt: skip
        parts["resume"] = gr.Button("Resume this job", elem_id="fp-resume")
        with gr.Row():
            parts["keep"] = gr.Number(
                value=1, minimum=1, precision=0, label="Sections to keep", elem_id="fp-keep",
                info=KEEP_INFO[page.variant],
            )  # fmt: skip
            parts["branch"] = gr.Button("Keep the first K sections and redo the rest", elem_id="fp-branch")


def _postprocess_panel(controls: Controls, place: Any) -> None:
    parts = controls.parts
    with gr.Accordion("Post-process: upscale, interpolate, hold the colours, other formats", open=False):
        gr.Markdown("The last video made on this page, or a video you upload here. The result is a new file beside it; "
                    "the job's own video stays as it is.")  # fmt: skip
        parts["pp_video"] = gr.Video(sources=["upload"], label="Or a video of your own", height=200, elem_id="fp-pp-video")
        parts["pp_job"] = gr.Textbox("", visible=False, elem_id="fp-pp-job")  # the API names a job of the caller's here
        with gr.Row():
            place("upscale")
            place("scale")
        with gr.Row():
            place("interpolate")
            place("color_match")
        with gr.Row():
            place("format")
            place("crf")
        parts["pp_start"] = gr.Button("Post-process", variant="primary", elem_id="fp-pp-start")
        parts["pp_progress"] = gr.HTML(progress_html(0, "Idle"), elem_id="fp-pp-progress")
        parts["pp_message"] = gr.Markdown("", elem_id="fp-pp-message")
        parts["pp_result"] = gr.Video(label="Result", interactive=False, elem_id="fp-pp-result")
        parts["pp_file"] = gr.File(label="Result file", interactive=False, elem_id="fp-pp-file")


def _queue_tab(parts: dict[str, Any]) -> None:
    gr.Markdown(
        "Every job waits here until a worker is free, and the queue outlives the app: after a restart waiting jobs wait "
        "and an interrupted one goes on from its last finished section."
    )
    parts["queue_gallery"] = gr.Gallery(
        value=[], label="Finished videos (click one to choose its job)", columns=8, height=200, allow_preview=False,
        object_fit="contain", fit_columns=False, elem_id="fp-gallery",
    )  # fmt: skip
    parts["queue_table"] = gr.Dataframe(
        headers=BOARD_COLUMNS, value=[], interactive=False, wrap=True, elem_id="fp-queue", datatype=BOARD_TYPES,
        column_widths=BOARD_WIDTHS, label="Jobs: running, waiting in line order, then ended (click a row to choose it)",
    )  # fmt: skip
    with gr.Row():
        parts["queue_choice"] = gr.Dropdown(choices=[], label="Job", elem_id="fp-queue-job", scale=2)
        for action, label in (("up", "Move up"), ("down", "Move down"), ("cancel", "Cancel"), ("retry", "Retry")):
            parts[f"queue_{action}"] = gr.Button(label, size="sm", elem_id=f"fp-queue-{action}")
        parts["queue_delete"] = gr.Button("Delete", size="sm", variant="stop", elem_id="fp-queue-delete")
    with gr.Row():
        parts["queue_open"] = gr.Button("Open its video", size="sm", elem_id="fp-queue-open")
        parts["queue_load"] = gr.Button("Load its settings", size="sm", elem_id="fp-queue-load")
    parts["queue_message"] = gr.Markdown("", elem_id="fp-queue-message")
    parts["queue_video"] = gr.Video(label="Video of the chosen job", interactive=False, height=400, elem_id="fp-queue-video")

