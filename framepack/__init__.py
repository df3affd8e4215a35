"""FramePack: next-frame-section image-to-video generation with a packed, constant-length frame context.

The parts, from the ground up: `settings` (what a job is), `media` (images and videos in and out), `models` (what
the weights are and where they come from), `memory` (sensing, sizing, planning, placing), `loading` and `lora`,
`controls` (timed prompts, end frames, keyframes), `jobs` (a job's files and record), `engine` (the section loop),
`postprocess`, `kinds` (every kind of job in one registry), `queue`, and on top `app` (the page) and `cli`.
"""

from .engine import add_seconds, branch_job, extend_video, generate, resume_job
from .events import Done, Error, Event, FrameProgress, Progress, SectionDone, Status
from .loading import load_models
from .models import ModelSet, ModelsMissingError, ModelSource
from .settings import Settings, SettingsError

__all__ = [
    "Done",
    "Error",
    "Event",
    "FrameProgress",
    "ModelSet",
    "ModelSource",
    "ModelsMissingError",
    "Progress",
    "SectionDone",
    "Settings",
    "SettingsError",
    "Status",
    "add_seconds",
    "branch_job",
    "extend_video",
    "generate",
    "load_models",
    "resume_job",
]
