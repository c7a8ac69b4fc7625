"""Stable Audio 3 as Stability ships it, per phase, at real size with random weights.

For the small and the medium structure (`bench/sa3_structures.py`) and clips of 10, 30 and 120 s: the time of
each phase (text encoding, one DiT step and 8 steps, decode, encode for audio-to-audio) and the peak RSS. Each
configuration runs in a fresh subprocess, so `ru_maxrss` is that configuration's own peak. Medium also runs
beside plain diffusers 0.42.1 (`StableAudio3Pipeline`'s `StableAudio3DiTModel` and `AutoencoderSAME`, band
attention, built with the same shapes), interleaved per clip (ours, diffusers, ours, ...), with the ratios.

What is measured and what is extrapolated (this CPU is shared and slow, so the run is kept short):

* DiT: `--steps` real steps (default 1) through `StableAudio3Model.step`; 8 steps = 8 x the mean step (every step
  is the same forward at batch 1, guidance 1 as the post-trained models default to).
* decode / encode: the official windowed decode and encode (windows of 128 latents every 96, for clips of 128
  latents or more; every clip here is) do the same work per window. `full` runs the whole clip; `window` times
  one 128-latent window and multiplies by the clip's window count; `none` skips it (the table then derives it
  from the same structure's per-window time at another clip length, marked "est.").
* diffusers decodes the whole clip in ONE pass with a band mask over the whole sequence (memory and attention
  time quadratic in the clip); its `window` figure is one pass over 128 latents, the same tokens as one of our
  windows. Its whole-clip decode at 30 and 120 s is not run (see the notes it prints).

    .venv/bin/python -m bench.bench_sa3_phases --json                 # the README table (~30-40 min here)
    .venv/bin/python -m bench.bench_sa3_phases --structures small --clips 10 --steps 1 --json
    .venv/bin/python -m bench.bench_sa3_phases --render bench/results/sa3_phases.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from bench.common import GIB, RESULTS, loadavg, machine_info, md_table, quiet, write_results

PROMPT = "Lo-fi boom bap meets orchestral strings, 84 BPM, warm vinyl crackle"
WARMUP_PROMPT = "rain on a tin roof"
STEPS_SERVED = 8  # the post-trained checkpoints' default step count
WINDOW_LATENTS = 128
MEDIUM_WEIGHTS_GIB = 10.5  # DiT 1.4B + SAME-L enc/dec + T5Gemma, float32: 10.0 GiB RSS after build, 10.6 peak at 10 s
STEM = "sa3_phases"


# ----------------------------------------------------------------------------------------------- helpers


def matmul_gflops(threads: int, seconds: float = 1.0) -> float:
    """2048x2048 float32 matmul throughput now, with `threads` torch threads (the machine's speed at this moment)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return round(2 * 2048**3 * n / (time.perf_counter() - start) / 1e9, 1)


def peak_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2)


def rss_now_gib() -> float:
    return round(psutil.Process().memory_info().rss / GIB, 2)


class Phases:
    """Wall time and the peak RSS so far after each phase of one configuration."""

    def __init__(self) -> None:
        self.record: dict[str, Any] = {}

    def timed(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.record[f"{name}_s"] = round(time.perf_counter() - start, 3)
        self.record[f"peak_after_{name}_gib"] = peak_gib()
        return out


def _window_count(length: int) -> int:
    """Windows of the official windowed decode/encode for `length` latents (one pass below 128)."""
    from stable_audio_service.models.stable_audio_3.autoencoder import windows

    return len(windows(length))


def _window_of(structure: str, clip: float):
    from stable_audio_service.models.stable_audio_3 import sampling
    from stable_audio_service.models.stable_audio_3.config import DEFAULT_DURATION_PADDING_S, parse_config

    from .sa3_structures import real_config

    config = parse_config(real_config(structure))
    return sampling.window(
        clip,
        sample_rate=config.sample_rate,
        hop=config.hop,
        latent_align=config.latent_align,
        sample_size=config.sample_size,
        padding_s=DEFAULT_DURATION_PADDING_S,
    )


# ----------------------------------------------------------------------------------------------- children


def _child_ours(job: dict[str, Any], out: dict[str, Any], phases: Phases) -> None:
    from stable_audio_service.models.base import GenerationParams

    from .sa3_structures import build_ours, millions

    model = phases.timed("build", build_ours, job["structure"])
    out["params_m"] = {
        "dit": millions(model.dit),
        "autoencoder": millions(model.autoencoder),
        "decoder": millions(model.autoencoder.decoder),
        "text_encoder": millions(model.text.encoder),
    }
    out["rss_after_build_gib"] = rss_now_gib()
    out["gflops"] = matmul_gflops(job["threads"], 0.5)
    out["loadavg_start"] = loadavg()
    params = GenerationParams(
        prompt=PROMPT, duration=job["clip"], guidance_scale=1.0, num_inference_steps=STEPS_SERVED, seed=0
    )
    with torch.no_grad():
        model.text.encode(WARMUP_PROMPT)  # first-call overheads of the encoder (text cache is off)
        state = phases.timed("text", model.start, params)
        length = state.window.latent_length
        out["latents"] = length
        out["windows"] = _window_count(length)
        steps = []
        for _ in range(job["steps"]):
            start = time.perf_counter()
            model.step([state])
            steps.append(round(time.perf_counter() - start, 3))
        phases.record["peak_after_dit_gib"] = peak_gib()
        out["dit_steps_s"] = steps
        ae = model.autoencoder
        if job["decode"] == "full":
            audio = phases.timed("decode", model.decode, state)
            out["decode_finite"] = bool(torch.isfinite(audio).all())
            out["decode_per_window_s"] = round(phases.record["decode_s"] / out["windows"], 3)
            del audio
        elif job["decode"] == "window":
            audio = phases.timed("decode_window", ae.decode, state.x[..., :WINDOW_LATENTS], state.generator)
            out["decode_finite"] = bool(torch.isfinite(audio).all())
            out["decode_per_window_s"] = phases.record["decode_window_s"]
            del audio
        source = torch.randn(1, model.channels, length * ae.hop, generator=torch.Generator().manual_seed(1)) * 0.1
        if job["encode"] == "full":
            phases.timed("encode", ae.encode, source)
            out["encode_per_window_s"] = round(phases.record["encode_s"] / out["windows"], 3)
        elif job["encode"] == "window":
            phases.timed("encode_window", ae.encode, source[..., : WINDOW_LATENTS * ae.hop])
            out["encode_per_window_s"] = phases.record["encode_window_s"]


def _child_diffusers(job: dict[str, Any], out: dict[str, Any], phases: Phases) -> None:
    from .sa3_structures import build_diffusers_medium, millions

    pipe = phases.timed("build", build_diffusers_medium)
    out["params_m"] = {
        "dit": millions(pipe.transformer),
        "autoencoder": millions(pipe.vae),
        "decoder": millions(pipe.vae.decoder),
        "text_encoder": millions(pipe.text_encoder),
    }
    out["rss_after_build_gib"] = rss_now_gib()
    out["gflops"] = matmul_gflops(job["threads"], 0.5)
    out["loadavg_start"] = loadavg()
    length = _window_of("medium", job["clip"]).latent_length  # the same latents as ours (official 6 s padding)
    out["latents"] = length
    out["windows"] = _window_count(length)

    def text():
        embeds, mask = pipe.encode_prompt(PROMPT, torch.device("cpu"), 1)
        global_states = pipe.encode_duration(job["clip"], torch.device("cpu"), 1, 1)
        context, context_mask = pipe.prepare_cross_attention(embeds, mask, global_states)
        return context, context_mask, global_states

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        pipe.encode_prompt(WARMUP_PROMPT, torch.device("cpu"), 1)
        context, context_mask, global_states = phases.timed("text", text)
        x = torch.randn(1, 256, length, generator=generator)
        sigmas = torch.linspace(1.0, 0.0, STEPS_SERVED + 1)
        steps = []
        for i in range(job["steps"]):  # the pipeline's loop body at guidance 1: forward, then the ping-pong update
            start = time.perf_counter()
            t = sigmas[i].expand(1)
            v = pipe.transformer(
                x,
                t,
                encoder_hidden_states=context,
                global_hidden_states=global_states,
                encoder_attention_mask=context_mask,
                return_dict=False,
            )[0]
            denoised = x - sigmas[i] * v
            x = (1 - sigmas[i + 1]) * denoised + sigmas[i + 1] * torch.randn(x.shape, generator=generator)
            steps.append(round(time.perf_counter() - start, 3))
        phases.record["peak_after_dit_gib"] = peak_gib()
        out["dit_steps_s"] = steps
        if job["decode"] == "full":
            audio = phases.timed("decode", lambda: pipe.vae.decode(x).sample)
            out["decode_finite"] = bool(torch.isfinite(audio).all())
            del audio
        elif job["decode"] == "window":
            audio = phases.timed("decode_window", lambda: pipe.vae.decode(x[..., :WINDOW_LATENTS]).sample)
            out["decode_finite"] = bool(torch.isfinite(audio).all())
            out["decode_per_window_s"] = phases.record["decode_window_s"]
            del audio
        source = torch.randn(1, 2, length * 4096, generator=generator) * 0.1
        if job["encode"] == "full":
            phases.timed("encode", lambda: pipe.vae.encode(source).latents)
        elif job["encode"] == "window":
            phases.timed("encode_window", lambda: pipe.vae.encode(source[..., : WINDOW_LATENTS * 4096]).latents)
            out["encode_per_window_s"] = phases.record["encode_window_s"]


def run_child(job: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this (fresh) process."""
    quiet()
    torch.set_num_threads(job["threads"])
    out: dict[str, Any] = {"job": job, "pid": os.getpid()}
    phases = Phases()
    (_child_diffusers if job["impl"] == "diffusers" else _child_ours)(job, out, phases)
    out.update(phases.record)
    out["peak_rss_gib"] = peak_gib()
    out["loadavg_end"] = loadavg()
    return out


def spawn(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run `job` in a fresh interpreter; its peak RSS is its own."""
    cmd = [sys.executable, "-m", "bench.bench_sa3_phases", "--child", json.dumps(job)]
    root = Path(__file__).resolve().parents[1]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"job": job, "error": f"timed out after {timeout_s:.0f} s"}
    wall = round(time.perf_counter() - start, 1)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            result["wall_s"] = wall
            return result
    tail = (proc.stderr or proc.stdout)[-1500:]
    return {"job": job, "error": f"exit {proc.returncode}: {tail}", "wall_s": wall}


# ----------------------------------------------------------------------------------------------- plan & report


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Jobs in run order: small clips, then medium clips with ours and diffusers interleaved per clip."""
    jobs: list[dict[str, Any]] = []
    base = {"steps": args.steps, "threads": args.threads, "device": args.device}
    for structure in args.structures:
        for i, clip in enumerate(args.clips):
            first = i == 0  # per-window autoencoder costs are measured once, at the first (shortest) clip
            if structure == "small":
                encode = "window" if first else "none"
                jobs.append(
                    dict(base, impl="ours", structure="small", clip=clip, decode=args.small_decode, encode=encode)
                )
                continue
            for impl in args.impls:
                if impl == "diffusers" and clip not in args.diffusers_clips:
                    continue
                encode = "window" if (first and args.medium_encode) else "none"
                jobs.append(
                    dict(
                        base,
                        impl=impl,
                        structure="medium",
                        clip=clip,
                        decode="window" if first else "none",
                        encode=encode,
                    )
                )
    return jobs


def _fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration: measured and derived phase times (derived ones flagged)."""
    per_window: dict[tuple[str, str, str], float] = {}
    for r in results:
        if "error" in r:
            continue
        key = (r["job"]["impl"], r["job"]["structure"])
        for phase in ("decode", "encode"):
            if f"{phase}_per_window_s" in r and r["job"]["impl"] == "ours":
                per_window.setdefault((*key, phase), r[f"{phase}_per_window_s"])
    rows = []
    for r in results:
        job = r["job"]
        row: dict[str, Any] = {"impl": job["impl"], "structure": job["structure"], "clip": job["clip"]}
        if "error" in r:
            row["error"] = r["error"]
            rows.append(row)
            continue
        step = sum(r["dit_steps_s"]) / len(r["dit_steps_s"])
        row.update(
            latents=r["latents"],
            windows=r["windows"],
            text=r["text_s"],
            step=step,
            steps_measured=len(r["dit_steps_s"]),
            dit8=step * STEPS_SERVED,
            peak=r["peak_rss_gib"],
            after_build=r["rss_after_build_gib"],
            gflops=r["gflops"],
            load=f"{r['loadavg_start'][0]:.1f}→{r['loadavg_end'][0]:.1f}",
        )
        for phase in ("decode", "encode"):
            key = (job["impl"], job["structure"], phase)
            if f"{phase}_s" in r:
                row[phase], row[f"{phase}_how"] = r[f"{phase}_s"], "measured"
            elif job["impl"] == "ours" and f"{phase}_window_s" in r:
                row[phase], row[f"{phase}_how"] = r[f"{phase}_window_s"] * r["windows"], "window x n"
            elif job["impl"] == "ours" and key in per_window:
                row[phase], row[f"{phase}_how"] = per_window[key] * r["windows"], "est."
            else:
                row[phase], row[f"{phase}_how"] = None, "not run"
            if job["impl"] == "diffusers" and f"{phase}_window_s" in r:
                row[f"{phase}_window"] = r[f"{phase}_window_s"]
            if job["impl"] == "ours" and f"{phase}_per_window_s" in r:
                row[f"{phase}_window"] = r[f"{phase}_per_window_s"]
        row["total"] = row["text"] + row["dit8"] + row["decode"] if row.get("decode") is not None else None
        rows.append(row)
    return rows


def render(data: dict[str, Any]) -> str:
    rows = summarize(data["results"])
    m = data["machine"]
    lines = [
        "### Stable Audio 3 per phase, real-size random weights",
        "",
        f"CPU: {m['cpu']}, {m['nproc']} cores, torch threads {data['args']['threads']}, torch {m['torch']}, "
        f"diffusers {m['diffusers']}, {m['date']}. fp32, guidance 1, batch 1. 2048² fp32 matmul: "
        f"{data['gflops_start']} GFLOP/s at start, {data['gflops_end']} at end (load average "
        f"{m['loadavg_start'][0]} → {m['loadavg_end'][0]}); each row's own figure is in the table. The host is shared "
        "with other agents: absolute seconds vary with the load, the ratios measured side by side hold.",
        "",
    ]
    headers = [
        "structure",
        "impl",
        "clip",
        "latents",
        "text s",
        "DiT s/step",
        "DiT x8 s",
        "decode s",
        "encode s (a2a)",
        "text+8 steps+decode s",
        "peak RSS GiB",
        "RSS after build GiB",
        "GFLOP/s",
        "load",
    ]
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["structure"], r["impl"], f"{r['clip']:g} s", "error: " + r["error"][:80]] + [""] * 10)
            continue

        def phase(name: str, row: dict[str, Any] = r) -> str:
            value, how = row.get(name), row.get(f"{name}_how")
            if value is None:
                window = row.get(f"{name}_window")
                return f"{_fmt(window)} per window, clip not run" if window is not None else "not run"
            return _fmt(value) + ("" if how == "measured" else f" ({how})")

        table.append(
            [
                r["structure"],
                r["impl"],
                f"{r['clip']:g} s",
                f"{r['latents']} ({r['windows']} win)",
                _fmt(r["text"], 2),
                _fmt(r["step"], 2),
                _fmt(r["dit8"]),
                phase("decode"),
                phase("encode"),
                _fmt(r["total"]) if r["total"] is not None else "–",
                _fmt(r["peak"], 2),
                _fmt(r["after_build"], 2),
                _fmt(r["gflops"]),
                r["load"],
            ]
        )
    lines.append(md_table(headers, table))
    ab = _ab_rows(rows)
    if ab:
        lines += [
            "",
            "Medium, ours / plain diffusers 0.42.1 (same shapes, same latents, run back to back per clip):",
            "",
            md_table(["clip", "phase", "ours s", "diffusers s", "ours / diffusers"], ab),
        ]
    lines += ["", *[f"- {note}" for note in data.get("notes", [])]]
    return "\n".join(lines)


def _ab_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    by = {(r["impl"], r["clip"]): r for r in rows if r["structure"] == "medium" and "error" not in r}
    out = []
    for clip in sorted({c for _, c in by}):
        ours, diff = by.get(("ours", clip)), by.get(("diffusers", clip))
        if not ours or not diff:
            continue
        pairs = [("text", "text"), ("DiT step", "step")]
        pairs += [
            ("decode, one 128-latent window", "decode_window"),
            ("encode, one 128-latent window", "encode_window"),
        ]
        for label, key in pairs:
            a, b = ours.get(key), diff.get(key)
            if a is None or b is None:
                continue
            out.append([f"{clip:g} s", label, _fmt(a, 2), _fmt(b, 2), f"{a / b:.2f}"])
        out.append([f"{clip:g} s", "peak RSS GiB", _fmt(ours["peak"], 2), _fmt(diff["peak"], 2), ""])
    return out


def notes(args: argparse.Namespace, results: list[dict[str, Any]]) -> list[str]:
    out = [
        f"DiT: {args.steps} real step(s) per row, `DiT x8` = 8 x their mean (the served default is 8 steps; every "
        "step is the same forward). The first step includes one-off allocation costs, so x8 slightly overstates.",
        "decode/encode are the official windowed ones (128-latent windows every 96, each with its own decode-time "
        "draws): `window x n` = one window timed x the clip's window count; `est.` = the same structure's "
        "per-window time measured in another row x this clip's window count; a window's work does not depend on "
        "the clip, so decode and encode are linear in the clip length.",
        "Text: one prompt through T5Gemma b-b (12 layers, 768, vocab 256000: the real 786 MB embedding is in the "
        "RSS) padded to 256 tokens, after one warm-up call; includes the duration embedding and conditioning.",
        "diffusers decodes a clip in one pass with a band mask over the whole sequence: 17 tokens per latent, so a "
        "(17 L)² mask and attention that grows with L², where ours attends in 32-query blocks (O(L)). Its decode of "
        "one 128-latent window is timed for the per-window ratio; whole-clip passes are not run: at 120 s "
        "(L 1358, 23086 tokens) the mask alone is 2.0 GiB fp32 and the masked attention costs ~4x the layers' "
        "linear work (about equal at 30 s).",
        "Plain diffusers is timed as its pipeline runs at guidance 1: no `local_add_cond`, no padding mask, eps "
        "1e-6; ours adds the official all-zero inpainting conditioning and padding mask (see docs/models.md).",
    ]
    if "small" in args.structures and any(c >= 120 for c in args.clips):
        out.append(
            "small at 120 s: the window is capped at the checkpoint's sample_size (5292032 samples = 1292 latents), "
            "so the 6 s duration padding shrinks to 0 (as in Stability's generate()); medium's cap is 380 s."
        )
    no_diffusers = [c for c in args.clips if c not in args.diffusers_clips]
    if "medium" in args.structures and "diffusers" in args.impls and no_diffusers:
        out.append(
            f"plain diffusers not run at {', '.join(f'{c:g} s' for c in no_diffusers)} (`--diffusers-clips`): its "
            "DiT step is linear in the clip like ours (ratio as at the shorter clips), its decode is not run there."
        )
    skipped = [r for r in results if r.get("skipped")]
    out += [
        f"Not run: {r['job']['impl']} {r['job']['structure']} {r['job']['clip']:g} s: {r['skipped']}" for r in skipped
    ]
    return out


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several runs: results and notes in run order; a configuration skipped in one run and
    measured in another counts as measured. The header keeps the first run's machine and both matmul figures."""
    first, last = runs[0], runs[-1]
    results = [r for run in runs for r in run["results"]]
    done = {json.dumps(r["job"], sort_keys=True) for r in results}
    skipped = [s for run in runs for s in run.get("skipped", []) if json.dumps(s["job"], sort_keys=True) not in done]
    machine = dict(first["machine"], loadavg_end=last["machine"].get("loadavg_end"))
    args = argparse.Namespace(**dict(last["args"], structures=sorted({r["job"]["structure"] for r in results})))
    merged_notes = [n for n in notes(args, results) if not n.startswith("Not run:")]
    merged_notes.append(
        f"Merged from {len(runs)} runs (started {', '.join(run['machine']['date'] for run in runs)}), "
        f"matmul GFLOP/s at their starts {[run['gflops_start'] for run in runs]}."
    )
    merged_notes += [
        f"Not run: {s['job']['impl']} {s['job']['structure']} {s['job']['clip']:g} s: {s['skipped']}" for s in skipped
    ]
    return dict(
        first,
        machine=machine,
        gflops_end=last["gflops_end"],
        results=results,
        skipped=skipped,
        notes=merged_notes,
        runs=[{"args": run["args"], "date": run["machine"]["date"]} for run in runs],
    )


def wait_for_memory(needed_gib: float, wait_s: float) -> float:
    """Available GiB once at least `needed_gib` is free, or after `wait_s` (the previous child's memory, or another
    process's, may take a moment to be given back)."""
    deadline = time.monotonic() + wait_s
    while True:
        available = psutil.virtual_memory().available / GIB
        if available >= needed_gib or time.monotonic() >= deadline:
            return available
        time.sleep(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--structures", default="small,medium", type=lambda s: s.split(","))
    parser.add_argument("--clips", default="10,30,120", type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--impls", default="ours,diffusers", type=lambda s: s.split(","), help="for medium")
    parser.add_argument(
        "--diffusers-clips",
        default="10,30",
        type=lambda s: [float(x) for x in s.split(",")],
        help="clips run through plain diffusers too (its DiT is linear like ours: 120 s repeats the 30 s ratio at "
        "~10 min per step on a loaded 2-core host; add 120 to run it)",
    )
    parser.add_argument("--steps", type=int, default=1, help="real DiT steps per configuration (x8 extrapolated)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="this benchmark is for the CPU host")
    parser.add_argument("--small-decode", default="full", choices=["full", "window"])
    parser.add_argument("--medium-encode", action="store_true", help="also time one encode window for medium")
    parser.add_argument("--min-free-gib", type=float, default=3.0, help="medium runs only with this much to spare")
    parser.add_argument("--memory-wait", type=float, default=300, help="seconds to wait for memory before a skip")
    parser.add_argument("--timeout", type=float, default=1800, help="per configuration, seconds")
    parser.add_argument("--json", action="store_true", help=f"write bench/results/{STEM}.json and .md")
    parser.add_argument("--out", default=STEM, help="results file stem under bench/results")
    parser.add_argument("--render", type=Path, help="re-render the markdown of a results JSON and exit")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="combine the results of several runs (e.g. small, then medium when memory allowed) into --out",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print("RESULT " + json.dumps(run_child(json.loads(args.child))), flush=True)
        return
    if args.merge:
        merged = merge([json.loads(path.read_text()) for path in args.merge])
        markdown = render(merged)
        print(markdown)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.out}.json").write_text(json.dumps(merged, indent=2, default=str) + "\n")
        (RESULTS / f"{args.out}.md").write_text(markdown + "\n")
        return
    if args.render:
        data = json.loads(args.render.read_text())
        print(render(data))
        (RESULTS / f"{args.out}.md").write_text(render(data) + "\n")
        return

    quiet()
    torch.set_num_threads(args.threads)
    machine = machine_info()
    gflops_start = matmul_gflops(args.threads)
    print(f"2048x2048 fp32 matmul: {gflops_start} GFLOP/s ({args.threads} threads); load {machine['loadavg_start']}")
    results = []
    for job in plan(args):
        label = f"{job['structure']:6} {job['impl']:9} {job['clip']:5g} s"
        if job["structure"] == "medium":
            available = wait_for_memory(MEDIUM_WEIGHTS_GIB + args.min_free_gib, args.memory_wait)
            if available < MEDIUM_WEIGHTS_GIB + args.min_free_gib:
                result = {"job": job, "skipped": f"{available:.1f} GiB available < {MEDIUM_WEIGHTS_GIB} + margin"}
                print(f"{label}: skipped ({result['skipped']})", flush=True)
                results.append(result)
                continue
        print(f"{label}: running (load {loadavg()})", flush=True)
        result = spawn(job, args.timeout)
        results.append(result)
        if "error" in result:
            print(f"{label}: ERROR {result['error']}", flush=True)
            continue
        print(
            f"{label}: L {result['latents']}, text {result['text_s']:.2f} s, DiT steps {result['dit_steps_s']} s, "
            f"decode {result.get('decode_s', result.get('decode_window_s', '-'))} s, "
            f"encode {result.get('encode_s', result.get('encode_window_s', '-'))} s, peak RSS "
            f"{result['peak_rss_gib']} GiB, {result['gflops']} GFLOP/s, load {result['loadavg_start']}→"
            f"{result['loadavg_end']}, wall {result['wall_s']} s",
            flush=True,
        )
    gflops_end = matmul_gflops(args.threads)
    data = {
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "render")},
        "machine": machine,
        "gflops_start": gflops_start,
        "gflops_end": gflops_end,
        "results": [r for r in results if not r.get("skipped")],
        "skipped": [r for r in results if r.get("skipped")],
    }
    data["notes"] = notes(args, results)
    data["machine"]["loadavg_end"] = loadavg()
    markdown = render(data)
    print(markdown)
    if args.json:
        js, md = write_results(args.out, data, markdown)
        print(f"wrote {js} and {md}")


if __name__ == "__main__":
    main()
