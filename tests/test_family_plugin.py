"""A family is a plug-in: its own module (tests/toy_family.py) plus one entry in the registry's tuple.

Nothing else is touched to add it: the loader detects, sizes and loads it through the descriptor, and the
served app names it in GET /models and generates with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stable_audio_service.config import Settings
from stable_audio_service.models import registry
from stable_audio_service.models.loading import ModelLoadError, estimate_memory, load_model, read_family

from . import toy_family
from .conftest import decode_b64, serve


@pytest.fixture
def toy_registered(monkeypatch):
    """Registering the family is adding its descriptor to the tuple; nothing else."""
    monkeypatch.setattr(registry, "FAMILIES", (*registry.FAMILIES, toy_family.FAMILY))


def test_an_unregistered_family_is_not_recognised(tmp_path):
    path = toy_family.write(tmp_path / "toy")
    with pytest.raises(ModelLoadError) as err:
        read_family(path)
    assert toy_family.MARKER not in str(err.value)


def test_a_registered_family_is_detected_sized_and_loaded(tmp_path, toy_registered):
    path = toy_family.write(tmp_path / "toy", longest_s=5.0)
    assert read_family(path) == "toy"
    assert registry.family_named("toy") is toy_family.FAMILY

    memory = estimate_memory(path, "cpu", torch.float16, 5.0, batch=3)
    assert memory.weights == toy_family.PARAMETERS * 2
    # one request's working memory at 5 s, plus two more requests' shares (the family's fixed part is 0 here)
    assert memory.working == 3 * 5 * toy_family.SAMPLE_RATE * 4

    model, info = load_model(Settings(model=str(path), device="cpu", dtype="float32", max_duration=2.0))
    assert isinstance(model, toy_family.ToyModel)
    assert info.family == "toy" and info.path == path
    assert model.limits.duration.maximum == 2.0  # the operator's cap, through the family's longest_clip
    assert info.memory is not None and info.memory.weights == toy_family.PARAMETERS * 4


def test_an_unknown_directory_names_every_registered_layout(tmp_path, toy_registered):
    with pytest.raises(ModelLoadError) as err:
        read_family(tmp_path)
    message = str(err.value)
    assert toy_family.FAMILY.layout in message
    assert all(family.title in message for family in registry.FAMILIES)


def test_a_registered_family_is_served(tmp_path, toy_registered):
    path = toy_family.write(tmp_path / "toy")
    client = serve(Settings(model=str(path), device="cpu", batch_wait_ms=0))
    try:
        info = client.get("/models").json()
        assert info["family"] == "toy" and info["family_title"] == "Toy tones"
        response = client.post("/predict", json={"prompt": "a tone", "duration": 0.5, "seed": 340})
        assert response.status_code == 200, response.text
        audio, rate = decode_b64(response.json()["audio_b64"])
        assert rate == toy_family.SAMPLE_RATE and audio.shape == (1, toy_family.SAMPLE_RATE // 2)
        assert np.abs(audio).max() > 0.4
    finally:
        client.__exit__(None, None, None)
