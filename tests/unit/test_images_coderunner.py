"""Unit tests for the code-runner image variant (pywrenn.images.coderunner) and its guest
service: the pieces that must agree with each other and with the `wrenn` SDK."""

from __future__ import annotations

import importlib.util
import socket
import threading
from types import ModuleType

import pytest

from pywrenn.controlplane.basetemplates import BASE_TEMPLATES, CODE_RUNNER_TEMPLATE
from pywrenn.images import coderunner
from pywrenn.images.inputs import gather_inputs
from pywrenn.images.kernel import KernelPackage

pytestmark = pytest.mark.unit

KERNEL = KernelPackage("linux-image-6.1.0-57-cloud-amd64", "6.1.192-3")


def guest_service() -> ModuleType:
    spec = importlib.util.spec_from_file_location("code_runner_service", coderunner.SERVICE_SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sdk_template_name_maps_to_the_image() -> None:
    # wrenn.code_runner.Capsule creates `code-runner-beta` and talks to kernel `wrenn`
    # on port 8888.
    assert BASE_TEMPLATES[CODE_RUNNER_TEMPLATE] == coderunner.TEMPLATE
    assert CODE_RUNNER_TEMPLATE == "code-runner-beta"
    assert coderunner.KERNEL_NAME == "wrenn"
    assert coderunner.JUPYTER_PORT == 8888


def test_service_and_image_agree() -> None:
    service = guest_service()
    assert service.PORT == coderunner.JUPYTER_PORT
    assert service.KERNEL == coderunner.KERNEL_NAME
    assert service.READY_FILE == coderunner.READY_FILE
    assert coderunner.READY_FILE in coderunner.READY_COMMAND
    assert f"--port={coderunner.JUPYTER_PORT}" in service.SERVER_ARGS
    # The port proxy decides who reaches a capsule's ports: no token, no XSRF cookie
    # (the SDK sends neither).
    assert "--IdentityProvider.token=" in service.SERVER_ARGS
    assert "--ServerApp.disable_check_xsrf=True" in service.SERVER_ARGS


def test_kernelspec_runs_the_warm_up_file() -> None:
    spec = coderunner.kernelspec()
    argv = spec["argv"]
    assert isinstance(argv, list)
    assert "{connection_file}" in argv
    assert f"--IPKernelApp.exec_files=/{coderunner.WARM_PATH}" in argv


def test_wheels_key_names_the_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    before = coderunner.wheels_key()
    assert coderunner.wheels_key() == before
    monkeypatch.setattr(coderunner, "PIP_PACKAGES", (*coderunner.PIP_PACKAGES, "scipy==1.14.1"))
    assert coderunner.wheels_key() != before


def test_variant_changes_the_image_hash_but_not_the_debian_base() -> None:
    minimal = gather_inputs(KERNEL, "2G")
    variant = gather_inputs(KERNEL, "2G", coderunner.TEMPLATE)
    assert minimal.variant_layer == ""
    assert variant.variant_layer.startswith(coderunner.wheels_key())
    assert variant.input_hash != minimal.input_hash
    # One debootstrap tree serves both images.
    assert variant.base_key == minimal.base_key


def test_warm_up_file_compiles() -> None:
    compile(coderunner.WARM_SOURCE.read_text(), str(coderunner.WARM_SOURCE), "exec")


class OneWebSocketServer:
    """A loopback server for one connection: it reads an HTTP request, answers with
    `status`, and (on 101) reads the client's close frame and answers with its own."""

    def __init__(self, status: str) -> None:
        self.status = status
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.request = b""
        self.close_frame = b""
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, self.listener:
            conn.settimeout(10)
            while b"\r\n\r\n" not in self.request:
                self.request += conn.recv(4096)
            conn.sendall(f"HTTP/1.1 {self.status}\r\nUpgrade: websocket\r\n\r\n".encode())
            if not self.status.startswith("101"):
                return
            while len(self.close_frame) < 6:  # 2 header bytes and a 4-byte mask
                self.close_frame += conn.recv(6 - len(self.close_frame))
            conn.sendall(bytes([0x88, 0x00]))


def test_the_service_opens_the_kernels_channels_once_and_closes_them() -> None:
    server = OneWebSocketServer("101 Switching Protocols")
    guest_service().open_channels_once("k-1", 10.0, port=server.port)
    server.thread.join(10)
    head = server.request.decode()
    assert head.startswith("GET /api/kernels/k-1/channels?session_id=")
    assert "Upgrade: websocket" in head and "Sec-WebSocket-Version: 13" in head
    # A close frame with no payload, masked as a client's must be.
    assert server.close_frame[:2] == bytes([0x88, 0x80])


def test_a_refused_handshake_is_reported() -> None:
    server = OneWebSocketServer("404 Not Found")
    service = guest_service()
    with pytest.raises(service.HandshakeRefused, match="WebSocket refused"):
        service.open_channels_once("k-1", 10.0, port=server.port)
    server.thread.join(10)
