"""A small HTTP server in this process: stdlib ``ThreadingHTTPServer`` in a daemon thread, and a
request handler base with the JSON send helpers every such server needs.

Used by the efficacy bench's rule black box (:mod:`cyclealign.efficacy.server`) and by the test
servers (``tests/scripted_api.py``, ``tests/vllm_server.py``), so that each of them holds only
its own routes and answers. A server that runs as a child process is :mod:`cyclealign.serving`'s.

Example::

    class Hello(JSONHandler):
        def do_GET(self):
            self.send_json(200, {"hello": "world"})

    with ThreadedHTTPServer(Hello, name="hello") as srv:
        urllib.request.urlopen(srv.url + "/")   # srv.url == "http://127.0.0.1:<free port>"

Stdlib only.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["JSONHandler", "ThreadedHTTPServer"]


class JSONHandler(BaseHTTPRequestHandler):
    """A quiet HTTP/1.1 (keep-alive) request handler with helpers to read a body and send one."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def read_body(self) -> bytes:
        """The request body: ``Content-Length`` bytes (``b""`` without one)."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_body(
        self,
        code: int,
        data: bytes,
        content_type: str | None,
        headers: dict[str, str] | None = None,
        limit: int | None = None,
    ) -> None:
        """Send status ``code`` with ``Content-Type`` (left out when None), ``Content-Length:
        len(data)``, then ``headers``, then the body; with ``limit``, only the first ``limit`` bytes
        of ``data`` are written (a truncated body)."""
        self.send_response(code)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data if limit is None else data[:limit])

    def send_json(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Send ``payload`` as ``application/json``: a ``str`` as it is (already JSON, or
        deliberately not), anything else through ``json.dumps``."""
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_body(code, data, "application/json", headers)


class _DaemonThreadingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # one daemon thread per connection: never joined, never blocks stop()


class ThreadedHTTPServer:
    """Serve ``handler`` on ``host:port`` from a daemon thread; a context manager (``start`` and
    ``stop`` also work, and ``stop`` is a no-op when not serving).

    Args:
        handler: the request handler class (a fresh subclass per server when it needs state:
            set a class attribute pointing at its owner).
        host: the address to listen on (default ``127.0.0.1``: this machine only).
        port: the port (0: a free one, chosen by the OS).
        name: the serving thread's name (seen in tracebacks and ``py-spy``).
        poll_interval_s: how often ``serve_forever`` checks for a shutdown request, seconds.
        server_class: a ``ThreadingHTTPServer`` subclass (default: one whose connection threads
            are daemons).

    Raises:
        OSError: on start, the port is taken or the address cannot be bound.
    """

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "http-server",
        poll_interval_s: float = 0.5,
        server_class: type[ThreadingHTTPServer] = _DaemonThreadingHTTPServer,
    ) -> None:
        self.handler, self.host, self.name = handler, host, name
        self._port, self._poll_interval_s, self._server_class = port, poll_interval_s, server_class
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def serving(self) -> bool:
        """Whether it is started and not stopped."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The port it listens on (or listened on, once stopped; the one asked for before it starts)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ThreadedHTTPServer":
        """Bind and start serving; returns at once (the socket accepts connections from now on)."""
        self._server = self._server_class((self.host, self._port), self.handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": self._poll_interval_s}, name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (connections still being answered finish in their own threads)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "ThreadedHTTPServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
