"""Placeholder: being written."""

from __future__ import annotations

from pywrenn.envd.routing import Router
from pywrenn.envd.state import AgentState


def register(router: Router, state: AgentState) -> None:
    del router, state
