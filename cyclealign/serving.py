"""A local model server as a child process: start it on a loopback port, wait for ``/health``,
keep its log, stop it (the embedded ranker's ``transformers serve`` and the policy's vLLM server).

A server never outlives the run that started it: it is stopped at exit (a SIGTERM or Ctrl-C
of the run included), on Linux it gets SIGTERM when its parent dies however it dies (SIGKILL,
the OOM killer: ``PR_SET_PDEATHSIG``), and its pid file lets the next run of the same
directory stop one left behind anyway (:func:`reap_stale_server`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

from cyclealign.errors import CycleAlignError

__all__ = [
    "ServerProcess", "free_port", "port_in_use", "process_start", "reap_stale_server", "stop_process_group", "tied_to_parent",
]

log = logging.getLogger(__name__)

_STOP_GRACE_S = 10.0
_POLL_S = 0.25


# Run by the child before it becomes the server: SIGTERM when the parent dies (Linux
# prctl(PR_SET_PDEATHSIG), kept across exec), then exec the server's command. If the parent is
# already gone (it died between fork and prctl), exit instead of starting an orphan.
_ORPHAN_GUARD = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(70)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def tied_to_parent(cmd: list[str]) -> list[str]:
    """``cmd`` started through :data:`_ORPHAN_GUARD` on Linux (the server process gets SIGTERM
    when this process dies, even by SIGKILL), ``cmd`` itself elsewhere. The guard ``exec``s the
    command, so the process id and ``/proc/PID/cmdline`` are the server's own.

    >>> tied_to_parent(["vllm", "serve", "m"])[-3:]
    ['vllm', 'serve', 'm']
    """
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-c", _ORPHAN_GUARD, str(os.getpid()), *cmd]


def process_start(pid: int) -> int | None:
    """When a live process started (``/proc/PID/stat`` field 22, clock ticks since boot): with
    the pid it names one process for good, whatever its title becomes and however pids are
    reused. None when it is gone, a zombie, or there is no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    if not fields or fields[0] == b"Z":
        return None
    return int(fields[19])


def reap_stale_server(pid_path: str | os.PathLike[str], grace_s: float = _STOP_GRACE_S) -> int | None:
    """Stop a server that an earlier, killed run left behind: ``pid_path`` (written by
    :class:`ServerProcess`) names a process that is still the one started then (the same pid and
    start time, :func:`process_start`); its process group gets SIGTERM, then SIGKILL after
    ``grace_s`` seconds. The pid file is removed. Call it only while holding the run directory's
    lock (no live run owns the server).

    Returns:
        The stopped server's process id, or None (no pid file, the process is gone, or the
        pid now belongs to another program).
    """
    path = Path(pid_path)
    try:
        record = json.loads(path.read_text())
        pid, start, command = int(record["pid"]), record["start"], list(record["command"])
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)
        return None
    path.unlink(missing_ok=True)
    if start is None or process_start(pid) != start:
        return None
    log.warning("stopping a server left by an earlier run (pid %d: %s)", pid, " ".join(command))
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return pid
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if process_start(pid) != start:
                return pid
            time.sleep(_POLL_S)
    return pid


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = _STOP_GRACE_S) -> int:
    """Stop a child started with ``start_new_session=True`` and everything it started: SIGTERM to
    its process group, SIGKILL after ``grace_s`` seconds. Returns its exit code."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)  # start_new_session: pgid == pid
        except (ProcessLookupError, PermissionError):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %.0f s; killing it", proc.pid, grace_s)
    return proc.wait()


def free_port(host: str) -> int:
    """A TCP port nothing listens on at ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound now (another process listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class ServerProcess:
    """Context manager running ``command(port)`` as a child process until ``GET /health`` answers 200.

    Subclasses give :meth:`command` (the argv for a port) and may extend :meth:`environment`.
    The child's stdout and stderr are appended to ``log_path``; it runs in its own process
    group, so :meth:`stop` stops its children too.

    Args:
        name: what the server is, for messages (``"the embedded ranker server (transformers serve m)"``).
        log_path: file the server's output is appended to (its folder is created).
        startup_timeout_s: how long to wait for ``/health``, seconds.
        timeout_field: the config field that sets ``startup_timeout_s`` (named in the timeout error).
        error: the :class:`~cyclealign.errors.CycleAlignError` subclass raised on failure.
        host: loopback address to bind.
        port: a fixed port; None = a free one (a fresh one is tried if another process takes it first).
        pid_path: file that holds the running server's process id (its process group's) and
            command as JSON, written at start and removed at stop (:func:`reap_stale_server`
            reads it); None = none.

    Attributes:
        port, process, pid, returncode: the port in use, the running ``Popen`` (None when
            stopped), and the last process's id and exit code.

    Raises:
        error: the fixed port is in use, the server exits during startup (with the last 20
            lines of its log), or ``/health`` does not answer within ``startup_timeout_s``.
    """

    def __init__(
        self,
        name: str,
        *,
        log_path: str | os.PathLike[str],
        startup_timeout_s: float,
        timeout_field: str,
        error: type[CycleAlignError],
        host: str = "127.0.0.1",
        port: int | None = None,
        pid_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.pid_path = Path(pid_path) if pid_path is not None else None
        self.log_path = Path(log_path)
        self.startup_timeout_s = startup_timeout_s
        self.timeout_field = timeout_field
        self.error = error
        self.host = host
        self.fixed_port = port
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.returncode: int | None = None
        self._log_offset = 0

    def command(self, port: int) -> list[str]:
        """The argv that starts the server on ``port``."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """The child's environment: a copy of ``os.environ`` as the user has it (a hub id not yet
        downloaded is fetched by the server; ``HF_HUB_OFFLINE`` is the user's to set), unbuffered."""
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    @property
    def root_url(self) -> str:
        """``http://HOST:PORT`` (no ``/v1``)."""
        if self.port is None:
            raise self.error(f"{self.name} is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        return f"{self.root_url}/health"

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait for ``/health``; see the class docstring for errors."""
        if self.process is not None:
            return
        if self.fixed_port is not None and port_in_use(self.host, self.fixed_port):
            raise self.error(f"cannot start {self.name}: port {self.fixed_port} on {self.host} is already in use")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = self.environment()
        for attempt in range(3):  # a fresh port if another process took ours meanwhile
            self.port = self.fixed_port or free_port(self.host)
            cmd = self.command(self.port)
            with open(self.log_path, "ab") as logf:
                self._log_offset = logf.tell()
                logf.write(f"$ {' '.join(cmd)}\n".encode())
                logf.flush()
                log.info("starting %s: %s (log: %s)", self.name, " ".join(cmd), self.log_path)
                try:
                    self.process = subprocess.Popen(
                        tied_to_parent(cmd), stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
                        start_new_session=True,
                    )
                except OSError as e:
                    raise self.error(f"cannot start {self.name}: {cmd[0]}: {e.strerror or e}") from None
                self.pid = self.process.pid
            if self.pid_path is not None:
                record = {"pid": self.pid, "start": process_start(self.pid), "command": cmd}
                self.pid_path.write_text(json.dumps(record) + "\n")
            try:
                self._wait_healthy()
                return
            except CycleAlignError:
                tail = self.log_tail()
                self.stop()
                if self.fixed_port is None and attempt < 2 and any("address already in use" in line.lower() for line in tail):
                    continue
                raise

    def _wait_healthy(self) -> None:
        assert self.process is not None
        t0 = time.monotonic()
        deadline = t0 + self.startup_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                tail = "\n".join(self.log_tail())
                raise self.error(f"{self.name} exited with code {code} during startup; last lines of {self.log_path}:\n{tail}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=5) as r:
                    if r.status == 200:
                        log.info("%s ready at %s after %.1f s", self.name, self.root_url, time.monotonic() - t0)
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                tail = "\n".join(self.log_tail())
                raise self.error(
                    f"{self.name} did not answer {self.health_url} within {self.startup_timeout_s:g} s "
                    f"({self.timeout_field}); last lines of {self.log_path}:\n{tail}"
                )
            time.sleep(_POLL_S)

    def stop(self) -> None:
        """Stop the server: SIGTERM to its process group, then SIGKILL after 10 s. Idempotent."""
        proc, self.process = self.process, None
        if proc is None:
            return
        stop_process_group(proc)
        self.returncode = proc.returncode
        self.pid = proc.pid
        if self.pid_path is not None:
            self.pid_path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last ``lines`` lines this server wrote to its log (progress bars collapsed)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return []
        out: deque[str] = deque(maxlen=lines)
        for line in text.splitlines():
            line = line.rsplit("\r", 1)[-1]  # tqdm redraws with \r: keep the last state
            if line.strip():
                out.append(line)
        return list(out)
