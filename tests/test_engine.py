"""The engine, deterministically: batching, cancel (queued, running, decoding), what is kept and
for how long, drain. A fake model whose phases wait at gates decides the interleavings; no test
depends on how fast anything runs. The last test checks batched == solo on the real tiny model."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
import soundfile as sf

from stable_audio_service.config import Settings
from stable_audio_service.engine import Engine, JobStatus, NotAccepting, QueueFull

from .fake_model import GATE_TIMEOUT_S, FakeClock, FakeModel, Gate, GatedEncode, Watcher, params


@pytest.fixture()
def make_engine():
    """Engines started on a model, shut down (gates opened) after the test."""
    made: list[tuple[Engine, object]] = []

    def make(model=None, **kw):
        model = model or FakeModel()
        watcher = kw.pop("observer", None) or Watcher()
        engine = Engine(model, observer=watcher, batch_wait_ms=kw.pop("batch_wait_ms", 0), **kw)
        engine.start()
        made.append((engine, model))
        return engine, model, watcher

    yield make
    for engine, model in made:
        for gate in ("start_gate", "step_gate", "finish_gate", "gate"):
            if isinstance(getattr(model, gate, None), Gate):
                getattr(model, gate).open()
        engine.shutdown(grace_s=5)


def pcm(job) -> np.ndarray:
    data, _ = sf.read(io.BytesIO(job.result.data), dtype="float32", always_2d=True)
    return data.T


def hold_worker(engine, model, seed: int = 999):
    """Submit a job with its own batch key and stop the worker inside its first step."""
    model.step_gate = Gate(free=False)
    blocker = engine.submit(params(seed=seed, steps=1, duration=0.5))
    model.step_gate.wait_arrival()
    return blocker


def test_jobs_queued_behind_a_busy_worker_run_as_one_batch(make_engine):
    engine, model, watch = make_engine(max_batch_size=3)
    blocker = hold_worker(engine, model)
    jobs = [engine.submit(params(seed=s)) for s in (1, 2, 3)]
    assert [engine.position(j) for j in jobs] == [1, 2, 3]
    model.step_gate.open()
    watch.wait(blocker, *jobs)
    assert model.batches == [[999], [1, 2, 3], [1, 2, 3], [1, 2, 3]]
    assert engine.stats["max_batch_seen"] == 3 and engine.stats["forward_passes"] == 4
    for job in jobs:
        assert job.status == JobStatus.done and job.batch_size == 3
        assert job.result.num_samples == 8000 and job.result.channels == 2
        np.testing.assert_allclose(pcm(job), job.params.seed / 1000, atol=1 / 32768)


def test_cancel_while_queued_never_starts(make_engine):
    engine, model, watch = make_engine()
    blocker = hold_worker(engine, model)
    job = engine.submit(params(seed=5))
    assert engine.cancel(job.id) is job
    assert job.status == JobStatus.cancelled and engine.position(job) is None
    model.step_gate.open()
    watch.wait(blocker)
    assert [p.seed for p in model.started] == [999]
    assert engine.get(job.id).status == JobStatus.cancelled and job.result is None


def test_cancel_while_running_leaves_batch_mates_alone(make_engine):
    engine, model, watch = make_engine(max_batch_size=2)
    blocker = hold_worker(engine, model)
    a, b = engine.submit(params(seed=1, steps=5)), engine.submit(params(seed=2, steps=5))
    model.step_gate.allow()  # the blocker's step
    model.step_gate.wait_arrival()  # [a, b], step 1
    model.step_gate.allow()
    model.step_gate.wait_arrival()  # [a, b], step 2
    engine.cancel(a.id)
    assert a.status == JobStatus.running and a.cancel_requested
    model.step_gate.open()
    watch.wait(blocker, a, b)
    assert a.status == JobStatus.cancelled and a.step == 2 and a.result is None
    assert b.status == JobStatus.done and b.step == 5
    assert model.batches == [[999], [1, 2], [1, 2], [2], [2], [2]]
    np.testing.assert_allclose(pcm(b), 0.002, atol=1 / 32768)


def test_cancel_during_decode_ends_cancelled_without_result(make_engine):
    engine, model, watch = make_engine()
    model.finish_gate = Gate(free=False)
    job = engine.submit(params(seed=3, steps=2))
    model.finish_gate.wait_arrival()
    assert job.status == JobStatus.running and job.step == 2
    assert engine.cancel(job.id) is job
    model.finish_gate.open()
    watch.wait(job)
    assert job.status == JobStatus.cancelled and job.result is None
    assert engine.result_bytes() == 0


def test_cancel_of_a_batch_mate_waiting_for_its_decode(make_engine):
    engine, model, watch = make_engine(max_batch_size=2)
    blocker = hold_worker(engine, model)
    a, b = engine.submit(params(seed=1, steps=1)), engine.submit(params(seed=2, steps=1))
    model.finish_gate = Gate(free=False)
    model.step_gate.open()
    model.finish_gate.wait_arrival()  # the blocker's decode
    model.finish_gate.allow()
    model.finish_gate.wait_arrival()  # a's decode; b waits its turn
    engine.cancel(b.id)
    model.finish_gate.open()
    watch.wait(blocker, a, b)
    assert a.status == JobStatus.done and b.status == JobStatus.cancelled
    assert len(model.seen_uploads) == 2  # b was never decoded


def test_predict_style_job_is_forgotten_when_it_ends(make_engine):
    engine, model, watch = make_engine()
    model.finish_gate = Gate(free=False)
    job = engine.submit(params(seed=4), keep=False)
    model.finish_gate.wait_arrival()
    assert engine.get(job.id) is job  # findable (and cancellable) while it runs
    model.finish_gate.open()
    watch.wait(job)
    assert job.status == JobStatus.done and job.result.num_samples == 8000  # the caller still has it
    assert engine.get(job.id) is None and engine.kept_count() == 0 and engine.result_bytes() == 0


def test_release_forgets_a_kept_job(make_engine):
    engine, model, watch = make_engine()
    job = engine.submit(params(seed=4))
    watch.wait(job)
    assert engine.get(job.id) is job and engine.result_bytes() == len(job.result.data) > 0
    engine.release(job)
    assert engine.get(job.id) is None and engine.result_bytes() == 0
    assert job.result is not None  # the caller's reference stays usable


def test_uploads_are_dropped_once_the_model_encoded_them(make_engine):
    engine, model, watch = make_engine()
    sr = model.sample_rate
    blocker = hold_worker(engine, model)
    init = engine.submit(params(seed=1, init_audio=np.ones((2, 10 * sr), np.float32)))
    source = np.ones((2, 10 * sr), np.float32)
    inpaint = engine.submit(params(seed=2, duration=1.5, inpaint_audio=source, inpaint_regions=[(0.5, 1.0)]))
    cancelled = engine.submit(params(seed=3, init_audio=np.ones((2, sr), np.float32)))
    engine.cancel(cancelled.id)
    assert cancelled.params.init_audio is None  # ended without starting: dropped at its end
    assert init.params.init_audio is not None and inpaint.params.inpaint_audio is source  # queued: kept
    model.step_gate.open()
    watch.wait(blocker, init, inpaint)
    assert model.uploads_at_start[1:] == [(True, False), (False, True)]  # start() had them ...
    assert model.seen_uploads[1:] == [(None, None), (None, None)]  # ... finish() no longer holds them
    for job in (init, inpaint):
        assert job.status == JobStatus.done
        assert job.params.init_audio is None and job.params.inpaint_audio is None


def test_finished_jobs_expire_after_the_ttl(make_engine):
    clock = FakeClock()
    engine, model, watch = make_engine(job_ttl_s=60, clock=clock)
    old = engine.submit(params(seed=1))
    watch.wait(old)
    clock.advance(30)
    new = engine.submit(params(seed=2))
    watch.wait(new)
    clock.advance(31)  # old: 61 s, new: 31 s
    assert engine.prune() == 1
    assert engine.get(old.id) is None and engine.get(new.id) is new
    clock.advance(30)
    assert engine.prune() == 1 and engine.kept_count() == 0


def test_finished_jobs_are_bounded_by_count(make_engine):
    engine, model, watch = make_engine(max_jobs_kept=2)
    jobs = [engine.submit(params(seed=s)) for s in range(4)]
    watch.wait(*jobs)
    assert [engine.get(j.id) for j in jobs] == [None, None, jobs[2], jobs[3]]
    assert engine.stats["results_evicted"] == 2


def test_finished_results_are_bounded_by_bytes_oldest_first(make_engine):
    engine, model, watch = make_engine()
    first = engine.submit(params(seed=1))
    watch.wait(first)
    size = len(first.result.data)
    engine.max_result_bytes = 2 * size + size // 2  # room for two results
    jobs = [first] + [engine.submit(params(seed=s)) for s in (2, 3)]
    watch.wait(*jobs)
    assert engine.get(first.id) is None and engine.result_bytes() == 2 * size
    assert [engine.get(j.id) for j in jobs[1:]] == jobs[1:]
    engine.max_result_bytes = 1  # smaller than one result: only the newest stays
    assert engine.prune() == 1 and engine.kept_count() == 1 and engine.get(jobs[2].id) is jobs[2]


def test_the_janitor_prunes_without_new_work(make_engine):
    clock = FakeClock()
    engine, model, watch = make_engine(job_ttl_s=10, clock=clock, prune_interval_s=0.01)
    job = engine.submit(params(seed=1))
    watch.wait(job)
    assert engine.get(job.id) is job
    clock.advance(11)
    gone = threading.Event()
    for _ in range(int(GATE_TIMEOUT_S / 0.01)):
        if engine.get(job.id) is None:
            gone.set()
            break
        gone.wait(0.01)
    assert gone.is_set(), "the expired job was never pruned"


def test_queue_full_refuses_and_drain_keeps_reads_working(make_engine):
    engine, model, watch = make_engine(queue_size=1)
    blocker = hold_worker(engine, model)
    queued = engine.submit(params(seed=2), keep=False)
    with pytest.raises(QueueFull):
        engine.submit(params(seed=3))
    stopper = threading.Thread(target=engine.shutdown, kwargs={"grace_s": GATE_TIMEOUT_S})
    stopper.start()
    while not engine.draining:
        stopper.join(0.01)
    assert not engine.accepting and engine.healthy
    with pytest.raises(NotAccepting):
        engine.submit(params(seed=4))

    async def follow():
        events = engine.subscribe(blocker)
        first = await events.get()
        model.step_gate.open()
        last = first
        while last["type"] not in ("done", "failed", "cancelled"):
            last = await asyncio.wait_for(events.get(), GATE_TIMEOUT_S)
        return first, last

    first, last = asyncio.run(follow())
    assert first["type"] == "step" and last["type"] == "done"
    stopper.join(GATE_TIMEOUT_S)
    assert not stopper.is_alive()
    watch.wait(queued)
    assert queued.status == JobStatus.done  # finished within the grace period
    assert engine.get(blocker.id).status == JobStatus.done and engine.get(blocker.id).result is not None


def test_shutdown_answers_what_the_grace_period_could_not_finish(make_engine):
    engine, model, watch = make_engine()
    running = hold_worker(engine, model)
    queued = engine.submit(params(seed=2))
    stopper = threading.Thread(target=engine.shutdown, kwargs={"grace_s": 0})
    stopper.start()
    watch.wait(queued)
    assert queued.status == JobStatus.failed and queued.error_status == 503
    model.step_gate.open()
    watch.wait(running)
    stopper.join(GATE_TIMEOUT_S)
    assert running.status == JobStatus.failed and running.error_status == 503 and running.result is None
    assert "shutting down" in running.error and engine.healthy


class HeldModel:
    """A real model whose 'blocker' request waits at a gate in start(), so the requests submitted
    meanwhile are all queued when the worker next looks: one batch, deterministically."""

    def __init__(self, model) -> None:
        self.model = model
        self.gate = Gate(free=False)
        self.outputs: dict[int, np.ndarray] = {}

    def __getattr__(self, name):
        return getattr(self.model, name)

    def start(self, p):
        if p.prompt == "blocker":
            self.gate.enter()
        return self.model.start(p)

    def finish(self, state):
        out = self.model.finish(state)
        self.outputs[state.params.seed] = out
        return out


def test_a_slow_encode_does_not_hold_up_the_next_requests(make_engine, monkeypatch):
    encode = GatedEncode(monkeypatch, hold={1})
    engine, model, watch = make_engine()
    decoded = threading.Event()
    real_finish = model.finish

    def finish(state):
        out = real_finish(state)
        if state.params.seed == 2:
            decoded.set()
        return out

    model.finish = finish
    slow = engine.submit(params(seed=1, steps=1), format="flac")
    assert encode.entered[1].wait(GATE_TIMEOUT_S)
    after = engine.submit(params(seed=2, steps=4))  # its own batch: denoised and decoded meanwhile
    assert decoded.wait(GATE_TIMEOUT_S)
    assert model.batches[-4:] == [[2]] * 4 and slow.status == JobStatus.running
    assert engine.running_count() == 2  # both still count (shutdown waits for them) until encoded
    encode.release(1)
    watch.wait(slow, after)
    assert slow.status == after.status == JobStatus.done
    assert sf.read(io.BytesIO(slow.result.data))[0][0, 0] == pytest.approx(0.001, abs=1e-4)  # its own samples
    assert slow.finished <= after.finished  # one encoder: clips end in the order they were decoded


def test_cancel_while_encoding_ends_cancelled_without_result(make_engine, monkeypatch):
    encode = GatedEncode(monkeypatch, hold={1})
    engine, model, watch = make_engine()
    job = engine.submit(params(seed=1, steps=1))
    assert encode.entered[1].wait(GATE_TIMEOUT_S)
    engine.cancel(job.id)
    encode.release(1)
    watch.wait(job)
    assert job.status == JobStatus.cancelled and job.result is None


def test_decoded_clips_waiting_for_the_encoder_are_bounded(make_engine, monkeypatch):
    """With max_batch_size 1, at most one decoded clip waits beside the one being encoded: the worker does
    not decode a third request until the encoder caught up (memory stays bounded however fast clips come)."""
    encode = GatedEncode(monkeypatch, hold={1})
    engine, model, watch = make_engine(max_batch_size=1)
    waiting_at_finish: list[int] = []
    second_decoded = threading.Event()
    real_finish = model.finish

    def finish(state):
        waiting_at_finish.append(len(engine.encoder.jobs))
        out = real_finish(state)
        if state.params.seed == 2:
            second_decoded.set()
        return out

    model.finish = finish
    jobs = [engine.submit(params(seed=seed, steps=1, duration=1.0 + seed)) for seed in (1, 2, 3)]
    assert second_decoded.wait(GATE_TIMEOUT_S)
    encode.release(1)
    watch.wait(*jobs)
    assert [j.status for j in jobs] == [JobStatus.done] * 3
    assert max(waiting_at_finish) <= 1, waiting_at_finish  # the third was decoded only once the first was encoded


def test_batched_equals_solo_on_the_tiny_model(tiny_dir, make_engine):
    from stable_audio_service.models.loading import load_model

    real, _ = load_model(Settings(model=str(tiny_dir), skip_memory_check=True))
    held = HeldModel(real)
    engine, _, watch = make_engine(held, max_batch_size=4)
    bodies = [
        params(seed=100 + i, steps=5, duration=1.0 + 0.5 * (i % 2), prompt=f"sound {i}", guidance_scale=1.0 + 3 * i)
        for i in range(4)
    ]
    bodies[1].negative_prompt = "hiss"
    blocker = engine.submit(params(seed=1, steps=5, prompt="blocker"))
    held.gate.wait_arrival()
    batched = [engine.submit(p) for p in bodies]
    held.gate.open()
    watch.wait(blocker, *batched)
    assert all(j.batch_size == 4 and j.status == JobStatus.done for j in batched)
    together = {s: held.outputs.pop(s) for s in range(100, 104)}
    for p in bodies:
        solo = engine.submit(
            params(
                seed=p.seed,
                steps=5,
                duration=p.duration,
                prompt=p.prompt,
                guidance_scale=p.guidance_scale,
                negative_prompt=p.negative_prompt,
            )
        )
        watch.wait(solo)
        assert solo.batch_size == 1
        assert together[p.seed].shape == (2, int(p.duration * 44100))
        np.testing.assert_allclose(together[p.seed], held.outputs[p.seed], atol=1e-5)
