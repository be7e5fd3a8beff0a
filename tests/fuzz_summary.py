"""Prints what the fuzz tests exercised, after the run (load with `pytest_plugins`; never
imported directly, so pytest can rewrite it)."""

from __future__ import annotations

from typing import Any

from tests.fuzzing import TALLY


def _statuses(counts: dict[int, int]) -> str:
    return ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per run (operations, cases, statuses); with -v, one per operation too."""
    if not TALLY:
        return
    terminalreporter.section("fuzz")
    total = 0
    for name, tally in sorted(TALLY.items()):
        total += tally.cases
        terminalreporter.write_line(
            f"fuzz {name}: {len(tally.operations)} operations, {tally.cases} cases"
            f" ({_statuses(tally.statuses)})"
        )
        if terminalreporter.verbosity > 0:
            for operation, counts in sorted(tally.operations.items()):
                terminalreporter.write_line(f"    {operation}: {_statuses(counts)}")
    terminalreporter.write_line(f"fuzz total: {total} cases")
