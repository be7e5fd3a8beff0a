"""Unit tests for pywrenn.images.modules and .elf: modinfo parsing and load order."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

import pytest

from pywrenn.images.elf import ElfError, has_interpreter, section
from pywrenn.images.errors import ModuleError
from pywrenn.images.modules import (
    collect_modules,
    depends_of,
    load_order,
    module_name,
    parse_modinfo,
)

pytestmark = pytest.mark.unit


def fake_elf(sections: dict[str, bytes], interp: bool = False) -> bytes:
    """A minimal ELF64 LE file: header, optional PT_INTERP phdr, sections, section table."""
    names = b"\0"
    name_off: dict[str, int] = {}
    for name in [*sections, ".shstrtab"]:
        name_off[name] = len(names)
        names += name.encode() + b"\0"
    phnum = 1 if interp else 0
    body = bytearray(64 + 56 * phnum)
    placed: list[tuple[str, int, int]] = []
    for name, data in [*sections.items(), (".shstrtab", names)]:
        placed.append((name, len(body), len(data)))
        body += data
    shoff = len(body)
    shnum = len(placed) + 1
    body += bytes(64)  # section 0 is always null
    for name, offset, size in placed:
        body += struct.pack("<IIQQQQIIQQ", name_off[name], 1, 0, 0, offset, size, 0, 0, 1, 0)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack(
        "<HHIQQQIHHHHHH", 1, 62, 1, 0, 64, shoff, 0, 64, 56, phnum, 64, shnum, shnum - 1
    )
    body[:64] = header
    if interp:
        body[64:120] = struct.pack("<IIQQQQQQ", 3, 4, 0, 0, 0, 0, 0, 1)
    return bytes(body)


def modinfo(**fields: str) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in fields.items()) + b"\0\0\0"


def test_parse_modinfo_splits_nul_separated_pairs_and_repeats() -> None:
    raw = b"license=GPL\0\0\0alias=virtio:d00000002v*\0alias=other\0depends=virtio,virtio_ring\0"
    info = parse_modinfo(raw)
    assert info["license"] == ["GPL"]
    assert info["alias"] == ["virtio:d00000002v*", "other"]
    assert depends_of(raw) == ["virtio", "virtio_ring"]


def test_depends_empty_and_dashes_normalised() -> None:
    assert depends_of(modinfo(depends="")) == []
    assert depends_of(modinfo(name="x")) == []
    assert depends_of(modinfo(depends="rng-core,virtio")) == ["rng_core", "virtio"]


def test_module_name_handles_compression_and_dashes() -> None:
    assert module_name("virtio-rng.ko") == "virtio_rng"
    assert module_name("virtio_blk.ko.xz") == "virtio_blk"
    assert module_name("failover.ko.zst") == "failover"
    with pytest.raises(ValueError, match="not a kernel module"):
        module_name("README")


def test_load_order_puts_dependencies_first_deterministically() -> None:
    graph = {
        "virtio_ring": [],
        "virtio": ["virtio_ring"],
        "virtio_mmio": ["virtio", "virtio_ring"],
        "virtio_blk": ["virtio", "virtio_ring"],
        "failover": [],
        "net_failover": ["failover"],
        "virtio_net": ["net_failover", "virtio", "virtio_ring"],
    }
    order = load_order(["virtio_mmio", "virtio_blk", "virtio_net"], graph)
    assert order == [
        "virtio_ring",
        "virtio",
        "virtio_mmio",
        "virtio_blk",
        "failover",
        "net_failover",
        "virtio_net",
    ]
    for name, deps in graph.items():
        assert all(order.index(d) < order.index(name) for d in deps)


def test_load_order_rejects_cycles_and_unknown_modules() -> None:
    with pytest.raises(ModuleError, match="cycle a -> b -> a"):
        load_order(["a"], {"a": ["b"], "b": ["a"]})
    with pytest.raises(ModuleError, match="'ghost'"):
        load_order(["a"], {"a": ["ghost"]})


def test_elf_section_and_interpreter() -> None:
    blob = fake_elf({".text": b"\x90" * 8, ".modinfo": modinfo(depends="virtio")})
    assert section(blob, ".modinfo") == modinfo(depends="virtio")
    assert section(blob, ".missing") is None
    assert not has_interpreter(blob)
    assert has_interpreter(fake_elf({}, interp=True))
    with pytest.raises(ElfError, match="not an ELF"):
        section(b"#!/bin/sh\n" + bytes(64), ".modinfo")
    with pytest.raises(ElfError, match="outside the file"):
        section(blob[:-40], ".modinfo")


def test_collect_modules_reads_package_tree(tmp_path: Path) -> None:
    kernel = tmp_path / "kernel" / "drivers"
    kernel.mkdir(parents=True)
    (kernel / "virtio_ring.ko").write_bytes(fake_elf({".modinfo": modinfo(depends="")}))
    # Compressed, with a dash in the file name: both forms appear in Debian packages.
    (kernel / "virtio.ko.xz").write_bytes(
        lzma.compress(fake_elf({".modinfo": modinfo(depends="virtio_ring")}))
    )
    (kernel / "virtio-rng.ko").write_bytes(
        fake_elf({".modinfo": modinfo(depends="virtio,rng-core,virtio_ring")})
    )
    (tmp_path / "modules.builtin").write_text("kernel/drivers/char/hw_random/rng-core.ko\n")
    modules = collect_modules(tmp_path, ["virtio_rng"])
    assert [m.name for m in modules] == ["virtio_ring", "virtio", "virtio_rng"]
    assert modules[1].data.startswith(b"\x7fELF")  # stored uncompressed for busybox insmod


def test_collect_modules_names_missing_module(tmp_path: Path) -> None:
    (tmp_path / "a.ko").write_bytes(fake_elf({".modinfo": modinfo(depends="b")}))
    with pytest.raises(ModuleError, match="'b' not found"):
        collect_modules(tmp_path, ["a"])
    (tmp_path / "b.ko").write_bytes(fake_elf({".text": b""}))
    with pytest.raises(ModuleError, match=r"no \.modinfo"):
        collect_modules(tmp_path, ["a"])
