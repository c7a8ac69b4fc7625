"""Step-cost ratio only: fitted-window vs full-window denoising steps, tightly interleaved.

A cheaper, more contention-robust companion of bench_window: no decodes, no plain pipeline (its step is
the same work as the full-window step). Each round runs one step of every variant back to back
(ABCD, then DCBA), so load from other processes hits them alike.

    .venv/bin/python -m bench.bench_step_ratio --size real --rounds 2
"""

from __future__ import annotations

import argparse
import time

from bench.common import loadavg, machine_info, machine_line, md_table, med, quiet, write_results
from bench.models import build_pipe, wrap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="real", choices=["tiny", "mid", "real"])
    ap.add_argument("--durations", type=float, nargs="+", default=[5.0, 10.0, 30.0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="10 s only, 1 round")
    ap.add_argument("--decode", action="store_true", help="also time the full 1024-latent decode and the cropped ones")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    quiet()
    from stable_audio_service.models.base import GenerationParams

    durations = [10.0] if args.quick else args.durations
    rounds = 1 if args.quick else args.rounds
    info = machine_info()
    print(machine_line(info), flush=True)
    pipe = build_pipe(args.size)
    full, fit = wrap(pipe, args.size, "full"), wrap(pipe, args.size, "fit")
    variants = [("full", 10.0, full)] + [("fit", d, fit) for d in durations]
    states = {(n, d): m.start(GenerationParams("warm synth pad", d, 7.0, 2 * rounds + 2, 1)) for n, d, m in variants}
    times: dict[tuple, list[float]] = {k: [] for k in states}
    loads = [loadavg()]
    for r in range(rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for n, d, m in order:
            t = time.perf_counter()
            m.step([states[(n, d)]])
            times[(n, d)].append(time.perf_counter() - t)
            print(f"round {r + 1} {n} {d:g}s: {times[(n, d)][-1]:.2f}s", flush=True)
        loads.append(loadavg())
    decodes: dict[str, tuple[int, float]] = {}
    if args.decode:  # plain diffusers decodes all latents; the service decodes kept latents + margin
        import torch

        from stable_audio_service.models.base import GenerationError

        with torch.no_grad():
            lat = states[("full", 10.0)].latents
            t = time.perf_counter()
            pipe.vae.decode(lat)
            decodes["plain (all latents)"] = (lat.shape[2], time.perf_counter() - t)
            print(f"decode all {lat.shape[2]}: {decodes['plain (all latents)'][1]:.2f}s", flush=True)
        for n, d, m in variants[1:]:
            st = states[(n, d)]
            k = min(st.latents.shape[2], m.window_for(d))
            t = time.perf_counter()
            try:
                m.finish(st)
            except GenerationError:
                pass
            decodes[f"fit {d:g} s (cropped)"] = (k, time.perf_counter() - t)
            print(f"decode fit {d:g}s ({k} latents): {decodes[f'fit {d:g} s (cropped)'][1]:.2f}s", flush=True)
        loads.append(loadavg())
    f = med(times[("full", 10.0)])
    rows, out = [], []
    for n, d, m in variants:
        s = med(times[(n, d)])
        rows.append([f"{d:g} s" if n == "fit" else "any", n, m.window_for(d), f"{s:.2f}", f"**{f / s:.2f}x**"])
        out.append({"variant": n, "clip_s": d, "window": m.window_for(d), "steps_s": times[(n, d)], "median_s": s})
    res = {"args": vars(args), "machine": info, "rows": out, "loadavg": loads, "decodes": decodes}
    extra = []
    if decodes:
        full_dec = decodes["plain (all latents)"][1]
        plain_total = 0.5 + 100 * f + full_dec

        def fit_total(d: float) -> float:
            return 0.5 + 100 * med(times[("fit", d)]) + decodes[f"fit {d:g} s (cropped)"][1]

        extra = [
            "",
            md_table(
                ["decode", "latents", "decode (s)", "speed-up vs plain"],
                [[k, n, f"{t:.2f}", f"**{full_dec / t:.2f}x**"] for k, (n, t) in decodes.items()],
            ),
            "",
            "100-step totals from these numbers (text ~0.5 s): "
            + "; ".join(
                f"{d:g} s clip: plain {plain_total / 60:.1f} min vs fitted {fit_total(d) / 60:.1f} min = "
                f"**{plain_total / fit_total(d):.2f}x**"
                for d in durations
            )
            + ".",
        ]
    md = "\n".join(
        [
            f"### Denoising step cost, {args.size} size, fitted vs full window (guidance 7: one DiT call of batch 2)",
            "",
            md_table(["clip", "window mode", "latents", "step (s, median)", "step speed-up vs full window"], rows),
            "",
            f"{rounds} rounds, variants interleaved (ABC.., then ..CBA). Load average per round: {loads}.",
            *extra,
            "",
            machine_line(info | {"loadavg_end": loadavg()}),
        ]
    )
    js, mdp = write_results(args.out or f"step_ratio_{args.size}", res, md)
    print(md)
    print(f"wrote {js} and {mdp}")


if __name__ == "__main__":
    main()
