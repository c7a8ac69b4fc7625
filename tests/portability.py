"""Host diversity on one machine: the oracle tests and each stage's deviation under several kernel settings.

A different CPU changes which SIMD kernels ATen, oneDNN and MKL pick, and with them the float round-off; on one
machine `ATEN_CPU_CAPABILITY` (default / avx2 / avx512) and the thread count change the kernels the same way. They
are the only other "hosts" a single machine has. Run:

    ./run test --portability              # the oracle tests under every setting, then the stage table
    python -m tests.portability stages    # this process's stage figures as JSON (what the table is made of)

The stage figures are each stage's max |ours - official| divided by the reference's max |value| (relative), fed the
official inputs of that stage, and the end-to-end max |diff| divided by the case's cross-host spread. They are what
the tolerances in tests/oracle.py are justified by.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ORACLE_TESTS = [
    "tests/test_sa3_official.py",
    "tests/test_sa3_autoencoder.py",
    "tests/test_sa3_encnoise.py",
    "tests/test_lora.py",
    "tests/test_lora_controls.py",
    "tests/test_sa3.py",
    "tests/test_sa3_fp16.py",
]


def settings() -> list[dict[str, str]]:
    """Kernel capability x threads; avx512 only where the CPU has it (ATen falls back silently otherwise)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    caps = ["default", "avx2"] + (["avx512"] if " avx512f " in flags and " avx512bw " in flags else [])
    return [{"ATEN_CPU_CAPABILITY": cap, "STABLE_AUDIO_THREADS": str(t)} for cap in caps for t in (1, 2)]


def measure() -> dict[str, dict[str, float]]:
    """Per fixture, the largest relative deviation of each stage over its cases, and the largest end-to-end
    deviation as a fraction of the cross-host spread."""
    import torch

    from stable_audio_service.models.stable_audio_3.accel import SA3Options
    from stable_audio_service.models.stable_audio_3.family import StableAudio3Model

    from . import oracle

    torch.set_num_threads(oracle.oracle_threads())
    out: dict[str, dict[str, float]] = {}
    for name in ("medium-tiny", "small-tiny"):
        fx = oracle.fixture(name)
        model = StableAudio3Model.from_checkpoint(
            fx.folder,
            name=name,
            device="cpu",
            dtype=torch.float32,
            options=SA3Options(keep_inpaint_source=False),  # what Stability's generate() returns
        )
        worst: dict[str, float] = {}

        def note(stage: str, value: float, worst: dict[str, float] = worst) -> None:
            worst[stage] = max(worst.get(stage, 0.0), value)

        for case in fx.cases:
            params = oracle.params_of(fx, case)
            state = model.start(params)
            text = fx.array(case, "text_embeds_valid")
            note("text", oracle.maxdiff(state.context[:, : text.shape[1]], text) / oracle.scale(text))
            for ours, key in ((state.global_cond, "global_cond"), (state.context[:, -1], "duration_token")):
                note("cond", oracle.maxdiff(ours, fx.array(case, key)) / oracle.scale(fx.array(case, key)))
            if fx.has(case, "denoised_per_step"):
                inputs = fx.step_inputs(case)
                denoised = fx.array(case, "denoised_per_step")
                for i in range(len(denoised)):
                    if i > 0:
                        state.x = inputs[i - 1].clone()
                    model.step([state])
                    note("step", oracle.maxdiff(state.denoised, denoised[i]) / oracle.scale(denoised[i]))
            decode = model.start(params)
            decode.x = torch.from_numpy(fx.array(case, "latents")).clone()
            decode.generator = oracle.seeded_generator(fx, case)
            decode.step = decode.total_steps
            audio = fx.array(case, "audio")[0]
            note("decode", oracle.maxdiff(model.finish(decode), audio) / oracle.scale(audio))
            full = model.start(params)
            while not full.finished:
                model.step([full])
            latents = full.x.clone()
            for ours, key in ((latents, "latents"), (model.finish(full), "audio")):
                ref = fx.array(case, key)
                ref = ref[0] if key == "audio" else ref
                spread = max(fx.spread(case, key), 1e-12)
                note(f"e2e_{key}_over_spread", oracle.maxdiff(ours, ref) / spread)
        out[name] = worst
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["stages"]:
        print(json.dumps(measure()))
        return 0
    root = Path(__file__).resolve().parents[1]
    rows, failed = [], 0
    for env in settings():
        label = f"{env['ATEN_CPU_CAPABILITY']}, {env['STABLE_AUDIO_THREADS']} thread(s)"
        full_env = {**os.environ, **env}
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ORACLE_TESTS, *argv],
            cwd=root,
            env=full_env,
            capture_output=True,
            text=True,
        )
        summary = (tests.stdout.strip().splitlines() or ["(no output)"])[-1]
        failed += tests.returncode != 0
        stages = subprocess.run(
            [sys.executable, "-m", "tests.portability", "stages"],
            cwd=root,
            env=full_env,
            capture_output=True,
            text=True,
        )
        figures = json.loads(stages.stdout.strip().splitlines()[-1]) if stages.returncode == 0 else {}
        rows.append((label, summary, figures))
        print(f"{label}: {summary}", flush=True)
        if tests.returncode != 0:
            print(tests.stdout[-4000:], flush=True)
    stages_cols = ["text", "cond", "step", "decode", "e2e_latents_over_spread", "e2e_audio_over_spread"]
    print("\n| setting | oracle tests | " + " | ".join(stages_cols) + " |")
    print("|---|---|" + "---|" * len(stages_cols))
    for label, summary, figures in rows:
        cells = ["/".join(f"{figures[f].get(c, 0.0):.2g}" for f in figures) if figures else "n/a" for c in stages_cols]
        print(f"| {label} | {summary} | " + " | ".join(cells) + " |")
    print(
        "(stage cells: medium-tiny/small-tiny; relative to the reference's scale; e2e as a fraction of the "
        "oracle's cross-host spread)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
