"""The Open 1.0 family against diffusers itself, and the loading path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableAudioPipeline

from stable_audio_service.config import Settings
from stable_audio_service.models.base import GenerationParams
from stable_audio_service.models.common import safetensors_parameters
from stable_audio_service.models.loading import ModelLoadError, estimate_memory, load_model, resolve_source
from stable_audio_service.models.open1 import StableAudioOpenModel


@pytest.fixture(scope="module")
def model(tiny_dir):
    loaded, info = load_model(Settings(model=str(tiny_dir)))
    assert info.family == "open-1.0"
    return loaded


@pytest.fixture(scope="module")
def pipe(tiny_dir):
    p = StableAudioPipeline.from_pretrained(str(tiny_dir))
    p.set_progress_bar_config(disable=True)
    return p


def run(model, params_list):
    states = [model.start(p) for p in params_list]
    while not states[0].finished:
        model.step(states)
    return [model.finish(s) for s in states]


def reference(pipe, p: GenerationParams) -> np.ndarray:
    out = pipe(
        p.prompt,
        audio_end_in_s=p.duration,
        num_inference_steps=p.num_inference_steps,
        guidance_scale=p.guidance_scale,
        negative_prompt=p.negative_prompt,
        generator=torch.Generator().manual_seed(p.seed),
    ).audios[0]
    return np.clip(out.numpy(), -1, 1)


CASES = [
    GenerationParams("rain on a tin roof", 1.0, 7.0, 10, 11),
    GenerationParams("drum loop 120 bpm", 2.5, 1.0, 10, 12),  # guidance off
    GenerationParams("birds", 1.3, 3.0, 10, 13, negative_prompt="noise"),
]


@pytest.mark.parametrize("params", CASES, ids=["cfg", "no-cfg", "negative"])
def test_parity_with_diffusers_pipeline(model, pipe, params):
    (ours,) = run(model, [params])
    ref = reference(pipe, params)
    assert ours.shape == ref.shape == (2, int(params.duration * 44100))
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_batched_equals_solo(model):
    solo = [run(model, [p])[0] for p in CASES]
    batched = run(model, CASES)
    for a, b in zip(solo, batched, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_cropped_decode_equals_full_decode(model):
    """Decoding only the kept latents (+ margin) must equal decoding the whole window then cropping."""
    params = GenerationParams("ocean", 3.0, 7.0, 10, 3)
    state = model.start(params)
    while not state.finished:
        model.step([state])
    latents = state.latents.clone()
    with torch.no_grad():
        full = model.pipe.vae.decode(latents).sample[0, :, : int(3.0 * 44100)].numpy()
    ours = model.finish(state)
    np.testing.assert_allclose(ours, np.clip(full, -1, 1), atol=1e-5)


def test_fit_window_samples_only_needed_latents(model):
    fit = StableAudioOpenModel(model.pipe, name="tiny", device="cpu", dtype=torch.float32, window="fit")
    assert fit.window_for(10.0) == 224  # ceil(10*44100/2048)=216 -> multiple of 16
    assert fit.window_for(1.0) == 32
    assert model.window_for(1.0) == 1024
    (audio,) = run(fit, [GenerationParams("rain", 7.3, 7.0, 10, 1)])
    assert audio.shape == (2, int(7.3 * 44100))
    assert fit.batch_key(GenerationParams("a", 1.0, 7, 10, 1)) != fit.batch_key(GenerationParams("a", 9.0, 7, 10, 1))


def test_text_cache_skips_encoder(model):
    model.text_cache._items.clear()
    calls = []
    handle = model.pipe.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        model.start(GenerationParams("cache me", 1.0, 7.0, 10, 1))
        model.start(GenerationParams("cache me", 1.0, 7.0, 10, 2))
    finally:
        handle.remove()
    assert len(calls) == 1


def test_text_cache_is_bounded(model):
    from stable_audio_service.models.base import TextEmbeddingCache

    cache = TextEmbeddingCache(capacity=3)
    for i in range(5):
        cache.put(f"p{i}", torch.tensor([i]))
    assert len(cache) == 3 and cache.get("p0") is None and cache.get("p4") is not None
    cache.get("p2")  # touching p2 makes p3 the oldest
    cache.put("p5", torch.tensor([5]))
    assert cache.get("p3") is None and cache.get("p2") is not None
    assert model.text_cache.capacity == 256  # the served model's cache is bounded by STABLE_AUDIO_TEXT_CACHE_SIZE


def test_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        resolve_source("someone/not-a-cached-model")
    msg = str(err.value)
    assert "someone/not-a-cached-model" in msg and "HF_TOKEN" in msg and "make-tiny" in msg
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_source(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="model_index.json"):
        resolve_source(str(tmp_path))


def test_memory_check_refuses_with_both_figures(tiny_dir, monkeypatch):
    import stable_audio_service.models.loading as loading

    monkeypatch.setattr(loading, "available_memory", lambda device: (1024, "RAM available"))
    with pytest.raises(ModelLoadError) as err:
        load_model(Settings(model=str(tiny_dir)))
    assert "needs about" in str(err.value) and "RAM available: 0.00 GiB" in str(err.value)
    assert "for a batch of 4" in str(err.value) and "MAX_BATCH_SIZE" in str(err.value)
    model, info = load_model(Settings(model=str(tiny_dir), skip_memory_check=True))
    assert info.memory is None and model.sample_rate == 44100


def test_memory_estimate_counts_parameters(tiny_dir, model):
    n = safetensors_parameters(tiny_dir.glob("*/*.safetensors"))
    expected = sum(
        p.numel()
        for m in (model.pipe.transformer, model.pipe.vae, model.pipe.text_encoder, model.pipe.projection_model)
        for p in m.parameters()
    )
    assert n == expected
    est = estimate_memory(tiny_dir, "cpu", torch.float16, 30.0)
    assert est.weights == 2 * n and est.working > 0


def test_memory_estimate_counts_a_full_batch_and_the_adapter_cache(tiny_dir):
    one = estimate_memory(tiny_dir, "cpu", torch.float32, 30.0)
    fixed = estimate_memory(tiny_dir, "cpu", torch.float32, 0.0).working
    four = estimate_memory(tiny_dir, "cpu", torch.float32, 30.0, batch=4, adapters_bytes=2**30)
    assert one.working > fixed
    assert four.working == one.working + 3 * (one.working - fixed)  # each further request: its own share
    assert four.needed == four.weights + four.working + 2**30 and four.adapters == 2**30


def test_tiny_layout_matches_real(tiny_dir):
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableAudioPipeline"
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "projection_model", "scheduler"):
        assert (tiny_dir / part).is_dir()
    vae = json.loads((tiny_dir / "vae" / "config.json").read_text())
    assert vae["sampling_rate"] == 44100 and vae["audio_channels"] == 2
    sched = json.loads((tiny_dir / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "CosineDPMSolverMultistepScheduler"
