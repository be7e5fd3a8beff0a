"""`WrennAPI`: capsules, exec, API keys, builds and teams over HTTP (synchronous, for
people's tools)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from pywrenn.client._errors import APIError

__all__ = ["WrennAPI"]

DEFAULT_TIMEOUT = 60.0
# Beyond an exec's own limit: a capsule still starting is waited for (WRENN_CAPSULE_WAIT_S,
# 60 s by default), then the guest kills the command at its deadline and answers.
EXEC_SLACK_S = 75.0


class WrennAPI:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.api_key = api_key
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/api",
            headers={"X-API-Key": api_key},
            timeout=timeout,
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> WrennAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- capsules --------------------------------------------------------------------------
    def create_capsule(self, *, wait: bool = True, timeout: float = 300.0, **body: Any) -> Any:
        capsule = self._call("POST", "/v1/capsules", json=body)
        if wait:
            capsule = self.wait_status(capsule["id"], {"running"}, timeout=timeout)
        return capsule

    def list_capsules(self) -> Any:
        return self._call("GET", "/v1/capsules")

    def get_capsule(self, capsule_id: str) -> Any:
        return self._call("GET", f"/v1/capsules/{capsule_id}")

    def pause(self, capsule_id: str) -> Any:
        return self._call("POST", f"/v1/capsules/{capsule_id}/pause")

    def resume(self, capsule_id: str) -> Any:
        return self._call("POST", f"/v1/capsules/{capsule_id}/resume")

    def destroy(self, capsule_id: str) -> None:
        self._call("DELETE", f"/v1/capsules/{capsule_id}")

    def exec(
        self, capsule_id: str, command: str | Sequence[str], *, timeout_sec: int | None = None
    ) -> Any:
        """Run a command to its end. A string runs through `/bin/sh -c`; a sequence is
        the argv itself (its first item the program), with no shell to re-split it."""
        if isinstance(command, str):
            body: dict[str, Any] = {"cmd": "/bin/sh", "args": ["-c", command]}
        else:
            if not command:
                raise ValueError("exec: an empty argv")
            body = {"cmd": command[0], "args": list(command[1:])}
        if timeout_sec is not None:
            body["timeout_sec"] = timeout_sec
        # The answer comes when the command ends (and, for a capsule still starting, after
        # it runs): wait past the command's own limit, and forever for "no limit" (0).
        wait: float | None = DEFAULT_TIMEOUT
        if timeout_sec is not None:
            wait = None if timeout_sec == 0 else max(DEFAULT_TIMEOUT, timeout_sec + EXEC_SLACK_S)
        path = f"/v1/capsules/{capsule_id}/exec"
        return self._call("POST", path, json=body, timeout=wait)

    def wait_status(self, capsule_id: str, wanted: set[str], *, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            capsule = self.get_capsule(capsule_id)
            if capsule["status"] in wanted:
                return capsule
            if capsule["status"] in {"error", "stopped"} or time.monotonic() > deadline:
                raise APIError(0, "timeout", f"capsule {capsule_id} is {capsule['status']}")
            time.sleep(0.25)

    # -- snapshots -------------------------------------------------------------------------
    def create_snapshot(self, capsule_id: str, name: str | None, *, overwrite: bool) -> Any:
        body: dict[str, Any] = {"sandbox_id": capsule_id}
        if name:
            body["name"] = name
        params = {"overwrite": "true"} if overwrite else None
        return self._call("POST", "/v1/snapshots", json=body, params=params)

    def list_snapshots(self) -> Any:
        return self._call("GET", "/v1/snapshots")

    def delete_snapshot(self, name: str) -> None:
        self._call("DELETE", f"/v1/snapshots/{name}")

    # -- keys ------------------------------------------------------------------------------
    def create_key(self, name: str) -> Any:
        return self._call("POST", "/v1/api-keys", json={"name": name})

    def list_keys(self) -> Any:
        return self._call("GET", "/v1/api-keys")

    def revoke_key(self, key_id: str) -> None:
        self._call("DELETE", f"/v1/api-keys/{key_id}")

    def fork(self, capsule_id: str, count: int) -> Any:
        return self._call("POST", f"/v1/capsules/{capsule_id}/fork", json={"count": count})

    # -- template builds ---------------------------------------------------------------------
    def start_build(
        self,
        name: str,
        recipe: str,
        *,
        archive: Path | None = None,
        healthcheck: str | None = None,
        vcpus: int = 1,
        memory_mb: int = 512,
        overwrite: bool = False,
    ) -> Any:
        fields = {
            "name": name,
            "recipe": recipe,
            "vcpus": str(vcpus),
            "memory_mb": str(memory_mb),
            "overwrite": "true" if overwrite else "false",
        }
        if healthcheck:
            fields["healthcheck"] = healthcheck
        if archive is None:
            body = {**fields, "vcpus": vcpus, "memory_mb": memory_mb, "overwrite": overwrite}
            return self._call("POST", "/v1/builds", json=body)
        with open(archive, "rb") as f:  # httpx streams the file part from disk
            return self._call("POST", "/v1/builds", data=fields, files={"archive": f})

    def list_builds(self) -> Any:
        return self._call("GET", "/v1/builds")

    def get_build(self, build_id: str) -> Any:
        return self._call("GET", f"/v1/builds/{build_id}")

    def build_logs(self, build_id: str, after: int = 0) -> Any:
        return self._call("GET", f"/v1/builds/{build_id}/logs", params={"after": after})

    def cancel_build(self, build_id: str) -> Any:
        return self._call("POST", f"/v1/builds/{build_id}/cancel")

    # -- admin (an admin key only) -------------------------------------------------------
    def create_team(self, name: str, *, slug: str = "", **limits: int | None) -> Any:
        """A team and its first API key (`api_key.key`, shown once). `limits`:
        max_capsules, max_vcpus, max_memory_mb, max_builds (None: the node's default)."""
        body: dict[str, Any] = {"name": name, **{k: v for k, v in limits.items() if v is not None}}
        if slug:
            body["slug"] = slug
        return self._call("POST", "/v1/admin/teams", json=body)

    def list_teams(self) -> Any:
        return self._call("GET", "/v1/admin/teams")

    # -- hosts (an admin key only) --------------------------------------------------------
    def create_host(self, *, name: str | None = None, tags: list[str] | None = None) -> Any:
        """A pending host and its one-time registration token (`registration_token`)."""
        return self._call("POST", "/v1/hosts", json={"name": name, "tags": tags or []})

    def list_hosts(self) -> Any:
        return self._call("GET", "/v1/hosts")

    def get_host(self, host_id: str) -> Any:
        return self._call("GET", f"/v1/hosts/{_segment(host_id)}")

    def host_delete_preview(self, host_id: str) -> Any:
        return self._call("GET", f"/v1/hosts/{_segment(host_id)}/delete-preview")

    def delete_host(self, host_id: str, *, force: bool = False) -> None:
        params = {"force": "true"} if force else {}
        self._call("DELETE", f"/v1/hosts/{_segment(host_id)}", params=params)

    def host_token(self, host_id: str) -> Any:
        return self._call("POST", f"/v1/hosts/{_segment(host_id)}/token")

    def drain_host(self, host_id: str, *, undo: bool = False) -> Any:
        action = "undrain" if undo else "drain"
        return self._call("POST", f"/v1/hosts/{_segment(host_id)}/{action}")

    def host_tags(self, host_id: str) -> Any:
        return self._call("GET", f"/v1/hosts/{_segment(host_id)}/tags")

    def add_host_tag(self, host_id: str, tag: str) -> Any:
        return self._call("POST", f"/v1/hosts/{_segment(host_id)}/tags", json={"tag": tag})

    def remove_host_tag(self, host_id: str, tag: str) -> None:
        self._call("DELETE", f"/v1/hosts/{_segment(host_id)}/tags/{_segment(tag)}")

    # -- transport -------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise APIError(0, "unreachable", f"{method} {path}: {exc}") from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                code, message = str(error.get("code")), str(error.get("message"))
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", response.text[:200]
            raise APIError(response.status_code, code, message)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


def _segment(value: str) -> str:
    """One path segment, quoted whole: an id typed by a person never changes the path."""
    return quote(value, safe="")
