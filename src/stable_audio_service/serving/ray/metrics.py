"""`/metrics` on the ingress: the whole cluster's figures in one Prometheus registry."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ... import telemetry

if TYPE_CHECKING:
    from .client import RayEngineClient

log = logging.getLogger("stable_audio_service.ray")


class ClusterRegistry:
    """A Prometheus registry (`collect()`) that merges the ingress's own figures with every replica's, each
    replica's series labelled `replica="<id>"`; the ingress's cluster totals of the queue gauges are left out
    (the per-replica series are exact and sum to them)."""

    INGRESS_ONLY_DROPPED = ("stable_audio_queue_depth", "stable_audio_running")

    def __init__(self, client: RayEngineClient) -> None:
        self.client = client

    def collect(self) -> Iterator[Any]:
        """Called by the Prometheus exposition in the route's worker thread: it may block on the replicas."""
        from prometheus_client.metrics_core import Metric
        from prometheus_client.parser import text_string_to_metric_families

        merged: dict[tuple[str, str], Any] = {}

        def add(family: Any, extra: dict[str, str]) -> None:
            key = (family.name, family.type)
            out = merged.get(key)
            if out is None:
                out = merged[key] = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                out.add_sample(s.name, {**s.labels, **extra}, s.value, s.timestamp, s.exemplar)

        for family in telemetry.prometheus_registry().collect():
            if family.name not in self.INGRESS_ONLY_DROPPED:
                add(family, {})
        try:
            stats = self.client.refresh(metrics=True)
        except Exception:  # a scrape must not fail because one round of stats did
            log.warning("replica metrics unavailable", exc_info=True)
            stats = {}
        for tag, s in sorted(stats.items()):
            for family in text_string_to_metric_families(s.metrics or ""):
                add(family, {"replica": tag})
        yield from merged.values()
