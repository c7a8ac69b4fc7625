"""A Python client for the service, sync (`StableAudioClient`) and async (`AsyncStableAudioClient`).

Why a client: callers should not hand-roll base64, SSE parsing, Retry-After handling and error
shapes. `generate()` without progress posts to `/predict` asking for the file itself (`Accept:
audio/<format>`, no base64); with `on_progress` (or through `stream()`) it goes through the jobs API
so step events arrive while the clip is denoised. Both return the same `GenerationResult`.

(Long: the sync and async clients are kept side by side so they stay the same API; each method is short.)

    from stable_audio_service.client import StableAudioClient

    with StableAudioClient("http://127.0.0.1:2009") as client:
        result = client.generate("rain on a tin roof", duration=5, seed=7)
        open("rain.wav", "wb").write(result.audio)

A deadline: `generate(..., max_wait_s=30)` (or `submit`) asks the service to refuse at once what it estimates it
cannot finish within 30 s (`DeadlineRefused`, with the estimate and a Retry-After; not retried, so the caller is
never kept past its own deadline by the client). Events say `eta_s`, the service's estimate of the seconds left.

A level: `generate(..., loudness=-14)` (a LUFS target, true-peak limited at -1 dBTP) or `loudness="peak"` (-1 dBFS
peak); the result's `loudness_gain_db` is the gain applied.

LoRA adapters (Stable Audio 3), each with Stability's per-adapter controls: `loras=[Lora("style", 0.8,
conditioner_strength=1.0, interval=(0.0, 0.5), layer_filter=["cross_attn"])]`; names and dicts work too.

Only `httpx` and `httpx-sse` are needed at import time (no torch); `to_numpy()` uses soundfile.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import inspect
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "AsyncStableAudioClient",
    "DeadlineRefused",
    "GenerationResult",
    "JobCancelled",
    "JobEvent",
    "JobFailed",
    "Lora",
    "ResponseMeta",
    "StableAudioClient",
    "StableAudioError",
]

MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg"}
TERMINAL_EVENTS = frozenset({"done", "failed", "cancelled"})
RETRY_STATUSES = frozenset({429, 503})
# Generation can take minutes on a CPU: reads wait long, connecting does not.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
DEFAULT_RETRIES = 3
# However long a server's Retry-After, one wait is capped here (the attempts stay bounded too).
DEFAULT_MAX_RETRY_WAIT_S = 60.0
# Re-opening the event stream after it broke off without a final event (e.g. a proxy's idle timeout).
MAX_EVENT_RECONNECTS = 5
# Upload parameters: the client takes bytes or a path, the service wants base64 in these fields.
UPLOAD_FIELDS = {"init_audio": "init_audio_b64", "inpaint_audio": "inpaint_audio_b64"}

AudioSource = bytes | bytearray | memoryview | str | os.PathLike


# -- results and errors ---------------------------------------------------------------------------
class StableAudioError(Exception):
    """The service refused or failed a request. `status` is the HTTP status (or the failed job's),
    `detail` the service's `detail` as sent (a string, or FastAPI's list of `{loc, msg, type}` for 422)."""

    def __init__(self, status: int, detail: Any, retry_after: float | None = None) -> None:
        self.status = status
        self.detail = detail
        self.retry_after = retry_after
        super().__init__(f"{status}: {self.message}")

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The validation errors of a 422 (empty for other statuses)."""
        return [e for e in self.detail if isinstance(e, dict)] if isinstance(self.detail, list) else []

    @property
    def loc(self) -> tuple[str | int, ...] | None:
        """Where the first validation error points, as sent: e.g. `("body", "duration")`."""
        errors = self.errors
        return tuple(errors[0].get("loc") or ()) if errors else None

    @property
    def field(self) -> str | None:
        """The first refused field without its `body`/`query` prefix: `duration`, `inpaint_regions.0.end_s`."""
        loc = self.loc
        if not loc:
            return None
        parts = loc[1:] if loc[0] in ("body", "query", "path", "header") and len(loc) > 1 else loc
        return ".".join(map(str, parts))

    @property
    def message(self) -> str:
        """The service's reason in one line (for 422: `field: message; ...`)."""
        if isinstance(self.detail, list):
            parts = []
            for e in self.detail:
                if isinstance(e, dict):
                    loc = e.get("loc") or ()
                    where = ".".join(map(str, loc[1:] if len(loc) > 1 else loc))
                    parts.append(f"{where}: {e.get('msg', '')}" if where else str(e.get("msg", "")))
                else:
                    parts.append(str(e))
            return "; ".join(parts)
        return str(self.detail)


class DeadlineRefused(StableAudioError):
    """503 at once: the service estimated that the request would finish after its deadline (`max_wait_s`, the
    `Request-Timeout` header or the server's default), or that taking it would make an accepted request late.
    Not retried by the client: the caller's deadline is the caller's to weigh against `retry_after` (when the
    service estimates the same request would make it). `estimate_s`: seconds to the result had it been queued;
    `alone_s`: what it takes on an idle server (above `max_wait_s`, no retry can succeed)."""

    def __init__(self, status: int, detail: Any, retry_after: float | None, body: Mapping[str, Any]) -> None:
        super().__init__(status, detail, retry_after)
        self.estimate_s: float | None = body.get("estimate_s")
        self.max_wait_s: float | None = body.get("max_wait_s")
        self.alone_s: float | None = body.get("alone_s")


class JobFailed(StableAudioError):
    """A job ended `failed` (its `status` is what `/predict` would have answered, e.g. 500 or 503)."""


class JobCancelled(StableAudioError):
    """A job was cancelled (`DELETE /jobs/{id}`, or the service shut down before it ran)."""


@dataclass(frozen=True)
class ResponseMeta:
    """Ids that tie a result to the service's logs and traces."""

    client_job_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None


@dataclass(frozen=True)
class GenerationResult:
    """One generated clip: the encoded file's bytes plus the facts about it."""

    audio: bytes
    sample_rate: int
    duration: float
    seed: int
    format: str
    meta: ResponseMeta
    channels: int
    num_samples: int
    job_id: str | None = None
    timings: dict[str, float | None] | None = None
    # The gain (dB) the request's `loudness` applied (`X-Loudness-Gain-dB`); None when it asked for none.
    loudness_gain_db: float | None = None
    others: tuple[GenerationResult, ...] = ()  # with num_outputs > 1: the takes after this one, in seed order

    @property
    def outputs(self) -> tuple[GenerationResult, ...]:
        """Every take (`num_outputs`), this one first; seeds seed, seed + 1, ..."""
        return (self, *self.others)

    def to_numpy(self) -> np.ndarray:
        """The audio decoded as float32, shaped (channels, samples)."""
        import io

        import soundfile as sf

        data, _ = sf.read(io.BytesIO(self.audio), dtype="float32", always_2d=True)
        return data.T.copy()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the file (its format is `self.format`, whatever the path's extension says)."""
        out = Path(path)
        out.write_bytes(self.audio)
        return out


@dataclass(frozen=True)
class JobEvent:
    """One event of a job's stream: `queued` (position, eta_s), `step` (step, total, eta_s), then `done`, `failed`
    or `cancelled`. The `done` event carries the fetched `result`."""

    type: str
    job_id: str
    data: dict[str, Any] = field(default_factory=dict)
    result: GenerationResult | None = None

    @property
    def step(self) -> int | None:
        return self.data.get("step")

    @property
    def total(self) -> int | None:
        return self.data.get("total")

    @property
    def position(self) -> int | None:
        return self.data.get("position")

    @property
    def eta_s(self) -> float | None:
        """The service's estimate of the seconds left until the result (`queued` and `step` events); None before
        the service has measured its speed."""
        return self.data.get("eta_s")


ProgressCallback = Callable[[JobEvent], Any]


# -- the parts both clients share (no I/O) -----------------------------------------------------------
def _read_upload(name: str, value: AudioSource) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str | os.PathLike):
        data = Path(value).read_bytes()
    else:
        raise TypeError(f"{name} must be bytes or a file path, not {type(value).__name__}")
    return base64.b64encode(data).decode("ascii")


def _region(value: Any) -> Any:
    """`(start_s, end_s)` pairs are accepted for `inpaint_regions` besides the service's dicts."""
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        return {"start_s": value[0], "end_s": value[1]}
    return value


@dataclass(frozen=True)
class Lora:
    """One adapter of a request (`GET /loras` names them) with Stability's per-adapter controls: its strength on
    the DiT, on the conditioner (None: the same), the sigma interval `(min, max)` in which it acts on the DiT (None:
    every step), and substrings of DiT layer names where it does not act."""

    name: str
    strength: float = 1.0
    conditioner_strength: float | None = None
    interval: tuple[float, float] | None = None
    layer_filter: Sequence[str] | None = None

    def as_json(self) -> dict[str, Any]:
        """The request item, unset controls left out (the service's defaults apply)."""
        item: dict[str, Any] = {"name": self.name, "strength": self.strength}
        if self.conditioner_strength is not None:
            item["conditioner_strength"] = self.conditioner_strength
        if self.interval is not None:
            item["interval"] = list(self.interval)
        if self.layer_filter is not None:
            item["layer_filter"] = list(self.layer_filter)
        return item


def _lora(value: Any) -> Any:
    """`Lora` objects and bare names are accepted for `loras` besides the service's dicts."""
    if isinstance(value, Lora):
        return value.as_json()
    if isinstance(value, str):
        return {"name": value}
    return value


def build_body(prompt: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body for `/predict` and `/jobs`: the service's field names, None values left out (the
    model's defaults apply), uploads read and base64-encoded. Unknown names are sent as they are, so
    the service's 422 names them."""
    body: dict[str, Any] = {"prompt": prompt}
    for name, value in params.items():
        if value is None:
            continue
        if name in UPLOAD_FIELDS:
            body[UPLOAD_FIELDS[name]] = _read_upload(name, value)
        elif name == "inpaint_regions":
            body[name] = [_region(r) for r in value]
        elif name == "loras":
            body[name] = [_lora(x) for x in value]
        else:
            body[name] = value
    return body


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error(response: httpx.Response) -> StableAudioError:
    try:
        body = response.json()
        detail = body.get("detail", response.text)
    except (ValueError, AttributeError):
        body, detail = {}, response.text or response.reason_phrase
    if _is_deadline_refusal(response, body):
        return DeadlineRefused(response.status_code, detail, _retry_after(response), body)
    return StableAudioError(response.status_code, detail, _retry_after(response))


def _is_deadline_refusal(response: httpx.Response, body: Any) -> bool:
    """A 503 whose body carries the service's estimate: refused for a deadline, not for being unavailable."""
    return response.status_code == 503 and isinstance(body, dict) and "estimate_s" in body


def _result_from_audio(response: httpx.Response, job_id: str | None, timings: dict | None) -> GenerationResult:
    """A result from the binary answer (`/predict` with `Accept: audio/...`, `/jobs/{id}/audio`):
    the file is the body, its facts are in `X-` headers."""
    h = response.headers
    return GenerationResult(
        audio=response.content,
        sample_rate=int(h["x-sample-rate"]),
        duration=float(h["x-duration"]),
        seed=int(h["x-seed"]),
        format=h["x-format"],
        meta=ResponseMeta(h.get("x-client-job-id"), h.get("x-trace-id"), h.get("x-span-id")),
        channels=int(h["x-channels"]),
        num_samples=int(h["x-num-samples"]),
        job_id=job_id,
        timings=timings,
        loudness_gain_db=float(h["x-loudness-gain-db"]) if "x-loudness-gain-db" in h else None,
    )


def _event(job_id: str, sse: ServerSentEvent) -> JobEvent | None:
    if not sse.data:  # keep-alive comments never reach here; an empty data line carries nothing
        return None
    data = sse.json()
    return JobEvent(type=data.get("type") or sse.event, job_id=job_id, data=data)


def _terminal_error(event: JobEvent) -> StableAudioError:
    if event.type == "cancelled":
        return JobCancelled(409, event.data.get("error") or "the job was cancelled")
    return JobFailed(int(event.data.get("status") or 500), event.data.get("error") or "generation failed")


def _takes(params: Mapping[str, Any]) -> int:
    return int(params.get("num_outputs") or 1)


def _with_takes(takes: list[GenerationResult]) -> GenerationResult:
    """The first take, carrying the others."""
    return dataclasses.replace(takes[0], others=tuple(takes[1:]))


def _needs_job(params: Mapping[str, Any], models: Callable[[], Mapping[str, Any]]) -> bool:
    """Whether `generate` must go through `/jobs`: several takes (one audio answer holds one), or long-form audio
    (a duration above the model's longest clip, or a window), which `/predict` does not make."""
    if _takes(params) > 1 or params.get("window_s") is not None or params.get("overlap_s") is not None:
        return True
    duration = params.get("duration")
    if duration is None:
        return False
    info = models()
    longest = info.get("max_duration")
    # a model that cannot continue (no `capabilities.longform`) gets the duration on /predict, whose 422 names its bound
    can_continue = bool((info.get("capabilities") or {}).get("longform"))
    return can_continue and longest is not None and float(duration) > float(longest)


def _accept(params: Mapping[str, Any]) -> dict[str, str]:
    """Ask `/predict` for the file itself; an unknown format is left to the service to refuse (422)."""
    return {"Accept": MEDIA_TYPES.get(params.get("format") or "wav", "audio/wav")}


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class _Policy:
    """Retry policy: which answers are retried, and how long to wait before the next attempt."""

    def __init__(self, retries: int, max_retry_wait: float) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.retries = retries
        self.max_retry_wait = max_retry_wait

    def delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying after `attempt` (0-based) got `response`, or None: do not retry (nor a
        deadline refusal: a retry would make the caller wait past the deadline it gave, see `DeadlineRefused`)."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.retries:
            return None
        if response.status_code == 503:
            try:
                if _is_deadline_refusal(response, response.json()):
                    return None
            except ValueError:
                pass
        after = _retry_after(response)
        if after is None:  # no hint: exponential backoff with jitter
            after = min(2.0**attempt, 30.0) * (0.5 + random.random() / 2)
        return min(after, self.max_retry_wait)


# -- sync ----------------------------------------------------------------------------------------
class StableAudioClient:
    """Blocking client. `retries` bounds the re-attempts after a 429 or 503 (each waits the server's
    `Retry-After`, at most `max_retry_wait` seconds); other errors raise `StableAudioError` at once.
    Extra keyword arguments go to `httpx.Client` (e.g. `transport`, `verify`, `event_hooks`)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT_S,
        **httpx_options: Any,
    ) -> None:
        self._policy = _Policy(retries, max_retry_wait)
        self._http = httpx.Client(base_url=base_url, headers=_headers(token), timeout=timeout, **httpx_options)
        self._sleep: Callable[[float], None] = time.sleep  # tests replace it to observe the waits
        self._model_info: Mapping[str, Any] | None = None  # GET /models, once: is a duration long-form?

    def __enter__(self) -> StableAudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One call with the retry policy; raises `StableAudioError` for any non-2xx answer."""
        attempt = 0
        while True:
            response = self._http.request(method, url, **kwargs)
            if response.is_success:
                return response
            wait = self._policy.delay(response, attempt)
            if wait is None:
                raise _error(response)
            self._sleep(wait)
            attempt += 1

    # service
    def health(self) -> dict[str, Any]:
        """`GET /health`: the body also while loading or failed (503 answers `status` loading/error)."""
        response = self._http.get("/health")
        if response.status_code not in (200, 503):
            raise _error(response)
        return response.json()

    def models(self) -> dict[str, Any]:
        """`GET /models`: the loaded model, its request fields' defaults and bounds, its capabilities."""
        return self._request("GET", "/models").json()

    # jobs
    def submit(self, prompt: str, **params: Any) -> dict[str, Any]:
        """`POST /jobs`: queue a generation; returns `{id, status, position, eta_s, meta}` at once (`eta_s`: the
        service's estimate of the seconds until the result). `max_wait_s=` gives the request a deadline: the
        service refuses at once (`DeadlineRefused`) what it estimates it cannot finish by then."""
        return self._request("POST", "/jobs", json=build_body(prompt, params)).json()

    def job(self, job_id: str) -> dict[str, Any]:
        """`GET /jobs/{id}`: status, step/total, timings, and `result` once done."""
        return self._request("GET", f"/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        """`DELETE /jobs/{id}`: cancel a queued or running job."""
        return self._request("DELETE", f"/jobs/{job_id}").json()

    def fetch_audio(self, job_id: str, timings: dict | None = None, index: int = 0) -> GenerationResult:
        """`GET /jobs/{id}/audio?index=i`: a finished job's file (take `index`) and facts."""
        response = self._request("GET", f"/jobs/{job_id}/audio", params={"index": index})
        return _result_from_audio(response, job_id, timings)

    def _fetch_takes(self, job_id: str, timings: dict | None, takes: int) -> GenerationResult:
        return _with_takes([self.fetch_audio(job_id, timings, i) for i in range(takes)])

    def events(self, job_id: str) -> Iterator[JobEvent]:
        """A job's events up to and including the final one (`done`, `failed`, `cancelled`). The stream
        starts with a snapshot of the job's state, so re-opening it after a break loses nothing."""
        for _ in range(MAX_EVENT_RECONNECTS + 1):
            with connect_sse(self._http, "GET", f"/jobs/{job_id}/events") as source:
                if not source.response.is_success:
                    source.response.read()
                    raise _error(source.response)
                for sse in source.iter_sse():
                    event = _event(job_id, sse)
                    if event is None:
                        continue
                    yield event
                    if event.type in TERMINAL_EVENTS:
                        return
        raise StableAudioError(502, f"the event stream of job {job_id} kept ending without a final event")

    def stream(self, prompt: str, **params: Any) -> Iterator[JobEvent]:
        """Submit a job and yield its events; the `done` event carries the `result`. A failed or
        cancelled job raises `JobFailed` / `JobCancelled`. Closing the iterator early cancels the job."""
        job_id = self.submit(prompt, **params)["id"]
        finished = False
        try:
            with closing(self.events(job_id)) as events:
                for event in events:
                    if event.type == "done":
                        finished = True
                        result = self._fetch_takes(job_id, event.data.get("timings"), _takes(params))
                        yield JobEvent("done", job_id, event.data, result)
                        return
                    if event.type in TERMINAL_EVENTS:
                        finished = True
                        raise _terminal_error(event)
                    yield event
        finally:
            if not finished:
                self._cancel_quietly(job_id)

    def _cancel_quietly(self, job_id: str) -> None:
        try:
            self._http.delete(f"/jobs/{job_id}")
        except httpx.HTTPError:
            pass

    def generate(self, prompt: str, *, on_progress: ProgressCallback | None = None, **params: Any) -> GenerationResult:
        """Generate one clip and return it. Keyword arguments are the request's fields (`duration`,
        `num_inference_steps`, `guidance_scale`, `seed`, `negative_prompt`, `format`, `client_job_id`,
        ...); `init_audio` / `inpaint_audio` take bytes or a path. With `on_progress`, every job event
        (`queued`, `step`, `done`) is passed to it while the clip is made. `num_outputs=N`: the result's `outputs`
        are the N takes; a duration above the model's longest clip (or `window_s`) is long-form audio: both go
        through `/jobs`."""
        if on_progress is None and not _needs_job(params, self._models):
            response = self._request("POST", "/predict", json=build_body(prompt, params), headers=_accept(params))
            return _result_from_audio(response, None, None)
        with closing(self.stream(prompt, **params)) as events:
            for event in events:
                if on_progress is not None:
                    on_progress(event)
                if event.result is not None:
                    return event.result
        raise StableAudioError(502, "the job's events ended without a result")  # stream() never lets this happen

    def _models(self) -> Mapping[str, Any]:
        if self._model_info is None:
            self._model_info = self.models()
        return self._model_info


# -- async ---------------------------------------------------------------------------------------
class AsyncStableAudioClient:
    """The same API as `StableAudioClient`, awaitable; `stream()` is an async iterator and
    `on_progress` may be a plain function or a coroutine function."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT_S,
        **httpx_options: Any,
    ) -> None:
        self._policy = _Policy(retries, max_retry_wait)
        self._http = httpx.AsyncClient(base_url=base_url, headers=_headers(token), timeout=timeout, **httpx_options)
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._model_info: Mapping[str, Any] | None = None  # GET /models, once: is a duration long-form?

    async def __aenter__(self) -> AsyncStableAudioClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            response = await self._http.request(method, url, **kwargs)
            if response.is_success:
                return response
            wait = self._policy.delay(response, attempt)
            if wait is None:
                raise _error(response)
            await self._sleep(wait)
            attempt += 1

    async def health(self) -> dict[str, Any]:
        response = await self._http.get("/health")
        if response.status_code not in (200, 503):
            raise _error(response)
        return response.json()

    async def models(self) -> dict[str, Any]:
        return (await self._request("GET", "/models")).json()

    async def submit(self, prompt: str, **params: Any) -> dict[str, Any]:
        return (await self._request("POST", "/jobs", json=build_body(prompt, params))).json()

    async def job(self, job_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/jobs/{job_id}")).json()

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return (await self._request("DELETE", f"/jobs/{job_id}")).json()

    async def fetch_audio(self, job_id: str, timings: dict | None = None, index: int = 0) -> GenerationResult:
        response = await self._request("GET", f"/jobs/{job_id}/audio", params={"index": index})
        return _result_from_audio(response, job_id, timings)

    async def _fetch_takes(self, job_id: str, timings: dict | None, takes: int) -> GenerationResult:
        return _with_takes([await self.fetch_audio(job_id, timings, i) for i in range(takes)])

    async def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        for _ in range(MAX_EVENT_RECONNECTS + 1):
            async with aconnect_sse(self._http, "GET", f"/jobs/{job_id}/events") as source:
                if not source.response.is_success:
                    await source.response.aread()
                    raise _error(source.response)
                async for sse in source.aiter_sse():
                    event = _event(job_id, sse)
                    if event is None:
                        continue
                    yield event
                    if event.type in TERMINAL_EVENTS:
                        return
        raise StableAudioError(502, f"the event stream of job {job_id} kept ending without a final event")

    async def stream(self, prompt: str, **params: Any) -> AsyncIterator[JobEvent]:
        job_id = (await self.submit(prompt, **params))["id"]
        finished = False
        try:
            async with aclosing(self.events(job_id)) as events:
                async for event in events:
                    if event.type == "done":
                        finished = True
                        result = await self._fetch_takes(job_id, event.data.get("timings"), _takes(params))
                        yield JobEvent("done", job_id, event.data, result)
                        return
                    if event.type in TERMINAL_EVENTS:
                        finished = True
                        raise _terminal_error(event)
                    yield event
        finally:
            if not finished:
                try:
                    await self._http.delete(f"/jobs/{job_id}")
                except httpx.HTTPError:
                    pass

    async def generate(
        self, prompt: str, *, on_progress: ProgressCallback | None = None, **params: Any
    ) -> GenerationResult:
        if self._model_info is None and params.get("duration") is not None:
            self._model_info = await self.models()
        if on_progress is None and not _needs_job(params, lambda: self._model_info or {}):
            body = build_body(prompt, params)
            response = await self._request("POST", "/predict", json=body, headers=_accept(params))
            return _result_from_audio(response, None, None)
        async with aclosing(self.stream(prompt, **params)) as events:
            async for event in events:
                outcome = on_progress(event) if on_progress is not None else None
                if inspect.isawaitable(outcome):
                    await outcome
                if event.result is not None:
                    return event.result
        raise StableAudioError(502, "the job's events ended without a result")
