"""The engine under faults: a worker that dies (or vanishes) is reported and every job answered;
errors a single request causes fail only that request; queue deadlines; encode failures."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from stable_audio_service.engine import WORKER_LOST, Engine, JobStatus, NotAccepting
from stable_audio_service.models.base import InvalidRequest

from .fake_model import GATE_TIMEOUT_S, FakeModel, Gate, GatedEncode, Watcher, params


class WorkerKiller(BaseException):
    """Not an Exception: nothing a batch guard may swallow (like SystemExit or KeyboardInterrupt)."""


class Fatal:
    """An on_fatal callback that records its calls."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.called = threading.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.called.set()


@pytest.fixture()
def rig():
    model = FakeModel()
    watch = Watcher()
    fatal = Fatal()
    engine = Engine(model, observer=watch, on_fatal=fatal, batch_wait_ms=0, prune_interval_s=0.02)
    engine.start()
    yield engine, model, watch, fatal
    for gate in (model.start_gate, model.step_gate, model.finish_gate):
        gate.open()
    engine.shutdown(grace_s=5)


def test_worker_death_in_take_batch_fails_everything_and_calls_on_fatal(rig):
    engine, model, watch, fatal = rig
    model.step_gate = Gate(free=False)
    running = engine.submit(params(seed=1, steps=2))
    model.step_gate.wait_arrival()
    queued = [engine.submit(params(seed=s, duration=2.0)) for s in (2, 3)]  # keys computed later, by the worker
    model.batch_key_error = WorkerKiller("boom in batch_key")
    model.step_gate.open()
    assert fatal.called.wait(GATE_TIMEOUT_S)
    watch.wait(running, *queued)
    assert running.status == JobStatus.done  # it had its key already; it finished before the death
    for job in queued:
        assert job.status == JobStatus.failed and job.error_status == 503 and job.error == WORKER_LOST
    assert fatal.reasons == ["the generation worker died (WorkerKiller: boom in batch_key)"]
    assert not engine.healthy and "WorkerKiller" in engine.fatal_reason
    assert not engine.accepting
    with pytest.raises(NotAccepting, match="restarting"):
        engine.submit(params(seed=4))
    assert engine.get(queued[0].id) is queued[0]  # reads keep working


def test_a_clip_in_the_encoder_when_the_worker_dies_is_still_delivered(monkeypatch):
    encode = GatedEncode(monkeypatch, hold={1})
    model, watch, fatal = FakeModel(), Watcher(), Fatal()
    engine = Engine(model, observer=watch, on_fatal=fatal, batch_wait_ms=0, prune_interval_s=0.02)
    engine.start()
    try:
        decoded = engine.submit(params(seed=1, steps=1))
        assert encode.entered[1].wait(GATE_TIMEOUT_S)
        model.batch_key_error = WorkerKiller("boom")
        doomed = engine.submit(params(seed=2, duration=2.0))
        assert fatal.called.wait(GATE_TIMEOUT_S)
        watch.wait(doomed)
        assert doomed.status == JobStatus.failed and doomed.error_status == 503
        assert decoded.status == JobStatus.running  # not failed: its audio exists, only the encode is left
        encode.release(1)
        watch.wait(decoded)
        assert decoded.status == JobStatus.done and decoded.result.data[:4] == b"RIFF"
    finally:
        encode.release(1)
        engine.shutdown(grace_s=5)


def test_worker_death_mid_batch_fails_the_running_jobs(rig):
    engine, model, watch, fatal = rig
    model.step_gate = Gate(free=False)
    a = engine.submit(params(seed=1, steps=3))
    model.step_gate.wait_arrival()
    b = engine.submit(params(seed=2, steps=3), keep=False)

    def killer(states):
        raise WorkerKiller("boom in step")

    model.step = killer
    model.step_gate.open()
    assert fatal.called.wait(GATE_TIMEOUT_S)
    watch.wait(a, b)
    assert a.status == b.status == JobStatus.failed and a.error_status == b.error_status == 503
    assert engine.running_count() == 0 and engine.queue_depth() == 0 and not engine.healthy
    assert len(fatal.reasons) == 1


def test_a_worker_thread_that_ends_any_other_way_is_noticed(rig):
    engine, model, watch, fatal = rig
    model.step_gate = Gate(free=False)
    running = engine.submit(params(seed=1, steps=2))
    model.step_gate.wait_arrival()
    queued = engine.submit(params(seed=2, duration=2.0))
    engine._worker.take_batch = lambda: None  # the loop returns as if told to stop, without a shutdown
    model.step_gate.open()
    watch.wait(running)
    engine._thread.join(GATE_TIMEOUT_S)
    assert not engine.healthy and engine.fatal_reason == "the generation worker thread is gone"
    assert fatal.called.wait(GATE_TIMEOUT_S)  # the janitor noticed and declared it
    watch.wait(queued)
    assert queued.status == JobStatus.failed and queued.error_status == 503


def test_a_bad_batch_key_fails_only_its_request(rig):
    engine, model, watch, fatal = rig
    model.step_gate = Gate(free=False)
    running = engine.submit(params(seed=1))
    model.step_gate.wait_arrival()
    bad = engine.submit(params(seed=2, duration=2.0))
    model.batch_key_error = ValueError("no key for you")
    model.step_gate.allow(3)  # running's steps
    watch.wait(bad)
    model.batch_key_error = None
    model.step_gate.open()
    good = engine.submit(params(seed=3))
    watch.wait(running, good)
    assert bad.status == JobStatus.failed and bad.error_status == 500 and "ValueError" in bad.error
    assert running.status == good.status == JobStatus.done
    assert engine.healthy and not fatal.called.is_set()


def test_a_failing_model_step_or_finish_fails_its_batch_and_the_worker_lives_on(rig):
    engine, model, watch, fatal = rig
    model.finish_error = RuntimeError("decoder exploded")
    failed = engine.submit(params(seed=1))
    watch.wait(failed)
    assert failed.status == JobStatus.failed and failed.error_status == 500 and "RuntimeError" in failed.error
    model.finish_error = None
    ok = engine.submit(params(seed=2))
    watch.wait(ok)
    assert ok.status == JobStatus.done and engine.healthy


def test_an_encode_failure_is_a_500_for_that_request(rig):
    engine, model, watch, fatal = rig
    real_finish = model.finish

    def nan_finish(state):
        out = real_finish(state)
        if state.params.seed == 1:
            out[:, 10] = np.nan
        return out

    model.finish = nan_finish
    bad = engine.submit(params(seed=1), format="ogg")
    good = engine.submit(params(seed=2), format="ogg")
    watch.wait(bad, good)
    assert bad.status == JobStatus.failed and bad.error_status == 500 and "non-finite" in bad.error
    assert good.status == JobStatus.done and good.result.data[:4] == b"OggS"


def test_a_request_the_model_finds_invalid_is_a_422_not_a_500(rig):
    """e.g. an adapter file that vanished after the request was accepted (or one a Ray ingress cannot check)."""
    engine, model, watch, fatal = rig
    real_start = model.start

    def picky_start(p):
        if p.seed == 1:
            raise InvalidRequest("loras: no adapter named 'gone'")
        return real_start(p)

    model.start = picky_start
    bad = engine.submit(params(seed=1))
    good = engine.submit(params(seed=2))
    watch.wait(bad, good)
    assert bad.status == JobStatus.failed and bad.error_status == 422 and "gone" in bad.error
    assert good.status == JobStatus.done and engine.healthy


def test_queued_past_the_deadline_is_answered_503(rig):
    engine, model, watch, fatal = rig
    engine.queue_timeout_s = 0.05
    model.step_gate = Gate(free=False)
    running = engine.submit(params(seed=1, steps=2))
    model.step_gate.wait_arrival()
    late = engine.submit(params(seed=2, duration=2.0))
    deadline = engine.scheduler.deadline(late)
    while time.monotonic() <= deadline:  # let its deadline pass while the worker is held
        time.sleep(0.01)
    model.step_gate.open()
    watch.wait(running, late)
    assert late.status == JobStatus.failed and late.error_status == 503 and "waited in the queue" in late.error
    assert running.status == JobStatus.done


def test_on_fatal_may_shut_the_engine_down_from_the_dying_worker():
    model, watch = FakeModel(), Watcher()
    done = threading.Event()
    engine = None

    def stop_everything(reason: str) -> None:
        engine.shutdown(grace_s=0)  # runs on the worker thread itself: must not try to join it
        done.set()

    engine = Engine(model, observer=watch, on_fatal=stop_everything, batch_wait_ms=0)
    engine.start()
    model.batch_key_error = WorkerKiller("boom")
    job = engine.submit(params(seed=1))
    assert done.wait(GATE_TIMEOUT_S)
    watch.wait(job)
    engine._thread.join(GATE_TIMEOUT_S)
    assert not engine._thread.is_alive() and job.error_status == 503 and not engine.healthy
