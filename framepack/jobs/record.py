"""A job's record (`<job>.json`): the one place that reads and writes it.

The record says what the job is (settings, inputs, LoRAs, where it came from), what ran it (models, dtype, device,
attention, step cache, memory mode, library versions), where it stands (state, sections done, seconds per
section) and which files steps after the job derived from it. It is rewritten atomically after every section.
Everything that needs a job's record loads it here and gets a `JobRecord` or one `RecordError` whose message a
user can read.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import file_sha256, write_json
from ..settings import Settings, SettingsError
from .checkpoint import checkpoint_owner
from .paths import LOCAL_USER, JobPaths, RecordError, is_job_name, job_name

STATES = ("running", "done", "stopped", "failed")
# A record a user can be shown larger than this is not a FramePack record (a real one is a few kilobytes).
MAX_RECORD_BYTES = 4_000_000


@dataclass
class JobRecord:
    """What `<job>.json` holds. `settings` is a `Settings` dict (see `settings_object`); `inputs` what the job record
    keeps of its images (names, SHA-256, keyframe times, or the blank start); `loras` each LoRA's name, path,
    SHA-256 and weight; `origin` where the job came from when it did not start from images alone (a branch, a
    longer F1 video, an extended video); `derived` the files steps after the job made from it, each with what it
    is, its settings, file name and SHA-256."""

    state: str = "running"
    sections_done: int = 0
    sections: int = 0
    owner: str = LOCAL_USER
    settings: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] | None = None
    schedule: list[dict[str, Any]] = field(default_factory=list)
    loras: list[dict[str, Any]] = field(default_factory=list)
    origin: dict[str, Any] | None = None
    models: dict[str, str] = field(default_factory=dict)
    dtype: str = ""
    device: str = ""
    attention: str = ""
    step_cache: dict[str, Any] | None = None
    memory_mode: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    section_seconds: list[float] = field(default_factory=list)
    video: str = ""
    latents: str = ""
    derived: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, paths: JobPaths) -> JobRecord:
        """The record of the job `paths` names; RecordError if there is none or it cannot be read."""
        if not is_job_name(paths.job_id) or not paths.manifest.is_file():
            raise RecordError(f"there is no job named {paths.job_id}")
        try:
            if paths.manifest.stat().st_size > MAX_RECORD_BYTES:
                raise ValueError("too large")
            data = json.loads(paths.manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise RecordError(f"the record of {paths.job_id} is damaged ({type(exc).__name__})") from None
        return cls.from_dict(data, paths.job_id)

    @classmethod
    def from_dict(cls, data: Any, name: str) -> JobRecord:
        """A record from its JSON data, every field of the right type (RecordError naming `name` if not)."""
        if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
            raise RecordError(f"the record of {name} is damaged (it holds no job settings)")
        values = {}
        for spec in dataclasses.fields(cls):
            if spec.name not in data or data[spec.name] is None and spec.name not in _OPTIONAL:
                continue
            value = data[spec.name]
            if not _has_type(value, _TYPES[spec.name]):
                raise RecordError(f"the record of {name} is damaged (its {spec.name} is not {_TYPE_WORDS[_TYPES[spec.name]]})")
            values[spec.name] = value
        record = cls(**values)
        if record.state not in STATES:
            raise RecordError(f"the record of {name} is damaged (its state {record.state!r} is unknown)")
        return record

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # Readers of the file (people, other tools) find these at the top level, as they always were.
        data["seed"], data["variant"] = self.settings.get("seed"), self.settings.get("variant")
        return data

    def save(self, paths: JobPaths) -> Path:
        """Write the record atomically."""
        return write_json(paths.manifest, self.to_dict())

    def settings_object(self, name: str = "the job") -> Settings:
        """The job's settings, checked; RecordError if the record's settings are not valid ones."""
        try:
            return Settings.from_dict(self.settings)
        except SettingsError as exc:
            raise RecordError(f"the record of {name} holds settings this app cannot use ({exc})") from None


_OPTIONAL = ("inputs", "origin", "step_cache", "memory_mode")
_TYPES: dict[str, Any] = {
    "state": str, "sections_done": int, "sections": int, "owner": str, "settings": dict, "inputs": (dict, None),
    "schedule": list, "loras": list, "origin": (dict, None), "models": dict, "dtype": str, "device": str,
    "attention": str, "step_cache": (dict, None), "memory_mode": (str, None), "versions": dict,
    "section_seconds": list, "video": str, "latents": str, "derived": list,
}  # fmt: skip
_TYPE_WORDS = {str: "text", int: "a whole number", dict: "an object", list: "a list", (dict, None): "an object",
               (str, None): "text"}  # fmt: skip


def _has_type(value: Any, expected: Any) -> bool:
    if isinstance(expected, tuple):
        return value is None or _has_type(value, expected[0])
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _checked_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """What a record says of a job's images, in the shape the page reads (ValueError saying what is wrong)."""
    for key in ("image", "end_image"):
        if inputs.get(key) is not None and not isinstance(inputs[key], dict):
            raise ValueError(f"its {key.replace('_', ' ')} is not described")
    keyframes = inputs.get("keyframes") or []
    if not isinstance(keyframes, list) or not all(
        isinstance(k, dict) and isinstance(k.get("name"), str) and _number(k.get("seconds")) for k in keyframes
    ):
        raise ValueError("its keyframes need a name and a time in seconds each")
    return inputs


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked_loras(loras: list[Any]) -> list[dict[str, Any]]:
    if not all(isinstance(lora, dict) and isinstance(lora.get("name"), str) and _number(lora.get("weight"))
               for lora in loras):  # fmt: skip
        raise ValueError("its LoRAs need a name and a weight each")
    return loras


def named_job(path: str | Path) -> str:
    """The job a previous output names: what its video's metadata or its record says (a renamed copy still names
    its job), else its file name. Only a name: whether the caller may touch that job is its record's say."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json" and path.stat().st_size <= MAX_RECORD_BYTES:
            video = json.loads(path.read_text(encoding="utf-8")).get("video")
            named = video.removesuffix(".mp4") if isinstance(video, str) else None
        else:
            import av  # only needed here

            with av.open(str(path)) as container:
                named = json.loads(container.metadata.get("comment", "{}")).get("job")
    except (OSError, ValueError, AttributeError, UnicodeDecodeError, RecursionError):
        named = None  # not ours to read: the file name is all there is
    return named if isinstance(named, str) and is_job_name(named) else job_name(path)


def job_of_file(path: str | Path, folder: str | Path, owner: str | None = None) -> str:
    """The job a previous output is, in the outputs `folder`: the one its metadata or record names where that job is
    there (and `owner`'s, when given), else the job whose video has the same content (SHA-256; only videos of the
    same size are read), else what `named_job` says. A copy under any name is found, never by its file name alone."""
    path, folder, named = Path(path), Path(folder), named_job(path)

    def usable(job_id: str) -> bool:
        paths = JobPaths(folder, job_id)
        return paths.manifest.is_file() and (owner is None or job_owner(paths) == owner)

    if usable(named) or path.suffix.lower() == ".json" or not path.is_file():
        return named
    size = path.stat().st_size
    same_size = [v for v in folder.glob("*.mp4") if is_job_name(v.stem) and v.stat().st_size == size and usable(v.stem)]
    if same_size:
        digest = file_sha256(path)
        return next((video.stem for video in same_size if file_sha256(video) == digest), named)
    return named


def job_owner(paths: JobPaths) -> str | None:
    """Who the job belongs to, from its record (or its checkpoint, before the record's first write); None if there
    is no such job or it cannot be read. Jobs recorded before owners were recorded belong to the local user."""
    if paths.manifest.is_file():
        try:
            return JobRecord.load(paths).owner
        except RecordError:
            return None
    return checkpoint_owner(paths)


def add_derived(paths: JobPaths, entry: dict[str, Any]) -> JobRecord:
    """List a file derived from the job in its record (replacing an earlier entry for the same file)."""
    record = JobRecord.load(paths)
    record.derived = [d for d in record.derived if d.get("file") != entry.get("file")] + [entry]
    record.save(paths)
    return record


def settings_of_output(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings a previous output was made with, and what else its record says of the job: `inputs` (the
    images' names, SHA-256 and keyframe times) and `loras` (names, SHA-256, weights), when recorded. From its record
    (.json) or its video's metadata (.mp4). RecordError (naming the file) when it holds no FramePack settings."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_RECORD_BYTES and path.suffix.lower() == ".json":
            raise RecordError(f"{path.name} is too large to be a FramePack record")
        if path.suffix.lower() == ".json":
            saved = json.loads(path.read_text(encoding="utf-8"))
        else:
            import av  # only needed here; the rest of this module writes files without it

            with av.open(str(path)) as container:
                saved = json.loads(container.metadata["comment"])
                if not isinstance(saved, dict):
                    raise TypeError("not a FramePack record")
                saved["settings"] = saved.pop("framepack")
        record = JobRecord.from_dict(saved, path.name)
        return record.settings, {"inputs": _checked_inputs(record.inputs or {}), "loras": _checked_loras(record.loras)}
    except (OSError, KeyError, TypeError, ValueError, UnicodeDecodeError, RecursionError) as exc:  # av's are OSErrors
        if isinstance(exc, RecordError):
            raise RecordError(f"{path.name} holds no FramePack settings ({str(exc).split('(', 1)[-1].rstrip(')')})") from None
        raise RecordError(f"{path.name} holds no FramePack settings ({type(exc).__name__})") from None
