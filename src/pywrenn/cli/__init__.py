"""The `wrenn` command line.

Owns: argument parsing and human-readable output, one module per command group; `app.py`
builds the typer app and its `main` (the console script). Knows nothing of: how capsules
are run; it calls into the layers below and the REST API client. Nothing below imports it.
"""
