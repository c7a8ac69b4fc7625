"""Shared helpers for the benchmarks: machine info, RSS sampling, DiT call timing, output files."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import threading
import time
from pathlib import Path

import psutil
import torch

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 1024**3


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The CPU features that decide which kernels a matmul gets (x86: vector width, int8 dot products, bfloat16 and
# float16 instructions, AMX tiles; ARM: the same families), in this order in the results.
MATMUL_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
    "asimd",
    "asimddp",
    "sve",
    "bf16",
    "i8mm",
)


def cpu_flags() -> list[str]:
    """The matmul-relevant features of this CPU (`MATMUL_FLAGS` it has), so a result says which kernels ran."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in MATMUL_FLAGS if f in flags]
    except OSError:
        pass
    return []


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict:
    import diffusers
    import transformers

    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "loadavg_start": loadavg(),
    }


def rss_gib() -> float:
    return psutil.Process().memory_info().rss / GIB


def maxrss_gib() -> float:
    """Process high-water mark since start (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


class RssSampler:
    """Samples this process's RSS in a background thread; `peak()` is the max since `reset()`."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self._proc = psutil.Process()
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    def reset(self) -> float:
        """Start a new window; returns the RSS now (GiB), the window's baseline."""
        now = self._proc.memory_info().rss
        self._peak = now
        return now / GIB

    def peak(self) -> float:
        self._peak = max(self._peak, self._proc.memory_info().rss)
        return self._peak / GIB

    def close(self) -> None:
        self._stop.set()


class CallTimer:
    """Times every forward call of a module (pre/post hooks): the DiT's per-step cost."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.durations: list[float] = []
        self._t0 = 0.0
        self._h = [
            module.register_forward_pre_hook(self._pre),
            module.register_forward_hook(self._post),
        ]

    def _pre(self, *_a) -> None:
        self._t0 = time.perf_counter()

    def _post(self, *_a) -> None:
        self.durations.append(time.perf_counter() - self._t0)

    def take(self) -> list[float]:
        out, self.durations = self.durations, []
        return out

    def remove(self) -> None:
        for h in self._h:
            h.remove()


def med(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs, q: float) -> float:
    """Percentile by linear interpolation (q in 0..100)."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def write_results(stem: str, data: dict, markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data.setdefault("machine", {})["loadavg_end"] = loadavg()
    js = RESULTS / f"{stem}.json"
    md = RESULTS / f"{stem}.md"
    js.write_text(json.dumps(data, indent=2, default=str) + "\n")
    md.write_text(markdown.rstrip() + "\n")
    return js, md


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(m: dict) -> str:
    return (
        f"Machine: {m['cpu']} ({m['nproc']} cores, torch threads {m['torch_threads']}, "
        f"flags {','.join(m['cpu_flags'])}), {m['ram_gib']} GiB RAM; torch {m['torch']}, diffusers {m['diffusers']}; "
        f"{m['date']}; load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}."
    )


def quiet() -> None:
    """Silence the noisy-but-harmless library warnings and logs."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
    except Exception:
        pass
