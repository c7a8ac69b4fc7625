"""`./run bench-gpu` without a GPU stops at once with one line and a nonzero exit; its measuring code (the CUDA
paths guarded by device checks) runs on the CPU with a tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import bench_gpu
from stable_audio_service.models.stable_audio_3.accel import SA3Options
from stable_audio_service.models.stable_audio_3.family import StableAudio3Model
from stable_audio_service.models.tiny import make_tiny

ROOT = Path(__file__).resolve().parents[1]
no_gpu_here = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the refusal cannot be seen")


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@no_gpu_here
def test_without_a_gpu_the_module_says_so_in_one_line():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_gpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    line = _one_line(result)
    assert line.startswith("bench-gpu: no GPU") and torch.__version__ in line


@no_gpu_here
@pytest.mark.skipif(shutil.which("bash") is None, reason="./run is a bash script")
def test_without_a_gpu_the_run_command_says_so_in_one_line(tmp_path):
    """Through `./run bench-gpu` itself, with a stand-in venv whose python is this one (set-up skipped by its
    stamp, so nothing is installed)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (venv / "bin" / "python").chmod(0o755)
    (venv / ".installed-runtime").touch()
    env = dict(os.environ, VENV=str(venv), CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [str(ROOT / "run"), "bench-gpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert _one_line(result).startswith("bench-gpu: no GPU")


def test_the_cpu_is_never_refused():
    assert bench_gpu.no_gpu_reason("cpu") is None


@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
    path = make_tiny(tmp_path_factory.mktemp("models") / "tiny-sa3", family="sa3", structure="small")

    def build() -> StableAudio3Model:
        return StableAudio3Model.from_checkpoint(
            path, name="tiny", device="cpu", dtype=torch.float32, text_cache_size=0, options=SA3Options()
        )

    return build


def test_measure_runs_every_row_on_the_cpu(tiny_builder):
    rows = bench_gpu.measure(
        {"tiny": tiny_builder},
        device="cpu",
        dtypes=["float16", "bfloat16"],
        durations=[1.0],
        batches=[1, 2],
        batch_duration=1.0,
        steps=2,
        rounds=2,
        log=lambda _line: None,
    )
    cells = [(r["dtype"], r["kind"], r["batch"]) for r in rows]
    assert sorted(cells) == sorted(
        (d, k, b) for d in ("float16", "bfloat16") for k, b in (("speed", 1), ("throughput", 1), ("throughput", 2))
    )
    for r in rows:
        assert r["finite"] and r["rounds"] == 2 and r["total_s"] > 0
        assert r["clips_per_min"] > 0 and r["peak_vram_gib"] is None  # no VRAM figure off the GPU
        assert math_close(r["rtf"], r["total_s"] / (r["duration"] * r["batch"]))
    table = bench_gpu.table(rows)
    assert table.count("\n") == len(rows) + 1 and "peak VRAM GiB" in table
    json.dumps(rows)


def math_close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-3 * max(1.0, abs(b))
