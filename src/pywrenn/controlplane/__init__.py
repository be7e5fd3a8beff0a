"""The control plane: teams, users, API keys, hosts and the capsule records behind the API.

Owns: the database (models, migrations, sessions), API-key auth, the capsule status machine
as recorded intent, the host-monitor reconcile rules and the HTTP app skeleton.
Knows nothing of: how a VM runs (that is the host agent's, reached over its HTTP API) or
what a guest does.
"""
