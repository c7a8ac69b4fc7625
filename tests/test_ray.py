"""Ray Serve backend (`serve --ray`): jobs across replicas, SSE through the ingress, backpressure over the whole
cluster, cancel on disconnect at the owner, traces and metrics across processes, a replica killed mid-load.
The HTTP contract itself runs against this backend in test_api.py. One Ray instance per test session."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from .conftest import FAST

pytest.importorskip("ray", reason="ray is not installed (pip install '.[ray]'): Ray Serve tests skipped")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed: Ray Serve tests skipped")

from stable_audio_service.cli import app as cli_app  # noqa: E402
from stable_audio_service.serving import ray as ray_serving  # noqa: E402

LONG = {"duration": 10.0, "num_inference_steps": 200}  # seconds of work per job on the tiny model


def sse_events(client, job_id: str, out: list | None = None) -> list[tuple[str, dict]]:
    """The whole event stream of a job, through the ingress (appended to `out` as it arrives)."""
    out = [] if out is None else out
    with client.stream("GET", f"/jobs/{job_id}/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[len("data: ") :])))
                if kind in ("done", "failed", "cancelled"):
                    break
    return out


def cancelled_count(ray_client) -> float:
    """`stable_audio_requests_total{outcome="cancelled"}` summed over the replicas, from their own registries."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for stats in ray_client.replica_stats(metrics=True).values():
        for family in text_string_to_metric_families(stats.metrics or ""):
            for s in family.samples:
                if s.name == "stable_audio_requests_total" and s.labels.get("outcome") == "cancelled":
                    total += s.value
    return total


def wait_until(predicate, timeout_s: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_ready_reports_live_model_replicas(ray_client):
    body = ray_client.get("/ready").json()
    assert body["ready"] is True and body["replicas"] == 2 == len(ray_client.replica_stats())
    assert ray_client.get("/health").json()["status"] == "ok"


def test_jobs_created_in_one_request_are_read_through_others(ray_client):
    live = set(ray_client.replica_stats())
    # The first one runs long enough for its stream to show progress; distinct step counts keep each job out of the
    # others' batches, so job 1 runs alone like the /predict it is compared with below (open-1.0 in a batch is
    # equal to alone only within float tolerance, which can flip a 16-bit sample).
    steps = [60, 10, 11, 12]
    created = [
        ray_client.post("/jobs", json={"prompt": f"job {i}", "seed": i, "duration": 1.0, "num_inference_steps": n})
        for i, n in enumerate(steps)
    ]
    assert all(r.status_code == 202 for r in created), [r.text for r in created]
    ids = [r.json()["id"] for r in created]
    assert {ray_serving.owner_of(i) for i in ids} <= live  # each id names the live replica that owns it
    progress = [e["step"] for kind, e in sse_events(ray_client, ids[0]) if kind == "step"]
    assert progress and progress == sorted(progress) and progress[-1] == steps[0]
    for seed, job_id in enumerate(ids):
        events = sse_events(ray_client, job_id)  # a finished job's stream is its terminal event
        assert events[-1][0] == "done", events
        view = ray_client.get(f"/jobs/{job_id}").json()
        assert view["status"] == "done" and view["result"]["seed"] == seed
        audio = ray_client.get(view["result"]["audio_url"])
        assert audio.status_code == 200 and audio.headers["x-seed"] == str(seed)
        assert len(audio.content) == view["result"]["bytes"]
        data, sr = sf.read(io.BytesIO(audio.content), always_2d=True)
        assert sr == 44100 and data.shape == (44100, 2)
        assert ray_client.delete(f"/jobs/{job_id}").status_code == 409  # already done, as in one process
    # the same seed gives the same audio whichever replica ran it
    again = ray_client.post("/predict", json={"prompt": "job 1", "seed": 1, **FAST}, headers={"accept": "audio/wav"})
    assert again.content == ray_client.get(f"/jobs/{ids[1]}/audio").content
    # ids that name no job: no such id format, a live replica without that job, a replica that never was
    tag = next(iter(live))
    for bad in ("nope", f"{tag}.{'0' * 32}", f"gone0000.{'0' * 32}", f"{tag}.{'0' * 32}/../x"):
        assert ray_client.get(f"/jobs/{bad}").status_code == 404, bad


def test_cancel_through_another_request_ends_the_stream(ray_client):
    job_id = ray_client.post("/jobs", json={"prompt": "to cancel", **LONG}).json()["id"]
    seen: list = []
    reader = threading.Thread(target=sse_events, args=(ray_client, job_id, seen))
    reader.start()
    wait_until(lambda: any(kind == "step" for kind, _ in seen), what="the job to start")
    r = ray_client.delete(f"/jobs/{job_id}")
    assert r.status_code == 200
    reader.join(60)
    assert not reader.is_alive() and seen[-1][0] == "cancelled"
    assert ray_client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_full_cluster_answers_429_with_retry_after(ray_client):
    """429 only once every replica's queue is full: the ingress tries the others before refusing."""
    accepted, refused = [], None
    try:
        for i in range(60):
            r = ray_client.post("/jobs", json={"prompt": f"fill {i}", **LONG})
            if r.status_code != 202:
                refused = r
                break
            accepted.append(r.json()["id"])
        assert refused is not None and refused.status_code == 429, refused and refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert {ray_serving.owner_of(i) for i in accepted} == set(ray_client.replica_stats())
        assert len(accepted) >= 2 * ray_client.settings.queue_size
    finally:
        for job_id in accepted:
            ray_client.delete(f"/jobs/{job_id}")
    wait_until(lambda: ray_client.app.state.service.engine.running_count() == 0, what="the cluster to drain")


def test_predict_disconnect_cancels_on_the_owning_replica(ray_client):
    before = cancelled_count(ray_client)
    body = json.dumps({"prompt": "walk away", **LONG}).encode()
    with socket.create_connection(("127.0.0.1", ray_client.settings.port)) as s:
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_until(lambda: ray_client.app.state.service.engine.running_count() == 1, what="the job to run")
    # the client is gone: the replica that runs the job cancels it (long before it could finish)
    wait_until(lambda: cancelled_count(ray_client) == before + 1, what="the cancel to reach the replica")
    assert ray_client.app.state.service.engine.running_count() == 0


def test_trace_continues_from_the_caller_through_ingress_and_replica(ray_client):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    r = ray_client.post("/jobs", json={"prompt": "traced", **FAST}, headers=headers)
    meta = r.json()["meta"]
    assert meta["trace_id"] == trace_id and meta["span_id"] != "00f067aa0ba902b7"  # the ingress's request span
    # the replica holds the context it extracted from the propagated traceparent: the same trace and parent
    info = ray_client.job_info(r.json()["id"])
    assert (info.trace_id, info.span_id) == (trace_id, meta["span_id"])
    assert ray_client.get(f"/jobs/{r.json()['id']}").json()["meta"]["trace_id"] == trace_id


def test_metrics_cover_every_replica(ray_client):
    from prometheus_client.parser import text_string_to_metric_families

    for i in range(2):
        assert ray_client.post("/predict", json={"prompt": f"metrics {i}", **FAST}).status_code == 200
    text = ray_client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    live = set(ray_client.replica_stats())
    depth = {s.labels.get("replica") for s in families["stable_audio_queue_depth"].samples}
    assert depth == live  # one series per replica (the ingress's own total is left out)
    batches = {s.labels["replica"] for s in families["stable_audio_batch_size"].samples}
    assert batches and batches <= live
    requests = [s for s in families["stable_audio_requests"].samples if s.labels.get("outcome") == "ok"]
    assert sum(s.value for s in requests) >= 2


def _members(protocol: type) -> dict[str, object]:
    return {name: value for name, value in vars(protocol).items() if not name.startswith("_")}


@pytest.mark.parametrize(
    "protocol,implementations",
    [
        ("EngineClient", ["engine.local.LocalEngineClient", "serving.ray.client.RayEngineClient"]),
        (
            "JobHandle",
            ["engine.local.LocalJob", "serving.ray.handles.SubmittedJob", "serving.ray.handles.FollowedJob"],
        ),
    ],
)
def test_both_backends_implement_the_protocol(protocol: str, implementations: list[str]):
    """The routes are written against `EngineClient` and `JobHandle` only: each backend has every member, a
    property where the protocol has one, and the same parameters, coroutine-ness and streaming as declared."""
    import importlib
    import inspect

    from stable_audio_service.engine import client as protocols

    declared = _members(getattr(protocols, protocol))
    for dotted in implementations:
        module, _, name = dotted.rpartition(".")
        impl = getattr(importlib.import_module(f"stable_audio_service.{module}"), name)
        for member, spec in declared.items():
            got = inspect.getattr_static(impl, member, None)
            assert got is not None, f"{name} lacks {member}"
            if isinstance(spec, property):
                assert isinstance(got, property), f"{name}.{member} should be a property"
                continue
            assert inspect.iscoroutinefunction(got) == inspect.iscoroutinefunction(spec), f"{name}.{member}"
            if member == "events":
                assert inspect.isasyncgenfunction(got), f"{name}.events should stream"
            assert list(inspect.signature(got).parameters) == list(inspect.signature(spec).parameters), (
                f"{name}.{member}"
            )


def test_refusals_cross_the_wire_with_their_estimates():
    """A replica's refusal is pickled to the ingress and raised there as the engine's own exception."""
    import pickle

    from stable_audio_service.engine import NotAccepting, QueueFull, WouldMissDeadline
    from stable_audio_service.serving.ray.wire import Refusal

    late = WouldMissDeadline("too late", estimate_s=12.5, max_wait_s=5.0, retry_after_s=8.0, alone_s=3.0)
    for exc in (QueueFull("full", 2.0), NotAccepting("stopping", None), late):
        error = pickle.loads(pickle.dumps(Refusal.of("r1", exc))).error()
        assert type(error) is type(exc) and str(error) == str(exc) and error.retry_after_s == exc.retry_after_s
    assert error.detail() == late.detail()


def test_cli_ray_flags_are_checked(tiny_dir: Path):
    runner = CliRunner()
    r = runner.invoke(cli_app, ["serve", "--replicas", "2", "--model", str(tiny_dir)])
    assert r.exit_code == 2 and "need --ray" in r.output
    r = runner.invoke(cli_app, ["serve", "--ray", "--replicas", "3:1", "--model", str(tiny_dir)])
    assert r.exit_code == 2 and "min_replicas <= max_replicas" in r.output
    r = runner.invoke(cli_app, ["serve", "--ray", "--replicas", "two", "--model", str(tiny_dir)])
    assert r.exit_code == 2 and "N or MIN:MAX" in r.output


def test_serve_config_file_builds(tiny_dir: Path):
    """deploy/ray/serve_config.yaml is a valid Serve config whose application builds with its args."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    path = Path(__file__).resolve().parents[1] / "deploy" / "ray" / "serve_config.yaml"
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (app,) = config.applications
    assert app.import_path == "stable_audio_service.serving.ray:app_builder"
    args = {**app.args, "model": str(tiny_dir)}
    assert ray_serving.app_builder(args) is not None
    with pytest.raises(ValueError, match="unknown application args"):
        ray_serving.app_builder({**args, "replicaz": 3})


def test_killing_a_replica_mid_load_answers_every_request_and_recovers(ray_client):
    """Last: a replica dies with work queued and running. Every request is answered (200, or 503 with
    Retry-After), never left hanging; the victim's jobs are gone (404) and its event streams end `failed`;
    Serve brings the deployment back to 2 replicas."""
    job = ray_client.post("/jobs", json={"prompt": "on the victim", **LONG}).json()
    victim = ray_serving.owner_of(job["id"])
    streamed: list = []
    reader = threading.Thread(target=sse_events, args=(ray_client, job["id"], streamed))
    reader.start()
    answers: list = []

    def predict(i: int) -> None:
        answers.append(ray_client.post("/predict", json={"prompt": f"load {i}", "seed": i, **FAST, "duration": 3.0}))

    clients = [threading.Thread(target=predict, args=(i,)) for i in range(6)]
    for t in clients:
        t.start()
    stats = ray_client.replica_stats
    wait_until(lambda: all(s.stats.running + s.stats.queue_depth > 0 for s in stats().values()), what="load on both")
    ray_client.kill_replica(victim)
    for t in clients:
        t.join(180)
    reader.join(60)
    assert not any(t.is_alive() for t in clients) and not reader.is_alive()
    assert len(answers) == 6
    for r in answers:
        assert r.status_code == 200 or (r.status_code == 503 and r.headers.get("retry-after")), r.text
    assert streamed[-1][0] == "failed" and streamed[-1][1]["status"] == 503
    assert ray_client.get(f"/jobs/{job['id']}").status_code == 404
    ray_client.wait_ready(2, without={victim}, timeout_s=180)
    assert ray_client.post("/predict", json={"prompt": "after", **FAST}).status_code == 200
