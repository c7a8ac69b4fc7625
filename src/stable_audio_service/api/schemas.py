"""The HTTP contract. Names, defaults and bounds of the design note are kept exactly."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CLIENT_JOB_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,256}$"
CLIENT_JOB_ID_RE = re.compile(CLIENT_JOB_ID_PATTERN)
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
AudioFormat = Literal["wav", "flac", "ogg", "mp3"]
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean_text(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    if _CONTROL.search(value):
        raise ValueError(f"{field} contains control characters")
    return value


class StableAudioRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS, description="What to generate.")
    duration: float = Field(10.0, ge=1.0, le=30.0, description="Seconds of audio.")
    guidance_scale: float = Field(7.0, ge=1.0, le=20.0, description="Classifier-free guidance; 1 turns it off.")
    num_inference_steps: int = Field(100, ge=10, le=200, description="Denoising steps.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Same seed and parameters give the same audio.")
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="What to steer away from.")
    format: AudioFormat = Field("wav", description="wav (16-bit PCM), flac (16-bit), ogg (Vorbis) or mp3.")
    client_job_id: str | None = Field(None, pattern=CLIENT_JOB_ID_PATTERN, description="Echoed in meta.")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must not be blank")
        return _clean_text(v, "prompt")

    @field_validator("negative_prompt")
    @classmethod
    def _negative(cls, v: str | None) -> str | None:
        return _clean_text(v, "negative_prompt")


class ResponseMetadata(BaseModel):
    client_job_id: str | None = None
    trace_id: str | None = Field(None, description="32 hex digits: the request span's trace.")
    span_id: str | None = Field(None, description="16 hex digits: the request span.")


class Timings(BaseModel):
    queue_s: float | None = None
    encode_s: float | None = None
    denoise_s: float | None = None
    decode_s: float | None = None
    audio_encode_s: float | None = None
    total_s: float | None = None


class StableAudioResponse(BaseModel):
    audio_b64: str = Field(..., description="Base64 of the encoded audio file.")
    sample_rate: int
    duration: float = Field(..., description="Actual seconds of audio returned.")
    meta: ResponseMetadata
    channels: int
    num_samples: int
    seed: int
    format: AudioFormat
    timings: Timings | None = None


class HealthResponse(BaseModel):
    status: str
    service: str
    version: str
    model: str | None = None


class JobAccepted(BaseModel):
    id: str
    status: str
    position: int | None = Field(None, description="1-based place in the queue.")
    meta: ResponseMetadata


class JobView(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    position: int | None = None
    step: int
    total_steps: int
    created: float
    started: float | None = None
    finished: float | None = None
    timings: Timings
    error: str | None = None
    result: StableAudioResponse | None = None


class ErrorBody(BaseModel):
    detail: str | list
