"""The app factory: settings in, FastAPI app out. The model loads in the background so
that `/health` can say "loading" (503) instead of the port staying closed."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import SERVICE, __version__, telemetry
from ..config import Settings
from ..engine import Engine
from ..engine.client import EngineClient, ServedModel, Unavailable
from ..engine.local import LocalEngineClient
from ..models.loading import ModelLoadError, load_model
from ..service import RequestError, model_bound_errors
from ..web import router as web_router
from . import deadlines
from .loras import router as loras_router
from .metrics import router as metrics_router
from .openapi import install_openapi
from .routes import RETRY_AFTER_S, router
from .security import GuardMiddleware

log = logging.getLogger("stable_audio_service")


_PATH = re.compile(r"(?<![\w.:/-])/(?:[\w.@+-]+/)*[\w.@+-]+/?")


def public_reason(message: str) -> str:
    """What a load failure says over HTTP: the first line, local paths hidden (the log has them)."""
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    return _PATH.sub("<path>", first)


def validation_details(errors: Any) -> list[dict]:
    """FastAPI's 422 body without echoing the input back: it may be huge, binary, or NaN (not JSON)."""
    out = []
    for err in errors:
        item = {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
        ctx = err.get("ctx")
        if ctx:
            item["ctx"] = {str(k): v if isinstance(v, (int, str)) else str(v) for k, v in ctx.items()}
        out.append(item)
    return out


Loader = Callable[[Settings], tuple[Any, Any]]
# Builds the backend the routes talk to, from the settings and the fatal-error callback; blocking (it may load
# a model or wait for a cluster), so it runs in the loader thread.
Connect = Callable[[Settings, Callable[[str], None]], EngineClient]


def local_engine(loader: Loader = load_model, id_prefix: str | None = None) -> Connect:
    """Load the model in this process and run one `Engine` over it (`id_prefix`: see `LocalEngineClient`)."""

    def connect(settings: Settings, on_fatal: Callable[[str], None]) -> LocalEngineClient:
        started = time.perf_counter()
        model, info = loader(settings)
        engine = Engine(
            model,
            max_batch_size=settings.max_batch_size,
            batch_wait_ms=settings.batch_wait_ms,
            queue_size=settings.queue_size,
            queue_timeout_s=settings.queue_timeout_s,
            job_ttl_s=settings.job_ttl_s,
            max_jobs_kept=settings.max_jobs_kept,
            max_result_bytes=settings.max_result_bytes,
            prune_interval_s=settings.job_prune_interval_s,
            observer=telemetry.observer_for(model),
            on_fatal=on_fatal,
            warm_up=settings.estimate_warm_up,
        )
        client = LocalEngineClient(engine, id_prefix=id_prefix)
        client.start()
        telemetry.watch_engine(engine)
        memory = getattr(info, "memory", None)
        log.info(
            "model ready: model=%s family=%s device=%s dtype=%s load_s=%.1f memory_needed_gib=%s "
            "memory_found_gib=%s (%s)",
            model.name,
            model.family,
            model.device,
            model.dtype,
            time.perf_counter() - started,
            f"{memory.needed / 2**30:.2f}" if memory else "unchecked",
            f"{memory.available / 2**30:.2f}" if memory else "unchecked",
            memory.where if memory else "memory check skipped",
        )
        return client

    return connect


class ServiceState:
    """What the routes need: the load status, the backend (`client`, an `EngineClient`), the settings."""

    def __init__(self, settings: Settings, connect: Connect) -> None:
        self.settings = settings
        self.connect = connect
        self.status = "loading"
        self.reason: str | None = "the model is loading"
        self.client: EngineClient | None = None
        self.loaded = threading.Event()
        # Called with the reason when the engine's worker dies: serving.run stops the server and exits
        # non-zero so systemd restarts the service (in-process tests just see /health turn 503).
        self.fatal_hooks: list[Callable[[str], None]] = []
        self.fatal_reason: str | None = None

    @property
    def model(self) -> ServedModel | None:
        """The loaded model's facts (limits, capabilities...); None until it has loaded."""
        return self.client.model if self.client is not None else None

    @property
    def engine(self) -> Engine | None:
        """The `Engine` of this process, when the backend is one (None behind a cluster): for tools and tests
        that look inside it. The routes use `client`."""
        return self.client.engine if isinstance(self.client, LocalEngineClient) else None

    def fatal(self, reason: str) -> None:
        self.fatal_reason = reason
        log.critical("the generation engine died: %s; the service must be restarted", reason)
        for hook in list(self.fatal_hooks):
            try:
                hook(reason)
            except Exception:
                log.exception("fatal hook failed")

    def load(self) -> None:
        try:
            self.client = self.connect(self.settings, self.fatal)
            self.status, self.reason = "ok", None
        except ModelLoadError as exc:
            self.status, self.reason = "error", public_reason(str(exc))
            log.error("model failed to load: %s", exc)
        except Exception as exc:  # an unexpected failure still must not look healthy
            self.status, self.reason = "error", public_reason(f"model failed to load: {type(exc).__name__}: {exc}")
            log.exception("model failed to load")
        finally:
            self.loaded.set()

    def shutdown(self, grace_s: float | None = None) -> None:
        if self.client is not None:
            self.client.shutdown(self.settings.shutdown_grace_s if grace_s is None else grace_s)


def create_app(
    settings: Settings | None = None, loader: Loader | None = None, connect: Connect | None = None
) -> FastAPI:
    """The service's app. The model loads in a background thread: `loader(settings)` loads it for an engine in
    this process (default: `load_model`), or `connect(settings, on_fatal)` builds any other `EngineClient`
    (the Ray ingress passes one that talks to its model replicas)."""
    settings = settings or Settings()
    state = ServiceState(settings, connect or local_engine(loader or load_model))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        telemetry.setup()
        threading.Thread(target=state.load, name="model-loader", daemon=True).start()
        yield
        await anyio.to_thread.run_sync(state.shutdown)
        await anyio.to_thread.run_sync(telemetry.force_flush)

    app = FastAPI(
        title="stable-audio-service",
        version=__version__,
        description="Text-to-audio with Stability AI's open models. Service name: " + SERVICE,
        lifespan=lifespan,
    )
    app.state.service = state
    app.include_router(router)
    app.include_router(loras_router)
    app.include_router(metrics_router)
    app.include_router(web_router)
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes, api_key=settings.api_key)
    if settings.cors_origins.strip():
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[o.strip() for o in settings.cors_origins.split(",") if o.strip()],
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(RequestError)
    async def _refused(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail()}, status_code=422)

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": RETRY_AFTER_S})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = model_bound_errors(validation_details(exc.errors()), state.model)
        return JSONResponse({"detail": details}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # e.g. invalid UTF-8: the same class of mistake as malformed JSON, so the same 422 shape
            msg = "the request body could not be parsed: it must be UTF-8 JSON"
            return JSONResponse({"detail": [{"loc": ["body"], "msg": msg, "type": "json_invalid"}]}, status_code=422)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    deadlines.install(app)
    install_openapi(app, settings)

    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls="health,metrics",
        tracer_provider=telemetry.setup_tracing(),
        meter_provider=telemetry.meter_provider(),
        exclude_spans=["receive", "send"],  # the SERVER span is the request span; meta carries its ids
    )
    return app
