"""The command line: make-tiny, generate (a playable file, format from the extension), serve's fail-fast."""

from __future__ import annotations

import json

import soundfile as sf
from typer.testing import CliRunner

from stable_audio_service.cli import app

runner = CliRunner()


def test_make_tiny_writes_diffusers_layout(tmp_path):
    result = runner.invoke(app, ["make-tiny", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "noise" in result.output
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "StableAudioPipeline"


def test_generate_writes_playable_file(tiny_dir, tmp_path):
    out = tmp_path / "clips" / "rain.flac"
    args = ["generate", "rain on a tin roof", "-o", str(out), "--model", str(tiny_dir)]
    result = runner.invoke(app, [*args, "--duration", "1.5", "--steps", "10", "--seed", "7"])
    assert result.exit_code == 0, result.output
    assert "seed 7" in result.output and "10/10" in result.output  # the progress bar reached the end
    info = sf.info(str(out))
    assert info.format == "FLAC" and info.samplerate == 44100 and info.channels == 2
    assert info.frames == int(1.5 * 44100)
    # --format overrides the extension
    out2 = tmp_path / "clip.bin"
    override = [*args[:3], str(out2), *args[4:], "--steps", "10", "--duration", "1", "--format", "wav"]
    result = runner.invoke(app, override)
    assert result.exit_code == 0, result.output
    assert sf.info(str(out2)).format == "WAV"


def test_generate_rejects_bad_values(tiny_dir, tmp_path):
    result = runner.invoke(
        app, ["generate", "x", "-o", str(tmp_path / "a.wav"), "--model", str(tiny_dir), "--steps", "5"]
    )
    assert result.exit_code != 0
    assert "steps" in result.output or "num_inference_steps" in result.output
    assert not (tmp_path / "a.wav").exists()


def test_serve_fails_fast_without_weights(tmp_path):
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "missing"), "--port", "2999"])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert "Traceback" not in result.output
