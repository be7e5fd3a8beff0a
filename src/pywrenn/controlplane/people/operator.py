"""The operator's way into the dashboard: set a person's password on the node's database.

Owns: `set_password_on`, which `wrenn admin set-password` runs on the machine that holds
the database (migrating it first, as `wrenn up` does). The first admin `wrenn up` makes
(`admin@localhost`) has no password until then; whoever can run this owns the database,
so no old password is asked. Their sessions end.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from ..db.engine import make_engine, make_session_factory
from ..db.migrate import upgrade_to_head
from . import accounts


def set_password_on(database_url: str, email: str, password: str) -> None:
    upgrade_to_head(database_url)

    async def change() -> None:
        engine = make_engine(database_url)
        try:
            async with make_session_factory(engine)() as session:
                await accounts.set_password(
                    session, email=email, password=password, now=datetime.now(UTC)
                )
        finally:
            await engine.dispose()

    asyncio.run(change())
