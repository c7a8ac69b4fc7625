"""A tiny stand-in for a model family, for deterministic engine tests.

It implements exactly what the engine calls (`batch_key`, `start`, `step`, `finish`,
`sample_rate`, `channels`) and nothing else. Each phase can be gated: the worker then stops at
the gate until the test hands out permits, so a test decides what happens between two steps
(cancel, submit batch mates, shut down) without sleeping or racing the clock.
"""

from __future__ import annotations

import threading

import numpy as np

from stable_audio_service.models.base import Bound, GenerationParams, GenerationState, ModelLimits

# Only a safety net against a test that forgets to open a gate: never part of an assertion.
GATE_TIMEOUT_S = 30.0


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


class FakeModel:
    """Produces `duration` seconds of a constant per seed (so a result says whose it is)."""

    name = "fake"
    family = "fake"
    device = "cpu"
    dtype = "float32"
    limits = ModelLimits(Bound(1.0, 0.1, 600.0), Bound(7.0, 1.0, 20.0), Bound(4, 1, 1000))

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
