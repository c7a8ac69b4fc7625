"""Shared fixtures: one tiny model directory per session, and a served app on it."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient

from stable_audio_service.api import create_app
from stable_audio_service.config import Settings
from stable_audio_service.models.tiny import make_tiny

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("models") / "tiny-open1")


def serve(settings: Settings, loader=None) -> TestClient:
    """A TestClient whose lifespan has run and whose model finished loading (or failing)."""
    client = TestClient(create_app(settings, loader=loader))
    client.__enter__()
    assert client.app.state.service.loaded.wait(120), "model did not load in time"
    return client


@pytest.fixture(scope="session")
def client(tiny_dir) -> TestClient:
    c = serve(Settings(model=str(tiny_dir), batch_wait_ms=50, max_batch_size=8, queue_size=64))
    yield c
    c.__exit__(None, None, None)


def decode_b64(audio_b64: str):
    data, sr = sf.read(io.BytesIO(base64.b64decode(audio_b64)), dtype="float32", always_2d=True)
    return data.T, sr


FAST = {"duration": 1.0, "num_inference_steps": 10}
