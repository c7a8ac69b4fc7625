"""Admission that knows time: measured step costs, forecasts, caller deadlines, Retry-After.

The first half is plain data (the `Scheduler` with costs set by hand, every time passed in); the second drives
an `Engine` on the gated fake model with a clock the test moves: a step "takes" exactly what the test advances
the clock by while the worker stands at the step gate, so every estimate below is exact arithmetic, and no
assertion depends on how fast anything runs.
"""

from __future__ import annotations

import asyncio

import pytest

from stable_audio_service.engine import Engine, Job, JobStatus, QueueFull, Scheduler, WouldMissDeadline
from stable_audio_service.engine.estimates import Call, Row, RunningBatch, StepTimes
from stable_audio_service.models.base import GenerationParams

from .fake_model import GATE_TIMEOUT_S, FakeClock, FakeModel, Gate, Watcher, params


# -- plain data ----------------------------------------------------------------------------
def job(name: str, key: str = "a", steps: int = 4, max_wait_s: float | None = None, now: float = 0.0) -> Job:
    """A job whose batch key is `key` (carried in the prompt), with an optional deadline `max_wait_s` after `now`."""
    p = GenerationParams(prompt=key, duration=1.0, guidance_scale=7.0, num_inference_steps=steps, seed=1)
    j = Job(id=name, params=p, max_wait_s=max_wait_s)
    j.deadline_at = None if max_wait_s is None else now + max_wait_s
    return j


def scheduler(max_batch_size: int = 4, **costs: dict) -> Scheduler:
    """A scheduler whose costs are set by hand: `a={"step": {rows: s}, "start": s, "finish": s}`."""
    sched = Scheduler(max_batch_size=max_batch_size, queue_size=64, queue_timeout_s=1000.0, batch_wait_s=0.0)
    for key, c in costs.items():
        for rows, seconds in c.get("step", {}).items():
            sched.costs.observe_step(key, rows, seconds)
        sched.costs.observe_start(key, c.get("start", 0.0))
        sched.costs.observe_finish(key, c.get("finish", 0.0))
    return sched


def queued(sched: Scheduler, *jobs: Job, now: float = 0.0) -> None:
    for j in jobs:
        sched.admit(j, now, price_key=j.params.prompt)
    assert sched.assign_keys(lambda p: p.prompt) == []


A = {"step": {1: 1.0, 2: 1.5}, "start": 0.25, "finish": 0.5}


def test_step_times_average_then_follow_and_damp_outliers():
    t = StepTimes()
    assert not t.known and t.step("a", 1) is None and t.alone("a", 4) is None
    for _ in range(3):
        t.observe_step("a", 1, 1.0)
    assert t.step("a", 1) == 1.0
    t.observe_step("a", 1, 4.0)  # the fourth sample weighs a quarter
    assert t.step("a", 1) == 1.75
    t.observe_step("a", 1, 100.0)  # counted as at most 4x the estimate: 7.0, weighing a fifth
    assert t.step("a", 1) == pytest.approx(1.75 + 0.2 * (7.0 - 1.75))


def test_unmeasured_batch_sizes_and_keys_are_priced_from_what_was_measured():
    t = StepTimes()
    t.observe_step("a", 2, 3.0)
    assert t.step("a", 4) == 6.0  # one size known: proportional above it...
    assert t.step("a", 1) == 3.0  # ...and never cheaper below it
    t.observe_step("a", 1, 2.0)
    assert t.step("a", 4) == 5.0  # two sizes: a line through them (2 s + 1 s per extra row)
    assert t.step("b", 1) == 2.0  # a key never seen: the average of the known keys
    t.observe_start("a", 0.5)
    t.observe_finish("a", 1.0)
    assert t.alone("a", 10) == 0.5 + 10 * 2.0 + 1.0


def test_a_forecast_replays_the_batching_policy():
    sched = scheduler(a=A, b={"step": {1: 2.0}, "finish": 1.0})
    a1, b1, a2 = job("a1"), job("b1", "b", steps=2), job("a2")
    queued(sched, a1, b1, a2)
    fc = sched.forecast(10.0)
    # a1 and a2 share a batch (a2 overtakes b1): two starts, 4 steps of two rows, two decodes; then b1 alone
    assert fc.starts == {"a1": 10.0, "a2": 10.0, "b1": 17.5}
    assert fc.finishes == {"a1": 17.0, "a2": 17.5, "b1": 22.5}
    assert fc.start_in("b1") == 7.5 and fc.eta("b1") == 12.5 and fc.drain_s() == 12.5 and not fc.guessed


def test_a_forecast_joins_a_running_batch_at_step_boundaries_only_when_the_model_can():
    sched = scheduler(max_batch_size=2, a=A)
    queued(sched, job("a2"))
    running = RunningBatch("a", (Row("a1", 3),))
    joined = sched.forecast(0.0, running, mixed_steps=True)
    # a2 joins at once: its start, 3 steps of two rows, a1's decode, a2's last step alone, its decode
    assert joined.starts["a2"] == 0.0 and joined.finishes == {"a1": 5.25, "a2": 6.75}
    after = sched.forecast(0.0, running, mixed_steps=False)
    # a2 waits for a1's batch to end: 3 steps and a decode, then its start, 4 steps and decode
    assert after.starts["a2"] == 3.5 and after.finishes == {"a1": 3.5, "a2": 8.25}


def test_a_forecast_counts_what_is_left_of_the_call_in_progress():
    sched = scheduler(a=A)
    half = sched.forecast(0.0, RunningBatch("a", (Row("a1", 2),), Call("step", since=-0.25, rows=1)))
    assert half.finishes["a1"] == 0.75 + 1.0 + 0.5
    late = sched.forecast(0.0, RunningBatch("a", (Row("a1", 2),), Call("step", since=-5.0, rows=1)))
    assert late.finishes["a1"] == 1.0 + 0.5  # an overrunning step is taken to end now
    decoding = RunningBatch("a", (Row("a1", 0), Row("a2", 0)), Call("finish", since=0.0, job_id="a1"))
    assert sched.forecast(0.0, decoding).finishes == {"a1": 0.5, "a2": 1.0}
    encoding = sched.forecast(3.0, RunningBatch("a", encoding=("a0",)))
    assert encoding.finishes == {"a0": 3.0} and encoding.eta("a0") == 0.0


def test_without_measurements_nothing_is_refused_and_nothing_is_claimed():
    sched = Scheduler(batch_wait_s=0.0)
    hopeful = job("hopeful", max_wait_s=0.001)
    assert sched.admit(hopeful, 0.0, price_key="a") == 1
    fc = sched.forecast(0.0)
    assert "hopeful" in fc.guessed and fc.eta("hopeful") is None and fc.start_in("hopeful") is None


def test_a_job_estimated_to_finish_after_its_deadline_is_refused_with_the_estimate():
    sched = scheduler(a={"step": {1: 1.0}, "start": 0.25})
    running = RunningBatch("a", (Row("r", 2),))
    with pytest.raises(WouldMissDeadline) as refused:
        sched.admit(job("late", steps=4, max_wait_s=5.0), 0.0, price_key="a", running=running)
    err = refused.value
    # 2 s for the running job, then 0.25 + 4 x 1 s: 6.25 s, 1.25 s past the deadline
    assert err.estimate_s == 6.25 and err.max_wait_s == 5.0 and err.retry_after_s == 2.0 and err.alone_s == 4.25
    assert "6.2 s" in str(err) and "deadline of 5 s" in str(err) and "retry in about 2 s" in str(err)
    assert err.detail() == {
        "message": str(err),
        "estimate_s": 6.25,
        "max_wait_s": 5.0,
        "retry_after_s": 2.0,
        "alone_s": 4.25,
    }
    assert len(sched) == 0  # nothing left behind
    impossible = job("impossible", steps=10, max_wait_s=5.0)
    with pytest.raises(WouldMissDeadline, match="even on an idle server it needs about 10.2 s"):
        sched.admit(impossible, 0.0, price_key="a")
    assert sched.admit(job("just", steps=4, max_wait_s=6.25), 0.0, price_key="a", running=running) == 1


def test_a_newcomer_that_would_make_an_accepted_job_late_is_refused():
    sched = scheduler(a={"step": {1: 1.0}, "start": 0.25})
    running = RunningBatch("a", (Row("r", 2),))
    sched.admit(job("held", steps=4, max_wait_s=6.25), 0.0, price_key="a", running=running)
    # another "a" job would share held's batch: a step of two rows (2 s, proportional) makes it finish at 7.5
    with pytest.raises(WouldMissDeadline, match="make 1 accepted job") as refused:
        sched.admit(job("rider", steps=1), 0.0, price_key="a", running=running)
    assert refused.value.retry_after_s == 7.0 and refused.value.max_wait_s is None  # once held is done
    # a job of another key waits behind it: no harm done
    assert sched.admit(job("other", "b", steps=1), 0.0, price_key="b", running=running) == 2


def test_a_running_jobs_deadline_is_protected_from_joiners():
    sched = scheduler(a={"step": {1: 1.0}})
    running = RunningBatch("a", (Row("r", 4, deadline=4.0),))
    with pytest.raises(WouldMissDeadline, match="make 1 accepted job"):
        sched.admit(job("joiner", steps=1), 0.0, price_key="a", running=running, mixed_steps=True)
    assert sched.admit(job("later", steps=1), 0.0, price_key="a", running=running, mixed_steps=False) == 1


def test_queued_jobs_are_dropped_when_their_deadline_passes_or_can_no_longer_be_met():
    sched = scheduler(a={"step": {1: 1.0}})
    tight = job("tight", steps=4, max_wait_s=10.0)
    sched.admit(tight, 0.0, price_key="a")
    assert sched.expire(6.0) == []  # 6 + 4 s of work = 10: still possible
    (dropped,) = sched.expire(6.5)
    assert dropped.job is tight and "could no longer finish within its deadline (max_wait_s=10)" in dropped.reason
    blind = Scheduler()
    unknown = job("unknown", max_wait_s=3.0)
    blind.admit(unknown, 0.0)
    assert blind.expire(2.9) == []
    (dropped,) = blind.expire(3.0)
    assert dropped.job is unknown and "deadline (max_wait_s=3) passed while it was queued" in dropped.reason


def test_the_next_expiry_is_the_earliest_time_a_queued_job_must_go():
    sched = scheduler(a={"step": {1: 1.0}})
    assert sched.next_expiry() is None
    sched.admit(job("patient", steps=4), 0.0, price_key="a")
    assert sched.next_expiry() == 1000.0  # the queue timeout
    sched.admit(job("tight", steps=4, max_wait_s=10.0), 0.0, price_key="a")
    assert sched.next_expiry() == 6.0  # 4 s of work before a deadline at 10: hopeless from 6 on


def test_retry_after_comes_from_the_forecast():
    sched = Scheduler(max_batch_size=4, queue_size=1, batch_wait_s=0.0)
    sched.costs.observe_step("a", 1, 1.0)
    sched.costs.observe_start("a", 0.0)
    sched.costs.observe_finish("a", 0.0)
    running = RunningBatch("a", (Row("r", 2, started=True),))
    sched.admit(job("first", steps=3), 0.0, price_key="a", running=running)
    with pytest.raises(QueueFull) as full:
        sched.admit(job("second"), 0.0, price_key="a", running=running)
    assert full.value.retry_after_s == 2.0  # first leaves the queue when r is done
    assert sched.retry_after(0.0, running) == 2.0
    # a job like `gone` queued now would share first's batch: 2 s, then 2 steps of two rows (4 s): 2 s too late
    gone = job("gone", steps=2, max_wait_s=4.0)
    assert sched.retry_after(0.0, running, job=gone, price_key="a") == 2.0
    assert Scheduler().retry_after(0.0) == 1.0  # idle: at least a second, never 0


# -- the engine, on a clock the test moves -------------------------------------------------
@pytest.fixture()
def rig():
    """An engine on the fake model (steps held at a closed gate) and a fake monotonic clock; shut down after."""
    clock, model, watch = FakeClock(0.0), FakeModel(), Watcher()
    model.step_gate = Gate(free=False)
    engine = Engine(model, observer=watch, batch_wait_ms=0, monotonic=clock)
    engine.start()
    yield engine, model, watch, clock
    for gate in (model.start_gate, model.step_gate, model.finish_gate):
        gate.open()
    engine.shutdown(grace_s=5)


def steps(model: FakeModel, clock: FakeClock, *seconds: float) -> None:
    """Let the worker through one held step per item, each taking that many seconds of the fake clock."""
    for s in seconds:
        model.step_gate.wait_arrival()
        clock.advance(s)
        model.step_gate.allow()


def learn(engine: Engine, model: FakeModel, watch: Watcher, clock: FakeClock, step_s: float = 2.0) -> None:
    """Run one 3-step job whose every step takes `step_s`: the engine then prices a step of one row."""
    first = engine.submit(params(seed=100, steps=3))
    steps(model, clock, step_s, step_s, step_s)
    watch.wait(first)
    assert engine.scheduler.costs.step((3, 1.0), 1) == step_s


def test_the_engine_learns_its_step_time_and_forecasts_each_job(rig):
    engine, model, watch, clock = rig
    assert engine.drain_s() is None and engine.scheduler.costs.known is False
    learn(engine, model, watch, clock)
    assert engine.drain_s() == 0.0
    running = engine.submit(params(seed=1, steps=3))
    model.step_gate.wait_arrival()  # inside its first step
    waiting = engine.submit(params(seed=2, steps=3))
    # running: this step (2 s) and two more; waiting: a batch of its own after it, three steps
    assert engine.estimate(running) == (None, 6.0)
    assert engine.estimate(waiting) == (1, 12.0)
    assert waiting.position == 1 and waiting.eta_s == 12.0  # also stamped on the job, for every reader
    clock.advance(1.5)
    assert engine.estimate(waiting) == (1, 10.5) and engine.drain_s() == 10.5
    clock.advance(0.5)  # the step took 2 s, as the estimate said
    model.step_gate.allow()
    steps(model, clock, 2.0, 2.0)  # the running job's last two steps
    watch.wait(running)
    assert engine.estimate(waiting) == (None, 6.0)
    steps(model, clock, 2.0, 2.0, 2.0)
    watch.wait(waiting)
    assert waiting.status == JobStatus.done and engine.estimate(waiting) == (None, None)


def test_a_request_that_cannot_meet_its_deadline_is_refused_at_once(rig):
    engine, model, watch, clock = rig
    learn(engine, model, watch, clock)
    running = engine.submit(params(seed=1, steps=3))
    model.step_gate.wait_arrival()
    with pytest.raises(WouldMissDeadline) as refused:
        engine.submit(params(seed=2, steps=3), max_wait_s=10.0)
    err = refused.value
    assert err.estimate_s == 12.0 and err.max_wait_s == 10.0 and err.retry_after_s == 2.0 and err.alone_s == 6.0
    assert engine.queue_depth() == 0 and all(j.params.seed != 2 for j in engine._jobs.values())  # not kept
    accepted = engine.submit(params(seed=3, steps=3), max_wait_s=12.0)
    # the same key again would share accepted's batch and make it late: refused for its sake
    with pytest.raises(WouldMissDeadline, match="miss their deadline"):
        engine.submit(params(seed=4, steps=3))
    other = engine.submit(params(seed=5, steps=1, duration=2.0))  # another key: runs after, harms nobody
    model.step_gate.open()
    watch.wait(running, accepted, other)
    assert accepted.status == JobStatus.done and other.status == JobStatus.done


def test_a_job_whose_deadline_passes_in_the_queue_is_dropped_not_run(rig):
    engine, model, watch, clock = rig
    running = engine.submit(params(seed=1, steps=3), max_wait_s=1.0)  # nothing measured yet: admitted
    model.step_gate.wait_arrival()
    doomed = engine.submit(params(seed=2, steps=3), max_wait_s=5.0)
    clock.advance(6.0)
    model.step_gate.allow()  # after this step the worker sweeps the queue
    watch.wait(doomed)
    assert doomed.status == JobStatus.failed and doomed.error_status == 503
    assert "deadline (max_wait_s=5) passed while it was queued" in doomed.error
    # measured now: 6 s a step. The running job has 2 steps left (12 s), a retry's own 3 steps 18 s: it could
    # finish 30 s from now, 25 s more than its 5 s allow
    assert doomed.retry_after_s == 25.0
    assert [s for s in model.started if s.seed == 2] == []  # never started
    steps(model, clock, 1.0, 1.0)
    watch.wait(running)
    assert running.status == JobStatus.done  # past its own deadline, but running jobs finish


def test_a_deadline_is_answered_while_the_worker_is_inside_a_long_step():
    """The janitor drops a queued job when its deadline comes, without waiting for the worker (held in a step
    here: it cannot sweep the queue until the test lets it go)."""
    model, watch = FakeModel(), Watcher()
    model.step_gate = Gate(free=False)
    engine = Engine(model, observer=watch, batch_wait_ms=0)
    engine.start()
    try:
        held = engine.submit(params(seed=1, steps=2))
        model.step_gate.wait_arrival()
        doomed = engine.submit(params(seed=2, steps=2), max_wait_s=0.2)
        watch.wait(doomed)
        assert doomed.status == JobStatus.failed and doomed.error_status == 503 and not held.ended
        assert "passed while it was queued" in doomed.error and doomed.retry_after_s >= 1
    finally:
        model.step_gate.open()
        engine.shutdown(grace_s=5)


def test_sweeping_while_a_step_overruns_prices_the_retry_from_the_state_of_the_worker(rig):
    engine, model, watch, clock = rig
    learn(engine, model, watch, clock)
    running = engine.submit(params(seed=1, steps=3))
    model.step_gate.wait_arrival()
    doomed = engine.submit(params(seed=2, steps=3), max_wait_s=12.5)  # estimated 12 s: admitted
    clock.advance(13.0)  # the step in progress overran its 2 s by 11
    assert engine.sweep() == 1 and doomed.status == JobStatus.failed
    # taken to end now: the running job's 2 more steps (4 s) and a retry's own 6 s fit in 12.5 s: retry at once
    assert doomed.retry_after_s == 1.0
    model.step_gate.open()
    watch.wait(running)


def test_a_queued_job_that_can_no_longer_make_it_is_answered_before_its_deadline(rig):
    engine, model, watch, clock = rig
    learn(engine, model, watch, clock)
    running = engine.submit(params(seed=1, steps=3))
    model.step_gate.wait_arrival()
    hopeful = engine.submit(params(seed=2, steps=3, duration=2.0), max_wait_s=12.0)  # estimated: exactly 12 s
    clock.advance(5.0)  # a slow step: 3 s behind the estimate
    model.step_gate.allow()
    watch.wait(hopeful)
    assert hopeful.status == JobStatus.failed and "could no longer finish within its deadline" in hopeful.error
    model.step_gate.open()
    watch.wait(running)


def test_a_full_queue_says_when_a_place_frees(rig):
    engine, model, watch, clock = rig
    engine.queue_size = 1
    learn(engine, model, watch, clock)
    engine.submit(params(seed=1, steps=3))
    model.step_gate.wait_arrival()
    engine.submit(params(seed=2, steps=3))
    with pytest.raises(QueueFull) as full:
        engine.submit(params(seed=3))
    assert full.value.retry_after_s == 6.0  # the head of the queue starts when the running job is done
    assert engine.retry_after_s() == 6.0


def test_queued_events_carry_the_place_and_the_eta(rig):
    engine, model, watch, clock = rig
    learn(engine, model, watch, clock)
    engine.submit(params(seed=1, steps=3))
    model.step_gate.wait_arrival()
    waiting = engine.submit(params(seed=2, steps=3))

    async def first_two() -> list[dict]:
        events = engine.subscribe(waiting)
        first = await asyncio.wait_for(events.get(), GATE_TIMEOUT_S)
        clock.advance(2.0)
        model.step_gate.allow()  # the running job's step ends; 2 s passed: the ETA is refreshed
        model.step_gate.wait_arrival()
        return [first, await asyncio.wait_for(events.get(), GATE_TIMEOUT_S)]

    first, second = asyncio.run(first_two())
    assert first == {"type": "queued", "position": 1, "eta_s": 12.0}
    assert second == {"type": "queued", "position": 1, "eta_s": 10.0}


def test_the_warm_up_measures_before_the_first_request_and_counts_nothing():
    clock, model = FakeClock(0.0), FakeModel()
    engine = Engine(model, batch_wait_ms=0, monotonic=clock, warm_up=True)
    engine.start()
    try:
        assert engine.scheduler.costs.known and engine.drain_s() == 0.0
        # two rounds (the first pays for lazy initialisation and is not timed) of 3 passes of one request, then 3
        # of a full batch (4 by default); none counted
        assert [len(b) for b in model.batches] == [1, 1, 1, 4, 4, 4] * 2
        assert engine.stats["forward_passes"] == 0 and engine.queue_depth() == 0
        assert [p.prompt for p in model.started] == ["warm-up 0"] * 5 + ["warm-up 1"] * 5
        assert engine.scheduler.costs.describe()["(4, 1.0)"]["step_s"] == {1: 0.0, 4: 0.0}
    finally:
        engine.shutdown(grace_s=5)


def test_a_failing_warm_up_leaves_the_engine_serving():
    model = FakeModel()
    model.finish_error = RuntimeError("decode broke")
    engine = Engine(model, batch_wait_ms=0, warm_up=True)
    engine.start()
    try:
        assert engine.accepting and not engine.scheduler.costs.known  # nothing half-measured is kept
    finally:
        engine.shutdown(grace_s=5)


def test_every_503_failure_says_when_to_retry():
    model, watch = FakeModel(), Watcher()
    model.finish_error = RuntimeError("CUDA out of memory while decoding")
    engine = Engine(model, observer=watch, batch_wait_ms=0)
    engine.start()
    try:
        job = engine.submit(params(seed=1, steps=1))
        watch.wait(job)
        assert job.error_status == 503 and "out of memory" in job.error and job.retry_after_s >= 1
    finally:
        engine.shutdown(grace_s=5)
