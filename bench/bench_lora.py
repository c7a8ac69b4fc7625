"""The cost of per-request LoRA adapters on the real-size Stable Audio 3 small DiT (random weights).

One denoising step = one DiT forward. Measured, interleaved round by round so a shared machine's load hits every
variant alike (medians over rounds):

* one request (1 row, guidance off): the base DiT without LoRA support, with the hooks installed but idle, with one
  rank-16 adapter, with two stacked (lora + lora, and lora + dora-rows);
* four requests with four different adapters: one batched forward (shared base product, per-request low-rank
  terms) vs four sequential single-request forwards, and the same batch without adapters for reference.

Also: how long loading a rank-16 file and planning an adapter set take (the first request with that set pays it).

    .venv/bin/python -m bench.bench_lora            # 10 s clip, 3 rounds (~3 min on a 2-core CPU)
    .venv/bin/python -m bench.bench_lora --quick    # 1 round, 5 s clip
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from stable_audio_service.adapters import Adapters, LayerPlan, SetPlan, Target
from stable_audio_service.models.base import LoraRef
from stable_audio_service.models.stable_audio_3 import sampling
from stable_audio_service.models.stable_audio_3.conditioning import DurationConditioner
from stable_audio_service.models.stable_audio_3.config import DiTConfig, NumberConfig
from stable_audio_service.models.stable_audio_3.dit import DiffusionTransformer
from stable_audio_service.models.stable_audio_3.lora_targets import sa3_targets

from .common import machine_info, machine_line, md_table, med, quiet, write_results

# Stability's small DiT (../shared/reference/real-size-models.md; small-tiny/MAKING.md has the real values)
REAL_SMALL_DIT = DiTConfig(
    io_channels=256,
    embed_dim=1024,
    depth=20,
    num_heads=16,
    cond_token_dim=768,
    global_cond_dim=768,
    local_add_cond_dim=257,
    num_memory_tokens=64,
    timestep_features_dim=256,
    timestep_features_logsnr=False,
    differential=False,
    qk_norm="rms",
    qk_norm_eps=1e-6,
    norm_eps=1e-5,
    norm_force_fp32=True,
    ff_mult=4,
    project_cond_tokens=True,
    project_global_cond=True,
)
CONTEXT_ROWS = 257  # 256 text tokens + the duration token


@dataclass
class Inputs:
    args: tuple
    rows: int


def make_inputs(cfg: DiTConfig, latents: int, rows: int, device: str, seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cfg.io_channels, latents, generator=g)
    t = torch.rand(rows, generator=g)
    context = torch.randn(rows, CONTEXT_ROWS, cfg.cond_token_dim, generator=g)
    global_cond = torch.randn(rows, cfg.global_cond_dim, generator=g)
    local = torch.zeros(rows, cfg.local_add_cond_dim, latents)
    mask = torch.ones(rows, latents, dtype=torch.bool)
    tensors = [v.to(device) for v in (x, t, context, global_cond, local, mask)]
    return Inputs((*tensors, [1] * rows), rows)


def write_adapter(path: Path, targets: dict[str, Target], kind: str, rank: int, seed: int) -> None:
    """Stability's file format (float16 tensors, lora_config metadata), every Linear/Conv1d targeted."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, t in targets.items():
        key = f"{name}.parametrizations.weight.0."
        w = t.module.weight.detach().reshape(t.fan_out, -1).float().cpu()
        tensors[key + "lora_A"] = torch.randn(rank, t.fan_in, generator=g) / t.fan_in**0.5
        tensors[key + "lora_B"] = torch.randn(t.fan_out, rank, generator=g) * 0.05 * float(w.pow(2).mean().sqrt())
        if kind == "dora-rows":
            tensors[key + "magnitude"] = w.norm(dim=1)
    meta = {"rank": rank, "alpha": rank, "adapter_type": kind, "dropout": 0.0, "include": None, "exclude": None}
    save_file(
        {k: v.half().contiguous() for k, v in tensors.items()}, str(path), metadata={"lora_config": json.dumps(meta)}
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class HookClock:
    """Time spent applying adapters inside the hooks (wraps `LayerPlan.apply`): the LoRA share of a step, measured
    within the same forward, so a busy machine slows both parts alike."""

    def __init__(self, device: str) -> None:
        self.seconds = 0.0
        original = LayerPlan.apply

        def timed(plan, module, x, y) -> None:
            sync(device)
            t0 = time.perf_counter()
            original(plan, module, x, y)
            sync(device)
            self.seconds += time.perf_counter() - t0

        LayerPlan.apply = timed  # type: ignore[method-assign]

    def take(self) -> float:
        out, self.seconds = self.seconds, 0.0
        return out


CLOCK: HookClock | None = None


@torch.no_grad()
def forward(
    dit: DiffusionTransformer, support: Adapters, inputs: Inputs, plans: list[SetPlan | None], device: str
) -> tuple[float, float]:
    """One step: one DiT forward over `inputs`, row i carrying plans[i]; (seconds, of which in the LoRA hooks)."""
    assert CLOCK is not None
    segments = [(i, i + 1, p) for i, p in enumerate(plans)]
    CLOCK.take()
    sync(device)
    t0 = time.perf_counter()
    dit(*inputs.args, adapters=support.rows(segments))
    sync(device)
    return time.perf_counter() - t0, CLOCK.take()


def total(parts: list[tuple[float, float]]) -> tuple[float, float]:
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="clip seconds (the window adds 6 s of padding)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--quick", action="store_true", help="1 round, 5 s clip")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 5.0
    quiet()
    global CLOCK
    CLOCK = HookClock(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    device = args.device

    cfg = REAL_SMALL_DIT
    dit = DiffusionTransformer(cfg).eval().requires_grad_(False).to(device=device, dtype=dtype)
    duration = DurationConditioner(NumberConfig(0.0, 384.0, "expo"), cfg.cond_token_dim).to(device=device, dtype=dtype)
    params = sum(p.numel() for p in dit.parameters())
    win = sampling.window(
        args.duration, sample_rate=44100, hop=4096, latent_align=2, sample_size=5292032, padding_s=6.0
    )
    latents = win.latent_length
    print(f"DiT {params / 1e6:.1f}M parameters, {args.duration:g} s clip = {latents} latents, rank {args.rank}")

    tmp = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    targets = sa3_targets(dit, duration, "seconds_total")
    kinds = ["lora", "lora", "dora-rows", "lora"]
    for i, kind in enumerate(kinds):
        write_adapter(tmp / f"a{i}.safetensors", targets, kind, args.rank, seed=i)
    file_mb = (tmp / "a0.safetensors").stat().st_size / 2**20

    support = Adapters(tmp, targets, cache_mb=4096, device=device, dtype=dtype)
    registry = support.registry
    t0 = time.perf_counter()
    registry.load("a0")
    load_s = time.perf_counter() - t0
    setup = {}
    for label, refs in (
        ("1 lora", [LoraRef("a0", 1.0)]),
        ("lora + lora", [LoraRef("a0", 1.0), LoraRef("a1", 0.5)]),
        ("lora + dora-rows", [LoraRef("a0", 1.0), LoraRef("a2", 0.5)]),
        ("lora + dora-rows, another strength", [LoraRef("a0", 1.0), LoraRef("a2", 0.7)]),
    ):
        for name in {r.name for r in refs}:
            registry.load(name)
        t0 = time.perf_counter()
        registry.plan(refs)
        setup[label] = time.perf_counter() - t0
    plans = {
        "1": registry.plan([LoraRef("a0", 1.0)]),
        "2": registry.plan([LoraRef("a0", 1.0), LoraRef("a1", 0.5)]),
        "2d": registry.plan([LoraRef("a0", 1.0), LoraRef("a2", 0.5)]),
        "each": [registry.plan([LoraRef(f"a{i}", 1.0)]) for i in range(4)],
    }
    one = make_inputs(cfg, latents, 1, device)
    four = make_inputs(cfg, latents, 4, device)

    def hooks(on: bool) -> None:
        if on:
            support.hooks.install(targets)
        else:
            support.hooks.remove()

    variants = {
        "base DiT (no LoRA support)": lambda: (hooks(False), forward(dit, support, one, [None], device))[1],
        "hooks installed, no adapter": lambda: (hooks(True), forward(dit, support, one, [None], device))[1],
        "1 adapter (lora)": lambda: (hooks(True), forward(dit, support, one, [plans["1"]], device))[1],
        "2 adapters (lora + lora)": lambda: (hooks(True), forward(dit, support, one, [plans["2"]], device))[1],
        "2 adapters (lora + dora-rows)": lambda: (hooks(True), forward(dit, support, one, [plans["2d"]], device))[1],
        "4 requests, no adapter, 1 batch": lambda: (hooks(True), forward(dit, support, four, [None] * 4, device))[1],
        "4 requests, 4 adapters, 1 batch": lambda: (hooks(True), forward(dit, support, four, plans["each"], device))[1],
        "4 requests, 4 adapters, sequential": lambda: (
            hooks(True),
            total([forward(dit, support, one, [plans["each"][i]], device) for i in range(4)]),
        )[1],
    }
    names = list(variants)
    for name in names:  # warm-up
        variants[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    in_hooks: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            seconds, hooked = variants[name]()
            times[name].append(seconds)
            in_hooks[name].append(hooked / seconds)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n[:28]} {times[n][-1]:.2f}s" for n in names))

    base = med(times[names[0]])
    single_base = base
    batch_seq = med(times["4 requests, 4 adapters, sequential"])
    rows = []
    for name in names:
        t = med(times[name])
        share = f"{100 * med(in_hooks[name]):.1f} %"
        if name.startswith("4 requests"):
            per_request = t / 4
            vs = f"{t / batch_seq:.2f}x sequential" if "sequential" not in name else "1.00x"
            rows.append([name, f"{t:.3f}", f"{per_request:.3f}", f"{t / (4 * single_base):.2f}", share, vs])
        else:
            rows.append([name, f"{t:.3f}", f"{t:.3f}", f"{t / single_base:.3f}", share, ""])
    headers = [
        "step (one DiT forward)",
        "seconds",
        "s / request",
        "vs base (x 1 or x 4)",
        "of which applying adapters",
        "batch vs sequential",
    ]
    table = md_table(headers, rows)
    setup_rows = [["load one rank-16 file (first use)", f"{load_s:.3f}"]]
    setup_rows += [[f"plan {label} (first request with this set)", f"{s:.3f}"] for label, s in setup.items()]
    setup_table = md_table(["once per adapter / set", "seconds"], setup_rows)
    info = machine_info()
    info.update(device=device, dtype=args.dtype)
    text = (
        f"Real-size Stable Audio 3 small DiT ({params / 1e6:.1f}M parameters, random weights), {args.dtype} on "
        f"{device}, {args.duration:g} s clip ({latents} latents + 64 memory tokens), guidance off (1 row per request), "
        f"rank-{args.rank} adapters on all {len(targets)} Linear/Conv1d ({file_mb:.1f} MiB file each), medians of "
        f"{args.rounds} interleaved rounds.\n\n{table}\n\n{setup_table}\n\n{machine_line(info)}\n"
    )
    print()
    print(text)
    js, md = write_results(
        f"lora_{device}_{args.dtype}",
        {
            "machine": info,
            "args": vars(args),
            "latents": latents,
            "times": times,
            "share_in_hooks": in_hooks,
            "setup_s": setup,
            "load_s": load_s,
        },
        text,
    )
    print(f"wrote {js} and {md}")


if __name__ == "__main__":
    main()
