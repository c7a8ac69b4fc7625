"""Rebuild bench_window results from its log when the run was stopped before it wrote them.

    .venv/bin/python -m bench.window_from_log bench/results/window_real.log [--out window_real]

Only what the log holds is used: the step and decode times (peak RSS of steps and the service's text
encoding are not logged; the plain pipeline's text+overhead stands in for the latter). Clip lengths
whose cropped decodes are missing are left out of the table.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from bench.bench_window import render
from bench.common import loadavg, write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--out", default="window_real")
    ap.add_argument("--size", default="real")
    ap.add_argument("--target-steps", type=int, default=100)
    args = ap.parse_args()
    text = Path(args.log).read_text()
    m = re.search(
        r"Machine: (.*?) \((\d+) cores, torch threads (\d+), flags ([^)]*)\), ([\d.]+) GiB RAM; "
        r"torch (\S+), diffusers (\S+); (\S+); load average at start (\[[^\]]*\])",
        text,
    )
    machine = {
        "cpu": m[1],
        "nproc": int(m[2]),
        "torch_threads": int(m[3]),
        "cpu_flags": m[4].split(","),
        "ram_gib": float(m[5]),
        "torch": m[6],
        "diffusers": m[7].rstrip(";"),
        "date": m[8].rstrip(";"),
        "loadavg_start": m[9],
        "loadavg_end": loadavg(),
    }
    steps_n = int(re.search(r"plain diffusers: (\d+) steps", text)[1])
    ps = re.search(r"per step ([\d.]+)s, text\+overhead ([\d.]+)s", text)
    plain = {"per_step_s": float(ps[1]), "text_and_overhead_s": float(ps[2])}
    pd = re.search(r"plain decode of all (\d+) latents.*\n\s+([\d.]+)s \(peak RSS ([\d.]+) GiB\)", text)
    plain.update(decode_latents=int(pd[1]), decode_s=float(pd[2]), decode_peak_rss_gib=float(pd[3]), peak_rss_gib=0.0)
    model_steps: dict[str, list[float]] = {}
    for name, d, t in re.findall(r"step \d+ (full|fit) ([\d.]+)s: ([\d.]+)s", text):
        model_steps.setdefault(f"{name}_{float(d):g}s", []).append(float(t))
    decodes = {
        (name, float(d)): (int(k), float(t), float(r))
        for name, d, k, t, r in re.findall(
            r"decode (full|fit) ([\d.]+)s \((\d+) latents\): ([\d.]+)s \(peak RSS ([\d.]+) GiB\)", text
        )
    }
    durations = sorted({d for (_, d) in decodes if ("full", d) in decodes and ("fit", d) in decodes})
    rows = []
    for d in durations:
        rows.append(
            {
                "clip_s": d,
                "variant": "plain",
                "window_latents": plain["decode_latents"],
                "decode_latents": plain["decode_latents"],
                "decode_s": plain["decode_s"],
                "text_s": plain["text_and_overhead_s"],
                "peak_rss_gib": plain["decode_peak_rss_gib"],
            }
        )
        for name in ("full", "fit"):
            k, t, r = decodes[(name, d)]
            window = plain["decode_latents"] if name == "full" else k
            rows.append(
                {
                    "clip_s": d,
                    "variant": name,
                    "window_latents": window,
                    "decode_latents": k,
                    "decode_s": t,
                    "text_s": plain["text_and_overhead_s"],
                    "peak_rss_gib": r,
                }
            )
    res = {
        "args": {"size": args.size, "steps": steps_n, "target_steps": args.target_steps, "guidance": 7.0},
        "machine": machine,
        "plain": plain,
        "ref_duration": 10.0,
        "model_steps_s": model_steps,
        "rows": rows,
        "load_log": [],
        "rebuilt_from_log": str(args.log),
        "note": "rebuilt from the log; peak RSS of denoising steps not logged (decode peaks only)",
    }
    md = render(res) + f"\n\n(Rebuilt from {Path(args.log).name}: the run was stopped before it wrote its results.)"
    js, mdp = write_results(args.out, res, md)
    print(md)
    print(f"\nwrote {js} and {mdp}")


if __name__ == "__main__":
    main()
