"""API models, split by role (`…Create`, `…Public`); never the database rows.

Owns: the JSON shapes of the API: what the `wrenn` SDK drives (`wrenn.py`), recipe
builds (`builds.py`) and the operator's calls (`admin.py`). Routes declare no models of
their own. Knows nothing of: sessions or services.
"""
