"""Every Python block of README.md, run as a newcomer runs it, against a node `wrenn up`
started (the fixture of test_wrenn_up.py: its own WRENN_DIR and ports).

The README speaks of the defaults (`/var/lib/wrenn`, port 8080); each block is run with
those swapped for this node's, in a fresh interpreter, as written otherwise. A block must
exit 0 and print something. Nothing else is rewritten: a block that is wrong fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_wrenn_up import Node, node  # noqa: F401
from tests.integration.conftest import guest_image  # noqa: F401

README = Path(__file__).resolve().parents[2] / "README.md"
ROOT = README.parent


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


BLOCKS = python_blocks(README.read_text())


def for_node(block: str, node: Node) -> str:  # noqa: F811
    """The block with the README's defaults replaced by this node's directory and port."""
    return (
        block.replace("/var/lib/wrenn", str(node.root))
        .replace("127.0.0.1:8080", f"127.0.0.1:{node.api_port}")
        .replace("localhost:8080", f"localhost:{node.api_port}")
    )


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 2, "the README shows the wrenn and the e2b SDK"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_a_readme_block_runs_as_written(node: Node, index: int) -> None:  # noqa: F811
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    for name in [k for k in env if k.startswith(("E2B_", "WRENN_"))]:
        del env[name]  # the block says everything it needs
    done = subprocess.run(
        [sys.executable, "-c", for_node(BLOCKS[index], node)],
        capture_output=True,
        text=True,
        env=env,
        cwd=node.root,
        timeout=300,
    )
    assert done.returncode == 0, f"README block {index}:\n{BLOCKS[index]}\n{done.stderr}"
    assert done.stdout.strip(), f"README block {index} printed nothing"
