"""API models, split by role (`…Create`, `…Public`); never the database rows.

Owns: the JSON shapes of the Wrenn API (`wrenn.py`). Knows nothing of: sessions or services.
"""
