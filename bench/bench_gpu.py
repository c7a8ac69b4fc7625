"""Stable Audio 3 on a GPU, in one command (`./run bench-gpu`): the real-size small and medium structures (random
weights: timing does not depend on weight values) served in float16 and bfloat16, interleaved in one process.

    ./run bench-gpu                       # = python -m bench.bench_gpu
    ./run bench-gpu --quick               # small only, 10 s, batches 1 and 4

Rows, per structure and dtype, with the service's default settings (`SA3Options(threads=0)`: request caches,
kept-latents decode), 8 steps, guidance 1, the official 6 s padding, text encoder included:

* speed: one request of 10, 30 and 120 s: text, DiT and decode seconds, real-time factor;
* throughput: 4 and 8 (and 1) requests of 10 s started together, stepped in one forward per step (what the
  engine's batching does), decoded one by one: clips per minute and seconds of audio per second;
* peak VRAM of each row for that model alone: its weights plus the row's working peak.

Every (structure, clip, batch) cell runs each dtype once per round, the dtypes alternating (AB BA), after an
untimed 1-step warm-up of that shape. Writes `bench/results/gpu_sa3.json` (every row, the GPU, torch and CUDA
versions) and `bench/results/gpu_sa3.md` (one table). Without a GPU it stops at once with one line and exit 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

GIB = 2**30
DTYPES = ("float16", "bfloat16")
STRUCTURES = ("small", "medium")
PHASES = ("text_s", "dit_s", "decode_s", "total_s")


def no_gpu_reason(device: str) -> str | None:
    """Why `device` cannot run this bench (one line for the operator), or None when it can."""
    if not device.startswith("cuda"):
        return None
    if torch.cuda.is_available():
        return None
    build = (
        f"CUDA {torch.version.cuda}"
        if torch.version.cuda
        else f"ROCm {torch.version.hip}"
        if getattr(torch.version, "hip", None)
        else "a CPU-only build"
    )
    return (
        f"bench-gpu: no GPU: torch {torch.__version__} ({build}) sees no CUDA/ROCm device; run it on a GPU machine "
        "with a GPU build of torch (TORCH_SPEC and PIP_EXTRA_INDEX_URL before the first ./run)"
    )


def sync(device: str) -> None:
    """Wait for queued GPU work so a phase's time is its own."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def allocated(device: str) -> int:
    """Bytes the caching allocator has handed out on `device` now (0 on the CPU)."""
    return torch.cuda.memory_allocated() if device.startswith("cuda") else 0


def reset_peak(device: str) -> int:
    """Start a peak-memory window; returns the bytes allocated at its start."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    return allocated(device)


def peak(device: str) -> int:
    """Most bytes allocated since `reset_peak` (0 on the CPU)."""
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0


def run_batch(model, batch: int, duration: float, steps: int, seed: int = 1) -> dict[str, float]:
    """`batch` requests of `duration` s started one by one (text), stepped together (one DiT forward per step for
    all of them, as the engine batches them), then decoded one by one; seconds per phase."""
    from stable_audio_service.models.base import GenerationParams

    device = str(model.device)
    sync(device)
    t0 = time.perf_counter()
    states = [
        model.start(
            GenerationParams(
                prompt=f"warm analog synth pads over a slow beat, take {i}",
                duration=duration,
                guidance_scale=1.0,
                num_inference_steps=steps,
                seed=seed + i,
            )
        )
        for i in range(batch)
    ]
    sync(device)
    t1 = time.perf_counter()
    while not all(s.finished for s in states):
        model.step(states)
    sync(device)
    t2 = time.perf_counter()
    finite = True
    for state in states:
        audio = model.finish(state)
        finite = finite and bool(torch.isfinite(torch.from_numpy(audio)).all())
    sync(device)
    t3 = time.perf_counter()
    return {
        "text_s": t1 - t0,
        "dit_s": t2 - t1,
        "decode_s": t3 - t2,
        "total_s": t3 - t0,
        "finite": finite,
        "latent_length": states[0].window.latent_length,
    }


def cells(durations: list[float], batches: list[int], batch_duration: float) -> list[tuple[str, float, int]]:
    """The (kind, clip seconds, batch) cells measured per structure: speed at each duration, throughput at each
    batch size."""
    return [("speed", d, 1) for d in durations] + [("throughput", batch_duration, b) for b in batches]


def measure(
    builders: dict[str, Callable[[], Any]],
    *,
    device: str,
    dtypes: list[str],
    durations: list[float],
    batches: list[int],
    batch_duration: float = 10.0,
    steps: int = 8,
    rounds: int = 1,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Every row for every structure `builders` names (each builder returns a float32 CPU model), its dtypes
    interleaved; on `device` (a CPU runs the same code, for checks with a tiny model)."""
    from stable_audio_service.models.stable_audio_3.accel import SA3Options

    from .sa3_structures import served_as

    rows: list[dict[str, Any]] = []
    for structure, build in builders.items():
        t0 = time.perf_counter()
        base = build()
        log(f"{structure}: built in {time.perf_counter() - t0:.1f} s")
        models, weights = {}, {}
        for name in dtypes:
            before = allocated(device)
            models[name] = served_as(base, dtype=getattr(torch, name), device=device, options=SA3Options(threads=0))
            weights[name] = allocated(device) - before
        del base
        gc.collect()
        for kind, duration, batch in cells(durations, batches, batch_duration):
            for name in dtypes:  # untimed: first-call kernel choice and allocation of this shape
                run_batch(models[name], batch, duration, 1)
            times: dict[str, list[dict]] = {name: [] for name in dtypes}
            peaks: dict[str, int] = dict.fromkeys(dtypes, 0)
            for r in range(max(1, rounds)):
                for name in dtypes if r % 2 == 0 else dtypes[::-1]:
                    start = reset_peak(device)
                    times[name].append(run_batch(models[name], batch, duration, steps))
                    peaks[name] = max(peaks[name], peak(device) - start)
            for name in dtypes:
                med = {k: statistics.median(t[k] for t in times[name]) for k in PHASES}
                total = med["total_s"]
                row = {
                    "structure": structure,
                    "dtype": name,
                    "kind": kind,
                    "duration": duration,
                    "batch": batch,
                    "latent_length": times[name][0]["latent_length"],
                    "steps": steps,
                    **{k: round(med[k], 4) for k in PHASES},
                    "rtf": round(total / (duration * batch), 4),
                    "clips_per_min": round(batch * 60 / total, 2),
                    "audio_s_per_s": round(batch * duration / total, 2),
                    "finite": all(t["finite"] for t in times[name]),
                    "weights_gib": round(weights[name] / GIB, 3) if device.startswith("cuda") else None,
                    "peak_vram_gib": round((weights[name] + peaks[name]) / GIB, 3)
                    if device.startswith("cuda")
                    else None,
                    "rounds": len(times[name]),
                }
                rows.append(row)
                log(
                    f"  {structure} {name} {kind} {duration:g} s x{batch}: text {row['text_s']:.3f} s, DiT "
                    f"{row['dit_s']:.3f} s, decode {row['decode_s']:.3f} s, total {row['total_s']:.3f} s, RTF "
                    f"{row['rtf']:.4f}, {row['clips_per_min']} clips/min, peak VRAM {row['peak_vram_gib']} GiB"
                )
        del models
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """One markdown table of every row."""
    from .common import md_table

    def gib(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    return md_table(
        [
            "structure",
            "dtype",
            "row",
            "clip s",
            "batch",
            "latents",
            "text s",
            "DiT s",
            "decode s",
            "total s",
            "RTF",
            "clips/min",
            "audio s/s",
            "weights GiB",
            "peak VRAM GiB",
        ],
        [
            [
                r["structure"],
                r["dtype"],
                r["kind"],
                f"{r['duration']:g}",
                r["batch"],
                r["latent_length"],
                f"{r['text_s']:.3f}",
                f"{r['dit_s']:.3f}",
                f"{r['decode_s']:.3f}",
                f"{r['total_s']:.3f}",
                f"{r['rtf']:.4f}",
                f"{r['clips_per_min']:.1f}",
                f"{r['audio_s_per_s']:.1f}",
                gib(r["weights_gib"]),
                gib(r["peak_vram_gib"]),
            ]
            for r in rows
        ],
    )


def gpu_info(device: str) -> dict[str, Any]:
    """The accelerator and its software, for the results."""
    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda}
    info["hip"] = getattr(torch.version, "hip", None)
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / GIB, 1),
            capability=f"{props.major}.{props.minor}",
            gpus=torch.cuda.device_count(),
        )
    return info


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def builders_for(structures: list[str]) -> dict[str, Callable[[], Any]]:
    """Real-size builders (float32, CPU, random weights) for the named structures."""
    from stable_audio_service.models.stable_audio_3.accel import SA3Options

    from .sa3_real import build_real_small
    from .sa3_structures import build_ours

    def small() -> Any:
        return build_real_small(options=SA3Options())

    def medium() -> Any:
        return build_ours("medium", name="sa3-medium-real-random", options=SA3Options())

    known = {"small": small, "medium": medium}
    return {s: known[s] for s in structures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (or cuda:N); cpu runs the same code, slowly")
    parser.add_argument("--dtypes", type=words, default=list(DTYPES), help="comma-separated (float16,bfloat16)")
    parser.add_argument("--structures", type=words, default=list(STRUCTURES), help="small,medium")
    parser.add_argument("--durations", type=floats, default=[10.0, 30.0, 120.0], help="speed rows' clip lengths")
    parser.add_argument("--batches", type=ints, default=[1, 4, 8], help="throughput rows' batch sizes")
    parser.add_argument("--batch-duration", type=float, default=10.0, help="throughput rows' clip length")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="timed runs per dtype and row (median)")
    parser.add_argument("--quick", action="store_true", help="small only, 10 s, batches 1 and 4, one round")
    parser.add_argument("--out", default="gpu_sa3", help="results file stem in bench/results/")
    args = parser.parse_args(argv)
    reason = no_gpu_reason(args.device)
    if reason:
        print(reason, file=sys.stderr)
        return 2
    bad = [d for d in args.dtypes if d not in ("float32", *DTYPES)] + [
        s for s in args.structures if s not in STRUCTURES
    ]
    if bad:
        parser.error(f"unknown dtype or structure: {', '.join(bad)}")
    if args.quick:
        args.structures, args.durations, args.batches, args.rounds = ["small"], [10.0], [1, 4], 1

    from .common import machine_info, quiet, write_results

    quiet()
    started = time.perf_counter()
    rows = measure(
        builders_for(args.structures),
        device=args.device,
        dtypes=args.dtypes,
        durations=args.durations,
        batches=args.batches,
        batch_duration=args.batch_duration,
        steps=args.steps,
        rounds=args.rounds,
    )
    info = gpu_info(args.device)
    md = table(rows)
    header = (
        f"Stable Audio 3 real-size structures (random weights) on {info.get('gpu', args.device)} "
        f"(torch {info['torch']}, CUDA {info['cuda']}, ROCm {info['hip']}), {args.steps} steps, guidance 1, "
        f"service defaults; medians of {args.rounds} interleaved rounds"
    )
    summary = {
        "gpu": info,
        "rows": rows,
        "settings": {
            "dtypes": args.dtypes,
            "structures": args.structures,
            "durations": args.durations,
            "batches": args.batches,
            "batch_duration": args.batch_duration,
            "steps": args.steps,
            "rounds": args.rounds,
        },
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine_info(),
    }
    print()
    print(header)
    print(md)
    json_path, md_path = write_results(args.out, summary, header + "\n\n" + md)
    print(f"wrote {json_path} and {md_path}")
    print(json.dumps({k: summary[k] for k in ("gpu", "settings", "wall_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
