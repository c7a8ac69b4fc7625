"""Stable Audio 3 small, real-size random weights (or a real checkpoint, `--model`), on this machine: the plain
eager float32 path beside every way the service can serve it, interleaved in one run.

    python -m bench.bench_sa3_speed --duration 10 --json      # also --duration 30, --duration 120

One request (8 steps, guidance 1, the official 6 s duration padding, text encoder included, no text cache) per
row, the rows in alternating order (ABC... ...CBA) so load from other processes hits all alike. Every row serves
the same weights (`sa3_structures.served_as`):

* "eager_fp32": `StableAudio3Model` without its speed settings (`SA3Options(cache_request_tensors=False,
  decode_kept=False)`: cross-attention keys/values and local-conditioning embeddings recomputed at every step,
  every decode window decoded in full; no int8, no compile).
* "exact": the service's default settings in float32 (the same numbers up to float round-off): per-request
  cross-attention K/V and local-embedding caches, decode of the kept latents only, threads = cores.
* "bfloat16", "float16" (`--dtypes`): "exact" with the DiT, SAME and conditioners in that dtype (the T5Gemma
  encoder stays float32, as the service keeps it), what `STABLE_AUDIO_DTYPE` selects. On CPUs float16 matmuls
  have no fast kernels; the row says how slow.
* "int8" (CPU; `--quantize int8`, default, or `int8-dit`): "exact" in float32 plus dynamic int8 Linear layers
  (`STABLE_AUDIO_QUANTIZE`); `--compile` adds `STABLE_AUDIO_COMPILE=1` (warm-up excluded, reported apart). int8
  is applied on float32 weights only: torch's dynamic int8 Linear takes float32 activations (a bfloat16 model
  raises "expected scalar type Float but found BFloat16"), and casting a bfloat16 model's activations around it
  was measured no faster than the bfloat16 GEMM itself, so there is no int8-on-bfloat16 row.

The row named "default" in the JSON is the configuration the service runs with no speed settings: "exact" at the
dtype `STABLE_AUDIO_DTYPE=auto` picks on this machine (`loading.choose_dtype`, with its reason).

Quality against float32 of the same weights: the cosine similarity of each row's final latents and decoded audio
with the "exact" row's, and a gate (`--gate`, 0.99) on int8. With random weights these figures only show how far
a lever moves the numbers; they say nothing about audio quality. Run with `--model DIR` (a real checkpoint) for a
gate that means something.

`--rounds 2` (default) runs ABC... ...CBA and reports medians; every row first runs one untimed 1-step request.

Prints a table and, as its last line, one JSON object: rtf, dtype, config, text_s, dit_s, decode_s and
peak_rss_gib of the fastest row; rtf_eager_fp32, speedup; default (the service's default row: rtf, dtype, phases,
reason); rows (every row); quality; matmul_gflops (2048x2048 float32 matmul at the start and the end; bfloat16
too), cpu_model, cpu_flags (the matmul-relevant features: AVX2, AVX-512, VNNI, BF16, AMX, ...), and the max
deviation of each row's latents and audio from eager float32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import RssSampler, cpu_flags, cpu_model, machine_info, md_table, quiet, write_results

DTYPES = ("float32", "bfloat16", "float16")
QUALITY_GATE = 0.99


def sync(device: str) -> None:
    """Wait for queued GPU work, so a phase's time is its own (nothing to wait for on the CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def matmul_gflops(device: str = "cpu", n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best-of-`repeats` rate of one n x n matmul: how fast this machine is during the run (it is shared)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def run_once(model, duration: float, steps: int, seed: int) -> dict[str, Any]:
    """One request through the family's start/step/finish (what the engine calls), timed per phase."""
    from stable_audio_service.models.base import GenerationParams

    params = GenerationParams(
        prompt="warm analog synth pads over a slow beat",
        duration=duration,
        guidance_scale=1.0,
        num_inference_steps=steps,
        seed=seed,
    )
    device = str(model.device)
    sync(device)
    t0 = time.perf_counter()
    state = model.start(params)
    sync(device)
    t1 = time.perf_counter()
    while not state.finished:
        model.step([state])
    sync(device)
    t2 = time.perf_counter()
    latents = state.x.float().cpu().clone()
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


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of two arrays or tensors, in float64 (1.0: same direction)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    denom = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / denom) if denom > 0 else float("nan")


def default_dtype(device: str) -> tuple[str, str]:
    """The dtype the service serves Stable Audio 3 in with `STABLE_AUDIO_DTYPE=auto` here, and why."""
    from stable_audio_service.models.loading import choose_dtype
    from stable_audio_service.models.stable_audio_3.family import FAMILY

    choice = choose_dtype(device, "auto", cpu_bfloat16=FAMILY.cpu_bfloat16)
    return choice.name, choice.reason


def parse_dtypes(text: str) -> list[str]:
    """`--dtypes` as a list, float32 first (the "exact" row); unknown names are an error."""
    names = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in names if d not in DTYPES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown dtype(s) {unknown}; choose from {', '.join(DTYPES)}")
    return ["float32"] + [d for d in DTYPES[1:] if d in names]


def build_rows(base, device: str, dtypes: list[str], quantize: str, compile: bool, warmup: tuple[float, ...]):
    """The served variants of `base` (float32, eager settings) keyed by row name, and what each has on."""
    from stable_audio_service.models.stable_audio_3.accel import SA3Options

    from .sa3_structures import served_as

    models: dict[str, Any] = {"eager_fp32": base}
    levers: dict[str, dict] = {"eager_fp32": {}}
    for name in dtypes:
        row = "exact" if name == "float32" else name
        models[row] = served_as(base, dtype=getattr(torch, name), device=device, options=SA3Options(threads=0))
        levers[row] = dict(models[row].speed_settings)
    if quantize != "none" or compile:
        options = SA3Options(threads=0, quantize=quantize, compile=compile, warmup_durations=warmup)
        row = quantize if quantize != "none" else "compile"
        row += "+compile" if compile and quantize != "none" else ""
        models[row] = served_as(base, device=device, options=options)
        levers[row] = dict(models[row].speed_settings)
    return models, levers


def load_base(model_dir: str | None, device: str):
    """float32 weights with the plain eager settings: a real checkpoint (`model_dir`) or the real-size small
    structure with random weights; on `device`."""
    from stable_audio_service.models.stable_audio_3.accel import SA3Options

    eager = SA3Options(cache_request_tensors=False, decode_kept=False)
    if model_dir:
        from stable_audio_service.models.stable_audio_3.family import StableAudio3Model

        return StableAudio3Model.from_checkpoint(
            Path(model_dir),
            name=Path(model_dir).name,
            device=device,
            dtype=torch.float32,
            text_cache_size=0,
            options=eager,
        )
    from .sa3_real import build_real_small

    return build_real_small(options=eager, device=device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="clip length in seconds (10, 30, 120)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds (ABC CBA ...); each runs every configuration once; medians"
    )
    parser.add_argument("--device", default="cpu", help="cpu (int8 is a CPU lever) or cuda")
    parser.add_argument(
        "--dtypes",
        type=parse_dtypes,
        default=list(DTYPES),
        help="served dtypes beside eager float32, comma-separated (default: float32,bfloat16,float16)",
    )
    parser.add_argument(
        "--quantize", default="int8", choices=["int8", "int8-dit", "none"], help="the int8 row (CPU only)"
    )
    parser.add_argument("--no-int8", action="store_true", help="same as --quantize none")
    parser.add_argument("--compile", action="store_true", help="add torch.compile (warm-up excluded from timings)")
    parser.add_argument("--model", help="a real Stable Audio 3 checkpoint directory instead of random weights")
    parser.add_argument("--gate", type=float, default=QUALITY_GATE, help="int8's cosine gate against float32")
    parser.add_argument("--json", action="store_true", help="also write bench/results/sa3_speed_<duration>s.json")
    args = parser.parse_args(argv)
    quantize = "none" if args.no_int8 or args.device != "cpu" else args.quantize
    quiet()

    from .sa3_real import parameter_counts

    machine = machine_info()
    default_name, default_reason = default_dtype(args.device)
    dtypes = args.dtypes if default_name in args.dtypes else parse_dtypes(",".join([*args.dtypes, default_name]))
    gflops = [matmul_gflops(args.device)]
    gflops_bf16 = [matmul_gflops(args.device, dtype=torch.bfloat16)]
    t0 = time.perf_counter()
    base = load_base(args.model, args.device)
    build_s = time.perf_counter() - t0
    warmup = (args.duration,) if args.compile else ()
    models, levers = build_rows(base, args.device, dtypes, quantize, args.compile, warmup)
    warm_s = sum(lv.get("warmup_s", 0.0) for lv in levers.values())
    names = list(models)
    row_dtype = {name: str(models[name].torch_dtype).removeprefix("torch.") for name in names}
    default_row = "exact" if default_name == "float32" else default_name

    for name in names:  # untimed: kernels and buffers of every row's first call, so round 1 is not penalised
        run_once(models[name], 1.0, 1, seed=0)
    sampler = RssSampler()
    runs: dict[str, list[dict]] = {name: [] for name in names}
    peaks: dict[str, float] = dict.fromkeys(names, 0.0)
    vram: dict[str, float] = dict.fromkeys(names, 0.0)
    order: list[str] = []
    for r in range(max(1, args.rounds)):  # ABC CBA: load from other processes hits every row alike
        order += names if r % 2 == 0 else names[::-1]
    for name in order:
        sampler.reset()
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        result = run_once(models[name], args.duration, args.steps, seed=1)
        peaks[name] = max(peaks[name], sampler.peak())
        if args.device.startswith("cuda"):
            vram[name] = max(vram[name], torch.cuda.max_memory_allocated() / 2**30)
        runs[name].append(result)
        print(
            f"  {name}: text {result['text_s']:.2f} s, DiT {result['dit_s']:.2f} s, "
            f"decode {result['decode_s']:.2f} s, total {result['total_s']:.2f} s",
            flush=True,
        )
    sampler.close()
    gflops.append(matmul_gflops(args.device))
    gflops_bf16.append(matmul_gflops(args.device, dtype=torch.bfloat16))

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    ref = runs["eager_fp32"][0]
    exact = runs["exact"][0]
    deviation = {
        name: {
            "latents": float((runs[name][0]["latents"] - ref["latents"]).abs().max()),
            "audio": float(np.abs(runs[name][0]["audio"] - ref["audio"]).max()),
        }
        for name in names[1:]
    }
    quality = {
        name: {
            "cos_latents": round(cosine(runs[name][0]["latents"], exact["latents"]), 6),
            "cos_audio": round(cosine(runs[name][0]["audio"], exact["audio"]), 6),
            "finite": bool(np.isfinite(runs[name][0]["audio"]).all()),
        }
        for name in names
        if name not in ("eager_fp32", "exact")
    }
    eager_total = median("eager_fp32", "total_s")

    def row(name: str) -> dict[str, Any]:
        total = median(name, "total_s")
        out: dict[str, Any] = {
            "dtype": row_dtype[name],
            "levers": levers[name],
            **{k: round(median(name, k), 3) for k in ("text_s", "dit_s", "decode_s", "total_s")},
            "rtf": round(total / args.duration, 3),
            "speedup": round(eager_total / total, 2),
            "peak_rss_gib": round(peaks[name], 2),
        }
        if args.device.startswith("cuda"):
            out["peak_vram_gib"] = round(vram[name], 2)
        return out

    rows = {name: row(name) for name in names}
    fastest = min(names[1:], key=lambda n: rows[n]["total_s"])
    table_rows = [
        [
            name + (" (default)" if name == default_row else ""),
            r["dtype"],
            f"{r['text_s']:.2f}",
            f"{r['dit_s']:.2f}",
            f"{r['decode_s']:.2f}",
            f"{r['total_s']:.2f}",
            f"{r['rtf']:.2f}",
            f"{r['speedup']:.2f}x",
            f"{quality[name]['cos_audio']:.4f}" if name in quality else "1 (ref)" if name == "exact" else "-",
            f"{r['peak_rss_gib']:.2f}",
            *([f"{r['peak_vram_gib']:.2f}"] if "peak_vram_gib" in r else []),
        ]
        for name, r in rows.items()
    ]
    headers = ["config", "dtype", "text s", "DiT s", "decode s", "total s", "RTF", "vs eager", "audio cos"]
    headers += ["peak RSS GiB"] + (["peak VRAM GiB"] if args.device.startswith("cuda") else [])
    table = md_table(headers, table_rows)
    int8_rows = [n for n in quality if n.startswith("int8")]
    gate = {
        name: {
            "threshold": args.gate,
            "pass": quality[name]["cos_latents"] >= args.gate and quality[name]["cos_audio"] >= args.gate,
        }
        for name in int8_rows
    }
    weights = f"checkpoint {args.model}" if args.model else "random weights"
    fast = rows[fastest]
    summary = {
        "duration": args.duration,
        "rtf": fast["rtf"],
        "dtype": fast["dtype"],
        "rtf_eager_fp32": round(eager_total / args.duration, 3),
        "speedup": fast["speedup"],
        "config": {
            "name": fastest,
            "levers": fast["levers"],
            "steps": args.steps,
            "guidance": 1.0,
            "dtype": fast["dtype"],
            "device": args.device,
        },
        "text_s": fast["text_s"],
        "dit_s": fast["dit_s"],
        "decode_s": fast["decode_s"],
        "default": dict(rows[default_row], name=default_row, reason=default_reason),
        "eager_fp32": {k: rows["eager_fp32"][k] for k in ("text_s", "dit_s", "decode_s", "total_s")},
        "exact": {k: rows["exact"][k] for k in ("text_s", "dit_s", "decode_s", "total_s", "rtf", "speedup")},
        "rows": rows,
        "quality": {
            "vs": "exact (float32, same weights, same seed)",
            "weights": weights,
            "note": "random weights say nothing about audio quality"
            if not args.model
            else "meaningful only if the checkpoint holds trained weights",
            "rows": quality,
            "int8_gate": gate,
        },
        "peak_rss_gib": fast["peak_rss_gib"],
        "peak_rss_gib_note": "process RSS while that configuration ran; every model is resident in this process",
        "peak_rss_gib_per_config": {name: rows[name]["peak_rss_gib"] for name in names},
        "matmul_gflops": round(statistics.median(gflops), 1),
        "matmul_gflops_start_end": [round(g, 1) for g in gflops],
        "matmul_gflops_bf16_start_end": [round(g, 1) for g in gflops_bf16],
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "max_abs_dev_vs_eager": deviation,
        "latent_length": ref["latent_length"],
        "rounds": args.rounds,
        "build_s": round(build_s, 1),
        "compile_warmup_s": round(warm_s, 1),
        "parameters_m": parameter_counts(base),
        "machine": {k: machine[k] for k in ("cpu", "cpu_flags", "nproc", "torch_threads", "torch", "loadavg_start")},
    }
    print()
    print(
        f"Stable Audio 3 small ({'real size, ' if not args.model else ''}{weights}), {args.duration:g} s clip, "
        f"{args.steps} steps, {args.device}; {summary['cpu_model']} [{','.join(summary['cpu_flags'])}]; "
        f"matmul 2048^2 GFLOP/s float32 {summary['matmul_gflops_start_end']}, bfloat16 "
        f"{summary['matmul_gflops_bf16_start_end']} (start, end); load average at start {machine['loadavg_start']}"
    )
    print(table)
    print(
        f"fastest: {fastest} ({fast['dtype']}) {fast['speedup']}x vs eager fp32; default: {default_row} "
        f"({default_name}: {default_reason}), {rows[default_row]['speedup']}x"
    )
    print(f"max |dev| from eager fp32: {json.dumps(deviation)}")
    print(f"quality vs float32 of the same weights (cosine of final latents / decoded audio, {weights}):")
    for name, q in quality.items():
        verdict = ""
        if name in gate:
            verdict = f"  int8 gate (both >= {args.gate}): {'PASS' if gate[name]['pass'] else 'FAIL'}"
        print(f"  {name}: latents {q['cos_latents']:.6f}, audio {q['cos_audio']:.6f}{verdict}")
    if not args.model:
        print(
            "  random weights say nothing about audio quality: these cosines only show how far each setting moves "
            "the numbers; judge int8 and half precision on a real checkpoint (--model DIR) and by listening."
        )
    if args.json:
        suffix = (
            "" if quantize == "int8" and not args.compile else f"_{quantize}" + ("_compile" if args.compile else "")
        )
        if args.device != "cpu":
            suffix += f"_{args.device.split(':')[0]}"
        write_results(f"sa3_speed_{args.duration:g}s{suffix}", dict(summary, machine=machine), table)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
