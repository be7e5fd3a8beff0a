"""The control plane's database: rows, engine and sessions, migrations.

Owns: the schema (`models.py`, mirrored step by step in `migrations/versions/`), the
SQLite/PostgreSQL differences (`engine.py`, `types.py`) and `upgrade_to_head`.
Knows nothing of: HTTP, auth rules or the capsule lifecycle beyond its columns.
"""
