"""The one owner of the model: a bounded queue, dynamic batching, jobs, progress and cancel.

A single worker thread takes the oldest queued request, waits `batch_wait_ms` for
others that can share its forward passes (same model batch key: step count and latent
window), and runs them together one denoising step at a time. Between steps it drops
cancelled requests, publishes progress and expires requests that waited too long.
Batching is continuous: a request that finished its steps is decoded and leaves the batch at
once, and when the model declares `mixed_steps` (one forward pass may serve rows at different
steps, as Stable Audio 3's per-row timesteps allow) queued requests with the batch's key join
it at the next step boundary instead of waiting for it to drain.
The HTTP layer only submits jobs and awaits their events (vLLM-style split).

Memory is bounded by design, not by luck:

- a job submitted with `keep=False` (what `/predict` uses) is forgotten by the engine the
  moment it ends; only the caller's `Job` reference keeps its result alive;
- a job's uploads (`params.init_audio`, `params.inpaint_audio`) are dropped once `model.start`
  has encoded them (a family keeps in its state whatever part it still needs), or when the job
  ends without starting;
- finished jobs kept for `GET /jobs/{id}` are bounded by count, TTL and total result bytes
  (oldest evicted first), checked by a janitor thread every `prune_interval_s`.

Audio encoding (WAV/FLAC/OGG/MP3) runs on its own thread (`encode_workers`), so a long clip's encode
does not hold up the next denoising steps of its batch mates or of the next batch; at most
`max_batch_size` decoded clips wait for it (the worker waits beyond that), so the memory this takes
is bounded too. A clip already decoded when the worker dies is still encoded and delivered.

The worker cannot vanish silently: its whole loop is guarded; an error it cannot absorb marks
the engine unhealthy (`healthy`, `fatal_reason`), fails every queued and running job with 503,
stops accepting work and calls `on_fatal(reason)` so the process can exit non-zero and be
restarted. The janitor also notices a worker thread that ended any other way.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from . import audio as audio_io
from .models.base import AudioModel, GenerationError, GenerationParams, GenerationState, InvalidRequest

log = logging.getLogger("stable_audio_service.engine")

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
    keep: bool = True  # False: the engine forgets the job when it ends (the caller holds it)
    batch_key: tuple | None = None  # the model's batch key, computed once by the worker
    kept_since: float | None = None  # engine clock when it joined the finished jobs (TTL)
    subscribers: list = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # (name, start_ns, end_ns, attributes) in time.time_ns() clock, for telemetry spans
    phases: list[tuple[str, int, int, dict]] = field(default_factory=list)

    def phase(self, name: str, start_ns: int, end_ns: int, **attrs: Any) -> None:
        self.phases.append((name, start_ns, end_ns, attrs))
        self.timings[f"{name}_s"] = round((end_ns - start_ns) / 1e9, 4)

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
        max_result_bytes: int | None = 512 * 2**20,
        prune_interval_s: float = 5.0,
        observer: Callable[[str, Job, dict], None] | None = None,
        on_fatal: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        encode_workers: int = 1,
    ) -> None:
        """`on_fatal(reason)` is called once, from the dying worker (or the janitor), after every
        queued and running job was failed; it should make the process exit non-zero.
        `clock` times the finished-job TTL (tests inject a fake one). `encode_workers`: threads that
        encode finished clips to their audio format, beside the worker (one: clips end in the order they
        finished denoising, and the encoder takes one core at most from the model's threads).
        """
        self.model = model
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self.job_ttl_s = job_ttl_s
        self.max_jobs_kept = max_jobs_kept
        self.max_result_bytes = max_result_bytes
        self.prune_interval_s = prune_interval_s
        self.observer = observer
        self.on_fatal = on_fatal
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: list[Job] = []
        self._running: list[Job] = []
        self._encoding: list[Job] = []  # decoded, waiting for or inside the audio encoder
        self._encoder = ThreadPoolExecutor(max_workers=max(1, encode_workers), thread_name_prefix="stable-audio-encode")
        self._encode_slots = threading.BoundedSemaphore(max(1, max_batch_size))
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # every job get() can find
        self._finished: OrderedDict[str, Job] = OrderedDict()  # the kept finished ones, oldest first
        self._accepting = True
        self._draining = False
        self._stop = False
        self._fatal: str | None = None
        self._thread: threading.Thread | None = None
        self._janitor: threading.Thread | None = None
        self._halt = threading.Event()
        self.stats = {
            "forward_passes": 0,
            "batches": 0,
            "requests": 0,
            "max_batch_seen": 0,
            "results_evicted": 0,
            "joined": 0,  # requests that joined a batch already running (continuous batching)
        }

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._worker, name="stable-audio-engine", daemon=True)
        self._thread.start()
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
        if self._thread is not None and not self._thread.is_alive() and not self._stop:
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
        end = time.monotonic() + grace_s
        with self._cond:
            self._accepting = False
            self._draining = True
            self._cond.notify_all()
            while (self._pending or self._running or self._encoding) and (left := end - time.monotonic()) > 0:
                self._cond.wait(timeout=min(left, 0.5))
            leftovers = list(self._pending)
            self._pending.clear()
            running = list(self._running) + list(self._encoding)
            for job in running:
                job.cancel_reason = "the service is shutting down"
                job.cancel_requested = True
        for job in leftovers:
            self._fail(job, "the service is shutting down", 503)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():  # e.g. from on_fatal
            self._thread.join(timeout=max(1.0, end - time.monotonic() + 5))
        self._encoder.shutdown(wait=False, cancel_futures=True)
        for job in running:  # still inside a long step: answer now; the worker's later end is ignored
            self._fail(job, "the service is shutting down", 503)
        self._halt.set()

    # -- submitting and querying -----------------------------------------------------
    def submit(
        self,
        params: GenerationParams,
        *,
        format: str = "wav",
        client_job_id: str | None = None,
        context: Any = None,
        keep: bool = True,
    ) -> Job:
        """Queue a generation. `keep=False` (for callers that wait for the result themselves, like
        `/predict`): the engine forgets the job as soon as it ends, so its result lives only as long
        as the caller's reference; `get()` finds it only while it is queued or running."""
        with self._cond:
            if not self.accepting:
                if self._fatal is not None:
                    raise NotAccepting(WORKER_LOST)
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
                keep=keep,
            )
            self._jobs[job.id] = job
            self._pending.append(job)
            self._cond.notify_all()
            position = len(self._pending)
        self._publish(job, {"type": "queued", "position": position})
        self._observe("submitted", job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def release(self, job: Job) -> None:
        """The engine forgets `job` (it no longer counts against the limits and `get` no longer finds
        it); a queued or running job is forgotten when it ends. The caller's `Job` object and its
        result stay usable: memory is freed when the caller drops it."""
        with self._cond:
            job.keep = False
            if job.status in TERMINAL:
                self._jobs.pop(job.id, None)
                self._finished.pop(job.id, None)

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
            return len(self._running) + len(self._encoding)

    def kept_count(self) -> int:
        """Finished jobs kept for `get`."""
        with self._cond:
            return len(self._finished)

    def result_bytes(self) -> int:
        """Bytes of encoded audio held by kept finished jobs (bounded by `max_result_bytes`)."""
        with self._cond:
            return sum(j.result_bytes for j in self._finished.values())

    def cancel(self, job_id: str) -> Job | None:
        """Queued: removed at once. Running: leaves its batch before the next step, or, if it is
        already decoding, ends cancelled when the decode returns (its result is discarded)."""
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

    def prune(self) -> int:
        """Evict finished jobs past the TTL, the count or the byte budget; returns how many went."""
        with self._cond:
            return self._prune_locked()

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
    def _end(
        self,
        job: Job,
        status: JobStatus,
        error: str | None = None,
        code: int | None = None,
        result: JobResult | None = None,
    ) -> None:
        """The one place a job becomes terminal (once; later calls are ignored). A job that
        finished while a cancel was pending ends cancelled (or 503 when the service stopped it)."""
        with self._cond:
            if job.status in TERMINAL:
                return
            if status == JobStatus.done and job.cancel_requested:
                status, result = JobStatus.failed if job.cancel_reason else JobStatus.cancelled, None
                error, code = (job.cancel_reason, 503) if job.cancel_reason else ("cancelled", 499)
            job.status = status
            job.error = error
            job.error_status = code
            job.result = result if status == JobStatus.done else None
            job.finished = time.time()
            job.timings["total_s"] = round(job.finished - job.created, 4)
            _drop_uploads(job.params)
            if job.keep:
                job.kept_since = self._clock()
                self._finished[job.id] = job
            else:
                self._jobs.pop(job.id, None)
            self._prune_locked()
            self._cond.notify_all()
        self._publish(job, self._terminal_event(job))
        self._observe(job.status.value, job)

    def _fail(self, job: Job, error: str, code: int) -> None:
        self._end(job, JobStatus.failed, error, code)

    def _finish_cancelled(self, job: Job) -> None:
        if job.cancel_reason:
            self._fail(job, job.cancel_reason, 503)
        else:
            self._end(job, JobStatus.cancelled, "cancelled", 499)

    def _forget_locked(self, job: Job) -> None:
        self._finished.pop(job.id, None)
        self._jobs.pop(job.id, None)
        self.stats["results_evicted"] += 1

    def _prune_locked(self) -> int:
        before = len(self._finished)
        now = self._clock()
        for job in list(self._finished.values()):  # oldest first: stop at the first one still fresh
            if job.kept_since is not None and now - job.kept_since <= self.job_ttl_s:
                break
            self._forget_locked(job)
        while len(self._finished) > self.max_jobs_kept:
            self._forget_locked(next(iter(self._finished.values())))
        if self.max_result_bytes is not None:
            total = sum(j.result_bytes for j in self._finished.values())
            newest = next(reversed(self._finished.values()), None)
            for job in list(self._finished.values()):
                if total <= self.max_result_bytes:
                    break
                if job is newest:  # a job never finishes straight into a 404
                    break
                if job.result_bytes:
                    total -= job.result_bytes
                    self._forget_locked(job)
        return before - len(self._finished)

    # -- the worker ------------------------------------------------------------------
    def _expire_locked(self) -> list[Job]:
        now = time.monotonic()
        expired = [j for j in self._pending if j.deadline <= now]
        for job in expired:
            self._pending.remove(job)
        return expired

    def _key_pending_locked(self) -> list[tuple[Job, Exception]]:
        """Give every queued job its batch key; a job whose key cannot be computed leaves the queue."""
        broken = []
        for job in list(self._pending):
            if job.batch_key is None:
                try:
                    job.batch_key = tuple(self.model.batch_key(job.params))
                except Exception as exc:
                    self._pending.remove(job)
                    broken.append((job, exc))
        return broken

    def _take_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait(timeout=0.5)
            if self._stop and not self._pending:
                return None
            expired = self._expire_locked()
            broken = self._key_pending_locked()
        for job in expired:
            self._fail(job, f"waited in the queue longer than {self.queue_timeout_s:g}s", 503)
        for job, exc in broken:
            self._fail_for(job, exc)
        if broken:
            return []
        with self._cond:
            if not self._pending:
                return []
            key = self._pending[0].batch_key
            waited_until = time.monotonic() + self.batch_wait_s
            while True:
                broken = self._key_pending_locked()
                if broken or not self._pending:
                    break
                same = [j for j in self._pending if j.batch_key == key]
                remaining = waited_until - time.monotonic()
                if len(same) >= self.max_batch_size or remaining <= 0 or not self._accepting:
                    break
                self._cond.wait(timeout=remaining)
            batch = [j for j in self._pending if j.batch_key == key][: self.max_batch_size]
            now_ns = time.time_ns()
            for job in batch:
                self._pending.remove(job)
                job.status = JobStatus.running
                job.started = now_ns / 1e9
                job.batch_size = len(batch)
                job.phase("queue", int(job.created * 1e9), now_ns, batch_size=len(batch))
            self._running = list(batch)
            waiting = list(self._pending)
        for job, exc in broken:
            self._fail_for(job, exc)
        for pos, job in enumerate(waiting, start=1):
            self._publish(job, {"type": "queued", "position": pos})
        return batch

    def _worker(self) -> None:
        """The whole loop is guarded: a batch's errors fail that batch; anything else is fatal."""
        try:
            while True:
                batch = self._take_batch()
                if batch is None:
                    return
                if batch:
                    try:
                        self._run_batch(batch)
                    except Exception:  # the worker must survive anything a batch can raise
                        log.exception("batch failed unexpectedly")
                        with self._cond:
                            victims = [  # joiners too, not the ones already handed to the encoder
                                j for j in batch + self._running if j not in self._encoding
                            ]
                        for job in victims:
                            self._fail(job, "internal error in the generation worker", 500)
                    finally:
                        with self._cond:
                            self._running = []
                            self._cond.notify_all()
        except BaseException as exc:
            log.critical("the generation worker died", exc_info=exc)
            self._die(f"the generation worker died ({type(exc).__name__}: {_first_line(exc)})")

    def _die(self, reason: str) -> None:
        """Fail everything in flight, stop accepting, tell the app (once)."""
        with self._cond:
            if self._fatal is not None:
                return
            self._fatal = reason
            self._accepting = False
            # clips already decoded are still encoded and delivered (the encoder thread lives on; the
            # shutdown that follows waits for them)
            victims = [j for j in self._jobs.values() if j.status not in TERMINAL and j not in self._encoding]
            self._pending.clear()
            self._running = []
            self._cond.notify_all()
        for job in victims:
            self._fail(job, WORKER_LOST, 503)
        self._halt.set()
        if self.on_fatal is not None:
            try:
                self.on_fatal(reason)
            except Exception:
                log.exception("on_fatal failed")

    def _janitor_loop(self) -> None:
        """Prune finished jobs on a timer (not only when work arrives) and watch the worker."""
        while not self._halt.wait(self.prune_interval_s):
            try:
                self.prune()
                if self._fatal is None and (reason := self.fatal_reason) is not None:
                    self._die(reason)
            except Exception:
                log.exception("janitor failed")

    def _run_batch(self, batch: list[Job]) -> None:
        """Run `batch` one step at a time until every request in it has ended (continuous batching).

        After every forward pass the requests that finished are decoded and leave, and, when the model can serve
        rows at different steps in one forward pass (`mixed_steps`), queued requests with the batch's key join
        it up to `max_batch_size` without waiting for it to drain. A job never overtakes an older queued job of
        another key: joining stops at the first one, so the batch then drains and that job runs next."""
        model = self.model
        self.stats["batches"] += 1
        self._observe("batch", batch[0], size=len(batch))
        active: list[tuple[Job, GenerationState, int]] = []  # (job, state, ns when its denoising began)
        self._start_jobs(batch, active)
        key = batch[0].batch_key
        mixed = bool(getattr(model, "mixed_steps", False))
        while active:
            keep = []
            for job, state, t0 in active:
                if job.cancel_requested:
                    self._finish_cancelled(job)
                    _release_state(model, state)
                else:
                    keep.append((job, state, t0))
            active = keep
            stepping = [entry for entry in active if not entry[1].finished]
            if stepping:
                try:
                    model.step([s for _, s, _ in stepping])
                    self.stats["forward_passes"] += 1
                except Exception as exc:
                    for job, state, _ in active:
                        self._fail_for(job, exc)
                        _release_state(model, state)
                    active = []
                    break
                for job, state, _ in stepping:
                    job.step = state.step
                    self._publish(job, {"type": "step", "step": state.step, "total": state.total_steps})
                self._sweep_expired()
            done = [entry for entry in active if entry[1].finished]
            active = [entry for entry in active if not entry[1].finished]
            self._finish_jobs(done, len(active))
            if active and mixed:
                joining = self._take_joiners(key, self.max_batch_size - len(active))
                if joining:
                    self._start_jobs(joining, active)
                    size = len(active)
                    for job, _, _ in active:
                        job.batch_size = max(job.batch_size, size)
                    self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], size)
                    self.stats["joined"] += len(joining)

    def _start_jobs(self, jobs: list[Job], active: list[tuple[Job, GenerationState, int]]) -> None:
        """`model.start` each job (text and audio encoding, initial noise) and add it to `active`."""
        model = self.model
        self.stats["requests"] += len(jobs)
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(jobs) + len(active))
        for job in jobs:
            if job.cancel_requested:
                self._finish_cancelled(job)
                continue
            try:
                t0 = time.time_ns()
                state = model.start(job.params)
                t1 = time.time_ns()
                job.phase("encode", t0, t1)
                job.total_steps = state.total_steps
                _drop_uploads(job.params)
                active.append((job, state, t1))
            except Exception as exc:
                self._fail_for(job, exc)

    def _finish_jobs(self, done: list[tuple[Job, GenerationState, int]], still_running: int) -> None:
        """Decode the requests that finished their steps and hand them to the encoder; each leaves the batch."""
        model = self.model
        t_denoised = time.time_ns()
        for job, state, t_denoise in done:
            job.phase("denoise", t_denoise, t_denoised, steps=state.total_steps, batch_size=job.batch_size)
            samples = None
            try:
                if job.cancel_requested:  # cancelled while a batch mate was decoding
                    self._finish_cancelled(job)
                    continue
                t0 = time.time_ns()
                samples = model.finish(state)
                t1 = time.time_ns()
                job.phase("decode", t0, t1)
                if job.cancel_requested:  # cancelled during its own decode: no result is kept
                    self._finish_cancelled(job)
                    samples = None
            except Exception as exc:
                self._fail_for(job, exc)
                samples = None
            finally:
                _release_state(model, state)
                with self._cond:
                    if job in self._running:
                        self._running.remove(job)
                    if samples is not None:
                        self._encoding.append(job)
            if samples is not None:
                self._encode_slots.acquire()  # bounded: the worker waits while the encoder is that far behind
                try:
                    self._encoder.submit(self._encode, job, samples, model.sample_rate, t1)
                except RuntimeError:  # the encoder was shut down (the service is stopping)
                    self._encode_slots.release()
                    self._encoded(job)
                    self._fail(job, "the service is shutting down", 503)

    def _encode(self, job: Job, samples: Any, sample_rate: int, t_decoded: int) -> None:
        """Encoder thread: the clip to its audio format, then the job's end. Never raises."""
        try:
            data = audio_io.encode(samples, sample_rate, job.format)
            job.phase("audio_encode", t_decoded, time.time_ns(), format=job.format)
            result = JobResult(data, job.format, sample_rate, samples.shape[0], samples.shape[1])
            del samples
            self._end(job, JobStatus.done, result=result)
        except Exception as exc:
            self._fail_for(job, exc)
        finally:
            self._encode_slots.release()
            self._encoded(job)

    def _encoded(self, job: Job) -> None:
        with self._cond:
            if job in self._encoding:
                self._encoding.remove(job)
            self._cond.notify_all()

    def _take_joiners(self, key: tuple | None, room: int) -> list[Job]:
        """Queued jobs with the running batch's key, oldest first, that may join it now (see `_run_batch`)."""
        if room <= 0:
            return []
        with self._cond:
            if not self._pending or self._stop:
                return []
            expired = self._expire_locked()
            broken = self._key_pending_locked()
            joining: list[Job] = []
            for job in self._pending:
                if job.batch_key != key or len(joining) >= room:
                    break
                joining.append(job)
            now_ns = time.time_ns()
            for job in joining:
                self._pending.remove(job)
                job.status = JobStatus.running
                job.started = now_ns / 1e9
                job.phase("queue", int(job.created * 1e9), now_ns, batch_size=len(self._running) + len(joining))
            self._running.extend(joining)
            waiting = list(self._pending) if joining else []
        for job in expired:
            self._fail(job, f"waited in the queue longer than {self.queue_timeout_s:g}s", 503)
        for job, exc in broken:
            self._fail_for(job, exc)
        for pos, job in enumerate(waiting, start=1):
            self._publish(job, {"type": "queued", "position": pos})
        return joining

    def _sweep_expired(self) -> None:
        with self._cond:
            expired = self._expire_locked()
        for job in expired:
            self._fail(job, f"waited in the queue longer than {self.queue_timeout_s:g}s", 503)

    def _fail_for(self, job: Job, exc: BaseException) -> None:
        if _is_oom(exc):
            _release_device_memory()
            self._fail(job, "out of memory during generation; retry later or ask for a shorter clip", 503)
        elif isinstance(exc, InvalidRequest):
            self._fail(job, str(exc), 422)
        elif isinstance(exc, (GenerationError, audio_io.EncodeError)):
            self._fail(job, str(exc), 500)
        else:
            log.error("generation failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            self._fail(job, f"generation failed ({type(exc).__name__})", 500)


def _drop_uploads(params: GenerationParams) -> None:
    """Free a job's uploaded audio: called once `model.start` has encoded it (a family that needs part
    of a source later, like sa3's inpainting splice, keeps that part in its state) and when the job ends."""
    drop = getattr(params, "drop_uploads", None)
    if drop is not None:
        drop()
    else:
        params.init_audio = None
        params.inpaint_audio = None


def _release_state(model: AudioModel, state: GenerationState) -> None:
    """Let a model free a state's buffers early when it offers `release(state)` (optional)."""
    release = getattr(model, "release", None)
    if release is not None:
        try:
            release(state)
        except Exception:
            log.exception("model.release failed")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no message"


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _release_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
