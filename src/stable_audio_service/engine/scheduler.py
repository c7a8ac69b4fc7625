"""The batching policy, as a pure function of the queue: which queued jobs run next, and which may join.

Kept free of threads, locks and clocks (every time is passed in as `now`) so that the policy can be read and
tested on plain data; the worker (`worker.py`) owns the waiting and the model calls. The rules:

- the queue is first come, first served, bounded by `queue_size`; a job waits at most `queue_timeout_s`
  (`expire` hands back the ones past their deadline);
- jobs can share a forward pass only when the model gives them equal batch keys (`assign_keys`);
- a new batch is formed around the oldest job: it waits up to `batch_wait_s` for others of its key, or until
  `max_batch_size` of them are queued, then takes up to that many of its key from anywhere in the queue
  (they share the oldest job's passes, so nobody waits longer for them);
- a running batch that can take rows at different steps may be joined by queued jobs of its key, but only by
  the ones at the head of the queue: joining stops at the first job of another key, which then runs next
  once the batch drains (a batch kept alive by joiners must not starve an older job).

Both selections are one routine (`_select`); only whether a job of another key may be overtaken differs.

The scheduler also knows every queued job's place, deadline and key, and when the forming batch will go: the
place for wait estimates, ETAs and deadline-aware choices (e.g. a per-(model, batch shape) step time learned
from the worker's forward passes) to live when they are built.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from ..models.base import GenerationParams
from .jobs import Job, QueueFull


@dataclass
class Ticket:
    """A queued job as the scheduler sees it."""

    job: Job
    deadline: float  # the `now` clock's time after which it is answered 503 instead of run
    key: Hashable | None = None  # the model's batch key, computed lazily by `assign_keys`


@dataclass(frozen=True)
class Plan:
    """`next_batch`'s answer: run `jobs` (of `key`) now, or ask again in `wait_s` seconds."""

    jobs: list[Job] = field(default_factory=list)
    key: Hashable | None = None
    wait_s: float = 0.0

    @property
    def ready(self) -> bool:
        return self.wait_s <= 0


class Scheduler:
    """The queue and the batching policy. Not thread-safe: the engine calls it under its lock."""

    def __init__(
        self,
        *,
        max_batch_size: int = 4,
        queue_size: int = 64,
        queue_timeout_s: float = 900.0,
        batch_wait_s: float = 0.02,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self.batch_wait_s = batch_wait_s
        self._queue: list[Ticket] = []
        self._forming: tuple[Hashable, float] | None = None  # (key, send-by time) of the batch being formed

    # -- the queue -------------------------------------------------------------------
    def admit(self, job: Job, now: float) -> int:
        """Queue `job` last; returns its 1-based position. Raises `QueueFull` at capacity."""
        if len(self._queue) >= self.queue_size:
            raise QueueFull(f"queue full ({self.queue_size} waiting)")
        self._queue.append(Ticket(job, deadline=now + self.queue_timeout_s))
        return len(self._queue)

    def withdraw(self, job: Job) -> bool:
        """Take `job` out of the queue (cancelled); False when it was not queued."""
        for i, ticket in enumerate(self._queue):
            if ticket.job is job:
                del self._queue[i]
                return True
        return False

    def clear(self) -> list[Job]:
        """Empty the queue; returns what was in it, oldest first."""
        jobs = self.queued()
        self._queue.clear()
        self._forming = None
        return jobs

    def __len__(self) -> int:
        return len(self._queue)

    def queued(self) -> list[Job]:
        """The queued jobs in queue order (a job's position is its index + 1)."""
        return [t.job for t in self._queue]

    def position(self, job: Job) -> int | None:
        """1-based place in the queue, or None when it is not queued."""
        for i, ticket in enumerate(self._queue, start=1):
            if ticket.job is job:
                return i
        return None

    def deadline(self, job: Job) -> float | None:
        """When `job` stops waiting (in the `now` clock), or None when it is not queued."""
        ticket = self._ticket(job)
        return ticket.deadline if ticket is not None else None

    # -- housekeeping ----------------------------------------------------------------
    def expire(self, now: float) -> list[Job]:
        """Remove and return the jobs whose deadline has come."""
        expired = [t for t in self._queue if t.deadline <= now]
        for ticket in expired:
            self._queue.remove(ticket)
        return [t.job for t in expired]

    def assign_keys(self, key_of: Callable[[GenerationParams], Hashable]) -> list[tuple[Job, Exception]]:
        """Give every queued job without one its batch key; a job whose key cannot be computed leaves the queue
        and comes back with its error. Only `Exception`s are a job's fault: anything else propagates."""
        broken: list[tuple[Job, Exception]] = []
        for ticket in list(self._queue):
            if ticket.key is None:
                try:
                    ticket.key = key_of(ticket.job.params)
                except Exception as exc:
                    self._queue.remove(ticket)
                    broken.append((ticket.job, exc))
        return broken

    # -- selection -------------------------------------------------------------------
    def next_batch(self, now: float, *, hurry: bool = False) -> Plan:
        """The batch to run now, or how long to wait for more batch mates. `hurry`: take what there is (the
        service is draining, or a job just left the queue broken). The first call after a batch was taken opens
        a window of `batch_wait_s` for the oldest job's key; an empty plan that is ready means nothing can run
        (the queue emptied, or every job of that key left it during the window). Keys must be assigned."""
        if not self._queue:
            self._forming = None
            return Plan()
        if self._forming is None:
            self._forming = (self._queue[0].key, now + self.batch_wait_s)
        key, send_by = self._forming
        same = sum(1 for t in self._queue if t.key == key)
        if same < self.max_batch_size and now < send_by and not hurry:
            return Plan(key=key, wait_s=send_by - now)
        self._forming = None
        return Plan(self._select(key, self.max_batch_size, overtake=True), key)

    def joiners(self, key: Hashable, room: int) -> list[Job]:
        """Queued jobs that may join a running batch of `key` with `room` free rows now, oldest first (removed
        from the queue). Keys must be assigned."""
        return self._select(key, room, overtake=False)

    def _select(self, key: Hashable, room: int, *, overtake: bool) -> list[Job]:
        """Up to `room` queued jobs of `key` in queue order, removed from the queue. `overtake`: a job of another
        key is passed over; otherwise selection stops there."""
        chosen: list[Ticket] = []
        for ticket in self._queue:
            if len(chosen) >= room:
                break
            if ticket.key == key:
                chosen.append(ticket)
            elif not overtake:
                break
        for ticket in chosen:
            self._queue.remove(ticket)
        return [t.job for t in chosen]

    def _ticket(self, job: Job) -> Ticket | None:
        return next((t for t in self._queue if t.job is job), None)
