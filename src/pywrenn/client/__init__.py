"""Our Python client for the control plane's REST API, used by the CLI and tests.

Owns: HTTP calls to a pywrenn (or Wrenn) control plane with an API key. Knows nothing
of: the server's internals; it speaks the public wire format only.
"""

from pywrenn.client._client import WrennAPI
from pywrenn.client._errors import APIError

__all__ = ["APIError", "WrennAPI"]
