"""Plain records that flow through a round: prompts -> generations -> rankings -> agreement.

Every row a round writes is one of these: :class:`PromptRecord` (``prompts.jsonl``),
:class:`Generation` (``generations.jsonl``; its draws, :class:`Sample`, fill the generation
journal), :class:`RankResult` with its :class:`RankSample` s (``rankings.jsonl``),
:class:`AgreementRow` (``agreement.jsonl``) and :class:`Demonstration` (the demonstration pool).

Rankings are permutations of response indices, **0-based, best first**: ``[2, 0, 1]``
means response 2 is best and response 1 worst. Prompts and templates show responses
labelled ``[1]..[N]`` (1-based); conversion happens only in the ranker's template and parser.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, NamedTuple

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


class Sample(NamedTuple):
    """One sampled response as a backend returns it (a plain 3-tuple works too)."""

    token_ids: list[int]
    """The response's token ids, up to and including the first EOS (none when cut at the cap)."""
    logprob_mean: float
    """Mean token log-prob of ``token_ids`` in nats under the *untempered* policy (EOS included)."""
    finished: bool
    """Whether the response ended with EOS (False = cut at ``max_new_tokens``)."""


@dataclass
class Generation:
    """N sampled responses to one prompt, with the policy's own scores.

    Attributes:
        prompt_id: id of the :class:`~cyclealign.records.PromptRecord`.
        prompt_token_ids: the chat-templated prompt as token ids (what generation saw).
        responses: response texts (special tokens removed), distinct, ``len <= N``.
        response_token_ids: the sampled token ids of each response, EOS included when reached.
        logprob_mean: length-normalised log-likelihood of each response (mean token
            log-prob in nats under the *untempered* policy, EOS included).
        finished: whether each response ended with EOS (False = cut at max_new_tokens).
    """

    prompt_id: str
    prompt_token_ids: list[int]
    responses: list[str] = field(default_factory=list)
    response_token_ids: list[list[int]] = field(default_factory=list)
    logprob_mean: list[float] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Generation":
        return cls(**d)


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


class RankStatus(str, Enum):
    """What became of a prompt (or of one sample of it) at the ranker.

    ``ranked`` is the only status with a ranking; the others say why there is none, the
    human-readable detail being the result's ``reason``, which starts with the status's
    :attr:`label`. Only ``api_error`` is asked again on resume. A sample is ``ranked``,
    ``unparsable`` or ``api_error``. ``rankings.jsonl`` does not store it (its lines keep the
    bytes they had before statuses existed): :func:`status_of` reads it back from a line.
    """

    RANKED = "ranked"
    UNPARSABLE = "unparsable"
    """No reply parsed as a ranking, after the correction re-asks."""
    API_ERROR = "api_error"
    """A transport error outlived the retries (asked again on resume)."""
    INCONSISTENT = "inconsistent"
    """The presentation orders' rankings disagreed (``ranker.consistency`` > 1): in strict mode at
    all, under aggregation so much that the aggregate's confidence fell below ``ranker.min_confidence``."""
    TOO_FEW_RESPONSES = "too_few_responses"
    """The prompt has fewer than 2 distinct responses: never sent to the ranker."""
    NOT_SELECTED = "not_selected"
    """A candidate the round did not send to the ranker (``ranker.calls_per_round``: another
    candidate scored higher, ``round_k/selection.json``); not used, so later rounds draw it again."""
    BUDGET = "budget"
    """The budget held the call back. Reserved: a prompt held back today gets no result at all
    (:class:`~cyclealign.errors.BudgetError` stops the run and a resume asks it)."""

    @property
    def label(self) -> str:
        """The name ``metrics.jsonl``'s ``unranked_reasons`` counts this status under (the text
        before the detail in the reason: ``"api error"``, ``"unparsable"``...).

        >>> RankStatus.API_ERROR.label, RankStatus.TOO_FEW_RESPONSES.label
        ('api error', 'fewer than 2 distinct responses')
        """
        return _LABELS[self]


_LABELS = {
    RankStatus.RANKED: "ranked",
    RankStatus.UNPARSABLE: "unparsable",
    RankStatus.API_ERROR: "api error",
    RankStatus.INCONSISTENT: "inconsistent",
    RankStatus.TOO_FEW_RESPONSES: "fewer than 2 distinct responses",
    RankStatus.NOT_SELECTED: "not selected",
    RankStatus.BUDGET: "budget",
}



def status_of(ranking: list[int] | None, reason: str | None) -> RankStatus:
    """The status of a stored result or sample, read back from its ``ranking`` and the label its
    ``reason`` starts with (the one place that reads reason text). Text no version of the
    ranker wrote counts as ``unparsable`` (kept on resume, as before).

    >>> status_of([1, 0], None).value, status_of(None, "api error: APIConnectionError: x").value
    ('ranked', 'api_error')
    >>> status_of(None, "inconsistent across 3 presentation orders: [1] > [2]; [2] > [1]").value
    'inconsistent'
    """
    if ranking is not None:
        return RankStatus.RANKED
    text = reason or ""
    for status, label in _LABELS.items():
        if status is not RankStatus.RANKED and text.startswith(label):
            return status
    return RankStatus.UNPARSABLE


_UNSET_LEFT_OUT = frozenset({"confidence", "pair_agreement"})
""":class:`RankResult` fields written only when set (a line of one presentation order keeps the
bytes it had before aggregation existed)."""


def _json_dict(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """``asdict``'s ``dict_factory``: the ``status`` left out (a stored line's status is read
    back from its ``ranking`` and ``reason`` by :func:`status_of`, so ``rankings.jsonl``
    keeps the bytes it had before statuses existed), and the aggregation's fields when unset."""
    return {k: v for k, v in items if k != "status" and not (v is None and k in _UNSET_LEFT_OUT)}


@dataclass
class RankSample:
    """One ask of the ranker for a prompt: one presentation order, its reply and re-asks.

    Attributes:
        order: the presentation order: label ``[j + 1]`` showed response ``order[j]`` (a seeded
            shuffle against position bias; identity when shuffling is off).
        replies: every raw reply text received for this order, in order (re-asks included).
        ranking: the parsed ranking mapped back to response indices (0-based, best first), or None.
        reason: why this ask gave no ranking (None when it did).
        status: ``ranked``, ``unparsable`` or ``api_error`` (keyword only; left out, it is
            read from ``ranking`` and ``reason`` by :func:`status_of`, as for old files).
    """

    order: list[int]
    replies: list[str] = field(default_factory=list)
    ranking: list[int] | None = None
    reason: str | None = None
    status: RankStatus = field(default=None, kw_only=True, repr=False)  # type: ignore[assignment]  # None: set in __post_init__

    def __post_init__(self) -> None:
        self.status = status_of(self.ranking, self.reason) if self.status is None else RankStatus(self.status)

    def to_json(self) -> dict[str, Any]:
        return asdict(self, dict_factory=_json_dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RankSample":
        return cls(**d)


@dataclass
class RankResult:
    """The black-box ranker's answer for one prompt.

    Attributes:
        prompt_id: id of the :class:`PromptRecord`.
        ranking: permutation of ``range(N)`` (0-based, best first), or ``None`` when unranked.
        reason: why the prompt is unranked (``None`` when ranked), for people.
        status: the :class:`RankStatus` (keyword only; left out, as in files written before
            statuses were stored, it is read from ``ranking`` and ``reason`` by :func:`status_of`).
        samples: one :class:`RankSample` per presentation order asked (``ranker.consistency`` of them).
        consistent: with several orders, whether their rankings agreed (None with one order, or
            when an order gave no ranking): whether strict mode (``ranker.aggregate=strict``) keeps it.
        confidence: with several orders that all ranked, the mean share of the orders agreeing
            with their aggregate on each pair, in [0, 1] (:mod:`cyclealign.ranker.aggregate`; in
            strict mode the Kemeny aggregate's, for comparison); None otherwise (and in files
            written before aggregation existed).
        pair_agreement: with ``confidence``, ``[a, b, share]`` for each pair, ``a`` above ``b`` in
            the aggregate: the share of the orders that put ``a`` above ``b`` too.
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
    status: RankStatus = field(default=None, kw_only=True, repr=False)  # type: ignore[assignment]  # None: set in __post_init__
    samples: list[RankSample] = field(default_factory=list)
    consistent: bool | None = None
    confidence: float | None = None
    pair_agreement: list[list[Any]] | None = None
    attempts: int = 0
    api_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        self.status = status_of(self.ranking, self.reason) if self.status is None else RankStatus(self.status)

    @property
    def raw_replies(self) -> list[str]:
        """Every raw reply of every sample, in order."""
        return [r for s in self.samples for r in s.replies]

    def to_json(self) -> dict[str, Any]:
        return asdict(self, dict_factory=_json_dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RankResult":
        d = dict(d)
        d["samples"] = [RankSample.from_json(x) for x in d.get("samples", [])]
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class AgreementRow:
    """One ranked prompt's agreement between the black-box and the white-box ranking: a line of
    ``agreement.jsonl`` (phase "agreement"), read back by the round's metrics and by training on
    ``train.target = "agreement"``.

    Attributes:
        prompt_id: id of the :class:`PromptRecord`.
        blackbox: the black-box ranking (0-based, best first; None: not recorded).
        whitebox: the policy's ranking by length-normalised log-likelihood (0-based, best first; None: not recorded).
        agreement: the longest common subsequence of the two (best first), LCS in the paper.
        n: the number of responses ranked.
        kendall_tau: Kendall tau between the two rankings (None: not recorded).
        joined_pool: whether the prompt joined the demonstration pool (None: not recorded).

    The fields are keyword-only so that they keep the order of the file's keys while a reader
    needs only ``prompt_id``, ``agreement`` and ``n`` (the agreement phase writes every field).
    """

    prompt_id: str
    blackbox: list[int] | None = None
    whitebox: list[int] | None = None
    agreement: list[int]
    n: int
    kendall_tau: float | None = None
    joined_pool: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "AgreementRow":
        return cls(**d)
