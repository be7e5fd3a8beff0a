"""A fake `qemu-system-x86_64` for unit tests: another process that speaks QMP.

It daemonises like QEMU (-daemonize), writes -pidfile, serves QMP on the -qmp unix socket,
answers GET /health and POST /init on the -netdev hostfwd port, records every QMP command
(JSON lines in $FAKE_QMP_LOG) and takes reply overrides from $FAKE_QMP_TABLE (JSON).
`migrate` writes bytes into the fd received with `getfd`; `migrate-incoming` reads them.
"""

from __future__ import annotations

SCRIPT = r"""#!/usr/bin/env python3
import array, json, os, re, socket, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer

argv = sys.argv[1:]
if argv == ["--version"]:
    print("QEMU emulator version 7.2.99 (fake)"); sys.exit(0)
def opt(name):
    return argv[argv.index(name) + 1] if name in argv else None
pidfile = opt("-pidfile")
qmp_path = opt("-qmp").split(",")[0].removeprefix("unix:")
netdev = opt("-netdev") or ""
port = re.search(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-", netdev)
incoming = "-incoming" in argv
log_path = os.environ.get("FAKE_QMP_LOG", os.devnull)
table = json.loads(os.environ.get("FAKE_QMP_TABLE", "{}"))

r, w = os.pipe()
if os.fork():
    os.close(w)
    ok = os.read(r, 1)
    sys.exit(0 if ok == b"1" else 1)
os.close(r)
os.setsid()
for fd in (0, 1, 2):
    os.dup2(os.open(os.devnull, os.O_RDWR), fd)

class Health(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def _ok(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        with open(log_path, "a") as f:
            entry = {"http": f"{self.command} {self.path}", "body": body.decode()}
            f.write(json.dumps(entry) + "\n")
        self.send_response(204); self.send_header("Content-Length", "0"); self.end_headers()
    do_GET = do_POST = _ok

if port:
    httpd = HTTPServer(("127.0.0.1", int(port.group(1))), Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

srv = socket.socket(socket.AF_UNIX)
srv.bind(qmp_path); srv.listen(4)
with open(pidfile, "w") as f:
    f.write(f"{os.getpid()}\n")
os.write(w, b"1")

state = {"status": "inmigrate" if incoming else "running", "fds": {}}
def reply(cmd, args, fds):
    if cmd in table:
        return table[cmd]
    if cmd == "getfd":
        state["fds"][args["fdname"]] = fds[0]
    elif cmd == "migrate":
        os.write(state["fds"].pop(args["uri"].removeprefix("fd:")), b"S" * 4096)
        state["status"] = "postmigrate"
    elif cmd == "migrate-incoming":
        os.read(state["fds"].pop(args["uri"].removeprefix("fd:")), 1 << 20)
        state["status"] = "paused"
    elif cmd == "query-migrate":
        return {"return": {"status": "completed"}}
    elif cmd == "query-status":
        return {"return": {"status": state["status"], "running": state["status"] == "running"}}
    elif cmd == "stop":
        state["status"] = "paused"
    elif cmd == "cont":
        state["status"] = "running"
    return {"return": {}}

while True:
    conn, _ = srv.accept()
    greeting = {"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}
    conn.sendall(json.dumps(greeting).encode() + b"\n")
    buf = b""
    fds = []
    while True:
        msg, anc, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", data[: len(data) - len(data) % 4]).tolist()
        if not msg:
            break
        buf += msg
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            cmd, args = req["execute"], req.get("arguments", {})
            with open(log_path, "a") as f:
                f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
            out = reply(cmd, args, fds)
            fds = []
            if out.get("hang"):
                continue
            if out.get("exit"):  # a VMM that rejects what it was given and quits
                os._exit(1)
            out = {k: v for k, v in out.items()}
            out["id"] = req.get("id")
            conn.sendall(json.dumps(out).encode() + b"\n")
            if cmd == "stop":
                conn.sendall(json.dumps({"event": "STOP", "data": {}}).encode() + b"\n")
            if cmd == "quit":
                os._exit(0)
    conn.close()
"""
