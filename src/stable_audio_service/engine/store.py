"""Which jobs the engine still knows: every queued and running one, and a bounded set of finished ones.

Retention is the engine's one unbounded risk (each finished job holds its encoded audio), so it is one small
piece with its own tests: finished jobs kept for `GET /jobs/{id}` are bounded by count, by age (TTL, on an
injected clock) and by the total bytes of their results, oldest evicted first. A job submitted with
`keep=False` (what `/predict` uses) is forgotten the moment it ends: only the caller's reference keeps its
result alive.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from .jobs import Job


class JobStore:
    """Not thread-safe: the engine calls it under its lock."""

    def __init__(
        self,
        *,
        ttl_s: float = 3600.0,
        max_kept: int = 256,
        max_result_bytes: int | None = 512 * 2**20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_kept = max_kept
        self.max_result_bytes = max_result_bytes
        self.evicted = 0  # finished jobs dropped by the bounds (not those forgotten on purpose)
        self._clock = clock
        self._jobs: dict[str, Job] = {}  # every job `get` can find
        self._kept: OrderedDict[str, tuple[Job, float]] = OrderedDict()  # finished ones: (job, kept since)

    def add(self, job: Job) -> None:
        """A job just submitted: findable until it ends (and after, if it is kept)."""
        self._jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    @property
    def jobs(self) -> dict[str, Job]:
        """Every job `get` finds, by id (read-only by convention)."""
        return self._jobs

    def active(self) -> list[Job]:
        """The jobs not ended yet."""
        return [j for j in self._jobs.values() if not j.ended]

    def ended(self, job: Job) -> None:
        """`job` just became terminal: keep it (from now, for the TTL) or forget it, then apply the bounds."""
        if job.keep:
            self._kept[job.id] = (job, self._clock())
        else:
            self._jobs.pop(job.id, None)
        self.prune()

    def release(self, job: Job) -> None:
        """Forget `job` now if it has ended, else when it ends."""
        job.keep = False
        if job.ended:
            self._jobs.pop(job.id, None)
            self._kept.pop(job.id, None)

    def kept_count(self) -> int:
        return len(self._kept)

    def result_bytes(self) -> int:
        """Bytes of encoded audio held by kept finished jobs."""
        return sum(job.result_bytes for job, _ in self._kept.values())

    def prune(self) -> int:
        """Evict finished jobs past the TTL, then beyond the count, then beyond the byte budget (oldest first;
        the newest is never evicted for bytes, so a job does not finish straight into a 404). Returns how many
        went."""
        before = len(self._kept)
        now = self._clock()
        for job, since in list(self._kept.values()):  # oldest first: stop at the first one still fresh
            if now - since <= self.ttl_s:
                break
            self._evict(job)
        while len(self._kept) > self.max_kept:
            self._evict(next(iter(self._kept.values()))[0])
        if self.max_result_bytes is not None:
            total = self.result_bytes()
            newest = next(reversed(self._kept.values()), (None, 0.0))[0]
            for job, _ in list(self._kept.values()):
                if total <= self.max_result_bytes or job is newest:
                    break
                if job.result_bytes:
                    total -= job.result_bytes
                    self._evict(job)
        return before - len(self._kept)

    def _evict(self, job: Job) -> None:
        self._kept.pop(job.id, None)
        self._jobs.pop(job.id, None)
        self.evicted += 1
