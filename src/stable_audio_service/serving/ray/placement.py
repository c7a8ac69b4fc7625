"""Where a new job goes on a cluster: the replica estimated to finish it first.

Each replica keeps its own estimate (its engine measures its own speed, on its own device) and reports the time
its queued and running work will take (`EngineStats.drain_s`) in the figures the ingress polls every second. A
burst arrives faster than that, so the ingress also remembers what each submission told it: the job's first event
carries its estimated finish on the replica that took it (`eta_s`), which is that replica's new drain time. The
replica with the least of the two, aged by the time since, is asked first; one that refuses (a full queue, or a
deadline its own estimate says it would miss) is followed by the next, so the ingress refuses only when no replica
can take the job (`RayEngineClient.open_run`).

Plain functions on plain data: no Ray, no clock (`now` is passed in).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

from .wire import ReplicaStats

# (when it was told, in the ingress's monotonic clock; the estimated seconds to drain from then)
Told = tuple[float, float]


def drain_estimate(stats: ReplicaStats, told: Told | None, now: float) -> float:
    """Seconds until `stats`' replica is estimated to be idle: the later of its last report and what the last
    submission there said (aged); infinity when neither says anything (a replica without a measured speed)."""
    known = [] if stats.stats.drain_s is None else [stats.stats.drain_s]
    if told is not None:
        known.append(max(0.0, told[1] - (now - told[0])))
    return max(known) if known else math.inf


def by_earliest_finish(
    stats: Mapping[str, ReplicaStats], told: Mapping[str, Told], now: float, exclude: Collection[str] = ()
) -> list[str]:
    """The replicas that take work, not in `exclude`, in the order to ask them: earliest estimated drain first
    (a new job queued there is estimated to finish first), then the most free queue places, then by id."""
    ready = [(tag, s) for tag, s in stats.items() if tag not in exclude and s.health.accepting]
    return [tag for _, _, tag in sorted((drain_estimate(s, told.get(tag), now), -s.free, tag) for tag, s in ready)]
