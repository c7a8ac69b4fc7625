"""The HTTP contract. Names, defaults and bounds of the design note are kept exactly."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..limits import (
    MAX_LONGFORM_ANY_S,
    MAX_LORA_FILTER_CHARS,
    MAX_LORA_LAYER_FILTERS,
    MAX_LORA_STRENGTH,
    MAX_LORAS_PER_REQUEST,
    MAX_LOUDNESS_LUFS,
    MAX_OUTPUTS,
    MAX_SEED,
    MIN_LOUDNESS_LUFS,
)
from ..loudness import PEAK_TARGET_DBFS, TRUE_PEAK_CEILING_DBTP
from ..loudness import parse as parse_loudness

CLIENT_JOB_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,256}$"
CLIENT_JOB_ID_RE = re.compile(CLIENT_JOB_ID_PATTERN)
MAX_PROMPT_CHARS = 2000
AudioFormat = Literal["wav", "flac", "ogg", "mp3"]
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean_text(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    if _CONTROL.search(value):
        raise ValueError(f"{field} contains control characters")
    return value


# Outer limits of every family; the loaded model's own defaults and bounds are enforced per request (the
# service layer) and written into the served OpenAPI schema (api/openapi.py).
MAX_DURATION_ANY_MODEL = 400.0
MAX_INPAINT_REGIONS = 16
# Longest deadline a caller may give (a day): anything longer is no deadline at all.
MAX_WAIT_S = 86400.0
LORA_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class LoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(..., pattern=LORA_NAME_PATTERN, description="Adapter name: its file stem (GET /loras).")
    strength: float = Field(
        1.0,
        ge=-MAX_LORA_STRENGTH,
        le=MAX_LORA_STRENGTH,
        description="Stability's `lora_strength`: scales the adapter's low-rank term (scale = strength x alpha / "
        "rank). DoRA adapters renormalise in full at any strength but 0, and 0 turns them off exactly.",
    )
    conditioner_strength: float | None = Field(
        None,
        ge=-MAX_LORA_STRENGTH,
        le=MAX_LORA_STRENGTH,
        description="The strength on the conditioner (the duration embedding) instead of the DiT; default: "
        "`strength`, as Stability's `set_lora_strength` sets both.",
    )
    interval: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="[min, max]: the adapter acts on the DiT only at steps whose noise level sigma lies in it "
        "(min <= sigma <= max; sigma falls from 1 to 0). Default [0, 1]: every step.",
    )
    layer_filter: list[Annotated[str, Field(min_length=1, max_length=MAX_LORA_FILTER_CHARS)]] | None = Field(
        None,
        max_length=MAX_LORA_LAYER_FILTERS,
        description="Substrings (lower-cased, any of them) of DiT layer names where the adapter does not act, e.g. "
        "`cross_attn` or `transformer.layers.[0-3].` (bracket ranges expand). Names are relative to the DiT: "
        "`transformer.layers.0.self_attn.to_qkv`, `to_global_embed.0`.",
    )


class AppliedLora(BaseModel):
    name: str
    strength: float


class AppliedLoudness(BaseModel):
    mode: Literal["peak", "lufs"]
    target: float = Field(..., description="LUFS (lufs), or the sample peak in dBFS (peak).")
    gain_db: float = Field(..., description="The gain applied to the whole clip, dB (also `X-Loudness-Gain-dB`).")
    measured_lufs: float | None = Field(None, description="The clip's integrated loudness as generated.")
    output_lufs: float | None = Field(None, description="The result's integrated loudness.")
    true_peak_dbtp: float | None = Field(None, description="The result's true peak (4x oversampled), dBTP.")
    ceiling_dbtp: float = Field(..., description="The true peak a LUFS target's gain never passes.")
    limited: bool = Field(..., description="The ceiling capped the gain: the LUFS target was not reached.")
    note: str | None = Field(None, description="Why the gain is not simply the target's (limited, silent, short).")


class InpaintRegion(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    start_s: float = Field(..., ge=0.0, description="Start of the region to regenerate, seconds.")
    end_s: float = Field(..., gt=0.0, description="End of the region, seconds; after start_s.")

    @model_validator(mode="after")
    def _ordered(self) -> InpaintRegion:
        if self.end_s <= self.start_s:
            raise ValueError("end_s must be after start_s")
        return self


class StableAudioRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS, description="What to generate.")
    # Defaults and bounds of these three come from the loaded model (GET /models `fields`); the
    # static bounds below are the loose outer limits of every family. Omitted: the model's default.
    duration: float | None = Field(
        None,
        gt=0.0,
        le=MAX_LONGFORM_ANY_S,
        description="Seconds of audio. Omitted: the model's default. Bounds are the loaded model's (GET /models): "
        "stable-audio-open-1.0 10 s, 1-30; Stable Audio 3 from a fraction of a second up to the checkpoint's longest "
        "clip or the operator's STABLE_AUDIO_MAX_DURATION. On POST /jobs, a model that can continue (inpainting) "
        "also takes long-form durations above that, up to STABLE_AUDIO_MAX_LONGFORM_S (GET /models "
        "`capabilities.max_longform_s`), made as a chain of continuation windows.",
    )
    guidance_scale: float | None = Field(
        None,
        ge=1.0,
        le=20.0,
        description="Classifier-free guidance; 1 turns it off. Default per model: 7 for stable-audio-open-1.0, "
        "1 (off: guidance is distilled into the weights) for Stable Audio 3.",
    )
    num_inference_steps: int | None = Field(
        None,
        ge=1,
        le=200,
        description="Denoising steps. Default and range per model: stable-audio-open-1.0 100, 10-200; "
        "Stable Audio 3 8.",
    )
    apg_scale: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Stable Audio 3 only: adaptive projected guidance when guidance_scale > 1. 1 (default, as "
        "Stability's code) keeps only the part of the guidance orthogonal to the prediction; 0 is plain CFG.",
    )
    loras: list[LoraRequest] | None = Field(
        None,
        max_length=MAX_LORAS_PER_REQUEST,
        description="Stable Audio 3 only: LoRA adapters, applied in this order, each to what the previous ones "
        f"made (as Stability's stacking does); at most {MAX_LORAS_PER_REQUEST}. GET /loras lists them.",
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Same seed and parameters give the same audio.")
    num_outputs: int | None = Field(
        None,
        ge=1,
        le=MAX_OUTPUTS,
        description="Takes (variations) in one request, from seeds seed, seed + 1, ..., generated as one batch; each "
        "equals the request with that seed alone. Default 1. JSON answers list them in `outputs`; "
        "GET /jobs/{id}/audio?index=i serves take i; `Accept: audio/*` with more than one is a 406.",
    )
    window_s: float | None = Field(
        None,
        gt=0.0,
        le=MAX_DURATION_ANY_MODEL,
        description="Long-form audio (POST /jobs): the length of each continuation window. Default: the model's "
        "longest clip; a duration above it makes the request long-form.",
    )
    overlap_s: float | None = Field(
        None,
        gt=0.0,
        le=MAX_DURATION_ANY_MODEL,
        description="Long-form audio: seconds each window continues from the previous one, joined there by an "
        "equal-power crossfade. Default: 10 s, or a quarter of the window if shorter; at most half the window.",
    )
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="What to steer away from.")
    format: AudioFormat = Field("wav", description="wav (16-bit PCM), flac (16-bit), ogg (Vorbis) or mp3.")
    client_job_id: str | None = Field(None, pattern=CLIENT_JOB_ID_PATTERN, description="Echoed in meta.")
    max_wait_s: float | None = Field(
        None,
        gt=0.0,
        le=MAX_WAIT_S,
        description="Seconds the caller waits for the result, no longer (also the `Request-Timeout` header; with "
        "both, the shorter). A request estimated to finish later is refused at once: 503 with a Retry-After and the "
        "estimate; one whose deadline passes while it is queued is answered 503 instead of run; one already running "
        "finishes. Omitted: the server's STABLE_AUDIO_DEFAULT_MAX_WAIT_S (unset: no deadline).",
    )
    init_audio_b64: str | None = Field(
        None,
        description="Audio-to-audio: base64 of a wav, flac, ogg or mp3 file (any sample rate and channel count; "
        "converted to the model's). Size and length limits: GET /models `uploads`. Stable Audio 3 noises it to "
        "init_noise_level and denoises from there; stable-audio-open-1.0 adds its latents to full-strength noise "
        "(diffusers' initial_audio_waveforms), which changes the result only slightly (see docs/models.md).",
    )
    init_noise_level: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Audio-to-audio strength (Stable Audio 3 only), in (0, 1]: 1 ignores the audio, lower keeps "
        "more of it. Default: GET /models `capabilities.init_noise_level`.",
    )
    inpaint_audio_b64: str | None = Field(
        None,
        description="Inpainting / continuation (Stable Audio 3 only): base64 of the source audio file. The output "
        "is `duration` long; inpaint_regions are regenerated, everything else is the source unchanged; anything "
        "past the source's end is generated (continuation).",
    )
    inpaint_regions: list[InpaintRegion] | None = Field(
        None, max_length=MAX_INPAINT_REGIONS, description="Regions of the output to regenerate, in seconds."
    )
    loudness: Literal["none", "peak"] | Annotated[float, Field(ge=MIN_LOUDNESS_LUFS, le=MAX_LOUDNESS_LUFS)] = Field(
        "none",
        description='The level of the result: "none" (default) leaves it as the model made it; "peak" scales it to '
        f"a {PEAK_TARGET_DBFS:g} dBFS sample peak; a number is a target integrated loudness in LUFS (ITU-R BS.1770, "
        f"{MIN_LOUDNESS_LUFS:g} to {MAX_LOUDNESS_LUFS:g}, e.g. -14), reached by one gain over the whole clip unless "
        f"that would lift the true peak above {TRUE_PEAK_CEILING_DBTP:g} dBTP: the gain stops there and "
        "`meta.loudness.limited` says so. The gain applied: `meta.loudness`, and the `X-Loudness-Gain-dB` header. "
        "Not with long-form audio.",
    )

    @field_validator("loudness", mode="before")
    @classmethod
    def _loudness(cls, v: object) -> object:
        """One error naming the field, whatever is wrong ("none", "peak" or a number; numeric strings too)."""
        if v is None:
            return "none"
        if not isinstance(v, str | int | float):
            raise ValueError('must be "none", "peak" or a number of LUFS')
        target = parse_loudness(v)
        return "none" if target is None else target.mode if target.mode == "peak" else target.target

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
    loras: list[AppliedLora] | None = Field(None, description="The LoRA adapters applied, in order (Stable Audio 3).")
    loudness: AppliedLoudness | None = Field(
        None, description="What the request's `loudness` did (the first take's); absent for \"none\"."
    )


class Timings(BaseModel):
    queue_s: float | None = None
    encode_s: float | None = None
    denoise_s: float | None = None
    decode_s: float | None = None
    audio_encode_s: float | None = None
    loudness_s: float | None = None
    total_s: float | None = None


class Take(BaseModel):
    audio_b64: str = Field(..., description="Base64 of this take's encoded audio file.")
    seed: int


class TakeInfo(BaseModel):
    audio_url: str
    seed: int


class StableAudioResponse(BaseModel):
    audio_b64: str = Field(..., description="Base64 of the encoded audio file (the first take).")
    sample_rate: int
    duration: float = Field(..., description="Actual seconds of audio returned.")
    meta: ResponseMetadata
    channels: int
    num_samples: int
    seed: int
    format: AudioFormat
    timings: Timings | None = None
    outputs: list[Take] | None = Field(
        None, description="With num_outputs > 1: every take, in seed order (the first is the one above)."
    )


class HealthResponse(BaseModel):
    status: str
    service: str
    version: str
    model: str | None = None


ETA_DESCRIPTION = (
    "Estimated seconds until the result, from the engine's measured speed and the work ahead (continuous batching "
    "included); null before anything was measured, and once the job ended."
)


class JobAccepted(BaseModel):
    id: str
    status: str
    position: int | None = Field(None, description="1-based place in the queue.")
    eta_s: float | None = Field(None, description=ETA_DESCRIPTION)
    meta: ResponseMetadata


class JobResultInfo(BaseModel):
    """A finished job's result without the audio itself (fetch that from `audio_url`)."""

    audio_url: str
    sample_rate: int
    duration: float
    channels: int
    num_samples: int
    seed: int
    format: AudioFormat
    bytes: int = Field(..., description="Every take's bytes.")
    timings: Timings | None = None
    outputs: list[TakeInfo] | None = Field(None, description="With num_outputs > 1: each take's URL and seed.")


class JobView(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    position: int | None = None
    eta_s: float | None = Field(None, description=ETA_DESCRIPTION)
    step: int
    total_steps: int
    created: float
    started: float | None = None
    finished: float | None = None
    timings: Timings
    error: str | None = None
    meta: ResponseMetadata | None = None
    result: JobResultInfo | None = Field(None, description="Once done: the result's facts and where to GET the file.")


class ErrorBody(BaseModel):
    detail: str | list


class DeadlineRefusal(BaseModel):
    """A 503 for a request that would finish after its deadline (`max_wait_s`, `Request-Timeout` or the server's
    default), or whose admission would make an accepted request miss its own."""

    detail: str = Field(..., description="What was refused and why, in one sentence.")
    estimate_s: float = Field(..., description="Estimated seconds from now until the result, had it been queued.")
    max_wait_s: float | None = Field(None, description="The request's deadline, in seconds.")
    retry_after_s: float = Field(..., description="As the Retry-After header: when the estimate would make it.")
    alone_s: float = Field(
        ..., description="What the request takes on an idle server; above max_wait_s no retry can succeed."
    )
