"""A tiny stand-in for a model family, for deterministic engine tests.

It implements what the engine calls (`batch_key`, `start`, `step`, `finish`, `sample_rate`,
`channels`) and takes `AudioModel`'s defaults for the optional hooks. Each phase can be gated: the worker then stops at
the gate until the test hands out permits, so a test decides what happens between two steps
(cancel, submit batch mates, shut down) without sleeping or racing the clock. `StepHold` does the same
for a real model: a request that must still be running at some moment is held there, however fast the
machine is, instead of being given "enough" steps to be slow.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from stable_audio_service.models.base import (
    AudioModel,
    Bound,
    Capabilities,
    GenerationParams,
    GenerationState,
    ModelLimits,
)

# Only a safety net against a test that forgets to open a gate: never part of an assertion.
GATE_TIMEOUT_S = 30.0
# The same for a held real model, whose test may drive a browser or a client meanwhile.
HOLD_TIMEOUT_S = 120.0


class Gate:
    """A turnstile. Free: the worker walks through. Closed: each pass needs a permit, and the test
    can wait until the worker stands at the gate."""

    def __init__(self, free: bool = True) -> None:
        self.free = free
        self._permits = threading.Semaphore(0)
        self._arrivals = threading.Semaphore(0)

    def enter(self) -> None:
        """Worker side."""
        if self.free:
            return
        self._arrivals.release()
        if not self._permits.acquire(timeout=GATE_TIMEOUT_S):
            raise RuntimeError("test gate was never opened")

    def wait_arrival(self) -> None:
        """Test side: returns once the worker is waiting at the gate."""
        assert self._arrivals.acquire(timeout=GATE_TIMEOUT_S), "the worker never reached the gate"

    def allow(self, n: int = 1) -> None:
        for _ in range(n):
            self._permits.release()

    def open(self) -> None:
        self.free = True
        self.allow(10_000)


class FakeModel(AudioModel[GenerationState]):
    """Produces `duration` seconds of a constant per seed (so a result says whose it is)."""

    name = "fake"
    family = "fake"
    device = "cpu"
    dtype = "float32"
    limits = ModelLimits(Bound(1.0, 0.1, 600.0), Bound(7.0, 1.0, 20.0), Bound(4, 1, 1000))
    capabilities = Capabilities()

    def __init__(self, sample_rate: int = 8000, channels: int = 2) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self.start_gate = Gate()
        self.step_gate = Gate()
        self.finish_gate = Gate()
        self.batches: list[list[int]] = []  # seeds of each forward pass
        self.started: list[GenerationParams] = []
        self.uploads_at_start: list[tuple[bool, bool]] = []  # (has init_audio, has inpaint_audio) in start()
        self.seen_uploads: list[tuple[object, object]] = []  # (init_audio, inpaint_audio) seen by finish
        self.batch_key_error: BaseException | None = None
        self.finish_error: BaseException | None = None

    def upload_samples(self, duration: float) -> int:
        return int(duration * self.sample_rate)

    def batch_key(self, params: GenerationParams) -> tuple:
        if self.batch_key_error is not None:
            raise self.batch_key_error
        return (params.num_inference_steps, params.duration)

    def start(self, params: GenerationParams) -> GenerationState:
        self.start_gate.enter()
        self.started.append(params)
        self.uploads_at_start.append((params.init_audio is not None, params.inpaint_audio is not None))
        return GenerationState(params=params, batch_key=self.batch_key(params), total_steps=params.num_inference_steps)

    def step(self, states: list[GenerationState]) -> None:
        self.step_gate.enter()
        self.batches.append([s.params.seed for s in states])
        for s in states:
            s.step += 1

    def finish(self, state: GenerationState) -> np.ndarray:
        self.finish_gate.enter()
        if self.finish_error is not None:
            raise self.finish_error
        p = state.params
        self.seen_uploads.append((p.init_audio, p.inpaint_audio))
        n = int(round(p.duration * self.sample_rate))
        return np.full((self.channels, n), fill_value=(p.seed % 1000) / 1000, dtype=np.float32)


def params(seed: int = 1, steps: int = 3, duration: float = 1.0, **kw) -> GenerationParams:
    return GenerationParams(
        prompt=kw.pop("prompt", "a fake sound"),
        duration=duration,
        guidance_scale=kw.pop("guidance_scale", 7.0),
        num_inference_steps=steps,
        seed=seed,
        **kw,
    )


class Watcher:
    """An engine observer that lets a test wait for a job's terminal state without polling."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ended: dict[str, threading.Event] = {}
        self.seen: list[tuple[str, str]] = []  # (what, job id)

    def _event(self, job_id: str) -> threading.Event:
        with self._lock:
            return self._ended.setdefault(job_id, threading.Event())

    def __call__(self, what: str, job, info: dict) -> None:
        self.seen.append((what, job.id))
        if what in ("done", "failed", "cancelled"):
            self._event(job.id).set()

    def wait(self, *jobs) -> None:
        for job in jobs:
            assert self._event(job.id).wait(GATE_TIMEOUT_S), f"job {job.id} never ended (status {job.status})"

    def ended(self, job) -> bool:
        return self._event(job.id).is_set()


class FakeClock:
    """A settable clock for TTLs."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class GatedEncode:
    """Stands in for `audio.encode`: the encode of the seeds in `hold` waits until `release(seed)`."""

    def __init__(self, monkeypatch, hold: set[int]) -> None:
        from stable_audio_service import engine as engine_mod

        self.real = engine_mod.audio_io.encode
        self.hold = {seed: threading.Event() for seed in hold}
        self.entered = {seed: threading.Event() for seed in hold}
        monkeypatch.setattr(engine_mod.audio_io, "encode", self)

    def __call__(self, samples, sample_rate, fmt):
        seed = int(round(float(samples[0, 0]) * 1000))  # FakeModel writes seed/1000 into every sample
        if seed in self.hold:
            self.entered[seed].set()
            assert self.hold[seed].wait(GATE_TIMEOUT_S), "test never released the encode"
        return self.real(samples, sample_rate, fmt)

    def release(self, seed: int) -> None:
        self.hold[seed].set()


class StepHold:
    """Holds a real model's denoising for the requests whose prompt is `prompt`: their first `after` forward
    passes run, the next one waits until `release()` (from then on they run freely). A test thereby has a
    generation that is under way and cannot finish until it says so, on any machine. `arrived` is set once a
    pass is held. Installed with monkeypatch on the model instance (the `step_hold` fixture releases it at the
    end of the test)."""

    def __init__(self, monkeypatch, model, prompt: str, after: int = 0) -> None:
        self.prompt = prompt
        self.after = after
        self.passes = 0
        self.arrived = threading.Event()
        self.released = threading.Event()
        real = model.step

        def step(states):
            if any(s.params.prompt == prompt for s in states):
                if self.passes >= after and not self.released.is_set():
                    self.arrived.set()
                    if not self.released.wait(HOLD_TIMEOUT_S):
                        raise RuntimeError(f"test hold on {prompt!r} was never released")
                self.passes += 1
            return real(states)

        monkeypatch.setattr(model, "step", step)

    def wait_arrival(self) -> None:
        """Returns once a held request's forward pass is waiting here."""
        assert self.arrived.wait(HOLD_TIMEOUT_S), f"no request {self.prompt!r} reached its hold"

    def release(self) -> None:
        self.released.set()


def wait_until(condition, what: str = "condition", timeout: float = HOLD_TIMEOUT_S, poll: float = 0.01) -> None:
    """Polls `condition` until it holds; the timeout only bounds the wait for an event, it is not a guess at
    how long something takes."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"{what}: not met within {timeout:g} s"
        time.sleep(poll)


def step_when_followed(monkeypatch, engine) -> None:
    """Each forward pass of `engine`'s model first waits until every running job kept for the jobs API has its
    event stream open. A client follows a job over a stream it opens once `POST /jobs` has answered, and a tiny
    model can finish the job before that: the client then rightly sees no step events, and a test of its progress
    would depend on the machine's speed. `/predict` jobs (not kept, never followed) are not waited for."""
    model = engine.model
    real = model.step

    def followed() -> bool:
        with engine._cond:
            return all(job.subscribers for job in engine._running if job.keep)

    def step(states):
        wait_until(followed, "a job's event stream to open", poll=0.002)
        return real(states)

    monkeypatch.setattr(model, "step", step)
