"""Routes. Each one validates, talks to the engine, and shapes the answer."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .. import SERVICE, __version__, telemetry
from ..engine import TERMINAL, Job, JobStatus, NotAccepting, QueueFull
from ..models.base import GenerationParams
from .schemas import (
    CLIENT_JOB_ID_PATTERN,
    HealthResponse,
    JobAccepted,
    JobView,
    ResponseMetadata,
    StableAudioRequest,
    StableAudioResponse,
    Timings,
)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong bearer token (only when STABLE_AUDIO_API_KEY is set)"},
    413: {"description": "request body too large"},
    422: {"description": "invalid input; `detail` names the field"},
    503: {"description": "model not loaded, shutting down, or out of memory; see Retry-After"},
}
router = APIRouter(responses=ERROR_RESPONSES)
RETRY_AFTER_S = "5"
DISCONNECT_POLL_S = 0.5


def service(request: Request):
    return request.app.state.service


def ready_engine(request: Request):
    state = service(request)
    if state.status != "ok" or state.engine is None:
        raise HTTPException(503, detail=state.reason or "not ready", headers={"Retry-After": RETRY_AFTER_S})
    if not state.engine.accepting:
        raise HTTPException(503, detail="the service is shutting down", headers={"Retry-After": RETRY_AFTER_S})
    return state.engine


ClientJobId = Annotated[
    str | None, Query(pattern=CLIENT_JOB_ID_PATTERN, description="Echoed in meta; also accepted in the body.")
]


def _client_job_id(body: StableAudioRequest, query_value: str | None) -> str | None:
    if query_value is not None and body.client_job_id is not None and query_value != body.client_job_id:
        raise HTTPException(
            422,
            detail=[
                {"loc": ["query", "client_job_id"], "msg": "differs from body.client_job_id", "type": "value_error"}
            ],
        )
    return query_value if query_value is not None else body.client_job_id


def _invalid(field: str | list, msg: str) -> HTTPException:
    loc = ["body", *field] if isinstance(field, list) else ["body", field]
    return HTTPException(422, detail=[{"loc": loc, "msg": msg, "type": "value_error"}])


def _check_prompt_length(request: Request, body: StableAudioRequest) -> None:
    """STABLE_AUDIO_MAX_PROMPT_CHARS may be tighter than the schema's hard cap."""
    cap = service(request).settings.max_prompt_chars
    for name in ("prompt", "negative_prompt"):
        text = getattr(body, name)
        if text is not None and len(text) > cap:
            raise _invalid(name, f"at most {cap} characters (this one has {len(text)})")


def _check_model_limits(engine, body: StableAudioRequest) -> None:
    """The schema holds loose outer bounds; the loaded model's limits (GET /models) decide. A field the
    client left out takes the model's default."""
    limits = engine.model.limits
    for name in ("duration", "guidance_scale", "num_inference_steps"):
        bound = getattr(limits, name)
        if getattr(body, name) is None:
            default = int(bound.default) if name == "num_inference_steps" else float(bound.default)
            setattr(body, name, default)
        value = getattr(body, name)
        if not bound.minimum <= value <= bound.maximum:
            limit = f"must be between {bound.minimum:g} and {bound.maximum:g} for model {engine.model.name}"
            raise _invalid(name, limit)
    _check_audio_fields(engine, body)


def _check_audio_fields(engine, body: StableAudioRequest) -> None:
    family = engine.model.family
    if body.init_audio_b64 is not None and body.inpaint_audio_b64 is not None:
        raise _invalid("inpaint_audio_b64", "give init_audio_b64 (audio-to-audio) or inpaint_audio_b64, not both")
    if body.init_noise_level is not None:
        if body.init_audio_b64 is None:
            raise _invalid("init_noise_level", "init_noise_level needs init_audio_b64")
        if family != "sa3":
            raise _invalid(
                "init_noise_level",
                f"not supported by {family} models: their audio-to-audio adds the audio's latents to full-strength "
                "noise (diffusers' initial_audio_waveforms); leave it out",
            )
    if body.inpaint_regions is not None and body.inpaint_audio_b64 is None:
        raise _invalid("inpaint_regions", "inpaint_regions needs inpaint_audio_b64")
    if body.inpaint_audio_b64 is not None:
        if family != "sa3":
            raise _invalid("inpaint_audio_b64", f"inpainting needs a Stable Audio 3 model; this one is {family}")
        for i, region in enumerate(body.inpaint_regions or []):
            if region.start_s >= body.duration:
                raise _invalid(
                    ["inpaint_regions", i, "start_s"], f"starts at or after the end of the output ({body.duration:g} s)"
                )


def _upload(settings, field: str, value: str, model, duration: float) -> tuple:
    import binascii

    from .. import audio as audio_io

    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(field, "not valid base64") from None
    try:
        audio, info = audio_io.decode_upload(
            data,
            model.sample_rate,
            model.channels,
            max_bytes=settings.max_upload_bytes,
            max_seconds=settings.max_upload_seconds,
        )
    except audio_io.UploadError as exc:
        raise _invalid(field, str(exc)) from None
    usable = _usable_samples(model, duration)
    if usable is not None and audio.shape[-1] > usable:
        audio = audio[:, :usable].copy()
    return audio, info


def _usable_samples(model, duration: float) -> int | None:
    """Samples of an upload the model can use for this clip; the rest is not kept in the queue.
    sa3: the clip's latents plus the SAME band's halo; open-1.0: its latent window (as diffusers)."""
    if hasattr(model, "latent_length") and hasattr(model, "halo"):
        return (model.latent_length(duration) + model.halo) * model.hop
    if hasattr(model, "window_for"):
        return model.window_for(duration) * model.hop
    return None


def _prepare_audio(engine, body: StableAudioRequest, settings) -> dict:
    """Decode and convert uploaded audio (after the limits check); returns GenerationParams fields."""
    from .schemas import DEFAULT_INIT_NOISE_LEVEL

    _check_model_limits(engine, body)
    model = engine.model
    if body.init_audio_b64 is not None:
        audio, _info = _upload(settings, "init_audio_b64", body.init_audio_b64, model, body.duration)
        level = body.init_noise_level
        if model.family == "sa3" and level is None:
            level = DEFAULT_INIT_NOISE_LEVEL
        return {"init_audio": audio, "init_noise_level": level}
    if body.inpaint_audio_b64 is not None:
        audio, _info = _upload(settings, "inpaint_audio_b64", body.inpaint_audio_b64, model, body.duration)
        regions = [(r.start_s, min(r.end_s, body.duration)) for r in body.inpaint_regions or []]
        if not regions and audio.shape[-1] >= int(body.duration * model.sample_rate):
            raise _invalid(
                "inpaint_regions",
                "nothing to generate: give regions to regenerate, or a duration longer than the source (continuation)",
            )
        return {"inpaint_audio": audio, "inpaint_regions": regions}
    return {}


def _has_audio(body: StableAudioRequest) -> bool:
    return body.init_audio_b64 is not None or body.inpaint_audio_b64 is not None


def _submit(engine, body: StableAudioRequest, client_job_id: str | None, audio: dict | None = None) -> Job:
    _check_model_limits(engine, body)
    if audio is None and _has_audio(body):
        raise _invalid("init_audio_b64", "internal: uploaded audio was not prepared")
    params = GenerationParams(
        prompt=body.prompt,
        duration=body.duration,
        guidance_scale=body.guidance_scale,
        num_inference_steps=body.num_inference_steps,
        seed=body.seed,
        negative_prompt=body.negative_prompt,
        **(audio or {}),
    )
    from opentelemetry import context as otel_context

    trace_id, span_id = telemetry.span_ids()
    try:
        return engine.submit(
            params,
            format=body.format,
            client_job_id=client_job_id,
            context={"trace_id": trace_id, "span_id": span_id, "otel": otel_context.get_current()},
        )
    except QueueFull as exc:
        telemetry.record_rejected("queue_full")
        raise HTTPException(429, detail=str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
    except NotAccepting as exc:
        telemetry.record_rejected("not_accepting")
        raise HTTPException(503, detail=str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None


def _meta(job: Job) -> ResponseMetadata:
    ctx = job.context or {}
    return ResponseMetadata(client_job_id=job.client_job_id, trace_id=ctx.get("trace_id"), span_id=ctx.get("span_id"))


def _result(job: Job) -> StableAudioResponse:
    res = job.result
    assert res is not None
    return StableAudioResponse(
        audio_b64=base64.b64encode(res.data).decode("ascii"),
        sample_rate=res.sample_rate,
        duration=round(res.duration, 6),
        meta=_meta(job),
        channels=res.channels,
        num_samples=res.num_samples,
        seed=job.params.seed,
        format=res.format,
        timings=Timings(**job.timings),
    )


def _raise_for(job: Job) -> None:
    if job.status == JobStatus.cancelled:
        raise HTTPException(409, detail="the job was cancelled")
    if job.status == JobStatus.failed:
        headers = {"Retry-After": RETRY_AFTER_S} if job.error_status == 503 else None
        raise HTTPException(job.error_status or 500, detail=job.error or "generation failed", headers=headers)


@router.get("/health", response_model=HealthResponse, tags=["service"])
def health(request: Request) -> Any:
    state = service(request)
    model = state.model.name if state.model is not None else None
    if state.status == "ok":
        return {"status": "ok", "service": SERVICE, "version": __version__, "model": model}
    body = {"status": state.status, "service": SERVICE, "version": __version__, "model": model, "detail": state.reason}
    return JSONResponse(body, status_code=503, headers={"Retry-After": RETRY_AFTER_S})


@router.get("/ready", tags=["service"])
def ready(request: Request) -> Any:
    state = service(request)
    if state.status == "ok" and state.engine is not None and state.engine.accepting:
        return {"ready": True, "queue_depth": state.engine.queue_depth(), "running": state.engine.running_count()}
    reason = state.reason if state.status != "ok" else "the engine is not accepting work (shutting down)"
    return JSONResponse({"ready": False, "detail": reason}, status_code=503, headers={"Retry-After": RETRY_AFTER_S})


@router.get("/models", tags=["service"])
def models(request: Request) -> Any:
    engine = ready_engine(request)
    m = engine.model

    def bound(b, kind):
        return {"default": kind(b.default), "minimum": kind(b.minimum), "maximum": kind(b.maximum)}

    return {
        "name": m.name,
        "family": m.family,
        "device": m.device,
        "dtype": m.dtype,
        "sample_rate": m.sample_rate,
        "channels": m.channels,
        "max_duration": m.limits.duration.maximum,
        "window": getattr(m, "window_mode", None),
        "fields": {
            "duration": bound(m.limits.duration, float),
            "guidance_scale": bound(m.limits.guidance_scale, float),
            "num_inference_steps": bound(m.limits.num_inference_steps, int),
            "seed": {"default": None, "minimum": 0, "maximum": 2**32 - 1},
            "format": {"default": "wav", "choices": ["wav", "flac", "ogg", "mp3"]},
            "prompt": {"max_length": service(request).settings.max_prompt_chars},
        },
        "batching": {"max_batch_size": engine.max_batch_size, "queue_size": engine.queue_size},
        **_model_extras(m, service(request).settings),
    }


def _model_extras(m, settings) -> dict:
    """What GET /models adds for audio inputs and the model registry."""
    from ..models import registry
    from .schemas import DEFAULT_INIT_NOISE_LEVEL

    known = registry.lookup(m.name)
    sa3 = m.family == "sa3"
    return {
        "hub_id": known.hub_id if known else None,
        "registry": [
            {
                "name": k.name,
                "hub_id": k.hub_id,
                "family": k.family,
                "max_duration": k.max_duration,
                "default_steps": k.default_steps,
                "default_guidance": k.default_guidance,
                "parameters": k.parameters,
                "memory_gib": k.memory_gib,
                "device": k.device,
            }
            for k in registry.KNOWN_MODELS
        ],
        "audio_inputs": {
            "audio_to_audio": True,
            "init_noise_level": (
                {"default": DEFAULT_INIT_NOISE_LEVEL, "minimum_exclusive": 0.0, "maximum": 1.0} if sa3 else None
            ),
            "inpainting": sa3,
            "uploads": {
                "max_bytes": settings.max_upload_bytes,
                "max_seconds": settings.max_upload_seconds,
                "formats": ["wav", "flac", "ogg", "mp3"],
            },
        },
    }


@router.post(
    "/predict",
    response_model=StableAudioResponse,
    tags=["generate"],
    responses={
        409: {"description": "the job was cancelled (DELETE /jobs/{id})"},
        429: {"description": "queue full; see Retry-After"},
        500: {"description": "generation failed (the reason is in detail)"},
    },
)
async def predict(body: StableAudioRequest, request: Request, client_job_id: ClientJobId = None) -> Any:
    """Generate and wait. A client that disconnects cancels its work."""
    engine = ready_engine(request)
    _check_prompt_length(request, body)
    audio = None
    if _has_audio(body):  # decoding and resampling can take a while: off the event loop
        from starlette.concurrency import run_in_threadpool

        audio = await run_in_threadpool(_prepare_audio, engine, body, service(request).settings)
    job = _submit(engine, body, _client_job_id(body, client_job_id), audio)
    queue = engine.subscribe(job)
    loop = asyncio.get_running_loop()
    next_check = loop.time() + DISCONNECT_POLL_S
    try:
        while job.status not in TERMINAL:
            try:
                await asyncio.wait_for(queue.get(), timeout=DISCONNECT_POLL_S)
            except TimeoutError:
                pass
            if loop.time() >= next_check:  # step events may arrive faster than the poll interval
                next_check = loop.time() + DISCONNECT_POLL_S
                if await request.is_disconnected():
                    engine.cancel(job.id)
                    raise HTTPException(499, detail="client disconnected")
    finally:
        engine.unsubscribe(job, queue)
    _raise_for(job)
    return _result(job)


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    tags=["jobs"],
    responses={429: {"description": "queue full; see Retry-After"}},
)
def create_job(body: StableAudioRequest, request: Request, client_job_id: ClientJobId = None) -> Any:
    engine = ready_engine(request)
    _check_prompt_length(request, body)
    audio = _prepare_audio(engine, body, service(request).settings) if _has_audio(body) else None
    job = _submit(engine, body, _client_job_id(body, client_job_id), audio)
    return JobAccepted(id=job.id, status=job.status.value, position=engine.position(job), meta=_meta(job))


def _job_or_404(request: Request, job_id: str) -> Job:
    engine = ready_engine(request)
    job = engine.get(job_id)
    if job is None:
        raise HTTPException(404, detail=f"no job {job_id!r} (unknown, or expired after the retention time)")
    return job


def _job_view(request: Request, job: Job) -> JobView:
    engine = ready_engine(request)
    s = job.summary()
    return JobView(
        **{k: s[k] for k in ("id", "status", "step", "total_steps", "created", "started", "finished", "error")},
        position=engine.position(job),
        timings=Timings(**s["timings"]),
        result=_result(job) if job.status == JobStatus.done else None,
    )


@router.get("/jobs/{job_id}", response_model=JobView, tags=["jobs"], responses={404: {"description": "no such job"}})
def get_job(job_id: str, request: Request) -> Any:
    return _job_view(request, _job_or_404(request, job_id))


@router.delete(
    "/jobs/{job_id}",
    response_model=JobView,
    tags=["jobs"],
    responses={404: {"description": "no such job"}, 409: {"description": "already finished"}},
)
def cancel_job(job_id: str, request: Request) -> Any:
    job = _job_or_404(request, job_id)
    if job.status in (JobStatus.done, JobStatus.failed):
        raise HTTPException(409, detail=f"job already {job.status.value}")
    service(request).engine.cancel(job_id)
    return _job_view(request, job)


@router.get(
    "/jobs/{job_id}/events",
    tags=["jobs"],
    response_class=StreamingResponse,
    responses={404: {"description": "no such job"}},
)
async def job_events(job_id: str, request: Request) -> StreamingResponse:
    """Server-Sent Events: `queued` (position), `step` (step/total), then `done`, `failed` or `cancelled`."""
    job = _job_or_404(request, job_id)
    engine = service(request).engine

    async def stream():
        queue = engine.subscribe(job)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=15)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
                if event["type"] in ("done", "failed", "cancelled"):
                    return
        finally:
            engine.unsubscribe(job, queue)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
