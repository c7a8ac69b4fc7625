"""Continuous batching, deterministically: a request submitted while a batch runs joins it at the next
step boundary when the model can serve rows at different steps (`mixed_steps`), never overtakes an older queued
request of another key, respects `max_batch_size`, and leaves the batch as soon as its own steps are done. Gates
decide the interleavings; nothing depends on timing. The last tests check that on the tiny Stable Audio 3 model a
request's audio does not depend on when it joined (batched at mixed steps == solo, bitwise)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from stable_audio_service.engine import Engine, JobStatus
from stable_audio_service.models.base import GenerationParams, GenerationState, check_batch

from .fake_model import FakeModel, Gate, Watcher, params


def pcm(job) -> np.ndarray:
    data, _ = sf.read(io.BytesIO(job.result.data), dtype="float32", always_2d=True)
    return data.T


class MixedFakeModel(FakeModel):
    """The fake model, declaring that one forward pass may serve states at different steps."""

    mixed_steps = True

    def __init__(self) -> None:
        super().__init__()
        self.steps_seen: list[list[int]] = []  # the step of each state in each forward pass

    def step(self, states: list[GenerationState]) -> None:
        check_batch(states, mixed_steps=self.mixed_steps)
        self.steps_seen.append([s.step for s in states])
        super().step(states)


@pytest.fixture()
def make_engine():
    made: list[tuple[Engine, FakeModel]] = []

    def make(model: FakeModel, **kw):
        watcher = Watcher()
        engine = Engine(model, observer=watcher, batch_wait_ms=0, **kw)
        engine.start()
        made.append((engine, model))
        return engine, watcher

    yield make
    for engine, model in made:
        for gate in (model.start_gate, model.step_gate, model.finish_gate):
            gate.open()
        engine.shutdown(grace_s=5)


def held_first_step(engine: Engine, model: FakeModel, seed: int, **kw):
    """Submit a job and stop the worker inside its first forward pass."""
    model.step_gate = Gate(free=False)
    job = engine.submit(params(seed=seed, **kw))
    model.step_gate.wait_arrival()
    return job


def test_a_request_joins_a_running_batch_at_the_next_step_boundary(make_engine):
    model = MixedFakeModel()
    engine, watch = make_engine(model, max_batch_size=4)
    first = held_first_step(engine, model, seed=1, steps=3)
    late = engine.submit(params(seed=2, steps=3))
    model.step_gate.open()
    watch.wait(first, late)
    assert model.batches == [[1], [1, 2], [1, 2], [2]]
    assert model.steps_seen == [[0], [1, 0], [2, 1], [2]]  # one forward pass, two different steps
    assert engine.stats["joined"] == 1 and engine.stats["batches"] == 1 and engine.stats["forward_passes"] == 4
    assert late.batch_size == 2 and first.batch_size == 2
    for job in (first, late):
        assert job.status == JobStatus.done and job.step == 3
    assert set(late.timings) >= {"queue_s", "encode_s", "denoise_s", "decode_s"}


def test_without_mixed_steps_a_running_batch_is_left_to_drain(make_engine):
    model = FakeModel()  # open-1.0-like: every row of a forward pass at the same step
    engine, watch = make_engine(model, max_batch_size=4)
    first = held_first_step(engine, model, seed=1, steps=3)
    late = engine.submit(params(seed=2, steps=3))
    model.step_gate.open()
    watch.wait(first, late)
    assert model.batches == [[1], [1], [1], [2], [2], [2]]
    assert engine.stats["joined"] == 0 and late.batch_size == 1


def test_joining_never_overtakes_an_older_request_of_another_key(make_engine):
    model = MixedFakeModel()
    engine, watch = make_engine(model, max_batch_size=4)
    first = held_first_step(engine, model, seed=1, steps=2)
    other = engine.submit(params(seed=2, steps=2, duration=2.0))  # another latent window: another key
    same = engine.submit(params(seed=3, steps=2))  # could share first's batch, but is younger than `other`
    model.step_gate.open()
    watch.wait(first, other, same)
    assert model.batches == [[1], [1], [2], [2], [3], [3]]
    assert engine.stats["joined"] == 0


def test_joining_fills_the_batch_up_to_its_size_as_requests_leave(make_engine):
    model = MixedFakeModel()
    engine, watch = make_engine(model, max_batch_size=2)
    a = held_first_step(engine, model, seed=1, steps=3)
    b, c = engine.submit(params(seed=2, steps=3)), engine.submit(params(seed=3, steps=3))
    model.step_gate.open()
    watch.wait(a, b, c)
    assert model.batches == [[1], [1, 2], [1, 2], [2, 3], [3], [3]]
    assert engine.stats["joined"] == 2 and engine.stats["max_batch_seen"] == 2


def test_a_cancelled_member_leaves_and_a_joiner_still_finishes(make_engine):
    model = MixedFakeModel()
    engine, watch = make_engine(model, max_batch_size=4)
    a = held_first_step(engine, model, seed=1, steps=4)
    b = engine.submit(params(seed=2, steps=4))
    model.step_gate.allow()  # a's first step; b joins
    model.step_gate.wait_arrival()  # [a, b]
    engine.cancel(a.id)
    model.step_gate.open()
    watch.wait(a, b)
    assert a.status == JobStatus.cancelled and b.status == JobStatus.done
    assert model.batches == [[1], [1, 2], [2], [2], [2]]
    np.testing.assert_allclose(pcm(b), 0.002, atol=1 / 32768)


# -- the tiny Stable Audio 3 model: a request's numbers do not depend on when it joined ------------------------


@pytest.fixture(scope="module")
def sa3_tiny(tmp_path_factory):
    from stable_audio_service.models.stable_audio_3.family import StableAudio3Model
    from stable_audio_service.models.tiny import make_tiny

    path = make_tiny(tmp_path_factory.mktemp("sa3-cb") / "small", family="sa3", structure="small")
    return StableAudio3Model.from_checkpoint(path, name="tiny", device="cpu", dtype=torch.float32)


_SOLO: dict[int, tuple[torch.Tensor, np.ndarray]] = {}


def _solo(model, p: GenerationParams):
    """A request run alone (cached by seed: every request here has its own seed)."""
    if p.seed not in _SOLO:
        state = model.start(p)
        while not state.finished:
            model.step([state])
        _SOLO[p.seed] = (state.x.clone(), model.finish(state))
    return _SOLO[p.seed]


def _requests() -> list[GenerationParams]:
    return [
        GenerationParams(prompt="a gentle piano", duration=1.0, guidance_scale=1.0, num_inference_steps=4, seed=11),
        GenerationParams(
            prompt="tech house", duration=0.9, guidance_scale=5.0, num_inference_steps=2, seed=12, negative_prompt="x"
        ),
        GenerationParams(prompt="rain", duration=1.0, guidance_scale=3.0, num_inference_steps=3, seed=13),
    ]


def test_sa3_rows_at_different_steps_equal_their_solo_runs(sa3_tiny):
    model = sa3_tiny
    requests = _requests()
    assert len({model.batch_key(p) for p in requests}) == 1  # different step counts share a key
    solo = [_solo(model, p) for p in requests]
    a = model.start(requests[0])
    model.step([a])
    b = model.start(requests[1])  # joins at a's step 1
    model.step([a, b])
    c = model.start(requests[2])  # joins at a's step 2, b's step 1
    live = [a, b, c]
    outputs = {}
    while live:
        model.step(live)
        for state in [s for s in live if s.finished]:
            outputs[state.params.seed] = (state.x.clone(), model.finish(state))
        live = [s for s in live if not s.finished]
    for p, (latents, audio) in zip(requests, solo, strict=True):
        together_latents, together_audio = outputs[p.seed]
        assert torch.equal(together_latents, latents)
        assert np.array_equal(together_audio, audio)


class GatedModel:
    """A real model whose forward passes wait at a gate, so a test can submit work while a batch runs."""

    def __init__(self, model) -> None:
        self.model = model
        self.step_gate = Gate(free=False)
        self.start_gate = self.finish_gate = Gate()

    def __getattr__(self, name):
        return getattr(self.model, name)

    def step(self, states) -> None:
        self.step_gate.enter()
        self.model.step(states)


def test_sa3_request_joining_through_the_engine_equals_solo(sa3_tiny):
    model = GatedModel(sa3_tiny)
    watch = Watcher()
    engine = Engine(model, observer=watch, batch_wait_ms=0, max_batch_size=4)
    engine.start()
    try:
        requests = _requests()[:2]
        first = engine.submit(requests[0], format="wav")
        model.step_gate.wait_arrival()
        model.step_gate.allow()
        model.step_gate.wait_arrival()  # first is at its step 1
        late = engine.submit(requests[1], format="wav")
        model.step_gate.open()
        watch.wait(first, late)
    finally:
        model.step_gate.open()
        engine.shutdown(grace_s=5)
    assert engine.stats["joined"] == 1 and late.batch_size == 2
    for job in (first, late):
        assert job.status == JobStatus.done
        solo = _solo(sa3_tiny, job.params)[1]
        np.testing.assert_allclose(pcm(job), solo, atol=1 / 32768)
