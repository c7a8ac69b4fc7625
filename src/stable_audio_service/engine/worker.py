"""The worker loop: the one thread that calls the model, one denoising step at a time.

It asks the `Scheduler` for the next batch (waiting, under the engine's lock, as long as the scheduler says
more batch mates may come), then runs the batch step by step: between steps it drops cancelled requests,
publishes progress and expires requests that waited too long. Batching is continuous: a request that finished
its steps is decoded and leaves at once (its clip goes to the `ClipEncoder`), and when the model declares
`mixed_steps` the scheduler's joiners take the free rows at the next step boundary.

The loop cannot fail silently: an error a batch raises fails that batch and the loop goes on; anything else
(a `BaseException`, or an error outside a batch) ends the loop and is reported through `on_death`.

It is also where time is measured: every `start`, `step` and `finish` is timed on the engine's clock and fed to
the scheduler's `StepTimes`, and `snapshot()` tells a forecast which call is in progress since when. Whenever
the queue moves, and at most every `ETA_REFRESH_S` while steps run, every queued and running job's estimate is
refreshed (`stamp`) and queued jobs hear their place and ETA.

(Long: the loop, its timing and the long-form window chaining share the worker's one thread and its state; each
method is one phase of a step.)
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from ..models.base import AudioModel, GenerationParams, GenerationState
from .encoder import ClipEncoder
from .estimates import Call, Forecast, Row, RunningBatch
from .events import EventHub, eta
from .jobs import Job, JobResult, JobStatus, rows_of, steps_of, take_params
from .longform import Chain, is_longform, window_params
from .outcomes import SHUTTING_DOWN, Outcomes
from .scheduler import Expired, Scheduler

log = logging.getLogger("stable_audio_service.engine")

# A request in the running batch: (job, its state, time.time_ns() when its denoising began).
Active = tuple[Job, GenerationState, int]
# While steps run, queued jobs' ETAs are re-published at most this often (seconds of the engine clock): often
# enough for a countdown, rarely enough to cost nothing next to a step.
ETA_REFRESH_S = 1.0


class Worker:
    def __init__(
        self,
        model: AudioModel,
        scheduler: Scheduler,
        encoder: ClipEncoder,
        outcomes: Outcomes,
        hub: EventHub,
        cond: threading.Condition,
        *,
        clock: Callable[[], float],
        observe: Callable[..., None],
        on_death: Callable[[str], None],
    ) -> None:
        """`cond`: the engine's lock, guarding the scheduler, `running` and the flags. `clock`: the monotonic
        clock the scheduler's deadlines and batch windows are in. `on_death(reason)`: the loop ended by an error
        it could not absorb (called on the worker thread)."""
        self.model = model
        self.scheduler = scheduler
        self.encoder = encoder
        self.outcomes = outcomes
        self.hub = hub
        self._cond = cond
        self._clock = clock
        self._observe = observe
        self._on_death = on_death
        self.running: list[Job] = []  # started and not yet decoded
        self.key: Hashable = None  # the running batch's key
        self.call: Call | None = None  # the model call in progress (set and cleared by this thread)
        self.decoded_at: dict[str, float] = {}  # job id -> clock when its decode ended (for the encoder's tail)
        self._stamped_at = -float("inf")
        self.stopping = False  # take no new batch once the queue is empty (shutdown)
        self.hurry = False  # stop waiting for batch mates (the engine no longer accepts work)
        self.stats = {
            "forward_passes": 0,
            "batches": 0,
            "requests": 0,
            "max_batch_seen": 0,
            "joined": 0,  # requests that joined a batch already running (continuous batching)
        }

    # -- the loop --------------------------------------------------------------------
    def run(self, before: Callable[[], None] | None = None, started: threading.Event | None = None) -> None:
        """The thread's body, guarded as a whole: a batch's errors fail that batch; anything else is fatal.
        `before()` runs first, on this thread (the engine's warm-up); `started` is set once the loop begins."""
        try:
            try:
                if before is not None:
                    before()
            finally:
                if started is not None:
                    started.set()
            while True:
                taken = self.take_batch()
                if taken is None:
                    return
                batch, key = taken
                if batch:
                    try:
                        self.run_batch(batch, key)
                    except Exception:  # the worker must survive anything a batch can raise
                        log.exception("batch failed unexpectedly")
                        with self._cond:
                            victims = [  # joiners too, not the ones already handed to the encoder
                                j for j in batch + self.running if j not in self.encoder.jobs
                            ]
                        for job in victims:
                            self.outcomes.fail(job, "internal error in the generation worker", 500)
                    finally:
                        with self._cond:
                            self.running = []
                            self._cond.notify_all()
        except BaseException as exc:
            log.critical("the generation worker died", exc_info=exc)
            self._on_death(f"the generation worker died ({type(exc).__name__}: {_first_line(exc)})")

    def take_batch(self) -> tuple[list[Job], Hashable] | None:
        """Wait for work and take the next batch (possibly empty: ask again); None once stopping with nothing
        queued."""
        sched = self.scheduler
        with self._cond:
            while not len(sched) and not self.stopping:
                self._cond.wait(timeout=0.5)
            if self.stopping and not len(sched):
                return None
            expired = sched.expire(self._clock())
            broken = sched.assign_keys(self._key_of)
            self.price_expired(expired)
        self.fail_expired(expired)
        self._fail_broken(broken)
        if broken:
            return [], None
        with self._cond:
            while True:
                broken = sched.assign_keys(self._key_of)
                plan = sched.next_batch(self._clock(), hurry=bool(broken) or self.hurry)
                if plan.ready:
                    break
                self._cond.wait(timeout=plan.wait_s)
            batch = plan.jobs
            self._mark_running(batch, len(batch))
            for job in batch:
                job.batch_size = len(batch)
            self.running = list(batch)
            self.key = plan.key
            waiting = sched.queued()
            self.stamp()
        self._fail_broken(broken)
        self.hub.publish_positions(waiting)
        return batch, plan.key

    def run_batch(self, batch: list[Job], key: Hashable) -> None:
        """Run `batch` one step at a time until every request in it has ended (continuous batching)."""
        model = self.model
        self.stats["batches"] += 1
        self._observe("batch", batch[0], size=len(batch))
        active: list[Active] = []
        self._start_jobs(batch, active, key)
        while active:
            keep = []
            for job, state, t0 in active:
                if job.cancel_requested:
                    self.outcomes.cancelled(job)
                    self._release_state(state)
                    self._end_chain(job)
                else:
                    keep.append((job, state, t0))
            active = keep
            stepping = [entry for entry in active if not entry[1].finished]
            if stepping:
                try:
                    self._step(stepping, key)
                except Exception as exc:
                    self.call = None
                    for job, state, _ in active:
                        self.outcomes.fail_for(job, exc)
                        self._release_state(state)
                        self._end_chain(job)
                    active = []
                    break
                with self._cond:
                    for job, state, _ in stepping:
                        job.step = job.chain.steps_done + state.step if job.chain is not None else state.step
                    if self._clock() - self._stamped_at >= ETA_REFRESH_S:
                        self.stamp()
                        waiting = self.scheduler.queued()
                    else:
                        waiting = []
                published: set[str] = set()  # one event per job, however many takes it has
                for job, _, _ in stepping:
                    if job.id not in published:
                        published.add(job.id)
                        event = {"type": "step", "step": job.step, "total": job.total_steps, "eta_s": eta(job)}
                        self.hub.publish(job, event)
                self.hub.publish_positions(waiting)
                self._sweep_expired()
            done = [entry for entry in active if entry[1].finished]
            active = [entry for entry in active if not entry[1].finished]
            active += self._finish_jobs(done, key)
            if active and model.mixed_steps:
                joining = self._take_joiners(key, self.scheduler.max_batch_size - len(active))
                if joining:
                    self._start_jobs(joining, active, key)
                    size = len(active)
                    for job, _, _ in active:
                        job.batch_size = max(job.batch_size, size)
                    self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], size)
                    self.stats["joined"] += len(joining)

    # -- joining and leaving ---------------------------------------------------------
    def _take_joiners(self, key: Hashable, room: int) -> list[Job]:
        """Queued jobs that may join the running batch now (the scheduler decides which)."""
        if room <= 0:
            return []
        sched = self.scheduler
        with self._cond:
            if not len(sched) or self.stopping:
                return []
            expired = sched.expire(self._clock())
            broken = sched.assign_keys(self._key_of)
            self.price_expired(expired)
            joining = sched.joiners(key, room)
            self._mark_running(joining, len(self.running) + len(joining))
            self.running.extend(joining)
            waiting = sched.queued() if joining else []
            if joining:
                self.stamp()
        self.fail_expired(expired)
        self._fail_broken(broken)
        self.hub.publish_positions(waiting)
        return joining

    def _step(self, stepping: list[Active], key: Hashable) -> None:
        """One denoising step of every row in `stepping`: one forward pass, or one per step number when the family
        needs its rows at the same step (a long-form job's next window starts at step 0 beside its batch mates)."""
        groups: dict[int, list[Active]] = {}
        for entry in stepping:
            groups.setdefault(0 if self.model.mixed_steps else entry[1].step, []).append(entry)
        for group in groups.values():
            t0 = self._clock()
            self.call = Call("step", t0, rows=len(group))
            self.model.step([s for _, s, _ in group])
            self.stats["forward_passes"] += 1
            with self._cond:
                self.call = None
                self.scheduler.costs.observe_step(key, len(group), self._clock() - t0)

    def _start_jobs(self, jobs: list[Job], active: list[Active], key: Hashable) -> None:
        """`model.start` each job's rows (text and audio encoding, initial noise; one per take, or a long-form job's
        first window) and add them to `active`, a job's takes side by side in seed order."""
        self.stats["requests"] += len(jobs)
        self.stats["max_batch_seen"] = max(
            self.stats["max_batch_seen"], sum(rows_of(j.params) for j in jobs) + len(active)
        )
        for job in jobs:
            if job.cancel_requested:
                self.outcomes.cancelled(job)
                continue
            states: list[GenerationState] = []
            try:
                t0 = time.time_ns()
                if is_longform(job.params):
                    job.chain = Chain(job.params, self.model.sample_rate, self.model.channels, job.format)
                    rows = [job.chain.next_params()]
                else:
                    rows = [take_params(job.params, i) for i in range(rows_of(job.params))]
                for params in rows:
                    states.append(self._start(job, params, key))
                t1 = time.time_ns()
                job.phase("encode", t0, t1)
                job.total_steps = job.chain.total_steps if job.chain is not None else states[0].total_steps
                job.params.drop_uploads()  # encoded: a family keeps in its state whatever part it still needs
                active.extend((job, state, t1) for state in states)
            except Exception as exc:
                self.call = None
                for state in states:
                    self._release_state(state)
                self._end_chain(job)
                self.outcomes.fail_for(job, exc)

    def _start(self, job: Job, params: GenerationParams, key: Hashable) -> GenerationState:
        """`model.start` of one row of `job`, timed for the estimates."""
        c0 = self._clock()
        self.call = Call("start", c0, job.id)
        state = self.model.start(params)
        with self._cond:
            self.call = None
            self.scheduler.costs.observe_start(key, self._clock() - c0)
        if params is not job.params:
            params.drop_uploads()  # a take's or window's copy: encoded now
        return state

    def _finish_jobs(self, done: list[Active], key: Hashable) -> list[Active]:
        """Decode the requests that finished their steps and hand them to the encoder; each leaves the batch. A
        job's takes finish together (started together, same steps) and are decoded and encoded together. A long-form
        job that has windows left starts its next one instead: returned, to go on in the batch."""
        t_denoised = time.time_ns()
        by_job: dict[str, list[Active]] = {}
        for entry in done:
            by_job.setdefault(entry[0].id, []).append(entry)
        going_on: list[Active] = []
        for entries in by_job.values():
            job = entries[0][0]
            job.phase("denoise", entries[0][2], t_denoised, steps=entries[0][1].total_steps, batch_size=job.batch_size)
            if job.chain is not None:
                nxt = self._next_window(job, entries[0][1], key)
                if nxt is not None:
                    going_on.append(nxt)
                continue
            self._finish_takes(job, [state for _, state, _ in entries], key)
        return going_on

    def _finish_takes(self, job: Job, states: list[GenerationState], key: Hashable) -> None:
        clips: list = []
        t1 = time.time_ns()
        try:
            if job.cancel_requested:  # cancelled while a batch mate was decoding
                self.outcomes.cancelled(job)
                return
            t0 = time.time_ns()
            for state in states:
                clips.append(self._decode(job, state, key))
            t1 = time.time_ns()
            job.phase("decode", t0, t1)
            if job.cancel_requested:  # cancelled during its own decode: no result is kept
                self.outcomes.cancelled(job)
                clips = []
        except Exception as exc:
            self.call = None
            self.outcomes.fail_for(job, exc)
            clips = []
        finally:
            for state in states:
                self._release_state(state)
            with self._cond:
                if job in self.running:
                    self.running.remove(job)
                if clips:
                    self.encoder.claim(job)
        if clips and not self.encoder.encode(job, clips, self.model.sample_rate, t1):
            with self._cond:
                self.decoded_at.pop(job.id, None)
            self.outcomes.fail(job, SHUTTING_DOWN, 503)

    def _decode(self, job: Job, state: GenerationState, key: Hashable) -> Any:
        """`model.finish` of one row, timed for the estimates."""
        c0 = self._clock()
        self.call = Call("finish", c0, job.id)
        samples = self.model.finish(state)
        with self._cond:
            self.call = None
            self.decoded_at[job.id] = c1 = self._clock()
            self.scheduler.costs.observe_finish(key, c1 - c0)
        return samples

    def _next_window(self, job: Job, state: GenerationState, key: Hashable) -> Active | None:
        """A long-form job's window is denoised: decode it into the chain's output, then start the next window
        (checking for a cancel between the two), or deliver the whole clip after the last one."""
        chain: Chain = job.chain
        going_on: Active | None = None
        try:
            if job.cancel_requested:
                self.outcomes.cancelled(job)
                return None
            t0 = time.time_ns()
            audio = self._decode(job, state, key)
            chain.add(audio)
            del audio
            job.phase("decode", t0, time.time_ns(), window=chain.index - 1)
            with self._cond:
                self.decoded_at.pop(job.id, None)
                job.step = chain.steps_done
            if chain.index >= chain.count:
                data = chain.result()
                rate = self.model.sample_rate
                self.outcomes.done(job, JobResult(data, job.format, rate, self.model.channels, chain.written))
                return None
            if job.cancel_requested:  # between windows
                self.outcomes.cancelled(job)
                return None
            going_on = (job, self._start(job, chain.next_params(), key), time.time_ns())
            return going_on
        except Exception as exc:
            self.call = None
            self.outcomes.fail_for(job, exc)
            return None
        finally:
            self._release_state(state)
            if going_on is None:
                self._end_chain(job)
                with self._cond:
                    if job in self.running:
                        self.running.remove(job)

    def _end_chain(self, job: Job) -> None:
        """Free a long-form job's chain (its encoder and kept overlap) once the job ends or fails to go on; what it
        measured stays readable on the job."""
        chain = job.chain
        if chain is not None:
            try:
                chain.close()
            except Exception:
                log.exception("closing a long-form chain failed")

    # -- helpers ---------------------------------------------------------------------
    def _mark_running(self, jobs: list[Job], batch_size: int) -> None:
        now_ns = time.time_ns()
        for job in jobs:
            job.status = JobStatus.running
            job.started = now_ns / 1e9
            job.phase("queue", int(job.created * 1e9), now_ns, batch_size=batch_size)

    def _key_of(self, params: GenerationParams) -> Hashable:
        """The model's batch key of the job's rows (a long-form job's: its windows')."""
        return tuple(self.model.batch_key(window_params(params)))

    def _release_state(self, state: GenerationState) -> None:
        try:
            self.model.release(state)
        except Exception:
            log.exception("model.release failed")

    def _sweep_expired(self) -> None:
        with self._cond:
            expired = self.scheduler.expire(self._clock())
            self.price_expired(expired)
        self.fail_expired(expired)

    def price_expired(self, expired: list[Expired]) -> None:
        """Give each dropped job the Retry-After its answer carries (call under the lock, before failing them)."""
        if not expired:
            return
        now, running, mixed = self._clock(), self.snapshot(), self.model.mixed_steps
        for item in expired:
            key = self.price_key(item.job.params)
            item.job.retry_after_s = self.scheduler.retry_after(
                now, running, mixed_steps=mixed, job=item.job, price_key=key
            )

    def fail_expired(self, expired: list[Expired]) -> None:
        for item in expired:
            self.outcomes.fail(item.job, item.reason, 503)

    # -- estimates -------------------------------------------------------------------
    def snapshot(self) -> RunningBatch | None:
        """The running batch as a forecast needs it (call under the lock): its rows, the call in progress, and
        the clips with the encoder."""
        if not self.running and not self.encoder.jobs:
            return None
        rows = tuple(
            Row(
                job.id,
                (job.total_steps - job.step) if job.total_steps else steps_of(job.params),
                started=bool(job.total_steps),
                deadline=job.deadline_at,
                rows=rows_of(job.params),
            )
            for job in self.running
            if not job.ended and not job.cancel_requested
        )
        return RunningBatch(self.key, rows, self.call, encoding=tuple(j.id for j in self.encoder.jobs))

    def forecast(self) -> Forecast:
        """The scheduler's forecast from what this worker is doing now (call under the lock)."""
        return self.scheduler.forecast(self._clock(), self.snapshot(), mixed_steps=self.model.mixed_steps)

    def stamp(self) -> Forecast:
        """Forecast, and write each queued and running job's place and ETA on it (call under the lock)."""
        fc = self.forecast()
        wall = time.time()
        for pos, job in enumerate(self.scheduler.queued(), start=1):
            job.position = pos
            _stamp(job, fc, wall)
        for job in self.running + self.encoder.jobs:
            job.position = None
            _stamp(job, fc, wall)
        self._stamped_at = fc.now
        return fc

    def price_key(self, params: GenerationParams) -> Hashable | None:
        """The batch key to price a job by, or None when it cannot be computed (then priced as a batch of its
        own; the error is the worker's to judge when the job is scheduled). Any error counts here, not only an
        `Exception`: pricing must not turn the model's failure into the caller's (see `Ticket.price_key`)."""
        try:
            return self._key_of(params)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            return None

    def warm_up(self, params: GenerationParams, steps: int, rounds: int = 2) -> None:
        """Measure the model before any request, for `params`' batch key: `rounds` short generations, of which
        only the last is timed (the first calls pay for lazy initialisation: kernels chosen, memory first touched,
        and were measured several times slower than the same calls a moment later). Each round starts one request,
        runs `steps` forward passes of it alone and decodes it; then, when batches may hold more than one request,
        `steps` passes of a full batch, so that the price of a batch is measured rather than guessed (the same CPU
        was measured at 1.6x one row's time for four rows of the tiny model, near 4x for a real one; a GPU near
        1x). Not counted in `stats`; states are released; an error propagates (the engine logs it and leaves the
        estimate to the first request)."""
        key = self._key_of(params)
        for round_ in range(rounds):
            # a prompt of its own per round, so the timed start encodes text as a request's does
            p = dataclasses.replace(params, prompt=f"{params.prompt} {round_}")
            self._warm_up_once(p, key, steps, timed=round_ == rounds - 1)

    def _warm_up_once(self, params: GenerationParams, key: Hashable, steps: int, timed: bool) -> None:
        model, clock = self.model, self._clock
        observed: list[tuple[str, int, float]] = []  # (what, rows, seconds)
        states: list[GenerationState] = []
        try:
            t0 = clock()
            states.append(model.start(params))
            observed.append(("start", 1, clock() - t0))
            for _ in range(steps):
                t0 = clock()
                model.step(states[:1])
                observed.append(("step", 1, clock() - t0))
            t0 = clock()
            model.finish(states[0])
            observed.append(("finish", 1, clock() - t0))
            rows = self.scheduler.max_batch_size
            if rows > 1:  # a fresh batch: rows at one step, as every family's forward pass accepts
                batch = [model.start(dataclasses.replace(params, seed=params.seed + i + 1)) for i in range(rows)]
                states += batch
                for _ in range(steps):
                    t0 = clock()
                    model.step(batch)
                    observed.append(("step", rows, clock() - t0))
        finally:
            for state in states:
                self._release_state(state)
        if timed:
            costs = self.scheduler.costs
            with self._cond:
                for what, rows, seconds in observed:
                    if what == "start":
                        costs.observe_start(key, seconds)
                    elif what == "step":
                        costs.observe_step(key, rows, seconds)
                    else:
                        costs.observe_finish(key, seconds)

    def _fail_broken(self, broken: list[tuple[Job, Exception]]) -> None:
        for job, exc in broken:
            self.outcomes.fail_for(job, exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no message"


def _stamp(job: Job, fc: Forecast, wall: float) -> None:
    job.eta_s = fc.eta(job.id)
    job.estimated_at = wall
