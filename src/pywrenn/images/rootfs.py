"""The guest root filesystem: a minimal Debian, our users, the agent, and `wrenn-init`.

Owns: debootstrap's arguments, what is written into the tree (users, sudoers, hosts, the
agent's sources, the guest init), what is trimmed away, the cached "base" tree, and
`mkfs.ext4 -d`. Knows nothing of: kernels, manifests or where the image ends up.

Two unprivileged accounts, each with passwordless sudo: `wrenn-user`, whom Wrenn's API
runs commands as (the control plane makes it a capsule's default user), and `user`, whom
E2B's clients and our recipe builds run as. Root stays the guest agent's own fallback.

The tree is built in two layers so that a change to the agent does not redo debootstrap:
the *base* (Debian + user + trims, keyed by suite and package list) is kept as a tarball in
the cache, and the *agent layer* (pywrenn.envd and wrenn-init) is added on top of it.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import pywrenn
from pywrenn.images.commands import TAIL_LINES, run
from pywrenn.images.errors import BuildStepFailed

__all__ = [
    "GUEST_INIT",
    "GUEST_INIT_PATH",
    "PACKAGES",
    "SUITE",
    "USER",
    "USERS",
    "VARIANT",
    "WRENN_USER",
    "agent_files",
    "configure_base",
    "debootstrap",
    "install_agent",
    "make_ext4",
    "quicken_login_shell",
    "release_mounts",
    "restore_base",
    "save_base",
    "trim",
    "validate_size",
]

SUITE = "bookworm"
VARIANT = "minbase"
# What agent code expects of a default capsule: pip, git, curl and ps/free/top (procps)
# beside Python. Node.js is left out: Debian's nodejs and npm add ~150 MB to every rootfs.
PACKAGES: tuple[str, ...] = (
    "python3",
    "python3-pip",
    "iproute2",
    "ca-certificates",
    "sudo",
    "git",
    "curl",
    "procps",
)
USER = "user"
WRENN_USER = "wrenn-user"
# (name, uid): `user` keeps uid 1000, which E2B templates and earlier images gave it.
USERS: tuple[tuple[str, int], ...] = ((USER, 1000), (WRENN_USER, 1001))
HOSTNAME = "wrenn"
GUEST_INIT = Path(__file__).parent / "guest" / "wrenn_init.py"
GUEST_INIT_PATH = "usr/local/sbin/wrenn-init"
AGENT_DIR = "opt/wrenn"

# Paths (relative to the tree) emptied after debootstrap. C.UTF-8 lives in
# /usr/lib/locale/C.utf8, so /usr/share/locale can go entirely.
_TRIM_CONTENTS = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "var/log",
)

# Keeps the image trimmed if someone apt-installs inside a capsule later.
_DPKG_NODOC = """\
# wrenn: capsules carry no documentation; copyright files stay.
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
"""

_HOSTS = f"""\
127.0.0.1\tlocalhost
127.0.1.1\t{HOSTNAME}
::1\tlocalhost ip6-localhost ip6-loopback
"""

# 10.0.2.3 is where QEMU user networking answers DNS, and where the host agent's forwarder
# answers in a capsule's network namespace (hostagent/dns.py), beside the fixed 10.0.2.15/24.
_RESOLV = "nameserver 10.0.2.3\n"

_PROFILE_ASKS_ID = '"$(id -u)"'
_PROFILE_KNOWS_EUID = '"${EUID:-$(id -u)}"'
_ROOT_MESG = "\nmesg n 2> /dev/null || true\n"
_ROOT_MESG_ON_A_TERMINAL = "\nif [ -t 0 ]; then mesg n 2> /dev/null || true; fi\n"

_FSTAB = "# the root (/dev/vda) is mounted read-write by the initramfs\n"

_SIZE = re.compile(r"^[1-9][0-9]*[KMGT]?\Z")


def validate_size(size: str) -> str:
    """A mkfs.ext4 size such as `2G` or `1536M`; raise ValueError on anything else."""
    if not _SIZE.match(size):
        raise ValueError(f"invalid: rootfs size {size!r}; use a number with K, M, G or T")
    return size


def agent_files() -> list[tuple[str, Path]]:
    """(path in the guest, source file) for the agent: pywrenn/__init__.py + envd/*.py."""
    package = Path(pywrenn.__file__).parent
    files = [(f"{AGENT_DIR}/pywrenn/__init__.py", package / "__init__.py")]
    files.extend(
        (f"{AGENT_DIR}/pywrenn/envd/{path.name}", path)
        for path in sorted((package / "envd").glob("*.py"))
    )
    return files


def debootstrap(target: Path, mirror: str, cache_dir: Path) -> None:
    """Bootstrap Debian `SUITE` into `target`; .debs are kept in `cache_dir` for next time."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        run(
            "debootstrap",
            [
                "debootstrap",
                f"--variant={VARIANT}",
                f"--include={','.join(PACKAGES)}",
                f"--cache-dir={cache_dir.resolve()}",
                SUITE,
                str(target),
                mirror,
            ],
        )
    except BuildStepFailed as exc:
        # debootstrap's own log says which package failed; it is deleted with the staging
        # directory, so carry its tail in the error.
        log = target / "debootstrap" / "debootstrap.log"
        if log.is_file():
            lines = log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
            exc.tail = f"{exc.tail}\n--- debootstrap.log ---\n" + "\n".join(lines)
        raise


def configure_base(target: Path) -> None:
    """Everything that does not depend on our own code: names, DNS, the users."""
    etc = target / "etc"
    (etc / "hostname").write_text(f"{HOSTNAME}\n")
    (etc / "hosts").write_text(_HOSTS)
    resolv = etc / "resolv.conf"
    resolv.unlink(missing_ok=True)  # may be a copy of the host's, or a dangling symlink
    resolv.write_text(_RESOLV)
    (etc / "fstab").write_text(_FSTAB)
    (etc / "dpkg" / "dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
    (etc / "dpkg" / "dpkg.cfg.d" / "01-wrenn-nodoc").write_text(_DPKG_NODOC)
    for name, uid in USERS:
        _add_sudo_user(target, name, uid)
    quicken_login_shell(target)


def quicken_login_shell(target: Path) -> None:
    """Spare every `bash -l -c` (how both SDKs run a command) its two child processes.

    Debian's /etc/profile asks `$(id -u)` and root's ~/.profile runs `mesg n`: each a
    fork and exec, ~60 ms apiece in a TCG guest, on every command. Bash knows `$EUID`
    (other shells still ask `id`), and `mesg` only means something on a terminal. What
    either file does is unchanged."""
    profile = target / "etc" / "profile"
    if profile.is_file():
        text = profile.read_text()
        profile.write_text(text.replace(_PROFILE_ASKS_ID, _PROFILE_KNOWS_EUID))
    root_profile = target / "root" / ".profile"
    if root_profile.is_file():
        text = root_profile.read_text()
        root_profile.write_text(text.replace(_ROOT_MESG, _ROOT_MESG_ON_A_TERMINAL))


def _add_sudo_user(target: Path, name: str, uid: int) -> None:
    """A login account with a home, bash, and passwordless sudo (`/etc/sudoers.d/{name}`)."""
    run(
        f"add user {name}",
        [
            "chroot",
            str(target),
            "useradd",
            "--uid",
            str(uid),
            "--user-group",
            "--create-home",
            "--home-dir",
            f"/home/{name}",
            "--shell",
            "/bin/bash",
            name,
        ],
    )
    sudoers = target / "etc" / "sudoers.d" / name
    sudoers.write_text(f"{name} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)


def trim(target: Path) -> None:
    """Drop caches and documentation (about 80 MB) that a capsule never reads."""
    for rel in _TRIM_CONTENTS:
        _empty_dir(target / rel)
    doc = target / "usr" / "share" / "doc"
    if doc.is_dir():
        for entry in doc.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                for item in entry.iterdir():
                    if item.name != "copyright":
                        _remove(item)
            else:
                _remove(entry)
    for pattern in ("var/cache/apt/*.bin", "var/cache/debconf/*-old", "var/lib/dpkg/*-old"):
        for path in target.glob(pattern):
            _remove(path)


def _empty_dir(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for entry in path.iterdir():
            if entry.name != "partial":  # apt expects these two directories to exist
                _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def save_base(target: Path, tarball: Path) -> None:
    """Keep the configured base tree as a zstd tarball (owners, modes and xattrs intact)."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name(tarball.name + ".partial")
    run(
        "save base",
        [
            "tar",
            "--zstd",
            "--numeric-owner",
            "--xattrs",
            "-cpf",
            str(partial),
            "-C",
            str(target),
            ".",
        ],
    )
    partial.replace(tarball)


def restore_base(tarball: Path, target: Path) -> None:
    """Unpack a saved base tree into the empty directory `target`."""
    target.mkdir(parents=True, exist_ok=True)
    run(
        "restore base",
        ["tar", "--zstd", "--numeric-owner", "--xattrs", "-xpf", str(tarball), "-C", str(target)],
    )


def install_agent(target: Path, files: Iterable[tuple[str, Path]] | None = None) -> None:
    """Copy the agent's sources and the guest init into the tree, and byte-compile the agent.

    Compiling here saves every capsule the work at first import, which under TCG is slow.
    """
    for rel, source in agent_files() if files is None else files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        dest.chmod(0o644)
    init = target / GUEST_INIT_PATH
    init.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(GUEST_INIT, init)
    init.chmod(0o755)
    run(
        "compile agent",
        ["chroot", str(target), "python3", "-m", "compileall", "-q", f"/{AGENT_DIR}"],
    )


def make_ext4(target: Path, image: Path, size: str) -> None:
    """Write `target` into a new sparse ext4 file: no loop mount, no root-only mount calls."""
    run(
        "mkfs.ext4",
        ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(target), str(image), validate_size(size)],
    )


def release_mounts(tree: Path) -> None:
    """Unmount anything mounted inside `tree` (debootstrap mounts /proc and /sys in its
    target and leaves them if it fails); deleting the tree first would reach the host's."""
    prefix = str(tree.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [
            line.split()[1].replace("\\040", " ")
            for line in mounts
            if line.split()[1].startswith(prefix)
        ]
    for point in sorted(points, key=len, reverse=True):
        run("unmount", ["umount", "-l", point])
