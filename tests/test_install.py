"""`pip install .` alone (no extras, no lock) into a fresh venv with torch preinstalled serves `/predict`.

Slow (a venv, torch from the local disk, every dependency): runs only when STABLE_AUDIO_TEST_INSTALL=1.
    STABLE_AUDIO_TEST_INSTALL=1 .venv/bin/python -m pytest -q tests/test_install.py
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")

pytestmark = pytest.mark.skipif(
    os.environ.get("STABLE_AUDIO_TEST_INSTALL") != "1",
    reason="slow install check; set STABLE_AUDIO_TEST_INSTALL=1 to run it",
)


def _run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_plain_install_serves_predict(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and the repository, to install from a clean clone")
    src = tmp_path / "clone"
    _run("git", "clone", "-q", ROOT, src)  # the committed tree, as a fresh clone has it
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    _run(base, "-m", "venv", venv)
    pip = venv / "bin" / "pip"
    _run(pip, "install", "-q", TORCH_SPEC)
    _run(pip, "install", "-q", ".", cwd=src)
    # lean: none of the test tools came along
    lean = subprocess.run([venv / "bin" / "python", "-c", "import pytest"], capture_output=True)
    assert lean.returncode != 0, "pytest is installed by `pip install .`"

    cli = venv / "bin" / "stable-audio-service"
    _run(cli, "make-tiny", tmp_path / "tiny")
    port = _free_port()
    env = {**os.environ, "STABLE_AUDIO_WINDOW": "fit", "OTEL_TRACES_EXPORTER": "none"}
    server = subprocess.Popen(
        [cli, "serve", "--model", tmp_path / "tiny", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the service did not come up"
            time.sleep(0.5)
        body = {"prompt": "rain on a tin roof", "duration": 1.0, "num_inference_steps": 10, "seed": 1}
        answer = httpx.post(f"{url}/predict", json=body, headers={"Accept": "audio/wav"}, timeout=120)
        assert answer.status_code == 200, answer.text
        info = sf.info(io.BytesIO(answer.content))
        assert (info.format, info.samplerate, info.channels, info.frames) == ("WAV", 44100, 2, 44100)
        assert answer.headers["x-seed"] == "1"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
