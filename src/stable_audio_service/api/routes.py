"""Routes: thin. Each one turns HTTP into a call on the service layer or the backend and shapes the
answer; what a request means (defaults, limits, capabilities, uploads) lives in `service.py`. The backend is
whatever `EngineClient` the app was built with (an engine in this process, or Ray replicas): the routes use that
protocol only.

(Long: every route of the public API is here so its whole surface reads in one file; each handler is a few lines.)"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .. import SERVICE, __version__, service, telemetry
from ..audio import MEDIA_TYPES
from ..engine import JobStatus, Refused
from ..engine.client import EngineClient, JobAudio, JobEvent, JobHandle, JobInfo
from ..models import registry
from . import deadlines
from .schemas import (
    CLIENT_JOB_ID_PATTERN,
    DeadlineRefusal,
    HealthResponse,
    JobAccepted,
    JobResultInfo,
    JobView,
    ResponseMetadata,
    StableAudioRequest,
    StableAudioResponse,
    Take,
    TakeInfo,
    Timings,
)

if TYPE_CHECKING:
    from .app import ServiceState

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong bearer token (only when STABLE_AUDIO_API_KEY is set)"},
    413: {"description": "request body too large"},
    422: {"description": "invalid input; `detail` names the field"},
    503: {"description": "model not loaded, shutting down, or out of memory; see Retry-After"},
}
# The answers of the routes that queue work: a full queue, and a deadline the estimate says cannot be met.
REFUSALS: dict[int | str, dict[str, Any]] = {
    429: {"description": "queue full; Retry-After says when a place frees, from the wait estimate"},
    503: {
        "model": DeadlineRefusal,
        "description": "refused at once: estimated to finish after `max_wait_s` / `Request-Timeout` / the server's "
        "default (the body gives the estimate, the deadline and when to retry; also Retry-After), or model not "
        "loaded, shutting down, out of memory, or its deadline passed while queued",
    },
}
router = APIRouter(responses=ERROR_RESPONSES)
RETRY_AFTER_S = "5"
DISCONNECT_POLL_S = 0.5
SSE_KEEPALIVE_S = 15.0
AUDIO_MEDIA = {media: fmt for fmt, media in MEDIA_TYPES.items()} | {"audio/x-wav": "wav", "audio/mp3": "mp3"}
# The gain the request's `loudness` applied to the file, dB (absent for "none").
LOUDNESS_HEADER = "X-Loudness-Gain-dB"
# A result above this many bytes is base64-encoded and serialised in a worker thread, not on the event loop.
BIG_PAYLOAD_BYTES = 256 * 1024


# -- dependencies ---------------------------------------------------------------------------------
def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def _unready(detail: str) -> HTTPException:
    return HTTPException(503, detail=detail, headers={"Retry-After": RETRY_AFTER_S})


async def get_client(request: Request) -> EngineClient:
    """The backend, only while it takes new work (503 while loading, after a failed load, or draining)."""
    state = get_state(request)
    if state.status != "ok" or state.client is None:
        raise _unready(state.reason or "not ready")
    if not (await state.client.health()).accepting:
        raise _unready("the service is shutting down")
    return state.client


def get_reading_client(request: Request) -> EngineClient:
    """The backend for reads of existing jobs: also while draining, so results finishing in the grace
    period can still be fetched."""
    state = get_state(request)
    if state.client is None:
        raise _unready(state.reason or "not ready")
    return state.client


ClientDep = Annotated[EngineClient, Depends(get_client)]
ReadingClientDep = Annotated[EngineClient, Depends(get_reading_client)]
ClientJobId = Annotated[
    str | None, Query(pattern=CLIENT_JOB_ID_PATTERN, description="Echoed in meta; also accepted in the body.")
]


# -- helpers ------------------------------------------------------------------------------------
def _resolve(
    request: Request, client: EngineClient, body: StableAudioRequest, query_id: str | None, longform: bool = False
) -> service.Resolved:
    return service.resolve(body, client.model, get_state(request).settings, query_id, longform=longform)


async def _resolve_async(
    request: Request, client: EngineClient, body: StableAudioRequest, query_id: str | None, longform: bool = False
) -> service.Resolved:
    if service.has_uploads(body):  # decoding and resampling take a while: off the event loop
        return await run_in_threadpool(_resolve, request, client, body, query_id, longform)
    return _resolve(request, client, body, query_id, longform)


def _max_wait(request: Request, body: StableAudioRequest) -> float | None:
    """The request's deadline: `max_wait_s`, the `Request-Timeout` header, or the server's default."""
    header = request.headers.get(deadlines.REQUEST_TIMEOUT_HEADER)
    return deadlines.max_wait_s(body.max_wait_s, header, get_state(request).settings.default_max_wait_s)


async def _submit(
    client: EngineClient, resolved: service.Resolved, keep: bool = True, max_wait_s: float | None = None
) -> JobHandle:
    """Queue the request; a refusal (`QueueFull`, `NotAccepting`, `WouldMissDeadline`) goes to the app's handler,
    which answers it with the backend's Retry-After (api/deadlines.py)."""
    from opentelemetry import context as otel_context

    trace_id, span_id = telemetry.span_ids()
    try:
        return await client.submit(
            resolved.params,
            format=resolved.format,
            client_job_id=resolved.client_job_id,
            context={"trace_id": trace_id, "span_id": span_id, "otel": otel_context.get_current()},
            keep=keep,
            max_wait_s=max_wait_s,
        )
    except Refused as exc:
        telemetry.record_rejected(deadlines.reason(exc))
        raise


async def _ticks(events: AsyncIterator[JobEvent], period_s: float) -> AsyncIterator[JobEvent | None]:
    """`events`, with a None after each `period_s` without one (for keep-alives and disconnect checks). The
    stream is read by a task of its own: a timeout must not interrupt it, since that would close it (and closing a
    `/predict` job's stream cancels the job). Closing this closes `events`."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    end = object()

    async def pump() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
        finally:
            queue.put_nowait(end)

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=period_s)
            except TimeoutError:
                yield None
                continue
            if item is end:
                await task  # the stream ended: re-raise its error, if any
                return
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _meta(info: JobInfo) -> ResponseMetadata:
    loras = [{"name": r.name, "strength": r.strength} for r in info.loras] or None
    levels = info.result.loudness if info.result is not None else ()
    return ResponseMetadata(
        client_job_id=info.client_job_id,
        trace_id=info.trace_id,
        span_id=info.span_id,
        loras=loras,
        loudness=levels[0].as_dict() if levels else None,
    )


def _result(audio: JobAudio) -> StableAudioResponse:
    info, res = audio.info, audio.info.result
    assert res is not None and audio.data is not None
    outputs = None
    if audio.more:
        takes = (audio.data, *audio.more)
        outputs = [Take(audio_b64=base64.b64encode(d).decode("ascii"), seed=info.seed + i) for i, d in enumerate(takes)]
    return StableAudioResponse(
        audio_b64=base64.b64encode(audio.data).decode("ascii"),
        sample_rate=res.sample_rate,
        duration=round(res.duration, 6),
        meta=_meta(info),
        channels=res.channels,
        num_samples=res.num_samples,
        seed=info.seed,
        format=res.format,
        timings=Timings(**info.timings),
        outputs=outputs,
    )


def _raise_for(info: JobInfo) -> None:
    if info.status == JobStatus.cancelled:
        raise HTTPException(409, detail="the job was cancelled")
    if info.status == JobStatus.failed:
        headers = {"Retry-After": deadlines.retry_after(info.retry_after_s)} if info.error_status == 503 else None
        raise HTTPException(info.error_status or 500, detail=info.error or "generation failed", headers=headers)


def job_view(info: JobInfo) -> JobView:
    """A job as `GET /jobs/{id}` and `DELETE` show it: everything but the audio, which has its own URL."""
    res = info.result if info.status == JobStatus.done else None
    timings = Timings(**info.timings)
    return JobView(
        id=info.id,
        status=info.status.value,
        position=info.position,
        eta_s=info.eta_s,
        step=info.step,
        total_steps=info.total_steps,
        created=info.created,
        started=info.started,
        finished=info.finished,
        timings=timings,
        error=info.error,
        meta=_meta(info),
        result=None
        if res is None
        else JobResultInfo(
            audio_url=f"/jobs/{info.id}/audio",
            sample_rate=res.sample_rate,
            duration=round(res.duration, 6),
            channels=res.channels,
            num_samples=res.num_samples,
            seed=info.seed,
            format=res.format,
            bytes=res.bytes,
            timings=timings,
            outputs=None
            if res.takes == 1
            else [
                TakeInfo(audio_url=f"/jobs/{info.id}/audio?index={i}", seed=(info.seed or 0) + i)
                for i in range(res.takes)
            ],
        ),
    )


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


def audio_response(audio: JobAudio, index: int = 0) -> Response:
    """Take `index`'s file itself, with the metadata in headers (`X-Seed`, `X-Sample-Rate`, ...)."""
    info, res = audio.info, audio.info.result
    data = audio.take(index)
    assert res is not None and data is not None and info.seed is not None
    suffix = f"-{index}" if res.takes > 1 else ""
    headers = {
        "X-Seed": str(info.seed + index),
        "X-Sample-Rate": str(res.sample_rate),
        "X-Channels": str(res.channels),
        "X-Num-Samples": str(res.num_samples),
        "X-Duration": f"{res.duration:.6f}",
        "X-Format": res.format,
        "Content-Disposition": f'attachment; filename="{info.id}{suffix}.{res.format}"',
    }
    if res.takes > 1:
        headers["X-Take"] = f"{index}/{res.takes}"
    if len(res.loudness) > index:
        headers[LOUDNESS_HEADER] = f"{res.loudness[index].gain_db:.2f}"
    for header, value in (
        ("X-Client-Job-Id", info.client_job_id),
        ("X-Trace-Id", info.trace_id),
        ("X-Span-Id", info.span_id),
    ):
        if value:
            headers[header] = value
    return Response(data, media_type=MEDIA_TYPES[res.format], headers=headers)


async def json_response(model: Any, size_hint: int) -> Response:
    """Serialise a response model; big payloads (base64 audio) in a worker thread so /health and SSE
    keep answering while a long clip is encoded."""

    def render() -> bytes:
        return model.model_dump_json().encode()

    body = await run_in_threadpool(render) if size_hint > BIG_PAYLOAD_BYTES else render()
    return Response(body, media_type="application/json")


# -- service routes -------------------------------------------------------------------------------
@router.get("/health", response_model=HealthResponse, tags=["service"])
async def health(request: Request) -> Any:
    state = get_state(request)
    model = state.model.name if state.model is not None else None
    if state.status != "ok" or state.client is None:
        status, reason = state.status if state.status != "ok" else "loading", state.reason
    else:
        h = await state.client.health()
        if h.healthy:
            return {"status": "ok", "service": SERVICE, "version": __version__, "model": model}
        status, reason = "error", h.reason or "the engine stopped"
    body = {"status": status, "service": SERVICE, "version": __version__, "model": model, "detail": reason}
    return JSONResponse(body, status_code=503, headers={"Retry-After": RETRY_AFTER_S})


@router.get("/ready", tags=["service"])
async def ready(request: Request) -> Any:
    state = get_state(request)
    client = state.client
    if state.status != "ok" or client is None:
        reason = state.reason
    else:
        h = await client.health()
        if h.accepting:
            stats = await client.stats()
            body: dict[str, Any] = {"ready": True, "queue_depth": stats.queue_depth, "running": stats.running}
            body["drain_s"] = None if stats.drain_s is None else round(stats.drain_s, 2)
            if h.replicas is not None:
                body["replicas"] = h.replicas
            return body
        reason = (
            (h.reason or "the engine stopped") if not h.healthy else "the engine is not accepting work (shutting down)"
        )
    return JSONResponse({"ready": False, "detail": reason}, status_code=503, headers={"Retry-After": RETRY_AFTER_S})


@router.get("/models", tags=["service"])
async def models(request: Request, client: ClientDep) -> Any:
    m = client.model
    stats = await client.stats()
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
        "batching": {"max_batch_size": stats.max_batch_size, "queue_size": stats.queue_size},
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
        500: {"description": "generation failed (the reason is in detail)"},
        **REFUSALS,
    },
)
async def predict(
    body: StableAudioRequest, request: Request, client: ClientDep, client_job_id: ClientJobId = None
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
    if want is not None and (body.num_outputs or 1) > 1:
        raise HTTPException(
            406,
            detail=f"num_outputs={body.num_outputs} makes {body.num_outputs} files, and an Accept: audio/* answer "
            "holds one: ask for JSON (each take in `outputs`), or use POST /jobs and GET /jobs/{id}/audio?index=i",
        )
    if want is not None:
        body.format = want
    resolved = await _resolve_async(request, client, body, client_job_id)
    # forgotten once it ends: this route holds the result
    job = await _submit(client, resolved, keep=False, max_wait_s=_max_wait(request, body))
    info = await _wait_for_end(request, job)
    _raise_for(info)
    audio = await job.audio()
    if want is not None:
        return audio_response(audio)
    return await json_response(_result(audio), len(audio.data or b""))


async def _wait_for_end(request: Request, job: JobHandle) -> JobInfo:
    """Follow `job` to its end. A client that goes away closes the stream, which cancels the job (submitted with
    `keep=False`, it is this request's alone)."""
    loop = asyncio.get_running_loop()
    next_check = loop.time() + DISCONNECT_POLL_S
    async with contextlib.aclosing(_ticks(job.events(), DISCONNECT_POLL_S)) as events:
        async for event in events:
            if event is not None and event.terminal:
                return event.job
            if event is None or loop.time() >= next_check:  # step events may come faster than the poll interval
                next_check = loop.time() + DISCONNECT_POLL_S
                if await request.is_disconnected():
                    raise HTTPException(499, detail="client disconnected")
    return job.info  # the stream ended without a terminal event: the backend says what it knows


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    tags=["jobs"],
    responses=REFUSALS,
)
async def create_job(
    body: StableAudioRequest, request: Request, client: ClientDep, client_job_id: ClientJobId = None
) -> Any:
    resolved = await _resolve_async(request, client, body, client_job_id, longform=True)
    info = (await _submit(client, resolved, max_wait_s=_max_wait(request, body))).info
    return JobAccepted(id=info.id, status=info.status.value, position=info.position, eta_s=info.eta_s, meta=_meta(info))


def _no_such_job(job_id: str) -> HTTPException:
    return HTTPException(404, detail=f"no job {job_id!r} (unknown, or expired after the retention time)")


@router.get("/jobs/{job_id}", response_model=JobView, tags=["jobs"], responses={404: {"description": "no such job"}})
async def get_job(job_id: str, client: ReadingClientDep) -> Any:
    """Status and timings; once done, `result.audio_url` points at the file (`GET /jobs/{id}/audio`)."""
    info = await client.get(job_id)
    if info is None:
        raise _no_such_job(job_id)
    return job_view(info)


@router.get(
    "/jobs/{job_id}/audio",
    tags=["jobs"],
    response_class=Response,
    responses={
        200: {"content": AUDIO_CONTENT, "description": "the finished job's audio file (take `index`)"},
        404: {"description": "no such job"},
        409: {"description": "not finished, cancelled or failed"},
        422: {"description": "`index` is not one of the job's takes"},
    },
)
async def get_job_audio(
    job_id: str,
    client: ReadingClientDep,
    index: Annotated[int, Query(ge=0, description="Which take (num_outputs > 1): 0 .. num_outputs - 1.")] = 0,
) -> Response:
    audio = await client.audio(job_id)
    if audio is None:
        raise _no_such_job(job_id)
    info = audio.info
    if not info.ended:
        raise HTTPException(409, detail=f"job is {info.status.value}; wait for it (GET /jobs/{job_id}/events)")
    _raise_for(info)
    if audio.data is None:
        raise HTTPException(404, detail="the result was evicted (STABLE_AUDIO_MAX_RESULT_BYTES / retention)")
    takes = 1 + len(audio.more)
    if index >= takes:
        msg = f"the job has {takes} take(s): index 0 to {takes - 1}"
        raise HTTPException(422, detail=[{"loc": ["query", "index"], "msg": msg, "type": "value_error"}])
    return audio_response(audio, index)


@router.delete(
    "/jobs/{job_id}",
    response_model=JobView,
    tags=["jobs"],
    responses={404: {"description": "no such job"}, 409: {"description": "already finished"}},
)
async def cancel_job(job_id: str, client: ReadingClientDep) -> Any:
    info = await client.cancel(job_id)  # a job that already ended is left as it is
    if info is None:
        raise _no_such_job(job_id)
    if info.status in (JobStatus.done, JobStatus.failed):
        raise HTTPException(409, detail=f"job already {info.status.value}")
    return job_view(info)


@router.get(
    "/jobs/{job_id}/events",
    tags=["jobs"],
    response_class=StreamingResponse,
    responses={404: {"description": "no such job"}},
)
async def job_events(job_id: str, request: Request, client: ReadingClientDep) -> StreamingResponse:
    """Server-Sent Events: `queued` (position, eta_s), `step` (step/total, eta_s), then `done`, `failed` or
    `cancelled`."""
    job = await client.follow(job_id)
    if job is None:
        raise _no_such_job(job_id)

    async def stream() -> AsyncIterator[str]:
        async with contextlib.aclosing(_ticks(job.events(), SSE_KEEPALIVE_S)) as events:
            async for event in events:
                if event is None:
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: {event.type}\ndata: {json.dumps(event.data)}\n\n"
                if event.terminal:
                    return

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
