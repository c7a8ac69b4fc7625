"""The one interface between the ingresses (HTTP routes, the CLI) and whatever generates: `EngineClient`.

The routes must not care whether the model runs in this process or on a cluster, so they see a single async
protocol, as vLLM's `EngineClient` or TGI's `Backend`: `submit` parameters and get a `JobHandle` whose event
stream says `queued`, `step`, then `done`, `failed` or `cancelled`; read (`get`, `follow`, `audio`) and `cancel`
jobs by id; ask for `health`, `stats` and the `metrics_registry` that `/metrics` renders. Two implementations:
`LocalEngineClient` (engine/local.py) over this process's threaded `Engine`, and `RayEngineClient`
(serving/ray/client.py) over model replicas on a Ray cluster.

A job is seen through one view, `JobInfo`: `GET /jobs/{id}`, every event (as its snapshot of the job) and the
Ray wire format all carry it, so a job is serialised in one place (`JobInfo.of`). Every type here is plain
picklable data: the Ray replicas send them as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..loudness import LoudnessReport
from ..models.base import Capabilities, GenerationParams, LoraRef, ModelLimits
from .events import eta
from .jobs import TERMINAL, Job, JobStatus

TERMINAL_EVENTS = ("done", "failed", "cancelled")


class Unavailable(RuntimeError):
    """The backend could not answer about a job just now (a replica did not reply): retry later (HTTP 503). Not
    the same as "no such job" (None) or a refusal of new work (`QueueFull`, `NotAccepting`)."""


@dataclass(frozen=True)
class ResultInfo:
    """A finished job's audio, described without the bytes (those come from `EngineClient.audio`)."""

    format: str
    sample_rate: int
    channels: int
    num_samples: int
    bytes: int  # every take's
    takes: int = 1  # `num_outputs`: files from seeds seed, seed + 1, ... (`JobAudio.take(i)`)
    loudness: tuple[LoudnessReport, ...] = ()  # per take, when the request asked for a loudness target

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


@dataclass(frozen=True)
class JobInfo:
    """What anyone outside the engine may know about a job, at one moment."""

    id: str
    status: JobStatus
    position: int | None  # 1-based place in the queue; None once it left the queue
    eta_s: float | None  # estimated seconds until the result; None before anything was measured, and once ended
    step: int
    total_steps: int
    created: float
    started: float | None
    finished: float | None
    timings: dict[str, float]
    error: str | None
    error_status: int | None  # the HTTP status a failed job answers with
    retry_after_s: float | None  # with a 503 failure: when a retry may succeed, from the engine's estimate
    seed: int | None
    format: str
    client_job_id: str | None
    trace_id: str | None  # the request span the job belongs to
    span_id: str | None
    loras: tuple[LoraRef, ...] = ()
    result: ResultInfo | None = None  # once done, while the engine keeps the result

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def of(cls, job: Job, position: int | None, job_id: str | None = None) -> JobInfo:
        """The view of an engine's `job` (`position` from its scheduler; `job_id`: the id callers know it by,
        when that is not the engine's own)."""
        ctx = job.context if isinstance(job.context, dict) else {}
        res = job.result
        return cls(
            id=job_id or job.id,
            status=job.status,
            position=position if job.status == JobStatus.queued else None,
            eta_s=None if job.ended else eta(job),
            step=job.step,
            total_steps=job.total_steps,
            created=job.created,
            started=job.started,
            finished=job.finished,
            timings=dict(job.timings),
            error=job.error,
            error_status=job.error_status,
            retry_after_s=job.retry_after_s if job.error_status == 503 else None,
            seed=job.params.seed,
            format=job.format,
            client_job_id=job.client_job_id,
            trace_id=ctx.get("trace_id"),
            span_id=ctx.get("span_id"),
            loras=tuple(job.params.loras),
            result=None
            if res is None or job.status != JobStatus.done
            else ResultInfo(
                res.format,
                res.sample_rate,
                res.channels,
                res.num_samples,
                res.bytes,
                takes=len(res.takes),
                loudness=res.loudness,
            ),
        )


@dataclass(frozen=True)
class JobEvent:
    """One event of a job: `data` is what a Server-Sent Events client receives (`{"type": "step", "step",
    "total"}`, ...), `job` the job as it stood when the event was delivered."""

    type: str
    data: dict[str, Any]
    job: JobInfo

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


def snapshot_event(info: JobInfo) -> JobEvent:
    """Where a job stands, as the event a new follower starts with (the engine's own first event, from a view)."""
    if info.status == JobStatus.queued:
        data: dict[str, Any] = {"type": "queued", "position": info.position, "eta_s": info.eta_s}
    elif info.status == JobStatus.running:
        data = {"type": "step", "step": info.step, "total": info.total_steps, "eta_s": info.eta_s}
    elif info.status == JobStatus.done:
        data = {"type": "done", "timings": dict(info.timings)}
    elif info.status == JobStatus.cancelled:
        data = {"type": "cancelled"}
    else:
        data = {"type": "failed", "error": info.error, "status": info.error_status}
        if info.retry_after_s is not None:
            data["retry_after_s"] = info.retry_after_s
    return JobEvent(data["type"], data, info)


@dataclass(frozen=True)
class JobAudio:
    """A job's view and, once it is done (and its result still kept), its encoded audio file: `data` the first
    take's, `more` the other takes' (seed order)."""

    info: JobInfo
    data: bytes | None = field(default=None, repr=False)
    more: tuple[bytes, ...] = field(default=(), repr=False)

    def take(self, index: int) -> bytes | None:
        """Take `index`'s file (seed `seed + index`); None when there is no such take or no audio."""
        if self.data is None or not 0 <= index <= len(self.more):
            return None
        return self.data if index == 0 else self.more[index - 1]


@dataclass(frozen=True)
class EngineHealth:
    """Whether the backend can generate (`healthy`: False once it cannot, e.g. its worker died or no replica
    runs; `reason` says why) and takes new work now (`accepting`: also False while shutting down)."""

    healthy: bool
    accepting: bool
    reason: str | None = None
    replicas: int | None = None  # live model replicas behind a cluster; None for an engine in this process


@dataclass(frozen=True)
class EngineStats:
    """The figures `/ready` and `/models` report: queued and running jobs now, and the limits they run under
    (`queue_size` is per engine: behind a cluster, per replica)."""

    queue_depth: int
    running: int
    max_batch_size: int
    queue_size: int
    # estimated seconds until what is queued and running now is done (behind a cluster: the longest replica's);
    # None before anything was measured
    drain_s: float | None = None


class ServedModel(Protocol):
    """The loaded model as the request path and the routes read it: facts only (a cluster's ingress holds no
    weights, only these)."""

    name: str
    family: str
    sample_rate: int
    channels: int
    device: Any
    dtype: Any
    limits: ModelLimits
    capabilities: Capabilities

    def describe(self) -> dict[str, Any]: ...

    def upload_samples(self, duration: float) -> int: ...


class JobHandle(Protocol):
    """A job to follow: its current view, its events, its audio once done."""

    @property
    def id(self) -> str: ...

    @property
    def info(self) -> JobInfo:
        """The latest view of the job."""
        ...

    def events(self) -> AsyncIterator[JobEvent]:
        """The job's events: first a snapshot of where it stands, then each change, ending with its terminal event.
        Closing the stream before the end cancels a job submitted with `keep=False` (its caller went away)."""
        ...

    async def audio(self) -> JobAudio:
        """The job's view and, once done, its audio (`data` None otherwise)."""
        ...


class EngineClient(Protocol):
    """Everything an ingress may ask of the generation backend. Job calls are coroutines; `None` means "no such
    job" (unknown or expired); `Unavailable` means "could not tell now, retry"."""

    @property
    def model(self) -> ServedModel: ...

    @property
    def metrics_registry(self) -> Any:
        """What `/metrics` renders: a Prometheus registry (anything with `collect()`)."""
        ...

    async def submit(
        self,
        params: GenerationParams,
        *,
        format: str = "wav",
        client_job_id: str | None = None,
        context: dict[str, Any] | None = None,
        keep: bool = True,
        max_wait_s: float | None = None,
    ) -> JobHandle:
        """Queue a generation; raises `QueueFull` (429) or `NotAccepting` (503; `WouldMissDeadline` when it would
        finish after `max_wait_s`), each with `retry_after_s`. `context`: the request's trace (`trace_id`,
        `span_id`, and the OpenTelemetry context as `otel`), so the engine's spans join it. `keep=False` (a caller
        that waits for the result itself): the job is forgotten once it ends, and closing its event stream early
        cancels it."""
        ...

    async def get(self, job_id: str) -> JobInfo | None: ...

    async def follow(self, job_id: str) -> JobHandle | None:
        """A handle on an existing job, to stream its events (closing that stream never cancels it)."""
        ...

    async def cancel(self, job_id: str) -> JobInfo | None:
        """Cancel a queued or running job (it leaves its batch before the next step); a job that already ended is
        left as it is. Returns the view after the request."""
        ...

    async def audio(self, job_id: str) -> JobAudio | None: ...

    async def health(self) -> EngineHealth: ...

    async def stats(self) -> EngineStats: ...

    def shutdown(self, grace_s: float) -> None:
        """Stop taking work; queued and running work gets `grace_s` to finish, the rest is answered 503. Blocking:
        call it from a thread."""
        ...
