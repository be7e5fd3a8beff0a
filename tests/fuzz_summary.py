"""Prints what the fuzz tests exercised, after the run (load with `pytest_plugins`; never
imported directly, so pytest can rewrite it)."""

from __future__ import annotations

from typing import Any

from tests.fuzzing import TALLY


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY:
        return
    terminalreporter.section("fuzz")
    total = 0
    for name, tally in sorted(TALLY.items()):
        total += tally.cases
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(tally.statuses.items()))
        terminalreporter.write_line(
            f"fuzz {name}: {len(tally.operations)} operations, {tally.cases} cases ({statuses})"
        )
    terminalreporter.write_line(f"fuzz total: {total} cases")

