"""Placement on a cluster, on plain data: a new job goes first to the replica estimated to finish it first."""

from __future__ import annotations

import math

from stable_audio_service.engine.client import EngineHealth, EngineStats
from stable_audio_service.serving.ray.placement import by_earliest_finish, drain_estimate
from stable_audio_service.serving.ray.wire import ReplicaStats


def replica(tag: str, drain_s: float | None, queued: int = 0, accepting: bool = True) -> ReplicaStats:
    return ReplicaStats(
        replica=tag,
        actor=f"actor-{tag}",
        pid=1,
        health=EngineHealth(healthy=True, accepting=accepting),
        stats=EngineStats(queue_depth=queued, running=0, max_batch_size=4, queue_size=8, drain_s=drain_s),
    )


def test_the_replica_that_drains_first_is_asked_first():
    stats = {"a": replica("a", 12.0), "b": replica("b", 3.0), "c": replica("c", 3.0, queued=2)}
    assert by_earliest_finish(stats, {}, now=0.0) == ["b", "c", "a"]  # equal drains: the freer queue first
    assert by_earliest_finish(stats, {}, now=0.0, exclude={"b"}) == ["c", "a"]


def test_what_the_last_submission_said_counts_until_the_next_poll():
    stats = {"a": replica("a", 2.0), "b": replica("b", 3.0)}
    told = {"a": (100.0, 10.0)}  # a job placed on "a" at t=100 said it would finish 10 s later
    assert drain_estimate(stats["a"], told["a"], now=101.0) == 9.0
    assert by_earliest_finish(stats, told, now=101.0) == ["b", "a"]
    assert by_earliest_finish(stats, told, now=108.5) == ["a", "b"]  # by now "a" is estimated to drain first


def test_replicas_without_an_estimate_or_not_accepting_come_last_or_not_at_all():
    stats = {"new": replica("new", None), "old": replica("old", 30.0), "stopping": replica("s", 0.0, accepting=False)}
    assert drain_estimate(stats["new"], None, 0.0) == math.inf
    assert by_earliest_finish(stats, {}, now=0.0) == ["old", "new"]
