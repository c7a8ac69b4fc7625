"""Stable Audio 3's SAME decoder: diffusers' one-pass decode vs the service's chunked band decode.

diffusers' `AutoencoderSAME.decode` runs one dense attention over all tokens (masked to a narrow band),
so time and memory grow with the square of the clip; `models.sa3.band_decode` decodes 64-latent chunks
with the band's halo, linear in the clip. Real-size SAME-S shape (`AutoencoderSAME()` defaults, 107.5M
parameters, random weights). Full and chunked decodes of each length run back to back; the outputs are
compared. The one-pass decode is skipped where its attention would not fit in this machine's memory.

    .venv/bin/python -m bench.bench_same_decode            # 10, 30, 60, 120 s
    .venv/bin/python -m bench.bench_same_decode --quick    # 10 s only
"""

from __future__ import annotations

import argparse
import math
import time

import psutil
import torch

from bench.common import RssSampler, loadavg, machine_info, machine_line, md_table, quiet, write_results

SR, HOP = 44100, 4096


def one_pass_bytes(latents: int, vae) -> float:
    """Rough peak of the one-pass decode: per-head fp32 attention scores over all patch tokens, x1.5."""
    cfg = vae.config
    tokens = latents * (HOP // cfg.patch_size)
    heads = cfg.encoder_channels * cfg.encoder_c_mults[-1] // cfg.dim_heads
    return 1.5 * heads * tokens * tokens * 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--durations", type=float, nargs="+", default=[10.0, 30.0, 60.0, 120.0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="same_decode_real")
    args = ap.parse_args()
    quiet()
    from diffusers import AutoencoderSAME

    from stable_audio_service.models.sa3 import band_decode
    from stable_audio_service.models.tiny import _randomize_zero_init

    durations = [10.0] if args.quick else args.durations
    info = machine_info()
    print(machine_line(info), flush=True)
    torch.manual_seed(0)
    vae = AutoencoderSAME().eval()
    # SAME zero-initialises its residual output projections; random values there make the decoder a real
    # function of its input, so the one-pass vs chunked comparison below means something.
    _randomize_zero_init(vae, torch.Generator().manual_seed(0))
    params = sum(p.numel() for p in vae.parameters()) / 1e6
    print(f"AutoencoderSAME: {params:.1f}M parameters", flush=True)
    sampler = RssSampler()
    rows, raw = [], []
    for d in durations:
        n = math.ceil(d * SR / HOP)
        latents = torch.randn(1, vae.config.latent_dim, n, generator=torch.Generator().manual_seed(n))
        available = psutil.virtual_memory().available
        need = one_pass_bytes(n, vae)
        full = None
        rec = {"duration_s": d, "latents": n, "one_pass_estimate_gib": need / 2**30}
        if need < 0.6 * available:
            base = sampler.reset()
            t = time.perf_counter()
            with torch.no_grad():
                full = vae.decode(latents).sample
            rec["full_s"] = time.perf_counter() - t
            rec["full_peak_gib"] = sampler.peak() - base
        base = sampler.reset()
        t = time.perf_counter()
        chunked = band_decode(vae, latents)
        rec["chunked_s"] = time.perf_counter() - t
        rec["chunked_peak_gib"] = sampler.peak() - base
        if full is not None:
            rec["max_abs_diff"] = float((full - chunked).abs().max())
            rec["output_rms"] = float(full.pow(2).mean().sqrt())
        rec["loadavg"] = loadavg()
        raw.append(rec)
        print(rec, flush=True)
        full_s = f"{rec['full_s']:.1f}" if "full_s" in rec else f"not run (~{need / 2**30:.0f} GiB)"
        full_m = f"{rec['full_peak_gib']:.2f}" if "full_peak_gib" in rec else "–"
        speed = f"**{rec['full_s'] / rec['chunked_s']:.2f}x**" if "full_s" in rec else "–"
        rows.append(
            [
                f"{d:g} s",
                n,
                full_s,
                f"{rec['chunked_s']:.1f}",
                speed,
                full_m,
                f"{rec['chunked_peak_gib']:.2f}",
                f"{rec['chunked_s'] / n * 1000:.0f}",
                f"{rec['max_abs_diff']:.1e}" if "max_abs_diff" in rec else "–",
            ]
        )
    sampler.close()
    md = "### Stable Audio 3 SAME-S decode: diffusers one pass vs chunked band decode (random weights, fp32 CPU)\n\n"
    md += md_table(
        [
            "clip",
            "latents",
            "one pass (s)",
            "chunked (s)",
            "speed-up",
            "one-pass extra RSS (GiB)",
            "chunked extra RSS (GiB)",
            "chunked ms / latent",
            "max |diff|",
        ],
        rows,
    )
    md += "\n\n" + machine_line({**info, "loadavg_end": loadavg()}) + "\n"
    print(md)
    write_results(args.out, {"machine": info, "results": raw}, md)


if __name__ == "__main__":
    main()
