"""Deadlines across Ray replicas: each replica judges a deadline by its own estimate, the ingress asks the one
estimated to finish first and refuses only when every replica refused; ETAs and the drain estimate come through
the ingress. One Ray instance per test session (conftest's `ray_client`)."""

from __future__ import annotations

import pytest

from .conftest import FAST

pytest.importorskip("ray", reason="ray is not installed (pip install '.[ray]'): Ray Serve tests skipped")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed: Ray Serve tests skipped")


def test_the_cluster_refuses_only_what_no_replica_can_finish_in_time(ray_client):
    r = ray_client.post("/predict", json={"prompt": "rain", "num_inference_steps": 100, "max_wait_s": 0.001})
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
    body = r.json()
    # the replica judged what was left of the deadline when the job reached it
    assert 0 < body["max_wait_s"] <= 0.001 < body["estimate_s"] and "deadline" in body["detail"]
    ok = ray_client.post("/predict", json={"prompt": "rain", "max_wait_s": 600, **FAST})
    assert ok.status_code == 200, ok.text


def test_eta_and_drain_come_through_the_ingress(ray_client):
    # every replica has measured its speed at start-up: each reports a drain estimate
    assert all(s.stats.drain_s is not None for s in ray_client.replica_stats().values())
    job = ray_client.post("/jobs", json={"prompt": "rain", "max_wait_s": 600, **FAST})
    assert job.status_code == 202 and job.json()["eta_s"] is not None, job.text
    ready = ray_client.get("/ready").json()
    assert ready["ready"] and ready["drain_s"] is not None and ready["drain_s"] >= 0
