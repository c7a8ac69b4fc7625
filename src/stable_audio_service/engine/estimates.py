"""What the engine knows about time: measured costs, the running batch as a forecast sees it, and forecasts.

A bounded queue says how many jobs wait, not how long they will: ten 1-step clips and ten 100-step clips are the
same count. So the worker times its own model calls and `StepTimes` keeps a running estimate of

- seconds per denoising step, per (batch key, rows in the forward pass): the batch key is the model's own answer
  to "which requests can share a pass", so it already separates what costs differently (the latent length of
  the duration's window, merged adapters), and the rows say how the batch's size changes the step;
- seconds of `model.start` (text and audio encoding, noise) and `model.finish` (decoding) per batch key;
- seconds from a decoded clip to its delivered file (the audio encoder's tail).

The scheduler replays its own batching policy over these costs (`Scheduler.forecast`) to say when each queued
and running job starts and finishes. All times are in the engine's monotonic clock, passed in: nothing here reads
a clock, so tests drive it with plain numbers.

Unknown costs: a (key, rows) never measured is priced from the same key's other batch sizes (a line through
them, or proportional to the rows when only one size is known: pessimistic for a GPU, whose extra rows are
nearly free, and corrected by the first measurement), and a key never seen from the average of the known keys.
Before anything was measured there is no estimate at all (`None`): the engine then admits without refusing,
and says so (`eta_s` is null) rather than guessing. The service warms the estimate up at start-up with a short
generation (`Engine(warm_up=True)`), so the first caller with a deadline is already judged on measured speed.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal

# Weight of a new measurement once a cost has this many: 1/5, so the estimate follows a host that got slower
# (other processes on a shared CPU) within a few steps, while one odd step moves it by a fifth at most.
EWMA_WEIGHT = 0.2
# After this many measurements, one sample counts as at most this factor away from the estimate: a step held
# up once (a page fault, a garbage collection, a debugger) must not make every ETA jump fourfold.
OUTLIER_AFTER = 3
OUTLIER_FACTOR = 4.0


@dataclass
class Running:
    """A running estimate: the plain mean of the first samples, then an exponentially weighted mean."""

    value: float = 0.0
    count: int = 0

    def add(self, sample: float) -> None:
        sample = max(0.0, sample)
        if self.count >= OUTLIER_AFTER and self.value > 0:
            sample = min(max(sample, self.value / OUTLIER_FACTOR), self.value * OUTLIER_FACTOR)
        self.count += 1
        self.value += max(EWMA_WEIGHT, 1.0 / self.count) * (sample - self.value)


class StepTimes:
    """Measured seconds per step, per start and per finish, by batch key (see the module docstring). Plain data,
    not thread-safe: the engine reads and writes it under its lock."""

    def __init__(self) -> None:
        self._steps: dict[Hashable, dict[int, Running]] = {}
        self._starts: dict[Hashable, Running] = {}
        self._finishes: dict[Hashable, Running] = {}
        self._tail = Running()

    # -- learning --------------------------------------------------------------------
    def observe_step(self, key: Hashable, rows: int, seconds: float) -> None:
        """One forward pass of `rows` requests of `key` took `seconds`."""
        self._steps.setdefault(key, {}).setdefault(rows, Running()).add(seconds)

    def observe_start(self, key: Hashable, seconds: float) -> None:
        self._starts.setdefault(key, Running()).add(seconds)

    def observe_finish(self, key: Hashable, seconds: float) -> None:
        self._finishes.setdefault(key, Running()).add(seconds)

    def observe_tail(self, seconds: float) -> None:
        """A decoded clip took `seconds` more to become a delivered file (audio encoding, beside the worker)."""
        self._tail.add(seconds)

    # -- pricing ---------------------------------------------------------------------
    @property
    def known(self) -> bool:
        """Some step was measured: estimates exist."""
        return bool(self._steps)

    def step(self, key: Hashable, rows: int) -> float | None:
        """Seconds of one forward pass of `rows` requests of `key`; None when no step was ever measured."""
        sizes = self._steps.get(key)
        if sizes:
            return _priced(sizes, rows)
        if not self._steps:
            return None
        return sum(_priced(s, rows) for s in self._steps.values()) / len(self._steps)

    def start(self, key: Hashable) -> float | None:
        return _per_key(self._starts, key)

    def finish(self, key: Hashable) -> float | None:
        return _per_key(self._finishes, key)

    def tail(self) -> float:
        return self._tail.value

    def alone(self, key: Hashable, steps: int, rows: int = 1) -> float | None:
        """Seconds a job of `key` with `steps` steps and `rows` rows (takes) takes on an idle engine (a batch of its
        own): the least it can take, whatever the queue; None without estimates."""
        step = self.step(key, rows)
        if step is None:
            return None
        return rows * ((self.start(key) or 0.0) + (self.finish(key) or 0.0)) + steps * step + self.tail()

    def describe(self) -> dict[str, object]:
        """The learned costs, for diagnostics: per key, seconds per step by rows, start and finish."""
        return {
            repr(key): {
                "step_s": {rows: round(r.value, 4) for rows, r in sorted(sizes.items())},
                "start_s": round(self._starts[key].value, 4) if key in self._starts else None,
                "finish_s": round(self._finishes[key].value, 4) if key in self._finishes else None,
            }
            for key, sizes in self._steps.items()
        }


def _priced(sizes: dict[int, Running], rows: int) -> float:
    """A step of `rows` rows from the sizes measured for one key: measured, or a least-squares line through the
    measured sizes (never falling with more rows), or, with one size known, proportional above it and the same
    below it (never cheaper than measured)."""
    if rows in sizes:
        return sizes[rows].value
    if len(sizes) == 1:
        ((known, r),) = sizes.items()
        return r.value * max(1.0, rows / known)
    xs = list(sizes)
    ys = [sizes[x].value for x in xs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var)
    return max(0.0, my + slope * (rows - mx))


def _per_key(table: dict[Hashable, Running], key: Hashable) -> float | None:
    if key in table:
        return table[key].value
    if not table:
        return None
    return sum(r.value for r in table.values()) / len(table)


# -- the running batch, as the worker reports it ----------------------------------------
@dataclass(frozen=True)
class Call:
    """The model call the worker is inside: which, since when (engine clock), for whom (start/finish) or how
    many rows (step)."""

    kind: Literal["start", "step", "finish"]
    since: float
    job_id: str | None = None
    rows: int = 0


@dataclass(frozen=True)
class Row:
    """One request of the running batch: `steps_left` before its decode (the step in progress included);
    `started`: `model.start` has run for it; `deadline`: its caller's, in the engine clock; `rows`: a job of N
    takes is N rows of every pass (and N starts and decodes)."""

    job_id: str
    steps_left: int
    started: bool = True
    deadline: float | None = None  # the caller's, in the engine clock (a newcomer must not make it late)
    rows: int = 1  # rows of each forward pass it takes (its takes)


@dataclass(frozen=True)
class RunningBatch:
    """What the worker is doing, for a forecast: the batch's key, its rows in order, the call in progress, and the
    jobs whose clips are with the audio encoder (delivered after the tail)."""

    key: Hashable
    rows: tuple[Row, ...] = ()
    call: Call | None = None
    encoding: tuple[str, ...] = ()


@dataclass
class Forecast:
    """When each job starts and finishes (engine clock), by job id. `guessed`: jobs whose times rest on a cost
    never measured (counted as zero: a lower bound, not an estimate). `drain_at`: when everything now queued
    or running is done."""

    now: float
    starts: dict[str, float] = field(default_factory=dict)
    finishes: dict[str, float] = field(default_factory=dict)
    guessed: set[str] = field(default_factory=set)
    drain_at: float = 0.0

    def start_in(self, job_id: str) -> float | None:
        """Seconds from `now` until the job leaves the queue (0 once running); None if unknown."""
        at = self.starts.get(job_id)
        return None if at is None or job_id in self.guessed else max(0.0, at - self.now)

    def eta(self, job_id: str) -> float | None:
        """Seconds from `now` until the job's result is delivered; None if unknown."""
        at = self.finishes.get(job_id)
        return None if at is None or job_id in self.guessed else max(0.0, at - self.now)

    def drain_s(self) -> float:
        return max(0.0, self.drain_at - self.now)
