"""E2B's REST API, served beside Wrenn's, so code written for the `e2b` SDK runs here.

The SDK is pointed at the control plane with `E2B_API_URL` and a pywrenn API key as
`E2B_API_KEY`. Its paths sit at the root (`/sandboxes`, `/v2/sandboxes`, `/snapshots`,
`/templates/...`), apart from Wrenn's `/api/v1` and `/v1`. An E2B sandbox is a capsule:
one table, visible through both APIs. docs/e2b.md lists what is served and what is not.

Owns: E2B's wire format (paths, bodies, envelope, statuses) and what E2B has that Wrenn
does not (absolute deadlines, egress lists as E2B spells them, snapshot and template
names). Knows nothing of: how capsules are made, paused or placed (services/ do that).

    gate.py       key check and body cap before any body byte (E2B's error envelope);
                  it opens the request's `RequestContext`, as Wrenn's gate does
    deps.py       the deadline loop, for the routes that set a deadline
    errors.py     E2B's `{"code", "message"}` envelope for every failure of these routes
    models.py     the wire bodies, as the SDK's generated client names them
    names.py      E2B template ids and aliases → our template names
    network.py    `allowOut`/`denyOut` → the IPv4 ranges the host agent enforces
    views.py      a capsule row as E2B's Sandbox, ListedSandbox and SandboxDetail (the
                  proxy's settings as E2B's allowPublicTraffic, autoResume, traffic token)
    store.py      the rows' E2B columns: lifecycle, deadline, network, listing pages
    deadlines.py  the loop that pauses or stops capsules at their deadline
    sandboxes.py, lifecycle_routes.py, snapshots.py, unsupported.py   the routes;
                  router.py puts them together
"""
