"""The host agent: owns every capsule VM on one machine.

Owns: the sandbox manager, network slots and namespaces, pause/resume, startup
recovery and the HTTP API the control plane calls. Knows nothing of: the control
plane, its database, teams or API keys (it stores the ids it is given, opaque).
"""
