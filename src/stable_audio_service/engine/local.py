"""`EngineClient` over the threaded `Engine` of this process: what `serve` and `generate` use, and what each Ray
model replica runs behind its calls.

The engine's jobs are mutable objects touched by its threads; this client hands out only `JobInfo` views taken
under the engine's lock, and turns the engine's per-job event queues into `JobEvent` streams.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from .. import telemetry
from ..models.base import AudioModel, GenerationParams
from . import Engine
from .client import EngineHealth, EngineStats, JobAudio, JobEvent, JobInfo
from .jobs import Job


class LocalJob:
    """A `JobHandle` on one of the engine's jobs. `cancel_on_close`: the caller that submitted it waits for the
    result itself (`keep=False`), so a stream it closes early means it went away, and the job is cancelled."""

    def __init__(self, client: LocalEngineClient, job: Job, cancel_on_close: bool) -> None:
        self._client = client
        self._job = job
        self._cancel_on_close = cancel_on_close

    @property
    def id(self) -> str:
        return self._client.public_id(self._job.id)

    @property
    def info(self) -> JobInfo:
        return self._client.view(self._job)

    async def events(self) -> AsyncIterator[JobEvent]:
        engine, job = self._client.engine, self._job
        queue = engine.subscribe(job)  # its first event is a snapshot of where the job stands
        try:
            while True:
                data = await queue.get()
                event = JobEvent(data["type"], data, self.info)
                yield event
                if event.terminal:
                    return
        finally:
            engine.unsubscribe(job, queue)
            if self._cancel_on_close and not job.ended:
                engine.cancel(job.id)

    async def audio(self) -> JobAudio:
        info = self.info
        res = self._job.result
        if info.result is None or res is None:
            return JobAudio(info)
        return JobAudio(info, res.data, res.more)


class LocalEngineClient:
    """`EngineClient` over `engine`. `id_prefix`: job ids are `<prefix>.<engine id>` (several engines behind one
    ingress then hand out distinct ids that name their owner); without it, the engine's own ids."""

    def __init__(self, engine: Engine, id_prefix: str | None = None) -> None:
        self.engine = engine
        self.id_prefix = id_prefix
        self._own_id = re.compile(rf"^{re.escape(id_prefix)}\.([0-9a-f]{{32}})$") if id_prefix else None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self.engine.start()

    def shutdown(self, grace_s: float) -> None:
        self.engine.shutdown(grace_s)

    # -- what the routes read ----------------------------------------------------------------------------
    @property
    def model(self) -> AudioModel:
        return self.engine.model

    @property
    def metrics_registry(self) -> Any:
        return telemetry.prometheus_registry()

    async def health(self) -> EngineHealth:
        engine = self.engine
        return EngineHealth(healthy=engine.healthy, accepting=engine.accepting, reason=engine.fatal_reason)

    async def stats(self) -> EngineStats:
        engine = self.engine
        return EngineStats(
            engine.queue_depth(), engine.running_count(), engine.max_batch_size, engine.queue_size, engine.drain_s()
        )

    # -- jobs --------------------------------------------------------------------------------------------
    async def submit(
        self,
        params: GenerationParams,
        *,
        format: str = "wav",
        client_job_id: str | None = None,
        context: dict[str, Any] | None = None,
        keep: bool = True,
        max_wait_s: float | None = None,
    ) -> LocalJob:
        job = self.engine.submit(
            params, format=format, client_job_id=client_job_id, context=context, keep=keep, max_wait_s=max_wait_s
        )
        return LocalJob(self, job, cancel_on_close=not keep)

    async def get(self, job_id: str) -> JobInfo | None:
        job = self._find(job_id)
        if job is None:
            return None
        self.engine.estimate(job)  # a reader asking now gets a fresh place and ETA
        return self.view(job)

    async def follow(self, job_id: str) -> LocalJob | None:
        job = self._find(job_id)
        return None if job is None else LocalJob(self, job, cancel_on_close=False)

    async def cancel(self, job_id: str) -> JobInfo | None:
        job = self._find(job_id)
        if job is None:
            return None
        self.engine.cancel(job.id)  # a job that already ended is left as it is
        return self.view(job)

    async def audio(self, job_id: str) -> JobAudio | None:
        job = self._find(job_id)
        return None if job is None else await LocalJob(self, job, cancel_on_close=False).audio()

    # -- ids and views -----------------------------------------------------------------------------------
    def view(self, job: Job) -> JobInfo:
        """`job` as it stands, read under the engine's lock so that no half-made change shows (a status of done
        before its result is set)."""
        engine = self.engine
        with engine._cond:  # reentrant: `position` takes it too
            return JobInfo.of(job, engine.position(job), self.public_id(job.id))

    def public_id(self, engine_id: str) -> str:
        return f"{self.id_prefix}.{engine_id}" if self.id_prefix else engine_id

    def engine_id(self, job_id: str) -> str | None:
        """The engine's own id of a job id this client handed out; None when it is not one of them."""
        if self._own_id is None:
            return job_id
        m = self._own_id.match(job_id)
        return m.group(1) if m else None

    def _find(self, job_id: str) -> Job | None:
        internal = self.engine_id(job_id)
        return None if internal is None else self.engine.get(internal)
