"""The models: what the components are, where their weights come from, and how they run (dtypes, fp8, attention
backends, single-file checkpoints)."""

from .components import ModelSet
from .sources import ModelsMissingError, ModelSource

__all__ = ["ModelSet", "ModelSource", "ModelsMissingError"]
