"""Processes the agent runs: spawning (pipes or a PTY), output pumping, input, signals.

Owns: one `ManagedProcess` per child and the `ProcessTable` that finds them by pid or
tag. Children run in their own session, so they outlive the client that started them
and a signal reaches their whole process group. Output goes into an `OutputLog`, so a
client may detach and re-attach without losing what was printed meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import signal
import struct
import subprocess
import termios
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pywrenn.envd.errors import Code, ConnectError, failed_precondition, not_found
from pywrenn.envd.output import OutputLog
from pywrenn.envd.users import User

PIPE_READ_SIZE = 32 * 1024
PTY_READ_SIZE = 16 * 1024
# After the child exits, keep reading this long for output still in flight; a grandchild
# that inherited the pipe must not keep the command "running" forever.
EXIT_DRAIN_S = 0.25
# How long SendSignal(SIGKILL) waits for the child to be reaped before it answers.
KILL_WAIT_S = 2.0


@dataclass(frozen=True)
class ProcessSpec:
    cmd: str
    args: tuple[str, ...] = ()
    envs: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cmd": self.cmd, "args": list(self.args), "envs": dict(self.envs)}
        if self.cwd is not None:
            out["cwd"] = self.cwd
        return out


@dataclass(frozen=True)
class PtySize:
    cols: int
    rows: int


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int
    exited: bool
    status: str
    error: str | None

    @classmethod
    def from_returncode(cls, code: int) -> ExitInfo:
        if code < 0:
            # Go's convention, which the SDK reports: -1, not exited, "signal: killed".
            name = _signal_name(-code)
            return cls(-1, False, f"signal: {name}", f"signal: {name}")
        status = f"exit status {code}"
        return cls(code, True, status, status if code else None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"exited": self.exited, "status": self.status}
        if self.exit_code:
            out["exitCode"] = self.exit_code
        if self.error is not None:
            out["error"] = self.error
        return out


class ManagedProcess:
    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        spec: ProcessSpec,
        *,
        tag: str | None,
        master_fd: int | None,
        log: OutputLog,
    ) -> None:
        self.pid = popen.pid
        self.spec = spec
        self.tag = tag
        self.log = log
        self._popen = popen
        self._master_fd = master_fd
        self._input_lock = threading.Lock()
        self._exit: ExitInfo | None = None
        self.finished_at: float | None = None
        self._done = threading.Event()
        self._exited = threading.Event()  # the child is reaped (output may still drain)
        self._deadline_timer: threading.Timer | None = None

    # -- state -------------------------------------------------------------------------
    @property
    def is_pty(self) -> bool:
        return self._master_fd is not None

    @property
    def exit_info(self) -> ExitInfo | None:
        return self._exit

    @property
    def running(self) -> bool:
        return not self._exited.is_set()

    def wait(self, timeout: float | None = None) -> ExitInfo | None:
        self._done.wait(timeout)
        return self._exit

    # -- input ---------------------------------------------------------------------------
    def write_stdin(self, data: bytes) -> None:
        if self.is_pty:
            raise failed_precondition(f"process {self.pid} has a PTY; send input as pty")
        stdin = self._popen.stdin
        if stdin is None:
            raise failed_precondition(f"process {self.pid} was started without stdin")
        with self._input_lock:
            try:
                stdin.write(data)
                stdin.flush()
            except (BrokenPipeError, ValueError):
                raise failed_precondition(f"process {self.pid}: stdin is closed") from None

    def write_pty(self, data: bytes) -> None:
        if self._master_fd is None:
            raise failed_precondition(f"process {self.pid} has no PTY; send input as stdin")
        with self._input_lock:
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self._master_fd, view)
                except OSError as exc:
                    raise failed_precondition(f"process {self.pid}: pty closed ({exc})") from exc
                view = view[written:]

    def close_stdin(self) -> None:
        if self.is_pty:
            raise failed_precondition(f"process {self.pid} has a PTY; send Ctrl-D (\\x04) for EOF")
        stdin = self._popen.stdin
        if stdin is None:
            return
        with self._input_lock, contextlib.suppress(OSError):
            stdin.close()

    # -- control -------------------------------------------------------------------------
    def send_signal(self, signum: int) -> None:
        if self._exited.is_set():
            raise not_found(f"process {self.pid} has already exited")
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            # The child left its own process group; signal it alone.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)
        if signum == signal.SIGKILL:
            # Return once the kill has taken effect, so a second kill reports not_found
            # and List no longer shows the process.
            self._exited.wait(KILL_WAIT_S)

    def resize(self, size: PtySize) -> None:
        if self._master_fd is None:
            raise failed_precondition(f"process {self.pid} has no PTY to resize")
        set_winsize(self._master_fd, size)

    def kill_at(self, seconds: float) -> None:
        """Kill the process after `seconds` (the Start request's deadline)."""
        timer = threading.Timer(max(seconds, 0.0), self._deadline_expired)
        timer.daemon = True
        self._deadline_timer = timer
        timer.start()

    def _deadline_expired(self) -> None:
        with contextlib.suppress(ConnectError):
            self.send_signal(signal.SIGKILL)

    # -- pumping -------------------------------------------------------------------------
    def start_pumping(self) -> None:
        """One thread reads the output and sees the child exit (its pidfd in the same
        selector): under TCG each thread started with a child cost ~2 ms of the exec's
        one vCPU. A kernel without pidfds (before 5.3) gets a second thread that waits."""
        try:
            exit_fd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            exit_fd = self._exit_pipe_with_waiter()
        threading.Thread(
            target=self._pump, args=(exit_fd,), name=f"pump-{self.pid}", daemon=True
        ).start()

    def _exit_pipe_with_waiter(self) -> int:
        """A pipe that becomes readable once a thread of its own has reaped the child."""
        wake_r, wake_w = os.pipe()
        threading.Thread(
            target=self._wait_child, args=(wake_w,), name=f"wait-{self.pid}", daemon=True
        ).start()
        return wake_r

    def _wait_child(self, wake_w: int) -> None:
        self._reap()
        with contextlib.suppress(OSError):
            os.write(wake_w, b"x")
        os.close(wake_w)

    def _reap(self) -> None:
        self._popen.wait()
        self._exited.set()

    def _pump(self, exit_fd: int) -> None:
        sources: dict[int, tuple[str, int]] = {}
        if self._master_fd is not None:
            sources[self._master_fd] = ("pty", PTY_READ_SIZE)
        else:
            for stream, pipe in (("stdout", self._popen.stdout), ("stderr", self._popen.stderr)):
                if pipe is not None:
                    sources[pipe.fileno()] = (stream, PIPE_READ_SIZE)
        selector = selectors.DefaultSelector()
        for fd in sources:
            selector.register(fd, selectors.EVENT_READ)
        selector.register(exit_fd, selectors.EVENT_READ)
        exited_at: float | None = None
        try:
            while sources:
                timeout = None
                if exited_at is not None:
                    timeout = EXIT_DRAIN_S - (time.monotonic() - exited_at)
                    if timeout <= 0:
                        break
                for key, _ in selector.select(timeout):
                    fd = int(key.fd)
                    if fd == exit_fd:  # the child has exited (or was reaped)
                        selector.unregister(exit_fd)
                        self._reap()
                        exited_at = time.monotonic()
                        continue
                    stream, size = sources[fd]
                    try:
                        data = os.read(fd, size)
                    except OSError as exc:
                        if exc.errno not in (errno.EIO, errno.EBADF):
                            raise
                        data = b""  # EIO: the PTY's last writer has gone
                    if data:
                        self.log.append(stream, data)
                    else:
                        selector.unregister(fd)
                        del sources[fd]
            self._reap()
        finally:
            selector.close()
            os.close(exit_fd)
            if not self._exited.is_set():  # the pump failed before the child ended
                threading.Thread(target=self._reap, name=f"wait-{self.pid}", daemon=True).start()
            self._finish()

    def _finish(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        for pipe in (self._popen.stdout, self._popen.stderr, self._popen.stdin):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if self._master_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._master_fd)
        returncode = self._popen.returncode
        self._exit = ExitInfo.from_returncode(returncode if returncode is not None else -9)
        self.finished_at = time.monotonic()
        self._done.set()
        self.log.close()


def spawn(
    spec: ProcessSpec,
    *,
    user: User,
    env: dict[str, str],
    cwd: str,
    pty_size: PtySize | None,
    stdin: bool,
    tag: str | None,
    backlog_bytes: int,
) -> ManagedProcess:
    """Start a child as `user`; raise `invalid_argument` when it cannot start."""
    if not os.path.isdir(cwd):
        raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{cwd}' does not exist")
    ids: dict[str, Any] = {}
    if not user.is_current:
        ids = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
    argv = [spec.cmd, *spec.args]
    master_fd: int | None = None
    try:
        if pty_size is None:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=cwd,
                start_new_session=True,
                bufsize=0,
                **ids,
            )
        else:
            master_fd, slave_fd = os.openpty()
            try:
                set_winsize(master_fd, pty_size)
                if not user.is_current:
                    os.fchown(slave_fd, user.uid, user.gid)
                popen = subprocess.Popen(
                    argv,
                    stdin=slave_fd,
                    stdout=slave_fd,
                    stderr=slave_fd,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=_take_controlling_tty,
                    **ids,
                )
            finally:
                os.close(slave_fd)
    except (OSError, subprocess.SubprocessError) as exc:
        if master_fd is not None:
            os.close(master_fd)
        raise ConnectError(
            Code.INVALID_ARGUMENT, f"error starting process {spec.cmd!r}: {_describe(exc)}"
        ) from exc
    proc = ManagedProcess(popen, spec, tag=tag, master_fd=master_fd, log=OutputLog(backlog_bytes))
    proc.start_pumping()
    return proc


class ProcessTable:
    """Processes by pid; finished ones stay reachable for a while so output is not lost."""

    def __init__(self, retention_s: float) -> None:
        self._retention_s = retention_s
        self._lock = threading.Lock()
        self._by_pid: dict[int, ManagedProcess] = {}

    def add(self, proc: ManagedProcess) -> None:
        with self._lock:
            self._prune()
            self._by_pid[proc.pid] = proc

    def ensure_tag_free(self, tag: str) -> None:
        with self._lock:
            for proc in self._by_pid.values():
                if proc.tag == tag and proc.running:
                    raise ConnectError(
                        Code.ALREADY_EXISTS, f"a running process already has tag {tag!r}"
                    )

    def find(self, *, pid: int | None, tag: str | None, finished: bool = False) -> ManagedProcess:
        """Look a process up by pid or tag; finished ones only when `finished` is true."""
        with self._lock:
            self._prune()
            candidates: list[ManagedProcess]
            if pid is not None:
                found = self._by_pid.get(pid)
                candidates = [found] if found is not None else []
            else:
                candidates = [p for p in self._by_pid.values() if p.tag == tag]
            # Prefer a running one when a tag was reused after an earlier process ended.
            candidates.sort(key=lambda p: p.running, reverse=True)
            for proc in candidates:
                if proc.running or finished:
                    return proc
        what = f"pid {pid}" if pid is not None else f"tag {tag!r}"
        raise not_found(f"process with {what} not found")

    def running(self) -> list[ManagedProcess]:
        with self._lock:
            return [p for p in self._by_pid.values() if p.running]

    def _prune(self) -> None:
        now = time.monotonic()
        stale = [
            pid
            for pid, proc in self._by_pid.items()
            if proc.finished_at is not None and now - proc.finished_at > self._retention_s
        ]
        for pid in stale:
            del self._by_pid[pid]


def set_winsize(fd: int, size: PtySize) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


def _take_controlling_tty() -> None:
    # Runs in the child between fork and exec: make the PTY (fd 0) its controlling
    # terminal, so job control, Ctrl-C and SIGWINCH on resize work as in a real terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _signal_name(signum: int) -> str:
    try:
        return (signal.strsignal(signum) or f"signal {signum}").lower()
    except ValueError:
        return f"signal {signum}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)
