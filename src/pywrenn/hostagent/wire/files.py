"""Bodies of the file routes (a file's own bytes travel raw, not in a body)."""

from __future__ import annotations

from pydantic import BaseModel


class EntryPublic(BaseModel):
    name: str
    path: str
    type: str  # file | dir | symlink
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_at: str  # RFC 3339, as the guest reports it
    symlink_target: str | None


class EntryList(BaseModel):
    entries: list[EntryPublic]


class FileWritten(BaseModel):
    path: str


class DirMade(BaseModel):
    created: bool  # False: it was there already
