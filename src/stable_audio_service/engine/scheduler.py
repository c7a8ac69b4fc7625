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

Because it knows every queued job's place, deadline and key, and when the forming batch will go, the scheduler
also says how long things will take: `forecast` replays the rules above over the step times the worker measured
(`estimates.StepTimes`), from the running batch as the worker reports it (`estimates.RunningBatch`), joining at
step boundaries included. On that forecast rests admission with caller deadlines:

- `admit` refuses at once (`WouldMissDeadline`) a job whose estimated finish is past its caller's deadline, or
  whose admission would push a job already accepted past its own (joining a batch makes the batch's steps
  slower); a full queue is `QueueFull`. Both carry a `retry_after_s` from the forecast;
- `expire` drops queued jobs whose deadline passed, and those that could no longer make it even if they started
  now, alone: they are answered at once instead of run for a caller who has given up. A running job is never
  dropped (it finishes; a client that left cancels it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from ..models.base import GenerationParams
from .estimates import Forecast, RunningBatch, StepTimes
from .jobs import Job, QueueFull, WouldMissDeadline, rows_of, steps_of


@dataclass
class Ticket:
    """A queued job as the scheduler sees it."""

    job: Job
    deadline: float  # the `now` clock's time after which it is answered 503 instead of run (queue timeout)
    key: Hashable | None = None  # the model's batch key, computed lazily by `assign_keys`
    # The batch key as computed at admission, only to price the job: `key` stays the worker's to compute, so
    # that a key that cannot be computed is judged by the worker's rules (a failed job, or a dead worker).
    price_key: Hashable | None = None

    @property
    def rows(self) -> int:
        """Rows of a forward pass the job takes (one per take): what batch room is counted in."""
        return rows_of(self.job.params)

    @property
    def steps(self) -> int:
        """Steps per row (over every window of a long-form job)."""
        return steps_of(self.job.params)

    @property
    def priced_as(self) -> Hashable:
        """The key to price the job by; a job whose key is unknown is a batch of its own."""
        if self.key is not None:
            return self.key
        if self.price_key is not None:
            return self.price_key
        return ("unpriced", self.job.id)


@dataclass(frozen=True)
class Expired:
    """A queued job dropped by `expire`, and why (the failure's message)."""

    job: Job
    reason: str


def _retry_s(seconds: float) -> float:
    """A Retry-After in whole seconds, at least one (the header has no fractions, and 0 invites a busy loop)."""
    return float(max(1, math.ceil(seconds - 1e-9)))


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
        self.costs = StepTimes()  # the worker's measurements; priced by `forecast`
        self._queue: list[Ticket] = []
        self._forming: tuple[Hashable, float] | None = None  # (key, send-by time) of the batch being formed

    # -- the queue -------------------------------------------------------------------
    def admit(
        self,
        job: Job,
        now: float,
        *,
        price_key: Hashable | None = None,
        running: RunningBatch | None = None,
        mixed_steps: bool = False,
    ) -> int:
        """Queue `job` last; returns its 1-based position. `job.deadline_at` (the caller's deadline in the `now`
        clock; None: none) is held against the forecast: `WouldMissDeadline` when the job would finish after it,
        or when taking it would make a job already accepted miss its own. `price_key`: the job's batch key, to
        price it (see `Ticket.price_key`); `running`: what the worker is doing. Raises `QueueFull` at capacity."""
        if len(self._queue) >= self.queue_size:
            head = self._forecast(now, running, mixed_steps).start_in(self._queue[0].job.id)
            raise QueueFull(f"queue full ({self.queue_size} waiting)", _retry_s(head or 0.0))
        ticket = Ticket(job, deadline=now + self.queue_timeout_s, price_key=price_key)
        if not self.costs.known or not (job.deadline_at is not None or self._deadlines(running)):
            self._queue.append(ticket)  # nothing to judge by, or nobody's deadline at stake
            return len(self._queue)
        before = self._forecast(now, running, mixed_steps)
        self._queue.append(ticket)
        after = self._forecast(now, running, mixed_steps)
        refusal = self._judge(job, ticket, now, before, after, running)
        if refusal is not None:
            self._queue.remove(ticket)
            raise refusal
        return len(self._queue)

    def _judge(
        self, job: Job, ticket: Ticket, now: float, before: Forecast, after: Forecast, running: RunningBatch | None
    ) -> WouldMissDeadline | None:
        """Why `job` (just appended) must be refused, or None. Its own finish refuses it even where it rests on a
        cost never measured (counted as zero: a lower bound, so past the deadline it is surely late); another job
        is protected only where its times are measured (with a lower bound "before", nobody knows it would have
        made it)."""
        finish = after.finishes.get(job.id)
        estimate = (finish - now) if finish is not None else 0.0
        alone = self.costs.alone(ticket.priced_as, ticket.steps, ticket.rows) or 0.0
        if job.deadline_at is not None and finish is not None and finish > job.deadline_at:
            retry = _retry_s(finish - job.deadline_at)
            if alone > (job.max_wait_s or 0.0):
                hint = f"even on an idle server it needs about {alone:.1f} s: raise max_wait_s or ask for less"
            else:
                hint = f"retry in about {retry:.0f} s"
            return WouldMissDeadline(
                f"refused: estimated to finish in {estimate:.1f} s, after its deadline of {job.max_wait_s:g} s; "
                + hint,
                estimate_s=estimate,
                max_wait_s=job.max_wait_s,
                retry_after_s=retry,
                alone_s=alone,
            )
        victims = [
            jid
            for jid, at in self._deadlines(running).items()
            if jid != job.id
            and jid not in after.guessed
            and before.finishes.get(jid, math.inf) <= at < after.finishes.get(jid, -math.inf)
        ]
        if victims:
            # a retry can succeed once the first of them is done and its batch has room again
            retry = _retry_s(min(before.finishes[jid] for jid in victims) - now)
            return WouldMissDeadline(
                f"refused: taking it would make {len(victims)} accepted job(s) miss their deadline; retry in about "
                f"{retry:.0f} s",
                estimate_s=estimate,
                max_wait_s=job.max_wait_s,
                retry_after_s=retry,
                alone_s=alone,
            )
        return None

    def _deadlines(self, running: RunningBatch | None) -> dict[str, float]:
        """Job id -> caller's deadline, for every queued or running job that has one."""
        out = {t.job.id: t.job.deadline_at for t in self._queue if t.job.deadline_at is not None}
        if running is not None:
            out.update({r.job_id: r.deadline for r in running.rows if r.deadline is not None})
        return out

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
    def expire(self, now: float) -> list[Expired]:
        """Remove and return the jobs that must not run: queued past the queue timeout, past their caller's
        deadline, or unable to make that deadline even if they started now, alone (by the measured costs)."""
        expired: list[Expired] = []
        for ticket in list(self._queue):
            reason = self._expiry(ticket, now)
            if reason is not None:
                self._queue.remove(ticket)
                expired.append(Expired(ticket.job, reason))
        return expired

    def next_expiry(self) -> float | None:
        """The earliest time (the `now` clock) at which `expire` would drop a queued job, by the costs known now;
        None with nothing queued. The engine's janitor sleeps until then, so that a job is answered at its
        deadline even while the worker is inside a long step."""
        times = []
        for ticket in self._queue:
            times.append(ticket.deadline)
            job = ticket.job
            if job.deadline_at is not None:
                alone = self.costs.alone(ticket.priced_as, ticket.steps, ticket.rows)
                times.append(job.deadline_at - (alone or 0.0))
        return min(times, default=None)

    def _expiry(self, ticket: Ticket, now: float) -> str | None:
        if ticket.deadline <= now:
            return f"waited in the queue longer than {self.queue_timeout_s:g}s"
        job = ticket.job
        if job.deadline_at is None:
            return None
        if job.deadline_at <= now:
            return f"not run: its deadline (max_wait_s={job.max_wait_s:g}) passed while it was queued"
        alone = self.costs.alone(ticket.priced_as, ticket.steps, ticket.rows)
        if alone is not None and now + alone > job.deadline_at:
            return (
                f"not run: it could no longer finish within its deadline (max_wait_s={job.max_wait_s:g}): about "
                f"{alone:.1f} s of work, {job.deadline_at - now:.1f} s left"
            )
        return None

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
        same = sum(t.rows for t in self._queue if t.key == key)
        if same < self.max_batch_size and now < send_by and not hurry:
            return Plan(key=key, wait_s=send_by - now)
        self._forming = None
        return Plan(self._select(key, self.max_batch_size, overtake=True), key)

    def joiners(self, key: Hashable, room: int) -> list[Job]:
        """Queued jobs that may join a running batch of `key` with `room` free rows now, oldest first (removed
        from the queue). Keys must be assigned."""
        return self._select(key, room, overtake=False)

    def _select(self, key: Hashable, room: int, *, overtake: bool) -> list[Job]:
        """Up to `room` queued jobs of `key` in queue order, removed from the queue (see `_take`)."""
        return [t.job for t in _take(self._queue, lambda t: t.key, key, room, overtake=overtake)]

    # -- forecasts -------------------------------------------------------------------
    def forecast(self, now: float, running: RunningBatch | None = None, *, mixed_steps: bool = False) -> Forecast:
        """When every queued and running job starts and finishes, by the measured costs (see the module
        docstring). `running`: the worker's batch; `mixed_steps`: queued jobs may join it at step boundaries."""
        return self._forecast(now, running, mixed_steps)

    def retry_after(
        self,
        now: float,
        running: RunningBatch | None = None,
        *,
        mixed_steps: bool = False,
        job: Job | None = None,
        price_key: Hashable | None = None,
    ) -> float:
        """Seconds until a retry may succeed, at least 1. With `job` (not queued; e.g. just dropped for its
        deadline, priced by `price_key`): until a job like it, queued last, would be estimated to finish within
        its `max_wait_s`. Without: until the queue's head starts (a place in the queue frees), or the running work
        is done."""
        fc = self._forecast(now, running, mixed_steps)
        if job is not None and job.max_wait_s is not None and self.costs.known:
            phantom = Ticket(job, deadline=math.inf, price_key=price_key)
            self._queue.append(phantom)
            try:
                finish = self._forecast(now, running, mixed_steps).finishes.get(job.id)
            finally:
                self._queue.remove(phantom)
            if finish is not None:
                return _retry_s(finish - (now + job.max_wait_s))
        if self._queue:
            return _retry_s(fc.start_in(self._queue[0].job.id) or 0.0)
        return _retry_s(fc.drain_s())

    def _forecast(self, now: float, running: RunningBatch | None, mixed_steps: bool) -> Forecast:
        """Replay the batching policy over the measured costs. Between two events (a row finishing its steps,
        a batch forming) every step of a batch costs the same, so it jumps from event to event: the cost is
        linear in the number of jobs, not in their steps."""
        costs = self.costs
        fc = Forecast(now=now, drain_at=now)
        blind = False

        def price(seconds: float | None) -> float:
            nonlocal blind
            if seconds is None:
                blind = True
                return 0.0
            return seconds

        def finished(job_id: str, at: float) -> None:
            fc.finishes[job_id] = at + costs.tail()
            if blind:
                fc.guessed.add(job_id)
            fc.drain_at = max(fc.drain_at, fc.finishes[job_id])

        def started(job_id: str, at: float) -> None:
            fc.starts[job_id] = at
            if blind:
                fc.guessed.add(job_id)

        queue = list(self._queue)
        rows: list[list] = []  # [job id, steps left, started, rows it takes]
        key: Hashable = None
        t = now
        if running is not None:
            key = running.key
            for job_id in running.encoding:
                finished(job_id, now)
            rows = [[r.job_id, r.steps_left, r.started, r.rows] for r in running.rows]
            for row in rows:
                started(row[0], now)
            call = running.call
            if call is not None:
                if call.kind == "step":
                    need = price(costs.step(key, max(1, call.rows)))
                elif call.kind == "start":
                    need = price(costs.start(key))
                else:
                    need = price(costs.finish(key))
                t = now + max(0.0, need - (now - call.since))
                if call.kind == "step":
                    for row in rows:
                        if row[2] and row[1] > 0:
                            row[1] -= 1
                elif call.kind == "start":
                    for row in rows:
                        if row[0] == call.job_id:
                            row[2] = True
                else:
                    for row in rows:
                        if row[0] == call.job_id:
                            finished(row[0], t)
                    rows = [row for row in rows if row[0] != call.job_id]
        forming = self._forming
        while True:
            # a step boundary: the rows that did their last step are decoded, in batch order
            for row in rows:
                if row[2] and row[1] <= 0:
                    t += price(costs.finish(key)) * row[3]
                    finished(row[0], t)
            rows = [row for row in rows if not (row[2] and row[1] <= 0)]
            if rows and mixed_steps:
                room = self.max_batch_size - sum(row[3] for row in rows)
                for ticket in _take(queue, _priced_as, key, room, overtake=False):
                    rows.append([ticket.job.id, ticket.steps, False, ticket.rows])
                    started(ticket.job.id, t)
            if not rows:
                if not queue:
                    break
                key = queue[0].priced_as
                if sum(tk.rows for tk in queue if tk.priced_as == key) < self.max_batch_size:
                    # the window for batch mates: what is left of one already open, else a whole one
                    t = max(t, forming[1]) if forming is not None and forming[0] == key else t + self.batch_wait_s
                forming = None
                for ticket in _take(queue, _priced_as, key, self.max_batch_size, overtake=True):
                    rows.append([ticket.job.id, ticket.steps, False, ticket.rows])
                    started(ticket.job.id, t)
            for row in rows:  # model.start of each new row, one after another, before the next step
                if not row[2]:
                    t += price(costs.start(key)) * row[3]
                    row[2] = True
            stepping = [row for row in rows if row[1] > 0]
            if stepping:
                jump = min(row[1] for row in stepping)
                t += jump * price(costs.step(key, sum(row[3] for row in stepping)))
                for row in stepping:
                    row[1] -= jump
        return fc

    def _ticket(self, job: Job) -> Ticket | None:
        return next((t for t in self._queue if t.job is job), None)


def _take(
    queue: list[Ticket], key_of: Callable[[Ticket], Hashable], key: Hashable, room: int, *, overtake: bool
) -> list[Ticket]:
    """Tickets of `key` (by `key_of`) filling up to `room` rows in queue order, removed from `queue`. `overtake`: a
    ticket of another key, or one whose takes do not fit the room left, is passed over; otherwise selection stops
    there. A new batch (`overtake`) always takes its first ticket, even one with more takes than `room`: a job's
    takes are never split, and it must not wait forever. The one selection rule, for the real queue and for the
    forecast's copy of it."""
    chosen: list[Ticket] = []
    used = 0
    for ticket in queue:
        if used >= room:
            break
        fits = used + ticket.rows <= room or (overtake and not chosen)
        if key_of(ticket) == key and fits:
            chosen.append(ticket)
            used += ticket.rows
        elif not overtake:
            break
    for ticket in chosen:
        queue.remove(ticket)
    return chosen


def _priced_as(ticket: Ticket) -> Hashable:
    return ticket.priced_as
