"""Continuous batching vs static batching vs plain sequential generation, with Poisson arrivals.

    python -m bench.bench_continuous                    # mid-size SA3 small structure, 16 requests, 2 rounds

The same arrival schedule (seeded exponential gaps, mean `--gap` seconds) is replayed against three servers of one
model, in alternating order per round:

* sequential: one request at a time in arrival order, start -> steps -> decode (what a loop of `pipe(...)` does);
* static: the engine with batches formed once and run to their end (the model's `mixed_steps` hidden, so nothing
  joins a running batch; the engine as it was before continuous batching);
* continuous: the engine as it is: requests of the same key join the running batch at the next step boundary
  and leave it when done;
* engine_fifo: the engine with `max_batch_size` 1 (what `STABLE_AUDIO_MAX_BATCH_SIZE=1` serves): the engine's
  own cost (queue, encoder thread, events) apart from what batching changes.

The model is the Stable Audio 3 small structure at mid size (random weights: DiT 512 wide, 8 blocks; SAME 256
wide, 2 layers; 2-layer T5Gemma), so a run takes minutes on two cores; all requests are 10 s clips of 8 steps
(one batch key), guidance 1. Prints a table: throughput (requests/min), p50/p95/max latency (arrival to result).
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import threading
import time

from .common import machine_info, machine_line, md_table, pct, quiet, write_results


def build_mid(seed: int = 0):
    """The small structure at mid size (see the module docstring)."""

    from .sa3_real import _randomize, real_small_config
    from .sa3_structures import build_ours, t5gemma_encoder

    raw = real_small_config()
    for part in ("encoder", "decoder"):
        raw["model"]["pretransform"]["config"][part]["config"].update(channels=64, c_mults=[4], transformer_depths=[2])
    raw["model"]["diffusion"]["config"].update(embed_dim=512, depth=8, num_heads=8)
    return build_ours(
        "small",
        seed,
        raw=raw,
        randomize=_randomize,
        encoder=t5gemma_encoder(vocab_size=32000, layers=2),
        name="sa3-small-mid-random",
    )


class StaticView:
    """The model with `mixed_steps` hidden: the engine then never lets a request join a running batch."""

    mixed_steps = False

    def __init__(self, model) -> None:
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def step(self, states) -> None:
        self._model.step(states)


def request(i: int, steps: int, duration: float):
    from stable_audio_service.models.base import GenerationParams

    return GenerationParams(
        prompt=f"request {i % 4}", duration=duration, guidance_scale=1.0, num_inference_steps=steps, seed=1000 + i
    )


def run_sequential(model, gaps: list[float], steps: int, duration: float) -> list[float]:
    """A FIFO worker that runs one request at a time; returns each request's latency."""
    todo: queue.Queue = queue.Queue()
    latencies: list[float] = [0.0] * len(gaps)

    def worker() -> None:
        for _ in gaps:
            i, arrived = todo.get()
            state = model.start(request(i, steps, duration))
            while not state.finished:
                model.step([state])
            model.finish(state)
            latencies[i] = time.perf_counter() - arrived

    thread = threading.Thread(target=worker)
    thread.start()
    for i, gap in enumerate(gaps):
        time.sleep(gap)
        todo.put((i, time.perf_counter()))
    thread.join()
    return latencies


def run_engine(model, gaps: list[float], steps: int, duration: float, max_batch: int) -> tuple[list[float], dict]:
    from stable_audio_service.engine import Engine

    done: dict[str, float] = {}
    ended = threading.Event()

    def observer(what: str, job, info: dict) -> None:
        if what in ("done", "failed", "cancelled"):
            done[job.id] = time.perf_counter()
            if len(done) == len(gaps):
                ended.set()

    engine = Engine(model, max_batch_size=max_batch, batch_wait_ms=20, observer=observer)
    engine.start()
    arrivals: dict[str, float] = {}
    jobs = []
    for i, gap in enumerate(gaps):
        time.sleep(gap)
        arrivals_t = time.perf_counter()
        job = engine.submit(request(i, steps, duration), format="wav")
        arrivals[job.id] = arrivals_t
        jobs.append(job)
    ended.wait()
    engine.shutdown(grace_s=1)
    failed = [j for j in jobs if j.status.value != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed: {failed[0].error}")
    stats = dict(engine.stats)
    return [done[j.id] - arrivals[j.id] for j in jobs], stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--gap", type=float, default=1.5, help="mean seconds between arrivals (Poisson process)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="only cpu is built here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quiet()
    machine = machine_info()
    model = build_mid()
    # one warm request: first-call costs are not part of any mode's numbers
    state = model.start(request(0, 1, args.duration))
    model.step([state])
    model.finish(state)
    rng = random.Random(args.seed)
    gaps = [0.0] + [rng.expovariate(1 / args.gap) for _ in range(args.requests - 1)]
    modes = ["sequential", "engine_fifo", "static", "continuous"]
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes if r % 2 == 0 else list(reversed(modes)):
            t0 = time.perf_counter()
            stats = {}
            if mode == "sequential":
                lat = run_sequential(model, gaps, args.steps, args.duration)
            elif mode == "engine_fifo":  # the engine without batching: its own overhead, apart from batching's
                lat, stats = run_engine(model, gaps, args.steps, args.duration, 1)
            else:
                view = model if mode == "continuous" else StaticView(model)
                lat, stats = run_engine(view, gaps, args.steps, args.duration, args.max_batch)
            wall = time.perf_counter() - t0
            results[mode].append({"latencies": lat, "wall_s": wall, "stats": stats})
            print(
                f"  round {r + 1} {mode}: wall {wall:.1f} s, p50 {pct(lat, 50):.1f} s, p95 {pct(lat, 95):.1f} s "
                f"{json.dumps({k: stats[k] for k in ('forward_passes', 'joined', 'max_batch_seen')} if stats else {})}",
                flush=True,
            )
    rows = []
    summary = {}
    for mode in modes:
        lat = [x for run in results[mode] for x in run["latencies"]]
        wall = sum(run["wall_s"] for run in results[mode])
        throughput = 60 * args.requests * len(results[mode]) / wall
        passes = sum(run["stats"].get("forward_passes", 0) for run in results[mode]) or None
        summary[mode] = {
            "throughput_per_min": round(throughput, 2),
            "p50_s": round(pct(lat, 50), 2),
            "p95_s": round(pct(lat, 95), 2),
            "max_s": round(max(lat), 2),
            "forward_passes": passes,
        }
        rows.append(
            [
                mode,
                f"{throughput:.2f}",
                f"{pct(lat, 50):.1f}",
                f"{pct(lat, 95):.1f}",
                f"{max(lat):.1f}",
                passes if passes is not None else f"{args.requests * args.steps * len(results[mode])}",
            ]
        )
    table = md_table(["mode", "throughput req/min", "p50 s", "p95 s", "max s", "DiT forward passes"], rows)
    print()
    print(
        f"SA3 small structure, mid size, {args.requests} requests x {args.rounds} rounds, Poisson arrivals mean gap "
        f"{args.gap} s, {args.duration:g} s clips, {args.steps} steps, max batch {args.max_batch}"
    )
    print(machine_line(machine))
    print(table)
    write_results("continuous_batching", {"args": vars(args), "summary": summary, "machine": machine}, table)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
