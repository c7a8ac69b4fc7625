"""OpenTelemetry for the service: traces, metrics and logs, one set of providers per process.

- Traces are always on, so responses carry real trace and span ids; they are exported (OTLP gRPC, batch
  processor) only when OTEL_EXPORTER_OTLP_ENDPOINT is set. An incoming W3C `traceparent` is joined by the
  FastAPI instrumentation (api/app.py); the engine's phases become child spans after the fact (`observe`).
- Metrics live in one OTel MeterProvider with two readers: a periodic OTLP exporter (when the endpoint is set)
  and a Prometheus reader whose registry `GET /metrics` renders. One source of figures, two ways out.
- Logs: with an endpoint, records of the root logger are exported too (OTLP gRPC), carrying the active trace.

Standard switches: OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER /
OTEL_LOGS_EXPORTER (`none` turns that signal's export off), OTEL_METRIC_EXPORT_INTERVAL (ms, default 60000),
OTEL_BSP_SCHEDULE_DELAY (ms). A provider can be set only once per process, so everything here is set up once and
shared by every app the process creates (the tests create many); tests may add their own span processor to
`tracer_provider()`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import __version__

SERVICE_NAME = "stable-audio-api"
log = logging.getLogger("stable_audio_service.telemetry")
request_log = logging.getLogger("stable_audio_service.requests")

_lock = threading.RLock()
_provider: TracerProvider | None = None
_meter_provider: Any = None
_logger_provider: Any = None
_log_handler: logging.Handler | None = None
_registry: Any = None
_metrics: Metrics | None = None
_engines: weakref.WeakSet = weakref.WeakSet()

# span names, in the order a request goes through them
PHASE_SPANS = {
    "queue": "queue wait",
    "encode": "text encoding",
    "denoise": "denoising",
    "decode": "decoding",
    "audio_encode": "audio encoding",
    "loudness": "loudness normalisation",
}
GENERATE_SPAN = "generate"
PROMPT_CHARS = 100


def endpoint() -> str | None:
    return os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None


def _exporting(signal: str) -> bool:
    """True when an endpoint is set and OTEL_<SIGNAL>_EXPORTER is not `none`."""
    choice = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").strip().lower()
    return endpoint() is not None and choice != "none"


def resource() -> Resource:
    return Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME, "service.version": __version__}
    )


# -- set-up ------------------------------------------------------------------------------
def setup() -> TracerProvider:
    """Idempotent: traces, metrics and (with an endpoint) log export, once per process."""
    with _lock:
        provider = setup_tracing()
        _setup_metrics()
        _setup_logs()
        return provider


def setup_tracing() -> TracerProvider:
    """One TracerProvider per process. OTLP gRPC export when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    global _provider
    with _lock:
        if _provider is not None:
            return _provider
        provider = TracerProvider(resource=resource())
        if _exporting("traces"):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint(), insecure=True)))
            log.info("traces: OTLP gRPC export to %s", endpoint())
        trace.set_tracer_provider(provider)
        current = trace.get_tracer_provider()
        # someone else (a test, an agent) may have set one first; use theirs when it is an SDK provider
        _provider = current if isinstance(current, TracerProvider) else provider
        return _provider


def tracer_provider() -> TracerProvider:
    return setup_tracing()


def tracer() -> trace.Tracer:
    return setup_tracing().get_tracer("stable_audio_service", __version__)


def _setup_metrics() -> None:
    global _meter_provider, _registry, _metrics
    if _meter_provider is not None:
        return
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, ProcessCollector

    _registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=_registry)
    readers: list = [PrometheusMetricReader(registry=_registry, disable_target_info=False)]
    if _exporting("metrics"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint(), insecure=True)))
        log.info("metrics: OTLP gRPC export to %s", endpoint())
    # not set as the global provider: this module hands it to whoever needs it (instrumentation, /metrics)
    _meter_provider = MeterProvider(resource=resource(), metric_readers=readers)
    _metrics = Metrics(_meter_provider.get_meter("stable_audio_service", __version__))


def _setup_logs() -> None:
    global _logger_provider, _log_handler
    if _logger_provider is not None or not _exporting("logs"):
        return
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    _logger_provider = LoggerProvider(resource=resource())
    _logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint(), insecure=True))
    )
    _log_handler = LoggingHandler(level=logging.INFO, logger_provider=_logger_provider)
    # the exporters' own complaints (collector down) stay local: exporting them would feed the failure back
    _log_handler.addFilter(lambda record: not record.name.startswith(("opentelemetry", "grpc")))
    logging.getLogger().addHandler(_log_handler)
    log.info("logs: OTLP gRPC export to %s", endpoint())


def meter_provider():
    setup()
    return _meter_provider


def prometheus_registry():
    """The prometheus_client registry that `GET /metrics` renders (the OTel metrics plus process figures)."""
    setup()
    return _registry


def metrics() -> Metrics:
    setup()
    assert _metrics is not None
    return _metrics


def force_flush(timeout_ms: int = 5000) -> None:
    """Push out what is buffered (spans, metrics, logs) without closing anything."""
    for p in (_provider, _meter_provider, _logger_provider):
        if p is not None:
            try:
                p.force_flush(timeout_ms)
            except Exception:  # flushing must never stop a shutdown
                log.debug("flush failed", exc_info=True)


def shutdown() -> None:
    """Flush and close every provider; at process exit (the serve command calls it after the server stops)."""
    global _log_handler
    force_flush()
    if _log_handler is not None:
        logging.getLogger().removeHandler(_log_handler)
        _log_handler = None
    for p in (_provider, _meter_provider, _logger_provider):
        if p is not None:
            try:
                p.shutdown()
            except Exception:
                log.debug("telemetry shutdown failed", exc_info=True)


# -- ids ---------------------------------------------------------------------------------
def span_ids(span: trace.Span | None = None) -> tuple[str | None, str | None]:
    ctx = (span or trace.get_current_span()).get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


# -- metrics -----------------------------------------------------------------------------
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 900)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
RTF_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)


class Metrics:
    """The service's instruments. In Prometheus they read as
    stable_audio_requests_total{outcome}, stable_audio_request_duration_seconds{outcome},
    stable_audio_queue_depth, stable_audio_queue_drain_seconds, stable_audio_running, stable_audio_batch_size,
    stable_audio_audio_generated_seconds_total,
    stable_audio_realtime_factor, stable_audio_device_memory_used_bytes{device,scope},
    stable_audio_lora_uses_total{adapter,outcome}."""

    def __init__(self, meter) -> None:
        from opentelemetry.metrics import Observation

        self._observation = Observation
        self.requests = meter.create_counter(
            "stable_audio.requests",
            unit="1",
            description="Generation requests by outcome: ok, error, unavailable (503), cancelled, rejected.",
        )
        self.latency = meter.create_histogram(
            "stable_audio.request.duration",
            unit="s",
            description="Time from submission to the end of a generation request, by outcome.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self.batch_size = meter.create_histogram(
            "stable_audio.batch.size",
            unit="1",
            description="Requests sharing one batch of forward passes.",
            explicit_bucket_boundaries_advisory=BATCH_BUCKETS,
        )
        self.audio_seconds = meter.create_counter(
            "stable_audio.audio.generated", unit="s", description="Seconds of audio generated."
        )
        self.realtime_factor = meter.create_histogram(
            "stable_audio.realtime_factor",
            unit="1",
            description="Processing seconds per second of audio generated (below 1: faster than real time).",
            explicit_bucket_boundaries_advisory=RTF_BUCKETS,
        )
        self.lora_uses = meter.create_counter(
            "stable_audio.lora.uses",
            unit="1",
            description="Requests that applied a LoRA adapter, by adapter name and outcome (one per adapter).",
        )
        meter.create_observable_gauge(
            "stable_audio.queue.depth", [self._queue_depth], unit="1", description="Requests waiting in the queue."
        )
        meter.create_observable_gauge(
            "stable_audio.queue.drain",
            [self._queue_drain],
            unit="s",
            description="Estimated seconds until the work queued and running now is done, from the measured speed "
            "(absent before anything was measured).",
        )
        meter.create_observable_gauge(
            "stable_audio.running", [self._running], unit="1", description="Requests being generated now."
        )
        meter.create_observable_gauge(
            "stable_audio.device.memory.used",
            [self._memory],
            unit="By",
            description="Memory in use: on a GPU, tensors allocated by this process and the device-wide figure; "
            "on CPU, the process resident set.",
        )

    def _queue_depth(self, _options):
        yield self._observation(sum(e.queue_depth() for e in list(_engines)))

    def _queue_drain(self, _options):
        # engines drain side by side, so the service's figure is the longest; engines without an estimate say nothing
        estimates = [d for e in list(_engines) if (d := e.drain_s()) is not None]
        if estimates:
            yield self._observation(max(estimates))

    def _running(self, _options):
        yield self._observation(sum(e.running_count() for e in list(_engines)))

    def _memory(self, _options):
        for device, scope, value in device_memory():
            yield self._observation(value, {"device": device, "scope": scope})


def device_memory() -> list[tuple[str, str, int]]:
    """(device, scope, bytes): GPU allocated by this process and in use device-wide, else process RSS."""
    out: list[tuple[str, str, int]] = []
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            free, total = torch.cuda.mem_get_info()
            out.append(("cuda", "process", int(torch.cuda.memory_allocated())))
            out.append(("cuda", "device", int(total - free)))
    except Exception:
        log.debug("device memory query failed", exc_info=True)
    import psutil

    out.append(("cpu", "process", int(psutil.Process().memory_info().rss)))
    return out


class WatchedEngine(Protocol):
    """What the queue gauges read from an engine (the local `Engine` and the Ray cluster's client both have it)."""

    def queue_depth(self) -> int: ...
    def running_count(self) -> int: ...
    def drain_s(self) -> float | None: ...


def watch_engine(engine: WatchedEngine) -> None:
    """Let the queue-depth, drain and running gauges see this engine (held weakly)."""
    _engines.add(engine)


def record_rejected(reason: str) -> None:
    """A request refused before it reached the engine (queue full, shutting down)."""
    metrics().requests.add(1, {"outcome": "rejected", "reason": reason})


# -- the engine's observer: spans after the fact, metrics, the per-request log line -----------
def _outcome(job) -> str:
    status = job.status.value
    if status == "done":
        return "ok"
    if status == "cancelled":
        return "cancelled"
    return "unavailable" if job.error_status == 503 else "error"


def _job_attributes(job, model: Any = None) -> dict[str, Any]:
    p = job.params
    attrs: dict[str, Any] = {
        "stable_audio.prompt": (p.prompt or "")[:PROMPT_CHARS],
        "stable_audio.duration": float(p.duration),
        "stable_audio.steps": int(p.num_inference_steps),
        "stable_audio.guidance": float(p.guidance_scale),
        "stable_audio.format": job.format,
        "stable_audio.job_id": job.id,
    }
    if p.seed is not None:
        attrs["stable_audio.seed"] = int(p.seed)
    if job.batch_size:
        attrs["stable_audio.batch_size"] = int(job.batch_size)
    if model is not None:
        attrs["stable_audio.model"] = str(getattr(model, "name", model))
    if job.client_job_id:
        attrs["stable_audio.client_job_id"] = job.client_job_id
    loras = p.loras
    if loras:  # "name:strength" in the order the adapters are applied
        attrs["stable_audio.loras"] = [f"{r.name}:{r.strength:g}" for r in loras]
    return attrs


def _parent_context(job):
    ctx = job.context if isinstance(job.context, dict) else {}
    return ctx.get("otel")


def _emit_spans(job, model: Any, outcome: str) -> None:
    parent = _parent_context(job)
    t = tracer()
    created_ns = int(job.created * 1e9)
    finished_ns = int((job.finished or time.time()) * 1e9)
    gen = t.start_span(GENERATE_SPAN, context=parent, kind=SpanKind.INTERNAL, start_time=created_ns)
    gen.set_attributes(_job_attributes(job, model))
    gen.set_attribute("stable_audio.outcome", outcome)
    inner = trace.set_span_in_context(gen, parent)
    phases = list(job.phases)
    if not any(name == "queue" for name, *_ in phases):  # never left the queue (cancelled, expired, shut down)
        phases.insert(0, ("queue", created_ns, finished_ns, {}))
    for name, start_ns, end_ns, attrs in phases:
        span = t.start_span(PHASE_SPANS.get(name, name), context=inner, start_time=start_ns)
        for key, value in attrs.items():
            if key == "steps":
                span.set_attribute("stable_audio.steps", int(value))
            elif isinstance(value, bool | int | float | str):
                span.set_attribute(f"stable_audio.{key}", value)
        span.end(end_time=max(end_ns, start_ns))
    if outcome in ("error", "unavailable"):
        message = job.error or "generation failed"
        gen.add_event(
            "exception",
            {
                "exception.type": "GenerationFailed",
                "exception.message": message,
                "http.status_code": job.error_status or 500,
            },
            timestamp=finished_ns,
        )
        gen.set_status(Status(StatusCode.ERROR, message))
        request_span = trace.get_current_span(parent) if parent is not None else None
        if request_span is not None and request_span.is_recording():  # /predict: still open
            request_span.set_status(Status(StatusCode.ERROR, message))
            request_span.add_event("exception", {"exception.type": "GenerationFailed", "exception.message": message})
    gen.end(end_time=max(finished_ns, created_ns))


def _record_metrics(job, outcome: str) -> None:
    m = metrics()
    m.requests.add(1, {"outcome": outcome})
    if job.finished is not None:
        m.latency.record(max(0.0, job.finished - job.created), {"outcome": outcome})
    for name in dict.fromkeys(r.name for r in job.params.loras):
        m.lora_uses.add(1, {"adapter": name, "outcome": outcome})
    if job.result is not None:
        audio_s = job.result.duration
        m.audio_seconds.add(audio_s)
        if job.started is not None and job.finished is not None and audio_s > 0:
            m.realtime_factor.record((job.finished - job.started) / audio_s)


def _log_request(job, outcome: str) -> None:
    ctx = job.context if isinstance(job.context, dict) else {}
    timings = " ".join(f"{k}={v:.3f}" for k, v in job.timings.items())
    token = otel_context.attach(ctx["otel"]) if ctx.get("otel") is not None else None
    try:
        request_log.info(
            "request trace_id=%s span_id=%s job=%s outcome=%s status=%s steps=%d duration=%.2f batch=%d %s%s",
            ctx.get("trace_id"),
            ctx.get("span_id"),
            job.id,
            outcome,
            job.error_status or 200,
            job.params.num_inference_steps,
            job.params.duration,
            job.batch_size,
            timings,
            f" error={job.error!r}" if outcome in ("error", "unavailable") else "",
        )
    finally:
        if token is not None:
            otel_context.detach(token)


def observe(what: str, job, info: dict, model: Any = None) -> None:
    """The engine's observer (Engine(observer=...)): called on submitted, batch, done, failed, cancelled."""
    if what == "submitted":
        parent = _parent_context(job)
        if parent is not None:
            span = trace.get_current_span(parent)
            if span.is_recording():
                span.set_attributes(_job_attributes(job, model))
        return
    if what == "batch":
        metrics().batch_size.record(int(info.get("size", 1)))
        return
    if what in ("done", "failed", "cancelled"):
        outcome = _outcome(job)
        _record_metrics(job, outcome)
        _emit_spans(job, model, outcome)
        _log_request(job, outcome)


def observer_for(model: Any):
    """An observer bound to a model (for the model name attribute)."""

    def _observer(what: str, job, info: dict) -> None:
        observe(what, job, info, model)

    return _observer
