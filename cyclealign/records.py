"""Plain records that flow through a round: prompts -> generations -> rankings -> agreement.

Rankings are permutations of response indices, **0-based, best first**: ``[2, 0, 1]``
means response 2 is best and response 1 worst. Prompts and templates show responses
labelled ``[1]..[N]`` (1-based); conversion happens only in the ranker's template and parser.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

Message = dict[str, str]
"""One chat message: ``{"role": "user" | "assistant" | "system", "content": str}``."""


@dataclass(frozen=True)
class PromptRecord:
    """A prompt to align on.

    Attributes:
        id: stable identifier (source file stem + line number, or the dataset's own id).
        messages: the conversation so far as chat messages; the last one is the user's turn.
    """

    id: str
    messages: list[Message]

    @property
    def content_hash(self) -> str:
        """sha256 (hex, first 16 digits) of the messages: names the prompt across a source that
        grows or is re-indexed (a scheduled run records it for every prompt a round used).

        >>> PromptRecord("a", [{"role": "user", "content": "hi"}]).content_hash == PromptRecord("b", [{"role": "user", "content": "hi"}]).content_hash
        True
        """
        blob = json.dumps([[m["role"], m["content"]] for m in self.messages], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    @property
    def query_text(self) -> str:
        """The conversation rendered as plain ``Role: content`` lines (for ranker prompts)."""
        return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in self.messages)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "PromptRecord":
        return cls(id=d["id"], messages=list(d["messages"]))


@dataclass(frozen=True)
class Demonstration:
    """An in-context demonstration for the ranker: a query, its responses and their ranking.

    Attributes:
        query: the conversation as plain text (see :attr:`PromptRecord.query_text`).
        responses: the N responses shown to the ranker as ``[1]..[N]``.
        ranking: permutation of ``range(N)``, 0-based, best first.
        source: ``"static"`` (human-written, from ``demos/``) or ``"dynamic"`` (agreement pool).
        round: the round a dynamic demonstration was added in (``-1`` for static ones).
        agreement_len: LCS length between black-box and white-box ranking (dynamic only).
    """

    query: str
    responses: list[str]
    ranking: list[int]
    source: str = "static"
    round: int = -1
    agreement_len: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Demonstration":
        return cls(**d)


@dataclass
class RankSample:
    """One ask of the ranker for a prompt: one presentation order, its reply and re-asks.

    Attributes:
        order: the presentation order: label ``[j + 1]`` showed response ``order[j]`` (a seeded
            shuffle against position bias; identity when shuffling is off).
        replies: every raw reply text received for this order, in order (re-asks included).
        ranking: the parsed ranking mapped back to response indices (0-based, best first), or None.
        reason: why this ask gave no ranking (None when it did).
    """

    order: list[int]
    replies: list[str] = field(default_factory=list)
    ranking: list[int] | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RankSample":
        return cls(**d)


@dataclass
class RankResult:
    """The black-box ranker's answer for one prompt.

    Attributes:
        prompt_id: id of the :class:`PromptRecord`.
        ranking: permutation of ``range(N)`` (0-based, best first), or ``None`` when unranked.
        reason: why the prompt is unranked (``None`` when ranked).
        samples: one :class:`RankSample` per presentation order asked (``ranker.consistency`` of them).
        consistent: with several orders, whether their rankings agreed (None with one order, or
            when an order gave no ranking).
        attempts: chat completions used (first asks and re-asks, cached ones included).
        api_calls: of those, the ones actually sent and answered (billed); the rest came from the cache.
        prompt_tokens: prompt tokens of the completions used (from the API's ``usage``).
        completion_tokens: completion tokens of the completions used.
        cost_usd: USD billed for the ``api_calls`` (0 for cached replies and the embedded ranker).
        latency_s: wall seconds spent on this prompt's calls.
    """

    prompt_id: str
    ranking: list[int] | None
    reason: str | None = None
    samples: list[RankSample] = field(default_factory=list)
    consistent: bool | None = None
    attempts: int = 0
    api_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0

    @property
    def raw_replies(self) -> list[str]:
        """Every raw reply of every sample, in order."""
        return [r for s in self.samples for r in s.replies]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RankResult":
        d = dict(d)
        d["samples"] = [RankSample.from_json(x) for x in d.get("samples", [])]
        return cls(**d)
