"""Job retention on plain data: an injected clock, no engine, no threads."""

from __future__ import annotations

from stable_audio_service.engine import Job, JobResult, JobStatus, JobStore
from stable_audio_service.models.base import GenerationParams

from .fake_model import FakeClock


def job(name: str, *, size: int = 0, keep: bool = True) -> Job:
    j = Job(id=name, params=GenerationParams("x", 1.0, 7.0, 4, 1), keep=keep)
    if size:
        j.result = JobResult(b"\0" * size, "wav", 8000, 2, 100)
    return j


def end(store: JobStore, j: Job, status: JobStatus = JobStatus.done) -> Job:
    j.status = status
    store.ended(j)
    return j


def stored(store: JobStore, *jobs: Job) -> list[Job]:
    """`jobs` added to `store` (submitted)."""
    for j in jobs:
        store.add(j)
    return list(jobs)


def test_a_job_is_found_while_it_runs_and_after_only_if_kept():
    store = JobStore()
    kept, forgotten = stored(store, job("kept"), job("predict", keep=False))
    assert store.get("kept") is kept and store.get("predict") is forgotten
    assert store.active() == [kept, forgotten]
    end(store, kept)
    end(store, forgotten, JobStatus.failed)
    assert store.get("kept") is kept and store.get("predict") is None
    assert store.active() == [] and store.kept_count() == 1 and store.evicted == 0


def test_finished_jobs_expire_after_the_ttl_oldest_first():
    clock = FakeClock()
    store = JobStore(ttl_s=60, clock=clock)
    old, new = stored(store, job("old"), job("new"))
    end(store, old)
    clock.advance(30)
    end(store, new)
    clock.advance(30)  # old: exactly the TTL, still kept
    assert store.prune() == 0
    clock.advance(1)
    assert store.prune() == 1 and store.get("old") is None and store.get("new") is new
    clock.advance(30)
    assert store.prune() == 1 and store.kept_count() == 0 and store.evicted == 2


def test_finished_jobs_are_bounded_by_count():
    store = JobStore(max_kept=2)
    jobs = stored(store, *[job(f"j{i}") for i in range(4)])
    for j in jobs:
        end(store, j)
    assert [store.get(j.id) for j in jobs] == [None, None, jobs[2], jobs[3]]
    assert store.evicted == 2


def test_results_are_bounded_by_bytes_and_the_newest_always_stays():
    store = JobStore(max_result_bytes=250)
    empty, a, b, c = stored(store, job("empty"), job("a", size=100), job("b", size=100), job("c", size=100))
    for j in (empty, a, b, c):
        end(store, j)
    assert store.get("a") is None and store.result_bytes() == 200  # oldest result went first
    assert store.get("empty") is empty  # holds no bytes: nothing gained by evicting it
    store.max_result_bytes = 1
    assert store.prune() == 1 and store.get("c") is c and store.get("b") is None  # c alone is over: it stays
    assert store.result_bytes() == 100


def test_release_forgets_an_ended_job_now_and_a_running_one_when_it_ends():
    store = JobStore()
    done, running = stored(store, job("done", size=10), job("running"))
    end(store, done)
    store.release(done)
    assert store.get("done") is None and store.result_bytes() == 0 and done.result is not None
    store.release(running)
    assert store.get("running") is running  # still running: findable (and cancellable) until it ends
    end(store, running)
    assert store.get("running") is None and store.kept_count() == 0
    assert store.evicted == 0  # forgotten on purpose, not evicted by a bound
