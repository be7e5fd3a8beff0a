"""The dashboard against a real node (host agent + control plane subprocesses, a QEMU
capsule): a person signs up in Debian's `chromium` (driven by Playwright), creates a
capsule from the page, sees it come up live and its charts drawn, runs `echo hello` in
its terminal and sees `hello`, uploads a file through the file browser and downloads it
back, sees that traffic on the network chart, pauses and resumes it, and destroys it.
Run under the VM lock."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.test_wrenn_sdk import Node, node  # noqa: F401
from tests.integration.conftest import guest_image  # noqa: F401
from tests.unit.test_dashboard_browser import CHROMIUM, PASSWORD, shot

BOOT_MS = 240_000  # a boot or a pause under TCG on a busy machine
# The uploaded file: big enough that its transfer stands out of the background traffic
# on the slot's veth (the sampler's own /metrics calls, the terminal: well under 64 KiB/s).
UPLOAD_BYTES = 2 * 1024 * 1024
MOVED_BPS = 64 * 1024  # a sample holding at least half the transfer, over a 5 s step


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def _row_status(page: Page, cid: str, status: str) -> None:
    row = page.locator(f"tr[data-capsule='{cid}']")
    expect(row).to_have_attribute("data-status", status, timeout=BOOT_MS)


def test_echo_hello_in_a_real_capsules_terminal(node: Node, browser: Browser) -> None:  # noqa: F811
    url = node.base_url.removesuffix("/api")
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(url + "/signup")
    page.get_by_label("Email").fill("vm@example.com")
    page.get_by_label("Password (8 or more characters)").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(url + "/capsules")

    page.get_by_role("button", name="Create").click()
    row = page.locator("tr[data-capsule]")
    expect(row).to_have_count(1, timeout=60_000)
    cid = row.get_attribute("data-capsule")
    assert cid is not None
    _row_status(page, cid, "running")

    page.get_by_role("link", name=cid).click()
    # The real host's metrics reach the charts (its first samples may take a moment).
    expect(page.locator("#metrics")).to_have_attribute("data-drawn", "10m", timeout=60_000)
    terminal = page.locator("#terminal")
    expect(terminal.locator(".xterm-rows")).to_be_visible(timeout=60_000)
    page.wait_for_timeout(2000)  # the shell's prompt
    terminal.click()
    page.keyboard.type("echo hello")
    page.keyboard.press("Enter")
    lines = terminal.locator(".xterm-rows > div")
    expect(lines.filter(has_text=re.compile(r"^\s*hello\s*$"))).to_have_count(1, timeout=60_000)
    shot(page, "vm-capsule-terminal")

    # The file browser against the real guest: upload into the user's home, download back.
    files = page.locator("#files")
    expect(files.locator("[data-files-path]")).to_have_value("/home/wrenn-user")
    content = b"hello from the page\n" + bytes(range(256)) * (UPLOAD_BYTES // 256)
    upload = {"name": "page-upload.bin", "mimeType": "application/octet-stream", "buffer": content}
    files.locator("input[type=file]").set_input_files(files=[upload])
    files.get_by_role("button", name="Upload", exact=True).click()
    entry = files.locator("tr[data-file-entry='/home/wrenn-user/page-upload.bin']")
    expect(entry).to_have_count(1, timeout=60_000)
    with page.expect_download() as got:
        entry.get_by_role("button", name="Download").click()
    assert Path(got.value.path()).read_bytes() == content
    shot(page, "vm-capsule-files")

    # The transfer went over the capsule's veth: the host measured it, both ways, and the
    # chart (redrawn every 5 s) moved from bytes to a larger unit.
    network = page.locator("#metrics figure", has=page.locator("[data-chart=network]"))
    caption = network.locator("figcaption")
    expect(caption).to_contain_text(re.compile(r"Network \((KiB|MiB)/s\)"), timeout=60_000)
    expect(network.locator("polyline.series.rx")).to_have_count(1)
    expect(network.locator("polyline.series.tx")).to_have_count(1)
    # The upload and the download may fall in different samples (one every 5 s): wait
    # for the sample that holds each.
    received: list[float] = []
    sent: list[float] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = page.request.get(f"{url}/api/v1/capsules/{cid}/metrics?range=10m")
        assert answer.ok, answer.text()
        points = answer.json()["points"]
        received = [p["net_rx_bps"] for p in points if p["net_rx_bps"] is not None]
        sent = [p["net_tx_bps"] for p in points if p["net_tx_bps"] is not None]
        if max(received, default=0) >= MOVED_BPS and max(sent, default=0) >= MOVED_BPS:
            break
        page.wait_for_timeout(1000)
    assert max(received, default=0) >= MOVED_BPS, received  # the upload, into the guest
    assert max(sent, default=0) >= MOVED_BPS, sent  # the download, out of it
    assert min(received + sent) >= 0
    shot(page, "vm-capsule-network")

    page.goto(url + "/capsules")
    page.locator(f"tr[data-capsule='{cid}']").get_by_role("button", name="Pause").click()
    _row_status(page, cid, "paused")
    page.locator(f"tr[data-capsule='{cid}']").get_by_role("button", name="Resume").click()
    _row_status(page, cid, "running")
    page.locator(f"tr[data-capsule='{cid}']").get_by_role("button", name="Destroy").click()
    _row_status(page, cid, "stopped")
    context.close()
