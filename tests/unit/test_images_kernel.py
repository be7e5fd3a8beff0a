"""Unit tests for pywrenn.images.kernel: reading apt-cache output."""

from __future__ import annotations

import pytest

from pywrenn.images.errors import KernelError
from pywrenn.images.kernel import KernelPackage, parse_candidate, parse_depends

pytestmark = pytest.mark.unit

DEPENDS = """\
linux-image-cloud-amd64
  Depends: linux-image-6.1.0-57-cloud-amd64
"""

POLICY = """\
linux-image-6.1.0-57-cloud-amd64:
  Installed: (none)
  Candidate: 6.1.192-3
  Version table:
     6.1.192-3 500
"""


def test_parse_depends_and_candidate() -> None:
    assert parse_depends(DEPENDS) == "linux-image-6.1.0-57-cloud-amd64"
    assert parse_candidate(POLICY) == "6.1.192-3"


def test_parse_errors_are_kernel_errors() -> None:
    with pytest.raises(KernelError, match="linux-image"):
        parse_depends("linux-image-cloud-amd64\n  Depends: <virtual-thing>\n")
    with pytest.raises(KernelError, match="apt-get update"):
        parse_candidate("x:\n  Installed: (none)\n  Candidate: (none)\n")


def test_deb_filename_encodes_epoch() -> None:
    assert KernelPackage("k", "1:2.3-4").deb_filename == "k_1%3a2.3-4_amd64.deb"
