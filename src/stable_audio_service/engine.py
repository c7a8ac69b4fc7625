"""The one owner of the model: a bounded queue, dynamic batching, jobs, progress and cancel.

A single worker thread takes the oldest queued request, waits `batch_wait_ms` for
others that can share its forward passes (same model batch key: step count and latent
window), and runs them together one denoising step at a time. Between steps it drops
cancelled requests, publishes progress and expires requests that waited too long.
The HTTP layer only submits jobs and awaits their events (vLLM-style split).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from . import audio as audio_io
from .models.base import AudioModel, GenerationError, GenerationParams, GenerationState

log = logging.getLogger("stable_audio_service.engine")


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
    """The engine is shutting down or has no model (HTTP 503)."""


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


@dataclass
class Job:
    id: str
    params: GenerationParams
    format: str = "wav"
    client_job_id: str | None = None
    context: Any = None  # opaque, for telemetry (the request's span context)
    status: JobStatus = JobStatus.queued
    step: int = 0
    total_steps: int = 0
    batch_size: int = 0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    deadline: float = 0.0
    error: str | None = None
    error_status: int | None = None
    result: JobResult | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None  # set when the service (not the client) stops the job
    subscribers: list = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # (name, start_ns, end_ns, attributes) in time.time_ns() clock, for telemetry spans
    phases: list[tuple[str, int, int, dict]] = field(default_factory=list)

    def phase(self, name: str, start_ns: int, end_ns: int, **attrs: Any) -> None:
        self.phases.append((name, start_ns, end_ns, attrs))
        self.timings[f"{name}_s"] = round((end_ns - start_ns) / 1e9, 4)

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


class Engine:
    def __init__(
        self,
        model: AudioModel,
        *,
        max_batch_size: int = 4,
        batch_wait_ms: int = 20,
        queue_size: int = 64,
        queue_timeout_s: float = 900.0,
        job_ttl_s: float = 3600.0,
        max_jobs_kept: int = 256,
        observer: Callable[[str, Job, dict], None] | None = None,
    ) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self.job_ttl_s = job_ttl_s
        self.max_jobs_kept = max_jobs_kept
        self.observer = observer
        self._cond = threading.Condition()
        self._pending: list[Job] = []
        self._running: list[Job] = []
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self.stats = {"forward_passes": 0, "batches": 0, "requests": 0, "max_batch_seen": 0}

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._worker, name="stable-audio-engine", daemon=True)
        self._thread.start()

    @property
    def accepting(self) -> bool:
        return self._accepting and self._thread is not None and self._thread.is_alive()

    def shutdown(self, grace_s: float = 30.0) -> None:
        """Stop taking work, let queued and running work finish within the grace period, answer the rest."""
        with self._cond:
            self._accepting = False
            self._cond.notify_all()
        end = time.monotonic() + grace_s
        while time.monotonic() < end:
            with self._cond:
                if not self._pending and not self._running:
                    break
            time.sleep(0.05)
        with self._cond:
            leftovers = list(self._pending)
            self._pending.clear()
            for job in self._running:
                job.cancel_reason = "the service is shutting down"
                job.cancel_requested = True
        for job in leftovers:
            self._fail(job, "the service is shutting down", 503)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, end - time.monotonic() + 5))

    # -- submitting and querying -----------------------------------------------------
    def submit(
        self, params: GenerationParams, *, format: str = "wav", client_job_id: str | None = None, context: Any = None
    ) -> Job:
        with self._cond:
            if not self.accepting:
                raise NotAccepting("the engine is not accepting work (shutting down)")
            if len(self._pending) >= self.queue_size:
                raise QueueFull(f"queue full ({self.queue_size} waiting)")
            if params.seed is None:
                params.seed = secrets.randbelow(2**32)
            job = Job(
                id=uuid.uuid4().hex,
                params=params,
                format=format,
                client_job_id=client_job_id,
                context=context,
                deadline=time.monotonic() + self.queue_timeout_s,
            )
            self._jobs[job.id] = job
            self._pending.append(job)
            self._prune_locked()
            self._cond.notify_all()
            position = len(self._pending)
        self._publish(job, {"type": "queued", "position": position})
        self._observe("submitted", job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """1-based place in the queue, or None once it left the queue."""
        with self._cond:
            try:
                return self._pending.index(job) + 1
            except ValueError:
                return None

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._pending)

    def running_count(self) -> int:
        with self._cond:
            return len(self._running)

    def cancel(self, job_id: str) -> Job | None:
        """Queued: removed at once. Running: leaves its batch before the next step."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.status in TERMINAL:
                return job
            job.cancel_requested = True
            queued = job in self._pending
            if queued:
                self._pending.remove(job)
        if queued:
            self._finish_cancelled(job)
        return job

    # -- subscriptions (asyncio side) ------------------------------------------------
    def subscribe(self, job: Job) -> asyncio.Queue:
        """An asyncio queue of this job's events, starting with a snapshot of its state."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        with self._cond:
            queue.put_nowait(self._snapshot_event(job))
            if job.status not in TERMINAL:
                job.subscribers.append((loop, queue))
        return queue

    def unsubscribe(self, job: Job, queue: asyncio.Queue) -> None:
        with self._cond:
            job.subscribers = [(lp, q) for lp, q in job.subscribers if q is not queue]

    def _snapshot_event(self, job: Job) -> dict[str, Any]:
        if job.status == JobStatus.queued:
            pos = self._pending.index(job) + 1 if job in self._pending else None
            return {"type": "queued", "position": pos}
        if job.status == JobStatus.running:
            return {"type": "step", "step": job.step, "total": job.total_steps}
        return self._terminal_event(job)

    @staticmethod
    def _terminal_event(job: Job) -> dict[str, Any]:
        if job.status == JobStatus.done:
            return {"type": "done", "timings": dict(job.timings)}
        if job.status == JobStatus.cancelled:
            return {"type": "cancelled"}
        return {"type": "failed", "error": job.error, "status": job.error_status}

    def _publish(self, job: Job, event: dict[str, Any]) -> None:
        with self._cond:
            subs = list(job.subscribers)
            if event["type"] in ("done", "failed", "cancelled"):
                job.subscribers.clear()
        for loop, queue in subs:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # that event loop is closed; nobody is listening
                pass

    def _observe(self, what: str, job: Job, **info: Any) -> None:
        if self.observer is not None:
            try:
                self.observer(what, job, info)
            except Exception:  # telemetry must never break generation
                log.exception("observer failed on %s", what)

    # -- terminal transitions --------------------------------------------------------
    def _end(self, job: Job, status: JobStatus, error: str | None = None, code: int | None = None) -> None:
        with self._cond:
            if job.status in TERMINAL:
                return
            job.status = status
            job.error = error
            job.error_status = code
            job.finished = time.time()
            job.timings["total_s"] = round(job.finished - job.created, 4)
            self._prune_locked()
        self._publish(job, self._terminal_event(job))
        self._observe(status.value, job)

    def _fail(self, job: Job, error: str, code: int) -> None:
        self._end(job, JobStatus.failed, error, code)

    def _finish_cancelled(self, job: Job) -> None:
        self._end(job, JobStatus.cancelled, "cancelled", 499)

    def _prune_locked(self) -> None:
        now = time.time()
        finished = [j for j in self._jobs.values() if j.status in TERMINAL]
        excess = len(finished) - self.max_jobs_kept
        for job in finished:
            if excess > 0 or (job.finished is not None and now - job.finished > self.job_ttl_s):
                self._jobs.pop(job.id, None)
                excess -= 1

    # -- the worker ------------------------------------------------------------------
    def _expire_locked(self) -> list[Job]:
        now = time.monotonic()
        expired = [j for j in self._pending if j.deadline <= now]
        for job in expired:
            self._pending.remove(job)
        return expired

    def _take_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait(timeout=0.5)
            if self._stop and not self._pending:
                return None
            expired = self._expire_locked()
        for job in expired:
            self._fail(job, f"waited in the queue longer than {self.queue_timeout_s:g}s", 503)
        with self._cond:
            if not self._pending:
                return []
            key = self.model.batch_key(self._pending[0].params)
            waited_until = time.monotonic() + self.batch_wait_s
            while True:
                same = [j for j in self._pending if self.model.batch_key(j.params) == key]
                remaining = waited_until - time.monotonic()
                if len(same) >= self.max_batch_size or remaining <= 0 or not self._accepting:
                    break
                self._cond.wait(timeout=remaining)
            batch = [j for j in self._pending if self.model.batch_key(j.params) == key][: self.max_batch_size]
            now_ns = time.time_ns()
            for job in batch:
                self._pending.remove(job)
                job.status = JobStatus.running
                job.started = now_ns / 1e9
                job.batch_size = len(batch)
                job.phase("queue", int(job.created * 1e9), now_ns, batch_size=len(batch))
            self._running = list(batch)
            waiting = list(self._pending)
        for pos, job in enumerate(waiting, start=1):
            self._publish(job, {"type": "queued", "position": pos})
        return batch

    def _worker(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch:
                try:
                    self._run_batch(batch)
                except Exception:  # the worker must survive anything
                    log.exception("batch failed unexpectedly")
                    for job in batch:
                        self._fail(job, "internal error in the generation worker", 500)
                finally:
                    with self._cond:
                        self._running = []

    def _run_batch(self, batch: list[Job]) -> None:
        model = self.model
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(batch))
        self._observe("batch", batch[0], size=len(batch))
        active: list[tuple[Job, GenerationState]] = []
        for job in batch:
            try:
                t0 = time.time_ns()
                state = model.start(job.params)
                job.phase("encode", t0, time.time_ns())
                job.total_steps = state.total_steps
                active.append((job, state))
            except Exception as exc:
                self._fail_for(job, exc)
        t_denoise = time.time_ns()
        while active:
            keep = []
            for job, state in active:
                if job.cancel_requested and job.cancel_reason:
                    self._fail(job, job.cancel_reason, 503)
                elif job.cancel_requested:
                    self._finish_cancelled(job)
                else:
                    keep.append((job, state))
            active = keep
            if not active or active[0][1].finished:
                break
            try:
                model.step([s for _, s in active])
                self.stats["forward_passes"] += 1
            except Exception as exc:
                for job, _ in active:
                    self._fail_for(job, exc)
                active = []
                break
            for job, state in active:
                job.step = state.step
                self._publish(job, {"type": "step", "step": state.step, "total": state.total_steps})
            self._sweep_expired()
        t_denoised = time.time_ns()
        for job, state in active:
            job.phase("denoise", t_denoise, t_denoised, steps=state.total_steps, batch_size=job.batch_size)
            try:
                t0 = time.time_ns()
                samples = model.finish(state)
                t1 = time.time_ns()
                job.phase("decode", t0, t1)
                data = audio_io.encode(samples, model.sample_rate, job.format)
                job.phase("audio_encode", t1, time.time_ns(), format=job.format)
                job.result = JobResult(data, job.format, model.sample_rate, samples.shape[0], samples.shape[1])
                self._end(job, JobStatus.done)
            except Exception as exc:
                self._fail_for(job, exc)
        _release_device_memory()

    def _sweep_expired(self) -> None:
        with self._cond:
            expired = self._expire_locked()
        for job in expired:
            self._fail(job, f"waited in the queue longer than {self.queue_timeout_s:g}s", 503)

    def _fail_for(self, job: Job, exc: BaseException) -> None:
        if _is_oom(exc):
            _release_device_memory()
            self._fail(job, "out of memory during generation; retry later or ask for a shorter clip", 503)
        elif isinstance(exc, GenerationError):
            self._fail(job, str(exc), 500)
        else:
            log.error("generation failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            self._fail(job, f"generation failed ({type(exc).__name__})", 500)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _release_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
