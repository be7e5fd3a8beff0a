"""`wrenn capsule exec` as `docker exec`: the CLI over real HTTP against the control plane
with a FakeHostAgent (the host records each exec body; scripts answer `sh -c` lines and
programs by name)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner, Result

from pywrenn.cli.app import app as cli
from tests.cp_routes import Harness, run
from tests.e2b_harness import served

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


def test_exec_takes_an_argv_or_one_command_line(sqlite_url: str, tmp_path: Path) -> None:
    runner = CliRunner()

    async def body(h: Harness) -> None:
        cid = await h.capsule()
        h.fake.scripts["echo hi; exit 3"] = (b"hi\n", b"oops\n", 3)
        h.fake.scripts["false"] = (b"", b"", 1)
        h.fake.scripts["cat"] = (b"\xff\xfe", b"", 0)  # not UTF-8: sent base64
        async with served(h) as url:
            env = {"WRENN_API_URL": url, "WRENN_API_KEY": h.key}

            async def wrenn(*args: str) -> Result:
                return await asyncio.to_thread(runner.invoke, cli, list(args), env=env)

            def sent() -> tuple[str, list[str]]:
                last = h.fake.exec_bodies[-1]
                return last["cmd"], last["args"]

            # Several words: the argv itself, as typed, with no shell to re-split it.
            done = await wrenn("capsule", "exec", cid, "--", "ls", "-la", "/a b", "$HOME")
            assert done.exit_code == 0, done.output
            assert sent() == ("ls", ["-la", "/a b", "$HOME"])
            assert done.stdout == "ran: ls\n"
            # Without `--` too: everything after the capsule id is the command.
            done = await wrenn("capsule", "exec", cid, "ls", "-la", "--json")
            assert sent() == ("ls", ["-la", "--json"])
            # Options go before the capsule id.
            done = await wrenn("capsule", "exec", "--json", cid, "false")
            assert done.exit_code == 1 and '"exit_code": 1' in done.stdout
            # One argument: a shell command line; its exit code is ours, its streams ours.
            done = await wrenn("capsule", "exec", cid, "echo hi; exit 3")
            assert sent() == ("/bin/sh", ["-c", "echo hi; exit 3"])
            assert (done.exit_code, done.stdout, done.stderr) == (3, "hi\n", "oops\n")
            done = await wrenn("capsule", "exec", cid, "--", "false")
            assert done.exit_code == 1
            done = await wrenn("capsule", "exec", cid, "cat", "-")
            assert done.stdout_bytes == b"\xff\xfe"
            # A failure of the API itself: exit 1 with the error.
            missing = await wrenn("capsule", "exec", "cl-0000000000000000", "true")
            assert missing.exit_code == 1 and "not_found" in missing.stderr
            for nothing in ([], ["--"]):  # usage: a command is required
                assert (await wrenn("capsule", "exec", cid, *nothing)).exit_code == 2

    run(sqlite_url, tmp_path, body)
