"""What a generation request is while the engine holds it: `Job`, its status and its result.

Kept apart from the machinery so that every reader of a job (the routes, the Ray ingress, telemetry, the
scheduler's tests) depends on plain data only. A `Job`'s attributes are the public contract: the routes and
telemetry read them and the Ray ingress rebuilds a replica's job by setting them, so they stay flat. Engine
bookkeeping that is nobody else's business lives with its owner instead (the queue deadline and batch key in
the `Scheduler`, the retention time in the `JobStore`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .. import audio as audio_io
from ..models.base import GenerationParams

WORKER_LOST = "the generation worker stopped unexpectedly; the service is restarting"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = {JobStatus.done, JobStatus.failed, JobStatus.cancelled}


class QueueFull(RuntimeError):
    """The queue is at capacity; the caller should retry later (HTTP 429)."""


class NotAccepting(RuntimeError):
    """The engine is shutting down, has no model, or its worker died (HTTP 503)."""


@dataclass
class JobResult:
    data: bytes
    format: str
    sample_rate: int
    channels: int
    num_samples: int

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

    def phase(self, name: str, start_ns: int, end_ns: int, **attrs: Any) -> None:
        self.phases.append((name, start_ns, end_ns, attrs))
        self.timings[f"{name}_s"] = round((end_ns - start_ns) / 1e9, 4)

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    @property
    def result_bytes(self) -> int:
        return len(self.result.data) if self.result is not None else 0

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "step": self.step,
            "total_steps": self.total_steps,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "timings": dict(self.timings),
            "error": self.error,
        }
