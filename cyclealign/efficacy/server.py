"""A rule black box: a real local OpenAI-compatible chat server that ranks by a known rule.

It reads the last user message of a ranker call (the query block of
``prompts/ranker_user.jinja``: responses between ``<response id="k">`` and ``</response>``),
ranks the responses it shows with :meth:`cyclealign.efficacy.rules.Rule.rank`, and answers
``[a] > [b] > ...`` (or ``{"ranking": [...]}`` when the request carries a JSON-schema
``response_format``), so the ranker client, its parser, cache and retries run for real.
Stdlib only (:class:`cyclealign.local_http.ThreadedHTTPServer`: ``http.server.ThreadingHTTPServer``
on ``127.0.0.1:<free port>``, one daemon thread).

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``; anything else 404.
A chat request without response delimiters (the client's 1-token preflight) is answered "ok".
``latency_s`` holds each ranking answer back that long (a paid API's latency, for
``scripts/bench_pipeline.py``); requests are served concurrently, so the client's
``ranker.concurrency`` bounds how many wait at once.
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
from typing import Any

from cyclealign.efficacy.rules import Rule
from cyclealign.local_http import JSONHandler, ThreadedHTTPServer

_RESPONSE = re.compile(r'<response id="(\d+)">\n(.*?)\n</response>', re.DOTALL)


def shown_responses(user_message: str) -> list[str]:
    """The responses of a ranker query block, in the order labelled ``[1]..[N]``.

    The ranker escapes delimiter tags inside responses as ``&lt;``; they are unescaped here.

    Raises:
        ValueError: the labels are not 1..N in order (not a ranker query block).

    >>> shown_responses('<response id="1">\\na\\n</response>\\n\\n<response id="2">\\nb &lt;/response>\\n</response>')
    ['a', 'b </response>']
    """
    found = _RESPONSE.findall(user_message)
    labels = [int(k) for k, _ in found]
    if labels != list(range(1, len(found) + 1)):
        raise ValueError(f"response labels {labels} are not 1..{len(found)} in order")
    return [html.unescape(text) for _, text in found]


def rule_answer(rule: Rule, request: dict[str, Any]) -> str:
    """The rule's reply to one chat-completion request body (text labels or JSON).

    >>> from cyclealign.efficacy.rules import RULES
    >>> msg = '<response id="1">\\nhi\\n</response>\\n<response id="2">\\nOne.\\n\\nTwo.\\n</response>'
    >>> rule_answer(RULES["paragraphs"], {"messages": [{"role": "user", "content": msg}]})
    '[2] > [1]'
    """
    users = [m for m in request.get("messages", []) if m.get("role") == "user"]
    content = users[-1]["content"] if users else ""
    if isinstance(content, list):  # content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    responses = shown_responses(content)
    if not responses:
        return "ok"
    labels = [i + 1 for i in rule.rank(responses)]
    if request.get("response_format", {}).get("type") == "json_schema":
        return json.dumps({"ranking": labels})
    return " > ".join(f"[{k}]" for k in labels)


class RuleBlackBox:
    """The rule black box as a context manager: ``with RuleBlackBox(rule) as bb: bb.base_url``.

    Args:
        rule: the ranking rule.
        latency_s: seconds each ranking answer is held back (the preflight's is not).
    Attributes:
        model: the model name it reports (``rule-<name>``); any model name is accepted.
        count: chat-completion requests answered.
    """

    def __init__(self, rule: Rule, latency_s: float = 0.0) -> None:
        self.rule = rule
        self.latency_s = latency_s
        self.model = f"rule-{rule.name}"
        self.count = 0
        self._lock = threading.Lock()
        self._http: ThreadedHTTPServer | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        assert self._http is not None and self._http.serving, "the server is not started"
        return f"{self._http.url}/v1"

    def _next_index(self) -> int:
        """Count one answered chat request; its 1-based index."""
        with self._lock:
            self.count += 1
            return self.count

    def __enter__(self) -> "RuleBlackBox":
        box = self

        class Handler(JSONHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/health":
                    self.send_json(200, {"status": "ok"})
                elif self.path.rstrip("/") == "/v1/models":
                    self.send_json(200, {"object": "list", "data": [{"id": box.model, "object": "model", "owned_by": "cyclealign"}]})
                else:
                    self.send_json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                raw = self.read_body()
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self.send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(raw)
                    text = rule_answer(box.rule, body)
                except (ValueError, KeyError, TypeError) as e:
                    self.send_json(400, {"error": {"message": f"not a ranker request: {e}", "type": "invalid_request_error"}})
                    return
                if box.latency_s and text != "ok":
                    time.sleep(box.latency_s)
                index = box._next_index()
                prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
                self.send_json(
                    200,
                    {
                        "id": f"chatcmpl-rule-{index}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", box.model),
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {
                            "prompt_tokens": prompt_chars // 4,
                            "completion_tokens": max(1, len(text) // 4),
                            "total_tokens": prompt_chars // 4 + max(1, len(text) // 4),
                        },
                    },
                )

        self._http = ThreadedHTTPServer(Handler, name="rule-black-box").start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None
