"""A real local HTTP server that plays an OpenAI-compatible chat API from a script.

Tests point the real ``openai`` client (through :class:`cyclealign.ranker.client.Ranker`) at it, so
retries, timeouts, dropped connections and HTTP errors are exercised over real sockets
instead of a mocked client. Stdlib only (:class:`cyclealign.local_http.ThreadedHTTPServer`:
``http.server.ThreadingHTTPServer`` on ``127.0.0.1:<free port>``, served from a daemon thread); one daemon thread per (keep-alive)
connection, so dozens of concurrent clients are served in parallel, not one after another.

Endpoints:

* ``POST /v1/chat/completions``: consumes the next scripted action (see below) or, once the
  script is empty, asks ``fallback(request_json)``; every request body is recorded;
* ``GET /v1/models``: one model, ``"scripted"``;
* ``GET /health``: 200 ``{"status": "ok"}``;
* the Batch API subset below;
* anything else: 404.

Actions, consumed one per chat-completion request, in order:

* ``"text"`` or :class:`Reply` — a valid ``chat.completion`` whose message content is the text
  (``Reply(None)`` sends ``content: null``), with ``usage`` (token counts given, or estimated);
* :class:`Status` — an HTTP error status with optional headers and body, e.g.
  ``Status(429, headers={"Retry-After": "1"})``, ``Status(500)``, ``Status(401)``;
* :class:`Drop` — the connection is closed without any response;
* :class:`Truncated` — a 200 whose ``Content-Length`` announces a whole chat completion but
  only the first half of its bytes are sent before the connection closes (the client sees an
  incomplete body: ``httpx.RemoteProtocolError``, i.e. ``openai.APIConnectionError``);
* :class:`Raw` — exactly the given status, content type and body (an HTML page, bad JSON,
  a ``502`` with text...);
* every action takes ``delay_s``: seconds to wait before answering (to trigger client
  timeouts), on top of the server-wide ``latency_s``.

Batch API (``POST /v1/files``, ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``,
``DELETE /v1/files/{id}``, ``POST /v1/batches``, ``GET /v1/batches``, ``GET /v1/batches/{id}``,
``POST /v1/batches/{id}/cancel``): an uploaded JSONL batch goes ``validating`` ->
``in_progress`` and is answered line by line, from the same script and fallback, when it is
retrieved for the ``batch_polls_to_complete``-th time; see :class:`ScriptedAPI`.

Usage::

    with ScriptedAPI([Status(500), "[2] > [1]"]) as api:
        ranker = Ranker(cfg, base_url=api.base_url, model="scripted", api_key="sk-test", ...)
        result = ranker.rank(prompt, ["a", "b"], [])
    assert api.count == 2 and api.requests[1]["messages"][-1]["role"] == "user"
    assert api.answered == [True, True]  # final once stopped; while serving, see wait_settled()
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import select
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from cyclealign.local_http import JSONHandler, ThreadedHTTPServer

__all__ = ["Action", "Drop", "Fallback", "OnRequest", "Raw", "Reply", "ScriptedAPI", "Status", "Truncated"]


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
    """Close the connection without sending a response (after ``delay_s`` seconds).

    In a batch: the line fails (``{"response": null, "error": {"code": "server_error", ...}}``
    in the error file).
    """

    delay_s: float = 0.0


@dataclass
class Truncated:
    """A 200 chat completion (content ``text``) cut off after half its bytes; the connection closes.

    The headers announce the ``Content-Length`` of the whole, valid body; only its first
    ``len // 2`` bytes are sent. Never counted as answered. In a batch: a failed line, like
    :class:`Drop`.
    """

    text: str = "[1] > [2]"
    delay_s: float = 0.0


@dataclass
class Raw:
    """An arbitrary response: ``code``, ``content_type``, extra ``headers`` and ``body`` sent as they are.

    In a batch: a line whose ``response`` has ``status_code=code`` and ``body`` = the body
    parsed as JSON when it is JSON, else the string.
    """

    code: int = 200
    body: str = "<html><body>bad gateway</body></html>"
    content_type: str = "text/html"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


Action = str | Reply | Status | Drop | Truncated | Raw
Fallback = Callable[[dict[str, Any]], "Action"]
OnRequest = Callable[[int, dict[str, Any]], None]


def _no_fallback(request: dict[str, Any]) -> Action:
    return Status(418, body={"error": {"message": "ScriptedAPI: script exhausted and no fallback given"}})


class ScriptedAPI:
    """The scripted server; a context manager (``start``/``stop`` also work).

    Args:
        script: actions consumed in order, one per ``POST /v1/chat/completions`` (or batch line).
        fallback: called with the request JSON when the script is empty; returns an action.
            Default: answers 418 (a status the ranker neither retries nor treats as fatal),
            and counts it in :attr:`unscripted`.
        on_request: called as ``on_request(index, body)`` (``index`` 1-based, as in
            ``requests[index - 1]``) for every chat request and batch line, in the handler
            thread, after the request is recorded and before its action runs (tests kill a
            client from here). It should not raise; if it does, the traceback goes to stderr
            and the request is answered anyway.
        batch_polls_to_complete: a batch is answered and ``completed`` at this many
            ``GET /v1/batches/{id}`` retrievals (before that: ``in_progress``).
        latency_s: seconds added before every chat-completion answer (on top of the action's
            ``delay_s``); not applied to batch lines. May be changed while serving.

    Attributes:
        base_url: ``http://127.0.0.1:PORT/v1``.
        requests: every chat-completion request body received (parsed JSON), in order
            (Batch API lines included).
        answered: parallel to ``requests``: True once a whole response (Reply/Status/Raw) was
            written and flushed, or, in a batch, once the line got a ``response``; False for
            Drop/Truncated, when the client was gone before the answer, or while pending.
        request_headers: the headers of each of those requests (lower-case names; ``{}`` for
            batch lines).
        count: ``len(requests)``.
        unscripted: how many requests were answered by the fallback.
        batch_requests: the bodies of the Batch API lines, in order.
        batch_creates, file_uploads: ``POST /v1/batches`` and ``POST /v1/files`` received.
    """

    def __init__(
        self,
        script: Iterable[Action] = (),
        fallback: Fallback | None = None,
        on_request: OnRequest | None = None,
        batch_polls_to_complete: int = 2,
        latency_s: float = 0.0,
    ) -> None:
        self._script: deque[Action] = deque(script)
        self._fallback = fallback or _no_fallback
        self._on_request = on_request
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._inflight = 0  # chat requests received whose outcome is not decided yet
        self._stopping = threading.Event()
        self.latency_s = latency_s
        self.requests: list[dict[str, Any]] = []
        self.answered: list[bool] = []
        self.request_headers: list[dict[str, str]] = []
        self.unscripted = 0
        self.batch_polls_to_complete = batch_polls_to_complete
        self.batch_requests: list[dict[str, Any]] = []
        self.batch_creates = 0
        self.file_uploads = 0
        self._files: dict[str, bytes] = {}
        self._file_objects: dict[str, dict[str, Any]] = {}
        self._file_serial = 0
        self._batches: dict[str, dict[str, Any]] = {}
        self._http: ThreadedHTTPServer | None = None
        self._port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "ScriptedAPI":
        api = self

        class Handler(_Handler):
            owner = api

        self._stopping.clear()
        self._http = ThreadedHTTPServer(Handler, name="scripted-api", poll_interval_s=0.02, server_class=_Server).start()
        self._port = self._http.port
        return self

    def stop(self) -> None:
        """Stop serving. Requests still waiting out a delay are dropped (not answered), then
        :attr:`answered` is final."""
        if self._http is not None:
            self._stopping.set()
            self.wait_settled(5.0)
            self._http.stop()
            self._http = None

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

    def wait_settled(self, timeout_s: float = 5.0) -> bool:
        """Wait until every chat request received has its outcome in :attr:`answered`.

        A client can read a response a moment before its handler thread records it as
        answered; call this before asserting on :attr:`answered` while the server runs
        (:meth:`stop` calls it). Returns False if requests were still in flight at the timeout.
        """
        with self._settled:
            return self._settled.wait_for(lambda: self._inflight == 0, timeout=timeout_s)

    def _settle(self) -> None:
        with self._settled:
            self._inflight -= 1
            self._settled.notify_all()

    def _next_action(self, body: dict[str, Any], headers: dict[str, str], batch: bool = False) -> tuple[int, Action]:
        """Record a request, run the hook and pick its action: the script's next, else the fallback's.

        An online request (``batch=False``) counts as in flight until the caller's :meth:`_settle`.
        """
        with self._lock:
            if not batch:
                self._inflight += 1
            self.requests.append(body)
            self.answered.append(False)
            self.request_headers.append(headers)
            if batch:
                self.batch_requests.append(body)
            index = len(self.requests)
            scripted = self._script.popleft() if self._script else None
            if scripted is None:
                self.unscripted += 1
        if self._on_request is not None:
            try:
                self._on_request(index, body)
            except Exception:  # a broken hook must not take the server down
                traceback.print_exc(file=sys.stderr)
        action = scripted if scripted is not None else self._fallback(body)
        return index, Reply(action) if isinstance(action, str) else action

    def _mark_answered(self, index: int) -> None:
        with self._lock:
            self.answered[index - 1] = True

    # -- Batch API -------------------------------------------------------------------------
    def _new_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        """Store ``data`` and return its FileObject."""
        with self._lock:
            return self._new_file_locked(data, filename, purpose)

    def _new_file_locked(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        self._file_serial += 1
        file_id = f"file-{self._file_serial}"
        self._files[file_id] = data
        self._file_objects[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        return dict(self._file_objects[file_id])

    def _file(self, file_id: str) -> tuple[dict[str, Any], bytes] | None:
        with self._lock:
            if file_id not in self._files:
                return None
            return dict(self._file_objects[file_id]), self._files[file_id]

    def _delete_file(self, file_id: str) -> bool:
        with self._lock:
            self._file_objects.pop(file_id, None)
            return self._files.pop(file_id, None) is not None

    def _create_batch(self, req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """``POST /v1/batches``: (status, Batch object or error)."""
        with self._lock:
            self.batch_creates += 1
            input_file_id = req.get("input_file_id")
            if input_file_id not in self._files:
                return 400, {"error": {"message": f"no input file {input_file_id!r}", "type": "invalid_request_error"}}
            now = int(time.time())
            batch_id = f"batch-{len(self._batches) + 1}"
            batch = {
                "id": batch_id,
                "object": "batch",
                "endpoint": req.get("endpoint", "/v1/chat/completions"),
                "input_file_id": input_file_id,
                "completion_window": req.get("completion_window", "24h"),
                "status": "validating",
                "created_at": now,
                "expires_at": now + 24 * 3600,
                "in_progress_at": None,
                "finalizing_at": None,
                "completed_at": None,
                "cancelling_at": None,
                "cancelled_at": None,
                "output_file_id": None,
                "error_file_id": None,
                "errors": None,
                "metadata": req.get("metadata"),
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "_polls": 0,
            }
            self._batches[batch_id] = batch
            return 200, _public(batch)

    def _list_batches(self) -> dict[str, Any]:
        with self._lock:
            data = [_public(b) for b in reversed(self._batches.values())]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }

    def _retrieve_batch(self, batch_id: str) -> dict[str, Any] | None:
        """``GET /v1/batches/{id}``: count the poll, advance the state (answering the lines at the last poll)."""
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return None
            run = False
            if batch["status"] in ("validating", "in_progress"):
                batch["_polls"] += 1
                now = int(time.time())
                batch["in_progress_at"] = batch["in_progress_at"] or now
                if batch["_polls"] >= self.batch_polls_to_complete:
                    # claimed under the lock: a concurrent retrieval cannot answer the batch twice
                    batch["status"] = "finalizing"
                    batch["finalizing_at"] = now
                    run = True
                else:
                    batch["status"] = "in_progress"
            data = self._files.get(batch["input_file_id"], b"")
        if run:
            self._run_batch(batch, data)
        with self._lock:
            return _public(batch)

    def _cancel_batch(self, batch_id: str) -> dict[str, Any] | None:
        """``POST /v1/batches/{id}/cancel``: a batch not answered yet becomes ``cancelled``."""
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return None
            if batch["status"] in ("validating", "in_progress"):
                now = int(time.time())
                batch["status"] = "cancelled"
                batch["cancelling_at"] = batch["cancelled_at"] = now
            return _public(batch)

    def _run_batch(self, batch: dict[str, Any], data: bytes) -> None:
        """Answer every input line from the script/fallback; write the output and error files."""
        out: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for n, line in enumerate(data.decode(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                body = item["body"]
                custom_id = item["custom_id"]
            except (ValueError, KeyError, TypeError) as exc:
                errors.append(
                    {
                        "id": f"batch_req_{batch['id']}_{n}",
                        "custom_id": None,
                        "response": None,
                        "error": {"code": "invalid_request", "message": f"line {n}: {exc!r}"},
                    }
                )
                continue
            index, action = self._next_action(body, {}, batch=True)
            row: dict[str, Any] = {"id": f"batch_req_{index}", "custom_id": custom_id, "response": None, "error": None}
            request_id = f"req_{index}"
            if isinstance(action, Reply):
                completion = _Handler._completion(index, body, action)
                row["response"] = {"status_code": 200, "request_id": request_id, "body": completion}
            elif isinstance(action, Status):
                payload = _status_body(action)
                if isinstance(payload, str):
                    payload = _maybe_json(payload)
                row["response"] = {"status_code": action.code, "request_id": request_id, "body": payload}
            elif isinstance(action, Raw):
                row["response"] = {"status_code": action.code, "request_id": request_id, "body": _maybe_json(action.body)}
            else:  # Drop, Truncated: the line fails
                row["error"] = {"code": "server_error", "message": f"scripted {type(action).__name__}"}
            if row["response"] is not None:
                out.append(row)
                self._mark_answered(index)
            else:
                errors.append(row)
        with self._lock:
            if out:
                batch["output_file_id"] = self._new_file_locked(_jsonl(out), "batch_output.jsonl", "batch_output")["id"]
            if errors:
                batch["error_file_id"] = self._new_file_locked(_jsonl(errors), "batch_errors.jsonl", "batch_output")["id"]
            ok = sum(1 for r in out if r["response"]["status_code"] == 200)
            total = len(out) + len(errors)
            batch["request_counts"] = {"total": total, "completed": ok, "failed": total - ok}
            batch["status"] = "completed"
            batch["completed_at"] = int(time.time())


def _public(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _status_body(action: Status) -> Any:
    if action.body is None:
        return {"error": {"message": f"scripted {action.code}", "type": "scripted", "code": None}}
    return action.body


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # one daemon thread per connection: never joined, never blocks stop()
    request_queue_size = 256  # dozens of clients connect at once in concurrency tests

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client gave up (timeout) before a delayed answer: expected in fault tests
        super().handle_error(request, client_address)


class _Handler(JSONHandler):
    """HTTP/1.1 keep-alive, as real API servers do (:class:`~cyclealign.local_http.JSONHandler`)."""

    owner: ScriptedAPI
    disable_nagle_algorithm = True  # headers and body leave at once (no 40 ms delayed-ACK stall)

    # -- helpers ---------------------------------------------------------------------------
    def _send_error(self, code: int, message: str) -> None:
        """An OpenAI-style ``invalid_request_error`` with ``message``."""
        self.send_json(code, {"error": {"message": message, "type": "invalid_request_error"}})

    def _read_body(self) -> bytes:
        """The request body: ``Content-Length`` bytes, or the chunks of a chunked body."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _client_gone(self) -> bool:
        """Whether the client closed its end (e.g. it timed out) while the answer was delayed."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _path(self) -> list[str]:
        """The URL path's segments, query string dropped: ``/v1/files/x/content`` -> ``["v1", "files", "x", "content"]``."""
        return [p for p in urlsplit(self.path).path.split("/") if p]

    # -- routes ----------------------------------------------------------------------------
    def do_GET(self) -> None:
        parts = self._path()
        if parts == ["health"]:
            self.send_json(200, {"status": "ok"})
        elif parts == ["v1", "models"]:
            model = {"id": "scripted", "object": "model", "created": 0, "owned_by": "tests"}
            self.send_json(200, {"object": "list", "data": [model]})
        elif parts == ["v1", "batches"]:
            self.send_json(200, self.owner._list_batches())
        elif len(parts) == 3 and parts[:2] == ["v1", "batches"]:
            batch = self.owner._retrieve_batch(parts[2])
            if batch is None:
                self._send_error(404, f"no batch {parts[2]}")
            else:
                self.send_json(200, batch)
        elif len(parts) in (3, 4) and parts[:2] == ["v1", "files"] and parts[3:] in ([], ["content"]):
            found = self.owner._file(parts[2])
            if found is None:
                self._send_error(404, f"no file {parts[2]}")
            elif len(parts) == 3:
                self.send_json(200, found[0])
            else:
                self.send_body(200, found[1], "application/octet-stream")
        else:
            self._send_error(404, f"no route {self.path}")

    def do_DELETE(self) -> None:
        parts = self._path()
        if len(parts) == 3 and parts[:2] == ["v1", "files"] and self.owner._delete_file(parts[2]):
            self.send_json(200, {"id": parts[2], "object": "file", "deleted": True})
        else:
            self._send_error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        raw = self._read_body()
        parts = self._path()
        if parts == ["v1", "files"]:
            self._upload(raw)
        elif parts == ["v1", "batches"]:
            try:
                req = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self.send_json(400, {"error": {"message": "invalid JSON body"}})
                return
            self.send_json(*self.owner._create_batch(req))
        elif len(parts) == 4 and parts[:2] == ["v1", "batches"] and parts[3] == "cancel":
            batch = self.owner._cancel_batch(parts[2])
            if batch is None:
                self._send_error(404, f"no batch {parts[2]}")
            else:
                self.send_json(200, batch)
        elif parts == ["v1", "chat", "completions"]:
            self._chat(raw)
        else:
            self._send_error(404, f"no route {self.path}")

    def _chat(self, raw: bytes) -> None:
        """``POST /v1/chat/completions``: record, pick the action, wait, answer (or not)."""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self.send_json(400, {"error": {"message": "invalid JSON body"}})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        index, action = self.owner._next_action(body, headers)
        try:
            self._answer(index, body, action)
        finally:
            self.owner._settle()

    def _answer(self, index: int, body: dict[str, Any], action: Action) -> None:
        """Run ``action`` for request ``index``; mark it answered once a whole response is out."""
        assert not isinstance(action, str)
        wait = self.owner.latency_s + action.delay_s
        if wait > 0 and self.owner._stopping.wait(wait):
            self.close_connection = True
            return  # the server is stopping: not answered
        if isinstance(action, Drop):
            self.close_connection = True
            return  # the server closes the socket without a byte of response
        if self._client_gone():
            self.close_connection = True
            return  # nobody to answer: not answered
        try:
            if isinstance(action, Truncated):
                data = json.dumps(self._completion(index, body, Reply(action.text))).encode()
                self.send_body(200, data, "application/json", limit=len(data) // 2)
                self.wfile.flush()
                self.close_connection = True
                return  # never answered
            if isinstance(action, Raw):
                self.send_body(action.code, action.body.encode(), action.content_type, action.headers)
            elif isinstance(action, Status):
                self.send_json(action.code, _status_body(action), action.headers)
            else:
                self.send_json(200, self._completion(index, body, action))
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return  # the client went away: not answered
        self.owner._mark_answered(index)

    def _upload(self, raw: bytes) -> None:
        """``POST /v1/files``: a multipart form with ``purpose`` and ``file``."""
        head = f"Content-Type: {self.headers.get('Content-Type')}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        fields: dict[str, tuple[str | None, bytes]] = {}
        if msg.is_multipart():
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if isinstance(name, str):
                    fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
        with self.owner._lock:
            self.owner.file_uploads += 1
        if "file" not in fields:
            self._send_error(400, "multipart field 'file' missing")
            return
        purpose = fields.get("purpose", (None, b"batch"))[1].decode()
        self.send_json(200, self.owner._new_file(fields["file"][1], fields["file"][0] or "upload", purpose))

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
