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

A noisy judge (:class:`JudgeNoise`): a rule ranks perfectly, an LLM judge does not. Two kinds of
noise are drawn on top of the rule's ranking of the responses as shown:

1. random swaps: each adjacent pair of the ranking, top to bottom, is swapped with probability
   ``swap_prob`` (q), one pass (an item may slide down more than one place);
2. position bias: with probability ``position_bias`` (p) the response shown first is moved to the
   top of the returned ranking. It prefers the response shown first, as LLM judges do: 12.9% of
   GPT-4 pairwise verdicts flip when the answers swap places (lm-sys/FastChat #3911; Zheng et al.
   2023, arXiv 2306.05685, Sec. 3.3).

The draws are seeded by ``JudgeNoise.seed`` and the request's messages (:func:`request_rng`): the
same request always gets the same reply, so the reply cache and a resumed run see what a fresh
run would, while the K presentation orders of one prompt (different messages) draw apart.

``latency_s`` holds each ranking answer back that long (a paid API's latency, for
``scripts/bench_pipeline.py``); requests are served concurrently, so the client's
``ranker.concurrency`` bounds how many wait at once.
"""

from __future__ import annotations

import hashlib
import html
import json
import random
import re
import threading
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class JudgeNoise:
    """How a noisy rule judge errs (see the module): position bias and random adjacent swaps.

    Attributes:
        position_bias: p in [0, 1]: the probability that the response shown first is moved to the
            top of the returned ranking.
        swap_prob: q in [0, 1]: the probability that each adjacent pair of the ranking is swapped.
        seed: seeds the draws (with the request's messages).

    Raises:
        ValueError: p or q outside [0, 1].
    """

    position_bias: float = 0.0
    swap_prob: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("position_bias", "swap_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value}: a probability, in [0, 1]")

    @property
    def tag(self) -> str:
        """The noise in a name (``""`` without noise): ``-pb0.3-sw0.1-s0``.

        >>> JudgeNoise(0.3).tag, JudgeNoise().tag
        ('-pb0.3-sw0-s0', '')
        """
        if not (self.position_bias or self.swap_prob):
            return ""
        return f"-pb{self.position_bias:g}-sw{self.swap_prob:g}-s{self.seed}"


def noisy_ranking(ranking: list[int], noise: JudgeNoise, rng: random.Random) -> list[int]:
    """``ranking`` (positions as shown, 0 = shown first; best first) as a noisy judge returns it:
    adjacent swaps with probability ``noise.swap_prob`` each (one pass, top to bottom), then,
    with probability ``noise.position_bias``, position 0 (the response shown first) moved to the
    top. Draws ``N - 1`` uniforms for the swaps, then one for the bias, whatever the probabilities.

    >>> noisy_ranking([2, 0, 1], JudgeNoise(position_bias=1.0), random.Random(0))
    [0, 2, 1]
    >>> noisy_ranking([2, 0, 1], JudgeNoise(swap_prob=1.0), random.Random(0))  # [0, 2, 1], then [0, 1, 2]
    [0, 1, 2]
    >>> noisy_ranking([2, 0, 1], JudgeNoise(), random.Random(0))
    [2, 0, 1]
    """
    out = list(ranking)
    for i in range(len(out) - 1):
        if rng.random() < noise.swap_prob:
            out[i], out[i + 1] = out[i + 1], out[i]
    if rng.random() < noise.position_bias and 0 in out:
        out.remove(0)
        out.insert(0, 0)
    return out


def request_rng(noise: JudgeNoise, request: dict[str, Any]) -> random.Random:
    """The random draws of one request: seeded by ``noise.seed`` and the request's messages
    (sha256 of their JSON), so the same request is always answered the same.

    >>> r = {"messages": [{"role": "user", "content": "x"}]}
    >>> request_rng(JudgeNoise(seed=1), r).random() == request_rng(JudgeNoise(seed=1), r).random()
    True
    """
    blob = json.dumps(request.get("messages", []), sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(f"{noise.seed}:{blob}".encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def rule_answer(rule: Rule, request: dict[str, Any], noise: JudgeNoise | None = None) -> str:
    """The rule's reply to one chat-completion request body (text labels or JSON), with
    ``noise`` drawn on top (None: exact).

    >>> from cyclealign.efficacy.rules import RULES
    >>> msg = '<response id="1">\\nhi\\n</response>\\n<response id="2">\\nOne.\\n\\nTwo.\\n</response>'
    >>> rule_answer(RULES["paragraphs"], {"messages": [{"role": "user", "content": msg}]})
    '[2] > [1]'
    >>> rule_answer(RULES["paragraphs"], {"messages": [{"role": "user", "content": msg}]}, JudgeNoise(position_bias=1.0))
    '[1] > [2]'
    """
    users = [m for m in request.get("messages", []) if m.get("role") == "user"]
    content = users[-1]["content"] if users else ""
    if isinstance(content, list):  # content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    responses = shown_responses(content)
    if not responses:
        return "ok"
    ranking = rule.rank(responses)
    if noise is not None:
        ranking = noisy_ranking(ranking, noise, request_rng(noise, request))
    labels = [i + 1 for i in ranking]
    if request.get("response_format", {}).get("type") == "json_schema":
        return json.dumps({"ranking": labels})
    return " > ".join(f"[{k}]" for k in labels)


class RuleBlackBox:
    """The rule black box as a context manager: ``with RuleBlackBox(rule) as bb: bb.base_url``.

    Args:
        rule: the ranking rule.
        noise: how the judge errs (None: it ranks exactly by the rule).
        latency_s: seconds each ranking answer is held back (the preflight's is not).
    Attributes:
        model: the model name it reports (``rule-<name>``, the noise's :attr:`JudgeNoise.tag`
            after it, so cached replies of an exact and a noisy judge stay apart when runs name
            it); any model name is accepted.
        count: chat-completion requests answered.
    """

    def __init__(self, rule: Rule, noise: JudgeNoise | None = None, latency_s: float = 0.0) -> None:
        self.rule = rule
        self.noise = noise
        self.latency_s = latency_s
        self.model = f"rule-{rule.name}{noise.tag if noise is not None else ''}"
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
                    text = rule_answer(box.rule, body, box.noise)
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
