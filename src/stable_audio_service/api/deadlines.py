"""Caller deadlines and refusals over HTTP: where a request's `max_wait_s` comes from, and how a refusal says when
to come back.

A deadline comes from the body (`max_wait_s`), from a `Request-Timeout` header (seconds; for callers such as
proxies or generic clients that cannot change a body), or from the server's `STABLE_AUDIO_DEFAULT_MAX_WAIT_S`.
With both a body field and a header the shorter wins: the caller's patience is the tighter of the two.

Every refusal (429 queue full, 503) carries a `Retry-After` computed by the engine from its wait estimate (see
`engine.scheduler`), rounded up to whole seconds as the header requires; only where no engine exists yet (the
model is loading) does a constant stand in.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..engine import QueueFull, Refused, WouldMissDeadline
from ..service import RequestError
from .schemas import MAX_WAIT_S

REQUEST_TIMEOUT_HEADER = "Request-Timeout"
# Where nothing can be estimated (no engine yet: the model is loading), the Retry-After a 503 says.
FALLBACK_RETRY_AFTER_S = 5


def max_wait_s(body_value: float | None, header_value: str | None, default: float | None) -> float | None:
    """The request's deadline in seconds, or None for none (see the module docstring). A header that is not a
    positive number of seconds is the caller's mistake: `RequestError` naming the header (a 422)."""
    header = None
    if header_value is not None and header_value.strip():
        try:
            header = float(header_value.strip())
        except ValueError:
            header = math.nan
        if not (0 < header <= MAX_WAIT_S):
            raise RequestError(
                REQUEST_TIMEOUT_HEADER.lower(),
                f"must be a number of seconds above 0 and at most {MAX_WAIT_S:g}",
                where="header",
            )
    given = [v for v in (body_value, header) if v is not None]
    if given:
        return min(given)
    return default


def retry_after(seconds: float | None) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    if seconds is None or not math.isfinite(seconds):
        return str(FALLBACK_RETRY_AFTER_S)
    return str(max(1, math.ceil(seconds)))


def refusal_response(exc: Refused) -> JSONResponse:
    """The HTTP answer to an engine's refusal: 429 for a full queue, 503 otherwise, with the engine's Retry-After;
    a deadline refusal as a `DeadlineRefusal` body (the estimate, the deadline, when to retry)."""
    headers = {"Retry-After": retry_after(exc.retry_after_s)}
    body: dict[str, Any] = {"detail": str(exc)}
    if isinstance(exc, WouldMissDeadline):
        body.update({k: v for k, v in exc.detail().items() if k != "message"})
    return JSONResponse(body, status_code=429 if isinstance(exc, QueueFull) else 503, headers=headers)


def reason(exc: Refused) -> str:
    """The refusal's name in the `stable_audio_requests_total{outcome="rejected", reason}` metric."""
    if isinstance(exc, QueueFull):
        return "queue_full"
    if isinstance(exc, WouldMissDeadline):
        return "deadline"
    return "not_accepting"


def install(app: FastAPI) -> None:
    """Answer every `Refused` an ingress lets through with `refusal_response`: the routes only submit."""

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return refusal_response(exc)
