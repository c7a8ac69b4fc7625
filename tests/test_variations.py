"""Variations in one request (`num_outputs`): takes from seeds seed, seed + 1, ... run as rows of one batch, each
bitwise the solo request with its seed; the /predict and /jobs answers, the 406 for one audio file, the job store's
byte bound, admission and estimates counting a job of N takes as N rows, and cancel."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
from typer.testing import CliRunner

from stable_audio_service.cli import app as cli_app
from stable_audio_service.client import AsyncStableAudioClient, StableAudioClient
from stable_audio_service.config import Settings
from stable_audio_service.engine import Engine, JobStatus
from stable_audio_service.engine.estimates import StepTimes
from stable_audio_service.engine.jobs import Job, JobResult
from stable_audio_service.engine.scheduler import Scheduler
from stable_audio_service.engine.store import JobStore
from stable_audio_service.limits import MAX_SEED
from stable_audio_service.models.tiny import make_tiny

from .conftest import LiveServer
from .fake_model import FakeModel, Gate, Watcher, params

FAST = {"prompt": "rain on a tin roof", "duration": 1.0, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    path = make_tiny(tmp_path_factory.mktemp("variations") / "sa3", family="sa3", structure="small")
    server = LiveServer(Settings(model=str(path), batch_wait_ms=0, max_batch_size=4, estimate_warm_up=False))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sa3(live):
    with httpx.Client(base_url=live.url, timeout=120) as c:
        c.app = live.app
        yield c


def test_four_takes_equal_four_solo_requests_bitwise(sa3):
    engine = sa3.app.state.service.engine
    batches = engine.stats["batches"]
    r = sa3.post("/predict", json={**FAST, "seed": 500, "num_outputs": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert engine.stats["batches"] == batches + 1 and engine.stats["max_batch_seen"] >= 4  # one batch of 4 rows
    # the design note's keys are the first take's
    assert body["seed"] == 500 and body["audio_b64"] == body["outputs"][0]["audio_b64"]
    assert [o["seed"] for o in body["outputs"]] == [500, 501, 502, 503]
    for take in body["outputs"]:
        solo = sa3.post("/predict", json={**FAST, "seed": take["seed"]}).json()
        assert "outputs" not in solo or solo["outputs"] is None
        assert base64.b64decode(solo["audio_b64"]) == base64.b64decode(take["audio_b64"])  # the same file, bitwise
    assert len({o["audio_b64"] for o in body["outputs"]}) == 4


def test_jobs_serve_each_take_by_index(sa3):
    r = sa3.post("/jobs", json={**FAST, "seed": 700, "num_outputs": 3})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    with sa3.stream("GET", f"/jobs/{job_id}/events") as events:
        for line in events.iter_lines():
            if line.startswith("event: done"):
                break
    view = sa3.get(f"/jobs/{job_id}").json()
    result = view["result"]
    assert [o["seed"] for o in result["outputs"]] == [700, 701, 702]
    files = []
    for i, out in enumerate(result["outputs"]):
        a = sa3.get(out["audio_url"])
        assert a.status_code == 200 and a.headers["x-seed"] == str(700 + i) and a.headers["x-take"] == f"{i}/3"
        assert f"-{i}." in a.headers["content-disposition"]
        files.append(a.content)
    assert sa3.get(f"/jobs/{job_id}/audio").content == files[0]  # index 0 by default
    assert result["bytes"] == sum(len(f) for f in files)
    solo = sa3.post("/predict", json={**FAST, "seed": 702}, headers={"accept": "audio/wav"})
    assert solo.content == files[2]
    for bad in (3, -1):
        r = sa3.get(f"/jobs/{job_id}/audio?index={bad}")
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "index"]


def test_one_audio_file_cannot_hold_several_takes(sa3):
    r = sa3.post("/predict", json={**FAST, "num_outputs": 2}, headers={"accept": "audio/wav"})
    assert r.status_code == 406 and "num_outputs" in r.json()["detail"] and "outputs" in r.json()["detail"]


def test_bad_num_outputs_name_the_field(sa3):
    for body, field in (
        ({**FAST, "num_outputs": 9}, "num_outputs"),
        ({**FAST, "num_outputs": 0}, "num_outputs"),
        ({**FAST, "num_outputs": 2, "seed": MAX_SEED}, "seed"),  # seed + 1 is no seed a solo request may name
    ):
        r = sa3.post("/predict", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.text
    fields = sa3.get("/models").json()["fields"]
    assert fields["num_outputs"] == {"default": 1, "minimum": 1, "maximum": 8}


def test_a_random_seed_leaves_room_for_every_take():
    model = FakeModel()
    watch = Watcher()
    engine = Engine(model, observer=watch, batch_wait_ms=0)
    engine.start()
    try:
        job = engine.submit(params(seed=None, num_outputs=8))
        watch.wait(job)
    finally:
        engine.shutdown(grace_s=5)
    assert job.status == JobStatus.done and job.params.seed + 7 <= MAX_SEED
    assert sorted(p.seed for p in model.started) == [job.params.seed + i for i in range(8)]


def test_takes_run_as_rows_of_one_batch_and_cancel_cancels_them_all():
    model = FakeModel()
    watch = Watcher()
    engine = Engine(model, observer=watch, batch_wait_ms=0, max_batch_size=4)
    engine.start()
    try:
        model.step_gate = Gate(free=False)
        job = engine.submit(params(seed=10, steps=5, num_outputs=3))
        model.step_gate.wait_arrival()
        model.step_gate.allow()
        model.step_gate.wait_arrival()
        assert model.batches == [[10, 11, 12]]  # one forward pass, three rows
        assert job.step == 1 and job.total_steps == 5
        engine.cancel(job.id)
        model.step_gate.open()
        watch.wait(job)
    finally:
        model.step_gate.open()
        engine.shutdown(grace_s=5)
    assert job.status == JobStatus.cancelled and job.result is None
    assert len(model.batches) == 2 and engine.running_count() == 0  # none of the takes went on


def test_store_counts_every_take_against_the_byte_bound():
    store = JobStore(max_result_bytes=250)
    jobs = []
    for seed in range(3):
        job = Job(id=f"j{seed}", params=params(seed=seed))
        store.add(job)
        job.status = JobStatus.done
        job.result = JobResult(b"\0" * 50, "wav", 8000, 2, 100, more=(b"\0" * 50,))
        assert job.result_bytes == 100
        store.ended(job)
        jobs.append(job)
    # 300 bytes of takes > 250: the oldest went, though its first take alone is small
    assert store.get("j0") is None and store.get("j1") is not None and store.result_bytes() == 200


def _queued(scheduler: Scheduler, seed: int, takes: int, now: float = 0.0) -> Job:
    job = Job(id=f"s{seed}", params=params(seed=seed, num_outputs=takes))
    scheduler.admit(job, now)
    return job


def test_admission_and_estimates_count_a_job_of_n_takes_as_n_rows():
    sched = Scheduler(max_batch_size=4, batch_wait_s=0.0)
    a = _queued(sched, 1, 3)
    b = _queued(sched, 2, 2)  # 3 + 2 rows > 4: b waits for the next batch
    c = _queued(sched, 3, 1)  # fits beside a
    sched.assign_keys(lambda p: "k")
    plan = sched.next_batch(0.0)
    assert plan.jobs == [a, c]
    assert sched.queued() == [b]

    # the forecast prices a's pass as a step of 3 rows (and 4 rows with c), and each take's start and decode
    sched = Scheduler(max_batch_size=4, batch_wait_s=0.0)
    sched.costs = costs = StepTimes()
    for rows, seconds in ((1, 1.0), (3, 3.0), (4, 4.0)):
        costs.observe_step("k", rows, seconds)
    costs.observe_start("k", 0.5)
    costs.observe_finish("k", 0.25)
    alone = _queued(sched, 4, 3)
    fc = sched.forecast(0.0)
    # 3 starts + 3 steps (params() has 3) of 3 rows + 3 decodes
    assert fc.eta(alone.id) == pytest.approx(3 * 0.5 + 3 * 3.0 + 3 * 0.25)
    assert costs.alone("k", 3, rows=3) == pytest.approx(3 * 0.5 + 3 * 3.0 + 3 * 0.25)


def test_a_job_with_more_takes_than_the_batch_size_still_runs_whole():
    sched = Scheduler(max_batch_size=2, batch_wait_s=0.0)
    big = _queued(sched, 1, 5)
    small = _queued(sched, 2, 1)
    sched.assign_keys(lambda p: "k")
    assert sched.next_batch(0.0).jobs == [big]  # never split, never starved
    assert sched.joiners("k", 0) == [] and sched.queued() == [small]


def test_clients_and_cli_return_every_take(live, tmp_path):
    solo = [
        httpx.post(f"{live.url}/predict", json={**FAST, "seed": s}, headers={"accept": "audio/wav"}, timeout=60).content
        for s in (900, 901)
    ]
    kw = {k: v for k, v in FAST.items() if k != "prompt"}
    with StableAudioClient(live.url) as c:
        result = c.generate(FAST["prompt"], seed=900, num_outputs=2, **kw)
    assert [t.seed for t in result.outputs] == [900, 901] and [t.audio for t in result.outputs] == solo

    async def run():
        async with AsyncStableAudioClient(live.url) as c:
            return await c.generate(FAST["prompt"], seed=900, num_outputs=2, **kw)

    assert [t.audio for t in asyncio.run(run()).outputs] == solo

    out = tmp_path / "rain.wav"
    args = ["generate", FAST["prompt"], "-o", str(out), "--server", live.url, "--duration", "1", "--steps", "2"]
    r = CliRunner().invoke(cli_app, [*args, "--seed", "900", "-n", "2"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rain-0-seed900.wav").read_bytes() == solo[0]
    assert (tmp_path / "rain-1-seed901.wav").read_bytes() == solo[1]
    assert not out.exists()
