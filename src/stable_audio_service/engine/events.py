"""Per-job events to asyncio subscribers: the one place the worker's threads hand anything to an event loop.

Events are produced on the worker and encoder threads and consumed by coroutines (SSE streams, `/predict`
waiting for its job, the CLI's progress bar), each on its own loop. A subscriber gets an `asyncio.Queue` that
starts with a snapshot of the job (so joining late loses nothing that matters), then every later event,
delivered with `loop.call_soon_threadsafe`; a terminal event is the last one and ends the subscription.

Event shapes: `{"type": "queued", "position", "eta_s"}`, `{"type": "step", "step", "total", "eta_s"}`, then one of
`{"type": "done", "timings"}`, `{"type": "cancelled"}`, `{"type": "failed", "error", "status"}` (with
`retry_after_s` when a 503 says when to retry). `eta_s` is the estimated seconds to the result (null while the
engine has no measured speed yet).
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import AbstractContextManager
from typing import Any

from .jobs import Job, JobStatus

TERMINAL_EVENTS = ("done", "failed", "cancelled")


def terminal_event(job: Job) -> dict[str, Any]:
    if job.status == JobStatus.done:
        return {"type": "done", "timings": dict(job.timings)}
    if job.status == JobStatus.cancelled:
        return {"type": "cancelled"}
    event: dict[str, Any] = {"type": "failed", "error": job.error, "status": job.error_status}
    if job.retry_after_s is not None and job.error_status == 503:
        event["retry_after_s"] = job.retry_after_s
    return event


def progress_event(job: Job, position: int | None) -> dict[str, Any]:
    """Where `job` stands now, as the event a new subscriber starts with (`position`: its place if queued)."""
    if job.status == JobStatus.queued:
        return queued_event(job, position)
    if job.status == JobStatus.running:
        return {"type": "step", "step": job.step, "total": job.total_steps, "eta_s": eta(job)}
    return terminal_event(job)


def queued_event(job: Job, position: int | None) -> dict[str, Any]:
    """A queued job's place and ETA; the engine refreshes `job.eta_s` right before it publishes one."""
    return {"type": "queued", "position": position, "eta_s": None if job.eta_s is None else round(job.eta_s, 2)}


def eta(job: Job) -> float | None:
    """The job's estimated seconds to its result as of now (its last estimate, aged), rounded for a display; None
    without an estimate."""
    remaining = job.remaining_s()
    return None if remaining is None else round(remaining, 2)


class EventHub:
    """Subscribers live on `job.subscribers`, guarded by `lock` (the engine's, so a snapshot taken under it is
    consistent with the job's state transitions)."""

    def __init__(self, lock: AbstractContextManager | None = None) -> None:
        self._lock = lock if lock is not None else threading.RLock()

    def subscribe(self, job: Job, first: dict[str, Any]) -> asyncio.Queue:
        """A queue of `job`'s events on the running loop, starting with `first` (compute it under the lock, from
        the same state). A job that has ended gets only that."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            queue.put_nowait(first)
            if not job.ended:
                job.subscribers.append((loop, queue))
        return queue

    def unsubscribe(self, job: Job, queue: asyncio.Queue) -> None:
        with self._lock:
            job.subscribers = [(lp, q) for lp, q in job.subscribers if q is not queue]

    def followed(self, job: Job) -> bool:
        """Someone is subscribed to `job`."""
        with self._lock:
            return bool(job.subscribers)

    def publish(self, job: Job, event: dict[str, Any]) -> None:
        """Deliver `event` to `job`'s subscribers, from any thread; a terminal event also ends the subscriptions.
        Call it without holding other locks a subscriber's loop might need."""
        with self._lock:
            subs = list(job.subscribers)
            if event["type"] in TERMINAL_EVENTS:
                job.subscribers.clear()
        for loop, queue in subs:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # that event loop is closed; nobody is listening
                pass

    def publish_positions(self, waiting: list[Job]) -> None:
        """Tell every queued job its place (`waiting` in queue order) after the queue moved."""
        for pos, job in enumerate(waiting, start=1):
            self.publish(job, queued_event(job, pos))
