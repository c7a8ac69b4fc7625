"""Do the oracle tests still catch real mistakes? Re-introduce each one and see which tests fail.

Each mutation is a one-line change of the source that a plausible refactor could make. The package is copied to a
temporary folder, the change is applied there (the run stops if its pattern no longer matches: update it with the
code), and the oracle tests run against the copy (PYTHONPATH puts it before the installed package). A mutation that
no test catches is a hole in the proof. Run:

    ./run mutants              # every mutation; prints the table that README's testing section shows
    ./run mutants eps apg      # only these
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "stable_audio_service"
ORACLE_TESTS = [
    "tests/test_sa3_official.py",
    "tests/test_sa3_autoencoder.py",
    "tests/test_sa3_encnoise.py",
    "tests/test_lora.py",
    "tests/test_lora_controls.py",
]


@dataclass(frozen=True)
class Mutation:
    key: str
    mistake: str
    file: str  # relative to the package
    pattern: str  # a regular expression that must match at least once
    replacement: str


MUTATIONS = [
    Mutation(
        "eps",
        "RMSNorm eps 1e-6 instead of 1e-5 (the DiT's block norms)",
        "models/stable_audio_3/config.py",
        r'get\("eps", 1e-5\)',
        'get("eps", 1e-6)',
    ),
    Mutation(
        "padding-mask",
        "no padding mask (every latent frame counted as valid)",
        "models/stable_audio_3/sampling.py",
        r"torch\.arange\(win\.latent_length, device=device\)\.unsqueeze\(0\) < ",
        "torch.arange(win.latent_length, device=device).unsqueeze(0) >= -1 + 0 * ",
    ),
    Mutation(
        "padding-6s",
        "the 6 s duration padding dropped",
        "models/stable_audio_3/config.py",
        r"DEFAULT_DURATION_PADDING_S = 6\.0",
        "DEFAULT_DURATION_PADDING_S = 0.0",
    ),
    Mutation(
        "apg",
        "plain CFG where APG is asked for",
        "models/stable_audio_3/sampling.py",
        r"if apg_scale == 0\.0:",
        "if True:",
    ),
    Mutation(
        "decode-noise",
        "decode without its noise draws",
        "models/stable_audio_3/autoencoder.py",
        r"noise = _NoiseSource\(generator, noises\)",
        "noise = _NoiseSource(None, None)",
    ),
    Mutation(
        "midpoint",
        "SAME-S without the midpoint shift",
        "models/stable_audio_3/autoencoder.py",
        r'bool\(cfg\.get\("chunk_midpoint_shift", False\)\)',
        "False",
    ),
    Mutation(
        "lora-alpha",
        "a LoRA scale without alpha/rank",
        "adapters/plans.py",
        r"torch\.tensor\(info\.alpha / info\.rank, dtype=torch\.float32\)",
        "torch.tensor(1.0, dtype=torch.float32)",
    ),
    Mutation(
        "lora-interval",
        "a LoRA interval ignored (the adapter acts at every step)",
        "adapters/schedule.py",
        r"tuple\(lo <= sigma <= hi for lo, hi in self\.intervals\)",
        "tuple(True for lo, hi in self.intervals)",
    ),
]


def _failed_tests(output: str) -> list[str]:
    """Test function names (parameters folded) of the FAILED/ERROR lines of a pytest -rfE summary."""
    names = re.findall(r"^(?:FAILED|ERROR) \S+::(\w+)", output, flags=re.M)
    return sorted(set(names))


# The unchanged copy (an empty match at the start of one file): it must pass, or every mutation looks caught.
BASELINE = Mutation("baseline", "none", "__init__.py", r"\A", "")


def run_mutation(mutation: Mutation, extra: list[str]) -> tuple[int, list[str], str]:
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        copy = Path(tmp) / "stable_audio_service"
        shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
        target = copy / mutation.file
        text = target.read_text()
        changed, count = re.subn(mutation.pattern, mutation.replacement, text)
        if count == 0:
            raise SystemExit(
                f"mutation {mutation.key!r}: pattern not found in {mutation.file}; update tests/mutants.py"
            )
        target.write_text(changed)
        env = {**os.environ, "PYTHONPATH": tmp + os.pathsep + os.environ.get("PYTHONPATH", "")}
        where = subprocess.run(
            [sys.executable, "-c", "import stable_audio_service as p; print(p.__file__)"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not where.startswith(tmp):
            raise SystemExit(
                f"the mutated copy is not the one imported ({where}); is the package installed non-editable?"
            )
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rfE", *ORACLE_TESTS, *extra],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        summary = (result.stdout.strip().splitlines() or [""])[-1]
        return result.returncode, _failed_tests(result.stdout), summary


def main(argv: list[str]) -> int:
    keys = [a for a in argv if not a.startswith("-")]
    extra = [a for a in argv if a.startswith("-")]
    chosen = [m for m in MUTATIONS if not keys or m.key in keys]
    code, failed, summary = run_mutation(BASELINE, extra)
    print(f"baseline (no mutation): {summary}", flush=True)
    if code != 0:
        print("the oracle tests fail without any mutation: " + ", ".join(failed), flush=True)
        return 2
    rows, holes = [], 0
    for mutation in chosen:
        code, failed, summary = run_mutation(mutation, extra)
        caught = code != 0 and bool(failed)
        holes += not caught
        print(f"{mutation.key}: {'caught' if caught else 'NOT CAUGHT'} ({summary})", flush=True)
        rows.append((mutation, caught, failed, summary))
    print("\n| mistake | caught | failing oracle tests |")
    print("|---|---|---|")
    for mutation, caught, failed, summary in rows:
        count = summary.split(" in ")[0]
        names = ", ".join(f"`{n}`" for n in failed) or "none"
        print(f"| {mutation.mistake} | {'yes' if caught else '**no**'} ({count}) | {names} |")
    return 1 if holes else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
