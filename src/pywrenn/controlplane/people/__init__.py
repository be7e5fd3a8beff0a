"""People: accounts with passwords, browser sessions, team membership, the audit log.

Owns: everything a person (not a key) does: sign up and in (`accounts.py`), sessions
(`sessions.py`, `cookies.py`, `auth.py`, `mysessions.py`), teams and members
(`members.py`), reading the audit log (`audit.py`), the operator's `set-password`
(`operator.py`). A browser session resolves to the same `Caller` an API key of the
person's current team produces (`auth.py`), so every service's team checks apply to it
unchanged. See docs/people.md.
Knows nothing of: capsules, hosts, templates: those services see only the `Caller`.
"""
