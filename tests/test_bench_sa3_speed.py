"""`bench.bench_sa3_speed` keeps its interface (the last line is one JSON object with the documented keys) and
its rows serve the same weights; run on a tiny checkpoint (`--model`), so it takes seconds."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from bench import bench_sa3_speed
from bench.sa3_structures import served_as
from stable_audio_service.models.stable_audio_3.accel import SA3Options
from stable_audio_service.models.stable_audio_3.family import StableAudio3Model
from stable_audio_service.models.tiny import make_tiny


@pytest.fixture(scope="module")
def tiny_sa3(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("models") / "tiny-sa3", family="sa3", structure="small")


def test_last_line_is_the_json_interface(tiny_sa3, capsys):
    bench_sa3_speed.main(["--model", str(tiny_sa3), "--duration", "1", "--steps", "1", "--rounds", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    for key in ("rtf", "rtf_eager_fp32", "config", "decode_s", "dit_s", "text_s", "peak_rss_gib", "matmul_gflops"):
        assert key in summary, key
    assert isinstance(summary["cpu_flags"], list) and isinstance(summary["cpu_model"], str)
    assert summary["dtype"] == summary["config"]["dtype"] == summary["rows"][summary["config"]["name"]]["dtype"]
    default = summary["default"]
    assert default["dtype"] in ("float32", "bfloat16") and default["rtf"] > 0 and default["reason"]
    assert set(summary["rows"]) == {"eager_fp32", "exact", "bfloat16", "float16", "int8"}
    assert {r["dtype"] for r in summary["rows"].values()} == {"float32", "bfloat16", "float16"}
    quality = summary["quality"]
    assert set(quality["rows"]) == {"bfloat16", "float16", "int8"}
    assert all(q["finite"] and -1 <= q["cos_audio"] <= 1 for q in quality["rows"].values())
    assert quality["int8_gate"]["int8"]["threshold"] == bench_sa3_speed.QUALITY_GATE
    assert summary["max_abs_dev_vs_eager"]["exact"]["latents"] == 0.0  # the exact levers change nothing
    text = "\n".join(out)
    assert "int8 gate" in text and "| exact" in text


def test_random_weights_are_called_what_they_are(tiny_sa3, capsys, monkeypatch):
    """Without --model the bench says its quality figures say nothing about audio (the real-size build is
    replaced by the tiny checkpoint here, to stay fast)."""
    tiny = bench_sa3_speed.load_base(str(tiny_sa3), "cpu")
    monkeypatch.setattr(bench_sa3_speed, "load_base", lambda _model, _device: tiny)
    bench_sa3_speed.main(["--duration", "1", "--steps", "1", "--rounds", "1", "--dtypes", "float32", "--no-int8"])
    out = capsys.readouterr().out
    assert "random weights say nothing about audio quality" in out
    assert (
        json.loads(out.strip().splitlines()[-1])["quality"]["note"] == "random weights say nothing about audio quality"
    )


def test_dtypes_option():
    assert bench_sa3_speed.parse_dtypes("float16,bfloat16") == ["float32", "bfloat16", "float16"]
    assert bench_sa3_speed.parse_dtypes("float32") == ["float32"]
    with pytest.raises(argparse.ArgumentTypeError):
        bench_sa3_speed.parse_dtypes("int4")


def test_cosine():
    a = np.array([1.0, 2.0, 3.0])
    assert bench_sa3_speed.cosine(a, a) == pytest.approx(1.0)
    assert bench_sa3_speed.cosine(a, -a) == pytest.approx(-1.0)
    assert math.isnan(bench_sa3_speed.cosine(a, np.zeros(3)))


def test_served_as_shares_or_copies_the_same_weights(tiny_sa3):
    base = StableAudio3Model.from_checkpoint(
        tiny_sa3, name="tiny", device="cpu", dtype=torch.float32, text_cache_size=0, options=SA3Options()
    )
    same = served_as(base, options=SA3Options(threads=None))
    assert same.dit is base.dit and same.text.encoder is base.text.encoder
    half = served_as(base, dtype=torch.bfloat16)
    assert half.dit is not base.dit and half.torch_dtype == torch.bfloat16
    assert {p.dtype for p in half.dit.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in base.dit.parameters()} == {torch.float32}  # the base is left as it was
    assert half.text.encoder is base.text.encoder  # float32 T5Gemma, shared when it neither moves nor is quantised
    assert half.text.cache is not base.text.cache
    weight = next(iter(base.dit.parameters()))
    assert torch.equal(next(iter(half.dit.parameters())).float(), weight.bfloat16().float())
    int8 = served_as(base, options=SA3Options(quantize="int8"))
    assert int8.text.encoder is not base.text.encoder and "dit" in int8.speed_settings["int8"]
