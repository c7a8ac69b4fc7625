"""What a generation request is while the engine holds it: `Job`, its status and its result.

Kept apart from the machinery so that every reader of a job (the engine clients, telemetry, the scheduler's
tests) depends on plain data only. A `Job` is mutable and touched by the engine's threads, so it never leaves the
engine: callers see `JobInfo` views of it (engine/client.py), taken under the engine's lock. Engine
bookkeeping that is nobody else's business lives with its owner instead (the queue deadline and batch key in
the `Scheduler`, the retention time in the `JobStore`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .. import audio as audio_io
from ..models.base import GenerationParams

if TYPE_CHECKING:
    from ..loudness import LoudnessReport

WORKER_LOST = "the generation worker stopped unexpectedly; the service is restarting"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = {JobStatus.done, JobStatus.failed, JobStatus.cancelled}


class Refused(RuntimeError):
    """The engine did not take a job. `retry_after_s`: when a retry may succeed, from the engine's wait estimate
    (None when it has none), so that `Retry-After` tells the caller something true rather than a constant."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(Refused):
    """The queue is at capacity; the caller should retry later (HTTP 429)."""


class NotAccepting(Refused):
    """The engine is shutting down, has no model, or its worker died (HTTP 503)."""


class WouldMissDeadline(NotAccepting):
    """Refused at once because the estimated finish is past a deadline (HTTP 503): a caller with a deadline is
    better served by an immediate answer than by a result that comes after it stopped waiting, and a job already
    accepted must not be made late by a newcomer.

    `estimate_s`: seconds from submission to the estimated finish; `max_wait_s`: the caller's deadline (None when
    the refusal protects other jobs' deadlines); `retry_after_s`: when the same request would be estimated to make
    it; `alone_s`: what the request costs on an idle engine (above `max_wait_s`, no retry can succeed)."""

    def __init__(
        self, message: str, *, estimate_s: float, max_wait_s: float | None, retry_after_s: float, alone_s: float
    ) -> None:
        super().__init__(message, retry_after_s)
        self.estimate_s = estimate_s
        self.max_wait_s = max_wait_s
        self.alone_s = alone_s

    def detail(self) -> dict[str, Any]:
        """The refusal as data, for an HTTP body."""
        return {
            "message": str(self),
            "estimate_s": round(self.estimate_s, 3),
            "max_wait_s": self.max_wait_s,
            "retry_after_s": self.retry_after_s,
            "alone_s": round(self.alone_s, 3),
        }


def rows_of(params: GenerationParams) -> int:
    """Rows of a forward pass the job takes: one per take (`num_outputs`)."""
    return max(1, int(params.num_outputs))


def steps_of(params: GenerationParams) -> int:
    """Denoising steps the job runs per row: its steps times its windows (long-form), for progress and estimates."""
    from .longform import windows

    return int(params.num_inference_steps) * windows(params)


def take_params(params: GenerationParams, index: int) -> GenerationParams:
    """Take `index` of a request: the same request with seed `seed + index`, one take (what its solo request with
    that seed is, so the two make the same audio)."""
    if params.num_outputs == 1 and index == 0:
        return params
    return dataclasses.replace(params, seed=int(params.seed) + index, num_outputs=1)


@dataclass
class JobResult:
    data: bytes  # the first take's file
    format: str
    sample_rate: int
    channels: int
    num_samples: int
    more: tuple[bytes, ...] = ()  # the other takes' files, in seed order (`num_outputs` > 1)
    loudness: tuple[LoudnessReport, ...] = ()  # what the request's loudness target did to each take (in order)

    @property
    def takes(self) -> tuple[bytes, ...]:
        return (self.data, *self.more)

    @property
    def bytes(self) -> int:
        """Every take's bytes: what the job store's byte bound counts."""
        return len(self.data) + sum(len(d) for d in self.more)

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def media_type(self) -> str:
        return audio_io.MEDIA_TYPES[self.format]


@dataclass
class Job:
    # -- the request (fixed once submitted)
    id: str
    params: GenerationParams
    format: str = "wav"
    client_job_id: str | None = None
    context: Any = None  # opaque, for telemetry (the request's span context)
    keep: bool = True  # False: the engine forgets the job when it ends (the caller holds it)
    # -- progress
    status: JobStatus = JobStatus.queued
    step: int = 0
    total_steps: int = 0
    batch_size: int = 0
    cancel_requested: bool = False
    cancel_reason: str | None = None  # set when the service (not the client) stops the job
    # -- the caller's deadline and the engine's estimates (refreshed whenever the engine forecasts)
    max_wait_s: float | None = None  # seconds from submission the caller waits for the result; None: no deadline
    deadline_at: float | None = None  # that deadline in the engine's monotonic clock (set by the engine)
    position: int | None = None  # 1-based place in the queue while queued
    eta_s: float | None = None  # estimated seconds from `estimated_at` (wall clock) to the finish
    estimated_at: float | None = None
    retry_after_s: float | None = None  # with a 503 failure: when a retry may succeed, from the estimate
    # -- timing: wall-clock seconds, and per-phase durations and spans
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # (name, start_ns, end_ns, attributes) in time.time_ns() clock, for telemetry spans
    phases: list[tuple[str, int, int, dict]] = field(default_factory=list)
    # -- the outcome
    result: JobResult | None = None
    error: str | None = None
    error_status: int | None = None
    # -- who follows its events: (event loop, asyncio.Queue) pairs, owned by the engine's `EventHub`
    subscribers: list = field(default_factory=list)
    # -- a long-form job's windows in progress (engine/longform.py `Chain`; the worker's, None otherwise)
    chain: Any = None

    def phase(self, name: str, start_ns: int, end_ns: int, **attrs: Any) -> None:
        self.phases.append((name, start_ns, end_ns, attrs))
        self.timings[f"{name}_s"] = round((end_ns - start_ns) / 1e9, 4)

    def remaining_s(self, now: float | None = None) -> float | None:
        """The estimated seconds left until the finish, as of `now` (wall clock; default: this moment): the last
        forecast aged by the time since it was made, so a reader between forecasts still sees it count down."""
        if self.eta_s is None or self.estimated_at is None:
            return None
        return max(0.0, self.eta_s - ((time.time() if now is None else now) - self.estimated_at))

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    @property
    def result_bytes(self) -> int:
        return self.result.bytes if self.result is not None else 0
