"""Choosing the accelerator once per host, and remembering the answer.

Owns: the cache of "does hardware virtualisation really work here", keyed on what could
change the answer. Knows nothing of: how the probe boots a VM (the backend passes it in).

Why a probe and not just "does /dev/kvm exist": on our PVM hosts /dev/kvm exists but
cannot run an ordinary guest, which hangs in early boot (vm-lab TL;DR). Only a real boot
that reaches the initramfs proves KVM works.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["AccelChoice", "HostKey", "choose_accel"]

log = logging.getLogger(__name__)
CACHE_FILE = "vmm-accel.json"


@dataclass(frozen=True)
class HostKey:
    """What the probe's answer depends on; any change means probe again."""

    kernel_release: str
    vmm_version: str
    kvm_present: bool


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" | "tcg"
    reason: str
    cached: bool


async def choose_accel(
    cache_dir: Path,
    key: HostKey,
    probe_kvm: Callable[[], Awaitable[str | None]],
) -> AccelChoice:
    """Return the accelerator to use, probing KVM only if the cache has no answer for `key`.

    `probe_kvm` returns None when KVM booted the probe image, else why it did not.
    Without /dev/kvm there is nothing to probe. The answer is logged either way.
    """
    path = cache_dir / CACHE_FILE
    cached = _read_cache(path, key)
    if cached is not None:
        choice = AccelChoice(cached[0], cached[1], cached=True)
    elif not key.kvm_present:
        choice = AccelChoice("tcg", "no /dev/kvm", cached=False)
        _write_cache(path, key, choice)
    else:
        failure = await probe_kvm()
        if failure is None:
            choice = AccelChoice("kvm", "probe boot succeeded", cached=False)
        else:
            choice = AccelChoice("tcg", f"kvm probe failed: {failure}", cached=False)
        _write_cache(path, key, choice)
    log.info(
        "vmm accelerator: %s (%s%s)",
        choice.accel,
        choice.reason,
        ", cached" if choice.cached else "",
    )
    return choice


def _read_cache(path: Path, key: HostKey) -> tuple[str, str] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != asdict(key):
        return None
    accel, reason = data.get("accel"), data.get("reason", "")
    if accel not in {"kvm", "tcg"} or not isinstance(reason, str):
        return None
    return accel, reason


def _write_cache(path: Path, key: HostKey, choice: AccelChoice) -> None:
    # A failure to cache only costs a probe next time; never fail the boot for it.
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        payload = {"key": asdict(key), "accel": choice.accel, "reason": choice.reason}
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        tmp.replace(path)
