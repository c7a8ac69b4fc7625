"""Deadlines and ETAs over HTTP, on the served tiny model (its speed measured by the start-up warm-up).

No assertion depends on how fast the machine is: a refusal is provoked with a deadline no generation can meet
(a millisecond for 100 steps), a job stays queued because the one ahead of it is held inside a step, and the
ETAs are only required to exist and be positive.
"""

from __future__ import annotations

import json

import pytest

from stable_audio_service.config import Settings

from .conftest import serve
from .fake_model import wait_until

FAST = {"duration": 1.0, "num_inference_steps": 10}
IMPOSSIBLE = 0.001  # seconds: less than any 100-step generation takes


@pytest.fixture(scope="module")
def api(tiny_dir):
    c = serve(Settings(model=str(tiny_dir), window="fit", batch_wait_ms=0))
    yield c
    c.__exit__(None, None, None)


def refused(r, max_wait_s: float) -> dict:
    """`r` is the immediate deadline refusal: 503, a whole-seconds Retry-After, the estimate and the deadline."""
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["max_wait_s"] == max_wait_s and body["estimate_s"] > max_wait_s
    assert body["retry_after_s"] >= 1 and body["alone_s"] > 0 and "deadline" in body["detail"]
    return body


def test_predict_refuses_at_once_what_cannot_meet_max_wait_s(api):
    body = refused(
        api.post("/predict", json={"prompt": "rain", "num_inference_steps": 100, "max_wait_s": IMPOSSIBLE}), IMPOSSIBLE
    )
    assert body["alone_s"] > IMPOSSIBLE and "even on an idle server" in body["detail"]
    ok = api.post("/predict", json={"prompt": "rain", "max_wait_s": 600, **FAST})
    assert ok.status_code == 200


def test_a_request_timeout_header_is_a_deadline_too(api):
    r = api.post("/jobs", json={"prompt": "rain", "num_inference_steps": 100}, headers={"Request-Timeout": "0.001"})
    refused(r, IMPOSSIBLE)
    # with both, the shorter one counts
    both = api.post("/jobs", json={"prompt": "rain", "max_wait_s": 600, "num_inference_steps": 100},
                    headers={"Request-Timeout": "0.001"})  # fmt: skip
    refused(both, IMPOSSIBLE)
    for bad in ("soon", "0", "-3", "nan"):
        r = api.post("/jobs", json={"prompt": "rain", **FAST}, headers={"Request-Timeout": bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "request-timeout"], (bad, r.text)


def test_max_wait_s_is_validated(api):
    for bad in (0, -1, 86401, "soon"):
        r = api.post("/jobs", json={"prompt": "rain", "max_wait_s": bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "max_wait_s"], (bad, r.text)


def test_jobs_events_and_views_carry_position_and_eta(api, step_hold):
    model = api.app.state.service.engine.model
    hold = step_hold(model, "held")
    held = api.post("/jobs", json={"prompt": "held", **FAST}).json()
    hold.wait_arrival()  # inside its first step until released
    accepted = api.post("/jobs", json={"prompt": "waiting", "max_wait_s": 600, **FAST})
    assert accepted.status_code == 202
    job = accepted.json()
    assert job["status"] == "queued" and job["position"] == 1 and job["eta_s"] > 0
    view = api.get(f"/jobs/{job['id']}").json()
    assert view["status"] == "queued" and view["position"] == 1 and view["eta_s"] > 0
    assert api.get(f"/jobs/{held['id']}").json()["eta_s"] >= 0  # running: the steps left
    ready = api.get("/ready").json()
    assert ready["queue_depth"] == 1 and ready["drain_s"] > 0
    with api.stream("GET", f"/jobs/{job['id']}/events") as events:
        for line in events.iter_lines():
            if line.startswith("data:"):
                first = json.loads(line[5:])
                break
    assert first["type"] == "queued" and first["position"] == 1 and first["eta_s"] > 0
    hold.release()
    wait_until(lambda: api.get(f"/jobs/{job['id']}").json()["status"] == "done", "the queued job ran")
    assert api.get(f"/jobs/{job['id']}").json()["eta_s"] is None  # ended: nothing left to estimate


def test_a_queued_predict_whose_deadline_comes_is_answered_while_the_worker_is_busy(api, step_hold):
    engine = api.app.state.service.engine
    hold = step_hold(engine.model, "held")
    held = api.post("/jobs", json={"prompt": "held", **FAST}).json()
    hold.wait_arrival()
    # queued behind a step that does not end: answered 503 when its deadline can no longer be met (or at once,
    # on a machine too slow to meet it at all), never run
    r = api.post("/predict", json={"prompt": "late", "max_wait_s": 1.0, **FAST})
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and "deadline" in r.json()["detail"]
    assert api.get(f"/jobs/{held['id']}").json()["status"] == "running"  # the worker was held all along
    hold.release()


def test_metrics_and_ready_report_the_drain_estimate(api):
    assert api.get("/ready").json()["drain_s"] >= 0
    text = api.get("/metrics").text
    assert "stable_audio_queue_drain_seconds" in text


def test_the_server_default_deadline_applies_to_requests_that_name_none(tiny_dir):
    c = serve(Settings(model=str(tiny_dir), window="fit", batch_wait_ms=0, default_max_wait_s=IMPOSSIBLE))
    try:
        refused(c.post("/predict", json={"prompt": "rain", "num_inference_steps": 100}), IMPOSSIBLE)
        assert c.post("/predict", json={"prompt": "rain", "max_wait_s": 600, **FAST}).status_code == 200
    finally:
        c.__exit__(None, None, None)


def test_cli_generate_server_says_when_queued_and_for_about_how_long(tiny_dir, tmp_path, step_hold):
    import threading

    import httpx
    from typer.testing import CliRunner

    from stable_audio_service.cli import app as cli_app

    from .conftest import LiveServer

    live = LiveServer(Settings(model=str(tiny_dir), window="fit", batch_wait_ms=0))
    try:
        engine = live.engine
        hold = step_hold(engine.model, "held")
        httpx.post(f"{live.url}/jobs", json={"prompt": "held", **FAST}).raise_for_status()
        hold.wait_arrival()
        out = tmp_path / "queued.wav"
        args = ["generate", "waiting", "-o", str(out), "--server", live.url, "--duration", "1", "--steps", "10"]
        done: dict = {}
        cli = threading.Thread(target=lambda: done.update(result=CliRunner().invoke(cli_app, args)))
        cli.start()
        wait_until(lambda: engine.queue_depth() == 1, "the CLI's request queued behind the held one")
        wait_until(lambda: any(j.subscribers for j in engine.scheduler.queued()), "the CLI following its job")
        hold.release()
        cli.join(120)
        result = done["result"]
        assert result.exit_code == 0, result.output
        assert "queued (position 1), about " in result.output and out.exists()
    finally:
        live.stop()
