"""What the control plane does with its rows: teams, users, keys, capsules, events, hosts.

Owns: every query and state change; each public function takes an `AsyncSession` and
keyword-only arguments, raises `controlplane.errors`, and commits the work it did (a
function whose name ends in `_nocommit`, or `states.transition`, leaves that to its caller).
Knows nothing of: HTTP (routers and `deps.py` are the edge) or how host agents are reached.
"""
