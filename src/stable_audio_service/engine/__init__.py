"""The one owner of the model: `Engine`, its public face (submit, follow, cancel, read) and its lifecycle.

(Long: the engine's whole public API is one class; the work itself lives in the modules listed below.)

The HTTP layer, the CLI and a Ray replica only submit jobs and await their events (vLLM-style split); the
engine does the rest with one part per concern:

- `jobs.py`       `Job`, `JobResult`, `JobStatus` and the errors callers see (`QueueFull`, `NotAccepting`);
- `scheduler.py`  the queue and the batching policy, pure (no threads, no clocks), and the forecast that
                  admission with deadlines, ETAs and Retry-After rest on;
- `estimates.py`  the measured costs (seconds per step per batch key and size) and the forecast's types;
- `worker.py`     the worker thread that calls the model step by step (continuous batching);
- `encoder.py`    the thread that encodes finished clips to WAV/FLAC/OGG/MP3, bounded;
- `store.py`      which jobs are kept, and the bounds on finished ones (count, TTL, bytes);
- `events.py`     per-job events to asyncio subscribers;
- `outcomes.py`   the one place a job ends, and the status an error maps to.

This module wires them together and owns the lifecycle: `start`, `shutdown` (drain within a grace period,
answer the rest), and death. The worker cannot vanish silently: an error it cannot absorb marks the engine
unhealthy (`healthy`, `fatal_reason`), fails every queued and running job with 503, stops accepting work and
calls `on_fatal(reason)` so the process can exit non-zero and be restarted; a janitor thread prunes finished
jobs on a timer and also notices a worker thread that ended any other way.

Memory is bounded by design: `/predict` jobs (`keep=False`) are forgotten when they end, uploads are dropped
once the model has encoded them (or when the job ends without starting), kept finished jobs are bounded by the
`JobStore`, and at most `max_batch_size` decoded clips wait for the encoder.

The engine's monotonic clock (queue deadlines, batch windows, the shutdown's grace period, the timing of model
calls that estimates learn from) is this module's `time.monotonic`, read at each use: a test harness may replace
this module's `time` to move it, or pass `monotonic=` to one engine.

Time-aware admission: `submit(max_wait_s=...)` gives a job a deadline; the scheduler's forecast refuses at once
(`WouldMissDeadline`, with the estimate and a Retry-After) a job that would finish after it, and drops one whose
deadline passes while it is queued. `estimate(job)` (place and ETA), `drain_s()` and `retry_after_s()` read the
same forecast. `warm_up=True` times one short generation at `start()`, so estimates exist before the first request.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .. import audio as audio_io  # noqa: F401  (tests patch `engine.audio_io.encode`, the module the encoder uses)
from ..models.base import AudioModel, GenerationParams
from .encoder import ClipEncoder
from .estimates import Forecast, StepTimes
from .events import EventHub, progress_event, queued_event
from .jobs import (
    TERMINAL,
    WORKER_LOST,
    Job,
    JobResult,
    JobStatus,
    NotAccepting,
    QueueFull,
    Refused,
    WouldMissDeadline,
    rows_of,
)
from .outcomes import SHUTTING_DOWN, Outcomes
from .scheduler import Scheduler
from .store import JobStore
from .worker import Worker

__all__ = [
    "TERMINAL",
    "WORKER_LOST",
    "Engine",
    "Job",
    "JobResult",
    "JobStatus",
    "JobStore",
    "NotAccepting",
    "QueueFull",
    "Refused",
    "Scheduler",
    "StepTimes",
    "WouldMissDeadline",
]

log = logging.getLogger("stable_audio_service.engine")
# The start-up warm-up: two short generations of this many forward passes, the second one timed.
WARM_UP_STEPS = 3
# The janitor never looks more often than this (seconds): deadlines are answered within it.
JANITOR_MIN_WAIT_S = 0.01


class _Setting:
    """An engine setting that lives on one of its parts (`Engine.max_batch_size` is the scheduler's, ...)."""

    def __init__(self, part: str, name: str) -> None:
        self.part, self.name = part, name

    def __get__(self, engine: Any, owner: type | None = None) -> Any:
        return self if engine is None else getattr(getattr(engine, self.part), self.name)

    def __set__(self, engine: Any, value: Any) -> None:
        setattr(getattr(engine, self.part), self.name, value)


class Engine:
    max_batch_size = _Setting("scheduler", "max_batch_size")
    queue_size = _Setting("scheduler", "queue_size")
    queue_timeout_s = _Setting("scheduler", "queue_timeout_s")
    batch_wait_s = _Setting("scheduler", "batch_wait_s")
    job_ttl_s = _Setting("store", "ttl_s")
    max_jobs_kept = _Setting("store", "max_kept")
    max_result_bytes = _Setting("store", "max_result_bytes")

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
        max_result_bytes: int | None = 512 * 2**20,
        prune_interval_s: float = 5.0,
        observer: Callable[[str, Job, dict], None] | None = None,
        on_fatal: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        encode_workers: int = 1,
        monotonic: Callable[[], float] | None = None,
        warm_up: bool = False,
    ) -> None:
        """`observer(what, job, info)` hears of submitted, batch, done, failed and cancelled (telemetry).
        `on_fatal(reason)` is called once, from the dying worker (or the janitor), after every queued and
        running job was failed; it should make the process exit non-zero. `clock` times the finished-job TTL
        (tests inject a fake one). `encode_workers`: threads that encode finished clips beside the worker.
        `monotonic`: the engine's clock (see the module docstring), for tests that move time by hand. `warm_up`:
        `start()` first times one short generation at the model's defaults, so the first caller with a deadline
        is judged on a measured speed (the service does; tests and the CLI, which need no estimate, do not)."""
        self.model = model
        self._monotonic = monotonic
        self.warm_up = warm_up
        self.prune_interval_s = prune_interval_s
        self.observer = observer
        self.on_fatal = on_fatal
        self._cond = threading.Condition()  # guards every part's state; notified when anything moves
        self.scheduler = Scheduler(
            max_batch_size=max_batch_size,
            queue_size=queue_size,
            queue_timeout_s=queue_timeout_s,
            batch_wait_s=batch_wait_ms / 1000,
        )
        self.store = JobStore(ttl_s=job_ttl_s, max_kept=max_jobs_kept, max_result_bytes=max_result_bytes, clock=clock)
        self.hub = EventHub(self._cond)
        self.outcomes = Outcomes(self._cond, self.store, self.hub, self._observe, retry_after=self._retry_after)
        self.encoder = ClipEncoder(
            self._cond,
            workers=encode_workers,
            max_waiting=max_batch_size,
            done=self._delivered,
            failed=self._encode_failed,
        )
        self._worker = Worker(
            model,
            self.scheduler,
            self.encoder,
            self.outcomes,
            self.hub,
            self._cond,
            clock=self._now,
            observe=self._observe,
            on_death=self._die,
        )
        self._accepting = True
        self._draining = False
        self._fatal: str | None = None
        self._thread: threading.Thread | None = None
        self._janitor: threading.Thread | None = None
        self._halt = threading.Event()
        self._wake = threading.Event()  # the janitor looks again now (a deadline was added, or the engine stops)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker (and, with `warm_up`, wait until it has timed its warm-up generation: on the worker's
        own thread, since the same calls were measured several times slower on another thread)."""
        warmed = threading.Event()
        self._thread = threading.Thread(
            target=self._worker.run,
            kwargs={"before": self._warm_up if self.warm_up else None, "started": warmed},
            name="stable-audio-engine",
            daemon=True,
        )
        self._thread.start()
        warmed.wait()
        self._janitor = threading.Thread(target=self._janitor_loop, name="stable-audio-janitor", daemon=True)
        self._janitor.start()

    @property
    def accepting(self) -> bool:
        return self._accepting and self._fatal is None and self._thread is not None and self._thread.is_alive()

    @property
    def healthy(self) -> bool:
        """False once the worker died (or its thread is gone without a clean shutdown): the process
        cannot generate any more and should be restarted. Shutting down is still healthy."""
        return self.fatal_reason is None

    @property
    def fatal_reason(self) -> str | None:
        """Why the engine is unhealthy, or None."""
        if self._fatal is not None:
            return self._fatal
        if self._thread is not None and not self._thread.is_alive() and not self._worker.stopping:
            return "the generation worker thread is gone"
        return None

    @property
    def draining(self) -> bool:
        """Shutdown has begun: no new work, but jobs can still be read and followed."""
        return self._draining

    def shutdown(self, grace_s: float = 30.0) -> None:
        """Stop taking work, let queued and running work finish within the grace period, answer the rest.

        `get` and `subscribe` keep working throughout (and after), so results that finish within
        the grace period can still be fetched."""
        end = self._now() + grace_s
        with self._cond:
            self._accepting = False
            self._draining = True
            self._worker.hurry = True
            self._cond.notify_all()
            while self._in_flight() and (left := end - self._now()) > 0:
                self._cond.wait(timeout=min(left, 0.5))
            leftovers = self.scheduler.clear()
            running = list(self._worker.running) + list(self.encoder.jobs)
            for job in running:
                job.cancel_reason = SHUTTING_DOWN
                job.cancel_requested = True
        for job in leftovers:
            self.outcomes.fail(job, SHUTTING_DOWN, 503)
        with self._cond:
            self._worker.stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():  # e.g. from on_fatal
            self._thread.join(timeout=max(1.0, end - self._now() + 5))
        self.encoder.shutdown()
        for job in running:  # still inside a long step: answer now; the worker's later end is ignored
            self.outcomes.fail(job, SHUTTING_DOWN, 503)
        self._halt.set()
        self._wake.set()

    def _die(self, reason: str) -> None:
        """Fail everything in flight, stop accepting, tell the app (once)."""
        with self._cond:
            if self._fatal is not None:
                return
            self._fatal = reason
            self._accepting = False
            self._worker.hurry = True
            # clips already decoded are still encoded and delivered (the encoder thread lives on; the
            # shutdown that follows waits for them)
            victims = [j for j in self.store.active() if j not in self.encoder.jobs]
            self.scheduler.clear()
            self._worker.running = []
            self._cond.notify_all()
        for job in victims:
            self.outcomes.fail(job, WORKER_LOST, 503)
        self._halt.set()
        self._wake.set()
        if self.on_fatal is not None:
            try:
                self.on_fatal(reason)
            except Exception:
                log.exception("on_fatal failed")

    def _janitor_loop(self) -> None:
        """Prune finished jobs on a timer (not only when work arrives), watch the worker, and drop queued jobs when
        their deadline comes (`sweep`): the worker sweeps the queue only between model calls, and a caller with a
        deadline must be answered when it passes, not when a long step or decode ends. With an injected clock
        (`monotonic=`) it leaves deadlines alone: it sleeps in real time, and time then moves only when a test says
        (the worker and explicit `sweep()` calls still apply them)."""
        next_prune = self._now() + self.prune_interval_s
        while True:
            self._wake.wait(self._janitor_wait(next_prune))
            self._wake.clear()
            if self._halt.is_set():
                return
            try:
                if self._monotonic is None:
                    self.sweep()
                if self._now() >= next_prune:
                    next_prune = self._now() + self.prune_interval_s
                    self.prune()
                    if self._fatal is None and (reason := self.fatal_reason) is not None:
                        self._die(reason)
            except Exception:
                log.exception("janitor failed")

    def _janitor_wait(self, next_prune: float) -> float:
        """Seconds until the janitor's next look: the next prune, or the next queued job's expiry if sooner."""
        with self._cond:
            now, expiry = self._now(), self.scheduler.next_expiry() if self._monotonic is None else None
        due = next_prune if expiry is None else min(next_prune, expiry)
        return max(JANITOR_MIN_WAIT_S, due - now)

    def sweep(self) -> int:
        """Drop the queued jobs that must not run now (their deadline passed or can no longer be met, or they
        waited past the queue timeout): each is failed with 503 and a Retry-After from the estimate. The worker
        does this between model calls, the janitor at each deadline; returns how many went."""
        with self._cond:
            expired = self.scheduler.expire(self._now())
            self._worker.price_expired(expired)
        self._worker.fail_expired(expired)
        return len(expired)

    # -- submitting and querying -----------------------------------------------------
    def submit(
        self,
        params: GenerationParams,
        *,
        format: str = "wav",
        client_job_id: str | None = None,
        context: Any = None,
        keep: bool = True,
        max_wait_s: float | None = None,
    ) -> Job:
        """Queue a generation. `keep=False` (for callers that wait for the result themselves, like
        `/predict`): the engine forgets the job as soon as it ends, so its result lives only as long
        as the caller's reference; `get()` finds it only while it is queued or running.

        `max_wait_s`: the caller waits this long for the result, no longer. A job estimated to finish later is
        refused at once (`WouldMissDeadline`, a `NotAccepting`), as is one whose admission would make an accepted
        job miss its deadline; a job whose deadline passes while queued is failed (503) instead of run. Every
        refusal carries `retry_after_s` from the estimate; `QueueFull` at capacity."""
        if max_wait_s is not None and not max_wait_s > 0:
            raise ValueError("max_wait_s must be positive")
        price_key = self._worker.price_key(params)  # the model's code, outside the lock
        with self._cond:
            if not self.accepting:
                if self._fatal is not None:
                    raise NotAccepting(WORKER_LOST)
                raise NotAccepting("the engine is not accepting work (shutting down)", self._retry_after())
            now = self._now()
            job = Job(
                id=uuid.uuid4().hex,
                params=params,
                format=format,
                client_job_id=client_job_id,
                context=context,
                keep=keep,
                max_wait_s=max_wait_s,
                deadline_at=None if max_wait_s is None else now + max_wait_s,
            )
            position = self.scheduler.admit(  # QueueFull at capacity, WouldMissDeadline past the deadline
                job, now, price_key=price_key, running=self._worker.snapshot(), mixed_steps=self.model.mixed_steps
            )
            if params.seed is None:  # every take's seed (seed + i) a seed a solo request may name
                params.seed = secrets.randbelow(2**32 - rows_of(params) + 1)
            self.store.add(job)
            self._worker.stamp()
            self._cond.notify_all()
        if max_wait_s is not None:
            self._wake.set()  # the janitor's next look may now be due sooner
        self.hub.publish(job, queued_event(job, position))
        self._observe("submitted", job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self.store.get(job_id)

    def release(self, job: Job) -> None:
        """The engine forgets `job` (it no longer counts against the limits and `get` no longer finds
        it); a queued or running job is forgotten when it ends. The caller's `Job` object and its
        result stay usable: memory is freed when the caller drops it."""
        with self._cond:
            self.store.release(job)

    def position(self, job: Job) -> int | None:
        """1-based place in the queue, or None once it left the queue."""
        with self._cond:
            return self.scheduler.position(job)

    def queue_depth(self) -> int:
        with self._cond:
            return len(self.scheduler)

    # -- estimates -------------------------------------------------------------------
    def estimate(self, job: Job) -> tuple[int | None, float | None]:
        """(`job`'s place in the queue or None, its estimated seconds to the result or None), as of now; every
        queued and running job's `position` and `eta_s` are refreshed on the way."""
        with self._cond:
            if job.ended:
                return None, None
            return self.scheduler.position(job), self._worker.stamp().eta(job.id)

    def forecast(self) -> Forecast:
        """When each queued and running job starts and finishes, in the engine clock (see `Scheduler.forecast`)."""
        with self._cond:
            return self._worker.forecast()

    def drain_s(self) -> float | None:
        """Estimated seconds until everything queued and running now is done (0 when idle); None before anything
        was measured (or when part of the work is priced by no measurement at all)."""
        with self._cond:
            fc = self._worker.forecast()
            if not self.scheduler.costs.known or fc.guessed:
                return None
            return fc.drain_s()

    def retry_after_s(self) -> float:
        """Seconds until a new request could be queued (the queue's head starts) or, with nothing queued, until
        the running work is done; at least 1. What a 429 or 503 says when no job-specific estimate applies."""
        with self._cond:
            return self._retry_after()

    def _retry_after(self) -> float:
        return self.scheduler.retry_after(self._now(), self._worker.snapshot(), mixed_steps=self.model.mixed_steps)

    def running_count(self) -> int:
        """Jobs started and not ended: denoising, decoding, or waiting for the audio encoder."""
        with self._cond:
            return len(self._worker.running) + len(self.encoder.jobs)

    def running_jobs(self) -> list[Job]:
        """The jobs `running_count` counts."""
        with self._cond:
            return list(self._worker.running) + list(self.encoder.jobs)

    def kept_count(self) -> int:
        """Finished jobs kept for `get`."""
        with self._cond:
            return self.store.kept_count()

    def result_bytes(self) -> int:
        """Bytes of encoded audio held by kept finished jobs (bounded by `max_result_bytes`)."""
        with self._cond:
            return self.store.result_bytes()

    @property
    def stats(self) -> dict[str, int]:
        """Counters since start: forward passes, batches, requests, largest batch, joiners, results evicted."""
        with self._cond:
            return {**self._worker.stats, "results_evicted": self.store.evicted}

    def cancel(self, job_id: str) -> Job | None:
        """Queued: removed at once. Running: leaves its batch before the next step, or, if it is
        already decoding, ends cancelled when the decode returns (its result is discarded)."""
        with self._cond:
            job = self.store.get(job_id)
            if job is None or job.ended:
                return job
            job.cancel_requested = True
            queued = self.scheduler.withdraw(job)
        if queued:
            self.outcomes.cancelled(job)
        return job

    def prune(self) -> int:
        """Evict finished jobs past the TTL, the count or the byte budget; returns how many went."""
        with self._cond:
            return self.store.prune()

    # -- subscriptions (asyncio side) ------------------------------------------------
    def subscribe(self, job: Job) -> asyncio.Queue:
        """An asyncio queue of this job's events, starting with a snapshot of its state."""
        with self._cond:
            if not job.ended:
                self._worker.stamp()  # the first event carries a fresh estimate
            return self.hub.subscribe(job, progress_event(job, self.scheduler.position(job)))

    def unsubscribe(self, job: Job, queue: asyncio.Queue) -> None:
        self.hub.unsubscribe(job, queue)

    # -- compatibility views of the parts (read them under `_cond`) -------------------
    @property
    def _running(self) -> list[Job]:
        """The worker's running batch (started, not yet decoded)."""
        return self._worker.running

    @property
    def _jobs(self) -> dict[str, Job]:
        """Every job `get` finds, by id."""
        return self.store.jobs

    # -- internals -------------------------------------------------------------------
    def _in_flight(self) -> bool:
        return bool(len(self.scheduler) or self._worker.running or self.encoder.jobs)

    def _now(self) -> float:
        """The engine's monotonic clock (see the module docstring)."""
        return self._monotonic() if self._monotonic is not None else time.monotonic()

    def _warm_up(self) -> None:
        """Time a short generation at the model's default parameters (see `Worker.warm_up`; worker thread)."""
        limits = self.model.limits
        params = GenerationParams(
            prompt="warm-up",
            duration=float(limits.duration.default),
            guidance_scale=float(limits.guidance_scale.default),
            num_inference_steps=int(limits.num_inference_steps.default),
            seed=0,
        )
        try:
            self._worker.warm_up(params, WARM_UP_STEPS)
        except Exception:
            log.warning("the estimate warm-up failed; estimates start with the first request", exc_info=True)

    def _delivered(self, job: Job, result: JobResult) -> None:
        """The encoder delivered `job`'s file: learn the tail (decode to delivery), then end the job."""
        with self._cond:
            decoded_at = self._worker.decoded_at.pop(job.id, None)
            if decoded_at is not None:
                self.scheduler.costs.observe_tail(self._now() - decoded_at)
        self.outcomes.done(job, result)

    def _encode_failed(self, job: Job, exc: BaseException) -> None:
        with self._cond:
            self._worker.decoded_at.pop(job.id, None)
        self.outcomes.fail_for(job, exc)

    def _observe(self, what: str, job: Job, **info: Any) -> None:
        if self.observer is not None:
            try:
                self.observer(what, job, info)
            except Exception:  # telemetry must never break generation
                log.exception("observer failed on %s", what)
