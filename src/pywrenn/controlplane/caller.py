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
    """The authenticated side of a request: a team, through one of its keys, or through a
    person's browser session (`user_id`, `session_id` set; `key_id` is then the nil UUID,
    which no key has, so key-only checks such as the admin flag refuse it)."""

    team_id: uuid.UUID
    key_id: uuid.UUID
    key_name: str
    user_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    user_email: str = ""

    @property
    def team_api_id(self) -> str:
        return publicids.format_id(self.team_id, IdKind.TEAM)

    @property
    def is_person(self) -> bool:
        """Signed in with a browser session, not an API key."""
        return self.session_id is not None

    @property
    def user_api_id(self) -> str | None:
        return None if self.user_id is None else publicids.format_id(self.user_id, IdKind.USER)

    @property
    def key_api_id(self) -> str:
        return publicids.format_id(self.key_id, IdKind.API_KEY)
