"""Figures the reliability tests collect; conftest writes them to RELIABILITY.md at the end of a run."""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

FIGURES: dict[str, list[tuple[str, str]]] = {}


def record(section: str, what: str, value: object) -> None:
    FIGURES.setdefault(section, []).append((what, str(value)))


REQUIRED = ("Bad input", "Limits and security", "Faults", "Load", "Fuzzing")


def write(path: Path) -> None:
    """Only a run that collected every section rewrites the file, so a partial run never truncates it."""
    if not all(any(section.startswith(r) for section in FIGURES) for r in REQUIRED):
        return
    lines = [
        "# Reliability figures",
        "",
        "Written by the test suite (`./run test`; tests/test_reliability.py and tests/test_fuzz.py) on every run",
        "that includes them. Tiny random-weight model, loopback only.",
        f"Last run: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}, {platform.machine()}, "
        f"Python {platform.python_version()}.",
        "",
    ]
    for section, rows in FIGURES.items():
        lines += [f"## {section}", "", "| what | figure |", "|---|---|"]
        lines += [f"| {what} | {value} |" for what, value in rows]
        lines.append("")
    path.write_text("\n".join(lines))
