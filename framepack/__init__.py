"""FramePack: next-frame-section image-to-video generation with a packed, constant-length frame context."""

from .events import Done, Error, Event, Progress, SectionDone, Status
from .engine.core import generate, resume_job
from .loading import load_models
from .models import ModelSet, ModelSource, ModelsMissingError
from .settings import Settings, SettingsError

__all__ = [
    "Done",
    "Error",
    "Event",
    "ModelSet",
    "ModelSource",
    "ModelsMissingError",
    "Progress",
    "SectionDone",
    "Settings",
    "SettingsError",
    "Status",
    "generate",
    "load_models",
    "resume_job",
]
