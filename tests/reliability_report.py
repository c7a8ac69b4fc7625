"""Figures the reliability tests collect, and the command that writes them to RELIABILITY.md.

An ordinary test run only collects (and throws away) the figures; the file is rewritten only by
an explicit run of every test that records, so a routine `pytest` never dirties the tree:

    ./run reliability            # = python -m tests.reliability_report
    python -m tests.reliability_report -x     # extra arguments go to pytest
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

FIGURES: dict[str, list[tuple[str, str]]] = {}
ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "RELIABILITY.md"
ENV = "STABLE_AUDIO_WRITE_RELIABILITY"  # set by main(); the conftest hook writes only then
# the test files that record figures (what the report command runs)
SOURCES = ("tests/test_reliability.py", "tests/test_fuzz.py", "tests/test_audio.py", "tests/test_memory.py")


def record(section: str, what: str, value: object) -> None:
    FIGURES.setdefault(section, []).append((what, str(value)))


REQUIRED = ("Bad input", "Limits and security", "Faults", "Load", "Fuzzing", "Uploads", "Memory")


def requested() -> bool:
    """Whether this run was started to rewrite RELIABILITY.md."""
    return os.environ.get(ENV) == "1"


def write(path: Path = TARGET) -> bool:
    """Only a run that collected every section rewrites the file, so a partial run never truncates it."""
    missing = [r for r in REQUIRED if not any(section.startswith(r) for section in FIGURES)]
    if missing:
        print(f"RELIABILITY.md not written: no figures for {', '.join(missing)}", file=sys.stderr)
        return False
    lines = [
        "# Reliability figures",
        "",
        "Written by `./run reliability` (`python -m tests.reliability_report`), which runs",
        f"{', '.join(SOURCES)}; an ordinary test run does not touch this file.",
        "Tiny random-weight or fake models, loopback only.",
        f"Last run: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}, {platform.machine()}, "
        f"Python {platform.python_version()}.",
        "",
    ]
    for section, rows in FIGURES.items():
        lines += [f"## {section}", "", "| what | figure |", "|---|---|"]
        lines += [f"| {what} | {value} |" for what, value in rows]
        lines.append("")
    path.write_text("\n".join(lines))
    print(f"wrote {path}", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    """Run every recording test with writing switched on; the conftest hook writes at the end."""
    import pytest

    os.environ[ENV] = "1"
    os.chdir(ROOT)
    return int(pytest.main(["-q", *SOURCES, *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
