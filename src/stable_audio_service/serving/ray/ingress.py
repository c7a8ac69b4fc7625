"""The ingress deployment: the single process's FastAPI app, unchanged, with a `RayEngineClient` as its backend."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ...config import Settings
from .client import RayEngineClient


def create_cluster_app(handle: Any, settings: Settings) -> FastAPI:
    """The app of `api/app.py` over the model deployment behind `handle`."""
    from ...api.app import create_app

    return create_app(settings, connect=RayEngineClient(handle, settings).connect)


class StableAudioIngress:
    """Serve ingress: builds the app inside the replica (the app holds threads and locks: it cannot be pickled)."""

    def __init__(self, model: Any, settings: dict[str, Any]) -> None:
        self.model_handle = model
        self.settings = Settings(**settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_cluster_app(self.model_handle, self.settings)
