"""The app factory: settings in, FastAPI app out. The model loads in the background so
that `/health` can say "loading" (503) instead of the port staying closed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from .. import SERVICE, __version__, telemetry
from ..config import Settings
from ..engine import Engine
from ..models.loading import ModelLoadError, load_model
from .routes import router

log = logging.getLogger("stable_audio_service")


class ServiceState:
    """What the routes need: the model's load status, the engine, the settings."""

    def __init__(self, settings: Settings, loader: Callable[[Settings], tuple[Any, Any]]) -> None:
        self.settings = settings
        self.loader = loader
        self.status = "loading"
        self.reason: str | None = "the model is loading"
        self.model: Any = None
        self.info: Any = None
        self.engine: Engine | None = None
        self.loaded = threading.Event()

    def load(self) -> None:
        started = time.perf_counter()
        try:
            model, info = self.loader(self.settings)
            engine = Engine(
                model,
                max_batch_size=self.settings.max_batch_size,
                batch_wait_ms=self.settings.batch_wait_ms,
                queue_size=self.settings.queue_size,
                queue_timeout_s=self.settings.queue_timeout_s,
                job_ttl_s=self.settings.job_ttl_s,
                max_jobs_kept=self.settings.max_jobs_kept,
            )
            engine.start()
            self.model, self.info, self.engine = model, info, engine
            self.status, self.reason = "ok", None
            log.info(
                "model ready: %s (%s) on %s/%s in %.1fs",
                model.name,
                model.family,
                model.device,
                model.dtype,
                time.perf_counter() - started,
            )
        except ModelLoadError as exc:
            self.status, self.reason = "error", str(exc)
            log.error("model failed to load: %s", exc)
        except Exception as exc:  # an unexpected failure still must not look healthy
            self.status, self.reason = "error", f"model failed to load: {type(exc).__name__}: {exc}"
            log.exception("model failed to load")
        finally:
            self.loaded.set()

    def shutdown(self, grace_s: float = 30.0) -> None:
        if self.engine is not None:
            self.engine.shutdown(grace_s)


def create_app(settings: Settings | None = None, loader: Callable | None = None) -> FastAPI:
    settings = settings or Settings()
    state = ServiceState(settings, loader or load_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        telemetry.setup_tracing()
        threading.Thread(target=state.load, name="model-loader", daemon=True).start()
        yield
        await anyio.to_thread.run_sync(state.shutdown)

    app = FastAPI(
        title="stable-audio-service",
        version=__version__,
        description="Text-to-audio with Stability AI's open models. Service name: " + SERVICE,
        lifespan=lifespan,
    )
    app.state.service = state
    app.include_router(router)
    if settings.cors_origins.strip():
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[o.strip() for o in settings.cors_origins.split(",") if o.strip()],
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="health", tracer_provider=telemetry.setup_tracing())
    return app
