"""The embedded ranker: ``transformers serve`` on a local model, as an OpenAI-compatible API.

With no ``ranker.base_url`` configured, cyclealign ranks with a local model (the embedded
SmolLM2) served by ``transformers serve`` on a free loopback port, so that a run needs no
API key and no network. The ranker client talks to it exactly as to a remote API.
"""

from __future__ import annotations

import importlib.util
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

from cyclealign.errors import RankerError

__all__ = ["EmbeddedServer", "serve_command"]

log = logging.getLogger(__name__)

_STOP_GRACE_S = 10.0
_POLL_S = 0.25


def serve_command() -> list[str]:
    """The argv prefix that runs ``transformers serve`` with this interpreter's transformers.

    ``python -m transformers.cli.transformers`` when that module exists (transformers >= 5),
    else the ``transformers`` console script next to ``sys.executable``.

    Raises:
        RankerError: neither exists (transformers[serving] not installed in this environment).
    """
    try:
        has_module = importlib.util.find_spec("transformers.cli.transformers") is not None
    except ModuleNotFoundError:
        has_module = False
    if has_module:
        return [sys.executable, "-m", "transformers.cli.transformers", "serve"]
    script = Path(sys.executable).parent / "transformers"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "serve"]
    raise RankerError(
        "cannot start the embedded ranker: `transformers serve` is not available in this environment "
        "(install it with: pip install 'transformers[serving]>=5')"
    )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedServer:
    """Context manager running ``transformers serve <model_dir>`` on ``127.0.0.1:<free port>``.

    Example::

        with EmbeddedServer(model_dir, log_path=run_dir / "server.log") as server:
            ranker = Ranker(cfg, base_url=server.base_url, model=server.model, api_key="local", ...)

    The model is preloaded (``transformers serve`` pins it), and :meth:`start` returns once
    ``GET /health`` answers 200. The child's stdout and stderr are appended to ``log_path``;
    its environment is a copy of ``os.environ`` with ``HF_HUB_OFFLINE=1``.

    Args:
        model_dir: local model directory (safetensors + tokenizer + chat template).
        log_path: file the server's output is appended to (its folder is created).
        startup_timeout_s: how long to wait for ``/health``, seconds.
        host: loopback address to bind.
        device: ``--device`` for the server (``None``: the server's default, ``auto``).

    Attributes:
        base_url: ``http://127.0.0.1:PORT/v1``, for the OpenAI client (set once started).
        model: the model name to send: the model directory as given, as a string.
        process: the ``subprocess.Popen`` of the server (``None`` before start / after stop).
        pid, returncode: the last server process's id and exit code (set by :meth:`stop`).

    Raises:
        RankerError: ``transformers serve`` is unavailable, the model dir is missing, the
            server exits during startup (with the last 20 lines of its log), or ``/health``
            does not answer 200 within ``startup_timeout_s``.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        log_path: str | os.PathLike[str],
        startup_timeout_s: float = 300.0,
        host: str = "127.0.0.1",
        device: str | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model = str(model_dir)
        self.log_path = Path(log_path)
        self.startup_timeout_s = startup_timeout_s
        self.host = host
        self.device = device
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.returncode: int | None = None
        self._log_offset = 0

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RankerError("the embedded ranker server is not running")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.port}/health"

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "EmbeddedServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait for ``/health``; see the class docstring for errors."""
        if self.process is not None:
            return
        if not self.model_dir.is_dir():
            raise RankerError(f"cannot start the embedded ranker: model directory {self.model_dir} not found")
        prefix = serve_command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["HF_HUB_OFFLINE"] = "1"
        env.setdefault("PYTHONUNBUFFERED", "1")
        for attempt in range(3):  # a fresh port if another process took ours meanwhile
            self.port = _free_port(self.host)
            cmd = [*prefix, self.model, "--host", self.host, "--port", str(self.port)]
            if self.device is not None:
                cmd += ["--device", self.device]
            with open(self.log_path, "ab") as logf:
                self._log_offset = logf.tell()
                logf.write(f"$ {' '.join(cmd)}\n".encode())
                logf.flush()
                log.info("starting embedded ranker: %s (log: %s)", " ".join(cmd), self.log_path)
                self.process = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # its own process group: stop() signals the whole group
                )
                self.pid = self.process.pid
            try:
                self._wait_healthy()
                return
            except RankerError:
                tail = self.log_tail()
                self.stop()
                if attempt < 2 and any("address already in use" in line.lower() for line in tail):
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
                raise RankerError(
                    f"the embedded ranker server (transformers serve {self.model}) exited with code {code} "
                    f"during startup; last lines of {self.log_path}:\n{tail}"
                )
            try:
                with urllib.request.urlopen(self.health_url, timeout=5) as r:
                    if r.status == 200:
                        log.info("embedded ranker ready at %s after %.1f s", self.base_url, time.monotonic() - t0)
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                tail = "\n".join(self.log_tail())
                raise RankerError(
                    f"the embedded ranker server did not answer {self.health_url} within "
                    f"{self.startup_timeout_s:g} s (ranker.server_startup_timeout_s); "
                    f"last lines of {self.log_path}:\n{tail}"
                )
            time.sleep(_POLL_S)

    def stop(self) -> None:
        """Stop the server: SIGTERM to its process group, then SIGKILL after 10 s. Idempotent."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("embedded ranker did not stop within %.0f s; killing it", _STOP_GRACE_S)
                self._signal(proc, signal.SIGKILL)
                proc.wait()
        self.returncode = proc.returncode
        self.pid = proc.pid

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)  # start_new_session: pgid == pid
        except (ProcessLookupError, PermissionError):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass

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
