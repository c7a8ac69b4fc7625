"""Issue 12: Stable Audio 3 small, real-size random weights, on this machine: the plain eager fp32 path vs the
fastest configuration the service offers, interleaved in one run.

    python -m bench.bench_sa3_speed --duration 10 --json      # also --duration 30, --duration 120

"plain eager fp32": `StableAudio3Model` as it was before issue 12 (cross-attention keys/values recomputed at every
step, every decode window decoded in full; no int8, no compile, default threads). "fast": what the service runs
with `STABLE_AUDIO_QUANTIZE=int8` (cross-attention cache, kept-latents decode, int8 dynamic Linear layers in the
DiT, SAME and T5Gemma; `--compile` adds `STABLE_AUDIO_COMPILE=1`). Both run the same request (8 steps, guidance 1,
the official 6 s duration padding) in alternating order (ABBA), text encoder included (no text cache).

Prints a table and, as its last line, one JSON object: rtf (fast), rtf_eager_fp32, speedup, config, text_s, dit_s,
decode_s, peak_rss_gib, matmul_gflops (2048x2048 fp32 matmul, measured at the start and the end of this run), and
the max deviation of the fast path's latents and audio from fp32 (random weights: it says nothing about quality).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import numpy as np
import torch

from .common import RssSampler, machine_info, md_table, quiet, write_results


def matmul_gflops(device: str = "cpu", n: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` rate of one n x n fp32 matmul."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def run_once(model, duration: float, steps: int, seed: int) -> dict:
    """One request through the family's start/step/finish (what the engine calls), timed per phase."""
    from stable_audio_service.models.base import GenerationParams

    params = GenerationParams(
        prompt="warm analog synth pads over a slow beat",
        duration=duration,
        guidance_scale=1.0,
        num_inference_steps=steps,
        seed=seed,
    )
    t0 = time.perf_counter()
    state = model.start(params)
    t1 = time.perf_counter()
    while not state.finished:
        model.step([state])
    t2 = time.perf_counter()
    latents = state.x.clone()
    audio = model.finish(state)
    t3 = time.perf_counter()
    return {
        "text_s": t1 - t0,
        "dit_s": t2 - t1,
        "decode_s": t3 - t2,
        "total_s": t3 - t0,
        "latents": latents,
        "audio": audio,
        "latent_length": state.window.latent_length,
    }


def make_fast(model, *, int8: bool, compile: bool):
    """A copy of `model` with the service's levers on (the plain model keeps its fp32 weights)."""
    from stable_audio_service.models.stable_audio_3 import accel
    from stable_audio_service.models.stable_audio_3.family import StableAudio3Model

    text = copy.copy(model.text)  # shares the tokenizer and (empty) cache; its own encoder copy below
    text.__dict__["encoder"] = copy.deepcopy(model.text.encoder)
    fast = StableAudio3Model(
        name=model.name,
        config=model.config,
        dit=copy.deepcopy(model.dit),
        autoencoder=copy.deepcopy(model.autoencoder),
        text=text,
        duration=model.duration_cond,
        device=model.device,
        dtype=model.torch_dtype,
    )
    fast.cache_cross_kv = True
    fast.decode_kept = True
    on = accel.apply(fast, quantize="int8" if int8 else "none", compile=compile)
    return fast, on


def plain(model):
    model.cache_cross_kv = False
    model.decode_kept = False
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="clip length in seconds (10, 30, 120)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="rounds; each runs both, in alternating order")
    parser.add_argument("--device", default="cpu", help="cpu (int8 is a CPU lever) or cuda")
    parser.add_argument("--no-int8", action="store_true", help="fast = the exact levers only")
    parser.add_argument("--compile", action="store_true", help="add torch.compile (warm-up excluded from timings)")
    parser.add_argument("--json", action="store_true", help="also write bench/results/sa3_speed_<duration>s.json")
    args = parser.parse_args()
    quiet()
    from .sa3_real import build_real_small, parameter_counts

    machine = machine_info()
    gflops = [matmul_gflops(args.device)]
    t0 = time.perf_counter()
    model = plain(build_real_small())
    if args.device != "cpu":
        for part in (model.dit, model.autoencoder, model.duration_cond, model.text):
            part.to(args.device)
        model.text.__dict__["encoder"] = model.text.encoder.to(args.device)
        model.device = args.device
    build_s = time.perf_counter() - t0
    fast, on = make_fast(model, int8=not args.no_int8 and args.device == "cpu", compile=args.compile)
    warm_s = 0.0
    if args.compile:
        from stable_audio_service.models.stable_audio_3 import accel

        warm_s = accel.warm_up(fast, [args.duration])
    config = {"levers": on, "steps": args.steps, "guidance": 1.0, "dtype": "float32", "device": args.device}

    sampler = RssSampler()
    runs: dict[str, list[dict]] = {"eager_fp32": [], "fast": []}
    peaks: dict[str, float] = {"eager_fp32": 0.0, "fast": 0.0}
    order: list[str] = []
    for r in range(max(1, args.rounds)):  # ABBA: load from other processes hits both alike
        order += ["eager_fp32", "fast"] if r % 2 == 0 else ["fast", "eager_fp32"]
    for name in order:
        sampler.reset()
        result = run_once(model if name == "eager_fp32" else fast, args.duration, args.steps, seed=1)
        peaks[name] = max(peaks[name], sampler.peak())
        runs[name].append(result)
        print(
            f"  {name}: text {result['text_s']:.2f} s, DiT {result['dit_s']:.2f} s, "
            f"decode {result['decode_s']:.2f} s, total {result['total_s']:.2f} s",
            flush=True,
        )
    sampler.close()
    gflops.append(matmul_gflops(args.device))

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    eager_total, fast_total = median("eager_fp32", "total_s"), median("fast", "total_s")
    ref, got = runs["eager_fp32"][0], runs["fast"][0]
    dev_latents = float((got["latents"] - ref["latents"]).abs().max())
    dev_audio = float(np.abs(got["audio"] - ref["audio"]).max())
    rows = []
    for name in ("eager_fp32", "fast"):
        total = median(name, "total_s")
        rows.append(
            [
                name,
                f"{median(name, 'text_s'):.2f}",
                f"{median(name, 'dit_s'):.2f}",
                f"{median(name, 'decode_s'):.2f}",
                f"{total:.2f}",
                f"{total / args.duration:.2f}",
                f"{peaks[name]:.2f}",
            ]
        )
    table = md_table(["config", "text s", "DiT s", "decode s", "total s", "RTF", "peak RSS GiB"], rows)
    summary = {
        "duration": args.duration,
        "rtf": round(fast_total / args.duration, 3),
        "rtf_eager_fp32": round(eager_total / args.duration, 3),
        "speedup": round(eager_total / fast_total, 2),
        "config": config,
        "text_s": round(median("fast", "text_s"), 3),
        "dit_s": round(median("fast", "dit_s"), 3),
        "decode_s": round(median("fast", "decode_s"), 3),
        "eager_fp32": {k: round(median("eager_fp32", k), 3) for k in ("text_s", "dit_s", "decode_s", "total_s")},
        "peak_rss_gib": round(peaks["fast"], 2),
        "peak_rss_gib_note": "process RSS while the fast path ran; both models are resident in this process",
        "matmul_gflops": round(statistics.median(gflops), 1),
        "matmul_gflops_start_end": [round(g, 1) for g in gflops],
        "max_abs_dev_latents": dev_latents,
        "max_abs_dev_audio": dev_audio,
        "latent_length": ref["latent_length"],
        "rounds": args.rounds,
        "build_s": round(build_s, 1),
        "warmup_s": round(warm_s, 1),
        "parameters_m": parameter_counts(model),
        "machine": {k: machine[k] for k in ("cpu", "cpu_flags", "nproc", "torch_threads", "torch", "loadavg_start")},
    }
    print()
    print(
        f"Stable Audio 3 small (real size, random weights), {args.duration:g} s clip, {args.steps} steps, "
        f"{args.device}; fp32 matmul {summary['matmul_gflops']} GFLOP/s"
    )
    print(table)
    print(
        f"speedup {summary['speedup']}x; fast levers: {json.dumps(on)}; max |dev| latents {dev_latents:.3g}, "
        f"audio {dev_audio:.3g} (random weights: says nothing about audio quality)"
    )
    if args.json:
        write_results(f"sa3_speed_{args.duration:g}s", dict(summary, machine=machine), table)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
