"""Stable Audio 3 family on a tiny offline model: family detection, limits, the /predict contract,
parity with diffusers' SA3 pipelines, audio-to-audio, inpainting and chunked SAME decoding."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from stable_audio_service.config import Settings
from stable_audio_service.models.base import GenerationParams
from stable_audio_service.models.loading import ModelLoadError, load_model, read_family
from stable_audio_service.models.sa3 import band_decode, band_encode
from stable_audio_service.models.tiny import make_tiny

from .conftest import decode_b64, serve

SR = 44100
# 16-bit PCM round trip (libsndfile reads /32768, writes *32767) plus rounding
PCM16_TOL = 1e-4


@pytest.fixture(scope="session")
def sa3_dir(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("models") / "tiny-sa3", family="sa3")


@pytest.fixture(scope="session")
def sa3_client(sa3_dir):
    c = serve(
        Settings(
            model=str(sa3_dir), batch_wait_ms=30, max_batch_size=8, max_body_bytes=20_000_000, max_upload_seconds=60
        )
    )
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="session")
def sa3_model(sa3_client):
    return sa3_client.app.state.service.model


@pytest.fixture(scope="session")
def sa3_pipes(sa3_dir):
    from diffusers import StableAudio3AudioToAudioPipeline, StableAudio3InpaintPipeline, StableAudio3Pipeline

    t2a = StableAudio3Pipeline.from_pretrained(str(sa3_dir))
    t2a.set_progress_bar_config(disable=True)
    parts = dict(t2a.components)
    a2a = StableAudio3AudioToAudioPipeline(**parts)
    inpaint = StableAudio3InpaintPipeline(**parts)
    for p in (a2a, inpaint):
        p.set_progress_bar_config(disable=True)
    return {"t2a": t2a, "a2a": a2a, "inpaint": inpaint}


def run(model, params_list):
    states = [model.start(p) for p in params_list]
    while not states[0].finished:
        model.step(states)
    return [model.finish(s) for s in states]


def wav_b64(audio: np.ndarray, sr: int, fmt: str = "WAV", subtype: str | None = "PCM_16") -> str:
    buf = io.BytesIO()
    sf.write(buf, audio.T, sr, format=fmt, subtype=subtype)
    return base64.b64encode(buf.getvalue()).decode()


def tone(seconds: float, sr: int = SR, channels: int = 2, freq: float = 330.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    left = 0.4 * np.sin(2 * np.pi * freq * t)
    rows = [left, 0.3 * np.sin(2 * np.pi * freq * 1.5 * t)][:channels]
    return np.stack(rows).astype(np.float32)


# -- family detection, registry and limits ---------------------------------------------------


def test_model_index_decides_the_family(sa3_dir, tiny_dir, tmp_path):
    assert read_family(sa3_dir) == "sa3"
    assert read_family(tiny_dir) == "open-1.0"
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match="FluxPipeline"):
        read_family(tmp_path)


def test_models_reports_sa3_limits_from_registry(sa3_client):
    info = sa3_client.get("/models").json()
    assert info["family"] == "sa3" and info["sample_rate"] == SR and info["channels"] == 2
    # a local checkpoint not in the registry gets the SA3 small defaults: 8 steps, guidance off, up to 120 s
    assert info["fields"]["num_inference_steps"] == {"default": 8, "minimum": 1, "maximum": 200}
    assert info["fields"]["guidance_scale"] == {"default": 1.0, "minimum": 1.0, "maximum": 20.0}
    assert info["fields"]["duration"] == {"default": 10.0, "minimum": 1.0, "maximum": 120.0}
    hub = {m["hub_id"]: m for m in info["registry"]}
    assert hub["stabilityai/stable-audio-3-medium"]["max_duration"] == 380.0
    assert hub["stabilityai/stable-audio-3-small-sfx"]["family"] == "sa3"
    assert hub["stabilityai/stable-audio-open-1.0"]["family"] == "open-1.0"
    assert info["audio_inputs"]["inpainting"] is True
    assert info["audio_inputs"]["init_noise_level"]["default"] == 0.6


def test_max_duration_setting_caps_sa3(sa3_dir):
    model, loaded = load_model(Settings(model=str(sa3_dir), max_duration=20.0, skip_memory_check=True))
    assert loaded.family == "sa3" and model.limits.duration.maximum == 20.0


def test_memory_estimate_for_sa3_does_not_assume_oobleck(sa3_dir):
    model, loaded = load_model(Settings(model=str(sa3_dir)))
    assert loaded.memory is not None and loaded.memory.ok and loaded.memory.weights > 0


# -- /predict contract -------------------------------------------------------------------------


def test_predict_uses_model_defaults(sa3_client):
    r = sa3_client.post("/predict", json={"prompt": "rain on a tin roof", "duration": 1.5, "seed": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    audio, sr = decode_b64(body["audio_b64"])
    assert sr == SR and audio.shape == (2, int(1.5 * SR))
    assert body["duration"] == pytest.approx(1.5) and body["seed"] == 3
    assert 0 < np.abs(audio).max() <= 1.0
    job = sa3_client.post("/jobs", json={"prompt": "x", "duration": 1.0}).json()
    params = sa3_client.app.state.service.engine.get(job["id"]).params
    assert (params.num_inference_steps, params.guidance_scale, params.duration) == (8, 1.0, 1.0)


def test_sa3_long_duration_and_few_steps_allowed(sa3_client):
    r = sa3_client.post("/predict", json={"prompt": "drone", "duration": 40.0, "num_inference_steps": 2, "seed": 1})
    assert r.status_code == 200, r.text
    assert r.json()["num_samples"] == 40 * SR


@pytest.mark.parametrize(
    "body,field,says",
    [
        ({"duration": 120.5}, "duration", "120"),
        ({"num_inference_steps": 201}, "num_inference_steps", "200"),
        ({"num_inference_steps": 0}, "num_inference_steps", "1"),
        ({"guidance_scale": 21}, "guidance_scale", "20"),
    ],
)
def test_sa3_limits_422(sa3_client, body, field, says):
    r = sa3_client.post("/predict", json={"prompt": "a", **body})
    assert r.status_code == 422, r.text
    err = [e for e in r.json()["detail"] if e["loc"][-1] == field]
    assert err and says in err[0]["msg"]


# -- parity with diffusers -----------------------------------------------------------------------


@pytest.mark.parametrize("guidance,negative", [(1.0, None), (3.0, None), (4.0, "dog barking")])
def test_parity_with_stable_audio_3_pipeline(sa3_model, sa3_pipes, guidance, negative):
    params = GenerationParams("rain on a tin roof", 2.5, guidance, 8, 42, negative_prompt=negative)
    ours = run(sa3_model, [params])[0]
    ref = sa3_pipes["t2a"](
        "rain on a tin roof",
        duration=2.5,
        guidance_scale=guidance,
        negative_prompt=negative,
        num_inference_steps=8,
        generator=torch.Generator().manual_seed(42),
    ).audios[0]
    assert ours.shape == tuple(ref.shape) == (2, int(2.5 * SR))
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-6)


def test_http_output_matches_pipeline(sa3_client, sa3_pipes):
    r = sa3_client.post("/predict", json={"prompt": "birds", "duration": 2.0, "seed": 9})
    audio, _ = decode_b64(r.json()["audio_b64"])
    ref = sa3_pipes["t2a"]("birds", duration=2.0, generator=torch.Generator().manual_seed(9)).audios[0].numpy()
    np.testing.assert_allclose(audio, ref, atol=PCM16_TOL)


def test_batching_does_not_change_a_request(sa3_model):
    ps = [
        GenerationParams("rain", 2.0, 1.0, 8, 1),
        GenerationParams("birds", 2.0, 4.0, 8, 2, negative_prompt="dog"),
        GenerationParams("wind", 2.0, 1.0, 8, 3, init_audio=tone(2.0), init_noise_level=0.5),
    ]
    assert len({sa3_model.batch_key(p) for p in ps}) == 1
    together = run(sa3_model, ps)
    for p, got in zip(ps, together, strict=True):
        np.testing.assert_allclose(got, run(sa3_model, [p])[0], atol=1e-5)


# -- audio to audio ------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0.3, 0.7])
def test_a2a_parity_with_audio_to_audio_pipeline(sa3_model, sa3_pipes, level):
    src = tone(2.0)
    params = GenerationParams("guitar", 2.0, 1.0, 8, 5, init_audio=src, init_noise_level=level)
    ours = run(sa3_model, [params])[0]
    ref = sa3_pipes["a2a"](
        "guitar",
        duration=2.0,
        audio=torch.from_numpy(src)[None],
        init_noise_level=level,
        num_inference_steps=8,
        generator=torch.Generator().manual_seed(5),
    ).audios[0]
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)


def test_a2a_noise_level_one_is_text_to_audio(sa3_model):
    t2a = run(sa3_model, [GenerationParams("x", 1.0, 1.0, 8, 7)])[0]
    a2a = run(sa3_model, [GenerationParams("x", 1.0, 1.0, 8, 7, init_audio=tone(1.0), init_noise_level=1.0)])[0]
    np.testing.assert_allclose(a2a, t2a, atol=1e-6)


def test_a2a_over_http_any_rate_and_channels(sa3_client):
    mono_22k = tone(1.2, sr=22050, channels=1)
    for b64 in (wav_b64(mono_22k, 22050, "FLAC", "PCM_16"), wav_b64(tone(1.0, 48000), 48000)):
        r = sa3_client.post(
            "/predict",
            json={"prompt": "x", "duration": 1.0, "seed": 4, "init_audio_b64": b64, "init_noise_level": 0.4},
        )
        assert r.status_code == 200, r.text
        audio, sr = decode_b64(r.json()["audio_b64"])
        assert sr == SR and audio.shape == (2, SR)
    plain = sa3_client.post("/predict", json={"prompt": "x", "duration": 1.0, "seed": 4}).json()["audio_b64"]
    assert plain != r.json()["audio_b64"]


# -- inpainting and continuation -----------------------------------------------------------------


def test_inpaint_parity_and_kept_regions(sa3_model, sa3_pipes):
    src = tone(3.0)
    params = GenerationParams("piano", 3.0, 1.0, 8, 11, inpaint_audio=src, inpaint_regions=[(1.0, 2.0)])
    ours = run(sa3_model, [params])[0]
    ref = (
        sa3_pipes["inpaint"](
            "piano",
            duration=3.0,
            audio=torch.from_numpy(src)[None],
            mask_start_seconds=1.0,
            mask_end_seconds=2.0,
            num_inference_steps=8,
            generator=torch.Generator().manual_seed(11),
        )
        .audios[0]
        .numpy()
    )
    # kept regions: the source itself, sample for sample
    np.testing.assert_allclose(ours[:, :SR], src[:, :SR], atol=1e-7)
    np.testing.assert_allclose(ours[:, 2 * SR :], src[:, 2 * SR :], atol=1e-7)
    # regenerated region (past the 10 ms crossfade): exactly what diffusers' inpaint pipeline makes
    inner = slice(SR + 441, 2 * SR - 441)
    np.testing.assert_allclose(ours[:, inner], ref[:, inner], atol=1e-5)
    assert np.abs(ours[:, inner] - src[:, inner]).max() > 1e-2


def test_inpaint_over_http_keeps_regions(sa3_client):
    src = tone(2.0, sr=SR)
    r = sa3_client.post(
        "/predict",
        json={
            "prompt": "x",
            "duration": 2.0,
            "seed": 2,
            "inpaint_audio_b64": wav_b64(src, SR),
            "inpaint_regions": [{"start_s": 0.5, "end_s": 1.0}, {"start_s": 1.5, "end_s": 1.75}],
        },
    )
    assert r.status_code == 200, r.text
    audio, _ = decode_b64(r.json()["audio_b64"])
    assert audio.shape == (2, 2 * SR)
    half, one, one5, one75 = SR // 2, SR, int(1.5 * SR), int(1.75 * SR)
    for kept in (slice(0, half), slice(one, one5), slice(one75, 2 * SR)):
        np.testing.assert_allclose(audio[:, kept], src[:, kept], atol=PCM16_TOL)
    assert np.abs(audio[:, half + 500 : one - 500] - src[:, half + 500 : one - 500]).max() > 1e-2


def test_continuation_extends_the_source(sa3_client):
    src = tone(1.0)
    r = sa3_client.post(
        "/predict", json={"prompt": "x", "duration": 2.5, "seed": 2, "inpaint_audio_b64": wav_b64(src, SR)}
    )
    assert r.status_code == 200, r.text
    audio, _ = decode_b64(r.json()["audio_b64"])
    assert audio.shape == (2, int(2.5 * SR))
    np.testing.assert_allclose(audio[:, :SR], src, atol=PCM16_TOL)
    assert np.abs(audio[:, SR:]).max() > 1e-2


# -- bad uploads -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra,field,says",
    [
        ({"init_audio_b64": "not base64!!"}, "init_audio_b64", "base64"),
        ({"init_audio_b64": base64.b64encode(b"RIFF....garbage" * 20).decode()}, "init_audio_b64", "not a readable"),
        ({"init_audio_b64": ""}, "init_audio_b64", "empty"),
        ({"inpaint_audio_b64": base64.b64encode(b"\x00" * 100).decode()}, "inpaint_audio_b64", "not a readable"),
        ({"init_audio_b64": "AAAA", "inpaint_audio_b64": "AAAA"}, "inpaint_audio_b64", "not both"),
        ({"init_noise_level": 0.5}, "init_noise_level", "needs init_audio_b64"),
        ({"init_audio_b64": "AAAA", "init_noise_level": 0}, "init_noise_level", "greater than 0"),
        ({"inpaint_regions": [{"start_s": 0, "end_s": 1}]}, "inpaint_regions", "needs inpaint_audio_b64"),
        ({"inpaint_audio_b64": "AAAA", "inpaint_regions": [{"start_s": 1, "end_s": 0.5}]}, "inpaint_regions", "after"),
        ({"inpaint_audio_b64": "AAAA", "inpaint_regions": [{"start_s": 5, "end_s": 6}]}, "start_s", "end of the"),
    ],
)
def test_bad_audio_inputs_422(sa3_client, extra, field, says):
    r = sa3_client.post("/predict", json={"prompt": "x", "duration": 1.0, **extra})
    assert r.status_code == 422, r.text
    errs = [e for e in r.json()["detail"] if field in e["loc"]]
    assert errs, r.json()
    assert says in errs[0]["msg"], errs[0]["msg"]


def test_upload_limits(sa3_dir):
    client = serve(
        Settings(model=str(sa3_dir), max_upload_bytes=50_000, max_upload_seconds=2.0, max_body_bytes=5_000_000)
    )
    try:
        long = wav_b64(tone(3.0, sr=8000, channels=1), 8000)  # 48 kB, 3 s
        r = client.post("/predict", json={"prompt": "x", "duration": 1.0, "init_audio_b64": long})
        assert r.status_code == 422 and "limit is 2 s" in r.json()["detail"][0]["msg"]
        big = wav_b64(tone(1.0), SR)  # 176 kB
        r = client.post("/predict", json={"prompt": "x", "duration": 1.0, "init_audio_b64": big})
        assert r.status_code == 422 and "limit is 50000" in r.json()["detail"][0]["msg"]
        assert r.json()["detail"][0]["loc"] == ["body", "init_audio_b64"]
    finally:
        client.__exit__(None, None, None)


def test_open1_rejects_sa3_only_audio_fields(client):
    src = wav_b64(tone(1.0), SR)
    r = client.post("/predict", json={"prompt": "x", "duration": 1.0, "inpaint_audio_b64": src})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "inpaint_audio_b64"]
    r = client.post("/predict", json={"prompt": "x", "duration": 1.0, "init_audio_b64": src, "init_noise_level": 0.5})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "init_noise_level"]


# -- chunked SAME decoding -------------------------------------------------------------------------


def test_chunked_decode_equals_full_decode(sa3_model):
    vae = sa3_model.pipe.vae
    latents = torch.randn(1, vae.config.latent_dim, 150, generator=torch.Generator().manual_seed(0))
    full = vae.decode(latents).sample
    chunked = band_decode(vae, latents, chunk=16)
    assert chunked.shape == full.shape
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)
    # the halo matters: without it the chunk edges differ
    assert (band_decode(vae, latents, chunk=16, halo=0) - full).abs().max() > 1e-3


def test_chunked_encode_equals_full_encode(sa3_model):
    vae = sa3_model.pipe.vae
    audio = torch.randn(1, 2, 150 * 4096 - 1000, generator=torch.Generator().manual_seed(1)) * 0.3
    full = vae.encode(audio).latents
    chunked = band_encode(vae, audio, chunk=16)
    assert chunked.shape == full.shape
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)
    assert (band_encode(vae, audio, chunk=16, halo=0) - full).abs().max() > 1e-3


def test_long_upload_is_cut_to_what_the_clip_uses(sa3_client, sa3_model):
    b64 = wav_b64(tone(8.0), SR)
    job = sa3_client.post("/jobs", json={"prompt": "x", "duration": 1.0, "init_audio_b64": b64}).json()
    params = sa3_client.app.state.service.engine.get(job["id"]).params
    assert params.init_audio.shape == (2, (sa3_model.latent_length(1.0) + sa3_model.halo) * sa3_model.hop)
    assert params.init_noise_level == 0.6
