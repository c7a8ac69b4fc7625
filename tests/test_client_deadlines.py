"""The client and deadlines, against stub answers: a deadline refusal is raised at once with its estimate (not
retried into the caller's deadline), other 503s and 429s are still retried, and events expose `eta_s`."""

from __future__ import annotations

import json

import httpx
import pytest

from stable_audio_service.client import DeadlineRefused, JobEvent, StableAudioClient, StableAudioError

REFUSAL = {
    "detail": "refused: estimated to finish in 42.0 s, after its deadline of 30 s; retry in about 12 s",
    "estimate_s": 42.0,
    "max_wait_s": 30.0,
    "retry_after_s": 12.0,
    "alone_s": 6.5,
}


def stub(*answers: httpx.Response) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    sent: list[httpx.Request] = []
    it = iter(answers)

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return next(it)

    return httpx.MockTransport(answer), sent


def test_a_deadline_refusal_is_raised_at_once_with_its_estimate():
    transport, sent = stub(httpx.Response(503, headers={"Retry-After": "12"}, json=REFUSAL))
    waits: list[float] = []
    with StableAudioClient("http://stub", transport=transport) as c:
        c._sleep = waits.append
        with pytest.raises(DeadlineRefused) as refused:
            c.generate("rain", max_wait_s=30)
    err = refused.value
    assert isinstance(err, StableAudioError) and err.status == 503 and err.retry_after == 12.0
    assert (err.estimate_s, err.max_wait_s, err.alone_s) == (42.0, 30.0, 6.5) and "deadline of 30 s" in err.message
    assert waits == [] and len(sent) == 1
    assert json.loads(sent[0].content)["max_wait_s"] == 30


def test_an_unavailable_service_is_still_retried():
    transport, sent = stub(
        httpx.Response(503, headers={"Retry-After": "3"}, json={"detail": "the service is shutting down"}),
        httpx.Response(200, json={"name": "m"}),
    )
    waits: list[float] = []
    with StableAudioClient("http://stub", transport=transport) as c:
        c._sleep = waits.append
        assert c.models() == {"name": "m"}
    assert waits == [3.0] and len(sent) == 2


def test_events_expose_the_estimate():
    assert JobEvent("queued", "j", {"type": "queued", "position": 2, "eta_s": 7.5}).eta_s == 7.5
    assert JobEvent("step", "j", {"type": "step", "step": 1, "total": 4}).eta_s is None
