"""How a job ends: the one place a job becomes terminal, and how an exception maps to an HTTP status.

Every path that ends a job (done, a model error, a cancel, an expired deadline, a shutdown, a dead worker)
goes through `Outcomes.end`, so the invariants hold in one place: a job ends once (later calls are ignored),
a result that arrives after a cancel is discarded, uploads are dropped, the job store keeps or forgets it,
subscribers get the terminal event and the observer (telemetry) hears of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .. import audio as audio_io
from ..models.common import GenerationError, InvalidRequest
from .events import EventHub, terminal_event
from .jobs import Job, JobResult, JobStatus
from .store import JobStore

log = logging.getLogger("stable_audio_service.engine")

SHUTTING_DOWN = "the service is shutting down"
OUT_OF_MEMORY = "out of memory during generation; retry later or ask for a shorter clip"


class Outcomes:
    def __init__(
        self,
        cond: threading.Condition,
        store: JobStore,
        hub: EventHub,
        observe: Callable[..., None],
        retry_after: Callable[[], float] | None = None,
    ) -> None:
        """`cond`: the engine's lock, notified whenever a job ends. `observe(what, job, **info)`: the engine's
        observer call (never raises). `retry_after()`: seconds until a retry may succeed, from the engine's
        estimate (called under `cond`), for a 503 that has no more specific one (out of memory, shutting down)."""
        self._cond = cond
        self._store = store
        self._hub = hub
        self._observe = observe
        self._retry_after = retry_after

    def end(
        self,
        job: Job,
        status: JobStatus,
        error: str | None = None,
        code: int | None = None,
        result: JobResult | None = None,
    ) -> None:
        """Make `job` terminal (once; later calls are ignored). A job that finished while a cancel was pending
        ends cancelled (or 503 when the service stopped it)."""
        with self._cond:
            if job.ended:
                return
            if status == JobStatus.done and job.cancel_requested:
                status, result = JobStatus.failed if job.cancel_reason else JobStatus.cancelled, None
                error, code = (job.cancel_reason, 503) if job.cancel_reason else ("cancelled", 499)
            job.status = status
            job.error = error
            job.error_status = code
            if code == 503 and job.retry_after_s is None and self._retry_after is not None:
                job.retry_after_s = self._retry_after()
            job.result = result if status == JobStatus.done else None
            job.finished = time.time()
            job.timings["total_s"] = round(job.finished - job.created, 4)
            job.params.drop_uploads()
            self._store.ended(job)
            self._cond.notify_all()
        self._hub.publish(job, terminal_event(job))
        self._observe(job.status.value, job)

    def done(self, job: Job, result: JobResult) -> None:
        self.end(job, JobStatus.done, result=result)

    def fail(self, job: Job, error: str, code: int) -> None:
        self.end(job, JobStatus.failed, error, code)

    def cancelled(self, job: Job) -> None:
        """End a job whose cancel was requested: by the client (499), or by the service (503 with its reason)."""
        if job.cancel_reason:
            self.fail(job, job.cancel_reason, 503)
        else:
            self.end(job, JobStatus.cancelled, "cancelled", 499)

    def fail_for(self, job: Job, exc: BaseException) -> None:
        """Fail `job` because of `exc`: out of memory 503, the client's mistake 422, anything else 500."""
        if _is_oom(exc):
            _release_device_memory()
            self.fail(job, OUT_OF_MEMORY, 503)
        elif isinstance(exc, InvalidRequest):
            self.fail(job, str(exc), 422)
        elif isinstance(exc, (GenerationError, audio_io.EncodeError)):
            self.fail(job, str(exc), 500)
        else:
            log.error("generation failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            self.fail(job, f"generation failed ({type(exc).__name__})", 500)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _release_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
