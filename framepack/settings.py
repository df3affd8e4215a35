"""The settings of one generation job: one validated, typed object with the defaults FramePack users know."""

from __future__ import annotations

import dataclasses
import math
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
    """

    variant: Variant = "original"
    prompt: str = ""
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

    def __post_init__(self) -> None:
        for spec in _CHECKS:
            spec.check(self)
        for name in ("prompt", "negative_prompt"):
            if len(getattr(self, name)) > MAX_PROMPT_CHARACTERS:
                raise SettingsError(name, f"is {len(getattr(self, name))} characters long; at most {MAX_PROMPT_CHARACTERS}")
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
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Build from a mapping (a JSON file, a form), ignoring keys that are not settings."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


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
)
