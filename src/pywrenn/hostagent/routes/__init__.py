"""The host agent's HTTP routes, one module per area (docs/hostagent.md, API).

Owns: turning each request into one call on the manager, the guest service or the
template service, and each answer into its wire body (`hostagent.wire`; `_convert.py`
for the host agent's own records). Behaviour lives behind those calls; routes only
translate.
`create_app` (app.py) serves `ROUTERS`; `deps.py` holds what every route shares.
"""

from fastapi import APIRouter

from . import capsules, files, health, processes, templates

# Matched in this order, one route after another: the exec routes, the hot path, first
# (no two routes here share a path, so the order changes nothing else).
ROUTERS: tuple[APIRouter, ...] = (
    processes.router,
    files.router,
    capsules.router,
    templates.router,
    health.router,
)
