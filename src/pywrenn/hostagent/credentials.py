"""The host's credentials with its control plane: `WRENN_DIR/host-credentials.json`.

Owns: the file's content (`Credentials`), reading it, and writing it atomically (a temp
file in the same dir, fsync, rename, fsync of the dir) with mode 0600: a reader sees the
old file or the new one, never a mix, and a crash right after `save` returns keeps the
new one. The refresh token in it is the only way back to the control plane short of a
new registration, so every rotation is saved before the new host token is used.

Knows nothing of: HTTP (cpclient.py), when to refresh (session.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pywrenn.layout import Layout
from pywrenn.vmm import fsync_dir


class CredentialsError(Exception):
    """The credentials file exists but cannot be used (unreadable, malformed)."""


@dataclass(frozen=True)
class Credentials:
    control_plane: str  # base URL, e.g. https://cp.example:8080
    host_id: str
    host_token: str
    host_token_expires_at: datetime
    refresh_token: str
    # Where the control plane reaches this agent (what heartbeats announce); kept so a
    # restart announces the address given at registration, not the listen default.
    address: str = ""

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["host_token_expires_at"] = self.host_token_expires_at.isoformat()
        return record

    @classmethod
    def from_json(cls, record: object) -> Credentials:
        if not isinstance(record, dict):
            raise CredentialsError("malformed: credentials are not a JSON object")
        try:
            expires = parse_time(record["host_token_expires_at"])
            fields = {
                name: record[name]
                for name in ("control_plane", "host_id", "host_token", "refresh_token")
            }
        except KeyError as exc:
            raise CredentialsError(f"malformed: credentials lack {exc.args[0]!r}") from None
        address = record.get("address", "")
        if not all(isinstance(v, str) and v for v in fields.values()) or not isinstance(
            address, str
        ):
            raise CredentialsError("malformed: credentials hold an empty or non-string field")
        return cls(host_token_expires_at=expires, address=address, **fields)


def parse_time(value: object) -> datetime:
    """An ISO 8601 instant with its offset (a naive one is refused: whose clock?)."""
    if not isinstance(value, str):
        raise CredentialsError(f"malformed: time {value!r} is not a string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CredentialsError(f"malformed: time {value!r} is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise CredentialsError(f"malformed: time {value!r} has no UTC offset")
    return parsed


def credentials_path(wrenn_dir: Path) -> Path:
    return Layout(wrenn_dir).host_credentials_file


def load(path: Path) -> Credentials | None:
    """The saved credentials, None if there is no file; CredentialsError if unusable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"unreadable: {path}: {exc}") from exc
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CredentialsError(f"malformed: {path}: {exc}") from exc
    return Credentials.from_json(record)


def save(path: Path, credentials: Credentials) -> None:
    """Replace the file atomically and durably (mode 0600 from its first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(credentials.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
