"""The Python client and `generate --server` against a real served tiny model (uvicorn on a free loopback
port): sync and async, progress by callback and iterator, Retry-After retries, errors naming the field."""

from __future__ import annotations

import asyncio
import io
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from stable_audio_service.cli import app as cli_app
from stable_audio_service.client import (
    AsyncStableAudioClient,
    JobCancelled,
    StableAudioClient,
    StableAudioError,
)
from stable_audio_service.config import Settings

from .conftest import LiveServer
from .fake_model import step_when_followed, wait_until

# 1 s clips, 10 steps, and only the latents a 1 s clip needs: a generation takes a fraction of a second.
FAST = {"duration": 1.0, "num_inference_steps": 10}
TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def live(tiny_dir):
    server = LiveServer(Settings(model=str(tiny_dir), window="fit", batch_wait_ms=0, api_key=TOKEN))
    yield server
    server.stop()


@pytest.fixture()
def followed(live, monkeypatch):
    """For tests that check the step events a client sees: the jobs they follow wait for their stream to open."""
    step_when_followed(monkeypatch, live.engine)


@pytest.fixture()
def client(live):
    with StableAudioClient(live.url, token=TOKEN) as c:
        yield c


def counting_hooks(counter: list[str]) -> dict:
    """httpx event hooks that record every request the client sends (method and path)."""
    return {"request": [lambda request: counter.append(f"{request.method} {request.url.path}")]}


def test_generate_returns_the_file_and_its_facts(client):
    result = client.generate("rain on a tin roof", seed=7, client_job_id="client-1", format="flac", **FAST)
    info = sf.info(io.BytesIO(result.audio))
    assert info.format == "FLAC" and result.format == "flac"
    assert (result.sample_rate, result.channels, result.num_samples) == (info.samplerate, info.channels, info.frames)
    assert result.num_samples == 44100 and result.duration == pytest.approx(1.0)
    assert result.seed == 7
    assert result.meta.client_job_id == "client-1"
    assert len(result.meta.trace_id) == 32 and len(result.meta.span_id) == 16
    samples = result.to_numpy()
    assert samples.dtype == np.float32 and samples.shape == (2, 44100)
    assert np.abs(samples).max() > 0  # noise, not silence


def test_same_seed_same_audio_through_both_paths(client, followed):
    """`/predict` (no progress) and the jobs path (progress) are the same generation."""
    direct = client.generate("wind", seed=11, **FAST)
    events = []
    tracked = client.generate("wind", seed=11, on_progress=events.append, **FAST)
    np.testing.assert_array_equal(direct.to_numpy(), tracked.to_numpy())
    assert tracked.job_id and tracked.timings and tracked.timings["denoise_s"] > 0
    kinds = [e.type for e in events]
    assert kinds[0] in ("queued", "step") and kinds[-1] == "done"  # the stream opens with a snapshot
    steps = [(e.step, e.total) for e in events if e.type == "step"]
    assert steps[-1] == (10, 10) and [s for s, _ in steps] == sorted(s for s, _ in steps)
    assert events[-1].result is tracked


def test_stream_iterator_and_upload(client, followed, tmp_path):
    """`stream()` yields the events, the last carrying the result; `init_audio` takes a path or bytes."""
    source = tmp_path / "source.wav"
    sf.write(source, np.zeros((22050, 1), dtype=np.float32), 22050)
    events = list(client.stream("drums", seed=3, init_audio=source, **FAST))
    assert [e.type for e in events][-1] == "done"
    assert any(e.type == "step" for e in events)
    done = events[-1].result
    assert done.seed == 3 and done.to_numpy().shape == (2, 44100)
    # the same bytes as an upload: accepted too (a broken upload would be a 422 naming init_audio_b64)
    with pytest.raises(StableAudioError) as bad:
        client.generate("drums", init_audio=b"not audio", **FAST)
    assert bad.value.status == 422 and bad.value.field == "init_audio_b64"
    assert client.generate("drums", seed=3, init_audio=source.read_bytes(), **FAST).seed == 3


def test_422_names_the_field_and_is_not_retried(live):
    sent: list[str] = []
    with StableAudioClient(live.url, token=TOKEN, event_hooks=counting_hooks(sent)) as c:
        with pytest.raises(StableAudioError) as err:
            c.generate("x", duration=99.0, num_inference_steps=10)
        assert err.value.status == 422
        assert err.value.loc == ("body", "duration") and err.value.field == "duration"
        assert "duration" in str(err.value) and "30" in err.value.message  # the model's bound, from the service
        with pytest.raises(StableAudioError) as unknown:
            c.generate("x", durration=2.0)
        assert unknown.value.field == "durration"
    # one attempt each; the model's limits are read once (is a duration long-form?), not per call
    assert sent == ["GET /models", "POST /predict", "POST /predict"]


def test_token_is_required_and_sent(live):
    with StableAudioClient(live.url) as anonymous:
        assert anonymous.health()["status"] == "ok"  # /health is open
        with pytest.raises(StableAudioError) as err:
            anonymous.models()
        assert err.value.status == 401
    with StableAudioClient(live.url, token=TOKEN) as c:
        described = c.models()
        assert described["fields"]["duration"]["maximum"] == 30


def test_cancel_a_job(client, live, step_hold):
    """A job cancelled mid-stream raises JobCancelled; its audio is then refused with 409. The job is held after
    its first step until it has been cancelled, so it cannot finish first on a fast machine."""
    hold = step_hold(live.engine.model, "long", after=1)
    job_id = None
    with pytest.raises(JobCancelled) as err:
        for event in client.stream("long", **FAST):
            if event.type == "step":
                job_id = event.job_id
                assert client.cancel(job_id)["id"] == job_id
                hold.release()
    assert err.value.status == 409
    with pytest.raises(StableAudioError) as gone:
        client.fetch_audio(job_id)
    assert gone.value.status == 409 and "cancelled" in gone.value.message


def test_closing_the_stream_early_cancels_the_job(client, live, step_hold):
    hold = step_hold(live.engine.model, "long")  # the job cannot finish before the service sees the stream close
    events = client.stream("long", **FAST)
    first = next(events)
    assert first.type in ("queued", "step")
    events.close()
    job = live.engine.get(first.job_id)
    wait_until(lambda: job.cancel_requested or job.status.value == "cancelled", "the closed stream cancelled the job")
    hold.release()
    assert [e.type for e in client.events(first.job_id)][-1] == "cancelled"


def _wait_running(client: StableAudioClient, job_id: str) -> None:
    deadline = time.monotonic() + 60
    while client.job(job_id)["status"] != "running":
        assert time.monotonic() < deadline, "the blocking job never started"
        time.sleep(0.02)


@pytest.fixture()
def full_server(tiny_dir):
    """A service that holds one running and one queued job: the next request is answered 429."""
    server = LiveServer(Settings(model=str(tiny_dir), window="fit", batch_wait_ms=0, max_batch_size=1, queue_size=1))
    yield server
    server.stop()


def retry_after_hooks(counter: list[str], said: list[float]) -> dict:
    """`counting_hooks`, plus the Retry-After of every 429 the service answers (`said`)."""

    def response(r: httpx.Response) -> None:
        if r.status_code == 429:
            said.append(float(r.headers["retry-after"]))

    return {**counting_hooks(counter), "response": [response]}


def test_retries_429_honouring_retry_after(full_server, step_hold):
    waits: list[float] = []
    sent: list[str] = []
    said: list[float] = []
    hold = step_hold(full_server.engine.model, "blocker")  # the blockers run until the test frees the queue
    with StableAudioClient(full_server.url, retries=3, event_hooks=retry_after_hooks(sent, said)) as c:
        running = c.submit("blocker", **FAST)["id"]
        _wait_running(c, running)
        queued = c.submit("blocker", **FAST)["id"]
        sent.clear()

        def sleep(seconds: float) -> None:  # the client's wait: record it; free the queue on the second one
            waits.append(seconds)
            if len(waits) == 2:
                c.cancel(queued)
                c.cancel(running)
                hold.release()

        c._sleep = sleep
        result = c.generate("after the queue drained", seed=5, **FAST)
    assert result.seed == 5
    # the server's Retry-After each time: from its wait estimate, whole seconds, at least one
    assert waits == said and len(said) == 2 and all(s >= 1 and s == int(s) for s in said)
    assert sent.count("POST /predict") == 3  # two 429s, then the one that was served


def test_retries_are_bounded(full_server, step_hold):
    waits: list[float] = []
    hold = step_hold(full_server.engine.model, "blocker")  # the queue stays full however fast the machine is
    said: list[float] = []
    with StableAudioClient(
        full_server.url, retries=2, max_retry_wait=0.5, event_hooks=retry_after_hooks([], said)
    ) as c:
        running = c.submit("blocker", **FAST)["id"]
        _wait_running(c, running)
        queued = c.submit("blocker", **FAST)["id"]
        c._sleep = waits.append
        with pytest.raises(StableAudioError) as err:
            c.generate("never fits", **FAST)
        c.cancel(queued)
        c.cancel(running)
        hold.release()
    assert err.value.status == 429 and err.value.retry_after == said[-1] >= 1
    assert "queue full" in err.value.message
    assert waits == [0.5, 0.5]  # capped by max_retry_wait; 2 retries, 3 attempts


def test_async_client(live, followed):
    async def main():
        waits = []
        async with AsyncStableAudioClient(live.url, token=TOKEN) as c:
            plain = await c.generate("bells", seed=21, **FAST)

            async def on_progress(event):  # a coroutine callback is awaited
                waits.append(event.type)

            tracked = await c.generate("bells", seed=21, on_progress=on_progress, **FAST)
            streamed = [e async for e in c.stream("bells", seed=21, **FAST)]
            with pytest.raises(StableAudioError) as err:
                await c.generate("bells", guidance_scale=50.0)
        return plain, tracked, streamed, waits, err.value

    plain, tracked, streamed, kinds, err = asyncio.run(main())
    np.testing.assert_array_equal(plain.to_numpy(), tracked.to_numpy())
    np.testing.assert_array_equal(plain.to_numpy(), streamed[-1].result.to_numpy())
    assert "step" in kinds and kinds[-1] == "done"
    assert err.status == 422 and err.field == "guidance_scale"


def test_retry_after_http_date_and_no_header():
    """Retry-After as an HTTP date is honoured; without one the wait is a bounded backoff."""
    answers = iter(
        [
            httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, json={"detail": "x"}),
            httpx.Response(503, json={"detail": "loading"}),
            httpx.Response(200, json={"name": "m"}),
        ]
    )
    waits: list[float] = []
    transport = httpx.MockTransport(lambda request: next(answers))
    with StableAudioClient("http://stub", transport=transport, max_retry_wait=5) as c:
        c._sleep = waits.append
        assert c.models() == {"name": "m"}
    assert waits[0] == 0.0  # a date in the past: retry at once
    assert 0 < waits[1] <= 5


def test_async_retries_then_gives_up():
    sent = []

    def answer(request):
        sent.append(request.url.path)
        return httpx.Response(429, headers={"Retry-After": "2"}, json={"detail": "queue full (1 waiting)"})

    async def main():
        waits = []

        async def sleep(seconds):
            waits.append(seconds)

        async with AsyncStableAudioClient("http://stub", retries=2, transport=httpx.MockTransport(answer)) as c:
            c._sleep = sleep
            with pytest.raises(StableAudioError) as err:
                await c.generate("x")
        return waits, err.value

    waits, err = asyncio.run(main())
    assert waits == [2.0, 2.0] and sent == ["/predict"] * 3
    assert err.status == 429 and err.message == "queue full (1 waiting)"


runner = CliRunner()


def test_cli_generate_server(live, followed, tmp_path):
    out = tmp_path / "remote" / "rain.ogg"
    args = ["generate", "rain", "-o", str(out), "--server", live.url, "--token", TOKEN]
    result = runner.invoke(cli_app, [*args, "--duration", "1", "--steps", "10", "--seed", "9"])
    assert result.exit_code == 0, result.output
    assert "seed 9" in result.output and "10/10" in result.output
    info = sf.info(str(out))
    assert info.format == "OGG" and info.samplerate == 44100 and info.channels == 2
    data, _ = sf.read(str(out), dtype="float32")
    assert data.shape[0] > 0.9 * 44100

    bad = runner.invoke(cli_app, [*args[:3], str(tmp_path / "bad.wav"), *args[4:], "--duration", "31"])
    assert bad.exit_code == 2 and "duration" in bad.output and "30" in bad.output
    assert not (tmp_path / "bad.wav").exists()
    denied = runner.invoke(cli_app, [*args[:-2], "--token", "wrong", "--duration", "1", "--steps", "10"])
    assert denied.exit_code == 2 and "bearer token" in denied.output and "Traceback" not in denied.output


def test_cli_generate_server_unreachable(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = runner.invoke(cli_app, ["generate", "x", "-o", str(tmp_path / "a.wav"), "--server", url])
    assert result.exit_code == 2 and "cannot reach" in result.output
    assert "denoising" not in result.output  # no progress bar before the first step
