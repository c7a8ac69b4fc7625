"""Shared fixtures: one tiny model directory per session, and a served app on it."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient

from stable_audio_service.api import create_app
from stable_audio_service.config import Settings
from stable_audio_service.models.tiny import make_tiny

torch.set_num_threads(2)

# The suite proves float32 behaviour (the oracle's own precision) on every CPU: `auto` would serve Stable Audio 3
# in bfloat16 on a CPU with native bfloat16 matmuls and in float32 on others, so the same test would check another
# computation per host. Pinned here (subprocesses inherit it); test_dtype_auto.py tests `auto` itself with the
# CPU's flags and speed-up given, and test_sa3_fp16.py the half-precision paths.
os.environ["STABLE_AUDIO_DTYPE"] = "float32"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("models") / "tiny-open1")


def serve(settings: Settings, loader=None) -> TestClient:
    """A TestClient whose lifespan has run and whose model finished loading (or failing)."""
    client = TestClient(create_app(settings, loader=loader))
    client.__enter__()
    assert client.app.state.service.loaded.wait(120), "model did not load in time"
    return client


# The backends the contract tests run against (test_api.py parametrises `backend` with these).
BACKENDS = ["local", "ray"]


@pytest.fixture(scope="session")
def backend(request) -> str:
    """ "local" (one process, in-process TestClient) unless a module parametrises it."""
    return getattr(request, "param", "local")


@pytest.fixture(scope="session")
def local_client(tiny_dir) -> TestClient:
    c = serve(Settings(model=str(tiny_dir), batch_wait_ms=50, max_batch_size=8, queue_size=64))
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="session")
def ray_client(tiny_dir):
    """The same API through Ray Serve: 2 model replicas of the tiny model (skips when ray is not installed)."""
    from .ray_harness import RayBackend

    c = RayBackend(tiny_dir)
    yield c
    c.stop()


@pytest.fixture(scope="session")
def client(request, backend):
    return request.getfixturevalue("ray_client" if backend == "ray" else "local_client")


def decode_b64(audio_b64: str):
    data, sr = sf.read(io.BytesIO(base64.b64decode(audio_b64)), dtype="float32", always_2d=True)
    return data.T, sr


FAST = {"duration": 1.0, "num_inference_steps": 10}


@pytest.fixture
def step_hold(monkeypatch):
    """`step_hold(model, prompt, after=0)`: a StepHold on that model (tests/fake_model.py), released when the
    test ends so that no worker stays parked in it."""
    from .fake_model import StepHold

    holds: list[StepHold] = []

    def make(model, prompt: str, after: int = 0) -> StepHold:
        holds.append(StepHold(monkeypatch, model, prompt, after))
        return holds[-1]

    yield make
    for hold in holds:
        hold.release()


class LiveServer:
    """The app under a real uvicorn on a free loopback port, in a thread (for disconnects and load)."""

    def __init__(self, settings: Settings, loader=None) -> None:
        import socket
        import threading

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = create_app(settings, loader=loader)
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        import time

        deadline = time.time() + 60
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.app.state.service.loaded.wait(120)
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def engine(self):
        return self.app.state.service.engine

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def pytest_sessionfinish(session, exitstatus):
    """RELIABILITY.md is rewritten only by `./run reliability` (python -m tests.reliability_report),
    never by an ordinary run, and only when every recording test passed."""
    from . import reliability_report

    if reliability_report.requested() and exitstatus == 0:
        reliability_report.write()
