"""What crosses between the ingress and the model replicas, besides the jobs' own views (`JobInfo`, `JobEvent`,
`JobAudio` of engine/client.py, sent as they are): the job-id format that names a job's replica, the model's
facts, a replica's refusal of a submission, and its figures."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ...engine import NotAccepting, QueueFull, Refused, WouldMissDeadline
from ...engine.client import EngineHealth, EngineStats
from ...models.base import Capabilities, ModelLimits

# `<replica id>.<32 hex>`: a job id names the replica that owns it (see router.py).
JOB_ID = re.compile(r"^([A-Za-z0-9_-]{1,64})\.([0-9a-f]{32})$")
REPLICA_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REPLICA_GONE = "the model replica running this job stopped; retry"
NO_SUCH_JOB = "no such job (expired, or its replica stopped)"


def owner_of(key: Any) -> str | None:
    """The replica a job id names (or a bare replica id, for calls pinned to one); None when it names none."""
    if not isinstance(key, str):
        return None
    m = JOB_ID.match(key)
    if m:
        return m.group(1)
    return key if REPLICA_ID.match(key) else None


def is_job_id(key: str) -> bool:
    """An id this service hands out (anything else names no job, and costs no call)."""
    return JOB_ID.match(key) is not None


@dataclass
class ModelView:
    """The loaded model as the request path sees it (defaults, limits, capabilities), without weights, for the
    ingress: `service.resolve`, `/models` and the OpenAPI schema read only these."""

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
    # The ingress holds no adapters: the replicas check each request's adapters against their own directory.
    adapters: None = None

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


@dataclass(frozen=True)
class Refusal:
    """A replica did not take a submission: `status` 429 (its queue is full) or 503 (it is stopping, or the job
    would miss its deadline: `deadline` holds the estimate). The engine's exceptions do not survive pickling, so
    this carries what they say, and `error()` makes one again on the ingress."""

    replica: str
    status: int
    detail: str
    retry_after_s: float | None = None
    deadline: dict[str, Any] | None = None  # WouldMissDeadline.detail()

    @classmethod
    def of(cls, replica: str, exc: Refused) -> Refusal:
        deadline = exc.detail() if isinstance(exc, WouldMissDeadline) else None
        return cls(replica, 429 if isinstance(exc, QueueFull) else 503, str(exc), exc.retry_after_s, deadline)

    def error(self) -> Refused:
        if self.status == 429:
            return QueueFull(self.detail, self.retry_after_s)
        if self.deadline is not None:
            d = self.deadline
            return WouldMissDeadline(
                self.detail,
                estimate_s=d["estimate_s"],
                max_wait_s=d["max_wait_s"],
                retry_after_s=d["retry_after_s"],
                alone_s=d["alone_s"],
            )
        return NotAccepting(self.detail, self.retry_after_s)


@dataclass(frozen=True)
class ReplicaStats:
    """One replica's figures, for the ingress's `/ready`, placement and `/metrics` (`metrics`: its Prometheus
    text, only when asked for)."""

    replica: str
    actor: str
    pid: int
    health: EngineHealth
    stats: EngineStats
    metrics: str | None = None

    @property
    def free(self) -> int:
        """Queue slots left."""
        return self.stats.queue_size - self.stats.queue_depth
