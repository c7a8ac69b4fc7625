"""Long-form audio: a clip longer than the model's window, made as a chain of continuation windows inside one job
(engine/longform.py). On the tiny Stable Audio 3 model, with few steps: a 300 s clip completes holding one window
at a time, its joins are continuous, the same seed makes the same clip, progress counts over every window, cancel
works between windows, and a model that cannot continue (Open 1.0) is refused with the reason."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

from stable_audio_service.config import Settings
from stable_audio_service.engine import Engine, JobStatus, longform
from stable_audio_service.engine.local import LocalEngineClient
from stable_audio_service.models.base import GenerationParams
from stable_audio_service.models.tiny import make_tiny

from .conftest import LiveServer
from .fake_model import Watcher

SR = 44100


@pytest.fixture(scope="module")
def sa3_path(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("longform") / "sa3", family="sa3", structure="small")


class Counting:
    """The real model, counting the generation states alive at once (started, not yet decoded or released)."""

    def __init__(self, model) -> None:
        self.model = model
        self.alive: set[int] = set()
        self.peak_alive = 0
        self.starts: list[GenerationParams] = []
        self.sources: list[int | None] = []  # frames of each start's inpainting source (the kept overlap)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def start(self, params):
        self.sources.append(None if params.inpaint_audio is None else params.inpaint_audio.shape[-1])
        state = self.model.start(params)
        self.starts.append(params)
        self.alive.add(id(state))
        self.peak_alive = max(self.peak_alive, len(self.alive))
        return state

    def finish(self, state):
        self.alive.discard(id(state))
        return self.model.finish(state)

    def release(self, state):
        self.alive.discard(id(state))
        self.model.release(state)


@pytest.fixture(scope="module")
def sa3_model(sa3_path):
    from stable_audio_service.models.stable_audio_3.family import StableAudio3Model

    return StableAudio3Model.from_checkpoint(sa3_path, name="tiny", device="cpu", dtype=torch.float32)


def long_params(seed: int = 3, duration: float = 300.0, window: float = 60.0, overlap: float = 10.0, steps: int = 2):
    return GenerationParams(
        prompt="a long drone",
        duration=duration,
        guidance_scale=1.0,
        num_inference_steps=steps,
        seed=seed,
        window_s=window,
        overlap_s=overlap,
    )


def run(model, params: GenerationParams, fmt: str = "wav", on_event=None):
    """Submit `params` to a fresh engine over `model`; the ended job and its events' data."""
    engine = Engine(model, batch_wait_ms=0, max_batch_size=4)
    client = LocalEngineClient(engine)
    client.start()
    seen: list[dict] = []

    async def follow():
        handle = await client.submit(params, format=fmt)
        async for event in handle.events():
            seen.append(event.data)
            if on_event is not None:
                on_event(engine, event)
        return engine.get(handle.id)

    try:
        job = asyncio.run(follow())
    finally:
        client.shutdown(grace_s=5)
    return job, seen


def pcm(data: bytes) -> np.ndarray:
    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert sr == SR
    return audio.T


def test_a_300s_clip_holds_one_window_and_joins_continuously(sa3_model):
    model = Counting(sa3_model)
    params = long_params()
    job, events = run(model, params)
    assert job.status == JobStatus.done, job.error
    audio = pcm(job.result.data)
    assert audio.shape == (2, 300 * SR) and job.result.num_samples == 300 * SR

    # memory: one window's state at a time; between windows only the overlap is kept (not the clip)
    chain = job.chain
    assert chain.count == 6 and len(model.starts) == 6 and model.peak_alive == 1
    overlap_bytes = 2 * 10 * SR * 4
    assert chain.peak_held_bytes <= overlap_bytes <= audio.nbytes / 30
    # each window continues the previous one's last 10 s, with its own derived seed
    assert model.sources == [None] + [10 * SR] * 5
    assert len({p.seed for p in model.starts}) == 6 and model.starts[0].seed == params.seed

    # continuity: no sample-to-sample jump at a join larger than the windows' own
    hop = (60 - 10) * SR
    joins = [k * hop + edge for k in range(1, 6) for edge in (0, 10 * SR)]
    diff = np.abs(np.diff(audio, axis=1)).max(axis=0)
    near = np.zeros(diff.shape, dtype=bool)
    for j in joins:
        near[max(0, j - 3) : j + 3] = True
    assert diff[near].max() <= diff[~near].max()

    # progress: one count over all windows, never going back
    steps = [e["step"] for e in events if e["type"] == "step"]
    assert steps == sorted(steps) and steps[-1] == 12
    assert {e["total"] for e in events if e["type"] == "step"} == {12}


def test_same_seed_same_long_clip(sa3_model):
    short = {"duration": 50.0, "window": 20.0, "overlap": 5.0}
    first, _ = run(sa3_model, long_params(seed=11, **short))
    again, _ = run(sa3_model, long_params(seed=11, **short))
    other, _ = run(sa3_model, long_params(seed=12, **short))
    assert first.result.data == again.result.data
    assert first.result.data != other.result.data
    # its first window is the ordinary 20 s request with that seed, up to where the crossfade begins
    solo, _ = run(sa3_model, GenerationParams("a long drone", 20.0, 1.0, 2, 11))
    assert np.array_equal(pcm(first.result.data)[:, : 15 * SR], pcm(solo.result.data)[:, : 15 * SR])


def test_cancel_between_windows(sa3_model, monkeypatch):
    model = Counting(sa3_model)
    real_add = longform.Chain.add
    engines: list[Engine] = []

    def add_then_cancel(self, audio):
        real_add(self, audio)
        for job in engines[0].running_jobs():  # the first window is written: cancel before the second starts
            engines[0].cancel(job.id)

    monkeypatch.setattr(longform.Chain, "add", add_then_cancel)
    engine = Engine(model, batch_wait_ms=0, observer=(watch := Watcher()))
    engines.append(engine)
    engine.start()
    try:
        job = engine.submit(long_params(duration=50.0, window=20.0, overlap=5.0))
        watch.wait(job)
    finally:
        engine.shutdown(grace_s=5)
    assert job.status == JobStatus.cancelled and job.result is None
    assert len(model.starts) == 1 and model.alive == set()  # no second window, nothing left alive


@pytest.fixture(scope="module")
def live(sa3_path):
    server = LiveServer(Settings(model=str(sa3_path), batch_wait_ms=0, estimate_warm_up=False))
    yield server
    server.stop()


def test_jobs_make_long_form_audio_and_predict_points_there(live):
    body = {"prompt": "waves", "duration": 50.0, "window_s": 20.0, "overlap_s": 5.0, "num_inference_steps": 2}
    with httpx.Client(base_url=live.url, timeout=120) as c:
        r = c.post("/jobs", json={**body, "seed": 5})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        steps = []
        with c.stream("GET", f"/jobs/{job_id}/events") as events:
            for line in events.iter_lines():
                if line.startswith("data:") and '"step"' in line:
                    steps.append(int(line.split('"step": ')[1].split(",")[0]))
                if line.startswith("event: done"):
                    break
        assert steps == sorted(steps) and steps[-1] == 6
        audio = c.get(f"/jobs/{job_id}/audio")
        assert audio.status_code == 200 and float(audio.headers["x-duration"]) == pytest.approx(50.0)

        def refused(path: str, extra: dict) -> tuple[str, str]:
            r = c.post(path, json={**body, **extra})
            assert r.status_code == 422, r.text
            d = r.json()["detail"][0]
            return d["loc"][-1], d["msg"]

        field, msg = refused("/predict", {"duration": 300.0, "window_s": None, "overlap_s": None})
        assert field == "duration" and "POST /jobs" in msg and "120" in msg
        field, msg = refused("/jobs", {"duration": 700.0})
        assert field == "duration" and "600" in msg and "STABLE_AUDIO_MAX_LONGFORM_S" in msg
        assert refused("/jobs", {"duration": 10.0})[0] == "window_s"  # a window without long-form
        assert refused("/jobs", {"overlap_s": 15.0})[0] == "overlap_s"  # more than half the window
        assert refused("/jobs", {"num_outputs": 2})[0] == "num_outputs"
        caps = c.get("/models").json()["capabilities"]
        assert caps["longform"] and caps["max_longform_s"] == 600.0


def test_a_model_that_cannot_continue_refuses_long_form(local_client):
    info = local_client.get("/models").json()
    assert not info["capabilities"]["inpainting"] and not info["capabilities"]["longform"]
    r = local_client.post("/jobs", json={"prompt": "waves", "duration": 100.0})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "duration"] and "no inpainting" in detail["msg"] and "30" in detail["msg"]
