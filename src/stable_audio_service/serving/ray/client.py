"""`RayEngineClient`: the `EngineClient` of the ingress, over the model replicas of a Ray Serve deployment.

Submitting opens the replica's `run` stream on the replica estimated to finish the job first (placement.py: each
replica's own estimate, polled every second, and what the last submission there said), then the others in that
order (Serve's power-of-two choice while no replica has an estimate); the job is taken when the stream's first
event arrives, and the ingress refuses only when every replica refused. A full
cluster answers `QueueFull` (429), no replica `NotAccepting` (503), with `Retry-After`, like one process. Calls
about a job go to the replica its id names (router.py); a replica that is gone means the job is gone (None), a
replica that does not answer is `Unavailable` (503). Traces continue: the request span travels as a W3C
`traceparent` with each submission, and the replica's engine spans become its children.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ray.exceptions import ActorDiedError

from ... import telemetry
from ...config import Settings
from ...engine import NotAccepting, QueueFull
from ...engine.client import EngineHealth, EngineStats, JobAudio, JobEvent, JobInfo, Unavailable
from ...models.base import GenerationParams
from .handles import FollowedJob, SubmittedJob
from .metrics import ClusterRegistry
from .placement import Told, by_earliest_finish
from .wire import ModelView, Refusal, ReplicaStats, is_job_id, owner_of

log = logging.getLogger("stable_audio_service.ray")

STATS_PERIOD_S = 1.0  # how often the ingress refreshes the replicas' figures (/ready, placement, gauges)
CALL_TIMEOUT_S = 30.0  # a short call to a replica (get, cancel, the first event of a submission)
NO_REPLICA = "no model replica is running (Serve is starting new ones)"


class RayEngineClient:
    """The model deployment's replicas as one `EngineClient` (`handle`: the Serve handle of the deployment)."""

    def __init__(self, handle: Any, settings: Settings) -> None:
        self.handle = handle
        self.settings = settings
        self.stopping = False
        self._model: ModelView | None = None
        self._stats: dict[str, ReplicaStats] = {}
        self._stats_lock = threading.Lock()
        self._polled = False
        self._stop = threading.Event()
        self._tasks: set[asyncio.Task] = set()
        self._registry = ClusterRegistry(self)
        self._told: dict[str, Told] = {}  # replica -> what its last accepted submission said about its drain

    # -- lifecycle -----------------------------------------------------------------------------------------
    def connect(self, settings: Settings, on_fatal: Callable[[str], None]) -> RayEngineClient:
        """`create_app`'s `connect` (in its loader thread): wait for a model replica to answer, then describe its
        model and start polling the replicas' figures. A replica that dies is Serve's to replace: never fatal."""
        while True:
            try:
                self._model = self.handle.info.remote().result(timeout_s=60)
                break
            except TimeoutError:
                log.info("waiting for a model replica to load the model")
        self.refresh()
        threading.Thread(target=self._poll, name="replica-stats", daemon=True).start()
        telemetry.watch_engine(self)
        return self

    def shutdown(self, grace_s: float) -> None:
        """The ingress stops taking work; the replicas drain themselves when Serve stops them."""
        self.stopping = True
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(STATS_PERIOD_S):
            try:
                self.refresh()
            except Exception:  # the poller must outlive any one bad round
                log.debug("replica stats failed", exc_info=True)

    def refresh(self, metrics: bool = False, timeout_s: float = 5.0) -> dict[str, ReplicaStats]:
        """Ask every running replica for its figures (blocking: from a thread, never on the event loop)."""
        results = self.handle.broadcast("stats", None, metrics).results(timeout_s=timeout_s, return_exceptions=True)
        live = {r.replica: r for r in results if isinstance(r, ReplicaStats)}
        with self._stats_lock:
            self._stats = live
            self._polled = True
        return live

    # -- figures ---------------------------------------------------------------------------------------------
    @property
    def model(self) -> ModelView:
        assert self._model is not None, "not connected"
        return self._model

    @property
    def metrics_registry(self) -> ClusterRegistry:
        return self._registry

    def replica_stats(self) -> dict[str, ReplicaStats]:
        """The replicas that answered the last poll, by id."""
        with self._stats_lock:
            return dict(self._stats)

    def live_replicas(self) -> int:
        return sum(1 for s in self.replica_stats().values() if s.health.healthy)

    async def health(self) -> EngineHealth:
        replicas = self.live_replicas()
        healthy = not self._polled or replicas > 0
        return EngineHealth(
            healthy=healthy,
            accepting=healthy and not self.stopping,
            reason=None if healthy else NO_REPLICA,
            replicas=replicas,
        )

    async def stats(self) -> EngineStats:
        queue_size, max_batch = self.settings.queue_size, self.settings.max_batch_size  # what each replica runs with
        return EngineStats(self.queue_depth(), self.running_count(), max_batch, queue_size, self.drain_s())

    def drain_s(self) -> float | None:
        """Estimated seconds until every replica is done with what it holds: replicas drain side by side, so the
        longest one's (None while no replica has an estimate; also what the drain gauge reports)."""
        drains = [s.stats.drain_s for s in self.replica_stats().values() if s.stats.drain_s is not None]
        return max(drains, default=None)

    def queue_depth(self) -> int:
        """Queued jobs on every replica (also what the ingress's own queue gauge reports)."""
        return sum(s.stats.queue_depth for s in self.replica_stats().values())

    def running_count(self) -> int:
        return sum(s.stats.running for s in self.replica_stats().values())

    # -- jobs -----------------------------------------------------------------------------------------------
    async def submit(
        self,
        params: GenerationParams,
        *,
        format: str = "wav",
        client_job_id: str | None = None,
        context: dict[str, Any] | None = None,
        keep: bool = True,
        max_wait_s: float | None = None,
    ) -> SubmittedJob:
        if self.stopping:
            raise NotAccepting("the service is shutting down")
        job = SubmittedJob(self, params, format, client_job_id, _carrier(context), keep, max_wait_s)
        await job.place()
        job.start()
        return job

    async def get(self, job_id: str) -> JobInfo | None:
        return await self._ask(self.handle.get, job_id)

    async def follow(self, job_id: str) -> FollowedJob | None:
        info = await self.get(job_id)
        return None if info is None else FollowedJob(self, info)

    async def cancel(self, job_id: str) -> JobInfo | None:
        return await self._ask(self.handle.cancel, job_id)

    async def audio(self, job_id: str) -> JobAudio | None:
        return await self._ask(self.handle.audio, job_id)

    # -- calls to replicas (on the ingress's event loop) -----------------------------------------------------
    async def open_run(
        self,
        params: GenerationParams,
        fmt: str,
        client_job_id: str | None,
        carrier: dict[str, str],
        keep: bool,
        max_wait_s: float | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> tuple[Any, JobEvent]:
        """Submit on a replica: (its open `run` stream, the job's first event). The replica estimated to finish it
        first, then the others in that order (placement.py); Serve's choice first while no replica has an estimate.
        `exclude`: replicas not to try again."""
        tried = set(exclude)
        refusals: list[Refusal] = []
        target: str | None = None
        first = True
        while True:
            stats = self.replica_stats()
            order = by_earliest_finish(stats, self._told, time.monotonic(), tried)
            if first and not any(stats[tag].stats.drain_s is not None for tag in order):
                target = None  # nothing estimated yet: Serve's power-of-two choice
            elif order:
                target = order[0]
            else:
                break
            first = False
            stream = self.handle.options(stream=True).run.remote(
                target, params, fmt, client_job_id, carrier, keep, not keep, max_wait_s
            )
            try:
                answer = await asyncio.wait_for(anext(stream), CALL_TIMEOUT_S)
            except asyncio.CancelledError:
                stream.cancel()
                raise
            except Exception as exc:  # a replica that died or hangs: try the others
                stream.cancel()
                log.warning("submitting on %s failed: %s", target or "a replica", type(exc).__name__)
                if target is not None:
                    tried.add(target)
                continue
            if isinstance(answer, Refusal):
                refusals.append(answer)
                tried.update({answer.replica, target or answer.replica})
                continue
            owner = owner_of(answer.job.id)
            if owner is not None and answer.job.eta_s is not None:
                self._told[owner] = (time.monotonic(), answer.job.eta_s)  # the newest job there ends its queue
            return stream, answer
        if not refusals:
            raise NotAccepting("no model replica is available")
        soonest = min(refusals, key=lambda r: math.inf if r.retry_after_s is None else r.retry_after_s)
        if any(r.status == 429 for r in refusals):
            size = self.settings.queue_size
            raise QueueFull(
                f"queue full on every model replica ({len(refusals)} x {size} waiting)", soonest.retry_after_s
            )
        raise soonest.error()

    def open_events(self, job_id: str) -> Any:
        """The owner's stream of a job's events (empty when it has no such job)."""
        return self.handle.options(stream=True).events.remote(job_id)

    async def _ask(self, method: Any, job_id: str) -> Any:
        """`method(job_id)` on the job's owner; None when the id names no job, or names a replica that is gone."""
        if owner_of(job_id) is None or not is_job_id(job_id):
            return None  # not an id this service hands out: no call at all
        try:
            return await asyncio.wait_for(method.remote(job_id), CALL_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except ActorDiedError:
            return None  # its replica is gone, and the job with it
        except Exception as exc:
            log.warning("a call about %s failed: %s: %s", job_id, type(exc).__name__, exc)
            raise Unavailable("the model replica did not answer; retry") from None

    def cancel_soon(self, job_id: str) -> None:
        """Cancel on the owner without waiting (a job whose replica is gone needs no cancel)."""
        self.spawn(self._quietly(self._ask(self.handle.cancel, job_id)))

    @staticmethod
    async def _quietly(call: Awaitable[Any]) -> None:
        try:
            await call
        except Exception:
            log.debug("a fire-and-forget call failed", exc_info=True)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run `coro` as a task this client holds until it ends (the event loop keeps only weak references)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _carrier(context: dict[str, Any] | None) -> dict[str, str]:
    """The request span as a W3C `traceparent`, to travel with the submission."""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    if context and context.get("otel") is not None:
        propagate.inject(carrier, context=context["otel"])
    return carrier
