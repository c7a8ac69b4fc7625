"""`stable-audio-service ...` with holds a test controls through files, for tests that drive a served process
(test_telemetry's SIGTERM test): what must still be running at a given moment is held there by the test, not
given "enough" steps to be slow on the machine at hand.

    python tests/held_serve.py CONTROL_DIR serve --model ... --port ...

Inside CONTROL_DIR (all inert until the test creates them):

- `hold/<prompt>`: while this file exists, every forward pass of a request with that prompt waits; the
  first pass that waits creates `held/<prompt>`, and `draining` is created once the engine's shutdown has
  begun while a pass waits here (so a test knows the drain saw the request still running).
- `expire-grace`: once this file exists, the engine's clock reads GRACE_JUMP_S later than the real one: a
  shutdown's grace period (shorter than that) is over, at the moment the test chose.

Everything else is the real service, started by the real command line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# Longer than any grace period a test sets, shorter than the engine's queue timeout (900 s by default), so that
# only a shutdown's deadline passes (and its wait for a held worker thread is then the shortest, a second).
GRACE_JUMP_S = 600.0
POLL_S = 0.01


def install(control: Path) -> None:
    from stable_audio_service import engine as engine_mod

    for sub in ("hold", "held"):
        (control / sub).mkdir(parents=True, exist_ok=True)
    expire = control / "expire-grace"
    real_time = engine_mod.time

    class Clock:
        """The engine module's `time`: real, except that `monotonic` jumps once `expire-grace` exists."""

        def __getattr__(self, name):
            return getattr(real_time, name)

        def monotonic(self) -> float:
            return real_time.monotonic() + (GRACE_JUMP_S if expire.exists() else 0.0)

    engine_mod.time = Clock()
    real_init = engine_mod.Engine.__init__

    def init(self, model, *args, **kwargs):
        real_init(self, model, *args, **kwargs)
        engine = self
        real_step = model.step

        def step(states):
            for prompt in {s.params.prompt for s in states}:
                hold = control / "hold" / prompt
                if hold.exists():
                    (control / "held" / prompt).touch()
                    while hold.exists():
                        if engine.draining:
                            (control / "draining").touch()
                        time.sleep(POLL_S)
            return real_step(states)

        model.step = step

    engine_mod.Engine.__init__ = init


if __name__ == "__main__":
    install(Path(sys.argv.pop(1)))
    from stable_audio_service.cli import main

    sys.exit(main())
