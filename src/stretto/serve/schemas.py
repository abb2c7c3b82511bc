"""Request bodies, checked field by field at the boundary: unknown fields, types and ranges are 422s."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stretto import cache as feature_cache
from stretto.data.shapes import IMAGE_SIZE
from stretto.pipelines.image import DEFAULT_SHIFT, MAX_GUIDANCE, STUDENT_METHODS
from stretto.sampling import SAMPLERS

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer
MAX_PROMPT_CHARS = 1000
MAX_TEXT_PROMPTS = 64
SIZE = f"{IMAGE_SIZE}x{IMAGE_SIZE}"
STRICT = ConfigDict(extra="forbid")


class ImageRequest(BaseModel):
    """OpenAI's images/generations body plus stretto's sampling fields."""

    model_config = STRICT
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    model: str | None = Field(default=None, max_length=4096)
    n: int = Field(default=1, ge=1, le=4096)
    size: Literal[SIZE] = SIZE  # the shipped model draws 32x32 only
    response_format: Literal["b64_json"] = "b64_json"
    # None: the model's own (8 DPM-Solver++ steps at guidance 3; a distilled student's method, steps and guidance)
    steps: int | None = Field(default=None, ge=1, le=10_000)
    sampler: str | None = None
    guidance: float | None = Field(default=None, ge=0.0, le=MAX_GUIDANCE)
    shift: float = Field(default=DEFAULT_SHIFT, gt=0.0, le=100.0)
    cache: str | None = Field(default=None, max_length=200)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str | None) -> str | None:
        if value is not None and value not in [*SAMPLERS, *STUDENT_METHODS]:
            raise ValueError(f"unknown sampler; allowed: {', '.join([*SAMPLERS, *STUDENT_METHODS])}")
        return value

    @field_validator("cache")
    @classmethod
    def _cache_spec(cls, value: str | None) -> str | None:
        """The normalised policy spec ('none' for no cache): equal settings batch together."""
        if value is None or value.strip() in ("", "none"):
            return None
        return feature_cache.parse_policy(value).describe()  # its ValueError names the parameter and range


class CompletionRequest(BaseModel):
    """OpenAI's completions body (prompt, max_tokens, stream) plus the diffusion LM's decoding fields."""

    model_config = STRICT
    prompt: str | list[str]
    model: str | None = Field(default=None, max_length=4096)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)  # gen_length; None: the model's trained canvas
    stream: bool = False
    decode: str = Field(default="threshold:tau=0.9", max_length=200)
    cache: str | None = Field(default=None, max_length=200)
    block_length: int | None = Field(default=None, ge=1, le=4096)
    early_stop: bool = True

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> str | list[str]:
        for p in [value] if isinstance(value, str) else value:
            if not p:
                raise ValueError("a prompt needs at least one character")
            if len(p) > MAX_PROMPT_CHARS:
                raise ValueError(f"a prompt has at most {MAX_PROMPT_CHARS} characters, got {len(p)}")
        if isinstance(value, list) and not 1 <= len(value) <= MAX_TEXT_PROMPTS:
            raise ValueError(f"give 1 to {MAX_TEXT_PROMPTS} prompts, got {len(value)}")
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class WorldParams(BaseModel):
    """The query of `WS /v1/world`: which model and map, and the stream's settings."""

    model_config = STRICT
    model: str | None = Field(default=None, max_length=4096)
    world: int = Field(default=1_000_000, ge=0, le=MAX_SEED - 1)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    steps: int | None = Field(default=None, ge=1, le=64)  # None: the model's own (4 unless distilled for fewer)
    window: int = Field(default=8, ge=1, le=4096)
    sinks: int = Field(default=1, ge=0, le=4096)
    format: Literal["png", "raw"] = "png"
