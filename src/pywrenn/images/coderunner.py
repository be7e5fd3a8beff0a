"""The `code-runner` image: the minimal image plus a Jupyter server that starts at boot.

Owns: what the variant adds on top of the minimal tree (the Python packages, the `wrenn`
kernelspec, the boot service and its readiness check) and the wheel cache those packages
come from. Knows nothing of: debootstrap, kernels, manifests, or the build's order
(`build.py` calls `install` after the agent layer).

The `wrenn` SDK's code runner (`wrenn.code_runner.Capsule`) creates capsules of the
`code-runner-beta` template and speaks Jupyter's REST and WebSocket API on port 8888
through the port proxy, with kernel name `wrenn`. Here:
- the packages are downloaded on the host from PyPI (pinned top-level versions, binary
  wheels for the guest's CPython 3.11) into `cache/wheels/code-runner-{key}/`, then
  installed offline by the guest's own pip in a chroot, so nothing of the host's Python
  ends up in the image and a rebuild needs no network;
- `/etc/wrenn/services/jupyter` (run by wrenn-init at boot, restarted if it dies) starts
  the server as wrenn-user, opens one warm `wrenn` kernel and then marks itself ready,
  so a base snapshot taken after `READY_COMMAND` holds a kernel that has already
  imported numpy, pandas and matplotlib: every capsule restores it instead of paying
  those imports under TCG;
- matplotlib's font cache is made at build time, for the same reason.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from pywrenn.images.commands import run
from pywrenn.images.rootfs import AGENT_DIR, USERS, WRENN_USER

__all__ = [
    "GUEST_SOURCES",
    "PIP_PACKAGES",
    "READY_COMMAND",
    "TEMPLATE",
    "download_wheels",
    "install",
    "wheels_key",
]

TEMPLATE = "code-runner"
JUPYTER_PORT = 8888
KERNEL_NAME = "wrenn"
# Top-level pins; their dependencies are resolved once per key and kept in the wheel
# cache, so a rebuild with the same key installs the same set.
PIP_PACKAGES: tuple[str, ...] = (
    "jupyter-server==2.14.2",
    "ipykernel==6.29.5",
    "numpy==2.1.3",
    "pandas==2.2.3",
    "matplotlib==3.9.2",
    "seaborn==0.13.2",
    "requests==2.32.3",
)
# The guest is Debian bookworm: CPython 3.11, glibc 2.36, x86-64.
GUEST_PYTHON = "3.11"
GUEST_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")

_GUEST = Path(__file__).parent / "guest"
SERVICE_SOURCE = _GUEST / "code_runner_service.py"
WARM_SOURCE = _GUEST / "kernel_warm.py"
GUEST_SOURCES = (SERVICE_SOURCE, WARM_SOURCE)

SERVICE_PATH = "etc/wrenn/services/jupyter"
WARM_PATH = f"{AGENT_DIR}/kernel_warm.py"
KERNELSPEC_DIR = f"usr/local/share/jupyter/kernels/{KERNEL_NAME}"
READY_FILE = "/run/wrenn-code-runner/ready"
# What a bake runs in the guest (bash -l -c, as root) before it freezes the VM: it ends
# 0 once the service wrote its ready file (server up, warm kernel idle). It prints a dot
# a second: the host agent ends a guest call that sends no byte for two minutes.
READY_COMMAND = (
    f"for _ in $(seq 1200); do test -e {READY_FILE} && exit 0; printf .; sleep 1; done; "
    f"echo 'code runner not ready in 1200s' >&2; exit 1"
)
READY_TIMEOUT_S = 1260.0

_WHEELS_IN_TREE = "tmp/wrenn-wheels"


def wheels_key() -> str:
    """Names the wheel set: the pins and the guest's Python and platforms."""
    fields = {"packages": PIP_PACKAGES, "python": GUEST_PYTHON, "platforms": GUEST_PLATFORMS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def download_wheels(cache_dir: Path) -> Path:
    """The wheel set in `cache_dir/wheels/`, downloaded from PyPI unless already there."""
    target = cache_dir / "wheels" / f"{TEMPLATE}-{wheels_key()}"
    if target.is_dir():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    platforms = [arg for platform in GUEST_PLATFORMS for arg in ("--platform", platform)]
    run(
        "download wheels",
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary",
            ":all:",
            "--python-version",
            GUEST_PYTHON,
            "--implementation",
            "cp",
            *platforms,
            "--dest",
            str(partial),
            *PIP_PACKAGES,
        ],
    )
    partial.replace(target)
    for old in target.parent.glob(f"{TEMPLATE}-*"):
        if old != target and not old.name.endswith(".partial"):
            shutil.rmtree(old, ignore_errors=True)
    return target


def kernelspec() -> dict[str, object]:
    """The `wrenn` kernel: ipykernel on the guest's python3, warmed by `kernel_warm.py`."""
    return {
        "argv": [
            "/usr/bin/python3",
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            f"--IPKernelApp.exec_files=/{WARM_PATH}",
        ],
        "display_name": "Python 3 (wrenn)",
        "language": "python",
        # Inline figures by default, as in a notebook; set before the warm-up imports pyplot.
        "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline"},
        "metadata": {"debugger": False},
    }


def install(tree: Path, wheels: Path) -> None:
    """Install the packages, the kernelspec and the boot service into `tree`."""
    inside = tree / _WHEELS_IN_TREE
    shutil.rmtree(inside, ignore_errors=True)
    shutil.copytree(wheels, inside)
    try:
        run(
            "pip install",
            [
                "chroot",
                str(tree),
                "python3",
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--break-system-packages",
                "--root-user-action=ignore",
                "--find-links",
                f"/{_WHEELS_IN_TREE}",
                *PIP_PACKAGES,
            ],
        )
    finally:
        shutil.rmtree(inside, ignore_errors=True)

    spec_dir = tree / KERNELSPEC_DIR
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps(kernelspec(), indent=2) + "\n")
    warm = tree / WARM_PATH
    warm.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(WARM_SOURCE, warm)
    warm.chmod(0o644)
    service = tree / SERVICE_PATH
    service.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SERVICE_SOURCE, service)
    service.chmod(0o755)
    _make_font_cache(tree)


def _make_font_cache(tree: Path) -> None:
    # matplotlib scans the system's fonts at its first import and caches the answer in
    # ~/.cache/matplotlib; under TCG that scan takes tens of seconds. The kernel runs as
    # wrenn-user, so the cache is made as wrenn-user.
    uid = dict(USERS)[WRENN_USER]
    run(
        "matplotlib font cache",
        [
            "chroot",
            f"--userspec={uid}:{uid}",
            str(tree),
            "env",
            f"HOME=/home/{WRENN_USER}",
            "MPLBACKEND=Agg",
            "python3",
            "-c",
            "import matplotlib.pyplot",
        ],
    )
