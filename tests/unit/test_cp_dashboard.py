"""The dashboard's pages (controlplane/dashboard/) over HTTP against the app on a fake host
agent: who may see which page, that a page shows only the caller's team, that stored
text is escaped, and the headers every page carries. The browser itself is driven in
tests/unit/test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.controlplane import publicids
from pywrenn.controlplane.dashboard import charts
from pywrenn.controlplane.dashboard.pages import PAGE_PATHS
from pywrenn.controlplane.db.models import Event, UserSession
from pywrenn.controlplane.e2b.gate import is_e2b_path
from pywrenn.controlplane.people import accounts
from pywrenn.ids import IdKind
from tests.cp_routes import NOW, Harness, run
from tests.fake_hostagent import FAKE_NET_RX_BPS
from tests.people_client import PASSWORD, browser

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]

PAGES = [
    "/capsules",
    "/capsule-templates",
    "/builds",
    "/usage",
    "/keys",
    "/members",
    "/audit",
    "/account",
]


def test_no_page_path_is_one_of_e2bs_api_paths() -> None:
    assert not [path for path in PAGE_PATHS if is_e2b_path(path)]


def test_pages_need_a_live_session(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann:
            for path in [
                "/",
                *PAGES,
                "/capsules/cl-0000000000000000",
                "/builds/bld-0000000000000000",
                "/hosts",
            ]:
                r = await ann.get(path, follow_redirects=False)
                assert (r.status_code, r.headers["location"]) == (303, "/signin"), path
            assert (await ann.get("/capsules/rows")).status_code == 401
            for path in ("/signin", "/signup"):
                r = await ann.get(path)
                assert r.status_code == 200 and "<form" in r.text
            # An API key is not a way into the pages.
            r = await h.client.get("/capsules", follow_redirects=False)
            assert r.status_code == 303

            await ann.signup("ann@example.com")
            r = await ann.get("/", follow_redirects=False)
            assert r.headers["location"] == "/capsules"
            for path in PAGES:
                r = await ann.get(path)
                assert r.status_code == 200, path
                assert "ann@example.com" in r.text
                assert r.headers["x-frame-options"] == "DENY"
                assert "default-src 'self'" in r.headers["content-security-policy"]
                assert "https://" not in r.text  # no CDN: every script is served here
            async with h.app.state.sessions() as session:
                await session.execute(update(UserSession).values(expires_at=NOW))
                await session.commit()
            r = await ann.get("/capsules", follow_redirects=False)
            assert r.headers["location"] == "/signin"

    run(sqlite_url, tmp_path, body)


def test_pages_show_only_the_sessions_team_and_escape_stored_text(
    db_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann, browser(h) as eve:
            await ann.signup("ann@example.com", team_name="<b>Ann</b>")
            hostile = {"<script>alert(1)</script>": "<img src=x onerror=alert(2)>"}
            r = await ann.post("/api/v1/capsules", json={"metadata": hostile})
            assert r.status_code == 201
            await h.settle()
            cid = r.json()["id"]
            await ann.post("/api/v1/api-keys", json={"name": "ann-secret-key"})

            page = (await ann.get(f"/capsules/{cid}")).text
            assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
            assert "<img src=x" not in page
            assert "<b>Ann</b>" not in (await ann.get("/members")).text
            listed = (await ann.get("/capsules")).text
            assert cid in listed and cid in (await ann.get("/capsules/rows")).text
            assert "ann-secret-key" in (await ann.get("/keys")).text

            await eve.signup("eve@example.com")
            assert cid not in (await eve.get("/capsules")).text
            assert cid not in (await eve.get("/capsules/rows")).text
            r = await eve.get(f"/capsules/{cid}")
            assert r.status_code == 404 and "alert(1)" not in r.text
            assert "ann-secret-key" not in (await eve.get("/keys")).text
            assert "ann@example.com" not in (await eve.get("/members")).text
            assert cid not in (await eve.get("/audit")).text

    run(db_url, tmp_path, body)


def test_signup_page_says_when_sign_up_is_off(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        settings = h.app.state.settings
        h.app.state.settings = settings.model_copy(update={"signup_enabled": False})
        async with browser(h) as b:
            r = await b.get("/signup")
            assert "turned off" in r.text and "data-form" not in r.text

    run(sqlite_url, tmp_path, body)


def test_keys_page_offers_key_management_to_owners_and_admins_only(
    sqlite_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann, browser(h) as bob:
            team = (await ann.signup("ann@example.com"))["team_id"]
            await bob.signup("bob@example.com")
            members = f"/api/v1/teams/{team}/members"
            assert (await ann.post(members, json={"email": "bob@example.com"})).status_code == 201
            assert (await bob.post("/api/v1/auth/switch-team", json={"team_id": team})).is_success
            await ann.post("/api/v1/api-keys", json={"name": "team-key"})

            owner = (await ann.get("/keys")).text
            assert 'data-form="key"' in owner and "Revoke</button>" in owner
            member = (await bob.get("/keys")).text
            assert "team-key" in member
            assert 'data-form="key"' not in member and "Revoke</button>" not in member
            assert "owners and admins" in member

    run(sqlite_url, tmp_path, body)


def test_capsule_page_has_a_file_browser_over_the_sdks_file_routes(
    sqlite_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann, browser(h) as eve:
            await ann.signup("ann@example.com")
            r = await ann.post("/api/v1/capsules", json={})
            assert r.status_code == 201
            await h.settle()
            cid = r.json()["id"]

            page = (await ann.get(f"/capsules/{cid}")).text
            assert f'id="files" class="card" data-capsule-id="{cid}"' in page
            assert page.count('id="files"') == 1
            assert 'data-start="/home/wrenn-user"' in page  # Wrenn's default user's home

            # What the page's script does: the SDK's routes, by cookie, with the CSRF header.
            files = f"/api/v1/capsules/{cid}/files"
            name = '/tmp/<img src=x>a&b".txt'  # guest text the script sets only as textContent
            upload = {"path": (None, name), "file": ("x", b"hello\n")}
            r = await ann.post(f"{files}/write", files=upload)
            assert r.status_code == 200 and r.json() == {"path": name}, r.text
            listed = (await ann.post(f"{files}/list", json={"path": "/tmp", "depth": 1})).json()
            assert [e["path"] for e in listed["entries"]] == [name]
            r = await ann.post(f"{files}/read", json={"path": name})
            assert r.content == b"hello\n"
            ann.csrf = False
            r = await ann.post(f"{files}/remove", json={"path": name})
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
            ann.csrf = True
            assert (await ann.post(f"{files}/remove", json={"path": name})).status_code == 204
            listed = (await ann.post(f"{files}/list", json={"path": "/tmp"})).json()
            assert listed["entries"] == []

            # Another team's person reaches none of it.
            await eve.signup("eve@example.com")
            r = await eve.post(f"{files}/list", json={"path": "/tmp"})
            assert r.status_code == 404

    run(sqlite_url, tmp_path, body)


def test_templates_page_lists_the_teams_and_deletes_through_the_api(
    db_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann, browser(h) as eve:
            await ann.signup("ann@example.com")
            r = await ann.post("/api/v1/capsules", json={})
            await h.settle()
            cid = r.json()["id"]
            r = await ann.post("/api/v1/snapshots", json={"sandbox_id": cid, "name": "web-1"})
            assert r.status_code == 201, r.text
            r = await ann.post("/api/v1/capsules", json={"template": "web-1"})
            assert r.status_code == 201, r.text
            await h.settle()
            child = r.json()["id"]

            page = (await ann.get("/capsule-templates")).text
            assert 'data-template="web-1"' in page and 'data-template="minimal-ubuntu"' in page
            # Only the team's own have a delete button: the platform's are protected.
            assert page.count('data-action="DELETE"') == 1
            assert 'data-url="/api/v1/snapshots/web-1"' in page
            await eve.signup("eve@example.com")
            assert "web-1" not in (await eve.get("/capsule-templates")).text

            # What the button does: in use, the API refuses with a message the page shows.
            r = await ann.delete("/api/v1/snapshots/web-1")
            assert r.status_code == 409 and r.json()["error"]["message"]
            assert (await ann.delete(f"/api/v1/capsules/{child}")).status_code == 204
            await h.settle()
            assert (await eve.delete("/api/v1/snapshots/web-1")).status_code == 404
            assert (await ann.delete("/api/v1/snapshots/web-1")).status_code == 204
            assert "web-1" not in (await ann.get("/capsule-templates")).text

    run(db_url, tmp_path, body)


def test_capsule_page_charts_and_processes_go_through_the_sdks_routes(
    sqlite_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann, browser(h) as eve:
            await ann.signup("ann@example.com")
            r = await ann.post("/api/v1/capsules", json={})
            await h.settle()
            cid = r.json()["id"]
            page = (await ann.get(f"/capsules/{cid}")).text
            assert f'id="metrics" class="card" data-capsule-id="{cid}"' in page
            assert f'id="processes" class="card" data-capsule-id="{cid}"' in page
            ranges = ("10m", "2h", "24h")
            for r_ in ranges:
                assert f'data-metrics-range="{r_}"' in page
            for chart in ("cpu", "memory", "disk", "network"):
                assert f'data-chart="{chart}"' in page
            assert "not sampled" not in page
            # What the charts fetch: each range, by cookie; the host keeps a ring for each,
            # and its points' network rates (null where unmeasured) reach the page.
            for r_ in ranges:
                got = await ann.get(f"/api/v1/capsules/{cid}/metrics", params={"range": r_})
                assert got.status_code == 200 and got.json()["range"] == r_, got.text
                newest = got.json()["points"][-1]
                assert (newest["net_rx_bps"], newest["net_tx_bps"]) == (FAKE_NET_RX_BPS, 96.0)
            assert (await ann.get(f"/api/v1/capsules/{cid}/metrics?range=3d")).status_code == 400

            # What the processes table does: list, then kill with the CSRF header.
            run = {"cmd": "sleep", "args": ["600"], "background": True}
            started = await ann.post(f"/api/v1/capsules/{cid}/exec", json=run)
            assert started.status_code == 202, started.text
            pid = started.json()["pid"]
            listed = (await ann.get(f"/api/v1/capsules/{cid}/processes")).json()
            assert [p["pid"] for p in listed["processes"]] == [pid]

            # Another team's person sees and kills nothing of it; neither does its key.
            await eve.signup("eve@example.com")
            other = {"X-API-Key": await h.other_team_key()}
            for who, headers in ((eve, {}), (eve, other)):
                r = await who.get(f"/api/v1/capsules/{cid}/metrics", headers=headers)
                assert r.status_code == 404, r.text
                r = await who.get(f"/api/v1/capsules/{cid}/processes", headers=headers)
                assert r.status_code == 404, r.text
                r = await who.delete(f"/api/v1/capsules/{cid}/processes/{pid}", headers=headers)
                assert r.status_code == 404, r.text
            assert "data-capsule-id" not in (await eve.get(f"/capsules/{cid}")).text

            ann.csrf = False
            r = await ann.delete(f"/api/v1/capsules/{cid}/processes/{pid}")
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
            ann.csrf = True
            assert (await ann.get(f"/api/v1/capsules/{cid}/processes")).json()["processes"]
            assert (await ann.delete(f"/api/v1/capsules/{cid}/processes/{pid}")).status_code == 204
            listed = (await ann.get(f"/api/v1/capsules/{cid}/processes")).json()
            assert listed["processes"] == []

            # Paused: the page offers neither, and says why.
            assert (await ann.post(f"/api/v1/capsules/{cid}/pause")).status_code == 200
            await h.settle()
            page = (await ann.get(f"/capsules/{cid}")).text
            assert 'id="metrics"' not in page and 'id="processes"' not in page

    run(sqlite_url, tmp_path, body)


def test_builds_pages_follow_a_build_and_cancel_through_the_api(
    sqlite_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann, browser(h) as eve:
            await ann.signup("ann@example.com")
            h.fake.scripts["make"] = (b"<b>compiled</b>\n", b"", 0)
            r = await ann.post("/api/v1/builds", json={"name": "app", "recipe": "RUN make"})
            assert r.status_code == 202, r.text
            done_id = r.json()["id"]
            await h.settle()
            while (await ann.get(f"/api/v1/builds/{done_id}")).json()["status"] == "running":
                await asyncio.sleep(0.02)

            listed = (await ann.get("/builds")).text
            assert f'data-build="{done_id}" data-status="succeeded"' in listed
            assert 'data-form="build" data-url="/api/v1/builds"' in listed
            page = (await ann.get(f"/builds/{done_id}")).text
            assert f'id="build-log" class="log" data-build-id="{done_id}"' in page
            assert 'data-active="false"' in page and "Cancel build" not in page
            logs = (await ann.get(f"/api/v1/builds/{done_id}/logs", params={"after": 0})).json()
            assert "<b>compiled</b>" in "".join(line["text"] for line in logs["lines"])
            assert logs["done"] is True

            # A build held at its capsule's boot is running: the page offers to cancel it.
            h.fake.create_gate.clear()
            r = await ann.post("/api/v1/builds", json={"name": "slow", "recipe": "RUN make"})
            held = r.json()["id"]
            await h.fake.create_arrived.wait()
            page = (await ann.get(f"/builds/{held}")).text
            assert 'data-active="true"' in page
            assert f'data-url="/api/v1/builds/{held}/cancel"' in page

            await eve.signup("eve@example.com")
            assert held not in (await eve.get("/builds")).text
            assert (await eve.get(f"/builds/{held}")).status_code == 404
            assert (await eve.get(f"/api/v1/builds/{held}/logs")).status_code == 404
            assert (await eve.post(f"/api/v1/builds/{held}/cancel")).status_code == 404
            ann.csrf = False
            r = await ann.post(f"/api/v1/builds/{held}/cancel")
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
            ann.csrf = True
            r = await ann.post(f"/api/v1/builds/{held}/cancel")
            assert r.status_code == 202, r.text
            h.fake.create_gate.set()
            await h.settle()
            assert (await ann.get(f"/api/v1/builds/{held}")).json()["status"] == "cancelled"
            assert "Cancel build" not in (await ann.get(f"/builds/{held}")).text

    run(sqlite_url, tmp_path, body)


def test_usage_page_charts_the_teams_capsule_hours_per_day(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann, browser(h) as eve:
            team = publicids.parse((await ann.signup("ann@example.com"))["team_id"], IdKind.TEAM)
            await eve.signup("eve@example.com")
            # Two days ago, a capsule ran for three hours (the events usage is made from).
            start = NOW - timedelta(days=2)
            async with h.app.state.sessions() as session:
                await ran_for(session, team, start=start, hours=3)
            day = start.date().isoformat()
            page = (await ann.get("/usage")).text
            assert f'<tr data-usage-day="{day}"><td>{day}</td><td>3.0</td>' in page
            assert f'data-day="{day}" data-value="3.0"' in page
            assert page.count("<rect") == 30
            other = (await eve.get("/usage")).text
            assert f'data-day="{day}" data-value="0.0"' in other

    run(sqlite_url, tmp_path, body)


async def ran_for(
    session: AsyncSession, team_id: uuid.UUID, *, start: datetime, hours: float, capsule: str = ""
) -> None:
    """The state changes of a capsule of the team that ran `hours` from `start`: what
    usage is made from (services/usage.py)."""
    capsule = capsule or "cl-00000000000000aa"
    moves = (("starting", "running", start), ("running", "paused", start + timedelta(hours=hours)))
    for was, moved, at in moves:
        session.add(
            Event(
                team_id=team_id,
                event="capsule.state.changed",
                resource_type="capsule",
                resource_id=capsule,
                actor_type="system",
                metadata_={"from": was, "to": moved},
                created_at=at,
            )
        )
    await session.commit()


def test_bar_chart_scales_to_a_round_top() -> None:
    assert [charts.nice_ceiling(v) for v in (0, 0.3, 1, 1.2, 3, 7, 40)] == [1, 0.5, 1, 2, 5, 10, 50]
    chart = charts.bar_chart([("a", 0.0), ("b", 3.0), ("c", 5.0)])
    assert chart.top == 5.0
    assert [b.height for b in chart.bars] == [0.0, round(chart.base * 0.6, 2), chart.base]
    assert chart.bars[2].y == 0.0 and chart.bars[0].x < chart.bars[1].x < chart.bars[2].x


def test_hosts_page_is_for_operators_only(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.capsule()
        async with browser(h) as ann, browser(h) as admin:
            await ann.signup("ann@example.com")
            assert (await ann.get("/hosts")).status_code == 404
            assert 'href="/hosts"' not in (await ann.get("/capsules")).text

            # `wrenn up`'s first person is the operator (users.is_admin).
            async with h.app.state.sessions() as session:
                await accounts.set_password(
                    session, email="admin@localhost", password=PASSWORD, now=NOW
                )
            assert (await admin.login("admin@localhost")).status_code == 200
            assert 'href="/hosts"' in (await admin.get("/capsules")).text
            page = await admin.get("/hosts")
            assert page.status_code == 200
            assert page.text.count("<tr data-host=") == 1
            assert "<td data-running>1</td>" in page.text
            assert "<td data-paused>0</td>" in page.text

    run(sqlite_url, tmp_path, body)
