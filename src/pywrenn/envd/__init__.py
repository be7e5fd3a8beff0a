"""The guest agent (envd): runs inside every capsule and speaks E2B's envd protocol.

Owns: the HTTP/1.1 server on port 49983, Connect-JSON framing, processes, PTYs, the
filesystem RPCs, file transfer and the /init handshake. Knows nothing of: the host agent,
the control plane, or any third-party library. Standard library only: this package is
copied into the guest image and runs on the guest's Debian python3.
"""
