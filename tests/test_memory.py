"""Memory stays flat: 40 sequential 30 s generations through the engine (a fake model that makes
30 s of 44.1 kHz stereo at once, so only the engine's own bookkeeping is measured).

- `/predict`-style jobs (`keep=False`): RSS after the run is where it was before.
- `/jobs`-style jobs: what stays is bounded by `max_result_bytes`, not by the number of requests.

Each runs in a fresh child process so pytest's own allocations do not blur the figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .reliability_report import record

ROOT = Path(__file__).resolve().parent.parent
RUNS = 40
BUDGET_MIB = 64

SCRIPT = """
import gc, json, sys
import psutil
from stable_audio_service.engine import Engine
from tests.fake_model import FakeModel, Watcher, params

budget_mib, runs = int(sys.argv[1]), int(sys.argv[2])
proc = psutil.Process()
report = {}
for keep in (False, True):
    model, watch = FakeModel(sample_rate=44100), Watcher()
    engine = Engine(model, observer=watch, batch_wait_ms=0, max_result_bytes=budget_mib * 2**20)
    engine.start()

    def generate(seed):
        job = engine.submit(params(seed=seed, steps=2, duration=30.0), keep=keep)
        watch.wait(job)
        assert job.status.value == "done", job.error
        return len(job.result.data)

    for seed in range(3):  # warm up: lazy imports, allocator pools
        size = generate(seed)
    gc.collect()
    start = peak = proc.memory_info().rss
    for seed in range(100, 100 + runs):
        generate(seed)
        peak = max(peak, proc.memory_info().rss)
    gc.collect()
    end = proc.memory_info().rss
    report["keep" if keep else "forget"] = {"start": start, "peak": peak, "end": end, "result_bytes": size,
                                             "kept": engine.kept_count(), "kept_bytes": engine.result_bytes()}
    engine.shutdown(grace_s=0)
    del engine, model, watch, generate
    gc.collect()
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def runs() -> dict:
    """Both runs in one fresh child process (one interpreter start): forgotten results first, then kept ones."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(BUDGET_MIB), str(RUNS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


MIB = 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS figures are calibrated on Linux")
def test_forty_predict_style_30_s_generations_leave_rss_where_it_was(runs):
    r = runs["forget"]
    growth = (r["end"] - r["start"]) / MIB
    record(
        "Memory (engine, 40 sequential 30 s stereo generations, fake model)",
        "/predict-style (results not kept): RSS start / peak / end",
        f"{r['start'] / MIB:.0f} / {r['peak'] / MIB:.0f} / {r['end'] / MIB:.0f} MiB ({growth:+.1f} MiB)",
    )
    assert r["kept"] == 0 and r["kept_bytes"] == 0
    # one 30 s WAV is 5 MiB; keeping them all would be 200 MiB
    assert growth < 16, r


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS figures are calibrated on Linux")
def test_forty_kept_30_s_results_stay_within_the_byte_budget(runs):
    r = runs["keep"]
    growth = (r["end"] - r["start"]) / MIB
    record(
        "Memory (engine, 40 sequential 30 s stereo generations, fake model)",
        f"/jobs-style, STABLE_AUDIO_MAX_RESULT_BYTES={BUDGET_MIB} MiB: results kept, RSS growth",
        f"{r['kept']} of {RUNS} ({r['kept_bytes'] / MIB:.1f} MiB), {growth:+.1f} MiB",
    )
    assert r["kept_bytes"] <= BUDGET_MIB * MIB and r["kept"] < RUNS
    assert r["kept"] >= BUDGET_MIB * MIB // r["result_bytes"] - 1  # the budget is used, not just emptied
    assert growth < BUDGET_MIB + 16, r
