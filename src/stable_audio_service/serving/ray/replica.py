"""The model deployment: each replica loads the model and runs one `Engine` behind a `LocalEngineClient`,
exactly as the single process does, and answers the ingress with that client's views and events (wire.py)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from ... import telemetry
from ...config import Settings
from ...engine import Refused
from ...engine.client import JobAudio, JobEvent, JobInfo
from ...engine.local import LocalEngineClient
from ...models.base import GenerationParams
from .wire import ModelView, Refusal, ReplicaStats

log = logging.getLogger("stable_audio_service.ray")


class StableAudioModel:
    """One model replica. Its calls are coroutines: they run on the replica's event loop, where the engine's
    subscriber queues live. Job ids are `<this replica's id>.<engine id>`, so that any ingress can send a call
    about a job to its owner (router.py)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from ...api.app import ServiceState, local_engine
        from ...models.loading import load_model

        telemetry.setup()
        context = serve.get_replica_context()
        self.tag: str = context.replica_id.unique_id
        self.actor_name: str = context.replica_id.to_full_id_str()
        self.state = ServiceState(Settings(**settings), local_engine(load_model, id_prefix=self.tag))
        self.state.load()  # Serve routes nothing here until the constructor returns
        client = self.state.client
        if self.state.status != "ok" or not isinstance(client, LocalEngineClient):
            raise RuntimeError(self.state.reason or "the model did not load")
        self.client = client
        log.info("model replica %s ready (%s)", self.tag, client.model.name)

    # -- lifecycle (called by Serve) -------------------------------------------------------------
    async def check_health(self) -> None:
        """A replica whose engine died is replaced by Serve (the single process exits for systemd instead)."""
        health = await self.client.health()
        if not health.healthy:
            raise RuntimeError(health.reason or "the engine stopped")

    def __del__(self) -> None:
        state = getattr(self, "state", None)
        if state is not None:
            state.shutdown()  # drain: queued and running work gets shutdown_grace_s, then 503

    # -- calls from the ingress --------------------------------------------------------------------
    async def info(self) -> ModelView:
        return ModelView.of(self.client.model)

    async def run(
        self,
        pin: str | None,
        params: GenerationParams,
        fmt: str,
        client_job_id: str | None,
        carrier: dict[str, str],
        keep: bool,
        with_audio: bool,
        max_wait_s: float | None = None,
    ) -> AsyncIterator[JobEvent | JobAudio | Refusal]:
        """Submit a job and stream it: a `Refusal`, or its events (the first one, a snapshot, says it was taken),
        with its `JobAudio` just before a `done` event when `with_audio`. `pin` only steers the router. A caller that
        goes away closes the stream, which cancels a job it did not ask to `keep` (`/predict`)."""
        self._trim_uploads(params)
        try:
            job = await self.client.submit(
                params,
                format=fmt,
                client_job_id=client_job_id,
                context=_context(carrier),
                keep=keep,
                max_wait_s=max_wait_s,
            )
        except Refused as exc:
            yield Refusal.of(self.tag, exc)
            return
        events = job.events()
        try:
            async for event in events:
                if event.type == "done" and with_audio:
                    yield await job.audio()
                yield event
        finally:
            await events.aclose()

    async def get(self, job_id: str) -> JobInfo | None:
        return await self.client.get(job_id)

    async def cancel(self, job_id: str) -> JobInfo | None:
        return await self.client.cancel(job_id)

    async def audio(self, job_id: str) -> JobAudio | None:
        return await self.client.audio(job_id)

    async def params(self, job_id: str) -> GenerationParams | None:
        """The parameters a job runs with, uploads left out: what the ingress resolved, as this replica received it.
        The API never shows them (a job's view says what it made, not what it was asked); tests and debugging do."""
        job = self.client.engine.get(self.client.engine_id(job_id) or "")
        return None if job is None else dataclasses.replace(job.params, init_audio=None, inpaint_audio=None)

    async def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        """A job's events (snapshot first) until its terminal one; nothing at all when there is no such job."""
        job = await self.client.follow(job_id)
        if job is None:
            return
        events = job.events()
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()

    async def stats(self, pin: str | None = None, metrics: bool = False) -> ReplicaStats:
        """This replica's figures for `/ready`, placement and `/metrics` (the Prometheus text only when asked)."""
        text = None
        if metrics:
            from prometheus_client import generate_latest

            text = generate_latest(self.client.metrics_registry).decode()
        return ReplicaStats(
            replica=self.tag,
            actor=self.actor_name,
            pid=os.getpid(),
            health=await self.client.health(),
            stats=await self.client.stats(),
            metrics=text,
        )

    # -- helpers -----------------------------------------------------------------------------------
    def _trim_uploads(self, params: GenerationParams) -> None:
        """What one process's request path does: keep only the part of an upload this clip can use."""
        usable = self.client.model.upload_samples(params.duration)
        for name, audio in (("init_audio", params.init_audio), ("inpaint_audio", params.inpaint_audio)):
            if audio is not None and audio.shape[-1] > usable:
                setattr(params, name, audio[..., :usable].copy())


def _context(carrier: dict[str, str]) -> dict[str, Any]:
    """The ingress request span, from its `traceparent`: the engine's spans become its children."""
    from opentelemetry import propagate, trace

    ctx = propagate.extract(carrier)
    span = trace.get_current_span(ctx).get_span_context()
    if not span.is_valid:
        return {"trace_id": None, "span_id": None, "otel": None}
    return {"trace_id": format(span.trace_id, "032x"), "span_id": format(span.span_id, "016x"), "otel": ctx}
