"""All settings in one place: environment variables (prefix STABLE_AUDIO_) overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_LOCAL_MODEL = Path("/tank/halfremembered/models/stable-audio/")
DEFAULT_HUB_MODEL = "stabilityai/stable-audio-open-1.0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STABLE_AUDIO_", extra="ignore")

    model: str | None = Field(
        None,
        description="Local model directory (diffusers layout for Stable Audio Open 1.0, Stability's official format "
        "for Stable Audio 3) or hub repo id. Unset: the studio path if it holds a model, "
        "else stabilityai/stable-audio-open-1.0 from the Hugging Face cache.",
    )
    host: str = "127.0.0.1"
    port: int = Field(2009, ge=1, le=65535)
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="'auto': float16 on a GPU; on the CPU bfloat16 for Stable Audio 3 where the CPU has AMX-BF16 or "
        "AVX512-BF16 and a GEMM measured at start runs at least 1.3x float32's, else float32. The choice and its "
        "reason are logged at start; GET /models reports it.",
    )
    skip_memory_check: bool = False
    window: Literal["full", "fit"] = Field(
        "full", description="'full' samples diffusers' whole 1024-latent window; 'fit' only what the clip needs."
    )

    max_prompt_chars: int = Field(2000, ge=1)
    max_batch_size: int = Field(4, ge=1)
    batch_wait_ms: int = Field(20, ge=0)
    queue_size: int = Field(64, ge=1)
    queue_timeout_s: float = Field(900.0, gt=0, description="A request still queued after this long gets 503.")
    default_max_wait_s: float | None = Field(
        None,
        gt=0,
        description="The deadline of a request that names none (`max_wait_s` or a `Request-Timeout` header): one "
        "estimated to finish later is refused at once with 503 and a Retry-After, and one still queued when it "
        "passes is answered 503 instead of run. Unset: no deadline.",
    )
    estimate_warm_up: bool = Field(
        True,
        description="At start-up, time one short generation (a few steps and a decode at the model's defaults) so "
        "that wait estimates, and refusals of requests that would miss their deadline, work from the first request.",
    )
    text_cache_size: int = Field(256, ge=0)
    job_ttl_s: float = Field(3600.0, gt=0)
    max_jobs_kept: int = Field(256, ge=1)
    max_result_bytes: int = Field(
        512 * 2**20,
        ge=0,
        description="Most bytes of encoded audio kept for finished /jobs results; the oldest results are evicted "
        "first (the newest one is always kept). /predict results are never kept.",
    )
    job_prune_interval_s: float = Field(
        5.0, gt=0, description="How often finished jobs are checked against the TTL, count and byte limits."
    )
    max_body_bytes: int = Field(
        12_000_000, ge=1024, description="Largest request body; must hold a base64 upload (4/3 of its bytes)."
    )
    max_duration: float | None = Field(
        None,
        gt=0,
        description="Cap on request duration in seconds for models that allow long clips (sa3: up to 120 s small, "
        "380 s medium). Unset: the model's own maximum. open-1.0 keeps its 30 s contract.",
    )
    max_longform_s: float = Field(
        600.0,
        gt=0,
        le=3600.0,
        description="Longest long-form clip in seconds: POST /jobs with a duration above the model's longest clip (or "
        "above `window_s`) is made as a chain of continuation windows, on models that can inpaint.",
    )
    max_upload_bytes: int = Field(
        8_000_000, ge=1024, description="Largest decoded audio upload (init_audio_b64 / inpaint_audio_b64) in bytes."
    )
    max_upload_seconds: float = Field(
        400.0, gt=0, description="Longest audio upload in seconds (after decoding, before resampling)."
    )
    max_upload_samples: int = Field(
        40_000_000,
        ge=1,
        description="Most samples (frames x channels, at the file's own rate, as its header declares) an audio "
        "upload may decode to; checked before decoding. The default holds 400 s of 48 kHz stereo.",
    )
    lora_dir: Path | None = Field(
        None,
        description="Stable Audio 3: a directory of LoRA adapters in Stability's format (.safetensors; name = file "
        "stem) that requests may name in `loras`. Unset: no adapters.",
    )
    lora_cache_mb: float = Field(
        512.0, gt=0, description="Memory for loaded adapters and their per-set plans (least recently used evicted)."
    )
    # Speed levers for Stable Audio 3 on the CPU (applied at load, see models/stable_audio_3/accel.py): they trade
    # start-up time or exactness for speed, so the operator chooses.
    threads: int = Field(0, ge=0, description="Intra-op torch threads; 0: one per CPU core this process may use.")
    quantize: Literal["none", "int8", "int8-dit"] = Field(
        "none",
        description="sa3: 'int8' quantises the Linear layers of the DiT, SAME and T5Gemma dynamically (CPU, about 2x "
        "faster matmuls; changes the numbers, so opt-in until judged on real weights); 'int8-dit' the DiT only "
        "(most of the time, least of the deviation).",
    )
    compile: bool = Field(
        False,
        description="sa3: torch.compile the DiT blocks and SAME layers and warm them up at start-up (/ready waits).",
    )
    api_key: str | None = Field(None, description="When set, every route but /health needs 'Authorization: Bearer'.")
    cors_origins: str = Field("", description="Comma-separated origins allowed by CORS; empty: CORS off.")
    log_level: str = "info"
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM: stop taking work, let queued and running requests finish for this long, answer the "
        "rest with 503, flush telemetry, exit 0.",
    )

    def resolved_model(self) -> str:
        """What to load when `model` is unset: the studio's copy if it is there, so a studio box never downloads,
        else the hub's Stable Audio Open 1.0."""
        if self.model:
            return self.model
        if any((DEFAULT_LOCAL_MODEL / f).is_file() for f in ("model_index.json", "model_config.json")):
            return str(DEFAULT_LOCAL_MODEL)
        return DEFAULT_HUB_MODEL
