"""The batching policy on plain data: no threads, no model, no clock (every time is passed in)."""

from __future__ import annotations

import pytest

from stable_audio_service.engine import Job, QueueFull, Scheduler
from stable_audio_service.models.base import GenerationParams


def job(name: str, key: str = "a") -> Job:
    """A job whose batch key is `key` (carried in the prompt, read back by `key_of`)."""
    return Job(
        id=name, params=GenerationParams(prompt=key, duration=1.0, guidance_scale=7.0, num_inference_steps=4, seed=1)
    )


def key_of(params: GenerationParams) -> str:
    if params.prompt == "broken":
        raise ValueError("no key")
    return params.prompt


def queue(*jobs: Job, now: float = 0.0, **settings) -> Scheduler:
    sched = Scheduler(
        **{"max_batch_size": 4, "queue_size": 64, "queue_timeout_s": 100.0, "batch_wait_s": 0.0, **settings}
    )
    for j in jobs:
        sched.admit(j, now)
    assert sched.assign_keys(key_of) == []
    return sched


def ids(jobs: list[Job]) -> list[str]:
    return [j.id for j in jobs]


# -- the queue ---------------------------------------------------------------------------
def test_admit_reports_positions_and_refuses_beyond_capacity():
    sched = Scheduler(queue_size=2)
    a, b = job("a"), job("b")
    assert sched.admit(a, 0.0) == 1 and sched.admit(b, 0.0) == 2
    with pytest.raises(QueueFull, match="2 waiting"):
        sched.admit(job("c"), 0.0)
    assert len(sched) == 2 and ids(sched.queued()) == ["a", "b"]
    assert sched.withdraw(a) and not sched.withdraw(a)
    assert sched.position(b) == 1 and sched.position(a) is None
    sched.admit(job("c"), 0.0)  # room again
    assert ids(sched.clear()) == ["b", "c"] and len(sched) == 0


def test_jobs_expire_at_their_deadline_not_before():
    sched = Scheduler(queue_timeout_s=10.0)
    early, late = job("early"), job("late")
    sched.admit(early, 0.0)
    sched.admit(late, 5.0)
    assert sched.deadline(early) == 10.0 and sched.deadline(late) == 15.0
    assert sched.expire(9.999) == []
    expired = sched.expire(10.0)
    assert ids([e.job for e in expired]) == ["early"] and "waited in the queue longer than 10s" in expired[0].reason
    assert ids(sched.queued()) == ["late"] and sched.deadline(early) is None
    assert ids([e.job for e in sched.expire(100.0)]) == ["late"] and len(sched) == 0


def test_keys_are_computed_once_and_a_broken_one_leaves_the_queue():
    calls: list[str] = []

    def counting(params: GenerationParams) -> str:
        calls.append(params.prompt)
        return key_of(params)

    sched = Scheduler()
    good, bad = job("good"), job("bad", key="broken")
    sched.admit(good, 0.0)
    sched.admit(bad, 0.0)
    broken = sched.assign_keys(counting)
    assert [(j.id, type(e)) for j, e in broken] == [("bad", ValueError)]
    assert ids(sched.queued()) == ["good"]
    assert sched.assign_keys(counting) == [] and calls == ["a", "broken"]  # not recomputed


def test_a_key_function_that_raises_a_base_exception_is_not_a_broken_job():
    class Killer(BaseException):
        pass

    def dying(params: GenerationParams) -> str:
        raise Killer

    sched = Scheduler()
    sched.admit(job("a"), 0.0)
    with pytest.raises(Killer):
        sched.assign_keys(dying)


# -- a new batch -------------------------------------------------------------------------
def test_a_batch_is_the_oldest_jobs_key_taken_from_anywhere_in_the_queue():
    sched = queue(job("a1", "a"), job("b1", "b"), job("a2", "a"), job("b2", "b"), job("a3", "a"))
    plan = sched.next_batch(0.0)
    assert plan.ready and plan.key == "a" and ids(plan.jobs) == ["a1", "a2", "a3"]
    assert ids(sched.queued()) == ["b1", "b2"]
    plan = sched.next_batch(0.0)
    assert plan.key == "b" and ids(plan.jobs) == ["b1", "b2"] and len(sched) == 0


def test_a_batch_holds_at_most_max_batch_size():
    sched = queue(*[job(f"a{i}") for i in range(5)], max_batch_size=2)
    assert ids(sched.next_batch(0.0).jobs) == ["a0", "a1"]
    assert ids(sched.queued()) == ["a2", "a3", "a4"]


def test_a_batch_waits_for_mates_until_its_window_closes():
    sched = queue(job("a1"), job("b1", "b"), batch_wait_s=0.5, now=10.0)
    plan = sched.next_batch(10.0)  # opens the window for key "a"
    assert not plan.ready and plan.key == "a" and plan.wait_s == pytest.approx(0.5)
    assert sched.next_batch(10.3).wait_s == pytest.approx(0.2)  # the window does not restart
    sched.admit(job("a2"), 10.4)
    sched.assign_keys(key_of)
    plan = sched.next_batch(10.5)
    assert plan.ready and ids(plan.jobs) == ["a1", "a2"]
    plan = sched.next_batch(10.5)  # a new window, for the next oldest job's key
    assert not plan.ready and plan.key == "b"


def test_a_full_batch_or_a_hurry_does_not_wait():
    sched = queue(job("a1"), job("a2"), max_batch_size=2, batch_wait_s=5.0)
    assert ids(sched.next_batch(0.0).jobs) == ["a1", "a2"]
    sched = queue(job("a1"), batch_wait_s=5.0)
    assert not sched.next_batch(0.0).ready
    assert ids(sched.next_batch(0.1, hurry=True).jobs) == ["a1"]


def test_the_window_keeps_its_key_when_the_oldest_job_leaves():
    first, other = job("a1"), job("b1", "b")
    sched = queue(first, other, batch_wait_s=1.0)
    assert not sched.next_batch(0.0).ready
    sched.withdraw(first)  # cancelled while the batch was forming
    plan = sched.next_batch(1.0)
    assert plan.ready and plan.key == "a" and plan.jobs == []  # nothing of "a" left: an empty batch
    assert ids(sched.queued()) == ["b1"] and sched.next_batch(1.0).key == "b"


def test_an_empty_queue_gives_an_empty_plan_that_is_ready():
    sched = Scheduler(batch_wait_s=1.0)
    plan = sched.next_batch(0.0)
    assert plan.ready and plan.jobs == [] and plan.key is None


# -- joining a running batch ---------------------------------------------------------------
def test_joiners_are_the_head_of_the_queue_with_the_batch_key():
    sched = queue(job("a1"), job("a2"), job("b1", "b"), job("a3"))
    assert ids(sched.joiners("a", room=4)) == ["a1", "a2"]  # a3 would overtake b1
    assert ids(sched.queued()) == ["b1", "a3"]
    assert sched.joiners("a", room=4) == []  # b1 is older than a3: the batch drains, b1 runs next


def test_joiners_fill_only_the_free_rows():
    sched = queue(job("a1"), job("a2"), job("a3"))
    assert sched.joiners("a", room=0) == []
    assert ids(sched.joiners("a", room=2)) == ["a1", "a2"]
    assert ids(sched.queued()) == ["a3"]


def test_positions_follow_the_queue_after_a_selection():
    a1, b1, a2, b2 = job("a1"), job("b1", "b"), job("a2"), job("b2", "b")
    sched = queue(a1, b1, a2, b2)
    sched.next_batch(0.0)
    assert [sched.position(j) for j in (a1, b1, a2, b2)] == [None, 1, None, 2]
