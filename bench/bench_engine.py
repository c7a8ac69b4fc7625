"""The service Engine vs plain diffusers on the same model and weights.

(a) single request, A/B interleaved over `--reps` rounds (ABBA order):
    plain  = `pipe(..., output_type="latent")` (text + denoise), then the pipeline's own decode of all
             1024 latents + crop (what `pipe(...)` does), and separately a cropped decode of only the
             latents the service keeps (so both "as shipped" and "equal work" totals can be formed);
    engine = `Engine.submit()` with `StableAudioOpenModel(window="full")` (the same full-window
             denoising as the pipeline), measured from submit to the job's terminal event; its phases
             (queue wait incl. `batch_wait_ms`, encode, denoise, cropped decode, WAV encode) come from the job.
    Text-embedding caching is off in the service model so both sides encode the prompt every time.
(b) closed-loop load at 1/4/8/16 concurrent clients, all asking for the same duration and steps:
    plain  = one worker thread calling `pipe(...)` once per request in arrival order (FIFO);
    engine = the service Engine (dynamic batching up to `--max-batch-size`).
    Throughput (requests/min) and p50/p95 client latency; the two servers alternate per level.
(c) peak RSS of the process while each side runs (sampled every 50 ms) and the process high-water mark.

    .venv/bin/python -m bench.bench_engine --size tiny            # ~5 min
    .venv/bin/python -m bench.bench_engine --size mid             # ~10 min
    .venv/bin/python -m bench.bench_engine --size real --steps 2  # single request only (slow)
"""

from __future__ import annotations

import argparse
import math
import queue
import threading
import time

import torch

from bench.common import (
    CallTimer,
    RssSampler,
    loadavg,
    machine_info,
    machine_line,
    maxrss_gib,
    md_table,
    med,
    pct,
    quiet,
    write_results,
)
from bench.models import build_pipe, param_counts, wrap

PROMPT = "rain on a tin roof with a slow piano melody"
DEFAULT_STEPS = {"tiny": 50, "mid": 25, "real": 2}


class Waiter:
    """Engine observer that turns terminal job events into threading.Events for blocking clients."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}
        self.done_at: dict[str, float] = {}

    def event(self, job_id: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(job_id, threading.Event())

    def __call__(self, what: str, job, info: dict) -> None:
        if what in ("done", "failed", "cancelled"):
            self.done_at[job.id] = time.perf_counter()
            self.event(job.id).set()


class PlainServer:
    """diffusers as a naive server would use it: one pipe(...) call per request, in arrival order."""

    def __init__(self, pipe, guidance: float) -> None:
        self.pipe, self.guidance = pipe, guidance
        self.q: queue.Queue = queue.Queue()
        self.t = threading.Thread(target=self._run, daemon=True, name="plain-server")
        self.t.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            duration, steps, seed, ev = item
            self.pipe(
                PROMPT,
                audio_end_in_s=duration,
                num_inference_steps=steps,
                guidance_scale=self.guidance,
                generator=torch.Generator("cpu").manual_seed(seed),
            )
            ev.set()

    def request(self, duration: float, steps: int, seed: int) -> None:
        ev = threading.Event()
        self.q.put((duration, steps, seed, ev))
        ev.wait()

    def close(self) -> None:
        self.q.put(None)
        self.t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=["tiny", "mid", "real"])
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=None, help=f"default {DEFAULT_STEPS}")
    ap.add_argument("--target-steps", type=int, default=100, help="step count the single-request table extrapolates to")
    ap.add_argument("--guidance", type=float, default=7.0)
    ap.add_argument("--reps", type=int, default=None, help="single-request rounds (default 4; 1 for real)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--min-requests", type=int, default=8, help="requests per load level: max(this, clients)")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=int, default=20)
    ap.add_argument("--single-only", action="store_true", help="skip the load test (implied by --size real)")
    ap.add_argument("--quick", action="store_true", help="2 rounds, clients 1 and 4, 4 requests per level")
    ap.add_argument("--out", default=None, help="results file stem (default engine_<size>)")
    args = ap.parse_args()
    quiet()
    from stable_audio_service.engine import Engine
    from stable_audio_service.models.base import GenerationParams
    from stable_audio_service.models.open1 import DECODE_MARGIN_LATENTS

    steps = args.steps or DEFAULT_STEPS[args.size]
    reps = args.reps or (1 if args.size == "real" else 4)
    levels, min_req = args.concurrency, args.min_requests
    if args.quick:
        reps, levels, min_req = min(reps, 2), [c for c in levels if c <= 4] or [1], 4
    single_only = args.single_only or args.size == "real"
    N, D = args.target_steps, args.duration

    info = machine_info()
    print(machine_line(info), flush=True)
    sampler = RssSampler()
    t0 = time.perf_counter()
    pipe = build_pipe(args.size)
    build_s = time.perf_counter() - t0
    print(f"built {args.size} in {build_s:.1f}s: {param_counts(pipe)} M params; rss {sampler.peak():.2f} GiB")
    model = wrap(pipe, args.size, "full", text_cache_size=0)
    sr, hop = model.sample_rate, model.hop
    end = int(D * sr)
    keep = min(model.window_for(D), math.ceil(end / hop) + DECODE_MARGIN_LATENTS)
    dit = CallTimer(pipe.transformer)
    waiter = Waiter()
    engine = Engine(model, max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, observer=waiter)
    engine.start()
    load_log = [("start", loadavg())]
    res: dict = {
        "args": vars(args) | {"steps": steps, "reps": reps, "concurrency": levels},
        "machine": info,
        "build_s": round(build_s, 1),
        "params_m": param_counts(pipe),
        "decode_latents": {"plain": model.max_window, "engine": keep},
    }

    def gp(seed: int) -> GenerationParams:
        return GenerationParams(
            prompt=PROMPT, duration=D, guidance_scale=args.guidance, num_inference_steps=steps, seed=seed
        )

    def run_plain(seed: int) -> dict:
        sampler.reset()
        t = time.perf_counter()
        lat = pipe(
            PROMPT,
            audio_end_in_s=D,
            num_inference_steps=steps,
            guidance_scale=args.guidance,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="latent",
        ).audios
        t_lat = time.perf_counter() - t
        calls = dit.take()
        with torch.no_grad():
            t = time.perf_counter()
            pipe.vae.decode(lat).sample[:, :, :end]  # what pipe(...) does after the loop
            t_full = time.perf_counter() - t
            t = time.perf_counter()
            pipe.vae.decode(lat[:, :, :keep]).sample[:, :, :end]  # the service's cropped decode
            t_crop = time.perf_counter() - t
        return {
            "text_denoise_s": t_lat,
            "dit_s": calls,
            "full_decode_s": t_full,
            "crop_decode_s": t_crop,
            "peak_rss_gib": sampler.peak(),
        }

    def run_engine(seed: int) -> dict:
        sampler.reset()
        t = time.perf_counter()
        job = engine.submit(gp(seed))
        waiter.event(job.id).wait()
        wall = waiter.done_at[job.id] - t
        calls = dit.take()
        if job.status != "done":
            raise RuntimeError(f"engine job {job.status}: {job.error}")
        tm = job.timings
        return {
            "wall_s": wall,
            "dit_s": calls,
            "timings": dict(tm),
            "peak_rss_gib": sampler.peak(),
            "text_denoise_s": tm.get("queue_s", 0) + tm["encode_s"] + tm["denoise_s"],
        }

    # warm-up both paths (first-call allocations) with a 2-step request
    if args.size != "real":
        pipe(PROMPT, audio_end_in_s=D, num_inference_steps=2, output_type="latent")
        j = engine.submit(GenerationParams(PROMPT, D, args.guidance, 2, 0))
        waiter.event(j.id).wait()
        dit.take()

    # -- (a) single request ----------------------------------------------------------------------
    print(f"(a) single request: {D:g}s clip, {steps} steps, {reps} rounds A/B interleaved", flush=True)
    single = {"plain": [], "engine": []}
    for r in range(reps):
        order = ("plain", "engine") if r % 2 == 0 else ("engine", "plain")
        for side in order:
            single[side].append(run_plain(100 + r) if side == "plain" else run_engine(100 + r))
        p, e = single["plain"][-1], single["engine"][-1]
        print(
            f"  round {r + 1}: plain text+denoise {p['text_denoise_s']:.3f}s + full decode {p['full_decode_s']:.3f}s"
            f" | engine total {e['wall_s']:.3f}s {e['timings']}",
            flush=True,
        )
    load_log.append(("after single", loadavg()))
    P, E = single["plain"], single["engine"]
    p_td = med([x["text_denoise_s"] for x in P])
    e_td = med([x["text_denoise_s"] for x in E])
    p_full = med([x["full_decode_s"] for x in P])
    p_crop = med([x["crop_decode_s"] for x in P])
    e_dec = med([x["timings"]["decode_s"] for x in E])
    e_wav = med([x["timings"].get("audio_encode_s", 0.0) for x in E])
    e_wall = med([x["wall_s"] for x in E])
    e_queue = med([x["timings"].get("queue_s", 0.0) for x in E])
    p_step = med([c for x in P for c in x["dit_s"]])
    e_step = med([c for x in E for c in x["dit_s"]])
    # paired per-round ratios (robust to load drifting between rounds)
    td_ratio = med([e["text_denoise_s"] / p["text_denoise_s"] for p, e in zip(P, E, strict=True)])
    eq_ratio = med([e["wall_s"] / (p["text_denoise_s"] + p["crop_decode_s"]) for p, e in zip(P, E, strict=True)])
    ship_ratio = med([(p["text_denoise_s"] + p["full_decode_s"]) / e["wall_s"] for p, e in zip(P, E, strict=True)])
    a = {
        "plain_text_denoise_s": p_td,
        "engine_queue_encode_denoise_s": e_td,
        "engine_queue_wait_s": e_queue,
        "plain_full_decode_s": p_full,
        "plain_crop_decode_s": p_crop,
        "engine_decode_s": e_dec,
        "engine_wav_encode_s": e_wav,
        "engine_total_s": e_wall,
        "plain_total_s": p_td + p_full,
        "dit_call_plain_s": p_step,
        "dit_call_engine_s": e_step,
        "engine_overhead_text_denoise_pct": 100 * (td_ratio - 1),
        "engine_overhead_equal_work_pct": 100 * (eq_ratio - 1),
        "speedup_as_shipped": ship_ratio,
        "rounds": single,
    }
    # extrapolation to N steps (only meaningful when steps << N, e.g. real size)
    p_fixed = p_td - steps * p_step
    e_fixed = e_td - steps * e_step
    a["extrapolated"] = {
        "steps": N,
        "plain_total_s": p_fixed + N * p_step + p_full,
        "engine_total_s": e_fixed + N * e_step + e_dec + e_wav,
        "plain_text_denoise_s": p_fixed + N * p_step,
        "engine_text_denoise_s": e_fixed + N * e_step,
    }
    res["single"] = a
    rows_a = [
        [
            "text + denoise",
            f"{p_td:.3f}",
            f"{e_td:.3f} (queue wait {e_queue:.3f})",
            f"{a['engine_overhead_text_denoise_pct']:+.1f}% (engine overhead)",
        ],
        ["one DiT call (median)", f"{p_step:.4f}", f"{e_step:.4f}", f"{100 * (e_step / p_step - 1):+.1f}%"],
        [
            "decode",
            f"{p_full:.3f} ({model.max_window} latents)",
            f"{e_dec:.3f} ({keep} latents)",
            f"{p_full / e_dec:.2f}x faster (cropped)",
        ],
        [
            "equal work: text+denoise+cropped decode (+WAV for engine)",
            f"{p_td + p_crop:.3f}",
            f"{e_wall:.3f}",
            f"{a['engine_overhead_equal_work_pct']:+.1f}% (engine overhead)",
        ],
        ["as shipped: end to end", f"{p_td + p_full:.3f}", f"{e_wall:.3f}", f"**{ship_ratio:.2f}x** faster"],
    ]
    if steps < N:
        x = a["extrapolated"]
        rows_a.append(
            [
                f"as shipped, extrapolated to {N} steps",
                f"{x['plain_total_s']:.1f}",
                f"{x['engine_total_s']:.1f}",
                f"{x['plain_total_s'] / x['engine_total_s']:.2f}x faster",
            ]
        )
    md = [
        f"### Engine vs plain diffusers, {args.size} size (random weights), {D:g} s clip, {steps} steps, "
        f"guidance {args.guidance:g}, fp32 CPU",
        "",
        f"(a) Single request, seconds (median of {reps} A/B-interleaved rounds; ratios are medians of per-round "
        'ratios). Engine: window="full" (same denoising work as the pipeline), '
        f"batch_wait_ms={args.batch_wait_ms} (a lone request waits this long for company), WAV encoding included.",
        "",
        md_table(["", "plain `pipe(...)`", "service Engine", "engine vs plain"], rows_a),
    ]

    # -- (b)+(c) load ----------------------------------------------------------------------------
    if not single_only:
        print(f"(b) load: clients {levels}, max_batch_size {args.max_batch_size}", flush=True)
        plain_server = PlainServer(pipe, args.guidance)
        load = []
        for li, c in enumerate(levels):
            total = max(min_req, c)
            per_client = math.ceil(total / c)
            order = ("plain", "engine") if li % 2 == 0 else ("engine", "plain")
            for side in order:
                lat: list[float] = []
                lock = threading.Lock()

                def client(k: int, side=side, lat=lat, lock=lock, per_client=per_client) -> None:
                    for i in range(per_client):
                        seed = 1000 * k + i
                        t = time.perf_counter()
                        if side == "plain":
                            plain_server.request(D, steps, seed)
                        else:
                            job = engine.submit(gp(seed))
                            waiter.event(job.id).wait()
                            if job.status != "done":
                                raise RuntimeError(job.error)
                        with lock:
                            lat.append(time.perf_counter() - t)

                stats0 = dict(engine.stats)
                base = sampler.reset()
                t = time.perf_counter()
                threads = [threading.Thread(target=client, args=(k,)) for k in range(c)]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                wall = time.perf_counter() - t
                dit.take()
                n = len(lat)
                row = {
                    "clients": c,
                    "server": side,
                    "requests": n,
                    "wall_s": wall,
                    "throughput_per_min": 60 * n / wall,
                    "p50_s": pct(lat, 50),
                    "p95_s": pct(lat, 95),
                    "mean_s": sum(lat) / n,
                    "rss_base_gib": base,
                    "peak_rss_gib": sampler.peak(),
                    "loadavg": loadavg(),
                }
                if side == "engine":
                    row["batches"] = engine.stats["batches"] - stats0["batches"]
                    row["mean_batch"] = n / max(1, row["batches"])
                load.append(row)
                print(
                    f"  {c:>2} clients {side:>6}: {n} req in {wall:.1f}s = {row['throughput_per_min']:.1f}/min, "
                    f"p50 {row['p50_s']:.2f}s p95 {row['p95_s']:.2f}s, peak RSS {row['peak_rss_gib']:.2f} GiB"
                    + (f", mean batch {row['mean_batch']:.1f}" if side == "engine" else ""),
                    flush=True,
                )
        plain_server.close()
        res["load"] = load
        load_log.append(("after load", loadavg()))
        rows_b = []
        for c in levels:
            p = next(r for r in load if r["clients"] == c and r["server"] == "plain")
            e = next(r for r in load if r["clients"] == c and r["server"] == "engine")
            rows_b.append(
                [
                    c,
                    p["requests"],
                    f"{p['throughput_per_min']:.1f}",
                    f"{e['throughput_per_min']:.1f}",
                    f"**{e['throughput_per_min'] / p['throughput_per_min']:.2f}x**",
                    f"{p['p50_s']:.2f} / {p['p95_s']:.2f}",
                    f"{e['p50_s']:.2f} / {e['p95_s']:.2f}",
                    f"{e['mean_batch']:.1f}",
                    f"{p['peak_rss_gib']:.2f}",
                    f"{e['peak_rss_gib']:.2f}",
                ]
            )
        md += [
            "",
            f"(b, c) Closed-loop load: each client sends its next request when the last one returns; "
            f"max(clients, {min_req}) requests per level; plain = one `pipe(...)` per request in arrival order "
            f"(full-window denoise + decode of all {model.max_window} latents); engine = max_batch_size "
            f'{args.max_batch_size}, batch_wait_ms {args.batch_wait_ms}, window="full", cropped decode of {keep} '
            "latents (decode runs per request, not batched). Peak RSS is the whole process (weights included) "
            "while that side ran.",
            "",
            md_table(
                [
                    "clients",
                    "requests",
                    "plain req/min",
                    "engine req/min",
                    "throughput ratio",
                    "plain p50 / p95 (s)",
                    "engine p50 / p95 (s)",
                    "mean batch",
                    "plain peak RSS (GiB)",
                    "engine peak RSS (GiB)",
                ],
                rows_b,
            ),
        ]
    engine.shutdown(grace_s=5)
    sampler.close()
    res["max_rss_gib"] = maxrss_gib()
    res["load_log"] = load_log
    res["machine"]["loadavg_end"] = loadavg()
    md += [
        "",
        f"Process peak RSS (high-water mark): {res['max_rss_gib']:.2f} GiB. Load average: "
        + ", ".join(f"{k} {v}" for k, v in load_log)
        + ".",
        "",
        machine_line(res["machine"]),
    ]
    text = "\n".join(md)
    js, mdp = write_results(args.out or f"engine_{args.size}", res, text)
    print()
    print(text)
    print(f"\nwrote {js} and {mdp}")


if __name__ == "__main__":
    main()
