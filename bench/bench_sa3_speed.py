"""Stable Audio 3 small, real-size random weights, on this machine: the plain eager fp32 path vs the fastest
configuration the service offers, interleaved in one run.

    python -m bench.bench_sa3_speed --duration 10 --json      # also --duration 30, --duration 120

Three configurations of the same request (8 steps, guidance 1, the official 6 s duration padding), text encoder
included (no text cache), run in alternating order (ABC CBA ...) so load from other processes hits all alike:

* "eager_fp32": `StableAudio3Model` without its speed settings (`SA3Options(cache_request_tensors=False,
  decode_kept=False)`: cross-attention keys/values and local-conditioning embeddings recomputed at every step,
  every decode window decoded in full; no int8, no compile).
* "exact": what the service runs by default (the same numbers up to float round-off): per-request cross-attention
  K/V and local-embedding caches, decode of the kept latents only, threads = cores.
* "fast": "exact" plus the opt-in levers: `--quantize int8` (default; `STABLE_AUDIO_QUANTIZE=int8`: dynamic int8
  Linear layers in the DiT, SAME and T5Gemma) or `--quantize int8-dit` (the DiT only), and `--compile`
  (`STABLE_AUDIO_COMPILE=1`; its warm-up is excluded from the timings and reported apart).

Prints a table and, as its last line, one JSON object: rtf (the fastest configuration), rtf_eager_fp32, speedup,
config, text_s, dit_s, decode_s, peak_rss_gib, matmul_gflops (2048x2048 fp32 matmul, measured at the start and the
end of this run), the "exact" row, and the max deviation of each configuration's latents and audio from eager fp32
(random weights: it says nothing about audio quality).
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


def make_fast(model, *, quantize: str, compile: bool, warmup: tuple[float, ...] = ()):
    """A copy of `model` with the service's speed settings on (the plain model keeps its fp32 weights); with
    compile, warmed up for `warmup` clip lengths while it is built. Returns it and what is on."""
    from stable_audio_service.models.stable_audio_3.accel import SA3Options
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
        options=SA3Options(threads=0, quantize=quantize, compile=compile, warmup_durations=warmup),
    )
    return fast, fast.speed_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="clip length in seconds (10, 30, 120)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="rounds; each runs every configuration once")
    parser.add_argument("--device", default="cpu", help="cpu (int8 is a CPU lever) or cuda")
    parser.add_argument(
        "--quantize", default="int8", choices=["int8", "int8-dit", "none"], help="the fast row's int8 (CPU only)"
    )
    parser.add_argument("--no-int8", action="store_true", help="same as --quantize none")
    parser.add_argument("--compile", action="store_true", help="add torch.compile (warm-up excluded from timings)")
    parser.add_argument("--json", action="store_true", help="also write bench/results/sa3_speed_<duration>s.json")
    args = parser.parse_args()
    quantize = "none" if args.no_int8 or args.device != "cpu" else args.quantize
    quiet()
    from stable_audio_service.models.stable_audio_3.accel import SA3Options

    from .sa3_real import build_real_small, parameter_counts

    machine = machine_info()
    gflops = [matmul_gflops(args.device)]
    t0 = time.perf_counter()
    model = build_real_small(options=SA3Options(cache_request_tensors=False, decode_kept=False))
    if args.device != "cpu":
        for part in (model.dit, model.autoencoder, model.duration_cond, model.text):
            part.to(args.device)
        model.text.__dict__["encoder"] = model.text.encoder.to(args.device)
        model.device = args.device
    build_s = time.perf_counter() - t0
    models = {"eager_fp32": model}
    levers = {}
    models["exact"], levers["exact"] = make_fast(model, quantize="none", compile=False)
    warm_s = 0.0
    if quantize != "none" or args.compile:
        warmup = (args.duration,) if args.compile else ()
        models["fast"], levers["fast"] = make_fast(model, quantize=quantize, compile=args.compile, warmup=warmup)
        warm_s = levers["fast"].get("warmup_s", 0.0)
    names = list(models)
    fastest_name = names[-1]
    on = levers[fastest_name]

    sampler = RssSampler()
    runs: dict[str, list[dict]] = {name: [] for name in names}
    peaks: dict[str, float] = dict.fromkeys(names, 0.0)
    order: list[str] = []
    for r in range(max(1, args.rounds)):  # ABC CBA: load from other processes hits every row alike
        order += names if r % 2 == 0 else names[::-1]
    for name in order:
        sampler.reset()
        result = run_once(models[name], args.duration, args.steps, seed=1)
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

    ref = runs["eager_fp32"][0]
    deviation = {
        name: {
            "latents": float((runs[name][0]["latents"] - ref["latents"]).abs().max()),
            "audio": float(np.abs(runs[name][0]["audio"] - ref["audio"]).max()),
        }
        for name in names[1:]
    }
    eager_total = median("eager_fp32", "total_s")
    rows = []
    for name in names:
        total = median(name, "total_s")
        rows.append(
            [
                name,
                f"{median(name, 'text_s'):.2f}",
                f"{median(name, 'dit_s'):.2f}",
                f"{median(name, 'decode_s'):.2f}",
                f"{total:.2f}",
                f"{total / args.duration:.2f}",
                f"{eager_total / total:.2f}x",
                f"{peaks[name]:.2f}",
            ]
        )
    table = md_table(["config", "text s", "DiT s", "decode s", "total s", "RTF", "vs eager", "peak RSS GiB"], rows)

    def phases(name: str) -> dict:
        return {k: round(median(name, k), 3) for k in ("text_s", "dit_s", "decode_s", "total_s")}

    fast_total = median(fastest_name, "total_s")
    summary = {
        "duration": args.duration,
        "rtf": round(fast_total / args.duration, 3),
        "rtf_eager_fp32": round(eager_total / args.duration, 3),
        "speedup": round(eager_total / fast_total, 2),
        "config": {
            "name": fastest_name,
            "levers": on,
            "steps": args.steps,
            "guidance": 1.0,
            "dtype": "float32",
            "device": args.device,
        },
        "text_s": round(median(fastest_name, "text_s"), 3),
        "dit_s": round(median(fastest_name, "dit_s"), 3),
        "decode_s": round(median(fastest_name, "decode_s"), 3),
        "eager_fp32": phases("eager_fp32"),
        "exact": dict(
            phases("exact"),
            rtf=round(median("exact", "total_s") / args.duration, 3),
            speedup=round(eager_total / median("exact", "total_s"), 2),
        ),
        "peak_rss_gib": round(peaks[fastest_name], 2),
        "peak_rss_gib_note": "process RSS while that configuration ran; every model is resident in this process",
        "peak_rss_gib_per_config": {name: round(peaks[name], 2) for name in names},
        "matmul_gflops": round(statistics.median(gflops), 1),
        "matmul_gflops_start_end": [round(g, 1) for g in gflops],
        "max_abs_dev_vs_eager": deviation,
        "latent_length": ref["latent_length"],
        "rounds": args.rounds,
        "build_s": round(build_s, 1),
        "compile_warmup_s": round(warm_s, 1),
        "parameters_m": parameter_counts(model),
        "machine": {k: machine[k] for k in ("cpu", "cpu_flags", "nproc", "torch_threads", "torch", "loadavg_start")},
    }
    print()
    print(
        f"Stable Audio 3 small (real size, random weights), {args.duration:g} s clip, {args.steps} steps, "
        f"{args.device}; fp32 matmul {summary['matmul_gflops']} GFLOP/s "
        f"(start, end: {summary['matmul_gflops_start_end']})"
    )
    print(table)
    print(
        f"fastest: {fastest_name} {summary['speedup']}x vs eager fp32; levers: {json.dumps(on)}; max |dev| from eager "
        f"fp32: {json.dumps(deviation)} (random weights: says nothing about audio quality)"
    )
    if args.json:
        suffix = (
            "" if quantize == "int8" and not args.compile else f"_{quantize}" + ("_compile" if args.compile else "")
        )
        write_results(f"sa3_speed_{args.duration:g}s{suffix}", dict(summary, machine=machine), table)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
