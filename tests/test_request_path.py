"""The one request path (service.py), the OpenAPI schema narrowed to the loaded model, binary audio
answers and the finished job's file (open-1.0 tiny model)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from stable_audio_service.api.schemas import StableAudioRequest
from stable_audio_service.config import Settings
from stable_audio_service.models.base import Bound, Capabilities
from stable_audio_service.service import RequestError, capabilities, resolve

from .conftest import FAST, decode_b64


def test_openapi_states_the_design_note_bounds_for_open1(client):
    schema = client.get("/openapi.json").json()
    props = schema["components"]["schemas"]["StableAudioRequest"]["properties"]

    def number(prop):
        return next(v for v in prop.get("anyOf", [prop]) if v.get("type") in ("number", "integer"))

    assert props["duration"]["default"] == 10.0
    assert (number(props["duration"])["minimum"], number(props["duration"])["maximum"]) == (1.0, 30.0)
    assert props["guidance_scale"]["default"] == 7.0
    assert (number(props["guidance_scale"])["minimum"], number(props["guidance_scale"])["maximum"]) == (1.0, 20.0)
    assert props["num_inference_steps"]["default"] == 100
    steps = number(props["num_inference_steps"])
    assert (steps["minimum"], steps["maximum"]) == (10, 200)
    # open-1.0 declares neither inpainting nor APG nor adapters: the schema does not offer them
    for absent in ("inpaint_audio_b64", "inpaint_regions", "apg_scale", "loras", "init_noise_level"):
        assert absent not in props
    assert "init_audio_b64" in props  # it does declare audio-to-audio


def test_openapi_bearer_scheme_when_a_token_is_set(tiny_dir):
    from .conftest import serve

    c = serve(Settings(model=str(tiny_dir), api_key="s3cret"))
    try:
        schema = c.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
        assert schema["security"] == [{"bearer": []}]
    finally:
        c.__exit__(None, None, None)


def test_models_reports_capabilities(client):
    caps = client.get("/models").json()["capabilities"]
    assert caps["audio_to_audio"] is True and caps["inpainting"] is False and caps["init_noise_level"] is None
    assert caps["max_duration"] == 30.0 and caps["notes"]


class _Model:
    """Just what the request path reads: limits and capabilities."""

    def __init__(self, model, caps: Capabilities) -> None:
        self.name, self.family, self.limits, self.capabilities = "fake", "fake", model.limits, caps
        self.sample_rate, self.channels = model.sample_rate, model.channels

    def upload_samples(self, duration: float) -> int:
        return int(duration * self.sample_rate)


def test_capabilities_decide_not_family_names(client):
    """The same request is refused or accepted by what the model declares, whatever its family is called."""
    model = client.app.state.service.model
    settings = client.app.state.service.settings
    body = StableAudioRequest(prompt="x", apg_scale=0.5, guidance_scale=3.0)
    with pytest.raises(RequestError) as err:
        resolve(body, _Model(model, Capabilities()), settings)
    assert err.value.loc == ("apg_scale",)
    with_apg = _Model(model, Capabilities(apg_scale=Bound(1.0, 0.0, 1.0)))
    assert resolve(body, with_apg, settings).params.apg_scale == 0.5
    # the model's default fills an omitted field
    assert resolve(StableAudioRequest(prompt="x"), with_apg, settings).params.apg_scale == 1.0
    assert capabilities(with_apg, settings)["apg_scale"]["default"] == 1.0


def test_defaults_and_limits_come_from_the_model(client):
    model = client.app.state.service.model
    settings = client.app.state.service.settings
    params = resolve(StableAudioRequest(prompt="x"), model, settings).params
    assert (params.duration, params.guidance_scale, params.num_inference_steps) == (10.0, 7.0, 100)
    with pytest.raises(RequestError) as err:
        resolve(StableAudioRequest(prompt="x", duration=31.0), model, settings)
    assert err.value.loc == ("duration",) and "30" in err.value.message


@pytest.mark.parametrize("accept,fmt", [("audio/wav", "WAV"), ("audio/flac", "FLAC"), ("audio/ogg", "OGG")])
def test_predict_returns_the_file_for_an_audio_accept_header(client, accept, fmt):
    r = client.post(
        "/predict?client_job_id=bin-1",
        json={"prompt": "rain", "seed": 11, **FAST},
        headers={"Accept": accept},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(accept)
    info = sf.info(io.BytesIO(r.content))
    assert info.format == fmt and info.samplerate == 44100 and info.channels == 2
    assert info.frames == 44100 == int(r.headers["x-num-samples"])
    assert r.headers["x-seed"] == "11" and r.headers["x-client-job-id"] == "bin-1"
    assert len(r.headers["x-trace-id"]) == 32 and float(r.headers["x-duration"]) == 1.0


def test_binary_and_json_answers_carry_the_same_audio(client):
    body = {"prompt": "same", "seed": 5, **FAST}
    wav = client.post("/predict", json=body, headers={"Accept": "audio/wav"}).content
    js = client.post("/predict", json=body).json()
    a, _ = decode_b64(js["audio_b64"])
    b, _ = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    np.testing.assert_array_equal(a, b.T)


def test_accept_conflicting_with_format_is_422(client):
    r = client.post("/predict", json={"prompt": "x", "format": "mp3", **FAST}, headers={"Accept": "audio/wav"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "format"]


def test_job_audio_route_and_view_without_base64(client):
    r = client.post("/jobs", json={"prompt": "rain", "seed": 3, "format": "flac", **FAST})
    job_id = r.json()["id"]
    with client.stream("GET", f"/jobs/{job_id}/events") as events:
        assert any(line.startswith("event: done") for line in events.iter_lines())
    view = client.get(f"/jobs/{job_id}").json()
    assert "audio_b64" not in str(view)
    assert view["result"]["audio_url"] == f"/jobs/{job_id}/audio" and view["result"]["seed"] == 3
    audio = client.get(view["result"]["audio_url"])
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/flac"
    assert len(audio.content) == view["result"]["bytes"]
    assert sf.info(io.BytesIO(audio.content)).frames == view["result"]["num_samples"] == 44100
    assert client.get("/jobs/nope/audio").status_code == 404
