"""A service whose generation worker dies exits non-zero (so systemd restarts it), after answering
the request that was waiting instead of leaving it hanging."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from fake_model import FakeModel
    from stable_audio_service import serving
    from stable_audio_service.api import create_app
    from stable_audio_service.config import Settings
    from stable_audio_service.models.base import Capabilities

    class Killer(BaseException):
        pass

    class Model(FakeModel):
        capabilities = Capabilities()

        def upload_samples(self, duration):
            return int(duration * self.sample_rate)

        def batch_key(self, params):
            if params.prompt == "die":
                raise Killer("boom")
            return super().batch_key(params)

    settings = Settings(model="fake", port={port}, shutdown_grace_s=1, log_level="warning")
    serving.run(create_app(settings, loader=lambda s: (Model(), None)), settings)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_worker_death_exits_70_and_answers_the_waiting_request(tmp_path):
    port = _free_port()
    script = tmp_path / "serve_fake.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).resolve().parent), port=port))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):  # up to a minute for the interpreter and the app to start
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        ok = httpx.post(f"{url}/predict", json={"prompt": "fine", "duration": 0.5}, timeout=30)
        assert ok.status_code == 200
        dead = httpx.post(f"{url}/predict", json={"prompt": "die", "duration": 0.5}, timeout=30)
        assert dead.status_code == 503 and dead.headers.get("retry-after")
        assert proc.wait(timeout=60) == 70
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    assert "exiting 70" in output, output[-2000:]
