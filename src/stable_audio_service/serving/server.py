"""Running the app under uvicorn with a graceful SIGTERM.

On SIGTERM (systemd stop) or Ctrl-C:
1. the engine stops taking work at once (new requests get 503, /ready turns 503) while uvicorn stops accepting
   connections;
2. queued and running requests have `shutdown_grace_s` to finish; what is left then is answered 503 — every
   accepted request gets an answer, including waiting `POST /predict` calls, because uvicorn's own drain timeout is
   set longer than the grace period;
3. the lifespan exit stops the worker and flushes telemetry; after the server stops, the providers are shut down
   (spans, metrics and logs flushed) and the process exits 0.

If the engine's worker dies (it should not: it guards its whole loop), the server stops the same way but the
process exits 70 (EX_SOFTWARE), so systemd's `Restart=on-failure` brings the service back.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI

from .. import telemetry
from ..config import Settings

log = logging.getLogger("stable_audio_service")
DRAIN_MARGIN_S = 10.0  # uvicorn waits this much longer than the engine's grace before it cancels handlers


class GracefulServer(uvicorn.Server):
    """uvicorn, with `on_stop` started (in a thread) at the first signal, so that the engine stops taking work while
    uvicorn drains, and with a SIGTERM answered by a clean shutdown ending the process with 0, not 143."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_stop = on_stop
        self._stopping = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        first = not self._stopping
        self._stopping = True
        super().handle_exit(sig, frame)
        # uvicorn re-raises the captured signal after its shutdown, which would end the process with 143; a
        # SIGTERM answered by a clean shutdown is a success (exit 0)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list) and sig == signal.SIGTERM:
            while signal.SIGTERM in captured:
                captured.remove(signal.SIGTERM)
        if first:
            log.info("received %s: no new work; finishing what is running", signal.Signals(sig).name)
            threading.Thread(target=self._on_stop, name="graceful-shutdown", daemon=True).start()


def run(app: FastAPI, settings: Settings) -> None:
    """Serve `app` until SIGTERM/SIGINT; then shut down gracefully and flush telemetry."""
    state = app.state.service
    grace = settings.shutdown_grace_s
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(grace + DRAIN_MARGIN_S),
    )
    server = GracefulServer(config, on_stop=lambda: state.shutdown(grace))

    def on_fatal(reason: str) -> None:
        server.should_exit = True

    state.fatal_hooks.append(on_fatal)
    try:
        server.run()
    finally:
        telemetry.shutdown()
    if not server.started:
        sys.exit(3)
    if state.fatal_reason is not None:
        log.critical("exiting 70 so the service manager restarts it: %s", state.fatal_reason)
        sys.exit(70)
    log.info("stopped cleanly")
