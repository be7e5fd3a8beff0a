"""The guest agent's few flags, parsed with argparse into a frozen dataclass."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_PORT = 49983


@dataclass(frozen=True)
class AgentConfig:
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    # Output kept per process for clients that attach late (bytes); older output is dropped.
    output_backlog_bytes: int = 8 * 1024 * 1024
    # How long a finished process stays reachable by Connect (seconds).
    finished_retention_s: float = 300.0
    # Largest upload accepted by POST /files; 0 means only the disk limits it.
    max_upload_bytes: int = 0
    # Largest unary RPC body (JSON); uploads go through /files instead.
    max_rpc_body_bytes: int = 16 * 1024 * 1024


def parse_args(argv: Sequence[str] | None = None) -> AgentConfig:
    parser = argparse.ArgumentParser(
        prog="python3 -m pywrenn.envd", description="pywrenn guest agent (envd protocol)"
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    parser.add_argument(
        "--max-upload-bytes", type=int, default=0, help="largest upload accepted (0: no limit)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port < 65536:
        parser.error(f"invalid: port {args.port} is outside 0..65535")
    return AgentConfig(host=args.host, port=args.port, max_upload_bytes=args.max_upload_bytes)
