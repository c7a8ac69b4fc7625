"""GET /metrics: the service's OpenTelemetry metrics in the Prometheus text format, for a scraper."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from .. import telemetry

router = APIRouter()


@router.get("/metrics", tags=["service"], response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text format (OpenMetrics when the scraper asks for it): the same figures the OTLP exporter sends."""
    # the backend's figures (a cluster's merge every replica's); this process's own while it has none yet
    client = request.app.state.service.client
    registry = client.metrics_registry if client is not None else telemetry.prometheus_registry()
    if "application/openmetrics-text" in request.headers.get("accept", ""):
        return Response(generate_openmetrics(registry), media_type=OPENMETRICS_TYPE)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
