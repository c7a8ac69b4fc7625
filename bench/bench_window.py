"""Variable length: what a short clip costs with plain diffusers vs the service's model.

Three ways to make a clip of D seconds with the same (random-weight) Stable Audio Open architecture:
  plain  - diffusers `StableAudioPipeline.__call__`: always the full 1024-latent window (47.55 s),
           decodes all 1024 latents, then crops the waveform to D seconds;
  full   - the service's `StableAudioOpenModel(window="full")`: the same full-window denoising, but a
           cropped decode of only the kept latents + DECODE_MARGIN_LATENTS;
  fit    - `StableAudioOpenModel(window="fit")`: denoises only ceil(D*44100/2048) latents rounded up to a
           multiple of 16, and the same cropped decode.

Running 100 real-size steps on this CPU takes about an hour per clip, so this measures a few steps
(`--steps`, default 2) and the decode, and extrapolates: total(N) = text + N * per_step + decode.
The full-window step does not depend on D (only conditioning values change), so the plain pipeline and
the full-window model are stepped once (on the 10 s request) and reused for every D; the plain decode of
all 1024 latents is also the same for every D and is measured once. The model steps of all variants are
interleaved (one step of each in turn) so that CPU contention from other processes hits them alike.

    .venv/bin/python -m bench.bench_window                 # real size, 5/10/30 s, 2 steps (~15-25 min)
    .venv/bin/python -m bench.bench_window --quick         # real size, 10 s only
    .venv/bin/python -m bench.bench_window --size tiny     # smoke test
    .venv/bin/python -m bench.bench_window --render bench/results/window_real.json  # re-render a report
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from bench.common import (
    CallTimer,
    RssSampler,
    loadavg,
    machine_info,
    machine_line,
    md_table,
    med,
    quiet,
    write_results,
)
from bench.models import build_pipe, param_counts, wrap

PROMPT = "warm analog synth pad with slow evolving chords, 90 bpm"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="real", choices=["tiny", "mid", "real"])
    ap.add_argument("--durations", type=float, nargs="+", default=[5.0, 10.0, 30.0])
    ap.add_argument("--steps", type=int, default=2, help="denoising steps actually run per variant")
    ap.add_argument("--target-steps", type=int, default=100, help="step count to extrapolate to")
    ap.add_argument("--guidance", type=float, default=7.0)
    ap.add_argument("--quick", action="store_true", help="only the 10 s clip")
    ap.add_argument("--out", default=None, help="results file stem (default window_<size>)")
    args = ap.parse_args()
    quiet()
    from stable_audio_service.models.base import GenerationError, GenerationParams
    from stable_audio_service.models.open1 import DECODE_MARGIN_LATENTS

    durations = [10.0] if args.quick else sorted(args.durations)
    ref_d = 10.0 if 10.0 in durations else durations[len(durations) // 2]
    S = args.steps
    info = machine_info()
    print(machine_line(info), flush=True)
    sampler = RssSampler()

    t0 = time.perf_counter()
    pipe = build_pipe(args.size)
    build_s = time.perf_counter() - t0
    print(f"built {args.size} pipeline in {build_s:.1f}s: {param_counts(pipe)} M params", flush=True)
    full, fit = wrap(pipe, args.size, "full"), wrap(pipe, args.size, "fit")
    sr, hop = full.sample_rate, full.hop
    dit = CallTimer(pipe.transformer)

    def params(d: float) -> GenerationParams:
        return GenerationParams(prompt=PROMPT, duration=d, guidance_scale=args.guidance, num_inference_steps=S, seed=1)

    def keep_for(model, d: float) -> int:
        end = int(d * sr)
        return min(model.window_for(d), math.ceil(end / hop) + DECODE_MARGIN_LATENTS)

    def timed_finish(model, state, label):
        sampler.reset()
        t = time.perf_counter()
        nonfinite = False
        try:
            model.finish(state)
        except GenerationError:  # random weights may blow up; the time is what counts here
            nonfinite = True
        dt = time.perf_counter() - t
        print(f"  decode {label}: {dt:.2f}s (peak RSS {sampler.peak():.2f} GiB)", flush=True)
        return dt, sampler.peak(), nonfinite

    # warm-up: one cheap fitted step and a small decode (first-call allocations, oneDNN primitives)
    w = fit.start(params(min(durations)))
    fit.step([w])
    w.latents = w.latents[:, :, :16]
    w.params.duration = 16 * hop / sr - 0.01
    fit.finish(w)
    dit.take()
    fit.text_cache = type(fit.text_cache)(0)  # no text cache: every request pays its text encoding
    full.text_cache = type(full.text_cache)(0)

    res: dict = {"args": vars(args), "machine": info, "build_s": round(build_s, 1), "params_m": param_counts(pipe)}
    res["hop"], res["sample_rate"], res["max_window"] = hop, sr, full.max_window
    load_log = [("start", loadavg())]

    # -- plain diffusers: full window, latent output (decode timed separately, below) -------------
    print(f"plain diffusers: {S} steps, full window ({full.max_window} latents), {ref_d:g}s request", flush=True)
    sampler.reset()
    t = time.perf_counter()
    out = pipe(
        PROMPT,
        audio_end_in_s=ref_d,
        num_inference_steps=S,
        guidance_scale=args.guidance,
        generator=torch.Generator("cpu").manual_seed(1),
        output_type="latent",
    )
    plain_wall = time.perf_counter() - t
    plain_latents = out.audios
    plain_dit = dit.take()
    plain = {
        "denoise_wall_s": plain_wall,
        "dit_calls_s": plain_dit,
        "per_step_s": med(plain_dit),
        "text_and_overhead_s": plain_wall - sum(plain_dit),
        "peak_rss_gib": sampler.peak(),
    }
    print(f"  per step {plain['per_step_s']:.2f}s, text+overhead {plain['text_and_overhead_s']:.2f}s", flush=True)
    load_log.append(("after plain steps", loadavg()))

    # -- the service model: text encoding (uncached), then interleaved steps -------------------
    states: dict[tuple[str, float], object] = {}
    text_s: dict[str, list[float]] = {"full": [], "fit": []}
    for d in durations:
        for name, model in (("full", full), ("fit", fit)):
            t = time.perf_counter()
            states[(name, d)] = model.start(params(d))
            text_s[name].append(time.perf_counter() - t)
    step_s: dict[tuple[str, float], list[float]] = {k: [] for k in states}
    step_dit: dict[tuple[str, float], list[float]] = {k: [] for k in states}
    step_rss: dict[tuple[str, float], float] = {k: 0.0 for k in states}
    stepped = [("full", ref_d)] + [("fit", d) for d in durations]
    print(f"model: {S} interleaved steps of {[f'{n} {d:g}s' for n, d in stepped]}", flush=True)
    for i in range(S):
        for key in stepped:
            model = full if key[0] == "full" else fit
            sampler.reset()
            t = time.perf_counter()
            model.step([states[key]])
            step_s[key].append(time.perf_counter() - t)
            step_dit[key] += dit.take()
            step_rss[key] = max(step_rss[key], sampler.peak())
            print(f"  step {i + 1} {key[0]} {key[1]:g}s: {step_s[key][-1]:.2f}s", flush=True)
    load_log.append(("after model steps", loadavg()))
    # the full-window denoising is the same work for every D: reuse the 10 s latents for the others
    for d in durations:
        states[("full", d)].latents = states[("full", ref_d)].latents.clone()
        states[("full", d)].step = S

    # -- decodes ---------------------------------------------------------------------------------
    print(f"plain decode of all {plain_latents.shape[2]} latents (same for every clip length)", flush=True)
    sampler.reset()
    t = time.perf_counter()
    with torch.no_grad():
        audio = pipe.vae.decode(plain_latents).sample
    audio = audio[:, :, : int(ref_d * sr)]
    plain["decode_s"] = time.perf_counter() - t
    plain["decode_peak_rss_gib"] = sampler.peak()
    plain["decode_latents"] = int(plain_latents.shape[2])
    print(f"  {plain['decode_s']:.2f}s (peak RSS {plain['decode_peak_rss_gib']:.2f} GiB)", flush=True)
    del audio, plain_latents
    load_log.append(("after plain decode", loadavg()))
    dec: dict[tuple[str, float], tuple] = {}
    for d in durations:
        for name, model in (("full", full), ("fit", fit)):
            dec[(name, d)] = timed_finish(model, states[(name, d)], f"{name} {d:g}s ({keep_for(model, d)} latents)")
    load_log.append(("after model decodes", loadavg()))
    sampler.close()

    # -- results -----------------------------------------------------------------------------------
    out_rows = []
    for d in durations:
        for name, model in (("plain", None), ("full", full), ("fit", fit)):
            if name == "plain":
                window, per_step = full.max_window, plain["per_step_s"]
                text, decode, dec_lat = plain["text_and_overhead_s"], plain["decode_s"], plain["decode_latents"]
                rss, nonfinite = max(plain["peak_rss_gib"], plain["decode_peak_rss_gib"]), False
            else:
                sk = (name, ref_d) if name == "full" else (name, d)
                window, per_step = model.window_for(d), med(step_s[sk])
                text, (decode, drss, nonfinite) = med(text_s[name]), dec[(name, d)]
                dec_lat, rss = keep_for(model, d), max(step_rss[sk], drss)
            out_rows.append(
                {
                    "clip_s": d,
                    "variant": name,
                    "window_latents": window,
                    "per_step_s": per_step,
                    "decode_latents": dec_lat,
                    "decode_s": decode,
                    "text_s": text,
                    "peak_rss_gib": rss,
                    "decode_nonfinite_random_weights": nonfinite,
                }
            )
    res["plain"] = plain
    res["ref_duration"] = ref_d
    res["model_steps_s"] = {f"{k[0]}_{k[1]:g}s": v for k, v in step_s.items() if v}
    res["model_dit_calls_s"] = {f"{k[0]}_{k[1]:g}s": v for k, v in step_dit.items() if v}
    res["model_text_s"] = text_s
    res["rows"] = out_rows
    res["load_log"] = load_log
    res["machine"]["loadavg_end"] = loadavg()
    md = render(res)
    js, mdp = write_results(args.out or f"window_{args.size}", res, md)
    print()
    print(md)
    print(f"\nwrote {js} and {mdp}")


# Uncontended real-size baselines on this kind of machine (/work/shared/reference/real-size-models.md):
# one full-window step (batch 2) 35.8 s, decode of all 1024 latents 129 s, text encoding ~0.5 s.
REF_FULL_STEP_S, REF_FULL_DECODE_S, REF_TEXT_S = 35.8, 129.0, 0.5


def render(res: dict) -> str:
    """The markdown report from a results dict (also used by `--render results.json`).

    Speed-ups use the full-window step of the service model (`full`) as the cost of a plain diffusers
    step: it is the same work (same shapes, one DiT call of batch 2) and it was measured interleaved
    with the fitted-window steps, so CPU contention from other processes hits both alike. The plain
    pipeline's own DiT step (measured alone, earlier) is reported beside it.
    """
    a = res["args"]
    S, N = a["steps"], a["target_steps"]
    ref_d = res.get("ref_duration", 10.0)
    steps = res["model_steps_s"]
    full_step = med(steps[f"full_{ref_d:g}s"])
    plain = res["plain"]
    real = a["size"] == "real"

    def fmt(x: float) -> str:
        return f"{x:.2f}" if x < 100 else f"{x:.0f}"

    def dur(x: float) -> str:
        return f"{x:.1f} s" if x < 120 else f"{x / 60:.1f} min"

    names = {"plain": "plain diffusers", "full": "service, full window", "fit": "service, fitted window"}
    rows, proj_rows = [], []
    totals = {}
    for r in res["rows"]:
        d, v = r["clip_s"], r["variant"]
        step = full_step if v in ("plain", "full") else med(steps[f"fit_{d:g}s"])
        total = r["text_s"] + N * step + r["decode_s"]
        totals[(d, v)] = (step, total)
    for r in res["rows"]:
        d, v = r["clip_s"], r["variant"]
        step, total = totals[(d, v)]
        p_step, p_total = totals[(d, "plain")]
        r["step_used_s"], r[f"est_total_{N}_steps_s"] = step, total
        r["speedup_vs_plain"] = p_total / total
        rows.append(
            [
                f"{d:g} s",
                names[v],
                r["window_latents"],
                fmt(step),
                f"{p_step / step:.2f}x",
                r["decode_latents"],
                fmt(r["decode_s"]),
                f"{plain['decode_s'] / r['decode_s']:.2f}x",
                dur(total),
                f"**{p_total / total:.2f}x**",
                f"{r['peak_rss_gib']:.1f}",
            ]
        )
        if real:
            # scale the uncontended baselines by the ratios measured here
            pstep = REF_FULL_STEP_S * step / full_step
            pdec = REF_FULL_DECODE_S * r["decode_s"] / plain["decode_s"]
            ptotal = REF_TEXT_S + N * pstep + pdec
            pplain = REF_TEXT_S + N * REF_FULL_STEP_S + REF_FULL_DECODE_S
            r["projected_idle"] = {"step_s": pstep, "decode_s": pdec, f"total_{N}_steps_s": ptotal}
            proj_rows.append([f"{d:g} s", names[v], fmt(pstep), fmt(pdec), dur(ptotal), f"**{pplain / ptotal:.2f}x**"])
    table = md_table(
        [
            "clip",
            "variant",
            "window (latents)",
            "step (s)",
            "step speed-up",
            "decoded latents",
            "decode (s)",
            "decode speed-up",
            f"est. {N} steps",
            "speed-up vs plain",
            "peak RSS (GiB)",
        ],
        rows,
    )
    load = res.get("load_log", [])
    md = [
        f"### Variable-length clips, {a['size']}-size Stable Audio Open architecture (random weights), "
        f"fp32 CPU, guidance {a['guidance']:g}",
        "",
        table,
        "",
        f"Measured: {S} denoising steps per variant and one decode each; `est. {N} steps` = text + {N} x step + "
        "decode (extrapolated). Step = median wall time of one denoising step (one DiT call of batch 2 for "
        "classifier-free guidance + the scheduler step), measured with the steps of all service variants "
        "interleaved. The full-window step is the same work for every clip length and for plain diffusers, so "
        f"it was measured once (on the {ref_d:g} s request) and is used for the plain rows too; plain diffusers' "
        f"own DiT call, timed alone before the interleaved steps, was {plain['per_step_s']:.2f} s. Plain diffusers "
        f"always decodes all {plain['decode_latents']} latents (measured once, {plain['decode_s']:.1f} s) and then "
        "crops; the decodes ran one after another, not interleaved.",
    ]
    if real:
        md += [
            "",
            "Projected on an idle machine: the uncontended baselines of real-size-models.md (full-window step "
            f"{REF_FULL_STEP_S} s, decode of 1024 latents {REF_FULL_DECODE_S:g} s, text {REF_TEXT_S} s) scaled by the "
            "step and decode ratios measured above:",
            "",
            md_table(["clip", "variant", "step (s)", "decode (s)", f"{N} steps total", "speed-up vs plain"], proj_rows),
        ]
    md += [
        "",
        "Load average during the run: " + ", ".join(f"{k} {v}" for k, v in load) + ".",
        "",
        machine_line(res["machine"]),
    ]
    return "\n".join(md)


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        from pathlib import Path

        path = Path(sys.argv[2])
        data = json.loads(path.read_text())
        text = render(data)
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        path.with_suffix(".md").write_text(text + "\n")
        print(text)
    else:
        main()
