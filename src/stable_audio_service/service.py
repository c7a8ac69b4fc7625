"""The one request path: a request (from HTTP, the CLI or any other ingress) becomes
`GenerationParams` here, with the loaded model's defaults, limits and capabilities applied and
uploaded audio decoded. Every refusal is a `RequestError` naming the field; the HTTP layer maps it
to one 422 shape, the CLI to one message.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from . import audio as audio_io
from . import loudness as loudness_io
from .adapters.files import MAX_FILTER_EXPANSION, LayerFilterError, check_layer_filter
from .limits import (
    DEFAULT_OVERLAP_S,
    MAX_LONGFORM_WINDOWS,
    MAX_LORA_FILTER_CHARS,
    MAX_LORA_LAYER_FILTERS,
    MAX_LORA_STRENGTH,
    MAX_LORAS_PER_REQUEST,
    MAX_LOUDNESS_LUFS,
    MAX_OUTPUTS,
    MAX_SEED,
    MIN_LOUDNESS_LUFS,
)
from .models.base import AudioModel, Bound, GenerationParams, LoraRef

if TYPE_CHECKING:
    import numpy as np

    from .config import Settings

# Strength of audio-to-audio when the request names none (noise level mixed into the source's latents).
DEFAULT_INIT_NOISE_LEVEL = 0.6


class _Region(Protocol):
    @property
    def start_s(self) -> float: ...
    @property
    def end_s(self) -> float: ...


class _Lora(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def strength(self) -> float: ...
    @property
    def conditioner_strength(self) -> float | None: ...
    @property
    def interval(self) -> Sequence[float] | None: ...
    @property
    def layer_filter(self) -> Sequence[str] | None: ...


class RequestLike(Protocol):
    """The fields the request path reads. The HTTP contract's model (api/schemas.py) has them, and so may any
    other ingress's request: this layer sits below every ingress and imports none of them."""

    @property
    def prompt(self) -> str: ...
    @property
    def negative_prompt(self) -> str | None: ...
    @property
    def duration(self) -> float | None: ...
    @property
    def guidance_scale(self) -> float | None: ...
    @property
    def num_inference_steps(self) -> int | None: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def apg_scale(self) -> float | None: ...
    @property
    def init_audio_b64(self) -> str | None: ...
    @property
    def init_noise_level(self) -> float | None: ...
    @property
    def inpaint_audio_b64(self) -> str | None: ...
    @property
    def inpaint_regions(self) -> Sequence[_Region] | None: ...
    @property
    def loras(self) -> Sequence[_Lora] | None: ...
    @property
    def format(self) -> str: ...
    @property
    def client_job_id(self) -> str | None: ...
    @property
    def loudness(self) -> str | float | None: ...
    @property
    def num_outputs(self) -> int | None: ...
    @property
    def window_s(self) -> float | None: ...
    @property
    def overlap_s(self) -> float | None: ...


class RequestError(ValueError):
    """A client's request cannot be served as given; `loc` names the field (a path into the body)."""

    def __init__(self, field: str | Sequence[str | int], message: str, where: str = "body") -> None:
        super().__init__(message)
        self.loc: tuple[str | int, ...] = (field,) if isinstance(field, str) else tuple(field)
        self.message = message
        self.where = where  # "body" or "query"

    def detail(self) -> list[dict[str, Any]]:
        """FastAPI's validation-error shape, so clients parse one format for every 422."""
        return [{"loc": [self.where, *self.loc], "msg": self.message, "type": "value_error"}]


@dataclass(frozen=True)
class Resolved:
    """A request ready for the engine: the parameters and what the response needs besides them."""

    params: GenerationParams
    format: str
    client_job_id: str | None


def _bound_message(bound: Bound, model: AudioModel, kind: type = float) -> str:
    return f"must be between {kind(bound.minimum):g} and {kind(bound.maximum):g} for model {model.name}"


def _within(field: str, value: float, bound: Bound, model: AudioModel, kind: type = float) -> None:
    if not bound.minimum <= value <= bound.maximum:
        raise RequestError(field, _bound_message(bound, model, kind))


# pydantic's error types for a numeric bound (the schema's static outer limits)
_BOUND_TYPES = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def model_bound_errors(details: list[dict[str, Any]], model: AudioModel | None) -> list[dict[str, Any]]:
    """A body field past the schema's static outer limit (e.g. duration 500 > 400) is refused before the loaded
    model's own check runs: its message is reworded to name the model's limit, as that check would (the static
    limit stays as a hard cap; `loc` is unchanged)."""
    if model is None:
        return details
    limits, caps = model.limits, model.capabilities
    bounds: dict[str, tuple[Bound | None, type]] = {
        "duration": (limits.duration, float),
        "guidance_scale": (limits.guidance_scale, float),
        "num_inference_steps": (limits.num_inference_steps, int),
        "apg_scale": (caps.apg_scale, float),
        "init_noise_level": (caps.init_noise_level, float),
    }
    out = []
    for d in details:
        loc = d.get("loc") or []
        bound, kind = bounds.get(loc[-1], (None, float)) if len(loc) == 2 and loc[0] == "body" else (None, float)
        if bound is not None and d.get("type") in _BOUND_TYPES:
            d = {"loc": list(loc), "msg": _bound_message(bound, model, kind), "type": "value_error"}
        out.append(d)
    return out


def client_job_id(body_value: str | None, query_value: str | None) -> str | None:
    """`client_job_id` may come in the query (the design note) or in the body; if both, they must agree."""
    if query_value is not None and body_value is not None and query_value != body_value:
        raise RequestError("client_job_id", "differs from body.client_job_id", where="query")
    return query_value if query_value is not None else body_value


def check_request(req: RequestLike, model: AudioModel, settings: Settings, longform: bool = False) -> dict[str, Any]:
    """Cheap checks and defaults (no decoding): the scalar fields of `GenerationParams`. `longform`: the ingress
    takes long-form audio (POST /jobs, the CLI); elsewhere a duration above the model's longest clip is refused
    with a pointer to it."""
    for name in ("prompt", "negative_prompt"):
        text = getattr(req, name)
        if text is not None and len(text) > settings.max_prompt_chars:
            raise RequestError(name, f"at most {settings.max_prompt_chars} characters (this one has {len(text)})")
    limits, caps = model.limits, model.capabilities
    duration = float(limits.duration.default if req.duration is None else req.duration)
    guidance = float(limits.guidance_scale.default if req.guidance_scale is None else req.guidance_scale)
    steps = int(limits.num_inference_steps.default if req.num_inference_steps is None else req.num_inference_steps)
    chain = check_longform(req, model, settings, duration, longform)
    if chain is None:
        _within("duration", duration, limits.duration, model)
    _within("guidance_scale", guidance, limits.guidance_scale, model)
    _within("num_inference_steps", steps, limits.num_inference_steps, model, int)

    apg = req.apg_scale
    if apg is not None:
        if caps.apg_scale is None:
            raise RequestError("apg_scale", f"not supported by {model.family} models (plain guidance only)")
        _within("apg_scale", apg, caps.apg_scale, model)
    elif caps.apg_scale is not None:
        apg = float(caps.apg_scale.default)

    if req.init_audio_b64 is not None and req.inpaint_audio_b64 is not None:
        raise RequestError("inpaint_audio_b64", "give init_audio_b64 (audio-to-audio) or inpaint_audio_b64, not both")
    if req.init_audio_b64 is not None and not caps.audio_to_audio:
        raise RequestError("init_audio_b64", f"audio-to-audio is not supported by {model.family} models")
    level = req.init_noise_level
    if level is not None:
        if req.init_audio_b64 is None:
            raise RequestError("init_noise_level", "init_noise_level needs init_audio_b64")
        if caps.init_noise_level is None:
            why = "; ".join(caps.notes) or "this model has no strength control"
            raise RequestError("init_noise_level", f"not supported by {model.family} models: {why}; leave it out")
        _within("init_noise_level", level, caps.init_noise_level, model)
    elif req.init_audio_b64 is not None and caps.init_noise_level is not None:
        level = float(caps.init_noise_level.default)
    if req.inpaint_regions is not None and req.inpaint_audio_b64 is None:
        raise RequestError("inpaint_regions", "inpaint_regions needs inpaint_audio_b64")
    if req.inpaint_audio_b64 is not None and not caps.inpainting:
        raise RequestError("inpaint_audio_b64", f"inpainting is not supported by {model.family} models")
    for i, region in enumerate(req.inpaint_regions or []):
        if region.start_s >= duration:
            raise RequestError(
                ["inpaint_regions", i, "start_s"], f"starts at or after the end of the output ({duration:g} s)"
            )

    loras = check_loras(req, model)
    loudness = check_loudness(req.loudness, chain is not None)
    outputs = check_outputs(req, chain is not None)
    return {
        "prompt": req.prompt,
        "duration": duration,
        "guidance_scale": guidance,
        "num_inference_steps": steps,
        "seed": req.seed,
        "negative_prompt": req.negative_prompt,
        "init_noise_level": level,
        "apg_scale": apg,
        "loras": loras,
        "loudness": loudness,
        "num_outputs": outputs,
        "window_s": chain[0] if chain else None,
        "overlap_s": chain[1] if chain else None,
    }


def check_loudness(value: str | float | None, longform: bool) -> loudness_io.LoudnessTarget | None:
    """`loudness`: "none" (None: the audio as the model made it), "peak" or a LUFS target. Long-form audio is
    encoded window by window as it is made, and an integrated loudness needs the whole clip first: refused there."""
    try:
        target = loudness_io.parse(value)
    except ValueError as exc:
        raise RequestError("loudness", str(exc)) from None
    if target is not None and longform:
        raise RequestError(
            "loudness", "not with long-form audio: it is encoded window by window, and a level needs the whole clip"
        )
    return target


def check_outputs(req: RequestLike, longform: bool) -> int:
    """`num_outputs`: takes from seeds seed, seed + 1, ..., each a seed a solo request may name."""
    n = 1 if req.num_outputs is None else int(req.num_outputs)
    if not 1 <= n <= MAX_OUTPUTS:
        raise RequestError("num_outputs", f"must be between 1 and {MAX_OUTPUTS}")
    if n > 1 and longform:
        raise RequestError("num_outputs", "long-form audio is made one take at a time; leave num_outputs at 1")
    if req.seed is not None and req.seed + n - 1 > MAX_SEED:
        raise RequestError(
            "seed", f"the takes use seeds seed to seed + {n - 1}, which must be at most {MAX_SEED}; lower the seed"
        )
    return n


def check_longform(
    req: RequestLike, model: AudioModel, settings: Settings, duration: float, allowed: bool
) -> tuple[float, float] | None:
    """(window_s, overlap_s) when the request is long-form, else None (`window_s`/`overlap_s` are then refused).

    Long-form: a duration above the window (`window_s`, default the model's longest clip), made as a chain of
    continuations (engine/longform.py). It needs the model's declared continuation (inpainting), is at most the
    server's STABLE_AUDIO_MAX_LONGFORM_S and `MAX_LONGFORM_WINDOWS` windows, and only one take without uploads."""
    limits, caps = model.limits, model.capabilities
    longest = float(limits.duration.maximum)
    window = longest if req.window_s is None else float(req.window_s)
    if duration <= window:
        for name in ("window_s", "overlap_s"):
            if getattr(req, name) is not None:
                raise RequestError(name, f"only for long-form audio (a duration above window_s, {window:g} s)")
        return None
    bounds = f"must be between {limits.duration.minimum:g} and {longest:g} for model {model.name}"
    if not caps.inpainting:
        raise RequestError(
            "duration",
            f"{bounds}: longer (long-form) audio is made by continuation, which {model.family} models cannot do "
            "(no inpainting)",
        )
    if not allowed and duration <= longest:
        raise RequestError("window_s", "long-form audio (a duration above window_s) is made by POST /jobs")
    if not allowed:
        raise RequestError(
            "duration", f"{bounds} here; long-form audio (up to {settings.max_longform_s:g} s) is made by POST /jobs"
        )
    if duration > settings.max_longform_s:
        raise RequestError(
            "duration",
            f"long-form audio is at most {settings.max_longform_s:g} s on this server (STABLE_AUDIO_MAX_LONGFORM_S)",
        )
    _within("window_s", window, limits.duration, model)
    overlap = min(DEFAULT_OVERLAP_S, window / 4) if req.overlap_s is None else float(req.overlap_s)
    if not 0 < overlap <= window / 2:
        raise RequestError("overlap_s", f"must be above 0 and at most half the window ({window / 2:g} s)")
    count = 1 + math.ceil((duration - window) / (window - overlap) - 1e-9)
    if count > MAX_LONGFORM_WINDOWS:
        raise RequestError(
            "window_s", f"{count} windows of {window:g} s; at most {MAX_LONGFORM_WINDOWS}: ask for longer windows"
        )
    for name in ("init_audio_b64", "inpaint_audio_b64"):
        if getattr(req, name) is not None:
            raise RequestError(name, "not with long-form audio (a duration above the window)")
    return window, overlap


def check_loras(req: RequestLike, model: AudioModel) -> tuple[LoraRef, ...]:
    """Each named adapter must be in the model's adapter directory and fit the model, so a bad name is a 422
    here rather than a failure mid-batch (fit was checked when the directory was scanned, so this is a look-up);
    strength bounds are the schema's. Each adapter's controls are checked here too: an interval's min may not
    exceed its max (it would never act), and a layer filter is normalised as Stability reads it."""
    loras = tuple(_lora_ref(i, x) for i, x in enumerate(req.loras or []))
    if not loras:
        return ()
    if not model.capabilities.loras:
        why = model.capabilities.loras_unavailable
        raise RequestError("loras", f"adapters are not supported by {model.family} models{': ' if why else ''}{why}")
    # None on the Ray ingress's weightless model view: the replica holding the adapters checks them.
    adapters = model.adapters
    if adapters is None:
        return loras
    for i, ref in enumerate(loras):
        problem = adapters.problem(ref.name)
        if problem is not None:
            raise RequestError(["loras", i, "name"], problem)
    return loras


def _lora_ref(i: int, x: _Lora) -> LoraRef:
    """One request item as the model takes it, its controls checked (`loc` names the field)."""
    interval = (0.0, 1.0)
    if x.interval is not None:
        if len(x.interval) != 2:
            raise RequestError(["loras", i, "interval"], "must be [min, max]")
        low, high = float(x.interval[0]), float(x.interval[1])
        if not 0.0 <= low <= high <= 1.0:
            raise RequestError(["loras", i, "interval"], f"[{low:g}, {high:g}] is not 0 <= min <= max <= 1")
        interval = (low, high)
    try:
        layer_filter = check_layer_filter(x.layer_filter or ())
    except LayerFilterError as exc:
        raise RequestError(["loras", i, "layer_filter", exc.index], str(exc)) from None
    conditioner = None if x.conditioner_strength is None else float(x.conditioner_strength)
    return LoraRef(x.name, float(x.strength), conditioner, interval, layer_filter)


def has_uploads(req: RequestLike) -> bool:
    """Uploads take a while to decode: callers on an event loop run `resolve` in a thread then."""
    return req.init_audio_b64 is not None or req.inpaint_audio_b64 is not None


def decode_upload(field: str, value: str, model: AudioModel, duration: float, settings: Settings) -> np.ndarray:
    """Base64 -> float32 (channels, samples) at the model's rate, decoding only what the clip can use."""
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(field, "not valid base64") from None
    usable = model.upload_samples(duration)
    try:
        audio, _info = audio_io.decode_upload(
            data,
            model.sample_rate,
            model.channels,
            max_bytes=settings.max_upload_bytes,
            max_seconds=settings.max_upload_seconds,
            max_samples=settings.max_upload_samples,
            usable_samples=usable,
        )
    except audio_io.UploadError as exc:
        raise RequestError(field, str(exc)) from None
    return audio


def resolve(
    req: RequestLike,
    model: AudioModel,
    settings: Settings,
    query_client_job_id: str | None = None,
    longform: bool = False,
) -> Resolved:
    """The whole request path: defaults, limits, capabilities, uploads. Raises `RequestError`. `longform`: the
    ingress takes long-form audio (see `check_longform`)."""
    job_id = client_job_id(req.client_job_id, query_client_job_id)
    fields = check_request(req, model, settings, longform)
    if req.init_audio_b64 is not None:
        fields["init_audio"] = decode_upload("init_audio_b64", req.init_audio_b64, model, fields["duration"], settings)
    elif req.inpaint_audio_b64 is not None:
        source = decode_upload("inpaint_audio_b64", req.inpaint_audio_b64, model, fields["duration"], settings)
        regions = [(r.start_s, min(r.end_s, fields["duration"])) for r in req.inpaint_regions or []]
        if not regions and source.shape[-1] >= int(fields["duration"] * model.sample_rate):
            raise RequestError(
                "inpaint_regions",
                "nothing to generate: give regions to regenerate, or a duration longer than the source (continuation)",
            )
        fields["inpaint_audio"] = source
        fields["inpaint_regions"] = regions
    return Resolved(params=GenerationParams(**fields), format=req.format, client_job_id=job_id)


def request_fields(model: AudioModel, settings: Settings) -> dict[str, Any]:
    """Defaults and bounds of every request field for this model: `GET /models` and the OpenAPI schema."""
    limits, caps = model.limits, model.capabilities
    return {
        "duration": limits.duration.as_dict(float),
        "guidance_scale": limits.guidance_scale.as_dict(float),
        "num_inference_steps": limits.num_inference_steps.as_dict(int),
        "apg_scale": caps.apg_scale.as_dict(float) if caps.apg_scale else None,
        "init_noise_level": caps.init_noise_level.as_dict(float) if caps.init_noise_level else None,
        "loras": _lora_fields() if caps.loras else None,
        "seed": {"default": None, "minimum": 0, "maximum": MAX_SEED},
        "num_outputs": {"default": 1, "minimum": 1, "maximum": MAX_OUTPUTS},
        "longform": _longform_fields(model, settings) if caps.inpainting else None,
        "format": {"default": "wav", "choices": list(audio_io.FORMATS)},
        "loudness": loudness_fields(),
        "prompt": {"max_length": settings.max_prompt_chars},
    }


def _longform_fields(model: AudioModel, settings: Settings) -> dict[str, Any]:
    """Long-form audio's bounds (POST /jobs only): the total duration, and the window and overlap it chains."""
    longest = float(model.limits.duration.maximum)
    return {
        "max_duration": settings.max_longform_s,
        "window_s": {"default": longest, "minimum": float(model.limits.duration.minimum), "maximum": longest},
        "overlap_s": {"default": f"min({DEFAULT_OVERLAP_S:g}, window_s / 4)", "maximum": "window_s / 2"},
        "max_windows": MAX_LONGFORM_WINDOWS,
    }


def loudness_fields() -> dict[str, Any]:
    """`loudness`'s choices and bounds (`GET /models`): the same for every model (it acts on the finished clip)."""
    return {
        "default": "none",
        "choices": list(loudness_io.MODES),
        "minimum": MIN_LOUDNESS_LUFS,
        "maximum": MAX_LOUDNESS_LUFS,
        "unit": "LUFS",
        "peak_dbfs": loudness_io.PEAK_TARGET_DBFS,
        "true_peak_ceiling_dbtp": loudness_io.TRUE_PEAK_CEILING_DBTP,
        "long_form": False,
    }


def _lora_fields() -> dict[str, Any]:
    return {"max_items": MAX_LORAS_PER_REQUEST, **lora_controls(), "names": "GET /loras"}


def lora_controls() -> dict[str, Any]:
    """Defaults and bounds of each `loras` item's controls (`GET /models`, `GET /loras`)."""
    bound = Bound(1.0, -MAX_LORA_STRENGTH, MAX_LORA_STRENGTH).as_dict(float)
    return {
        "strength": bound,
        "conditioner_strength": {**bound, "default": "strength"},
        "interval": {"default": [0.0, 1.0], "minimum": 0.0, "maximum": 1.0},
        "layer_filter": {
            "default": [],
            "max_items": MAX_LORA_LAYER_FILTERS,
            "max_length": MAX_LORA_FILTER_CHARS,
            "max_expanded": MAX_FILTER_EXPANSION,
        },
    }


def capabilities(model: AudioModel, settings: Settings) -> dict[str, Any]:
    """What the loaded model can do, for clients and the playground (`GET /models` `capabilities`)."""
    caps = model.capabilities
    return {
        "audio_to_audio": caps.audio_to_audio,
        "init_noise_level": caps.init_noise_level.as_dict(float) if caps.init_noise_level else None,
        "inpainting": caps.inpainting,
        "continuation": caps.inpainting,
        "apg_scale": caps.apg_scale.as_dict(float) if caps.apg_scale else None,
        "loras": caps.loras,
        "loras_unavailable": caps.loras_unavailable or None,  # why not, when a setting would change it
        "negative_prompt": True,
        "max_duration": model.limits.duration.maximum,
        "longform": caps.inpainting,  # POST /jobs durations above max_duration, up to max_longform_s
        "max_longform_s": settings.max_longform_s if caps.inpainting else None,
        "num_outputs": MAX_OUTPUTS,
        "notes": list(caps.notes),
        "uploads": {
            "max_bytes": settings.max_upload_bytes,
            "max_seconds": settings.max_upload_seconds,
            "max_body_bytes": settings.max_body_bytes,
            "formats": list(audio_io.FORMATS),
        },
    }
