"""OpenTelemetry set-up: traces always (so responses carry real ids), export only when configured."""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from . import __version__

SERVICE_NAME = "stable-audio-api"
log = logging.getLogger("stable_audio_service.telemetry")

_provider: TracerProvider | None = None


def setup_tracing() -> TracerProvider:
    """Idempotent: one provider per process. OTLP gRPC export when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME), "service.version": __version__}
    )
    provider = TracerProvider(resource=resource)
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
        log.info("tracing: OTLP gRPC export to %s", endpoint)
    trace.set_tracer_provider(provider)
    _provider = trace.get_tracer_provider() if isinstance(trace.get_tracer_provider(), TracerProvider) else provider
    return _provider


def tracer() -> trace.Tracer:
    return setup_tracing().get_tracer("stable_audio_service", __version__)


def span_ids(span: trace.Span | None = None) -> tuple[str | None, str | None]:
    ctx = (span or trace.get_current_span()).get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def shutdown() -> None:
    if _provider is not None:
        _provider.shutdown()
