"""Stable Audio 3 over HTTP, on a tiny model in Stability's official format: family detection,
limits, the /predict contract, audio-to-audio, inpainting and continuation, bad uploads, and the
official oracle fixtures reproduced through `POST /predict` (the model-level parity tests are in
tests/test_sa3_official.py and tests/test_sa3_autoencoder.py)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stable_audio_service.config import Settings
from stable_audio_service.models.loading import ModelLoadError, load_model, read_family
from stable_audio_service.models.tiny import make_tiny

from . import oracle
from .conftest import decode_b64, serve
from .oracle import request_fields

SR = 44100
# 16-bit PCM: libsndfile writes round(x * 32767) and reads / 32768; a few LSB of slack
PCM16_TOL = 4 / 32768
SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "sa3-official"


@pytest.fixture(scope="session")
def sa3_dir(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("models") / "tiny-sa3", family="sa3", structure="small")


@pytest.fixture(scope="session")
def sa3_client(sa3_dir):
    c = serve(
        Settings(
            model=str(sa3_dir), batch_wait_ms=30, max_batch_size=8, max_body_bytes=20_000_000, max_upload_seconds=60
        )
    )
    yield c
    c.__exit__(None, None, None)


def wav_b64(audio: np.ndarray, sr: int, fmt: str = "WAV", subtype: str | None = "PCM_16") -> str:
    buf = io.BytesIO()
    sf.write(buf, audio.T, sr, format=fmt, subtype=subtype)
    return base64.b64encode(buf.getvalue()).decode()


def tone(seconds: float, sr: int = SR, channels: int = 2, freq: float = 330.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rows = [0.4 * np.sin(2 * np.pi * freq * t), 0.3 * np.sin(2 * np.pi * freq * 1.5 * t)][:channels]
    return np.stack(rows).astype(np.float32)


# -- family detection and limits ---------------------------------------------------------------


def test_files_decide_the_family(sa3_dir, tiny_dir, tmp_path):
    assert read_family(sa3_dir) == "sa3"
    assert read_family(tiny_dir) == "open-1.0"
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match="official format"):
        read_family(tmp_path)


def test_models_reports_sa3_limits_and_capabilities(sa3_client):
    info = sa3_client.get("/models").json()
    assert info["family"] == "sa3" and info["sample_rate"] == SR and info["channels"] == 2
    assert info["structure"] == "small" and info["longest_clip_s"] == 120.0
    assert info["fields"]["num_inference_steps"] == {"default": 8, "minimum": 1, "maximum": 200}
    assert info["fields"]["guidance_scale"] == {"default": 1.0, "minimum": 1.0, "maximum": 20.0}
    assert info["fields"]["duration"] == {"default": 10.0, "minimum": 0.1, "maximum": 120.0}
    caps = info["capabilities"]
    assert caps["inpainting"] and caps["continuation"] and caps["audio_to_audio"]
    assert caps["apg_scale"] == {"default": 1.0, "minimum": 0.0, "maximum": 1.0}
    assert caps["init_noise_level"]["default"] == 0.9
    hub = {m["hub_id"]: m for m in info["registry"]}
    assert hub["stabilityai/stable-audio-3-medium"]["max_duration"] == 380.0


def test_openapi_for_sa3_offers_its_fields(sa3_client):
    props = sa3_client.get("/openapi.json").json()["components"]["schemas"]["StableAudioRequest"]["properties"]
    assert {"apg_scale", "inpaint_audio_b64", "inpaint_regions", "init_noise_level"} <= set(props)
    duration = next(v for v in props["duration"]["anyOf"] if v.get("type") == "number")
    assert (duration["minimum"], duration["maximum"]) == (0.1, 120.0)


def test_max_duration_setting_caps_sa3(sa3_dir):
    model, loaded = load_model(Settings(model=str(sa3_dir), max_duration=20.0, skip_memory_check=True))
    assert loaded.family == "sa3" and model.limits.duration.maximum == 20.0


def test_memory_estimate_comes_from_the_single_checkpoint(sa3_dir):
    _model, loaded = load_model(Settings(model=str(sa3_dir)))
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
    assert (params.num_inference_steps, params.guidance_scale, params.duration, params.apg_scale) == (8, 1.0, 1.0, 1.0)


def test_short_sound_effects_and_long_clips(sa3_client):
    r = sa3_client.post("/predict", json={"prompt": "click", "duration": 0.25, "seed": 1})
    assert r.status_code == 200, r.text and r.json()["num_samples"] == int(0.25 * SR)
    r = sa3_client.post("/predict", json={"prompt": "drone", "duration": 40.0, "num_inference_steps": 2, "seed": 1})
    assert r.status_code == 200, r.text
    assert r.json()["num_samples"] == 40 * SR


@pytest.mark.parametrize(
    "body,field,says",
    [
        ({"duration": 120.5}, "duration", "120"),
        ({"duration": 0.05}, "duration", "0.1"),
        ({"num_inference_steps": 201}, "num_inference_steps", "200"),
        ({"num_inference_steps": 0}, "num_inference_steps", "1"),
        ({"guidance_scale": 21}, "guidance_scale", "20"),
        ({"apg_scale": 1.5}, "apg_scale", "1"),
        # past the schema's static outer caps too (duration 400, steps 200): the model's own limit is named
        ({"duration": 500}, "duration", "between 0.1 and 120 for model"),
        ({"duration": 200}, "duration", "between 0.1 and 120 for model"),
        ({"duration": -1}, "duration", "between 0.1 and 120 for model"),
        ({"num_inference_steps": 5000}, "num_inference_steps", "between 1 and 200 for model"),
        ({"apg_scale": -0.5}, "apg_scale", "between 0 and 1 for model"),
    ],
)
def test_sa3_limits_422(sa3_client, body, field, says):
    r = sa3_client.post("/predict", json={"prompt": "a", **body})
    assert r.status_code == 422, r.text
    err = [e for e in r.json()["detail"] if e["loc"][-1] == field]
    assert err and says in err[0]["msg"], err
    assert err[0]["loc"] == ["body", field]


# -- audio-to-audio, inpainting, continuation ------------------------------------------------------


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


def test_inpaint_over_http_keeps_regions(sa3_client):
    src = tone(2.0)
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


@pytest.mark.parametrize(
    "extra,field,says",
    [
        ({"init_audio_b64": "not base64!!"}, "init_audio_b64", "base64"),
        ({"init_audio_b64": base64.b64encode(b"RIFF....garbage" * 20).decode()}, "init_audio_b64", "not a readable"),
        ({"init_audio_b64": ""}, "init_audio_b64", "empty"),
        ({"inpaint_audio_b64": base64.b64encode(b"\x00" * 100).decode()}, "inpaint_audio_b64", "not a readable"),
        ({"init_audio_b64": "AAAA", "inpaint_audio_b64": "AAAA"}, "inpaint_audio_b64", "not both"),
        ({"init_noise_level": 0.5}, "init_noise_level", "needs init_audio_b64"),
        ({"init_audio_b64": "AAAA", "init_noise_level": 0}, "init_noise_level", "between 0.01 and 1 for model"),
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


def test_open1_refuses_what_it_does_not_declare(client):
    src = wav_b64(tone(1.0), SR)
    r = client.post("/predict", json={"prompt": "x", "duration": 1.0, "inpaint_audio_b64": src})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "inpaint_audio_b64"]
    r = client.post("/predict", json={"prompt": "x", "duration": 1.0, "init_audio_b64": src, "init_noise_level": 0.5})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "init_noise_level"]
    r = client.post("/predict", json={"prompt": "x", "duration": 1.0, "apg_scale": 0.5})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "apg_scale"]


def test_long_upload_is_cut_to_what_the_clip_uses(sa3_client):
    model = sa3_client.app.state.service.model
    b64 = wav_b64(tone(8.0), SR)
    job = sa3_client.post("/jobs", json={"prompt": "x", "duration": 1.0, "init_audio_b64": b64}).json()
    engine = sa3_client.app.state.service.engine
    params = engine.get(job["id"]).params
    # the upload is either still queued (cut to what the clip uses) or already encoded and dropped
    assert params.init_audio is None or params.init_audio.shape[-1] <= model.upload_samples(1.0)
    assert params.init_noise_level == 0.9


# -- the official oracle, through POST /predict --------------------------------------------------


def _fixture_cases(name: str) -> list[str]:
    path = SHARED / name / "cases.json"
    if not path.is_file():
        return []
    return [c["name"] for c in json.loads(path.read_text())["cases"]]


@pytest.fixture(scope="module")
def official_clients():
    if not SHARED.is_dir():
        pytest.skip(f"the Stable Audio 3 oracle fixtures are not here ({SHARED}): a clone without ../shared")
    clients = {
        name: serve(Settings(model=str(SHARED / name), max_body_bytes=20_000_000))
        for name in ("small-tiny", "medium-tiny")
    }
    yield clients
    for c in clients.values():
        c.__exit__(None, None, None)


def _float_wav_b64(audio: np.ndarray) -> str:
    """32-bit float WAV: the fixture's input audio reaches the model bit for bit."""
    return wav_b64(audio, SR, "WAV", "FLOAT")


OFFICIAL = [(f, c) for f in ("small-tiny", "medium-tiny") for c in _fixture_cases(f)] or [("absent", "absent")]


@pytest.mark.parametrize("fixture_name,case_name", OFFICIAL)
def test_official_case_through_predict(official_clients, fixture_name, case_name):
    """The whole service path (JSON, upload decode, engine, 16-bit WAV) gives the oracle's audio within the case's
    end-to-end tolerance (a multiple of Stability's own cross-host spread, tests/oracle.py) plus 16-bit rounding."""
    fx = oracle.fixture(fixture_name)
    case = fx.cases[case_name]
    kw = case["generate_kwargs"]
    body = request_fields(case)
    if case["init_audio"]:
        body["init_audio_b64"] = _float_wav_b64(fx.array(case_name, "input_audio"))
    regions = None
    if case["inpaint_audio"]:
        body["inpaint_audio_b64"] = _float_wav_b64(fx.array(case_name, "input_audio"))
        regions = (kw["inpaint_mask_start_seconds"], kw["inpaint_mask_end_seconds"])
        body["inpaint_regions"] = [{"start_s": regions[0], "end_s": regions[1]}]
    r = official_clients[fixture_name].post("/predict", json=body)
    assert r.status_code == 200, r.text
    audio, sr = decode_b64(r.json()["audio_b64"])
    official = fx.array(case_name, "audio")[0]
    assert sr == SR and audio.shape == official.shape
    tol = fx.e2e_tol(case_name, "audio") + oracle.PCM16
    if regions is None:
        np.testing.assert_allclose(audio, official, atol=tol, rtol=0)
    else:  # the regenerated region is the official audio; the kept audio is the source
        lo, hi = int(round(regions[0] * SR)), int(round(regions[1] * SR))
        np.testing.assert_allclose(audio[:, lo:hi], official[:, lo:hi], atol=tol, rtol=0)
        source = fx.array(case_name, "input_audio")[:, : audio.shape[-1]]
        np.testing.assert_allclose(audio[:, :lo], source[:, :lo], atol=PCM16_TOL, rtol=0)
        np.testing.assert_allclose(audio[:, hi:], source[:, hi:], atol=PCM16_TOL, rtol=0)
