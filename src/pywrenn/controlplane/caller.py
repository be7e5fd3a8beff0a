"""Who is calling: `Caller`, the authenticated side of an API request.

Its own module so the request context and the key service can both name it without
importing each other.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pywrenn.ids import IdKind

from . import publicids


@dataclass(frozen=True)
class Caller:
    """The authenticated side of a request: a team, through one of its keys."""

    team_id: uuid.UUID
    key_id: uuid.UUID
    key_name: str

    @property
    def team_api_id(self) -> str:
        return publicids.format_id(self.team_id, IdKind.TEAM)

    @property
    def key_api_id(self) -> str:
        return publicids.format_id(self.key_id, IdKind.API_KEY)
