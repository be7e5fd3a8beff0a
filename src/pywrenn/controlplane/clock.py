"""The time the control plane stamps on rows: aware UTC, injectable.

Owns: `Clock` and `system_clock`. Services take `now` as an argument; the app holds one
clock and tests hand it a fixed or stepping one instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)
