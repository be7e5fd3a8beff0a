"""The port proxy: `{port}-{capsule_id}.{domain}` (and E2B's `E2b-Sandbox-Id`/`-Port`
headers) → the capsule's host agent `/proxy/{id}/{port}/…` → the guest's port.

Owns: the requests whose Host (or headers) name a capsule port, served on the API's own
listener: `PortProxy` is the app's outermost ASGI layer; everything else goes on to the
API. See docs/proxy.md.

    routing.py     which requests are proxied, to which capsule and port
    policy.py      who may use a capsule's ports (public traffic, traffic token), auto-resume
    access.py      finding the capsule (cached), its team, waking it, stamping activity
    forward.py     the request to the host agent: headers, URL, streaming, its errors
    middleware.py  `PortProxy`, the ASGI layer that ties them together

Knows nothing of: the API's routes, or how the host agent reaches the guest.
"""

from .middleware import PortProxy

__all__ = ["PortProxy"]
