"""The settings of one generation job: one validated, typed object with the defaults FramePack users know."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

Variant = Literal["original", "f1"]
VARIANTS: tuple[str, ...] = ("original", "f1")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")

FPS = 30
MAX_SECONDS = 120.0
CACHE_METHODS: tuple[str, ...] = ("teacache", "magcache", "first_block")
# Llama reads 256 tokens of a prompt; this bounds what one request can make the app tokenize and store.
MAX_PROMPT_CHARACTERS = 10_000
EPSILON = 1e-6  # a timed control at exactly a section start governs it, however that start rounds
# A timed prompt group: "[2.4s: the man waves]". Any other bracket in a prompt is a malformed group.
_GROUP = re.compile(r"\[\s*(\d+(?:\.\d+)?|\.\d+)\s*s\s*:\s*([^\[\]]*?)\s*\]")
TimedPrompts = tuple[tuple[float, str], ...]


class SettingsError(ValueError):
    """A setting a user gave is out of range or of the wrong type. `field` names the setting."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class Settings:
    """Everything that decides what a job generates (besides the image and the model weights).

    `height`/`width` override the bucket chosen from `resolution` when both are given. `dtype` is the
    transformer's compute dtype; `None` picks float32 on CPU and bfloat16 on an accelerator.
    `use_teacache` turns step caching on; `cache_method` picks FramePack's TeaCache, MagCache or diffusers'
    First Block Cache, `cache_threshold` its threshold (None: the method's default, 0.15 for TeaCache).

    `prompts` are timed prompts, (seconds, text) pairs (or "[2.4s: text]" groups inside `prompt`, parsed out
    of it): each section is conditioned on the one in force at its start, `prompt` being the base prompt
    before the first. `prompt_blend_sections` fades a new prompt in over that many sections (0: at once).
    `end_strength` scales the end frame's latent, when the job has one.
    """

    variant: Variant = "original"
    prompt: str = ""
    prompts: TimedPrompts = ()
    negative_prompt: str = ""
    seed: int = 31337
    total_second_length: float = 5.0
    latent_window_size: int = 9
    steps: int = 25
    cfg: float = 1.0
    distilled_cfg: float = 10.0
    cfg_rescale: float = 0.0
    use_teacache: bool = True
    cache_method: str = "teacache"
    cache_threshold: float | None = None
    resolution: int = 640
    height: int | None = None
    width: int | None = None
    gpu_memory_preservation: float = 6.0
    mp4_crf: int = 16
    dtype: str | None = None
    end_strength: float = 1.0
    prompt_blend_sections: int = 0

    def __post_init__(self) -> None:
        for spec in _CHECKS:
            spec.check(self)
        for name in ("prompt", "negative_prompt"):
            if len(getattr(self, name)) > MAX_PROMPT_CHARACTERS:
                raise SettingsError(name, f"is {len(getattr(self, name))} characters long; at most {MAX_PROMPT_CHARACTERS}")
        self._check_prompts()
        if self.variant not in VARIANTS:
            raise SettingsError("variant", f"must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.cache_method not in CACHE_METHODS:
            raise SettingsError("cache_method", f"must be one of {', '.join(CACHE_METHODS)}, got {self.cache_method!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise SettingsError("dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if (self.height is None) != (self.width is None):
            raise SettingsError("height" if self.height is None else "width", "give both height and width, or neither")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value % 16:
                raise SettingsError(name, f"must be a multiple of 16, got {value}")

    def _check_prompts(self) -> None:
        """Timed prompts come as `prompts` pairs or inside `prompt` as "[2.4s: text]" groups (then parsed out)."""
        prompts = _coerce_prompts(self.prompts)
        base, inline = parse_timed_prompt(self.prompt)
        if inline and prompts:
            raise SettingsError("prompts", "give timed prompts inside the prompt or as a list, not both")
        prompts = inline or prompts
        check_distinct("prompts", [seconds for seconds, _ in prompts], "timed prompts")
        last = (self.num_sections - 1) * 4 * self.latent_window_size / FPS
        for seconds, _ in prompts:
            if seconds > last + EPSILON:
                raise SettingsError("prompts", f"{seconds:g} s governs no section: the last section starts at {last:g} s, the last usable time")  # fmt: skip
        object.__setattr__(self, "prompt", base if inline else self.prompt)
        object.__setattr__(self, "prompts", prompts)

    @property
    def prompt_text(self) -> str:
        """The prompt as a user types it: the base prompt and its timed groups."""
        return format_timed_prompt(self.prompt, self.prompts)

    @property
    def step_cache(self) -> str | None:
        """The step cache method in use, or None."""
        return self.cache_method if self.use_teacache else None

    @property
    def num_sections(self) -> int:
        """Sections as FramePack computes them (Python's round: ties go to even)."""
        return max(round(self.total_second_length * FPS / (self.latent_window_size * 4)), 1)

    @property
    def frames_per_section(self) -> int:
        return self.latent_window_size * 4 - 3

    @property
    def num_frames(self) -> int:
        """Frames of the finished video: 4T - 3 for T = sections * window + 1 latent frames."""
        return 4 * (self.num_sections * self.latent_window_size + 1) - 3

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["prompts"] = [list(pair) for pair in self.prompts]  # JSON's shape, as `from_dict` reads it back
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Build from a mapping (a JSON file, a form), ignoring keys that are not settings."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def parse_timed_prompt(text: str) -> tuple[str, TimedPrompts]:
    """Split `"base text [0s: A] [2.4s: B]"` into the base prompt and its (seconds, text) pairs, in time order.

    Raises `SettingsError` naming the problem: a malformed group, an empty group, two groups at one time.
    """
    pairs: list[tuple[float, str]] = []
    outside: list[str] = []
    position = 0
    for match in _GROUP.finditer(text):
        outside.append(text[position : match.start()])
        seconds, prompt = float(match.group(1)), match.group(2).strip()
        if not prompt:
            raise SettingsError("prompt", f"the group {match.group(0)!r} has no text")
        pairs.append((seconds, prompt))
        position = match.end()
    outside.append(text[position:])
    for part in outside:
        if "[" in part or "]" in part:
            near = part[part.index("[") :] if "[" in part else part[: part.index("]") + 1]
            raise SettingsError(
                "prompt",
                f"malformed timed prompt near {near.strip()[:40]!r}: write each as [<seconds>s: <text>], "
                "e.g. [2.4s: he turns around]",
            )
    if not pairs:
        return text, ()
    pairs.sort(key=lambda pair: pair[0])
    check_distinct("prompt", [seconds for seconds, _ in pairs], "timed prompts")
    return " ".join(" ".join(outside).split()), tuple(pairs)


def format_timed_prompt(base: str, prompts: TimedPrompts) -> str:
    """The prompt box's text for a base prompt and its timed prompts (what `parse_timed_prompt` reads)."""
    return " ".join([base, *(f"[{seconds:g}s: {text}]" for seconds, text in prompts)]).strip()


def check_distinct(field_name: str, times: list[float], what: str) -> None:
    """Two timed controls of one kind at one time (within EPSILON) are an error."""
    ordered = sorted(times)
    for earlier, later in zip(ordered, ordered[1:]):
        if later - earlier <= EPSILON:
            raise SettingsError(field_name, f"two {what} at {later:g} s: give each time once")


def _coerce_prompts(value: Any) -> TimedPrompts:
    """(seconds, text) pairs from a tuple or a JSON list of lists, checked and in time order."""
    try:
        pairs = [(float(seconds), text) for seconds, text in value]
    except (TypeError, ValueError):
        raise SettingsError("prompts", f"must be a list of [seconds, text] pairs, got {value!r}") from None
    for seconds, text in pairs:
        if not isinstance(text, str) or not text.strip():
            raise SettingsError("prompts", f"the timed prompt at {seconds:g} s has no text")
        if not math.isfinite(seconds) or seconds < 0:
            raise SettingsError("prompts", f"times must be 0 s or later, got {seconds:g}")
        if len(text) > MAX_PROMPT_CHARACTERS:
            raise SettingsError("prompts", f"the timed prompt at {seconds:g} s is longer than {MAX_PROMPT_CHARACTERS} characters")
    return tuple(sorted(((seconds, text.strip()) for seconds, text in pairs), key=lambda pair: pair[0]))


@dataclass(frozen=True)
class _Range:
    name: str
    kind: type
    low: float | None = None
    high: float | None = None
    optional: bool = False

    def check(self, settings: Settings) -> None:
        value = getattr(settings, self.name)
        if value is None and self.optional:
            return
        value = self._coerce(value)
        object.__setattr__(settings, self.name, value)
        if self.kind is str:
            return
        if self.kind is float and not math.isfinite(value):
            raise SettingsError(self.name, f"must be a finite number, got {value}")
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            raise SettingsError(self.name, f"must be between {self._fmt(self.low)} and {self._fmt(self.high)}, got {value}")

    def _coerce(self, value: Any) -> Any:
        # Values from a form or JSON arrive as floats ("9.0") or strings; accept what is unambiguous.
        kind = self.kind
        try:
            if kind is bool:
                if isinstance(value, bool):
                    return value
                if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    return value.lower() in ("true", "1", "yes", "on")
                if isinstance(value, (int, float)) and value in (0, 1):
                    return bool(value)
                raise TypeError
            if kind is str:
                if not isinstance(value, str):
                    raise TypeError
                return value
            if isinstance(value, bool):
                raise TypeError
            if kind is int:
                number = float(value)
                if not number.is_integer():
                    raise TypeError
                return int(number)
            return float(value)
        except (TypeError, ValueError, OverflowError):
            expected = {bool: "true or false", str: "text", int: "a whole number", float: "a number"}[kind]
            raise SettingsError(self.name, f"must be {expected}, got {value!r}") from None

    @staticmethod
    def _fmt(bound: float | None) -> str:
        return "-inf" if bound is None else f"{bound:g}"


_CHECKS: tuple[_Range, ...] = (
    _Range("variant", str),
    _Range("prompt", str),
    _Range("negative_prompt", str),
    _Range("seed", int, 0, 2**63 - 1),
    _Range("total_second_length", float, 0.1, MAX_SECONDS),
    _Range("latent_window_size", int, 1, 33),
    _Range("steps", int, 1, 100),
    _Range("cfg", float, 1.0, 32.0),
    _Range("distilled_cfg", float, 1.0, 32.0),
    _Range("cfg_rescale", float, 0.0, 1.0),
    _Range("use_teacache", bool),
    _Range("cache_method", str),
    _Range("cache_threshold", float, 0.0, 1.0, optional=True),
    _Range("resolution", int, 128, 960),
    _Range("height", int, 16, 2048, optional=True),
    _Range("width", int, 16, 2048, optional=True),
    _Range("gpu_memory_preservation", float, 0.0, 128.0),
    _Range("mp4_crf", int, 0, 51),
    _Range("end_strength", float, 0.0, 1.0),
    _Range("prompt_blend_sections", int, 0, 8),
)
