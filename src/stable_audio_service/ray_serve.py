"""The same HTTP API over many model replicas and machines, on Ray Serve (`serve --ray`).

Two deployments:

- `StableAudioModel`, N replicas (or autoscaled between a min and a max): each owns one `Engine`, so the
  model's memory, the bounded queue and dynamic batching stay inside a replica, exactly as in one process.
- `StableAudioIngress`: the FastAPI app of `api/app.py`, unchanged, with a `ClusterEngine` in place of the
  local engine. The routes reach the engine only through the `get_engine` / `get_reading_engine`
  dependencies, so the ingress overrides those two with async ones that talk to the replicas and hand the
  routes a per-request `RequestEngine` whose methods answer from what was fetched.

Jobs across replicas: a job id names the replica that owns it, `<replica id>.<32 hex>`, and `JobOwnerRouter`
(a Serve request router) sends every call about a job (`get`, `cancel`, `events`, `run`) to that replica.
No registry actor: it would be one more thing to keep alive and consistent, every read would cost an extra
hop, and it could not save a job anyway, since the job's queue slot, progress and audio live in its
replica's memory and die with it. The id carries everything the route needs; a dead owner means the job is
gone (404), which the registry could only have said more slowly.

Submitting is two steps because the routes submit synchronously: the dependency `reserve`s a queue slot on
a replica (Serve's power-of-two choice on ongoing requests first, then the others from the freshest figures;
a full cluster answers 429, no replica 503, with `Retry-After`, like one process), then `submit` returns at
once and a task streams `run` on the owner: the submission, then the terminal event (with the audio
for `/predict`). A reader that arrives before the submission waits for it briefly on the replica.

A replica that dies answers every caller: a stream that breaks fails its job with 503 + `Retry-After`;
`/predict`, whose client has received nothing yet, is retried once on another replica with the same seed.
Traces continue: the ingress request span travels as a W3C `traceparent` with each submission, and the
replica's engine spans (queue wait, denoising, decoding, ...) become its children. `/metrics` merges every
replica's figures under a `replica` label; `/ready` reports `"replicas"`: the model replicas that answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from ray import serve
from ray.exceptions import ActorDiedError
from ray.serve.request_router import FIFOMixin, RequestRouter

from . import telemetry
from .api import routes
from .config import Settings
from .engine import TERMINAL, Job, JobResult, JobStatus, NotAccepting, QueueFull
from .models.base import Capabilities, GenerationParams, ModelLimits

log = logging.getLogger("stable_audio_service.ray")

APP_NAME = "stable-audio"
MODEL_DEPLOYMENT = "StableAudioModel"
INGRESS_DEPLOYMENT = "StableAudioIngress"
RETRY_AFTER = {"Retry-After": routes.RETRY_AFTER_S}
STATS_PERIOD_S = 1.0  # how often the ingress refreshes the replicas' figures (/ready, /metrics gauges)
CALL_TIMEOUT_S = 30.0  # a short call to a replica (reserve, get, cancel, stats)
ARRIVAL_WAIT_S = 5.0  # how long a replica waits for a reserved job's submission before it says "no such job"
RESERVATION_TTL_S = 60.0  # a reserved slot never submitted (invalid request, ingress died) is freed after this
STOP_MARGIN_S = 30.0  # beyond the replicas' grace period, how long SIGTERM waits for Serve and Ray to stop
TERMINAL_EVENTS = ("done", "failed", "cancelled")
SUBMITTING_PATHS = ("/predict", "/jobs")  # the routes that submit work (and so need a reserved queue slot)
JOB_ID = re.compile(r"^([A-Za-z0-9_-]{1,64})\.([0-9a-f]{32})$")
REPLICA_GONE = "the model replica running this job stopped; retry"
# Environment that travels with the replicas to other machines: telemetry, the Hugging Face cache and token,
# service settings, torch switches. Never the visible-devices variables: Ray assigns each replica its GPU.
FORWARDED_ENV = ("OTEL_", "HF_", "STABLE_AUDIO_", "TORCH_", "PYTORCH_")


def owner_of(job_id: Any) -> str | None:
    """The replica id a job id (or a bare replica id, for pinned calls) names; None when it names none."""
    if not isinstance(job_id, str):
        return None
    m = JOB_ID.match(job_id)
    if m:
        return m.group(1)
    return job_id if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", job_id) else None


# -- options ------------------------------------------------------------------------------------
@dataclass
class RayOptions:
    """Per-replica resources and scaling. `replicas` is fixed unless `max_replicas` is set (autoscaling on
    ongoing requests per replica: each queued or running generation holds one open call)."""

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None  # autoscaling target; default: the engine's max batch size
    num_gpus: float | None = None  # per model replica, fractions allowed; None: 1 when the cluster has GPUs
    num_cpus: float | None = None  # per model replica; None: `serve --ray` fits it (`fit_resources`), else 1
    ingress_replicas: int = 1
    ingress_num_cpus: float | None = None  # None: `serve --ray` fits it (`ingress_share`), else 0.5
    max_ongoing_requests: int = 1000  # Serve's per-replica cap; our own queue (429) does the real admission
    health_check_period_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_replicas is None and self.replicas < 1:
            raise ValueError("replicas must be at least 1")
        if self.max_replicas is not None:
            low = 1 if self.min_replicas is None else self.min_replicas
            if low < 1 or self.max_replicas < low:
                # no scale-to-zero: with no replica the ingress answers 503 and no request would wake one
                raise ValueError("autoscaling needs 1 <= min_replicas <= max_replicas")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ValueError("num_gpus must be >= 0")
        if self.num_cpus is not None and self.num_cpus < 0:
            raise ValueError("num_cpus must be >= 0")
        if self.ingress_num_cpus is not None and self.ingress_num_cpus < 0:
            raise ValueError("ingress_num_cpus must be >= 0")
        if self.target_ongoing_requests is not None and self.target_ongoing_requests <= 0:
            raise ValueError("target_ongoing_requests must be > 0")

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    @classmethod
    def parse_replicas(cls, text: str) -> dict[str, int]:
        """`N` (fixed) or `MIN:MAX` (autoscaling) from the command line."""
        try:
            if ":" in text:
                low, high = (int(x) for x in text.split(":", 1))
                return {"replicas": low, "min_replicas": low, "max_replicas": high}
            return {"replicas": int(text)}
        except ValueError:
            raise ValueError(f"--replicas takes N or MIN:MAX, not {text!r}") from None


# -- fitting the deployments to the cluster ------------------------------------------------------------
RESOURCE_UNIT = 10_000  # Ray counts resources in 1/10000ths and truncates finer requests
CLUSTER_REPLICA_CPUS = 1.0  # default per model replica on an existing cluster (and for `serve deploy`)
INGRESS_MAX_CPUS = 0.5


class DoesNotFit(ValueError):
    """The deployments ask for more CPUs or GPUs than the Ray cluster has: Serve would wait to schedule them
    forever (logging only "taken more than 30s to be scheduled"), so `serve --ray` refuses at once instead."""


@dataclass(frozen=True)
class ResourcePlan:
    """What each model replica and each ingress replica asks Ray for, and what the cluster has."""

    replicas: int
    replica_cpus: float
    replica_gpus: float
    ingress_replicas: int
    ingress_cpus: float
    cluster_cpus: float
    cluster_gpus: float

    @property
    def cpus(self) -> float:
        return _from_units(
            self.replicas * _units(self.replica_cpus) + self.ingress_replicas * _units(self.ingress_cpus)
        )

    @property
    def gpus(self) -> float:
        return _from_units(self.replicas * _units(self.replica_gpus))


def _units(x: float) -> int:
    """A quantity as Ray counts it (truncated to 1/10000), so that the sums below are exact."""
    return int(x * RESOURCE_UNIT + 1e-6)


def _from_units(n: int) -> float:
    return n / RESOURCE_UNIT


def _n(x: float, unit: str) -> str:
    return f"{x:g} {unit}{'s' if x > 1 or x == 0 else ''}"


def ingress_share(cluster_cpus: float) -> float:
    """The ingress's default CPUs: a tenth of the cluster, at most 0.5. It only relays requests and answers
    between HTTP and the replicas (the model's work runs in the replicas), and Ray's CPU figures reserve
    capacity for scheduling rather than cap a process, so a small share costs it nothing; a tenth keeps 90 %
    of a 2-core machine for the replicas, and 0.5 is what it always asked for where that is less."""
    return _from_units(min(_units(INGRESS_MAX_CPUS), _units(0.1 * cluster_cpus)))


def fit_resources(
    cluster_cpus: float,
    cluster_gpus: float,
    replicas: int,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    ingress_cpus: float | None = None,
    ingress_replicas: int = 1,
    max_default_cpus: float | None = None,
) -> ResourcePlan:
    """Per-replica CPUs and GPUs for `replicas` model replicas plus the ingress, within what the cluster has;
    raises `DoesNotFit` (naming the numbers and the flag to change) when they cannot all be scheduled.

    Explicit `num_cpus` / `num_gpus` / `ingress_cpus` are taken as given. By default the ingress gets
    `ingress_share` and the model replicas share the remaining CPUs equally (at most `max_default_cpus`
    each: on a cluster of many machines the total says nothing about what one machine can hold), and each
    replica gets 1 GPU when the cluster has any. Pure: no Ray, so it can be tested anywhere."""
    if replicas < 1 or ingress_replicas < 1:
        raise ValueError("replicas and ingress_replicas must be at least 1")
    ingress = ingress_share(cluster_cpus) if ingress_cpus is None else ingress_cpus
    have_cpu, ingress_u = _units(cluster_cpus), _units(ingress)
    left_u = have_cpu - ingress_replicas * ingress_u
    if num_cpus is not None and ingress_cpus is None:
        # An explicit --num-cpus comes before the ingress's default share (`--replicas 2 --num-cpus 1` on 2
        # cores): the ingress takes what is left, down to 0, and Ray runs it all the same. A refusal still
        # quotes its usual share, which is what the suggested --num-cpus leaves it.
        spare_u = have_cpu - replicas * _units(num_cpus)
        if spare_u >= 0:
            ingress = _from_units(min(ingress_u, spare_u // ingress_replicas))
    if num_cpus is None:
        share_u = left_u // replicas if left_u > 0 else 0
        if max_default_cpus is not None:
            share_u = min(share_u, _units(max_default_cpus))
        cpus = _from_units(share_u)
        if share_u <= 0 and have_cpu > 0:  # a zero share would fit on paper, and give the model no CPU at all
            raise DoesNotFit(
                f"{replicas} model replicas cannot share {_n(cluster_cpus, 'CPU')} of the Ray cluster"
                f" (after {_ingress_text(ingress_replicas, ingress)}): use fewer --replicas"
            )
    else:
        cpus = num_cpus
    gpus = (1.0 if cluster_gpus > 0 else 0.0) if num_gpus is None else num_gpus
    plan = ResourcePlan(replicas, cpus, gpus, ingress_replicas, ingress, cluster_cpus, cluster_gpus)
    if _units(plan.cpus) > have_cpu:
        asked = _from_units(replicas * _units(cpus) + ingress_replicas * ingress_u)
        most = _from_units(left_u // replicas) if left_u > 0 else 0.0
        hint = f", or --num-cpus to {most:g} or less for {replicas} replicas" if most > 0 else ""
        raise DoesNotFit(
            f"{replicas} model replicas × {_n(cpus, 'CPU')} + {_ingress_text(ingress_replicas, _from_units(ingress_u))}"
            f" = {_n(asked, 'CPU')}, but the Ray cluster has {_n(cluster_cpus, 'CPU')}:"
            f" lower --replicas{hint}"
        )
    if _units(plan.gpus) > _units(cluster_gpus):
        most = _from_units(_units(cluster_gpus) // replicas)
        most = float(int(most)) if most > 1 else most  # Ray takes whole GPUs above one
        hint = (
            f", or --num-gpus to {most:g} or less for {replicas} replicas (replicas that share a GPU each load"
            " their own copy of the model)"
            if most > 0
            else ", or --num-gpus 0 to run on CPUs"
        )
        raise DoesNotFit(
            f"{replicas} model replicas × {_n(gpus, 'GPU')} = {_n(plan.gpus, 'GPU')}, but the Ray cluster has"
            f" {_n(cluster_gpus, 'GPU')}: lower --replicas{hint}"
        )
    return plan


def _ingress_text(ingress_replicas: int, ingress_cpus: float) -> str:
    if ingress_replicas == 1:
        return f"the ingress's {_n(ingress_cpus, 'CPU')}"
    return f"{ingress_replicas} ingress replicas × {_n(ingress_cpus, 'CPU')}"


def plan_resources(options: RayOptions, local: bool) -> ResourcePlan:
    """`fit_resources` for `options` on the cluster Ray is connected to. On a local instance that `serve --ray`
    started, the machine is all there is: the default replicas share its CPUs and, when autoscaling, the
    largest size must fit. On an existing cluster each replica asks for 1 CPU by default, the smallest size
    must fit, and what only fits when the cluster grows (or other work frees resources) is logged, not
    refused: an autoscaler may add machines."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))
    low = options.replicas if not options.autoscaling else (options.min_replicas or 1)
    high = options.max_replicas if options.max_replicas is not None else options.replicas
    plan = fit_resources(
        cpus,
        gpus,
        high if local else low,
        num_cpus=options.num_cpus,
        num_gpus=options.num_gpus,
        ingress_cpus=options.ingress_num_cpus,
        ingress_replicas=options.ingress_replicas,
        max_default_cpus=None if local else CLUSTER_REPLICA_CPUS,
    )
    if local:
        return plan
    if high != plan.replicas:
        try:
            fit_resources(
                cpus,
                gpus,
                high,
                num_cpus=plan.replica_cpus,
                num_gpus=plan.replica_gpus,
                ingress_cpus=plan.ingress_cpus,
                ingress_replicas=plan.ingress_replicas,
            )
        except DoesNotFit as exc:
            log.warning("autoscaling up to %d replicas waits for the cluster to grow: %s", high, exc)
    free = ray.available_resources()
    if plan.cpus > float(free.get("CPU", 0.0)) + 1e-9 or plan.gpus > float(free.get("GPU", 0.0)) + 1e-9:
        log.warning(
            "the Ray cluster has %s and %s free of %s and %s; the replicas (%s, %s) wait for other work to free them",
            _n(float(free.get("CPU", 0.0)), "CPU"),
            _n(float(free.get("GPU", 0.0)), "GPU"),
            _n(cpus, "CPU"),
            _n(gpus, "GPU"),
            _n(plan.cpus, "CPU"),
            _n(plan.gpus, "GPU"),
        )
    return plan


# -- what the ingress knows about the model -------------------------------------------------------
@dataclass
class ModelView:
    """The loaded model as the request path sees it (defaults, limits, capabilities), without weights, for
    the ingress: `service.resolve`, `/models` and the OpenAPI schema read only these."""

    name: str
    family: str
    sample_rate: int
    channels: int
    device: str
    dtype: str
    limits: ModelLimits
    capabilities: Capabilities
    description: dict[str, Any]
    max_upload_samples: int

    def describe(self) -> dict[str, Any]:
        return dict(self.description)

    def upload_samples(self, duration: float) -> int:
        """An upper bound (what the longest clip can use): the ingress decodes uploads, the replica trims them to
        exactly what this clip uses before it submits."""
        return self.max_upload_samples

    @classmethod
    def of(cls, model: Any) -> ModelView:
        lim = model.limits.duration
        usable = max(model.upload_samples(d) for d in {lim.minimum, lim.default, lim.maximum})
        return cls(
            name=model.name,
            family=model.family,
            sample_rate=model.sample_rate,
            channels=model.channels,
            device=str(model.device),
            dtype=str(model.dtype),
            limits=model.limits,
            capabilities=model.capabilities,
            description=model.describe(),
            max_upload_samples=int(usable),
        )


class RemoteBytes:
    """Stands in for audio that stays on its replica: `GET /jobs/{id}` shows only its size."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def job_from_snapshot(snap: dict[str, Any]) -> Job:
    """A replica's view of a job as the routes' `Job` (what `_job_view`, `_raise_for`, `audio_response` read)."""
    job = Job(
        id=snap["id"],
        params=snap["params"],
        format=snap["format"],
        client_job_id=snap["client_job_id"],
        context=snap["context"],
    )
    apply_snapshot(job, snap)
    return job


def apply_snapshot(job: Job, snap: dict[str, Any]) -> None:
    for name in ("step", "total_steps", "batch_size", "created", "started", "finished", "error", "error_status"):
        setattr(job, name, snap[name])
    job.timings = dict(snap["timings"])
    job.params.seed = snap["params"].seed
    res = snap["result"]
    if res is not None:
        data = res["data"] if res["data"] is not None else RemoteBytes(res["size"])
        job.result = JobResult(data, res["format"], res["sample_rate"], res["channels"], res["num_samples"])
    job.remote_position = snap["position"]  # type: ignore[attr-defined]
    job.status = JobStatus(snap["status"])  # last: a waiter that sees a terminal status finds everything set


# -- the model replica ------------------------------------------------------------------------------
@dataclass
class _Reservation:
    deadline: float
    arrived: asyncio.Event


class StableAudioModel:
    """One model replica: loads the model and runs one Engine, exactly as the single process does. The calls
    are coroutines: they run on the replica's event loop, where the engine's subscriber queues and the
    reservations' events live."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from .api.app import ServiceState
        from .models.loading import load_model

        telemetry.setup()
        self.settings = Settings(**settings)
        context = serve.get_replica_context()
        self.tag: str = context.replica_id.unique_id
        self.actor_name: str = context.replica_id.to_full_id_str()
        self.state = ServiceState(self.settings, load_model)
        self.state.load()  # Serve routes nothing here until the constructor returns
        if self.state.status != "ok" or self.state.engine is None:
            raise RuntimeError(self.state.reason or "the model did not load")
        self.engine = self.state.engine
        self.model = self.state.model
        self._ids: dict[str, str] = {}  # job id -> the engine's own id
        self._reserved: dict[str, _Reservation] = {}
        self._submitted = 0
        log.info("model replica %s ready (%s)", self.tag, self.model.name)

    # -- lifecycle (called by Serve) -------------------------------------------------------------
    def check_health(self) -> None:
        """A replica whose engine died is replaced by Serve (the single process exits for systemd instead)."""
        if not getattr(self.engine, "healthy", True):
            raise RuntimeError(getattr(self.engine, "fatal_reason", None) or "the engine stopped")

    def __del__(self) -> None:
        state = getattr(self, "state", None)
        if state is not None:
            state.shutdown()  # drain: queued and running work gets shutdown_grace_s, then 503

    # -- calls from the ingress --------------------------------------------------------------------
    async def info(self) -> ModelView:
        return ModelView.of(self.model)

    async def reserve(self, pin: str | None = None) -> dict[str, Any]:
        """Hold a queue slot for a submission that follows: {"id", "position"}, or {"status", "detail"}."""
        self._expire_reservations()
        engine = self.engine
        if not engine.accepting:
            reason = getattr(engine, "fatal_reason", None) or "the replica is shutting down"
            return {"replica": self.tag, "status": 503, "detail": reason}
        waiting = engine.queue_depth() + len(self._reserved)
        if waiting >= engine.queue_size:
            return {"replica": self.tag, "status": 429, "detail": f"queue full ({engine.queue_size} waiting)"}
        job_id = f"{self.tag}.{uuid.uuid4().hex}"
        self._reserved[job_id] = _Reservation(time.monotonic() + RESERVATION_TTL_S, asyncio.Event())
        return {"replica": self.tag, "id": job_id, "position": waiting + 1}

    async def release(self, job_id: str) -> None:
        """A reservation that will not be used (the request failed validation)."""
        self._drop_reservation(job_id)

    def _drop_reservation(self, job_id: str) -> None:
        res = self._reserved.pop(job_id, None)
        if res is not None:
            res.arrived.set()

    async def run(
        self,
        job_id: str,
        params: GenerationParams,
        fmt: str,
        client_job_id: str | None,
        carrier: dict[str, str],
        keep: bool,
        progress: bool,
        with_result: bool,
    ) -> AsyncIterator[dict[str, Any]]:
        """Submit a reserved job and stream it: `accepted` (position, seed), then `queued`/`step` events when
        `progress`, then the terminal event with the job's snapshot (and its audio when `with_result`).
        A caller that goes away cancels a job it did not ask to `keep` (`/predict`)."""
        reservation = self._reserved.pop(job_id, None)
        try:
            if owner_of(job_id) != self.tag:
                yield {"type": "rejected", "status": 503, "detail": "the job was reserved on another replica"}
                return
            self._trim_uploads(params)
            try:
                job = self.engine.submit(
                    params, format=fmt, client_job_id=client_job_id, context=self._context(carrier), keep=keep
                )
            except QueueFull as exc:
                yield {"type": "rejected", "status": 429, "detail": str(exc)}
                return
            except NotAccepting as exc:
                yield {"type": "rejected", "status": 503, "detail": str(exc)}
                return
            self._ids[job_id] = job.id
            self._submitted += 1
            if self._submitted % 256 == 0:
                self._forget_ended()
        finally:
            if reservation is not None:
                reservation.arrived.set()
        queue = self.engine.subscribe(job)
        try:
            yield {"type": "accepted", "position": self.engine.position(job), "seed": job.params.seed}
            while True:
                event = await queue.get()
                if event["type"] in TERMINAL_EVENTS:
                    yield {**event, "job": self._snapshot(job_id, job, with_result)}
                    return
                if progress:
                    yield event
        except (asyncio.CancelledError, GeneratorExit):
            if not keep and job.status not in TERMINAL:
                self.engine.cancel(job.id)
            raise
        finally:
            self.engine.unsubscribe(job, queue)

    async def get(self, job_id: str, with_result: bool = False) -> dict[str, Any] | None:
        job = await self._lookup(job_id)
        return None if job is None else self._snapshot(job_id, job, with_result)

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Like `DELETE /jobs/{id}` in one process: a finished or failed job is left alone (the route says 409)."""
        job = await self._lookup(job_id)
        if job is None:
            return None
        if job.status not in (JobStatus.done, JobStatus.failed):
            self.engine.cancel(job.id)
        return self._snapshot(job_id, job, False)

    async def events(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """The engine's events for one job (snapshot first), until its terminal event."""
        job = await self._lookup(job_id)
        if job is None:
            yield {"type": "failed", "error": "no such job (expired, or its replica stopped)", "status": 404}
            return
        queue = self.engine.subscribe(job)
        try:
            while True:
                event = await queue.get()
                yield event
                if event["type"] in TERMINAL_EVENTS:
                    return
        finally:
            self.engine.unsubscribe(job, queue)

    async def stats(self, pin: str | None = None, metrics: bool = False) -> dict[str, Any]:
        """This replica's figures for `/ready` and `/metrics` (the Prometheus text only when asked)."""
        self._expire_reservations()
        engine = self.engine
        out = {
            "replica": self.tag,
            "actor": self.actor_name,
            "pid": os.getpid(),
            "accepting": engine.accepting,
            "healthy": getattr(engine, "healthy", True),
            "fatal_reason": getattr(engine, "fatal_reason", None),
            "queue_depth": engine.queue_depth(),
            "reserved": len(self._reserved),
            "running": engine.running_count(),
            "queue_size": engine.queue_size,
            "max_batch_size": engine.max_batch_size,
            "engine": dict(getattr(engine, "stats", {})),
        }
        if metrics:
            from prometheus_client import generate_latest

            out["metrics"] = generate_latest(telemetry.prometheus_registry()).decode()
        return out

    # -- helpers -----------------------------------------------------------------------------------
    async def _lookup(self, job_id: str) -> Job | None:
        if owner_of(job_id) != self.tag or not JOB_ID.match(job_id):
            return None
        reservation = self._reserved.get(job_id)
        if reservation is not None:  # the submission is on its way (POST /jobs answered before it arrived)
            try:
                await asyncio.wait_for(reservation.arrived.wait(), ARRIVAL_WAIT_S)
            except TimeoutError:
                return None
        internal = self._ids.get(job_id)
        job = self.engine.get(internal) if internal is not None else None
        if job is None:
            self._ids.pop(job_id, None)
        return job

    def _snapshot(self, job_id: str, job: Job, with_result: bool) -> dict[str, Any]:
        res = job.result
        ctx = job.context if isinstance(job.context, dict) else {}
        return {
            "id": job_id,
            "status": job.status.value,
            "step": job.step,
            "total_steps": job.total_steps,
            "batch_size": job.batch_size,
            "created": job.created,
            "started": job.started,
            "finished": job.finished,
            "error": job.error,
            "error_status": job.error_status,
            "timings": dict(job.timings),
            "position": self.engine.position(job),
            "format": job.format,
            "client_job_id": job.client_job_id,
            "context": {"trace_id": ctx.get("trace_id"), "span_id": ctx.get("span_id")},
            "params": dataclasses.replace(job.params, init_audio=None, inpaint_audio=None),
            "result": None
            if res is None
            else {
                "format": res.format,
                "sample_rate": res.sample_rate,
                "channels": res.channels,
                "num_samples": res.num_samples,
                "size": len(res.data),
                "data": bytes(res.data) if with_result else None,
            },
        }

    @staticmethod
    def _context(carrier: dict[str, str]) -> dict[str, Any]:
        """The ingress request span, from its `traceparent`: the engine's spans become its children."""
        from opentelemetry import propagate, trace

        ctx = propagate.extract(carrier)
        span = trace.get_current_span(ctx).get_span_context()
        if not span.is_valid:
            return {"trace_id": None, "span_id": None, "otel": None}
        return {"trace_id": format(span.trace_id, "032x"), "span_id": format(span.span_id, "016x"), "otel": ctx}

    def _trim_uploads(self, params: GenerationParams) -> None:
        """What one process's request path does: keep only the part of an upload this clip can use."""
        usable = self.model.upload_samples(params.duration)
        for name in ("init_audio", "inpaint_audio"):
            audio = getattr(params, name)
            if audio is not None and audio.shape[-1] > usable:
                setattr(params, name, audio[..., :usable].copy())

    def _expire_reservations(self) -> None:
        now = time.monotonic()
        for job_id in [k for k, r in self._reserved.items() if r.deadline <= now]:
            self._drop_reservation(job_id)

    def _forget_ended(self) -> None:
        for job_id, internal in list(self._ids.items()):
            if self.engine.get(internal) is None:
                self._ids.pop(job_id, None)


# -- routing: calls about a job go to its owner -------------------------------------------------------
class JobOwnerRouter(FIFOMixin, RequestRouter):
    """Serve request router: a call whose first argument is a job id (or a replica id) goes to that replica;
    anything else, or an owner that is gone, gets Serve's power-of-two choice on ongoing requests (the
    replica then answers for itself: a job it does not own is "no such job")."""

    async def choose_replicas(self, candidate_replicas: list, pending_request: Any = None) -> list[list]:
        args = getattr(pending_request, "args", None) or []
        owner = owner_of(args[0]) if args else None
        if owner is not None:
            for replica in candidate_replicas:
                if replica.replica_id.unique_id == owner:
                    return [[replica]]
        if len(candidate_replicas) <= 2:
            return [list(candidate_replicas)]
        return [random.sample(list(candidate_replicas), 2)]


# -- the ingress side ---------------------------------------------------------------------------------
class Rejected(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _Run:
    """A job submitted through this ingress: the task streaming it from its replica, and local listeners."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.subscribers: list[asyncio.Queue] = []
        self.task: asyncio.Task | None = None

    def publish(self, event: dict[str, Any]) -> None:
        for queue in list(self.subscribers):
            queue.put_nowait(event)


class ClusterEngine:
    """The engine as the ingress's routes see it (`app.state.service.engine`): cluster-wide figures for
    `/ready`, `/health`, `/models` and `/metrics`, and the calls to the replicas."""

    def __init__(self, handle: Any, settings: Settings) -> None:
        self.handle = handle
        self.settings = settings
        self.model: ModelView | None = None
        self.max_batch_size = settings.max_batch_size
        self.queue_size = settings.queue_size
        self._stats: dict[str, dict[str, Any]] = {}
        self._stats_lock = threading.Lock()
        self._polled = False
        self._stopping = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._runs: dict[str, _Run] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- load and lifecycle (ServiceState calls these, in its loader thread) -----------------------------
    def connect(self, settings: Settings) -> tuple[ModelView, None]:
        """The loader: wait for a model replica to answer, then describe its model."""
        while True:
            try:
                self.model = self.handle.info.remote().result(timeout_s=60)
                break
            except TimeoutError:
                log.info("waiting for a model replica to load the model")
        self.refresh()
        return self.model, None

    def engine_for(self, model: ModelView, settings: Settings) -> ClusterEngine:
        return self

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="replica-stats", daemon=True)
        self._thread.start()

    def shutdown(self, grace_s: float = 30.0) -> None:
        """The ingress stops taking work; the replicas drain themselves when Serve stops them."""
        self._stopping = True
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(STATS_PERIOD_S):
            try:
                self.refresh()
            except Exception:  # the poller must outlive any one bad round
                log.debug("replica stats failed", exc_info=True)

    def refresh(self, metrics: bool = False, timeout_s: float = 5.0) -> dict[str, dict[str, Any]]:
        """Ask every running replica for its figures (from a thread: never on the event loop)."""
        results = self.handle.broadcast("stats", None, metrics).results(timeout_s=timeout_s, return_exceptions=True)
        live = {r["replica"]: r for r in results if isinstance(r, dict)}
        with self._stats_lock:
            self._stats = live
            self._polled = True
        return live

    # -- figures ----------------------------------------------------------------------------------------
    def replica_stats(self) -> dict[str, dict[str, Any]]:
        with self._stats_lock:
            return dict(self._stats)

    @property
    def replicas(self) -> int:
        """Model replicas that answered the last poll and can generate."""
        return sum(1 for s in self.replica_stats().values() if s["healthy"])

    @property
    def healthy(self) -> bool:
        return not self._polled or self.replicas > 0

    @property
    def fatal_reason(self) -> str | None:
        return None if self.healthy else "no model replica is running (Serve is starting new ones)"

    @property
    def accepting(self) -> bool:
        return not self._stopping and self.healthy

    def queue_depth(self) -> int:
        return sum(s["queue_depth"] for s in self.replica_stats().values())

    def running_count(self) -> int:
        return sum(s["running"] for s in self.replica_stats().values())

    # -- calls to replicas (on the ingress's event loop) -----------------------------------------------
    async def call(self, method: str, *args: Any, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        return await asyncio.wait_for(getattr(self.handle, method).remote(*args), timeout_s)

    async def reserve(self, exclude: set[str] | None = None) -> dict[str, Any]:
        """A queue slot somewhere: Serve's choice first, then every other replica, emptiest first."""
        tried = set(exclude or ())
        answers: list[dict[str, Any]] = []
        first = True
        while True:
            if first:
                target = None
            else:
                free = sorted(
                    (s["queue_size"] - s["queue_depth"] - s["reserved"], tag)
                    for tag, s in self.replica_stats().items()
                    if tag not in tried and s["accepting"]
                )
                if not free:
                    break
                target = free[-1][1]
            first = False
            try:
                answer = await self.call("reserve", target)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a replica that died or hangs: try the others
                log.warning("reserve on %s failed: %s", target or "a replica", type(exc).__name__)
                if target is not None:
                    tried.add(target)
                continue
            if "id" in answer:
                return answer
            answers.append(answer)
            tried.update({answer["replica"], target or answer["replica"]})
        if any(a["status"] == 429 for a in answers):
            size = self.queue_size
            raise Rejected(429, f"queue full on every model replica ({len(answers)} x {size} waiting)")
        detail = answers[-1]["detail"] if answers else "no model replica is available"
        raise Rejected(503, detail)

    def release_later(self, job_id: str) -> None:
        self._spawn(self._quietly("release", job_id))

    def cancel_later(self, job_id: str) -> None:
        self._spawn(self._quietly("cancel", job_id))

    async def _quietly(self, method: str, job_id: str) -> None:
        """Fire and forget: a reservation expires by itself, and a job whose replica is gone needs no cancel."""
        try:
            await self.call(method, job_id)
        except Exception:
            log.debug("%s of %s failed", method, job_id, exc_info=True)

    async def fetch(self, method: str, job_id: str, *args: Any) -> Job | None:
        """A job's snapshot from its owner, as a `Job`; None when there is no such job (any more)."""
        if owner_of(job_id) is None or not JOB_ID.match(job_id):
            return None  # not an id this service hands out: no call at all
        try:
            snap = await self.call(method, job_id, *args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _replica_died(exc):
                return None  # its replica is gone, and the job with it
            log.warning("%s %s failed: %s: %s", method, job_id, type(exc).__name__, exc)
            raise HTTPException(503, detail="the model replica did not answer; retry", headers=RETRY_AFTER) from None
        return job_from_snapshot(snap) if snap is not None else None

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- submitted jobs ---------------------------------------------------------------------------------
    def start_run(self, job: Job, params: GenerationParams, carrier: dict[str, str], predict: bool) -> _Run:
        run = _Run(job)
        self._runs[job.id] = run
        run.task = self._spawn(self._drive(run, params, carrier, predict))
        return run

    async def _drive(self, run: _Run, params: GenerationParams, carrier: dict[str, str], predict: bool) -> None:
        """Stream a submitted job from its replica into the local `Job`; a replica that dies fails it with 503,
        after one retry elsewhere for `/predict` (its client has received nothing; the seed is kept)."""
        job = run.job
        retried = False
        try:
            while True:
                try:
                    outcome = await self._stream_run(run, params, carrier, predict)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("job %s: replica stream broke: %s: %s", job.id, type(exc).__name__, exc)
                    outcome = "broken"
                if outcome == "ended":
                    return
                if predict and not retried and outcome == "broken" and not self._stopping:
                    retried = True
                    try:
                        answer = await self.reserve(exclude={owner_of(job.id) or ""})
                    except Rejected as exc:
                        self._fail(run, exc.detail, 503)
                        return
                    self._runs.pop(job.id, None)
                    job.id = answer["id"]
                    self._runs[job.id] = run
                    log.info("job retried on replica %s", owner_of(job.id))
                    continue
                self._fail(run, REPLICA_GONE, 503)
                return
        finally:
            self._runs.pop(job.id, None)

    async def _stream_run(self, run: _Run, params: GenerationParams, carrier: dict[str, str], predict: bool) -> str:
        job = run.job
        stream = self.handle.options(stream=True).run.remote(
            job.id, params, job.format, job.client_job_id, carrier, not predict, False, predict
        )
        try:
            async for event in stream:
                kind = event["type"]
                if kind == "rejected":
                    self._fail(run, event["detail"], 503)
                    return "ended"
                if kind == "accepted":
                    job.params.seed = event["seed"]
                    job.remote_position = event["position"]  # type: ignore[attr-defined]
                    continue
                if kind in TERMINAL_EVENTS:
                    apply_snapshot(job, event.pop("job"))
                    run.publish(event)
                    return "ended"
                if kind == "step":
                    job.status, job.step, job.total_steps = JobStatus.running, event["step"], event["total"]
                run.publish(event)
        except asyncio.CancelledError:
            stream.cancel()
            raise
        return "broken"  # the stream ended without a terminal event

    def _fail(self, run: _Run, detail: str, status: int) -> None:
        job = run.job
        if job.status in TERMINAL:
            return
        job.error, job.error_status, job.finished = detail, status, time.time()
        job.status = JobStatus.failed
        run.publish({"type": "failed", "error": detail, "status": status})

    def local_run(self, job: Job) -> _Run | None:
        run = self._runs.get(job.id)
        return run if run is not None and run.job is job else None

    async def pump(self, job: Job, queue: asyncio.Queue) -> None:
        """`GET /jobs/{id}/events`: the owner's events into a local queue; a replica that dies ends it `failed`."""
        try:
            stream = self.handle.options(stream=True).events.remote(job.id)
            try:
                async for event in stream:
                    if event["type"] in TERMINAL_EVENTS:
                        job.status = JobStatus(event["type"])
                    queue.put_nowait(event)
                    if event["type"] in TERMINAL_EVENTS:
                        return
            except asyncio.CancelledError:
                stream.cancel()
                raise
            raise ConnectionError("the event stream ended early")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("events of %s broke: %s: %s", job.id, type(exc).__name__, exc)
            job.status = JobStatus.failed
            queue.put_nowait({"type": "failed", "error": REPLICA_GONE, "status": 503})

    # -- FastAPI dependencies (override routes.get_engine / routes.get_reading_engine) ---------------------
    async def accepting_dependency(self, request: Request) -> AsyncIterator[RequestEngine]:
        """`get_engine` for the ingress: the same 503s as one process, then, for a submission whose body is
        valid, a queue slot on a replica (429/503 with Retry-After when the cluster has none)."""
        routes.get_engine(request)
        path = request.url.path.rstrip("/")
        view = RequestEngine(self, predict=path == "/predict")
        if request.method == "POST" and path in SUBMITTING_PATHS and await _valid_body(request):
            try:
                view.reservation = await self.reserve()
            except Rejected as exc:
                telemetry.record_rejected("queue_full" if exc.status == 429 else "not_accepting")
                raise HTTPException(exc.status, detail=exc.detail, headers=RETRY_AFTER) from None
        try:
            yield view
        finally:
            if view.reservation is not None and not view.submitted:
                self.release_later(view.reservation["id"])

    async def reading_dependency(self, request: Request) -> RequestEngine:
        """`get_reading_engine` for the ingress: the job in the path is fetched from its owner up front (DELETE
        cancels it there), so the synchronous routes read it without a network call."""
        routes.get_reading_engine(request)
        view = RequestEngine(self, predict=False)
        job_id = request.path_params.get("job_id")
        if job_id is not None:
            if request.method == "DELETE":
                view.prefetched = await self.fetch("cancel", job_id)
            else:
                view.prefetched = await self.fetch("get", job_id, request.url.path.endswith("/audio"))
        return view


async def _valid_body(request: Request) -> bool:
    """Reserve only for a body the route will accept: an invalid one gets its 422 before any 429, as in one
    process (FastAPI has already read and parsed the JSON; this reads its cache)."""
    from pydantic import ValidationError

    from .api.schemas import StableAudioRequest

    try:
        StableAudioRequest.model_validate(await request.json())
    except (ValidationError, ValueError):
        return False
    return True


def _replica_died(exc: BaseException) -> bool:
    return isinstance(exc, ActorDiedError)


class RequestEngine:
    """What one request's route sees as the engine: submissions go to the reserved replica, reads answer from
    the prefetched job, events stream from the owner."""

    def __init__(self, cluster: ClusterEngine, predict: bool) -> None:
        self.cluster = cluster
        self.predict = predict
        self.reservation: dict[str, Any] | None = None
        self.submitted = False
        self.prefetched: Job | None = None
        self._pumps: dict[int, asyncio.Task] = {}

    # figures and model, as the cluster has them
    @property
    def model(self) -> ModelView | None:
        return self.cluster.model

    @property
    def max_batch_size(self) -> int:
        return self.cluster.max_batch_size

    @property
    def queue_size(self) -> int:
        return self.cluster.queue_size

    @property
    def accepting(self) -> bool:
        return self.cluster.accepting

    def queue_depth(self) -> int:
        return self.cluster.queue_depth()

    def running_count(self) -> int:
        return self.cluster.running_count()

    # jobs
    def submit(
        self,
        params: GenerationParams,
        *,
        format: str = "wav",
        client_job_id: str | None = None,
        context: Any = None,
        keep: bool = True,
    ) -> Job:
        if self.reservation is None or self.submitted:
            raise NotAccepting("no queue slot was reserved for this request")
        from opentelemetry import propagate

        ctx = context if isinstance(context, dict) else {}
        carrier: dict[str, str] = {}
        if ctx.get("otel") is not None:
            propagate.inject(carrier, context=ctx["otel"])
        job = Job(id=self.reservation["id"], params=params, format=format, client_job_id=client_job_id, context=ctx)
        job.remote_position = self.reservation["position"]  # type: ignore[attr-defined]
        self.submitted = True
        predict = self.predict or not keep
        self.cluster.start_run(job, params, carrier, predict)
        return job

    def get(self, job_id: str) -> Job | None:
        job = self.prefetched
        return job if job is not None and job.id == job_id else None

    def position(self, job: Job) -> int | None:
        return getattr(job, "remote_position", None) if job.status == JobStatus.queued else None

    def release(self, job: Job) -> None:
        """The replica forgets `/predict` jobs by itself (they are submitted with keep=False)."""

    def cancel(self, job_id: str) -> Job | None:
        """DELETE was done by the dependency; `/predict`'s disconnect cancels on the owner (without waiting)."""
        job = self.get(job_id)
        if job is not None:
            return job
        for run in list(self.cluster._runs.values()):
            if run.job.id == job_id and run.task is not None:
                run.task.cancel()  # closes the stream: the replica cancels a job it was not asked to keep
        self.cluster.cancel_later(job_id)
        return None

    def subscribe(self, job: Job) -> asyncio.Queue:
        """Events of a job: a job submitted by this request from its local stream, any other from its owner."""
        queue: asyncio.Queue = asyncio.Queue()
        run = self.cluster.local_run(job)
        if run is not None:
            if job.status in TERMINAL:
                queue.put_nowait({"type": job.status.value})
            else:
                queue.put_nowait({"type": "queued", "position": self.position(job)})
                run.subscribers.append(queue)
            return queue
        self._pumps[id(queue)] = self.cluster._spawn(self.cluster.pump(job, queue))
        return queue

    def unsubscribe(self, job: Job, queue: asyncio.Queue) -> None:
        run = self.cluster.local_run(job)
        if run is not None:
            if queue in run.subscribers:
                run.subscribers.remove(queue)
            if self.predict and job.status not in TERMINAL and run.task is not None:
                run.task.cancel()  # /predict's caller left (Serve cancelled the request): cancel on the owner
                self.cluster.cancel_later(job.id)
        pump = self._pumps.pop(id(queue), None)
        if pump is not None:
            pump.cancel()


# -- /metrics for the whole cluster ---------------------------------------------------------------------
class ClusterRegistry:
    """A Prometheus registry (`collect()`) that merges the ingress's own figures with every replica's, each
    replica's series labelled `replica="<id>"`; the ingress's cluster totals of the queue gauges are left out
    (the per-replica series are exact and sum to them)."""

    INGRESS_ONLY_DROPPED = ("stable_audio_queue_depth", "stable_audio_running")

    def __init__(self, cluster: ClusterEngine) -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[Any]:
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
            stats = self.cluster.refresh(metrics=True)
        except Exception:  # a scrape must not fail because one round of stats did
            log.warning("replica metrics unavailable", exc_info=True)
            stats = {}
        for tag, s in sorted(stats.items()):
            for family in text_string_to_metric_families(s.get("metrics", "")):
                add(family, {"replica": tag})
        yield from merged.values()


# -- the ingress deployment -----------------------------------------------------------------------------
def create_cluster_app(handle: Any, settings: Settings) -> Any:
    """The single process's FastAPI app, with the cluster in place of the local engine."""
    from .api.app import create_app

    cluster = ClusterEngine(handle, settings)
    app = create_app(settings, loader=cluster.connect, engine_factory=cluster.engine_for)
    app.dependency_overrides[routes.get_engine] = cluster.accepting_dependency
    app.dependency_overrides[routes.get_reading_engine] = cluster.reading_dependency
    app.state.metrics_registry = ClusterRegistry(cluster)
    return app


class StableAudioIngress:
    """Serve ingress: builds the app inside the replica (the app holds threads and locks: it cannot be pickled)."""

    def __init__(self, model: Any, settings: dict[str, Any]) -> None:
        self.model_handle = model
        self.settings = Settings(**settings)

    def __serve_build_asgi_app__(self) -> Any:
        return create_cluster_app(self.model_handle, self.settings)


# -- building and running the application ---------------------------------------------------------------
def _forwarded_env() -> dict[str, str]:
    """Telemetry, Hugging Face and service settings travel to replicas on other machines with them."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


def build(settings: Settings, options: RayOptions) -> Any:
    """The Serve application: the ingress bound to the model deployment."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    config = settings.model_dump()
    replica_config = {**config, "api_key": None}  # only the ingress checks the token
    env = _forwarded_env()
    runtime_env = {"env_vars": env} if env else None
    num_gpus = options.num_gpus
    if num_gpus is None:
        import ray

        num_gpus = 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    num_cpus = CLUSTER_REPLICA_CPUS if options.num_cpus is None else options.num_cpus  # `start` fits them
    ingress_cpus = INGRESS_MAX_CPUS if options.ingress_num_cpus is None else options.ingress_num_cpus
    model_actor: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    ingress_actor: dict[str, Any] = {"num_cpus": ingress_cpus}
    if runtime_env:
        model_actor["runtime_env"] = ingress_actor["runtime_env"] = runtime_env
    grace = settings.shutdown_grace_s + 10
    scaling: dict[str, Any]
    if options.autoscaling:
        scaling = {
            "autoscaling_config": {
                "min_replicas": options.min_replicas if options.min_replicas is not None else 1,
                "max_replicas": options.max_replicas,
                "initial_replicas": max(1, options.min_replicas or 1),
                "target_ongoing_requests": options.target_ongoing_requests or float(settings.max_batch_size),
            }
        }
    else:
        scaling = {"num_replicas": options.replicas}
    model = serve.deployment(
        name=MODEL_DEPLOYMENT,
        ray_actor_options=model_actor,
        max_ongoing_requests=options.max_ongoing_requests,
        request_router_config=RequestRouterConfig(request_router_class=JobOwnerRouter),
        health_check_period_s=options.health_check_period_s,
        graceful_shutdown_timeout_s=grace,
        **scaling,
    )(StableAudioModel)
    ingress = serve.deployment(
        name=INGRESS_DEPLOYMENT,
        num_replicas=options.ingress_replicas,
        ray_actor_options=ingress_actor,
        max_ongoing_requests=options.max_ongoing_requests,
        graceful_shutdown_timeout_s=grace,
    )(serve.ingress()(StableAudioIngress))
    return ingress.bind(model.bind(replica_config), config)


def app_builder(args: dict[str, Any]) -> Any:
    """For `serve deploy` / `serve run` (deploy/ray/serve_config.yaml): `args` holds Settings fields (model,
    queue_size, ...) and RayOptions fields (replicas, num_gpus, max_replicas, ...); the rest comes from the
    environment, as for `serve`."""
    option_names = {f.name for f in dataclasses.fields(RayOptions)}
    unknown = set(args) - option_names - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"unknown application args: {sorted(unknown)}")
    settings = Settings(**{k: v for k, v in args.items() if k in Settings.model_fields})
    return build(settings, RayOptions(**{k: v for k, v in args.items() if k in option_names}))


def start(settings: Settings, options: RayOptions, **ray_init: Any) -> bool:
    """Deploy on the cluster in RAY_ADDRESS, or on a new local Ray instance; returns True when it started Ray
    here (then `stop` shuts it down). Blocks until every replica has loaded the model. Raises `DoesNotFit`
    instead, before deploying anything, when the replicas and the ingress cannot fit the cluster: Serve would
    wait for them forever (see `plan_resources`)."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = initialized = False
    if not ray.is_initialized():
        ray.init(**ray_init)  # RAY_ADDRESS set: join that cluster; unset: start a local instance
        initialized = True
        started = not os.environ.get("RAY_ADDRESS") and "address" not in ray_init
    try:
        plan = plan_resources(options, local=started)
    except DoesNotFit:
        if initialized:
            ray.shutdown()  # stops the instance started here; only disconnects from a cluster
        raise
    log.info(
        "Ray has %s and %s: each model replica asks for %s and %s, the ingress for %s",
        _n(plan.cluster_cpus, "CPU"),
        _n(plan.cluster_gpus, "GPU"),
        _n(plan.replica_cpus, "CPU"),
        _n(plan.replica_gpus, "GPU"),
        _n(plan.ingress_cpus, "CPU"),
    )
    fitted = dataclasses.replace(
        options, num_cpus=plan.replica_cpus, num_gpus=plan.replica_gpus, ingress_num_cpus=plan.ingress_cpus
    )
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build(settings, fitted), name=APP_NAME, route_prefix="/", blocking=False)
    return started


def stop(started_ray: bool) -> None:
    """Delete the application (replicas drain: queued and running work gets the grace period), then Serve and
    Ray too when they were started here."""
    import ray
    from ray import serve

    try:
        serve.delete(APP_NAME)
    finally:
        if started_ray:
            serve.shutdown()
            ray.shutdown()


def serve_forever(settings: Settings, options: RayOptions) -> None:
    """`stable-audio-service serve --ray`: deploy, serve until SIGTERM/SIGINT, shut down cleanly (exit 0)."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping the Ray Serve application", signal.Signals(signum).name)
        stopping.set()

    started = start(settings, options)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    scale = (
        f"{options.min_replicas or 1}..{options.max_replicas} autoscaled"
        if options.autoscaling
        else str(options.replicas)
    )
    log.info("serving on http://%s:%d through Ray Serve: %s model replicas", settings.host, settings.port, scale)
    while not stopping.wait(1.0):
        pass
    # Bounded: when the same signal also reached Ray's own processes (a terminal's Ctrl-C, systemd's default
    # KillMode=control-group), Ray would wait a minute for a GCS that is gone.
    stopper = threading.Thread(target=stop, args=(started,), name="serve-stop", daemon=True)
    stopper.start()
    stopper.join(settings.shutdown_grace_s + STOP_MARGIN_S)
    telemetry.shutdown()
    if stopper.is_alive():
        log.error("Ray did not stop in time (were its processes signalled too? use systemd KillMode=mixed)")
        os._exit(1)
    log.info("stopped cleanly")
