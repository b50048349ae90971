"""The embedded ranker: ``transformers serve`` on a local model, as an OpenAI-compatible API.

With no ``ranker.base_url`` configured, cyclealign ranks with a local model (the embedded
SmolLM2) served by ``transformers serve`` on a free loopback port, so that a run needs no
API key and no network. The ranker client talks to it exactly as to a remote API.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

from cyclealign.errors import RankerError
from cyclealign.serving import ServerProcess

__all__ = ["EmbeddedServer", "serve_command"]

log = logging.getLogger(__name__)


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


class EmbeddedServer(ServerProcess):
    """Context manager running ``transformers serve <model_dir>`` on ``127.0.0.1:<free port>``.

    Example::

        with EmbeddedServer(model_dir, log_path=RunDir(run_dir).server_log) as server:
            ranker = Ranker(cfg, base_url=server.base_url, model=server.model, api_key="local", ...)

    The model is preloaded (``transformers serve`` pins it), and :meth:`start` returns once
    ``GET /health`` answers 200. The child's stdout and stderr are appended to ``log_path``;
    its environment is a copy of ``os.environ`` as the user has it
    (:class:`~cyclealign.serving.ServerProcess`).

    Args:
        model_dir: local model directory (safetensors + tokenizer + chat template).
        log_path: file the server's output is appended to (its folder is created).
        startup_timeout_s: how long to wait for ``/health``, seconds.
        host: loopback address to bind.
        device: ``--device`` for the server (``None``: the server's default, ``auto``).
        pid_path: file holding the server's process id while it runs (``RUN_DIR/server.pid``).

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
        pid_path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            f"the embedded ranker server (transformers serve {model_dir})",
            log_path=log_path,
            startup_timeout_s=startup_timeout_s,
            timeout_field="ranker.server_startup_timeout_s",
            error=RankerError,
            host=host,
            pid_path=pid_path,
        )
        self.model_dir = Path(model_dir)
        self.model = str(model_dir)
        self.device = device

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def command(self, port: int) -> list[str]:
        cmd = [*serve_command(), self.model, "--host", self.host, "--port", str(port)]
        if self.device is not None:
            cmd += ["--device", self.device]
        return cmd

    def start(self) -> None:
        """Start the server and wait for ``/health``; see the class docstring for errors."""
        if self.process is None and not self.model_dir.is_dir():
            raise RankerError(f"cannot start the embedded ranker: model directory {self.model_dir} not found")
        serve_command()  # unavailable: fail before a log file is opened
        super().start()
