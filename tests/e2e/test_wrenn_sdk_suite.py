"""The `wrenn` SDK 0.3.0's own integration tests, unmodified, against a real node.

The test files are not ours and are not in this repository: they come from the SDK's
source distribution on PyPI (downloaded once with pip into the image cache's directory,
then reused), and the tests are skipped with the reason when it cannot be had. Each file
runs in its own pytest process against one node (host agent + control plane, the
code-runner image linked in), with WRENN_API_KEY / WRENN_BASE_URL / WRENN_PROXY_DOMAIN
set as an SDK user would; its failures are reported here by test name.

Deselected, because they need hosts on the public internet (no guest traffic leaves this
machine in tests: egress is off and DNS goes to a loopback stub) are listed in
`NEEDS_INTERNET` with the host each one needs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from pywrenn.images import ImageManifest
from pywrenn.images.coderunner import TEMPLATE as CODE_RUNNER_IMAGE
from tests.e2e.test_wrenn_sdk import Node, running_node
from tests.integration.conftest import (
    code_runner_image,  # noqa: F401
    guest_image,  # noqa: F401
    image_cache_root,
    wrenn_dir_with_cached_image,
)

SDK = "wrenn"
SDK_VERSION = "0.3.0"
REPO_ROOT = Path(__file__).resolve().parents[2]
FILE_BUDGET_S = 1800.0

# test id (relative to the SDK's tests/ directory) → the internet host it needs.
NEEDS_INTERNET: dict[str, str] = {
    "test_integration_advanced.py::TestLongRunningCommands::test_apt_get_install": (
        "apt-get update/install from Debian's mirrors"
    ),
    "test_integration_advanced.py::TestLongRunningCommands::test_apt_installed_binary_runs": (
        "apt-get install from Debian's mirrors"
    ),
    "test_integration_advanced.py::TestGitClone": "git clone of github.com/wrennhq/wrenn",
    "test_integration_advanced.py::TestGitErrors::test_clone_nonexistent_repo_raises": (
        "git clone from github.com (expects GitHub's 404)"
    ),
    "test_integration_advanced.py::TestGitErrors::test_clone_with_branch": (
        "git clone of github.com/wrennhq/wrenn"
    ),
    "test_code_runner_e2e.py::TestCodeRunnerMimeTypes::test_requests_status_code": (
        "HTTP GET to httpbingo.org"
    ),
}


def sdk_tests_dir() -> Path:
    """The SDK sdist's tests/ directory, fetched with pip (PyPI) on first use."""
    cache = image_cache_root() / "cache" / "sdk-sdist"
    unpacked = cache / f"{SDK}-{SDK_VERSION}"
    if (unpacked / "tests").is_dir():
        return unpacked / "tests"
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"{SDK}-{SDK_VERSION}.tar.gz"
    if not sdist.is_file():
        fetched = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--ignore-requires-python",  # the SDK declares Python >= 3.13; it runs on 3.11
                "--dest",
                str(cache),
                f"{SDK}=={SDK_VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if fetched.returncode != 0 or not sdist.is_file():
            pytest.skip(f"cannot fetch the {SDK} {SDK_VERSION} sdist: {fetched.stderr[-500:]}")
    with tarfile.open(sdist) as archive:
        archive.extractall(cache, filter="data")
    if not (unpacked / "tests").is_dir():
        pytest.skip(f"the {SDK} {SDK_VERSION} sdist has no tests/ directory")
    return unpacked / "tests"


@pytest.fixture(scope="module")
def sdk_tests() -> Path:
    return sdk_tests_dir()


@pytest.fixture(scope="module")
def node(
    sdk_tests: Path,
    code_runner_image: ImageManifest,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Node]:
    root = wrenn_dir_with_cached_image(tmp_path_factory.mktemp("sdk-node"), (CODE_RUNNER_IMAGE,))
    with running_node(root) as started:
        yield started


def run_sdk_file(node: Node, tests: Path, name: str, report: Path) -> tuple[dict[str, int], str]:
    """Run one SDK test file against `node`; its counts, and its failures' names and
    messages."""
    deselect = [
        arg
        for test_id, _ in NEEDS_INTERNET.items()
        if test_id.startswith(f"{name}::")
        for arg in ("--deselect", test_id)
    ]
    api = node.base_url.removesuffix("/api")
    env = dict(
        os.environ,
        WRENN_API_KEY=node.api_key,
        WRENN_BASE_URL=node.base_url,
        # *.localhost resolves to loopback; *.127.0.0.1 does not (docs/proxy.md).
        WRENN_PROXY_DOMAIN=api.removeprefix("http://").replace("127.0.0.1", "localhost"),
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.e2e.sdk_asyncio",
            "--rootdir",
            str(tests),
            "--junitxml",
            str(report),
            "-o",
            "junit_family=xunit2",
            *deselect,
            str(tests / name),
        ],
        cwd=tests,
        env=env,
        capture_output=True,
        text=True,
        timeout=FILE_BUDGET_S,
        check=False,
    )
    counts, failures = read_report(report)
    print(f"{name}: {counts}\n{result.stdout[-3000:]}")
    if not report.is_file():
        failures = f"no report (exit {result.returncode}):\n{result.stdout[-3000:]}"
    return counts, failures


def node_log_tail(node: Node, lines: int = 60) -> str:
    """The end of the node's host agent and control plane logs, for a failure's message:
    they say how each capsule was made (restored, booted) and what each request met."""
    parts = []
    for log in (node.root / "agent.log", node.root / "api.log"):
        try:
            text = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            text = [f"({exc})"]
        parts.append(f"--- last {lines} lines of {log.name} ---\n" + "\n".join(text))
    return "\n".join(parts)


def read_report(report: Path) -> tuple[dict[str, int], str]:
    if not report.is_file():
        return {}, ""
    suite = ET.parse(report).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    assert suite is not None
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    lines = []
    for case in suite.iter("testcase"):
        for outcome in ("failure", "error"):
            found = case.find(outcome)
            if found is not None:
                message = (found.get("message") or "")[:300]
                lines.append(f"{case.get('classname')}::{case.get('name')}: {message}")
    return counts, "\n".join(lines)


@pytest.mark.timeout(FILE_BUDGET_S + 120)
@pytest.mark.parametrize(
    "name", ["test_integration.py", "test_integration_advanced.py", "test_code_runner_e2e.py"]
)
def test_sdk_file_passes(node: Node, sdk_tests: Path, name: str, tmp_path: Path) -> None:
    counts, failures = run_sdk_file(node, sdk_tests, name, tmp_path / "report.xml")
    assert not failures, f"{name} {counts}:\n{failures}\n{node_log_tail(node)}"
    assert counts.get("tests", 0) > 0, f"{name}: no tests ran"
