"""What a job runs, as data: its kind, settings, input files and options, so that it can wait in a queue, outlive
the app, and run the same way from the command line."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

# Kinds were renamed once (to the command line's names): specs stored before say so by having no version.
SPEC_VERSION = 2
_RENAMED = {"extend_video": "extend", "extend": "add_seconds"}
_KIND_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True)
class JobSpec:
    """What a job runs, as JSON-able data. `kind` names its entry in `framepack.kinds`; `settings` is a `Settings`
    dict (empty where the kind takes a source job's own); `files` maps input names (image, end_image, video,
    keyframe_0, ...) to paths, relative to the job's input folder once the queue keeps them (absolute ones are used
    as they are); `keyframe_times`; `loras` ([path, weight] pairs); `source` the job it goes on from; `options` the
    kind's own (keep_sections and changes for a branch, seconds and prompt to add, post-processing choices,
    `record`: what the job record says of the images the user gave, their names and SHA-256, and `notes`: what
    reading them found when they were read before the job was queued, for the job to say)."""

    kind: str
    settings: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    keyframe_times: tuple[float, ...] = ()
    loras: tuple[tuple[str, float], ...] = ()
    blank_start: str = "grey"
    source: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not _KIND_NAME.fullmatch(self.kind):
            raise ValueError(f"a job kind is a short lower-case name, got {self.kind!r}")
        object.__setattr__(self, "keyframe_times", tuple(float(t) for t in self.keyframe_times))
        object.__setattr__(self, "loras", tuple((str(p), float(w)) for p, w in self.loras))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        data = json.loads(text)
        if data.get("version", 1) < SPEC_VERSION:
            data["kind"] = _RENAMED.get(data["kind"], data["kind"])
            data["version"] = SPEC_VERSION
        return cls(**data)
