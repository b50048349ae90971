"""A real local HTTP server that plays an OpenAI-compatible chat API from a script.

Tests point the real ``openai`` client (through :class:`cyclealign.ranker.Ranker`) at it, so
retries, timeouts, dropped connections and HTTP errors are exercised over real sockets
instead of a mocked client. Stdlib only: ``http.server.ThreadingHTTPServer`` on
``127.0.0.1:<free port>``, served from a daemon thread.

Endpoints:

* ``POST /v1/chat/completions``: consumes the next scripted action (see below) or, once the
  script is empty, asks ``fallback(request_json)``; every request body is recorded;
* ``GET /v1/models``: one model, ``"scripted"``;
* ``GET /health``: 200 ``{"status": "ok"}``;
* anything else: 404.

Actions, consumed one per chat-completion request, in order:

* ``"text"`` or :class:`Reply` — a valid ``chat.completion`` whose message content is the text
  (``Reply(None)`` sends ``content: null``), with ``usage`` (token counts given, or estimated);
* :class:`Status` — an HTTP error status with optional headers and body, e.g.
  ``Status(429, headers={"Retry-After": "1"})``, ``Status(500)``, ``Status(401)``;
* :class:`Drop` — the connection is closed without any response;
* every action takes ``delay_s``: seconds to wait before answering (to trigger client timeouts).

Usage::

    with ScriptedAPI([Status(500), "[2] > [1]"]) as api:
        ranker = Ranker(cfg, base_url=api.base_url, model="scripted", api_key="sk-test", ...)
        result = ranker.rank(prompt, ["a", "b"], [])
    assert api.count == 2 and api.requests[1]["messages"][-1]["role"] == "user"
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Drop", "Reply", "ScriptedAPI", "Status"]


@dataclass
class Reply:
    """A successful chat completion.

    Attributes:
        text: the message content (``None`` sends ``"content": null``).
        prompt_tokens, completion_tokens: reported usage; ``None`` = a rough estimate
            (characters / 4 of the request's messages and of the reply).
        usage: ``False`` leaves ``usage`` out of the response (some servers do).
        finish_reason: the choice's ``finish_reason``.
        delay_s: seconds to wait before answering.
    """

    text: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage: bool = True
    finish_reason: str = "stop"
    delay_s: float = 0.0


@dataclass
class Status:
    """An HTTP error response.

    Attributes:
        code: the HTTP status (401, 404, 429, 500, 503, ...).
        headers: extra response headers, e.g. ``{"Retry-After": "1"}``.
        body: JSON-able body, or a str sent as is; ``None`` = an OpenAI-style
            ``{"error": {"message": "scripted <code>", ...}}``.
        delay_s: seconds to wait before answering.
    """

    code: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay_s: float = 0.0


@dataclass
class Drop:
    """Close the connection without sending a response (after ``delay_s`` seconds)."""

    delay_s: float = 0.0


Action = str | Reply | Status | Drop
Fallback = Callable[[dict[str, Any]], "Action"]


def _no_fallback(request: dict[str, Any]) -> Action:
    return Status(418, body={"error": {"message": "ScriptedAPI: script exhausted and no fallback given"}})


class ScriptedAPI:
    """The scripted server; a context manager (``start``/``stop`` also work).

    Args:
        script: actions consumed in order, one per ``POST /v1/chat/completions``.
        fallback: called with the request JSON when the script is empty; returns an action.
            Default: answers 418 (a status the ranker neither retries nor treats as fatal),
            and counts it in :attr:`unscripted`.

    Attributes:
        base_url: ``http://127.0.0.1:PORT/v1``.
        requests: every chat-completion request body received (parsed JSON), in order.
        request_headers: the headers of each of those requests (lower-case names).
        count: ``len(requests)``.
        unscripted: how many requests were answered by the fallback.
    """

    def __init__(self, script: Iterable[Action] = (), fallback: Fallback | None = None) -> None:
        self._script: deque[Action] = deque(script)
        self._fallback = fallback or _no_fallback
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self.unscripted = 0
        self._server: ThreadingHTTPServer | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "ScriptedAPI":
        api = self

        class Handler(_Handler):
            owner = api

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="scripted-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "ScriptedAPI":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port it listens (or listened, once stopped) on."""
        assert self._port is not None, "ScriptedAPI was never started"
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def remaining(self) -> int:
        """Scripted actions not consumed yet."""
        with self._lock:
            return len(self._script)

    def push(self, *actions: Action) -> None:
        """Append actions to the script."""
        with self._lock:
            self._script.extend(actions)

    def _next_action(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Action]:
        with self._lock:
            self.requests.append(body)
            self.request_headers.append(headers)
            index = len(self.requests)
            if self._script:
                return index, self._script.popleft()
            self.unscripted += 1
        return index, self._fallback(body)


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client gave up (timeout) before a delayed answer: expected in fault tests
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: ScriptedAPI
    protocol_version = "HTTP/1.1"  # keep-alive, as real API servers do

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send_json(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send_json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            model = {"id": "scripted", "object": "model", "owned_by": "tests"}
            self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path != "/v1/chat/completions":
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send_json(400, {"error": {"message": "invalid JSON body"}})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        index, action = self.owner._next_action(body, headers)
        if isinstance(action, str):
            action = Reply(action)
        if action.delay_s:
            time.sleep(action.delay_s)
        if isinstance(action, Drop):
            self.close_connection = True
            return  # the server closes the socket without a byte of response
        if isinstance(action, Status):
            payload = action.body
            if payload is None:
                payload = {"error": {"message": f"scripted {action.code}", "type": "scripted", "code": None}}
            self._send_json(action.code, payload, action.headers)
            return
        self._send_json(200, self._completion(index, body, action))

    @staticmethod
    def _completion(index: int, request: dict[str, Any], reply: Reply) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": f"chatcmpl-scripted-{index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "scripted"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text},
                    "finish_reason": reply.finish_reason,
                }
            ],
        }
        if reply.usage:
            prompt = reply.prompt_tokens
            if prompt is None:
                prompt = _estimate_tokens(json.dumps(request.get("messages", [])))
            completion = reply.completion_tokens
            if completion is None:
                completion = _estimate_tokens(reply.text or "")
            out["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        return out
