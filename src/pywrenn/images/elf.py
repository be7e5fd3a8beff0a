"""Just enough ELF reading for the builder: one named section, and "is it static?".

Owns: parsing ELF64 little-endian headers from bytes. Knows nothing of: kernel modules or
busybox; callers say which section they want. The host has no `modinfo`/`readelf` we can
count on, so the few fields we need are read with `struct` here.
"""

from __future__ import annotations

import struct

__all__ = ["ElfError", "has_interpreter", "section"]

_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_PT_INTERP = 3


class ElfError(ValueError):
    """The bytes are not an ELF64 little-endian file, or a header points outside them."""


def _header(data: bytes) -> tuple[int, int, int, int, int, int, int]:
    if len(data) < 64 or data[:4] != _MAGIC:
        raise ElfError("not an ELF file")
    if data[4] != _ELFCLASS64 or data[5] != _ELFDATA2LSB:
        raise ElfError("not a 64-bit little-endian ELF file")
    # e_phoff, e_shoff at 0x20/0x28; e_phentsize..e_shstrndx at 0x36..0x3e.
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 0x36)
    return phoff, phentsize, phnum, shoff, shentsize, shnum, shstrndx


def _slice(data: bytes, offset: int, size: int) -> bytes:
    if offset < 0 or size < 0 or offset + size > len(data):
        raise ElfError(f"header points outside the file (offset {offset}, size {size})")
    return data[offset : offset + size]


def section(data: bytes, name: str) -> bytes | None:
    """The raw contents of the section called `name`, or None if there is none."""
    _, _, _, shoff, shentsize, shnum, shstrndx = _header(data)
    if shnum == 0:
        return None
    if shentsize < 64 or shstrndx >= shnum:
        raise ElfError("malformed section header table")

    def entry(index: int) -> tuple[int, int, int]:
        raw = _slice(data, shoff + index * shentsize, 64)
        sh_name, _type, _flags, _addr, sh_offset, sh_size = struct.unpack_from("<IIQQQQ", raw)
        return sh_name, sh_offset, sh_size

    _, str_off, str_size = entry(shstrndx)
    names = _slice(data, str_off, str_size)
    wanted = name.encode()
    for index in range(shnum):
        sh_name, offset, size = entry(index)
        end = names.find(b"\0", sh_name)
        if names[sh_name : end if end >= 0 else None] == wanted:
            return _slice(data, offset, size)
    return None


def has_interpreter(data: bytes) -> bool:
    """True if the program has a PT_INTERP header, i.e. needs a dynamic loader."""
    phoff, phentsize, phnum, *_ = _header(data)
    for index in range(phnum):
        (p_type,) = struct.unpack_from("<I", _slice(data, phoff + index * phentsize, 4))
        if p_type == _PT_INTERP:
            return True
    return False
