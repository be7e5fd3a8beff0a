"""The dashboard in a real browser: Playwright drives Debian's `chromium` against the
control plane served over HTTP on loopback, with a fake host agent (no VM: the fake's
terminal echoes what is typed; `tests/e2e/test_dashboard_terminal.py` runs `echo hello`
in a real capsule).

One walk through the pages as a person would: sign up, sign in, make a key and see it
once, a capsule created elsewhere appearing live, pause and resume, the capsule's charts
and processes (kill one), the terminal (typed input reaches the capsule, resize is sent),
the file browser, a build followed live and one cancelled, usage, revoke the key, sign
out; then another team's person sees none of it, and a request without the CSRF token is
refused; the operator sees the hosts page, which others get 404 from.
Screenshots of each page go to `test-output/dashboard/` (docs/dashboard.md lists them).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import select

from pywrenn.controlplane.db.models import Membership, User
from pywrenn.controlplane.people import accounts
from tests.cp_routes import NOW, Harness, harness
from tests.fake_hostagent import FAKE_NET_RX_BPS
from tests.fuzzing import LoopThread, entered_in_thread, serve_asgi
from tests.unit.test_cp_dashboard import ran_for

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own download is not used
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "dashboard"
PASSWORD = "correct horse battery"
WAIT_MS = 15_000


@dataclass
class Served:
    thread: LoopThread
    h: Harness
    url: str


@pytest.fixture
def served(sqlite_url: str, tmp_path: Path) -> Iterator[Served]:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def both():  # type: ignore[no-untyped-def]
        async with harness(sqlite_url, tmp_path) as h, serve_asgi(h.app) as url:
            yield h, url

    with entered_in_thread(both) as (thread, (h, url)):
        yield Served(thread, h, url)


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_up(page: Page, url: str, email: str, team: str) -> None:
    page.goto(url + "/signup")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password (8 or more characters)").fill(PASSWORD)
    page.get_by_label("Team name").fill(team)
    shot(page, f"signup-{email.split('@')[0]}")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(url + "/capsules")


def seed_usage(served: Served, email: str) -> None:
    """Hours the person's team ran capsules on the last few days (the clock is fixed)."""

    async def seed() -> None:
        async with served.h.app.state.sessions() as session:
            team = await session.scalar(
                select(Membership.team_id).join(User).where(User.email == email)
            )
            assert team is not None
            for days_ago, hours in ((1, 5.5), (2, 3.0), (4, 12.0), (9, 1.25)):
                start = NOW - timedelta(days=days_ago, hours=-1)
                await ran_for(
                    session, team, start=start, hours=hours, capsule=f"cl-{days_ago:016x}"
                )

    served.thread.run(seed())


def on_loop(served: Served, act: Callable[[], object]) -> None:
    """Run `act` on the app's loop (the fake's gates are that loop's asyncio events)."""

    async def call() -> None:
        act()

    served.thread.run(call())


def test_a_person_walks_through_the_dashboard(served: Served, browser: Browser) -> None:
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    url = served.url
    ann = browser.new_context(viewport={"width": 1200, "height": 800})
    page = ann.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmations

    sign_up(page, url, "ann@example.com", "Ann's team")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(url + "/signin")
    shot(page, "signin")
    page.get_by_label("Email").fill("ann@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(url + "/capsules")

    # A key, shown once.
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    shown = page.locator("[data-new-key-value]")
    expect(shown).to_have_text(re.compile(r"wrn_[0-9a-f]{32}"), timeout=WAIT_MS)
    key = shown.inner_text()
    assert re.fullmatch(r"wrn_[0-9a-f]{32}", key)
    shot(page, "keys-new")

    # A capsule made with the key elsewhere appears in the open list, no reload.
    page.get_by_role("link", name="Capsules").click()
    page.wait_for_url(url + "/capsules")
    page.wait_for_timeout(1500)  # the event stream is open
    with httpx.Client(base_url=url, headers={"X-API-Key": key}) as api:
        made = api.post("/api/v1/capsules", json={})
        assert made.status_code == 201, made.text
        cid = made.json()["id"]
    row = page.locator(f"tr[data-capsule='{cid}']")
    expect(row).to_have_attribute("data-status", "running", timeout=WAIT_MS)
    # And one made from the page's own form.
    page.get_by_role("button", name="Create").click()
    expect(page.locator("tr[data-capsule]")).to_have_count(2, timeout=WAIT_MS)
    shot(page, "capsules")

    # Pause and resume, confirmed, followed live.
    row.get_by_role("button", name="Pause").click()
    expect(row).to_have_attribute("data-status", "paused", timeout=WAIT_MS)
    row.get_by_role("button", name="Resume").click()
    expect(row).to_have_attribute("data-status", "running", timeout=WAIT_MS)

    # The capsule's charts, one a resource, over the host's three rings.
    served.h.fake.capsules[cid].dirs.update({"/home", "/home/wrenn-user"})  # the guest's
    with httpx.Client(base_url=url, headers={"X-API-Key": key}) as api:
        run = {"cmd": "sleep", "args": ["600"], "background": True, "tag": "sleeper"}
        sleeper = api.post(f"/api/v1/capsules/{cid}/exec", json=run).json()["pid"]
    page.get_by_role("link", name=cid).click()
    page.wait_for_url(url + f"/capsules/{cid}")
    metrics = page.locator("#metrics")
    expect(metrics).to_have_attribute("data-drawn", "10m", timeout=WAIT_MS)
    expect(metrics.locator("svg.chart polyline")).to_have_count(5)
    # The network chart: received and sent, on a unit the peak (3.5 MiB/s) reads well in.
    network = metrics.locator("figure", has=page.locator("[data-chart=network]"))
    expect(network.locator("polyline.series.rx")).to_have_count(1)
    expect(network.locator("polyline.series.tx")).to_have_count(1)
    expect(network.locator("circle.dot.tx")).to_have_count(1)  # one point: a line can't show it
    expect(network.locator("circle.dot.rx")).to_have_count(0)
    expect(network.locator("figcaption")).to_contain_text("Network (MiB/s)")
    label = f"Network MiB/s, last 10m: latest received {FAKE_NET_RX_BPS / 2**20}, sent"
    expect(network.locator("svg.chart")).to_have_attribute("aria-label", re.compile(label))
    expect(metrics).not_to_contain_text("not sampled")
    metrics.get_by_role("button", name="2 h").click()
    expect(metrics).to_have_attribute("data-drawn", "2h", timeout=WAIT_MS)
    expect(metrics.get_by_role("button", name="2 h")).to_have_attribute("aria-pressed", "true")
    expect(metrics.get_by_role("button", name="10 min")).to_have_attribute("aria-pressed", "false")
    metrics.get_by_role("button", name="24 h").click()
    expect(metrics).to_have_attribute("data-drawn", "24h", timeout=WAIT_MS)

    # Its processes: the one started with the key is listed, killed (confirmed), gone.
    processes = page.locator("#processes")
    row_of = processes.locator(f"tr[data-pid='{sleeper}']")
    expect(row_of).to_contain_text("sleep 600", timeout=WAIT_MS)
    expect(row_of).to_contain_text("sleeper")
    shot(page, "capsule-resources")
    row_of.get_by_role("button", name="Kill").click()
    expect(row_of).to_have_count(0, timeout=WAIT_MS)
    assert served.h.fake.capsules[cid].processes[sleeper].exit_code == -9

    # The terminal: what is typed reaches the capsule's PTY, and its output is shown.
    terminal = page.locator("#terminal")
    expect(terminal.locator(".xterm-rows")).to_be_visible(timeout=WAIT_MS)
    page.wait_for_timeout(500)
    terminal.click()
    page.keyboard.type("echo hello")
    page.keyboard.press("Enter")
    expect(terminal.locator(".xterm-rows")).to_contain_text("echo hello", timeout=WAIT_MS)
    fake = served.h.fake.capsules[cid]
    ptys = [p for p in fake.processes.values() if p.pty]
    assert ptys and b"".join(ptys[-1].inputs).endswith(b"echo hello\r")
    page.set_viewport_size({"width": 700, "height": 500})
    page.wait_for_timeout(500)
    assert len(ptys[-1].sizes) >= 1  # the resize reached the PTY
    shot(page, "capsule-terminal")

    # The file browser: opens at the default user's home; up, into a folder, upload,
    # download and delete (confirmed); a guest's file name is shown as text.
    files = page.locator("#files")
    where = files.locator("[data-files-path]")
    expect(where).to_have_value("/home/wrenn-user", timeout=WAIT_MS)
    files.get_by_role("button", name="Up", exact=True).click()
    expect(where).to_have_value("/home", timeout=WAIT_MS)
    files.get_by_role("button", name="wrenn-user/").click()
    expect(where).to_have_value("/home/wrenn-user", timeout=WAIT_MS)
    name, content = "<img src=x>notes.txt", b"hello files\n"
    upload = {"name": name, "mimeType": "text/plain", "buffer": content}
    files.locator("input[type=file]").set_input_files(files=[upload])
    files.get_by_role("button", name="Upload", exact=True).click()
    entry = files.locator("tr[data-file-entry]", has_text=name)
    expect(entry).to_have_count(1, timeout=WAIT_MS)
    assert fake.files[f"/home/wrenn-user/{name}"] == content
    shot(page, "capsule-files")
    with page.expect_download() as got:
        entry.get_by_role("button", name="Download").click()
    assert Path(got.value.path()).read_bytes() == content
    entry.get_by_role("button", name="Delete").click()
    expect(entry).to_have_count(0, timeout=WAIT_MS)
    assert f"/home/wrenn-user/{name}" not in fake.files

    # A build from the page: its output followed live, then how it ended.
    served.h.fake.scripts["make"] = (b"compiled <b>ok</b>\n", b"warning: none\n", 0)
    page.get_by_role("link", name="Builds").click()
    page.get_by_label("Template name").fill("app")
    page.get_by_label("Recipe").fill("RUN make")
    page.get_by_role("button", name="Start build").click()
    page.wait_for_url(re.compile(re.escape(url) + r"/builds/bld-"))
    log = page.locator("#build-log")
    expect(log).to_contain_text("compiled <b>ok</b>", timeout=WAIT_MS)
    expect(page.locator("[data-build-status]")).to_have_text("succeeded", timeout=WAIT_MS)
    expect(log).to_have_attribute("data-complete", "true", timeout=WAIT_MS)
    shot(page, "build-log")
    # One held at its capsule's boot, cancelled from its page (confirmed).
    on_loop(served, served.h.fake.create_gate.clear)
    page.goto(url + "/builds")
    page.get_by_label("Template name").fill("slow")
    page.get_by_label("Recipe").fill("RUN make")
    page.get_by_role("button", name="Start build").click()
    page.wait_for_url(re.compile(re.escape(url) + r"/builds/bld-"))
    page.get_by_role("button", name="Cancel build").click()
    expect(page.locator("[data-build-status]")).to_have_text("cancelled", timeout=WAIT_MS)
    on_loop(served, served.h.fake.create_gate.set)
    page.goto(url + "/builds")
    expect(page.locator("tr[data-build]")).to_have_count(2)
    shot(page, "builds")

    # Usage: capsule-hours per day, one bar a day.
    seed_usage(served, "ann@example.com")
    page.get_by_role("link", name="Usage").click()
    chart = page.locator("svg[data-usage-chart]")
    expect(chart.locator("rect.bar")).to_have_count(30)
    day = (NOW - timedelta(days=4)).date().isoformat()
    expect(chart.locator(f"rect[data-day='{day}']")).to_have_attribute("data-value", "12.0")
    shot(page, "usage")

    pages = [
        ("templates", "/capsule-templates"),
        ("members", "/members"),
        ("audit", "/audit"),
        ("account", "/account"),
    ]
    for name, path in pages:
        page.goto(url + path)
        shot(page, name)
    expect(page.locator("body")).to_contain_text("ann@example.com")
    page.goto(url + "/audit")
    expect(page.locator("table")).to_contain_text("api_key.create")

    # Phone width: the list still fits and works.
    phone = ann.new_page()
    phone.set_viewport_size({"width": 390, "height": 800})
    phone.goto(url + "/capsules")
    expect(phone.locator(f"tr[data-capsule='{cid}']")).to_be_visible()
    shot(phone, "capsules-phone")
    phone.goto(url + f"/capsules/{cid}")
    expect(phone.locator("#metrics")).to_have_attribute("data-drawn", "10m", timeout=WAIT_MS)
    box = phone.locator("#metrics svg.chart").first.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390  # the charts fit the phone
    shot(phone, "capsule-phone")
    phone.close()

    # The dark theme follows the system's: the page's background turns dark.
    dark = ann.new_page()
    dark.emulate_media(color_scheme="dark")
    dark.goto(url + f"/capsules/{cid}")
    background = dark.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(13, 17, 23)", background
    shot(dark, "capsule-dark")
    dark.close()

    # Revoke the key: it stops working.
    page.goto(url + "/keys")
    page.get_by_role("button", name="Revoke").click()
    expect(page.locator("tr[data-key]")).to_have_count(0, timeout=WAIT_MS)
    with httpx.Client(base_url=url, headers={"X-API-Key": key}) as api:
        assert api.get("/api/v1/capsules").status_code == 401

    # Another team's person sees none of it.
    eve = browser.new_context()
    other = eve.new_page()
    sign_up(other, url, "eve@example.com", "Eve's team")
    expect(other.locator("tr[data-capsule]")).to_have_count(0)
    assert other.goto(url + f"/capsules/{cid}").status == 404  # type: ignore[union-attr]
    other.goto(url + "/keys")
    expect(other.locator("body")).not_to_contain_text("laptop")
    other.goto(url + "/members")
    expect(other.locator("body")).not_to_contain_text("ann@example.com")
    # A script that leaves out the CSRF token is refused, cookie or not.
    status = other.evaluate(
        """() => fetch('/api/v1/capsules', {method: 'POST', body: '{}',
             headers: {'Content-Type': 'application/json'}}).then(r => r.status)"""
    )
    assert status == 403
    eve.close()

    # Hosts are for the operator (`wrenn up`'s admin@localhost); anyone else gets 404.
    assert page.goto(url + "/hosts").status == 404  # type: ignore[union-attr]
    expect(page.get_by_role("link", name="Hosts")).to_have_count(0)

    async def operator_password() -> None:
        async with served.h.app.state.sessions() as session:
            await accounts.set_password(
                session, email="admin@localhost", password=PASSWORD, now=NOW
            )

    served.thread.run(operator_password())
    admin = browser.new_context(viewport={"width": 1200, "height": 800})
    op = admin.new_page()
    op.goto(url + "/signin")
    op.get_by_label("Email").fill("admin@localhost")
    op.get_by_label("Password").fill(PASSWORD)
    op.get_by_role("button", name="Sign in").click()
    op.wait_for_url(url + "/capsules")
    op.get_by_role("link", name="Hosts").click()
    hosts = op.locator("tr[data-host]")
    expect(hosts).to_have_count(1)
    expect(hosts.locator("td[data-running]")).to_have_text("2")  # Ann's two, every team's
    shot(op, "hosts")
    admin.close()

    # Sign out: the pages send Ann back to sign in.
    page.goto(url + "/capsules")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(url + "/signin")
    page.goto(url + "/capsules")
    page.wait_for_url(url + "/signin")
    ann.close()
