"""How much of the cluster the deployments ask for: per-replica CPUs and GPUs, scaling, and the refusal when they
cannot fit. `fit_resources` is pure arithmetic (tested without Ray); `plan_resources` reads the cluster."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("stable_audio_service.ray")


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
        """Serve scales the replicas between `min_replicas` and `max_replicas`."""
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
        """CPUs the whole plan asks for (summed in Ray's units, so it is what Ray will add up)."""
        return _from_units(
            self.replicas * _units(self.replica_cpus) + self.ingress_replicas * _units(self.ingress_cpus)
        )

    @property
    def gpus(self) -> float:
        """GPUs the whole plan asks for."""
        return _from_units(self.replicas * _units(self.replica_gpus))


def _units(x: float) -> int:
    """A quantity as Ray counts it (truncated to 1/10000), so that the sums below are exact."""
    return int(x * RESOURCE_UNIT + 1e-6)


def _from_units(n: int) -> float:
    return n / RESOURCE_UNIT


def counted(x: float, unit: str) -> str:
    """`2 CPUs`, `0.5 CPU`, `0 GPUs`: a quantity as the messages quote it."""
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
                f"{replicas} model replicas cannot share {counted(cluster_cpus, 'CPU')} of the Ray cluster"
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
        ingress_text = _ingress_text(ingress_replicas, _from_units(ingress_u))
        raise DoesNotFit(
            f"{replicas} model replicas × {counted(cpus, 'CPU')} + {ingress_text}"
            f" = {counted(asked, 'CPU')}, but the Ray cluster has {counted(cluster_cpus, 'CPU')}:"
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
            f"{replicas} model replicas × {counted(gpus, 'GPU')} = {counted(plan.gpus, 'GPU')}, but the Ray cluster has"
            f" {counted(cluster_gpus, 'GPU')}: lower --replicas{hint}"
        )
    return plan


def _ingress_text(ingress_replicas: int, ingress_cpus: float) -> str:
    if ingress_replicas == 1:
        return f"the ingress's {counted(ingress_cpus, 'CPU')}"
    return f"{ingress_replicas} ingress replicas × {counted(ingress_cpus, 'CPU')}"


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
            counted(float(free.get("CPU", 0.0)), "CPU"),
            counted(float(free.get("GPU", 0.0)), "GPU"),
            counted(cpus, "CPU"),
            counted(gpus, "GPU"),
            counted(plan.cpus, "CPU"),
            counted(plan.gpus, "GPU"),
        )
    return plan
