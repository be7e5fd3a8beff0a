"""People: sign up/in/out, sessions (cookie + CSRF, expiry, revoke), teams and members,
and the audit log, against the app on a fake host agent.

Every route is also tried with another team's session and key (must see nothing),
without the CSRF token (403) and with an ended session (401).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from httpx_ws import WebSocketDisconnect, WebSocketUpgradeError, aconnect_ws
from sqlalchemy import select, update

from pywrenn.controlplane.db.models import ApiKey, UserSession
from pywrenn.controlplane.publicids import format_id
from pywrenn.ids import IdKind
from tests.cp_routes import NOW, Harness, run
from tests.people_client import BASE_URL, PASSWORD, Browser, browser

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


async def _capsule(b: Browser, h: Harness) -> str:
    r = await b.post("/api/v1/capsules", json={})
    assert r.status_code == 201, r.text
    await h.settle()
    capsule_id: str = r.json()["id"]
    return capsule_id


def test_signup_sets_strict_httponly_cookies_and_acts_like_a_key(
    db_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann:
            r = await ann.post(
                "/api/v1/auth/signup",
                json={"email": "Ann@Example.com", "password": PASSWORD, "name": "Ann"},
            )
            assert r.status_code == 201, r.text
            cookies = r.headers.get_list("set-cookie")
            sid = next(c for c in cookies if c.startswith("wrenn_sid="))
            csrf = next(c for c in cookies if c.startswith("wrenn_csrf="))
            assert "HttpOnly" in sid and "SameSite=strict" in sid and "Path=/" in sid
            assert "HttpOnly" not in csrf and "SameSite=strict" in csrf
            assert r.json()["csrf_token"] == ann.client.cookies["wrenn_csrf"]
            assert r.json()["user"]["email"] == "ann@example.com"

            me = (await ann.get("/api/v1/me")).json()
            assert me["team_id"] == r.json()["team_id"]
            assert [t["role"] for t in me["teams"]] == ["owner"]

            # The same routes a key of the team has: capsules, keys, events.
            cid = await _capsule(ann, h)
            listed = (await ann.get("/api/v1/capsules")).json()
            assert [c["id"] for c in listed] == [cid]
            assert (await ann.post(f"/api/v1/capsules/{cid}/pause")).status_code == 200
            assert (await ann.post(f"/api/v1/capsules/{cid}/resume")).status_code == 200
            made = await ann.post("/api/v1/api-keys", json={"name": "ci"})
            assert made.status_code == 201
            key = made.json()["key"]
            by_key = await h.client.get("/api/v1/capsules", headers={"X-API-Key": key})
            assert [c["id"] for c in by_key.json()] == [cid]
            # The operator's admin key is a key; a session never is one.
            assert (await ann.get("/api/v1/admin/teams")).status_code == 403
            # The admin's own key sees nothing of Ann's team.
            assert (await h.client.get(f"/api/v1/capsules/{cid}")).status_code == 404

    run(db_url, tmp_path, body)


def test_state_changing_requests_by_cookie_need_the_csrf_token(
    sqlite_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann:
            await ann.signup("ann@example.com")
            cid = await _capsule(ann, h)
            ann.csrf = False
            me = (await ann.get("/api/v1/me")).json()
            team, user, session_id = me["team_id"], me["user"]["id"], me["session_id"]
            paths = [
                ("POST", "/api/v1/capsules"),
                ("POST", f"/api/v1/capsules/{cid}/pause"),
                ("DELETE", f"/api/v1/capsules/{cid}"),
                ("POST", "/api/v1/api-keys"),
                ("DELETE", "/api/v1/api-keys/key-0000000000000000"),
                ("POST", "/api/v1/auth/logout"),
                ("POST", "/api/v1/auth/logout-all"),
                ("POST", "/api/v1/auth/switch-team"),
                ("POST", "/api/v1/me/password"),
                ("DELETE", f"/api/v1/me/sessions/{session_id}"),
                ("POST", "/api/v1/teams"),
                ("POST", f"/api/v1/teams/{team}/members"),
                ("PATCH", f"/api/v1/teams/{team}/members/{user}"),
                ("DELETE", f"/api/v1/teams/{team}/members/{user}"),
                ("POST", f"/api/v1/teams/{team}/leave"),
            ]
            for method, path in paths:
                r = await ann.request(method, path, json={})
                assert r.status_code == 403, (method, path, r.text)
                assert r.json()["error"]["code"] == "forbidden"
            token = ann.client.cookies["wrenn_csrf"]
            wrong = {"X-CSRF-Token": token[:-1] + ("0" if token[-1] != "0" else "1")}
            r = await ann.post("/api/v1/capsules", json={}, headers=wrong)
            assert r.status_code == 403
            # Another session's token is no good either: it is bound to its session.
            async with browser(h) as bob:
                await bob.signup("bob@example.com")
                bobs = bob.client.cookies["wrenn_csrf"]
            r = await ann.post("/api/v1/capsules", json={}, headers={"X-CSRF-Token": bobs})
            assert r.status_code == 403
            # Reads need no token; nothing above changed anything.
            r = await ann.get(f"/api/v1/capsules/{cid}")
            assert r.status_code == 200 and r.json()["status"] == "running"
            assert len((await ann.get("/api/v1/capsules")).json()) == 1

    run(sqlite_url, tmp_path, body)


def test_another_team_sees_nothing_by_session_or_key(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann, browser(h) as eve:
            a = await ann.signup("ann@example.com")
            cid = await _capsule(ann, h)
            key_id = (await ann.post("/api/v1/api-keys", json={"name": "k"})).json()["id"]
            ann_session = (await ann.get("/api/v1/me/sessions")).json()[0]["id"]
            ann_user = a["user"]["id"]
            team = a["team_id"]

            await eve.signup("eve@example.com")
            eve_key = (await eve.post("/api/v1/api-keys", json={"name": "e"})).json()["key"]
            as_key = {"X-API-Key": eve_key}
            for who, headers in (("session", {}), ("key", as_key)):
                get = eve.get if who == "session" else h.client.get
                assert (await get("/api/v1/capsules", headers=headers)).json() == [], who
                assert (await get(f"/api/v1/capsules/{cid}", headers=headers)).status_code == 404
                r = await get(f"/api/v1/teams/{team}/members", headers=headers)
                assert r.status_code == 404, who
                keys = (await get("/api/v1/api-keys", headers=headers)).json()
                assert key_id not in [k["id"] for k in keys]
                audit = (await get("/api/v1/audit-logs", headers=headers)).json()["items"]
                assert all(e["resource_id"] not in (cid, key_id) for e in audit), who
            for method, path in [
                ("DELETE", f"/api/v1/capsules/{cid}"),
                ("DELETE", f"/api/v1/api-keys/{key_id}"),
                ("DELETE", f"/api/v1/me/sessions/{ann_session}"),
                ("DELETE", f"/api/v1/teams/{team}/members/{ann_user}"),
                ("POST", f"/api/v1/teams/{team}/leave"),
                ("PATCH", f"/api/v1/teams/{team}/members/{ann_user}"),
            ]:
                kw = {"json": {"role": "member"}} if method == "PATCH" else {}
                r = await eve.request(method, path, **kw)
                assert r.status_code == 404, (method, path, r.text)
            r = await eve.post("/api/v1/auth/switch-team", json={"team_id": team})
            assert r.status_code == 404
            # Ann is untouched.
            assert (await ann.get(f"/api/v1/capsules/{cid}")).json()["status"] == "running"
            assert (await ann.get("/api/v1/me")).status_code == 200

    run(db_url, tmp_path, body)


def test_ended_sessions_are_refused(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        idle = timedelta(seconds=h.app.state.settings.session_idle_timeout_s)

        async def age(**values: object) -> None:
            async with h.app.state.sessions() as session:
                await session.execute(update(UserSession).values(**values))
                await session.commit()

        async with browser(h) as ann:
            await ann.signup("ann@example.com")
            assert (await ann.get("/api/v1/capsules")).status_code == 200
            await age(last_seen_at=NOW - idle)  # idle too long
            r = await ann.get("/api/v1/capsules")
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            assert (await ann.post("/api/v1/capsules", json={})).status_code == 401
            assert (await ann.login("ann@example.com")).status_code == 200
            assert (await ann.get("/api/v1/capsules")).status_code == 200
            await age(expires_at=NOW)  # past its absolute end, though just used
            team = (await h.client.get("/api/v1/capsules")).status_code  # the admin: fine
            assert team == 200
            for path in (
                "/api/v1/capsules",
                "/api/v1/me",
                "/api/v1/me/sessions",
                "/api/v1/teams",
                "/api/v1/audit-logs",
                "/api/v1/api-keys",
                "/api/v1/events/stream",
            ):
                assert (await ann.get(path)).status_code == 401, path
            for method, path in (
                ("POST", "/api/v1/auth/logout"),
                ("POST", "/api/v1/auth/switch-team"),
                ("POST", "/api/v1/teams"),
                ("POST", "/api/v1/me/password"),
            ):
                r = await ann.request(method, path, json={})
                assert r.status_code == 401, (method, path)

    run(db_url, tmp_path, body)


def test_login_logout_everywhere_and_password_change(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as one, browser(h) as two, browser(h) as three:
            await one.signup("ann@example.com")
            assert (await two.login("ann@example.com", "wrong password")).status_code == 401
            assert (await two.login("nobody@example.com")).status_code == 401
            assert (await two.login("ANN@example.com")).status_code == 200
            assert (await three.login("ann@example.com")).status_code == 200
            listed = (await one.get("/api/v1/me/sessions")).json()
            assert len(listed) == 3 and sum(s["current"] for s in listed) == 1

            # Sign out: this browser only, cookies cleared.
            r = await three.post("/api/v1/auth/logout")
            assert r.status_code == 204 and "wrenn_sid" not in three.client.cookies
            assert (await three.get("/api/v1/me")).status_code == 401
            assert len((await one.get("/api/v1/me/sessions")).json()) == 2

            # Revoke one by id.
            other = next(
                s for s in (await one.get("/api/v1/me/sessions")).json() if not s["current"]
            )
            assert (await one.delete(f"/api/v1/me/sessions/{other['id']}")).status_code == 204
            assert (await two.get("/api/v1/me")).status_code == 401

            # Password change: every session ends; the asking browser gets a new one.
            assert (await two.login("ann@example.com")).status_code == 200
            change = {"current_password": "not it at all", "new_password": "a new secret 1"}
            assert (await one.post("/api/v1/me/password", json=change)).status_code == 403
            change["current_password"] = PASSWORD
            short = {**change, "new_password": "short"}
            assert (await one.post("/api/v1/me/password", json=short)).status_code == 400
            assert (await one.post("/api/v1/me/password", json=change)).status_code == 200
            assert (await one.get("/api/v1/me")).status_code == 200
            assert (await two.get("/api/v1/me")).status_code == 401
            assert (await two.login("ann@example.com")).status_code == 401
            assert (await two.login("ann@example.com", "a new secret 1")).status_code == 200

            # Everywhere.
            assert (await one.post("/api/v1/auth/logout-all")).status_code == 204
            assert (await one.get("/api/v1/me")).status_code == 401
            assert (await two.get("/api/v1/me")).status_code == 401

            # A key has no person: the person's routes refuse it.
            for path in ("/api/v1/me", "/api/v1/me/sessions", "/api/v1/teams"):
                assert (await h.client.get(path)).status_code == 403, path

    run(sqlite_url, tmp_path, body)


def test_signup_can_be_turned_off_and_checks_its_input(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as b:
            r = await b.post("/api/v1/auth/signup", json={"email": "x@y", "password": "short"})
            assert r.status_code == 400
            r = await b.post("/api/v1/auth/signup", json={"email": "nope", "password": PASSWORD})
            assert r.status_code == 400
            await b.signup("ann@example.com")
            r = await b.post(
                "/api/v1/auth/signup", json={"email": "ANN@example.com", "password": PASSWORD}
            )
            assert r.status_code == 409
            settings = h.app.state.settings
            h.app.state.settings = settings.model_copy(update={"signup_enabled": False})
            r = await b.post("/api/v1/auth/signup", json={"email": "z@y.z", "password": PASSWORD})
            assert r.status_code == 403 and "turned off" in r.json()["error"]["message"]
            # Sign-in still works.
            assert (await b.login("ann@example.com")).status_code == 200

    run(sqlite_url, tmp_path, body)


def test_members_roles_switch_and_leave(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann, browser(h) as bob, browser(h) as cat:
            a = await ann.signup("ann@example.com")
            team = a["team_id"]
            b = await bob.signup("bob@example.com")
            await cat.signup("cat@example.com")
            cid = await _capsule(ann, h)
            members = f"/api/v1/teams/{team}/members"

            r = await ann.post(members, json={"email": "nobody@example.com"})
            assert r.status_code == 404
            r = await ann.post(members, json={"email": "BOB@example.com", "role": "member"})
            assert r.status_code == 201, r.text
            assert (await ann.post(members, json={"email": "bob@example.com"})).status_code == 409
            # A key reads its own team's members but manages none (it acts for no person).
            async with h.app.state.sessions() as session:
                row = (await session.execute(select(ApiKey.team_id).limit(1))).first()
            assert row is not None
            own = f"/api/v1/teams/{format_id(row.team_id, IdKind.TEAM)}/members"
            listed = (await h.client.get(own)).json()
            assert [m["user"]["email"] for m in listed] == ["admin@localhost"]
            r = await h.client.post(own, json={"email": "cat@example.com"})
            assert r.status_code == 403
            r = await h.client.post(members, json={"email": "cat@example.com"})
            assert r.status_code == 404

            # Bob switches to Ann's team and sees its capsule; his old team is not current.
            r = await bob.post("/api/v1/auth/switch-team", json={"team_id": team})
            assert r.status_code == 200, r.text
            assert [c["id"] for c in (await bob.get("/api/v1/capsules")).json()] == [cid]
            assert len((await bob.get(members)).json()) == 2
            # A member manages nobody.
            r = await bob.post(members, json={"email": "cat@example.com"})
            assert r.status_code == 403
            # Ann makes Bob an admin; an admin cannot make an owner.
            bob_id = b["user"]["id"]
            r = await ann.patch(f"{members}/{bob_id}", json={"role": "admin"})
            assert r.status_code == 200 and r.json()["role"] == "admin"
            assert (
                await bob.post(members, json={"email": "cat@example.com", "role": "owner"})
            ).status_code == 403
            assert (await bob.post(members, json={"email": "cat@example.com"})).status_code == 201
            ann_id = a["user"]["id"]
            assert (await bob.delete(f"{members}/{ann_id}")).status_code == 403
            # The last owner cannot leave or step down.
            assert (await ann.post(f"/api/v1/teams/{team}/leave")).status_code == 409
            r = await ann.patch(f"{members}/{ann_id}", json={"role": "member"})
            assert r.status_code == 409

            # Removing Bob locks his browser out of the team at once.
            assert (await ann.delete(f"{members}/{bob_id}")).status_code == 204
            r = await bob.get("/api/v1/capsules")
            assert r.status_code == 401
            assert (await bob.login("bob@example.com")).status_code == 200
            assert (await bob.get(f"/api/v1/capsules/{cid}")).status_code == 404

            audit = (await ann.get("/api/v1/audit-logs")).json()["items"]
            actions = [e["action"] for e in audit]
            for wanted in ("member.add", "member.role", "member.remove", "capsule.create"):
                assert wanted in actions, actions
            added = next(e for e in audit if e["action"] == "member.add")
            assert added["actor"]["type"] == "user" and added["actor"]["name"] in (
                "ann@example.com",
                "bob@example.com",
            )

    run(db_url, tmp_path, body)


def test_only_owners_and_admins_manage_keys_by_session(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann, browser(h) as bob, browser(h) as eve:
            a = await ann.signup("ann@example.com")
            team = a["team_id"]
            b = await bob.signup("bob@example.com")
            await eve.signup("eve@example.com")
            members = f"/api/v1/teams/{team}/members"
            assert (await ann.post(members, json={"email": "bob@example.com"})).status_code == 201
            assert (await bob.post("/api/v1/auth/switch-team", json={"team_id": team})).is_success
            made = (await ann.post("/api/v1/api-keys", json={"name": "ann's"})).json()
            key_id, ann_key = made["id"], made["key"]

            # A member reads the team's keys but makes and revokes none.
            assert [k["id"] for k in (await bob.get("/api/v1/api-keys")).json()] == [key_id]
            for r in (
                await bob.post("/api/v1/api-keys", json={"name": "bob's"}),
                await bob.delete(f"/api/v1/api-keys/{key_id}"),
            ):
                assert r.status_code == 403, r.text
                assert r.json()["error"]["code"] == "forbidden"
                assert "owners and admins" in r.json()["error"]["message"]
            r = await h.client.get("/api/v1/capsules", headers={"X-API-Key": ann_key})
            assert r.status_code == 200
            assert [k["id"] for k in (await ann.get("/api/v1/api-keys")).json()] == [key_id]

            # Another team's owner touches none of them: a revoke is 404, a new key is hers.
            assert (await eve.delete(f"/api/v1/api-keys/{key_id}")).status_code == 404
            assert (await eve.post("/api/v1/api-keys", json={"name": "eve's"})).status_code == 201
            assert [k["id"] for k in (await ann.get("/api/v1/api-keys")).json()] == [key_id]

            # A key of the team keeps doing both, whoever made it.
            as_key = {"X-API-Key": ann_key}
            r = await h.client.post("/api/v1/api-keys", json={"name": "by key"}, headers=as_key)
            assert r.status_code == 201, r.text
            r = await h.client.delete(f"/api/v1/api-keys/{r.json()['id']}", headers=as_key)
            assert r.status_code == 204

            # An admin may.
            r = await ann.patch(f"{members}/{b['user']['id']}", json={"role": "admin"})
            assert r.status_code == 200
            r = await bob.post("/api/v1/api-keys", json={"name": "bob's"})
            assert r.status_code == 201, r.text
            assert (await bob.delete(f"/api/v1/api-keys/{key_id}")).status_code == 204

    run(db_url, tmp_path, body)


def test_sign_in_and_sign_out_are_in_the_audit_log(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as one, browser(h) as two, browser(h) as eve:
            a = await one.signup("ann@example.com")
            await eve.signup("eve@example.com")
            assert (await two.login("ann@example.com", "wrong password")).status_code == 401
            assert (await two.login("ann@example.com")).status_code == 200
            assert (await two.post("/api/v1/auth/logout")).status_code == 204
            assert (await one.post("/api/v1/auth/logout-all")).status_code == 204
            assert (await one.login("ann@example.com")).status_code == 200

            audit = (await one.get("/api/v1/audit-logs")).json()["items"]
            auth = [e for e in audit if e["action"].startswith("auth.")]
            assert [e["action"] for e in auth] == [
                "auth.login",
                "auth.logout",
                "auth.logout",
                "auth.login",
            ]
            assert [e["metadata"].get("scope") for e in auth] == [
                None,
                "everywhere",
                "this",
                None,
            ]
            for e in auth:
                assert e["resource_id"] == a["user"]["id"]
                assert e["actor"] == {
                    "type": "user",
                    "id": a["user"]["id"],
                    "name": "ann@example.com",
                }
            # Another team's log has none of Ann's comings and goings.
            theirs = (await eve.get("/api/v1/audit-logs")).json()["items"]
            assert all(e["actor"]["name"] != "ann@example.com" for e in theirs)

    run(db_url, tmp_path, body)


def test_audit_log_pages_and_names_the_actor(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann:
            await ann.signup("ann@example.com")
            for n in range(3):
                made = await ann.post("/api/v1/api-keys", json={"name": f"k{n}"})
                assert (
                    await ann.delete(f"/api/v1/api-keys/{made.json()['id']}")
                ).status_code == 204
            first = (await ann.get("/api/v1/audit-logs", params={"limit": 4})).json()
            assert [e["action"] for e in first["items"]] == [
                "api_key.revoke",
                "api_key.create",
                "api_key.revoke",
                "api_key.create",
            ]
            assert first["items"][0]["actor"] == {
                "type": "user",
                "id": first["items"][0]["actor"]["id"],
                "name": "ann@example.com",
            }
            assert first["items"][0]["metadata"] == {"name": "k2"}
            rest = (
                await ann.get(
                    "/api/v1/audit-logs", params={"limit": 4, "before": first["next_cursor"]}
                )
            ).json()
            assert [e["action"] for e in rest["items"]] == [
                "api_key.revoke",
                "api_key.create",
                "team.create",
            ]
            assert rest["next_cursor"] is None
            assert (await ann.get("/api/v1/audit-logs", params={"limit": 0})).status_code == 400
            # The admin key sees its own team's log, none of Ann's.
            mine = (await h.client.get("/api/v1/audit-logs")).json()["items"]
            assert all(e["actor"]["name"] != "ann@example.com" for e in mine)

    run(sqlite_url, tmp_path, body)


def test_the_first_admin_signs_in_after_wrenn_admin_set_password(
    sqlite_url: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from pywrenn.cli.app import app

    def set_password(password: str) -> int:
        result = CliRunner().invoke(
            app,
            ["admin", "set-password", "admin@localhost", "--password-stdin"],
            input=password + "\n",
            env={"WRENN_DATABASE_URL": sqlite_url, "WRENN_DIR": str(tmp_path)},
        )
        return result.exit_code

    async def body(h: Harness) -> None:
        async with browser(h) as admin:
            # `wrenn up`'s first admin has no password: no way in yet.
            assert (await admin.login("admin@localhost", "anything at all")).status_code == 401
            assert await asyncio.to_thread(set_password, "short") == 1
            assert await asyncio.to_thread(set_password, "the operator's secret") == 0
            r = await admin.login("admin@localhost", "the operator's secret")
            assert r.status_code == 200, r.text
            # Their session acts for the admin's team, like the admin key (not as admin).
            by_key = (await h.client.get("/api/v1/capsules")).json()
            assert (await admin.get("/api/v1/capsules")).json() == by_key
            assert (await admin.get("/api/v1/admin/teams")).status_code == 403
            # Setting it again ends their sessions.
            assert await asyncio.to_thread(set_password, "another secret!") == 0
            assert (await admin.get("/api/v1/me")).status_code == 401

    run(sqlite_url, tmp_path, body)


def test_a_sessions_terminal_and_event_stream_end_when_it_signs_out(
    sqlite_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        async with browser(h) as ann:
            await ann.signup("ann@example.com")
            cid = await _capsule(ann, h)
            url = f"/api/v1/capsules/{cid}/pty"
            # Another site's page cannot open the terminal with the cookie.
            with pytest.raises(WebSocketUpgradeError) as refused:
                async with aconnect_ws(url, ann.client, headers={"Origin": "http://evil.test"}):
                    pass
            assert refused.value.response.status_code == 403
            sse = asyncio.create_task(ann.client.get("/api/v1/events/stream", timeout=60.0))
            async with aconnect_ws(url, ann.client, headers={"Origin": BASE_URL}) as pty:
                await pty.send_text(json.dumps({"type": "start", "cmd": "/bin/bash"}))
                assert (await pty.receive_json())["type"] == "started"
                assert (await ann.post("/api/v1/auth/logout")).status_code == 204

                frames: list[str] = []

                async def until_closed() -> None:
                    with contextlib.suppress(WebSocketDisconnect):
                        while True:
                            message = await pty.receive()
                            frames.append(str(getattr(message, "data", "")))

                await asyncio.wait_for(until_closed(), 15.0)
                assert any("the session was revoked" in f for f in frames), frames
            response = await asyncio.wait_for(sse, 15.0)
            assert response.status_code == 200
            assert "connected" in response.text

    run(sqlite_url, tmp_path, body)
