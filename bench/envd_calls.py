"""Guest agent micro-benchmark: unary call cost and stream throughput, printed as JSON.

Runs the agent as its own process on loopback (as it runs in a capsule) and measures:
- unary `process.Process/List` round trips on one keep-alive connection: calls/s, p50/p95,
  and the agent's own CPU time per call (from /proc/<pid>/stat), beside a bare
  `http.server` answering `{}` in the same run as the baseline;
- a Connect output stream (`head -c N /dev/zero` through Start): MB/s of payload, beside
  the same bytes through a plain local pipe;
- `GET /files` download throughput of a file of the same size.

Usage: python bench/envd_calls.py [--calls 2000] [--stream-mb 100]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")

BARE_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"processes":[]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
s.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on port {port}")


def start(argv: list[str], port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def unary_round_trips(port: int, pid: int, calls: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}
    for _ in range(50):  # warm up
        conn.request("POST", "/process.Process/List", b"{}", headers)
        conn.getresponse().read()
    samples = []
    cpu_before = cpu_seconds(pid)
    wall_before = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        conn.request("POST", "/process.Process/List", b"{}", headers)
        resp = conn.getresponse()
        resp.read()
        samples.append(time.perf_counter() - t0)
    wall = time.perf_counter() - wall_before
    cpu = cpu_seconds(pid) - cpu_before
    conn.close()
    samples.sort()
    return {
        "calls_per_s": round(calls / wall, 1),
        "p50_ms": round(statistics.median(samples) * 1000, 3),
        "p95_ms": round(samples[int(len(samples) * 0.95)] * 1000, 3),
        "server_cpu_ms_per_call": round(cpu / calls * 1000, 4),
    }


def envelope(message: dict[str, object]) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack(">BI", 0, len(payload)) + payload


def stream_throughput(port: int, nbytes: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    body = envelope({"process": {"cmd": "/bin/sh", "args": ["-c", f"head -c {nbytes} /dev/zero"]}})
    t0 = time.perf_counter()
    conn.request(
        "POST",
        "/process.Process/Start",
        body=body,
        headers={"Content-Type": "application/connect+json"},
    )
    resp = conn.getresponse()
    got = 0
    while True:
        head = resp.read(5)
        if not head:
            break
        flags, length = struct.unpack(">BI", head)
        payload = resp.read(length)
        if flags & 2:
            break
        event = json.loads(payload)["event"]
        if "data" in event:
            got += len(base64.b64decode(event["data"]["stdout"]))
    elapsed = time.perf_counter() - t0
    conn.close()
    if got != nbytes:
        raise RuntimeError(f"stream delivered {got} of {nbytes} bytes")
    return {"mb_per_s": round(nbytes / elapsed / 1e6, 1), "seconds": round(elapsed, 3)}


def pipe_throughput(nbytes: int) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(["head", "-c", str(nbytes), "/dev/zero"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    got = 0
    while chunk := proc.stdout.read(32768):
        got += len(chunk)
    proc.wait()
    elapsed = time.perf_counter() - t0
    return {"mb_per_s": round(got / elapsed / 1e6, 1), "seconds": round(elapsed, 3)}


def download_throughput(port: int, path: str, nbytes: int) -> dict[str, float] | str:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    t0 = time.perf_counter()
    conn.request("GET", f"/files?path={path}")
    resp = conn.getresponse()
    if resp.status != 200:
        return f"unavailable: HTTP {resp.status}"
    got = 0
    while chunk := resp.read(1 << 20):
        got += len(chunk)
    elapsed = time.perf_counter() - t0
    conn.close()
    return {"mb_per_s": round(got / elapsed / 1e6, 1), "seconds": round(elapsed, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--stream-mb", type=int, default=100)
    args = parser.parse_args()
    nbytes = args.stream_mb * 1_000_000

    agent_port, bare_port = free_port(), free_port()
    agent = start(
        [sys.executable, "-m", "pywrenn.envd", "--host", "127.0.0.1", "--port", str(agent_port)],
        agent_port,
    )
    bare = start([sys.executable, "-c", BARE_SERVER, str(bare_port)], bare_port)
    try:
        agent_unary = unary_round_trips(agent_port, agent.pid, args.calls)
        bare_unary = unary_round_trips(bare_port, bare.pid, args.calls)
        stream = stream_throughput(agent_port, nbytes)
        pipe = pipe_throughput(nbytes)
        with tempfile.NamedTemporaryFile(prefix="envd-bench-") as blob:
            blob.truncate(nbytes)
            blob.flush()
            download = download_throughput(agent_port, blob.name, nbytes)
    finally:
        for proc in (agent, bare):
            proc.terminate()
            proc.wait(timeout=10)
    report = {
        "bench": "envd_calls",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "unary_list": {
            "agent": agent_unary,
            "baseline_bare_http_server": bare_unary,
            "p50_ratio": round(agent_unary["p50_ms"] / bare_unary["p50_ms"], 2),
        },
        "stream_stdout": {
            "bytes": nbytes,
            "agent": stream,
            "baseline_local_pipe": pipe,
        },
        "download_files": {"bytes": nbytes, "agent": download},
        "target": "agent CPU per trivial unary call well under 1 ms",
        "target_met": agent_unary["server_cpu_ms_per_call"] < 1.0,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
