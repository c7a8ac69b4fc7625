"""Routes: thin. Each one turns HTTP into a call on the service layer or the engine and shapes the
answer; what a request means (defaults, limits, capabilities, uploads) lives in `service.py`."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .. import SERVICE, __version__, service, telemetry
from ..audio import MEDIA_TYPES
from ..engine import TERMINAL, Engine, Job, JobStatus, NotAccepting, QueueFull
from ..models import registry
from .schemas import (
    CLIENT_JOB_ID_PATTERN,
    HealthResponse,
    JobAccepted,
    JobResultInfo,
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
AUDIO_MEDIA = {media: fmt for fmt, media in MEDIA_TYPES.items()} | {"audio/x-wav": "wav", "audio/mp3": "mp3"}
# A result above this many bytes is base64-encoded and serialised in a worker thread, not on the event loop.
BIG_PAYLOAD_BYTES = 256 * 1024


# -- dependencies ---------------------------------------------------------------------------------
def get_state(request: Request):
    return request.app.state.service


def get_engine(request: Request) -> Engine:
    """The engine, only while it takes new work (503 while loading, after a failed load, or draining)."""
    state = get_state(request)
    if state.status != "ok" or state.engine is None:
        raise HTTPException(503, detail=state.reason or "not ready", headers={"Retry-After": RETRY_AFTER_S})
    if not state.engine.accepting:
        raise HTTPException(503, detail="the service is shutting down", headers={"Retry-After": RETRY_AFTER_S})
    return state.engine


def get_reading_engine(request: Request) -> Engine:
    """The engine for reads of existing jobs: also while draining, so results finishing in the grace
    period can still be fetched."""
    state = get_state(request)
    if state.engine is None:
        raise HTTPException(503, detail=state.reason or "not ready", headers={"Retry-After": RETRY_AFTER_S})
    return state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]
ReadingEngineDep = Annotated[Engine, Depends(get_reading_engine)]
ClientJobId = Annotated[
    str | None, Query(pattern=CLIENT_JOB_ID_PATTERN, description="Echoed in meta; also accepted in the body.")
]


# -- helpers ------------------------------------------------------------------------------------
def _resolve(request: Request, engine: Engine, body: StableAudioRequest, query_id: str | None) -> service.Resolved:
    return service.resolve(body, engine.model, get_state(request).settings, query_id)


async def _resolve_async(
    request: Request, engine: Engine, body: StableAudioRequest, query_id: str | None
) -> service.Resolved:
    if service.has_uploads(body):  # decoding and resampling take a while: off the event loop
        return await run_in_threadpool(_resolve, request, engine, body, query_id)
    return _resolve(request, engine, body, query_id)


def _submit(engine: Engine, resolved: service.Resolved, keep: bool = True) -> Job:
    from opentelemetry import context as otel_context

    trace_id, span_id = telemetry.span_ids()
    try:
        return engine.submit(
            resolved.params,
            format=resolved.format,
            client_job_id=resolved.client_job_id,
            context={"trace_id": trace_id, "span_id": span_id, "otel": otel_context.get_current()},
            keep=keep,
        )
    except QueueFull as exc:
        telemetry.record_rejected("queue_full")
        raise HTTPException(429, detail=str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
    except NotAccepting as exc:
        telemetry.record_rejected("not_accepting")
        raise HTTPException(503, detail=str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None


def _meta(job: Job) -> ResponseMetadata:
    ctx = job.context or {}
    loras = [{"name": r.name, "strength": r.strength} for r in job.params.loras] or None  # LoRA (issue 16)
    return ResponseMetadata(
        client_job_id=job.client_job_id, trace_id=ctx.get("trace_id"), span_id=ctx.get("span_id"), loras=loras
    )


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


def wanted_audio_format(request: Request) -> str | None:
    """The audio format an `Accept` header asks for (`audio/wav`, `audio/flac`, `audio/ogg`, `audio/mpeg`), or
    None for JSON (the default, also for `*/*`)."""
    accept = request.headers.get("accept", "")
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in AUDIO_MEDIA:
            return AUDIO_MEDIA[media]
        if media in ("application/json", "*/*"):
            return None
    return None


def audio_response(job: Job) -> Response:
    """The file itself, with the metadata in headers (`X-Seed`, `X-Sample-Rate`, ...)."""
    res = job.result
    assert res is not None
    ctx = job.context or {}
    headers = {
        "X-Seed": str(job.params.seed),
        "X-Sample-Rate": str(res.sample_rate),
        "X-Channels": str(res.channels),
        "X-Num-Samples": str(res.num_samples),
        "X-Duration": f"{res.duration:.6f}",
        "X-Format": res.format,
        "Content-Disposition": f'attachment; filename="{job.id}.{res.format}"',
    }
    for header, value in (
        ("X-Client-Job-Id", job.client_job_id),
        ("X-Trace-Id", ctx.get("trace_id")),
        ("X-Span-Id", ctx.get("span_id")),
    ):
        if value:
            headers[header] = value
    return Response(res.data, media_type=MEDIA_TYPES[res.format], headers=headers)


async def json_response(model: Any, size_hint: int) -> Response:
    """Serialise a response model; big payloads (base64 audio) in a worker thread so /health and SSE
    keep answering while a long clip is encoded."""

    def render() -> bytes:
        return model.model_dump_json().encode()

    body = await run_in_threadpool(render) if size_hint > BIG_PAYLOAD_BYTES else render()
    return Response(body, media_type="application/json")


# -- service routes -------------------------------------------------------------------------------
@router.get("/health", response_model=HealthResponse, tags=["service"])
def health(request: Request) -> Any:
    state = get_state(request)
    model = state.model.name if state.model is not None else None
    healthy = getattr(state.engine, "healthy", True) if state.engine is not None else True
    if state.status == "ok" and healthy:
        return {"status": "ok", "service": SERVICE, "version": __version__, "model": model}
    status = state.status if state.status != "ok" else "error"
    reason = state.reason if state.status != "ok" else getattr(state.engine, "fatal_reason", "the engine stopped")
    body = {"status": status, "service": SERVICE, "version": __version__, "model": model, "detail": reason}
    return JSONResponse(body, status_code=503, headers={"Retry-After": RETRY_AFTER_S})


@router.get("/ready", tags=["service"])
def ready(request: Request) -> Any:
    state = get_state(request)
    engine = state.engine
    if state.status == "ok" and engine is not None and engine.accepting:
        body = {"ready": True, "queue_depth": engine.queue_depth(), "running": engine.running_count()}
        if getattr(engine, "replicas", None) is not None:  # a Ray Serve cluster (ray_serve.py): live model replicas
            body["replicas"] = engine.replicas
        return body
    if state.status != "ok":
        reason = state.reason
    elif engine is not None and not getattr(engine, "healthy", True):
        reason = getattr(engine, "fatal_reason", "the engine stopped")
    else:
        reason = "the engine is not accepting work (shutting down)"
    return JSONResponse({"ready": False, "detail": reason}, status_code=503, headers={"Retry-After": RETRY_AFTER_S})


@router.get("/models", tags=["service"])
def models(request: Request, engine: EngineDep) -> Any:
    m = engine.model
    settings = get_state(request).settings
    known = registry.lookup(m.name)
    return {
        "name": m.name,
        "family": m.family,
        "family_title": family.title if (family := registry.family_named(m.family)) else None,
        "device": m.device,
        "dtype": m.dtype,
        "sample_rate": m.sample_rate,
        "channels": m.channels,
        "max_duration": m.limits.duration.maximum,
        **m.describe(),
        "fields": service.request_fields(m, settings),
        "capabilities": service.capabilities(m, settings),
        "batching": {"max_batch_size": engine.max_batch_size, "queue_size": engine.queue_size},
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
    }


# -- generation ---------------------------------------------------------------------------------
AUDIO_CONTENT = {media: {} for media in MEDIA_TYPES.values()}


@router.post(
    "/predict",
    response_model=StableAudioResponse,
    tags=["generate"],
    responses={
        200: {"content": AUDIO_CONTENT, "description": "JSON by default; the file itself for `Accept: audio/...`"},
        409: {"description": "the job was cancelled (DELETE /jobs/{id})"},
        429: {"description": "queue full; see Retry-After"},
        500: {"description": "generation failed (the reason is in detail)"},
    },
)
async def predict(
    body: StableAudioRequest, request: Request, engine: EngineDep, client_job_id: ClientJobId = None
) -> Any:
    """Generate and wait. A client that disconnects cancels its work. `Accept: audio/wav` (or flac, ogg,
    mpeg) returns the file itself with the metadata in `X-` headers; JSON is the default."""
    want = wanted_audio_format(request)
    if want is not None and body.format != want and "format" in body.model_fields_set:
        raise HTTPException(
            422,
            detail=[
                {"loc": ["body", "format"], "msg": f"differs from the Accept header ({want})", "type": "value_error"}
            ],
        )
    if want is not None:
        body.format = want
    resolved = await _resolve_async(request, engine, body, client_job_id)
    job = _submit(engine, resolved, keep=False)  # the engine forgets it once answered: this route holds it
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
    if want is not None:
        return audio_response(job)
    return await json_response(_result(job), len(job.result.data) if job.result else 0)


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    tags=["jobs"],
    responses={429: {"description": "queue full; see Retry-After"}},
)
async def create_job(
    body: StableAudioRequest, request: Request, engine: EngineDep, client_job_id: ClientJobId = None
) -> Any:
    resolved = await _resolve_async(request, engine, body, client_job_id)
    job = _submit(engine, resolved)
    return JobAccepted(id=job.id, status=job.status.value, position=engine.position(job), meta=_meta(job))


def _job_or_404(engine: Engine, job_id: str) -> Job:
    job = engine.get(job_id)
    if job is None:
        raise HTTPException(404, detail=f"no job {job_id!r} (unknown, or expired after the retention time)")
    return job


def _job_view(engine: Engine, job: Job) -> JobView:
    s = job.summary()
    res = job.result if job.status == JobStatus.done else None
    info = None
    if res is not None:
        info = JobResultInfo(
            audio_url=f"/jobs/{job.id}/audio",
            sample_rate=res.sample_rate,
            duration=round(res.duration, 6),
            channels=res.channels,
            num_samples=res.num_samples,
            seed=job.params.seed,
            format=res.format,
            bytes=len(res.data),
            timings=Timings(**s["timings"]),
        )
    return JobView(
        **{k: s[k] for k in ("id", "status", "step", "total_steps", "created", "started", "finished", "error")},
        position=engine.position(job),
        timings=Timings(**s["timings"]),
        meta=_meta(job),
        result=info,
    )


@router.get("/jobs/{job_id}", response_model=JobView, tags=["jobs"], responses={404: {"description": "no such job"}})
def get_job(job_id: str, engine: ReadingEngineDep) -> Any:
    """Status and timings; once done, `result.audio_url` points at the file (`GET /jobs/{id}/audio`)."""
    return _job_view(engine, _job_or_404(engine, job_id))


@router.get(
    "/jobs/{job_id}/audio",
    tags=["jobs"],
    response_class=Response,
    responses={
        200: {"content": AUDIO_CONTENT, "description": "the finished job's audio file"},
        404: {"description": "no such job"},
        409: {"description": "not finished, cancelled or failed"},
    },
)
def get_job_audio(job_id: str, engine: ReadingEngineDep) -> Response:
    job = _job_or_404(engine, job_id)
    if job.status not in TERMINAL:
        raise HTTPException(409, detail=f"job is {job.status.value}; wait for it (GET /jobs/{job_id}/events)")
    _raise_for(job)
    if job.result is None:
        raise HTTPException(404, detail="the result was evicted (STABLE_AUDIO_MAX_RESULT_BYTES / retention)")
    return audio_response(job)


@router.delete(
    "/jobs/{job_id}",
    response_model=JobView,
    tags=["jobs"],
    responses={404: {"description": "no such job"}, 409: {"description": "already finished"}},
)
def cancel_job(job_id: str, engine: ReadingEngineDep) -> Any:
    job = _job_or_404(engine, job_id)
    if job.status in (JobStatus.done, JobStatus.failed):
        raise HTTPException(409, detail=f"job already {job.status.value}")
    engine.cancel(job_id)
    return _job_view(engine, job)


@router.get(
    "/jobs/{job_id}/events",
    tags=["jobs"],
    response_class=StreamingResponse,
    responses={404: {"description": "no such job"}},
)
async def job_events(job_id: str, request: Request, engine: ReadingEngineDep) -> StreamingResponse:
    """Server-Sent Events: `queued` (position), `step` (step/total), then `done`, `failed` or `cancelled`."""
    job = _job_or_404(engine, job_id)

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
