"""`JobHandle`s on jobs that run on model replicas, as the ingress holds them.

- `SubmittedJob`: a job submitted through this ingress. A task keeps the replica's `run` stream open until the
  job ends (each queued or running job is one ongoing request on its replica: what Serve's autoscaler counts),
  keeps the latest view and fans the events out to local followers. A replica that dies fails the job with 503
  + `Retry-After`; a `/predict` job (`keep=False`), whose client has received nothing yet, is first retried once
  on another replica with the same seed.
- `FollowedJob`: any job, followed from its owner's `events` stream (`GET /jobs/{id}/events` through any
  ingress); a replica that dies ends the stream with `failed` (503).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ...engine import JobStatus, NotAccepting, QueueFull
from ...engine.client import JobAudio, JobEvent, JobInfo, snapshot_event
from ...models.base import GenerationParams
from .wire import NO_SUCH_JOB, REPLICA_GONE, owner_of

if TYPE_CHECKING:
    from .client import RayEngineClient

log = logging.getLogger("stable_audio_service.ray")


def failed(info: JobInfo, detail: str, status: int) -> JobEvent:
    """The terminal event of a job the ingress has to end itself (its replica is gone)."""
    info = dataclasses.replace(
        info, status=JobStatus.failed, position=None, error=detail, error_status=status, finished=time.time()
    )
    return JobEvent("failed", {"type": "failed", "error": detail, "status": status}, info)


class SubmittedJob:
    """A job this ingress submitted (`RayEngineClient.submit`): `place` it, then `start` following it."""

    def __init__(
        self,
        client: RayEngineClient,
        params: GenerationParams,
        format: str,
        client_job_id: str | None,
        carrier: dict[str, str],
        keep: bool,
        max_wait_s: float | None = None,
    ) -> None:
        self._client = client
        self._params = params
        self._format = format
        self._client_job_id = client_job_id
        self._carrier = carrier
        self._keep = keep
        self._deadline = None if max_wait_s is None else time.monotonic() + max_wait_s
        self._info: JobInfo | None = None
        self._stream: Any = None
        self._audio: bytes | None = None
        self._more: tuple[bytes, ...] = ()  # the other takes' files
        self._followers: list[asyncio.Queue[JobEvent]] = []
        self._task: asyncio.Task | None = None

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def info(self) -> JobInfo:
        assert self._info is not None, "the job was not placed"
        return self._info

    # -- placing and following ---------------------------------------------------------------------------
    async def place(self, exclude: frozenset[str] = frozenset()) -> None:
        """Submit on some replica (raises `QueueFull` or `NotAccepting` when none takes it); a retry keeps what is
        left of the caller's deadline."""
        max_wait_s = None
        if self._deadline is not None:
            max_wait_s = self._deadline - time.monotonic()
            if max_wait_s <= 0:
                raise NotAccepting("the deadline passed before the job could be placed again")
        self._stream, first = await self._client.open_run(
            self._params, self._format, self._client_job_id, self._carrier, self._keep, max_wait_s, exclude
        )
        if self._params.seed is None:
            self._params.seed = first.job.seed  # a retry elsewhere makes the same audio
        if self._keep:
            self._params.drop_uploads()  # never retried: the replica has its own copy
        self._publish(first)

    def start(self) -> None:
        self._task = self._client.spawn(self._follow())

    async def _follow(self) -> None:
        retried = False
        while True:
            try:
                if await self._pump():
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("job %s: replica stream broke: %s: %s", self.id, type(exc).__name__, exc)
            if not self._keep and not retried and not self._client.stopping:
                retried = True
                try:
                    await self.place(exclude=frozenset({owner_of(self.id) or ""}))
                except (QueueFull, NotAccepting) as exc:
                    self._publish(failed(self.info, str(exc), 503))
                    return
                log.info("job retried on replica %s", owner_of(self.id))
                continue
            self._publish(failed(self.info, REPLICA_GONE, 503))
            return

    async def _pump(self) -> bool:
        """The replica's stream into this handle; True once the job ended, False when the stream broke off."""
        stream = self._stream
        try:
            async for item in stream:
                if isinstance(item, JobAudio):
                    self._audio, self._more = item.data, item.more
                    continue
                self._publish(item)
                if item.terminal:
                    return True
        except asyncio.CancelledError:
            stream.cancel()
            raise
        return False

    def _publish(self, event: JobEvent) -> None:
        if self._info is not None and self._info.ended:
            return  # a job ends once
        self._info = event.job
        for queue in list(self._followers):
            queue.put_nowait(event)

    def cancel(self) -> None:
        """The caller went away: stop following (the replica cancels a job not kept when its stream closes), and
        tell the owner too, without waiting."""
        if self._task is not None:
            self._task.cancel()
        self._client.cancel_soon(self.id)

    # -- JobHandle -------------------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[JobEvent]:
        first = snapshot_event(self.info)
        if first.terminal:
            yield first
            return
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._followers.append(queue)
        try:
            yield first
            while True:
                event = await queue.get()
                yield event
                if event.terminal:
                    return
        finally:
            self._followers.remove(queue)
            if not self._keep and not self.info.ended:
                self.cancel()

    async def audio(self) -> JobAudio:
        info = self.info
        if info.status != JobStatus.done:
            return JobAudio(info)
        return JobAudio(info, self._audio, self._more)


class FollowedJob:
    """Any job, followed from its owner: its view as fetched, its events streamed from the replica."""

    def __init__(self, client: RayEngineClient, info: JobInfo) -> None:
        self._client = client
        self._info = info

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def info(self) -> JobInfo:
        return self._info

    async def events(self) -> AsyncIterator[JobEvent]:
        stream = self._client.open_events(self.id)
        seen = False
        try:
            async for event in stream:
                seen = True
                self._info = event.job
                yield event
                if event.terminal:
                    return
        except (asyncio.CancelledError, GeneratorExit):  # the follower went away
            stream.cancel()
            raise
        except Exception as exc:
            log.warning("events of %s broke: %s: %s", self.id, type(exc).__name__, exc)
        else:
            if not seen:  # the owner has no such job (it expired in between)
                yield failed(self._info, NO_SUCH_JOB, 404)
                return
        yield failed(self._info, REPLICA_GONE, 503)

    async def audio(self) -> JobAudio:
        got = await self._client.audio(self.id)
        return got if got is not None else JobAudio(self._info)
