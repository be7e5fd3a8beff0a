"""`wrenn up` as a user runs it: one command, a node, the wrenn SDK, Ctrl-C, and again.

The node gets its own WRENN_DIR (the cached guest image is linked in, so no build) and
its own ports. A capsule left running and one left paused are both there after a
restart, with their files.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from wrenn import Capsule, WrennClient

from pywrenn.images import ImageManifest
from tests.e2e.test_wrenn_sdk import free_port, wait_healthy
from tests.integration.conftest import (
    guest_image,  # noqa: F401
    wrenn_dir_with_cached_image,
)
from tests.integration.test_hostagent import qemu_pids_under


class Node:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.api_port, self.agent_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "up.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        env = dict(
            os.environ,
            WRENN_DIR=str(self.root),
            WRENN_API_LISTEN=f"127.0.0.1:{self.api_port}",
            WRENN_AGENT_LISTEN=f"127.0.0.1:{self.agent_port}",
            WRENN_EGRESS_DEFAULT="false",  # no guest may reach out
            WRENN_HOST_MONITOR_INTERVAL_S="1",
            # The code runner's image is not linked here: building it would take minutes.
            WRENN_CODE_RUNNER_IMAGE="false",
        )
        env.pop("WRENN_DATABASE_URL", None)
        env.pop("WRENN_HOST_TOKEN", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from pywrenn.cli.app import main; main()", "up"],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        wait_healthy(self.url, self.proc, self.log, 240)

    def ctrl_c(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=300)

    @property
    def key(self) -> str:
        return (self.root / "admin-api-key").read_text().strip()


@pytest.fixture(scope="module")
def node(guest_image: ImageManifest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:  # noqa: F811
    root = wrenn_dir_with_cached_image(tmp_path_factory.mktemp("up"))
    node = Node(root)
    node.start()
    try:
        yield node
    finally:
        if node.proc is not None and node.proc.poll() is None:
            with WrennClient(api_key=node.key, base_url=f"{node.url}/api") as client:
                for capsule in client.capsules.list():
                    client.capsules.destroy(capsule.id)
            node.ctrl_c()
        leaked = qemu_pids_under(root)
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        assert leaked == set()


def test_first_start_creates_an_admin_key_printed_once(node: Node) -> None:
    key_file = node.root / "admin-api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert node.key.startswith("wrn_") and len(node.key) == 36
    assert node.log.read_text().count(node.key) == 1


def test_restart_keeps_running_and_paused_capsules(node: Node) -> None:
    base = f"{node.url}/api"
    running = Capsule(memory_mb=256, wait=True, api_key=node.key, base_url=base)
    paused = Capsule(memory_mb=256, wait=True, api_key=node.key, base_url=base)
    running.files.write("/root/a.txt", "left running")
    paused.files.write("/root/b.txt", "left paused")
    paused.pause()
    ids = {running.capsule_id, paused.capsule_id}

    assert node.ctrl_c() == 0
    assert qemu_pids_under(node.root) == set()  # everything was paused to disk
    node.start()
    assert "admin API key (shown once)" not in node.log.read_text().split("pywrenn is up")[-1]

    with WrennClient(api_key=node.key, base_url=base) as client:
        listed = {c.id: c.status.value for c in client.capsules.list()}
        assert ids <= set(listed)
        assert listed[paused.capsule_id] == "paused"
        assert listed[running.capsule_id] == "paused"  # paused by the shutdown, not lost
    # connect() resumes a paused capsule, as the SDK documents.
    running_again = Capsule.connect(running.capsule_id, api_key=node.key, base_url=base)
    paused_again = Capsule.connect(paused.capsule_id, api_key=node.key, base_url=base)
    assert running_again.files.read("/root/a.txt") == "left running"
    assert paused_again.files.read("/root/b.txt") == "left paused"
    for capsule in (running, paused, running_again, paused_again):
        capsule._client.close()


def test_cli_for_people(node: Node) -> None:
    from typer.testing import CliRunner

    from pywrenn.cli.app import app

    runner = CliRunner()
    env = {"WRENN_API_URL": node.url, "WRENN_API_KEY": node.key}

    def wrenn(*args: str) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == 0, (args, result.output)
        return result.output

    import json

    created = json.loads(wrenn("capsule", "create", "--memory-mb", "256", "--json"))
    capsule_id = created["id"]
    assert created["status"] == "running"
    assert capsule_id in [c["id"] for c in json.loads(wrenn("capsule", "list", "--json"))]
    assert wrenn("capsule", "exec", capsule_id, "echo from-cli") == "from-cli\n"
    failing = runner.invoke(app, ["capsule", "exec", capsule_id, "exit 3"], env=env)
    assert failing.exit_code == 3
    # As docker exec: the argv as typed, no shell re-splitting it, its exit code ours.
    argv = ["sh", "-c", 'printf "%s|" "$@"; exit 4', "sh", "a b", "$HOME"]
    direct = runner.invoke(app, ["capsule", "exec", capsule_id, "--", *argv], env=env)
    assert (direct.exit_code, direct.stdout) == (4, "a b|$HOME|")
    made = json.loads(wrenn("snapshot", "create", capsule_id, "--name", "cli-tpl", "--json"))
    assert made["name"] == "cli-tpl"
    assert "cli-tpl" in [t["name"] for t in json.loads(wrenn("snapshot", "list", "--json"))]
    wrenn("snapshot", "delete", "cli-tpl")
    assert json.loads(wrenn("capsule", "pause", capsule_id, "--json"))["status"] == "paused"
    assert json.loads(wrenn("capsule", "resume", capsule_id, "--json"))["status"] == "running"
    shell = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pywrenn.cli.app import main; main()",
            "capsule",
            "shell",
            capsule_id,
        ],
        input=b"echo SHELL-$((1+1))\nexit 7\n",
        capture_output=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert b"SHELL-2" in shell.stdout, shell.stderr
    assert shell.returncode == 7
    wrenn("capsule", "destroy", capsule_id)
    missing = runner.invoke(app, ["capsule", "get", capsule_id, "--json"], env=env)
    assert missing.exit_code == 0 or "not_found" in missing.output

    key = json.loads(wrenn("key", "create", "ci", "--json"))
    assert key["key"].startswith("wrn_")
    assert key["id"] in [k["id"] for k in json.loads(wrenn("key", "list", "--json"))]
    wrenn("key", "revoke", key["id"])
    refused = runner.invoke(
        app, ["capsule", "list"], env={"WRENN_API_URL": node.url, "WRENN_API_KEY": key["key"]}
    )
    assert refused.exit_code == 1
