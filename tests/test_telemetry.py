"""Observability: spans (in-process exporter), /metrics, and the served process end to end against a real OTLP gRPC
receiver started in the test (traces, metrics, logs), including a SIGTERM during generation."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from stable_audio_service import telemetry
from stable_audio_service.engine import Job, JobStatus
from stable_audio_service.models.base import GenerationParams

from .conftest import FAST, decode_b64

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
PHASES = ["queue wait", "text encoding", "denoising", "decoding", "audio encoding"]


def hexid(n: int, width: int) -> str:
    return format(n, f"0{width}x")


# -- in-process: spans through an in-memory exporter on the process's provider ------------------
@pytest.fixture(scope="module")
def exported() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    telemetry.tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def wait_for_span(exporter, predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = [s for s in exporter.get_finished_spans() if predicate(s)]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("span not exported in time")


def trace_of(exporter, trace_id: str):
    return [s for s in exporter.get_finished_spans() if hexid(s.context.trace_id, 32) == trace_id]


def test_traceparent_joins_caller_trace_and_meta_is_the_server_span(client, exported):
    prompt = "a long prompt about rain on a tin roof " * 6  # > 100 characters
    r = client.post(
        "/predict",
        json={"prompt": prompt, "seed": 7, "guidance_scale": 3.5, **FAST},
        headers={"traceparent": TRACEPARENT},
    )
    assert r.status_code == 200, r.text
    meta = r.json()["meta"]
    assert meta["trace_id"] == CALLER_TRACE
    server = wait_for_span(exported, lambda s: hexid(s.context.span_id, 16) == meta["span_id"])[0]
    assert server.kind == SpanKind.SERVER and server.name == "POST /predict"
    assert hexid(server.context.trace_id, 32) == CALLER_TRACE
    assert server.parent is not None and hexid(server.parent.span_id, 16) == CALLER_SPAN and server.parent.is_remote

    spans = trace_of(exported, CALLER_TRACE)
    gen = [s for s in spans if s.name == telemetry.GENERATE_SPAN]
    assert len(gen) == 1 and gen[0].parent.span_id == server.context.span_id
    gen = gen[0]
    children = [s for s in spans if s.parent and s.parent.span_id == gen.context.span_id]
    children.sort(key=lambda s: s.start_time)
    assert [s.name for s in children] == PHASES
    for a, b in zip(children, children[1:], strict=False):  # sequential, inside the generate span
        assert a.end_time <= b.start_time + 1_000_000
    assert gen.start_time <= children[0].start_time and children[-1].end_time <= gen.end_time
    assert server.start_time <= gen.start_time and gen.end_time <= server.end_time
    denoise = children[2]
    assert denoise.attributes["stable_audio.steps"] == 10

    attrs = gen.attributes
    assert attrs["stable_audio.prompt"] == prompt[:100]
    assert attrs["stable_audio.duration"] == 1.0 and attrs["stable_audio.steps"] == 10
    assert attrs["stable_audio.guidance"] == 3.5 and attrs["stable_audio.seed"] == 7
    assert attrs["stable_audio.batch_size"] >= 1 and attrs["stable_audio.model"]
    assert attrs["stable_audio.outcome"] == "ok"
    assert server.attributes["stable_audio.prompt"] == prompt[:100]  # the request span carries them too
    # only the request span and its descendants: no http send/receive spans
    assert {s.name for s in spans} == {"POST /predict", telemetry.GENERATE_SPAN, *PHASES}
    assert telemetry.tracer_provider().resource.attributes["service.name"] == os.environ.get(
        "OTEL_SERVICE_NAME", "stable-audio-api"
    )


def test_without_traceparent_a_new_trace_and_health_untraced(client, exported):
    r = client.post("/jobs", json={"prompt": "wind", **FAST})
    assert r.status_code == 202, r.text
    meta = r.json()["meta"]
    assert len(meta["trace_id"]) == 32 and meta["trace_id"] != CALLER_TRACE
    server = wait_for_span(exported, lambda s: hexid(s.context.span_id, 16) == meta["span_id"])[0]
    assert server.kind == SpanKind.SERVER and server.parent is None
    # the job outlives the 202; its spans still join the request's trace
    gen = wait_for_span(
        exported,
        lambda s: s.name == telemetry.GENERATE_SPAN and hexid(s.context.trace_id, 32) == meta["trace_id"],
        timeout=120,
    )[0]
    assert gen.parent.span_id == server.context.span_id
    before = len(exported.get_finished_spans())
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    # a traced request after them marks the point by which their spans, had they any, were exported too
    assert client.get("/models").status_code == 200

    def servers() -> list[str]:
        return [s.name for s in exported.get_finished_spans()[before:] if s.kind == SpanKind.SERVER]

    wait_until(lambda: "GET /models" in servers())
    assert servers() == ["GET /models"], servers()


def test_failed_generation_recorded_on_spans(exported):
    tracer = telemetry.tracer()
    with tracer.start_as_current_span("POST /predict", kind=SpanKind.SERVER) as request_span:
        ctx = otel_context.get_current()
        trace_id, span_id = telemetry.span_ids()
        job = Job(
            id="j1",
            params=GenerationParams("boom", 1.0, 7.0, 10, 1, None),
            context={"trace_id": trace_id, "span_id": span_id, "otel": ctx},
        )
        t0 = time.time_ns()
        job.phase("queue", int(job.created * 1e9), t0)
        job.status, job.error, job.error_status = JobStatus.failed, "generation failed (X)", 500
        job.finished = time.time()
        telemetry.observe("failed", job, {}, model=None)
    gen = [s for s in trace_of(exported, trace_id) if s.name == telemetry.GENERATE_SPAN][0]
    assert gen.status.status_code == StatusCode.ERROR and "generation failed" in gen.status.description
    assert any(e.name == "exception" for e in gen.events)
    server = [s for s in trace_of(exported, trace_id) if s.context.span_id == request_span.get_span_context().span_id]
    assert server[0].status.status_code == StatusCode.ERROR


def test_no_endpoint_no_export_errors(client, exported, caplog):
    if telemetry.endpoint():
        pytest.skip("OTEL_EXPORTER_OTLP_ENDPOINT is set in this environment")
    with caplog.at_level(logging.INFO):
        r = client.post("/predict", json={"prompt": "quiet", **FAST})
    assert r.status_code == 200 and len(r.json()["meta"]["span_id"]) == 16
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING and "opentelemetry" in rec.name]
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "stable_audio_service.requests"]
    assert any(f"trace_id={r.json()['meta']['trace_id']}" in line and "outcome=ok" in line for line in lines)


# -- /metrics ---------------------------------------------------------------------------------
def scrape(client) -> dict[str, dict[tuple, float]]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope")))
            out.setdefault(sample.name, {})[labels] = sample.value
    return out


def value(metrics, name, **labels) -> float:
    want = set(labels.items())
    return sum(v for k, v in metrics.get(name, {}).items() if want <= set(k))


def test_metrics_parse_and_move_with_traffic(client):
    before = scrape(client)
    r = client.post("/predict", json={"prompt": "thunder", **FAST})
    assert r.status_code == 200
    after = scrape(client)
    assert (
        value(after, "stable_audio_requests_total", outcome="ok")
        == value(before, "stable_audio_requests_total", outcome="ok") + 1
    )
    assert (
        value(after, "stable_audio_request_duration_seconds_count", outcome="ok")
        == value(before, "stable_audio_request_duration_seconds_count", outcome="ok") + 1
    )
    assert value(after, "stable_audio_audio_generated_seconds_total") == pytest.approx(
        value(before, "stable_audio_audio_generated_seconds_total") + 1.0
    )
    assert value(after, "stable_audio_batch_size_count") > value(before, "stable_audio_batch_size_count")
    assert value(after, "stable_audio_realtime_factor_count") == value(before, "stable_audio_realtime_factor_count") + 1
    assert "stable_audio_queue_depth" in after and "stable_audio_running" in after
    assert value(after, "stable_audio_device_memory_used_bytes") > 0
    assert value(after, "process_resident_memory_bytes") > 0
    # the HTTP instrumentation's own figures ride along
    assert any(name.startswith("http_server_") for name in after)

    telemetry.record_rejected("queue_full")
    assert value(scrape(client), "stable_audio_requests_total", outcome="rejected") >= 1


# -- end to end: the served process, a real OTLP gRPC receiver, SIGTERM -------------------------
class Receiver:
    """A minimal OTLP gRPC collector on 127.0.0.1 built from opentelemetry-proto's service definitions."""

    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.lock = threading.Lock()
        self.traces, self.metrics, self.logs = [], [], []
        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 (gRPC name)
                with receiver.lock:
                    receiver.traces.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):  # noqa: N802
                with receiver.lock:
                    receiver.metrics.append(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request, context):  # noqa: N802
                with receiver.lock:
                    receiver.logs.append(request)
                return logs_service_pb2.ExportLogsServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self.server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def spans(self) -> list[tuple[str, object]]:
        """(service.name, span) for every span received."""
        out = []
        with self.lock:
            requests = list(self.traces)
        for req in requests:
            for rs in req.resource_spans:
                attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    out.extend((attrs.get("service.name"), s) for s in ss.spans)
        return out

    def metric_names(self) -> set[str]:
        with self.lock:
            return {
                m.name
                for req in self.metrics
                for rm in req.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
            }

    def log_bodies(self) -> list[tuple[str, str]]:
        with self.lock:
            return [
                (lr.trace_id.hex(), lr.body.string_value)
                for req in self.logs
                for rl in req.resource_logs
                for sl in rl.scope_logs
                for lr in sl.log_records
            ]

    def stop(self) -> None:
        self.server.stop(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The SIGTERM test holds its requests (tests/held_serve.py) and ends the grace period itself once the short one
# has been answered: this real-time figure is never reached when the service works, whatever the machine.
GRACE_S = 120
HELD_SERVE = Path(__file__).resolve().parent / "held_serve.py"


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    receiver = Receiver()
    port = free_port()
    log_path = tmp_path_factory.mktemp("served") / "server.log"
    control = tmp_path_factory.mktemp("control")
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"127.0.0.1:{receiver.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # spans go out promptly
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # metrics and logs only by the flush at shutdown
        "OTEL_BLRP_SCHEDULE_DELAY": "600000",
        "STABLE_AUDIO_SHUTDOWN_GRACE_S": str(GRACE_S),
        "STABLE_AUDIO_BATCH_WAIT_MS": "0",
        "OMP_NUM_THREADS": "2",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("OTEL_SERVICE_NAME", None)
    env.pop("STABLE_AUDIO_API_KEY", None)
    log_file = open(log_path, "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, str(HELD_SERVE), str(control), "serve", "--model", str(tiny_dir), "--port", str(port)],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, log_path.read_text()
        try:
            if httpx.get(base + "/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "service did not become ready\n" + log_path.read_text()
        time.sleep(0.25)
    yield {"proc": proc, "base": base, "receiver": receiver, "log": log_path, "control": control}
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    log_file.close()
    receiver.stop()


def test_e2e_caller_trace_reaches_the_receiver(served):
    receiver, base = served["receiver"], served["base"]
    r = httpx.post(
        base + "/predict",
        json={"prompt": "rain on a tin roof", **FAST},
        headers={"traceparent": TRACEPARENT},
        timeout=180,
    )
    assert r.status_code == 200, r.text
    meta = r.json()["meta"]
    assert meta["trace_id"] == CALLER_TRACE
    deadline = time.monotonic() + 20
    while True:
        got = [(svc, s) for svc, s in receiver.spans() if s.trace_id.hex() == CALLER_TRACE]
        names = {s.name for _, s in got}
        if {"POST /predict", telemetry.GENERATE_SPAN, *PHASES} <= names:
            break
        assert time.monotonic() < deadline, f"spans not received: {names}"
        time.sleep(0.2)
    assert {svc for svc, _ in got} == {"stable-audio-api"}
    by_id = {s.span_id.hex(): s for _, s in got}
    server = by_id[meta["span_id"]]  # meta's ids are the exported request span's
    assert server.name == "POST /predict" and server.parent_span_id.hex() == CALLER_SPAN
    gen = next(s for _, s in got if s.name == telemetry.GENERATE_SPAN)
    assert gen.parent_span_id == server.span_id
    phases = sorted((s for _, s in got if s.parent_span_id == gen.span_id), key=lambda s: s.start_time_unix_nano)
    assert [s.name for s in phases] == PHASES
    steps = {a.key: a.value.int_value for a in phases[2].attributes}
    assert steps["stable_audio.steps"] == 10

    m = httpx.get(base + "/metrics", timeout=10)
    fams = {f.name: f for f in text_string_to_metric_families(m.text)}
    ok = [s.value for s in fams["stable_audio_requests"].samples if s.labels.get("outcome") == "ok"]
    assert ok and ok[0] >= 1


def test_e2e_sigterm_during_generation_answers_everyone_and_exits_0(served):
    """SIGTERM while one request runs and two wait: the running one finishes within the grace period, what the
    grace period cannot finish is answered 503, telemetry is flushed, the process exits 0. Which request is
    running, and that the long ones cannot finish in time, is decided by holds (tests/held_serve.py), and the
    grace period ends when the test says so: nothing depends on how fast this machine computes."""
    proc, base, receiver, control = served["proc"], served["base"], served["receiver"], served["control"]
    hold, held = control / "hold", control / "held"
    results: dict[str, httpx.Response | Exception] = {}

    def call(name, body):
        try:
            results[name] = httpx.post(base + "/predict", json=body, timeout=GRACE_S + 60)
        except Exception as exc:  # a dropped request shows up here
            results[name] = exc

    (hold / "short").touch()
    (hold / "long").touch()
    short = threading.Thread(target=call, args=("short", {"prompt": "short", **FAST}))
    short.start()
    wait_until(lambda: (held / "short").exists())  # the short one is under way, held at a step
    # two long ones with other step counts: two more batches, queued behind the short one
    longs = [
        threading.Thread(target=call, args=(f"long{n}", {"prompt": "long", **FAST, "num_inference_steps": n}))
        for n in (12, 11)
    ]
    for t in longs:
        t.start()
    wait_until(lambda: httpx.get(base + "/ready", timeout=5).json().get("queue_depth", 0) >= 2)

    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: (control / "draining").exists())  # the drain began with the short one still running
    (hold / "short").unlink()
    short.join(GRACE_S)
    assert "short" in results, "the running request was not answered within the grace period"
    wait_until(lambda: (held / "long").exists())  # the drain started the next batch, which cannot finish
    (control / "expire-grace").touch()  # the grace period is over
    for t in longs:
        t.join(60)
    (hold / "long").unlink()  # the worker may go on: its job was already answered
    rc = proc.wait(60)
    log_text = served["log"].read_text()
    assert rc == 0, log_text
    for name in ("short", "long12", "long11"):  # every accepted request got an answer
        assert isinstance(results.get(name), httpx.Response), (name, results.get(name))
    # the short one finished within the grace period; what could not finish was answered 503
    short_r = results["short"]
    assert short_r.status_code == 200, short_r.text
    assert decode_b64(short_r.json()["audio_b64"])[0].shape[0] == 2
    for r in (results["long12"], results["long11"]):  # one running at the end of the grace period, one queued
        assert r.status_code == 503, r.text
        assert "shutting down" in r.json()["detail"] and r.headers.get("retry-after")

    # telemetry was flushed on the way out: metrics and logs are only exported by that flush here
    names = receiver.metric_names()
    assert {"stable_audio.requests", "stable_audio.request.duration", "stable_audio.audio.generated"} <= names
    assert {"stable_audio.queue.depth", "stable_audio.batch.size", "stable_audio.device.memory.used"} <= names
    logs = receiver.log_bodies()
    assert any(
        tid == CALLER_TRACE and f"trace_id={CALLER_TRACE}" in body and "outcome=ok" in body for tid, body in logs
    ), logs
    assert any("outcome=unavailable" in body for _, body in logs)
    long_gen = [
        s
        for _, s in receiver.spans()
        if s.name == telemetry.GENERATE_SPAN
        and {a.key: a.value.string_value for a in s.attributes}.get("stable_audio.prompt") == "long"
    ]
    assert any(s.status.code == 2 for s in long_gen)  # STATUS_CODE_ERROR on the unfinished one
    # start-up lines, and no export errors
    assert "model ready: model=" in log_text and "device=cpu" in log_text and "load_s=" in log_text
    assert "Failed to export" not in log_text and "Transient error" not in log_text


def wait_until(condition, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_systemd_unit_in_repo():
    unit = (Path(__file__).parents[1] / "deploy" / "stable-audio.service").read_text()
    for line in (
        "Restart=on-failure",
        "NoNewPrivileges=true",
        "PrivateTmp=true",
        "PYTHONUNBUFFERED=1",
        "OTEL_EXPORTER_OTLP_ENDPOINT=localhost:4317",
        "TORCH_ROCM_AOTRITON_ENABLE_EXPERIMENTAL=1",
        "KillSignal=SIGTERM",
    ):
        assert line in unit, line
    assert "stable-audio-service serve" in unit
