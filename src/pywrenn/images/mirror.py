"""Which Debian mirror the rootfs is bootstrapped from.

Owns: reading the host's apt sources (one-line `.list` and deb822 `.sources` formats),
choosing the main archive for a suite, the `WRENN_DEBIAN_MIRROR` override, and a reachability
check. Knows nothing of: debootstrap. No host name is written in this repository: the mirror
is whatever the machine's apt already uses, so builds never reach anywhere apt does not.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pywrenn.images.errors import MirrorError

__all__ = [
    "MIRROR_ENV",
    "AptSource",
    "check_mirror",
    "choose_mirror",
    "parse_deb822",
    "parse_one_line",
    "read_apt_sources",
    "resolve_mirror",
]

MIRROR_ENV = "WRENN_DEBIAN_MIRROR"


@dataclass(frozen=True)
class AptSource:
    """One `deb` source: a base URI and the suites it serves."""

    uri: str
    suites: tuple[str, ...]


def parse_one_line(text: str) -> list[AptSource]:
    """Parse sources.list syntax: `deb [opts] uri suite [component...]`."""
    found: list[AptSource] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue  # deb-src and anything else does not give binary packages
        rest = line[4:].strip()
        if rest.startswith("["):
            close = rest.find("]")
            if close < 0:
                continue
            rest = rest[close + 1 :].strip()
        fields = rest.split()
        if len(fields) >= 2:
            found.append(AptSource(fields[0], (fields[1],)))
    return found


def parse_deb822(text: str) -> list[AptSource]:
    """Parse deb822 `.sources` stanzas (`Types:`, `URIs:`, `Suites:`, `Enabled:`)."""
    found: list[AptSource] = []
    for stanza in _stanzas(text):
        if "deb" not in stanza.get("types", "").split():
            continue
        if stanza.get("enabled", "yes").strip().lower() == "no":
            continue
        suites = tuple(stanza.get("suites", "").split())
        found.extend(AptSource(uri, suites) for uri in stanza.get("uris", "").split())
    return found


def _stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
        elif line[0] in " \t" and key:
            current[key] += " " + line.strip()  # continuation line (e.g. Signed-By blocks)
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            current[key] = value.strip()
    return stanzas


def read_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every binary source apt would use, in apt's own file order."""
    sources: list[AptSource] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        sources.extend(parse_one_line(main.read_text(errors="replace")))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        # apt reads only these two suffixes; e.g. `*.list.disabled` files are ignored.
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                sources.extend(parse_one_line(path.read_text(errors="replace")))
            elif path.suffix == ".sources":
                sources.extend(parse_deb822(path.read_text(errors="replace")))
    return sources


def choose_mirror(sources: Iterable[AptSource], suite: str) -> str:
    """The first source that serves exactly `suite` (so not `-security` or `-updates`)."""
    for source in sources:
        if suite in source.suites and not source.uri.startswith("cdrom:"):
            return source.uri.rstrip("/")
    raise MirrorError(
        f"no Debian mirror for suite {suite!r} in the apt configuration; "
        f"set {MIRROR_ENV}=<http://your-mirror/debian>"
    )


def resolve_mirror(
    suite: str, env: Mapping[str, str] = os.environ, etc_apt: Path = Path("/etc/apt")
) -> str:
    """`WRENN_DEBIAN_MIRROR` if set, else the host apt's mirror for `suite`."""
    override = env.get(MIRROR_ENV, "").strip()
    if override:
        return override.rstrip("/")
    return choose_mirror(read_apt_sources(etc_apt), suite)


def check_mirror(mirror: str, suite: str, timeout: float = 15.0) -> None:
    """Fail early, with the URL, when the mirror does not serve `dists/<suite>/Release`."""
    if not mirror.startswith(("http://", "https://")):
        return  # file:/copy: mirrors are checked by debootstrap itself
    url = f"{mirror}/dists/{suite}/Release"
    request = urllib.request.Request(url, method="HEAD")  # noqa: S310 (http/https only)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status = int(response.status)
    except (urllib.error.URLError, OSError) as exc:
        raise MirrorError(f"unreachable mirror: {url} ({exc})") from exc
    if status >= 400:
        raise MirrorError(f"unreachable mirror: {url} answered HTTP {status}")
