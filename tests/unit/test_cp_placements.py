"""The running-capsule placement cache: hits, expiry, forgetting, team separation."""

from __future__ import annotations

import uuid

from pywrenn.controlplane.placements import RunningPlacements

TEAM, OTHER, HOST, ROW = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def test_a_placement_is_remembered_for_its_team_only() -> None:
    cache = RunningPlacements()
    cache.put(TEAM, "cl-a", row_id=ROW, host_id=HOST, last_active_at=None)
    found = cache.get(TEAM, "cl-a")
    assert found is not None and found.host_id == HOST and found.row_id == ROW
    assert cache.get(OTHER, "cl-a") is None


def test_a_placement_expires() -> None:
    now = [100.0]
    cache = RunningPlacements(ttl_s=5, clock=lambda: now[0])
    cache.put(TEAM, "cl-a", row_id=ROW, host_id=HOST, last_active_at=None)
    now[0] += 4.9
    assert cache.get(TEAM, "cl-a") is not None
    now[0] += 0.1
    assert cache.get(TEAM, "cl-a") is None


def test_forget_drops_the_capsule_for_every_team() -> None:
    cache = RunningPlacements()
    cache.put(TEAM, "cl-a", row_id=ROW, host_id=HOST, last_active_at=None)
    cache.put(OTHER, "cl-a", row_id=ROW, host_id=HOST, last_active_at=None)
    cache.put(TEAM, "cl-b", row_id=ROW, host_id=HOST, last_active_at=None)
    cache.forget("cl-a")
    assert cache.get(TEAM, "cl-a") is None and cache.get(OTHER, "cl-a") is None
    assert cache.get(TEAM, "cl-b") is not None
