"""Engine behaviour through HTTP: batching, jobs, progress events, cancel, backpressure, deadlines."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from stable_audio_service.config import Settings

from .conftest import FAST, decode_b64, serve


def test_sixteen_concurrent_predicts_batch_and_match_solo(client):
    engine = client.app.state.service.engine
    bodies = [
        {
            "prompt": f"sound number {i}",
            "seed": 100 + i,
            "guidance_scale": 1.0 + (i % 5) * 2,
            "negative_prompt": "hiss" if i % 3 == 0 else None,
            "duration": 1.0 + (i % 4) * 0.5,
            "num_inference_steps": 10,
        }
        for i in range(16)
    ]
    before = dict(engine.stats)
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda b: client.post("/predict", json=b), bodies))
    after = dict(engine.stats)
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    passes = after["forward_passes"] - before["forward_passes"]
    assert passes < 16 * 10, f"{passes} forward passes for 16 requests of 10 steps: no batching happened"
    assert after["max_batch_seen"] > 1
    # each batched result equals the same request run alone
    for body, r in list(zip(bodies, responses, strict=True))[:4]:
        solo = client.post("/predict", json=body)
        a, _ = decode_b64(r.json()["audio_b64"])
        b, _ = decode_b64(solo.json()["audio_b64"])
        assert a.shape == (2, int(body["duration"] * 44100))
        np.testing.assert_allclose(a, b, atol=2 / 32768)  # 16-bit quantisation step


def read_events(client, job_id, timeout=60):
    events = []
    with client.stream("GET", f"/jobs/{job_id}/events", timeout=timeout) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["type"] in ("done", "failed", "cancelled"):
                    break
    return events


def test_job_lifecycle_with_progress_events(client):
    r = client.post("/jobs?client_job_id=async-1", json={"prompt": "thunder", "seed": 9, **FAST})
    assert r.status_code == 202
    job = r.json()
    assert job["status"] in ("queued", "running") and job["meta"]["client_job_id"] == "async-1"
    events = read_events(client, job["id"])
    steps = [e["step"] for e in events if e["type"] == "step"]
    assert events[-1]["type"] == "done"
    assert steps == sorted(steps) and steps[-1] == 10 and len(steps) >= 5
    view = client.get(f"/jobs/{job['id']}").json()
    assert view["status"] == "done" and view["step"] == view["total_steps"] == 10
    assert view["result"]["seed"] == 9 and view["result"]["meta"]["client_job_id"] == "async-1"
    assert view["timings"]["denoise_s"] > 0
    audio, sr = decode_b64(view["result"]["audio_b64"])
    assert audio.shape == (2, 44100) and sr == 44100
    # the synchronous path gives the same audio for the same request
    sync = client.post("/predict", json={"prompt": "thunder", "seed": 9, **FAST}).json()
    assert sync["audio_b64"] == view["result"]["audio_b64"]


def test_cancel_running_job_keeps_batch_mates(client):
    long = {"prompt": "long one", "duration": 1.0, "num_inference_steps": 200, "seed": 1}
    a = client.post("/jobs", json=long).json()["id"]
    b = client.post("/jobs", json={**long, "prompt": "batch mate", "seed": 2}).json()["id"]
    deadline = time.time() + 30
    while client.get(f"/jobs/{a}").json()["step"] < 2 and time.time() < deadline:
        time.sleep(0.05)
    r = client.delete(f"/jobs/{a}")
    assert r.status_code == 200
    events = read_events(client, a)
    assert events[-1]["type"] == "cancelled"
    view_a = client.get(f"/jobs/{a}").json()
    assert view_a["status"] == "cancelled" and view_a["step"] < 200
    deadline = time.time() + 90
    while client.get(f"/jobs/{b}").json()["status"] not in ("done", "failed") and time.time() < deadline:
        time.sleep(0.1)
    view_b = client.get(f"/jobs/{b}").json()
    assert view_b["status"] == "done"
    solo = client.post("/predict", json={**long, "prompt": "batch mate", "seed": 2}).json()
    assert solo["audio_b64"] == view_b["result"]["audio_b64"] or np.allclose(
        decode_b64(solo["audio_b64"])[0], decode_b64(view_b["result"]["audio_b64"])[0], atol=2 / 32768
    )
    assert client.delete(f"/jobs/{b}").status_code == 409


def test_cancel_queued_job_and_unknown_job(client):
    assert client.get("/jobs/nope").status_code == 404
    assert client.delete("/jobs/nope").status_code == 404


@pytest.fixture()
def small_queue(tiny_dir):
    c = serve(Settings(model=str(tiny_dir), queue_size=2, max_batch_size=1, batch_wait_ms=0, queue_timeout_s=60))
    yield c
    c.__exit__(None, None, None)


def test_queue_full_is_429_with_retry_after(small_queue):
    long = {"prompt": "x", "duration": 1.0, "num_inference_steps": 200}
    ids = [small_queue.post("/jobs", json=long) for _ in range(5)]
    codes = [r.status_code for r in ids]
    assert 429 in codes and codes.count(202) >= 2
    rejected = next(r for r in ids if r.status_code == 429)
    assert rejected.headers["retry-after"] and "queue full" in rejected.json()["detail"]
    for r in ids:
        if r.status_code == 202:
            small_queue.delete(f"/jobs/{r.json()['id']}")


def test_queue_deadline_answers_503(tiny_dir):
    c = serve(Settings(model=str(tiny_dir), max_batch_size=1, batch_wait_ms=0, queue_timeout_s=0.5))
    try:
        long = c.post("/jobs", json={"prompt": "x", "duration": 1.0, "num_inference_steps": 200}).json()["id"]
        results = {}

        def waiting():
            results["r"] = c.post("/predict", json={"prompt": "y", **FAST})

        t = threading.Thread(target=waiting)
        t.start()
        t.join(60)
        r = results["r"]
        assert r.status_code == 503 and "waited in the queue" in r.json()["detail"]
        assert r.headers["retry-after"]
        c.delete(f"/jobs/{long}")
    finally:
        c.__exit__(None, None, None)


def test_finished_jobs_are_freed(tiny_dir):
    c = serve(Settings(model=str(tiny_dir), max_jobs_kept=2, batch_wait_ms=0))
    try:
        ids = [c.post("/jobs", json={"prompt": f"p{i}", **FAST}).json()["id"] for i in range(4)]
        for i in ids:
            read_events(c, i)
        engine = c.app.state.service.engine
        kept = [i for i in ids if engine.get(i) is not None]
        assert len(kept) <= 2 and ids[-1] in kept
        assert c.get(f"/jobs/{ids[0]}").status_code == 404
    finally:
        c.__exit__(None, None, None)
