"""The Ray Serve backend for the tests: one local Ray instance per test session, the tiny model on two replicas,
and an HTTP client that the contract tests use exactly like the in-process TestClient."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from stable_audio_service.config import Settings

if TYPE_CHECKING:
    from stable_audio_service.engine.client import JobInfo
    from stable_audio_service.serving.ray.wire import ReplicaStats

REPLICAS = 2
QUEUE_SIZE = 4  # per replica: small, so that filling the whole cluster takes a few requests
START_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _EngineProbe:
    """`client.app.state.service.engine` for the Ray backend: asks the model replicas directly (the tests that
    look inside the engine of one process look inside the replicas here)."""

    def __init__(self, backend: RayBackend) -> None:
        self.backend = backend

    def get(self, job_id: str) -> SimpleNamespace | None:
        """The job as the tests read it from an engine: its parameters, as its replica holds them."""
        params = self.backend.handle().params.remote(job_id).result(timeout_s=30)
        return None if params is None else SimpleNamespace(id=job_id, params=params)

    def running_count(self) -> int:
        return sum(s.stats.running for s in self.backend.replica_stats().values())


class RayBackend(httpx.Client):
    """An HTTP client on the Serve proxy, plus what the tests need from Ray itself."""

    def __init__(self, tiny_dir: Path) -> None:
        pytest.importorskip("ray", reason="ray is not installed (pip install '.[ray]'): Ray Serve tests skipped")
        pytest.importorskip("ray.serve", reason="ray[serve] is not installed: Ray Serve tests skipped")
        import ray

        from stable_audio_service.serving import ray as ray_serving

        self.ray_serving = ray_serving
        self.settings = Settings(
            model=str(tiny_dir),
            host="127.0.0.1",
            port=_free_port(),
            batch_wait_ms=50,
            max_batch_size=4,
            queue_size=QUEUE_SIZE,
            shutdown_grace_s=5,
        )
        # As `serve --ray --replicas 2` starts it: Ray counts this machine's own CPUs (no num_cpus), and the
        # replicas and the ingress get the default shares of them, which fit any machine (tested in
        # test_ray_resources.py). Only the dashboard and the log forwarding are left out, to keep the tests quiet.
        self.options = ray_serving.RayOptions(replicas=REPLICAS, health_check_period_s=1.0)
        ray_serving.start(
            self.settings, self.options, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
        self.ray = ray
        super().__init__(base_url=f"http://127.0.0.1:{self.settings.port}", timeout=120)
        self.wait_ready(REPLICAS)
        self.app = SimpleNamespace(
            state=SimpleNamespace(service=SimpleNamespace(engine=_EngineProbe(self))),
            openapi=lambda: self.get("/openapi.json").json(),
        )

    # -- Ray-side helpers ---------------------------------------------------------------------------
    def handle(self) -> Any:
        from ray import serve

        return serve.get_deployment_handle(self.ray_serving.MODEL_DEPLOYMENT, app_name=self.ray_serving.APP_NAME)

    def replica_stats(self, metrics: bool = False) -> dict[str, ReplicaStats]:
        """Every live model replica's figures, fresh."""
        results = self.handle().broadcast("stats", None, metrics).results(timeout_s=30, return_exceptions=True)
        return {r.replica: r for r in results if not isinstance(r, BaseException)}

    def job_info(self, job_id: str) -> JobInfo | None:
        """The job as its replica sees it (the same view the ingress gets)."""
        return self.handle().get.remote(job_id).result(timeout_s=30)

    def kill_replica(self, tag: str) -> None:
        actor = self.replica_stats()[tag].actor
        self.ray.kill(self.ray.get_actor(actor, namespace="serve"), no_restart=True)

    def wait_ready(self, replicas: int, without: set[str] = frozenset(), timeout_s: float = START_TIMEOUT_S) -> dict:
        """Until `/ready` reports `replicas` live model replicas, none of them in `without`."""
        deadline = time.monotonic() + timeout_s
        body: Any = None
        while time.monotonic() < deadline:
            try:
                r = self.get("/ready", timeout=10)
                body = r.json()
                if r.status_code == 200 and body.get("replicas") == replicas:
                    if not without & set(self.replica_stats()):
                        return body
            except httpx.HTTPError as exc:
                body = repr(exc)
            time.sleep(0.5)
        raise AssertionError(f"the Ray backend did not get {replicas} ready replicas: {body}")

    def stop(self) -> None:
        self.close()
        self.ray_serving.stop(started_ray=True)
