"""`STABLE_AUDIO_DTYPE=auto`: float16 on GPUs, bfloat16 on a CPU with native bfloat16 matmuls where measured
faster (for a family that runs in it), float32 otherwise; explicit dtypes as given; GET /models reports the dtype
in use. The CPU's flags and the GEMM measurement are injected: no test depends on this machine or on timing."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from stable_audio_service.config import Settings
from stable_audio_service.models import loading
from stable_audio_service.models.loading import (
    AUTO_BF16_MIN_SPEEDUP,
    DtypeChoice,
    bf16_gemm_speedup,
    choose_dtype,
    cpu_flags,
    load_model,
)
from stable_audio_service.models.tiny import make_tiny

from .conftest import decode_b64, serve

X86_CPUINFO = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse avx avx2 fma avx512f avx512_bf16 avx512_vnni
"""
ARM_CPUINFO = """processor\t: 0
Features\t: fp asimd bf16 i8mm sve
"""


def never() -> float:
    raise AssertionError("the GEMM was measured where flags or the device already decide")


@pytest.fixture(scope="module")
def sa3_tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("models") / "tiny-sa3", family="sa3", structure="small")


@pytest.fixture(scope="module")
def open1_tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("models") / "tiny-open1")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with AVX512-BF16 whose bfloat16 GEMM measures `speedup[0]` x float32's."""
    speedup = [2.5]
    calls: list[int] = []

    def measure() -> float:
        calls.append(1)
        return speedup[0]

    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    monkeypatch.setattr(loading, "bf16_gemm_speedup", measure)
    return speedup, calls


# -- the rule --------------------------------------------------------------------------------------------------


def test_cpu_flags_are_read_from_cpuinfo():
    assert {"avx512_bf16", "avx2"} <= cpu_flags(X86_CPUINFO)
    assert {"bf16", "sve"} <= cpu_flags(ARM_CPUINFO)
    assert cpu_flags("processor\t: 0\n") == frozenset()


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_auto_is_float16_on_gpus(device):
    choice = choose_dtype(device, "auto", cpu_bfloat16=True, flags={"avx512_bf16"}, measure=never)
    assert choice.dtype == torch.float16 and "float16" in choice.reason


def test_auto_keeps_float32_for_a_family_not_run_in_bfloat16():
    choice = choose_dtype("cpu", "auto", cpu_bfloat16=False, flags={"amx_bf16"}, measure=never)
    assert choice.dtype == torch.float32


def test_auto_keeps_float32_without_native_bfloat16():
    choice = choose_dtype("cpu", "auto", cpu_bfloat16=True, flags={"avx2", "avx512f", "fma"}, measure=never)
    assert choice.dtype == torch.float32
    assert "avx512_bf16" in choice.reason and "amx_bf16" in choice.reason


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_auto_is_bfloat16_where_measured_faster(flag):
    choice = choose_dtype("cpu", "auto", cpu_bfloat16=True, flags={"avx2", flag}, measure=lambda: 2.5)
    assert choice == DtypeChoice(torch.bfloat16, choice.reason) and choice.name == "bfloat16"
    assert flag in choice.reason and "2.50x" in choice.reason


def test_auto_keeps_float32_where_bfloat16_does_not_pay():
    slow = choose_dtype("cpu", "auto", cpu_bfloat16=True, flags={"avx512_bf16"}, measure=lambda: 1.1)
    assert slow.dtype == torch.float32 and "1.10x" in slow.reason
    edge = choose_dtype("cpu", "auto", cpu_bfloat16=True, flags={"avx512_bf16"}, measure=lambda: AUTO_BF16_MIN_SPEEDUP)
    assert edge.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_an_explicit_dtype_is_used_as_given(name, device):
    choice = choose_dtype(device, name, cpu_bfloat16=True, flags=set(), measure=never)
    assert choice.dtype == getattr(torch, name) and f"STABLE_AUDIO_DTYPE={name}" in choice.reason
    assert ("slow" in choice.reason) == (device == "cpu" and name == "float16")


def test_the_measurement_is_a_ratio():
    """Tiny shapes: only that it runs and gives a positive finite ratio (no timing is asserted)."""
    ratio = bf16_gemm_speedup(rows=4, width=8, hidden=8, budget_s=0.0)
    assert math.isfinite(ratio) and ratio > 0


def test_settings_default_is_auto(monkeypatch):
    monkeypatch.delenv("STABLE_AUDIO_DTYPE")  # conftest pins float32 for the rest of the suite
    assert Settings().dtype == "auto"


def test_families_say_whether_auto_may_use_bfloat16_on_the_cpu():
    from stable_audio_service.models import registry

    assert {f.name: f.cpu_bfloat16 for f in registry.FAMILIES} == {"sa3": True, "open-1.0": False}


# -- through the loader and the service -------------------------------------------------------------------------


def test_auto_loads_sa3_in_bfloat16_and_says_why(sa3_tiny, bf16_cpu, caplog):
    with caplog.at_level(logging.INFO, logger="stable_audio_service"):
        model, info = load_model(Settings(model=str(sa3_tiny), device="cpu", dtype="auto"))
    assert model.dtype == "bfloat16"
    assert {p.dtype for p in model.dit.parameters()} == {torch.bfloat16}
    assert "bfloat16" in info.dtype_reason and "2.50x" in info.dtype_reason
    assert any("dtype: bfloat16 on cpu" in r.getMessage() for r in caplog.records)


def test_auto_loads_sa3_in_float32_where_bfloat16_is_slower(sa3_tiny, bf16_cpu):
    bf16_cpu[0][0] = 1.0
    model, info = load_model(Settings(model=str(sa3_tiny), device="cpu", dtype="auto"))
    assert model.dtype == "float32" and {p.dtype for p in model.dit.parameters()} == {torch.float32}
    assert "float32" in info.dtype_reason


def test_open1_keeps_float32_on_a_bfloat16_cpu(open1_tiny, bf16_cpu):
    _speedup, calls = bf16_cpu
    model, info = load_model(Settings(model=str(open1_tiny), device="cpu", dtype="auto"))
    assert model.dtype == "float32" and not calls


def test_bfloat16_sa3_is_served_end_to_end(sa3_tiny):
    """Explicit bfloat16: GET /models reports it, the weights are in it, and /predict gives finite, non-silent
    audio through the whole service path."""
    client = serve(Settings(model=str(sa3_tiny), device="cpu", dtype="bfloat16", batch_wait_ms=0))
    try:
        info = client.get("/models").json()
        assert info["dtype"] == "bfloat16"
        model = client.app.state.service.engine.model
        assert {p.dtype for p in model.dit.parameters()} == {torch.bfloat16}
        response = client.post("/predict", json={"prompt": "rain on a tin roof", "duration": 1.5, "seed": 3})
        assert response.status_code == 200, response.text
        audio, rate = decode_b64(response.json()["audio_b64"])
        assert rate == 44100 and audio.shape == (2, int(1.5 * 44100))
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    finally:
        client.__exit__(None, None, None)


def test_models_reports_the_dtype_auto_chose(sa3_tiny, bf16_cpu):
    client = serve(Settings(model=str(sa3_tiny), device="cpu", dtype="auto", batch_wait_ms=0))
    try:
        assert client.get("/models").json()["dtype"] == "bfloat16"
    finally:
        client.__exit__(None, None, None)
