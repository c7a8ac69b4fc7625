"""Admission with deadlines: how good the engine's wait estimates are, and whether deadlines hold, over a burst.

    python -m bench.bench_admission                         # 24 mixed requests at once, max_wait_s 30, tiny model

A tiny random-weight Stable Audio Open 1.0 (`make-tiny`) is loaded through the service's own loader and served by
the engine exactly as `serve` builds it (warm-up on, batches of up to 4, 20 ms batch window). A burst of requests
of mixed durations and step counts, each with the same `max_wait_s`, is submitted back to back (`--gap` spaces
them). For every request it records what the engine said at submission (accepted with an ETA, or refused at once
with an estimate) and what happened (done, or dropped from the queue when its deadline could no longer be met),
with times on the engine's clock, and reports:

* estimate error: |ETA at submission - actual time to the result|, median and p90, over the requests that ran;
  and the same for the ETA read once the whole burst was submitted (later arrivals that join an earlier batch
  make it slower, which no estimate at submission can know: this one measures the cost model and the replay of
  the batching policy alone);
* refusals: how many were refused at once, and how long a refusal took to arrive;
* deadlines: every accepted request that finished after its deadline missed it by no more than its own
  estimate's error (the only way one can: the estimate said it would make it).

The CPU is shared and its speed varies: the load average is recorded with the result.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path

from .common import loadavg, machine_info, machine_line, md_table, pct, quiet, write_results


def build(window: str, threads: int):
    """The tiny model, made on disk and loaded by the service's loader (the `serve` path)."""
    import torch

    from stable_audio_service.config import Settings
    from stable_audio_service.models.loading import load_model
    from stable_audio_service.models.tiny import make_tiny

    torch.set_num_threads(threads)
    directory = make_tiny(Path(tempfile.mkdtemp(prefix="bench-admission-")) / "tiny-open1")
    model, _info = load_model(Settings(model=str(directory), window=window))
    return model


def requests(n: int, steps: list[int], durations: list[float], seed: int) -> list[tuple[int, float]]:
    """`n` (steps, duration) pairs drawn from the choices, seeded: a mixed burst."""
    rng = random.Random(seed)
    return [(rng.choice(steps), rng.choice(durations)) for _ in range(n)]


def run(model, burst: list[tuple[int, float]], max_wait_s: float, gap: float, max_batch: int) -> dict:
    from stable_audio_service.engine import Engine, WouldMissDeadline
    from stable_audio_service.models.base import GenerationParams

    ended: dict[str, float] = {}
    all_ended = threading.Event()
    expected = [0]
    lock = threading.Lock()

    def observer(what: str, job, info: dict) -> None:
        if what in ("done", "failed", "cancelled"):
            with lock:
                ended[job.id] = time.monotonic()
                if len(ended) >= expected[0] > 0:
                    all_ended.set()

    engine = Engine(model, max_batch_size=max_batch, batch_wait_ms=20, observer=observer, warm_up=True)
    t_warm = time.monotonic()
    engine.start()
    warm_up_s = time.monotonic() - t_warm
    costs = engine.scheduler.costs.describe()
    rows: list[dict] = []
    jobs = []
    for i, (steps, duration) in enumerate(burst):
        if i and gap:
            time.sleep(gap)
        params = GenerationParams(
            prompt=f"rain on a tin roof {i}", duration=duration, guidance_scale=7.0, num_inference_steps=steps, seed=i
        )
        t0 = time.monotonic()
        try:
            job = engine.submit(params, max_wait_s=max_wait_s)
        except WouldMissDeadline as exc:
            rows.append(
                {
                    "i": i,
                    "steps": steps,
                    "duration": duration,
                    "outcome": "refused",
                    "answer_s": time.monotonic() - t0,
                    "estimate_s": exc.estimate_s,
                    "retry_after_s": exc.retry_after_s,
                }
            )
            continue
        rows.append({"i": i, "steps": steps, "duration": duration, "submitted": t0, "eta_s": job.eta_s, "job": job})
        jobs.append(job)
    submitted_drain = engine.drain_s()
    # the same jobs' ETAs once the whole burst is known: what later arrivals (joining earlier batches, or being
    # refused) changed, which no estimate at submission can know
    for row in rows:
        if "job" in row:
            row["after_burst"] = time.monotonic()
            row["eta_after_burst_s"] = engine.estimate(row["job"])[1]
    with lock:
        expected[0] = len(jobs)
        if len(ended) >= len(jobs):
            all_ended.set()
    all_ended.wait(3600)
    engine.shutdown(grace_s=1)
    for row in rows:
        job = row.pop("job", None)
        if job is None:
            continue
        row["actual_s"] = ended[job.id] - row.pop("submitted")
        row["actual_after_burst_s"] = ended[job.id] - row.pop("after_burst")
        row["outcome"] = "done" if job.status.value == "done" else ("dropped" if job.error_status == 503 else "failed")
        row["error"] = job.error
        row["batch_size"] = job.batch_size
    return {
        "rows": rows,
        "warm_up_s": warm_up_s,
        "costs_after_warm_up": costs,
        "costs_after": engine.scheduler.costs.describe(),
        "drain_estimate_s": submitted_drain,
        "stats": engine.stats,
    }


def summarise(result: dict, max_wait_s: float) -> dict:
    rows = result["rows"]
    ran = [r for r in rows if r["outcome"] == "done" and r["eta_s"] is not None]
    errors = [abs(r["eta_s"] - r["actual_s"]) for r in ran]
    known = [r for r in ran if r.get("eta_after_burst_s") is not None]
    errors_after = [abs(r["eta_after_burst_s"] - r["actual_after_burst_s"]) for r in known]
    signed = [r["actual_s"] - r["eta_s"] for r in ran]
    refused = [r for r in rows if r["outcome"] == "refused"]
    dropped = [r for r in rows if r["outcome"] == "dropped"]
    late = [r for r in ran if r["actual_s"] > max_wait_s]
    # a request accepted with eta <= deadline and finished after it missed by at most (actual - eta) = its error
    within_error = all(r["actual_s"] - max_wait_s <= abs(r["actual_s"] - r["eta_s"]) + 1e-9 for r in late)
    last_done = max((r["actual_s"] for r in rows if "actual_s" in r), default=0.0)
    return {
        "requests": len(rows),
        "accepted": len(rows) - len(refused),
        "done": len([r for r in rows if r["outcome"] == "done"]),
        "refused_early": len(refused),
        "refusal_answer_ms_max": round(1000 * max((r["answer_s"] for r in refused), default=0.0), 2),
        "dropped_in_queue": len(dropped),
        "failed_other": len([r for r in rows if r["outcome"] == "failed"]),
        "estimate_error_median_s": round(pct(errors, 50), 2) if errors else None,
        "estimate_error_p90_s": round(pct(errors, 90), 2) if errors else None,
        "estimate_error_median_rel": round(pct([e / r["actual_s"] for e, r in zip(errors, ran, strict=True)], 50), 3)
        if errors
        else None,
        "actual_minus_estimate_mean_s": round(sum(signed) / len(signed), 2) if signed else None,
        "after_burst_error_median_s": round(pct(errors_after, 50), 2) if errors_after else None,
        "after_burst_error_p90_s": round(pct(errors_after, 90), 2) if errors_after else None,
        "missed_deadline": len(late),
        "max_miss_s": round(max((r["actual_s"] - max_wait_s for r in late), default=0.0), 2),
        "every_miss_within_its_error": within_error,
        "drain_estimate_s": None if result["drain_estimate_s"] is None else round(result["drain_estimate_s"], 2),
        "drain_actual_s": round(last_done, 2),
        "warm_up_s": round(result["warm_up_s"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-wait", type=float, default=30.0, help="every request's max_wait_s")
    parser.add_argument("--steps", default="25,50,100", help="step counts to mix")
    parser.add_argument("--durations", default="1,5,10", help="clip durations (s) to mix")
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between submissions (0: a burst)")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--window", default="full", choices=["full", "fit"], help="STABLE_AUDIO_WINDOW")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="admission", help="results file stem under bench/results")
    args = parser.parse_args()
    quiet()
    machine = machine_info()
    model = build(args.window, args.threads)
    burst = requests(
        args.requests, [int(s) for s in args.steps.split(",")], [float(d) for d in args.durations.split(",")], args.seed
    )
    result = run(model, burst, args.max_wait, args.gap, args.max_batch)
    summary = summarise(result, args.max_wait)
    machine["loadavg_end"] = loadavg()  # the CPU is shared: the load it ran under is part of the result
    table_rows = [
        [
            r["i"],
            r["steps"],
            f"{r['duration']:g}",
            r["outcome"],
            "" if r.get("eta_s") is None else f"{r['eta_s']:.1f}",
            f"{r['estimate_s']:.1f}" if "estimate_s" in r else "",
            "" if "actual_s" not in r else f"{r['actual_s']:.1f}",
            "" if "actual_s" not in r or r.get("eta_s") is None else f"{abs(r['actual_s'] - r['eta_s']):.1f}",
            r.get("batch_size", ""),
            "" if r.get("eta_after_burst_s") is None else f"{r['eta_after_burst_s']:.1f}",
        ]
        for r in result["rows"]
    ]
    per_request = md_table(
        [
            "#",
            "steps",
            "duration s",
            "outcome",
            "ETA s",
            "refused at est. s",
            "actual s",
            "|error| s",
            "batch",
            "ETA after burst s",
        ],
        table_rows,
    )
    s = summary
    headline = md_table(
        ["requests", "refused at once", "dropped queued", "done", "error median s", "error p90 s",
         "after-burst error median / p90 s", "missed deadline", "every miss within its error",
         "refusal answer max ms", "drain est. / actual s"],
        [[s["requests"], s["refused_early"], s["dropped_in_queue"], s["done"], s["estimate_error_median_s"],
          s["estimate_error_p90_s"], f"{s['after_burst_error_median_s']} / {s['after_burst_error_p90_s']}",
          s["missed_deadline"], s["every_miss_within_its_error"], s["refusal_answer_ms_max"],
          f"{s['drain_estimate_s']} / {s['drain_actual_s']}"]],
    )  # fmt: skip
    text = (
        f"Tiny Open 1.0 (window {args.window}), {args.requests} requests in a burst (gap {args.gap:g} s), steps "
        f"{args.steps}, durations {args.durations} s, max_wait_s {args.max_wait:g}, max batch {args.max_batch}.\n\n"
        f"{machine_line(machine)}\n\n{headline}\n\n{per_request}\n"
    )
    print(text)
    data = {"args": vars(args), "summary": summary, "machine": machine, **result}
    write_results(args.name, data, text)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
