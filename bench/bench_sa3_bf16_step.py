"""One Stable Audio 3 small DiT step (real size, random weights) in half precision on the CPU: the DiT module as it
was (`--before`, a git revision; loaded from the repository's history) beside the working tree's, in one run.

    python -m bench.bench_sa3_bf16_step --json          # bfloat16, 10 s clip, 8 steps x 3 trajectories

Both modules hold the same weights and get the same inputs the family gives them for a 10 s request (padding mask,
local-conditioning embeddings and cross-attention keys/values computed once per request by each module's own
`cross_kv` / `local_embeds`, as `StableAudio3Model.step` does). Each runs its own ping-pong trajectory (8 steps of
Stability's schedule, the re-noising draws shared); at every step both forwards run back to back, in alternating
order (AB BA ...), so load from other processes hits both alike. Reported: the median of the per-step time ratios
(before / after), median ms per step, and how far the after module's output moves from the before one's (max abs
and cosine of one forward on the same inputs, and of the final latents of the trajectories; 0 and 1 when the
change keeps the numbers bitwise). `--check-dtypes` runs one untimed forward in other dtypes for the same check.
`--compile` adds a row with every block of the working tree's DiT under `torch.compile` (warm-up excluded).

The host may be shared: compare ratios, not absolute times, and read the load average printed with them. Random
weights give the real cost of the shapes; they say nothing about audio quality.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .common import cpu_flags, cpu_model, loadavg, machine_info, md_table, quiet, write_results

ROOT = Path(__file__).resolve().parent.parent
DIT_PATH = "src/stable_audio_service/models/stable_audio_3/dit.py"
# dit.py before the half-precision CPU work (the module bench/results/sa3_speed_10s.md measured)
BEFORE = "0cf4f1d89a04d46cc43248a65f02a04e5327e52d"


def load_module_at(rev: str) -> ModuleType:
    """dit.py as it was at `rev`, as a module of the same package (its relative imports resolve to today's)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{DIT_PATH}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    name = "stable_audio_service.models.stable_audio_3._dit_before"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "stable_audio_service.models.stable_audio_3"
    sys.modules[name] = module
    exec(compile(source, f"{rev[:10]}:{DIT_PATH}", "exec"), module.__dict__)
    return module


def build_pair(rev: str, seed: int = 0) -> tuple[Any, Any, Any]:
    """(config, before DiT, after DiT): the real small shapes, the same random float32 weights in both."""
    from stable_audio_service.models.stable_audio_3.config import parse_config
    from stable_audio_service.models.stable_audio_3.dit import DiffusionTransformer

    from .sa3_real import _randomize, real_small_config

    config = parse_config(real_small_config())
    after = DiffusionTransformer(config.dit)
    _randomize(after, torch.Generator().manual_seed(seed))
    before = load_module_at(rev).DiffusionTransformer(config.dit)
    before.load_state_dict(after.state_dict())
    for m in (before, after):
        m.eval().requires_grad_(False)
    return config, before, after


def request_inputs(config: Any, duration: float, rows: int, seed: int = 1) -> dict[str, Any]:
    """What `StableAudio3Model.step` gives the DiT for one request of `duration` s (`rows` 2: under guidance)."""
    from stable_audio_service.models.stable_audio_3 import sampling
    from stable_audio_service.models.stable_audio_3.config import DEFAULT_DURATION_PADDING_S

    win = sampling.window(
        duration,
        sample_rate=config.sample_rate,
        hop=config.hop,
        latent_align=config.latent_align,
        sample_size=config.sample_size,
        padding_s=DEFAULT_DURATION_PADDING_S,
    )
    g = torch.Generator().manual_seed(seed)
    dit = config.dit
    shape = (1, dit.io_channels, win.latent_length)
    context = torch.randn(rows, config.text.max_length + 1, dit.cond_token_dim, generator=g)
    global_cond = torch.randn(1, dit.global_cond_dim, generator=g).expand(rows, -1)
    local = torch.zeros(1, dit.local_add_cond_dim, win.latent_length)  # no inpainting: mask and latents zero
    sigmas = sampling.schedule(8, 1.0, sampling.make_shift(config.sampling_shift), win.effective_length)
    return {
        "window": win,
        "noise": torch.randn(shape, generator=g),
        "draws": [torch.randn(shape, generator=g) for _ in range(sigmas.shape[-1] - 1)],
        "context": context,
        "global_cond": global_cond,
        "local": local,
        "mask": sampling.padding_mask(win).expand(rows, -1),
        "sigmas": sigmas,
        "rows": rows,
    }


class Runner:
    """One DiT served at one dtype on one request: its per-request caches, its trajectory, its step times."""

    def __init__(self, name: str, dit: torch.nn.Module, dtype: torch.dtype, inputs: dict[str, Any]) -> None:
        import copy

        self.name = name
        self.dit = copy.deepcopy(dit).to(dtype)
        self.dtype = dtype
        self.inputs = inputs
        with torch.no_grad():
            self.kv = self.dit.cross_kv(inputs["context"])
            self.local = self.dit.local_embeds(inputs["local"])
            if inputs["rows"] > 1:
                self.local = [e.expand(inputs["rows"], -1, -1) for e in self.local]
        self.times: list[float] = []
        self.reset()

    def reset(self) -> None:
        self.x = self.inputs["noise"].to(self.dtype)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        rows = self.inputs["rows"]
        return self.dit(
            x.expand(rows, -1, -1),
            sigma.to(x.dtype).expand(rows),
            None,
            self.inputs["global_cond"],
            None,
            self.inputs["mask"],
            [rows],
            self.kv,
            self.local,
        )

    def step(self, i: int) -> None:
        """Ping-pong step `i` (the conditional row's velocity), timed."""
        from stable_audio_service.models.stable_audio_3 import sampling

        sigmas = self.inputs["sigmas"]
        t0 = time.perf_counter()
        out = self.forward(self.x, sigmas[:, i])
        self.times.append(time.perf_counter() - t0)
        self.x, _ = sampling.pingpong_step(self.x, out[:1], sigmas[:, i], sigmas[:, i + 1], self.inputs["draws"][i])


def deviation(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """max |a - b|, cosine and bitwise equality, in float64."""
    x, y = a.double().flatten(), b.double().flatten()
    cos = float(x @ y / (x.norm() * y.norm())) if float(x.norm() * y.norm()) > 0 else float("nan")
    return {"max_abs": float((x - y).abs().max()), "cosine": cos, "bitwise": bool(torch.equal(a, b))}


def run_dtype(
    config: Any, before: Any, after: Any, dtype: torch.dtype, args: argparse.Namespace
) -> tuple[dict[str, Any], list[list]]:
    """Interleaved trajectories of every row at `dtype`: timings, ratios and deviations."""
    inputs = request_inputs(config, args.duration, args.rows)
    runners = [Runner("before", before, dtype, inputs), Runner("after", after, dtype, inputs)]
    if args.compile:
        compiled = Runner("after+compile", after, dtype, inputs)
        for block in compiled.dit.transformer.layers:
            block.compile(dynamic=True)
        runners.append(compiled)
    sigma = inputs["sigmas"][:, 3]
    single = {}
    t0 = time.perf_counter()
    for r in runners:  # untimed warm-up forward (compile happens here); also the single-forward comparison
        single[r.name] = r.forward(inputs["noise"].to(dtype), sigma).float()
    warm_s = time.perf_counter() - t0
    steps = inputs["sigmas"].shape[-1] - 1
    pairs: dict[str, list[float]] = {r.name: [] for r in runners[1:]}
    flip = False
    for _ in range(args.trajectories):
        for r in runners:
            r.reset()
        for i in range(steps):
            order = runners[::-1] if flip else runners
            flip = not flip
            for r in order:
                r.step(i)
            for r in runners[1:]:
                pairs[r.name].append(runners[0].times[-1] / r.times[-1])
    ms = {r.name: 1e3 * statistics.median(r.times) for r in runners}
    result: dict[str, Any] = {
        "dtype": str(dtype).removeprefix("torch."),
        "latent_length": inputs["window"].latent_length,
    }
    rows = [[f"before ({args.before[:7]})", result["dtype"], f"{ms['before']:.0f}", "1.00x", "-", "-", "-"]]
    for r in runners[1:]:
        ratio = statistics.median(pairs[r.name])
        one = deviation(single[r.name], single["before"])
        final = deviation(r.x.float(), runners[0].x.float())
        q25, q75 = np.percentile(pairs[r.name], [25, 75])
        result[r.name] = {
            "ms_per_step": round(ms[r.name], 1),
            "speedup_median": round(ratio, 3),
            "speedup_iqr": [round(float(q25), 3), round(float(q75), 3)],
            "pairs": len(pairs[r.name]),
            "forward_vs_before": one,
            "final_latents_vs_before": final,
        }
        rows.append(
            [
                r.name,
                result["dtype"],
                f"{ms[r.name]:.0f}",
                f"{ratio:.2f}x ({q25:.2f}-{q75:.2f})",
                "bitwise" if one["bitwise"] else f"{one['max_abs']:.2e}",
                f"{one['cosine']:.6f}",
                "bitwise" if final["bitwise"] else f"{final['max_abs']:.2e} (cos {final['cosine']:.6f})",
            ]
        )
    result["before"] = {"ms_per_step": round(ms["before"], 1)}
    result["warmup_s"] = round(warm_s, 1)
    return result, rows


def check_dtype(config: Any, before: Any, after: Any, dtype: torch.dtype, args: argparse.Namespace) -> dict:
    """One untimed forward of both modules at `dtype` on the same inputs: how far the after module moves."""
    inputs = request_inputs(config, args.duration, args.rows)
    a, b = Runner("before", before, dtype, inputs), Runner("after", after, dtype, inputs)
    sigma = inputs["sigmas"][:, 3]
    x = inputs["noise"].to(dtype)
    return deviation(b.forward(x, sigma).float(), a.forward(x, sigma).float())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help="git revision of dit.py to compare with")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rows", type=int, default=1, choices=[1, 2], help="2: a guided request's two rows")
    parser.add_argument("--trajectories", type=int, default=3, help="8-step trajectories per row (pairs = 8x)")
    parser.add_argument("--dtypes", default="bfloat16", help="timed dtypes, comma-separated")
    parser.add_argument("--check-dtypes", default="float32,float16", help="untimed bitwise checks ('' for none)")
    parser.add_argument("--compile", action="store_true", help="add the working tree's DiT under torch.compile")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core, as the service)")
    parser.add_argument("--json", action="store_true", help="write bench/results/sa3_bf16_step[...].{json,md}")
    args = parser.parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    machine = machine_info()
    config, before, after = build_pair(args.before)
    results: dict[str, Any] = {}
    table_rows: list[list] = []
    for name in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        res, rows = run_dtype(config, before, after, getattr(torch, name), args)
        results[name] = res
        table_rows += rows
        print(md_table(["variant", "dtype", "ms/step", "speedup", "forward max abs", "cosine", "final"], rows))
    checks = {
        name: check_dtype(config, before, after, getattr(torch, name), args)
        for name in [d.strip() for d in args.check_dtypes.split(",") if d.strip()]
    }
    headers = ["variant", "dtype", "ms/step (median)", "speedup (median, IQR)", "forward max abs vs before"]
    headers += ["forward cosine", "final latents vs before"]
    table = md_table(headers, table_rows)
    end_load = loadavg()
    title = (
        f"SA3 small DiT step, real size, random weights, {args.duration:g} s clip, {args.rows} row(s); "
        f"{cpu_model()} [{','.join(cpu_flags())}], torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"load average {machine['loadavg_start']} at start, {end_load} at end"
    )
    print()
    print(title)
    print(table)
    for name, dev in checks.items():
        print(f"check {name}: after vs before, one forward: {json.dumps(dev)}")
    summary = {
        "title": title,
        "before": args.before,
        "duration": args.duration,
        "rows": args.rows,
        "trajectories": args.trajectories,
        "results": results,
        "checks": checks,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "threads": torch.get_num_threads(),
        "loadavg_start": machine["loadavg_start"],
        "loadavg_end": end_load,
    }
    if args.json:
        stem = "sa3_bf16_step" + (f"_rows{args.rows}" if args.rows != 1 else "") + ("_compile" if args.compile else "")
        stem += f"_t{args.threads}" if args.threads else ""
        write_results(stem, dict(summary, machine=machine), f"{title}\n\n{table}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
