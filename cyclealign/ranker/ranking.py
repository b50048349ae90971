"""The ranking protocol, as pure functions: presentation orders, reply parsing, combining samples.

No I/O and no HTTP stack: :mod:`cyclealign.reparse` re-derives a run's rankings from the
stored replies with these alone, exactly as the ranker (:mod:`cyclealign.ranker.client`) derived
them when the replies came in::

    order    = presentation_order(seed, prompt_id, k, N)    # label [j + 1] shows response order[j]
    ranking  = parse_reply(reply, N, order, complete_last)  # mapped back to response indices
    combined = combine_samples(samples, aggregate, min_conf) # K orders -> one ranking, or why none
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from cyclealign.ranker.aggregate import aggregate_rankings
from cyclealign.ranker.parse import RankingParseError, parse_ranking
from cyclealign.records import Demonstration, Message, PromptRecord, RankSample, RankStatus

if TYPE_CHECKING:
    from cyclealign.templates.ranker import RankerTemplates

__all__ = [
    "AggregateMode",
    "clip_prompt",
    "Combined",
    "RankJob",
    "api_error_reason",
    "combine_samples",
    "first_ask_messages",
    "parse_reply",
    "presentation_order",
    "round_shuffle_seed",
    "reparse_sample",
    "unparsable_reason",
]


AggregateMode = Literal["strict", "borda", "kemeny"]
"""``ranker.aggregate``: how several presentation orders' rankings become one (:func:`combine_samples`)."""


@dataclass(frozen=True)
class RankJob:
    """One prompt to rank: its responses (in generation order) and the demonstrations to show.

    Attributes:
        prompt: the prompt; its :attr:`~PromptRecord.query_text` is shown as the conversation.
        responses: the N >= 2 responses.
        demos: in-context demonstrations, rendered as earlier user/assistant turns.
        shuffle_seed: seed of the presentation orders (the loop passes :func:`round_shuffle_seed`).
    """

    prompt: PromptRecord
    responses: list[str]
    demos: list[Demonstration] = field(default_factory=list)
    shuffle_seed: int = 0


def round_shuffle_seed(seed: int, round_index: int) -> int:
    """The shuffle seed of round ``round_index``'s ranker calls in a run seeded ``seed``.

    >>> round_shuffle_seed(7, 2)
    9
    """
    return seed + round_index


def clip_prompt(prompt: PromptRecord, max_tokens: int | None) -> tuple[PromptRecord, bool]:
    """``prompt`` with its conversation cut to at most about ``max_tokens`` tokens for the ranker,
    keeping its end (the turns the responses answer), as the policy's prompt is cut: whole early
    turns are dropped, and the earliest turn kept loses its beginning (marked ``[...]``). The
    bound is :func:`~cyclealign.ranker.pricing.estimate_tokens`'s: 3 UTF-8 bytes a token, so it
    errs long. Returns the prompt (the same object when it fits) and whether it was cut.

    >>> p = PromptRecord("a", [{"role": "user", "content": "x" * 900}, {"role": "assistant", "content": "ok"},
    ...                        {"role": "user", "content": "and now?"}])
    >>> clip_prompt(p, 1000)[1], clip_prompt(p, 100)[0].messages[-2:] == p.messages[-2:]
    (False, True)
    >>> short, cut = clip_prompt(p, 100); cut, short.messages[0]["content"][:6], len(short.messages[0]["content"].encode()) <= 300
    (True, '[...] ', True)
    """
    budget = None if max_tokens is None else 3 * max_tokens
    sizes = [len(m["content"].encode()) for m in prompt.messages]
    if budget is None or sum(sizes) <= budget:
        return prompt, False
    kept: list[Message] = []
    left = budget
    for m, size in zip(reversed(prompt.messages), reversed(sizes)):
        if size <= left:
            kept.append(m)
            left -= size
            continue
        if left > 64 or not kept:  # the earliest turn kept: its end
            tail = m["content"].encode()[-max(left - 6, 1):].decode(errors="ignore")
            kept.append({**m, "content": "[...] " + tail})
        break
    return PromptRecord(prompt.id, list(reversed(kept))), True


def presentation_order(seed: int, prompt_id: str, sample: int, n: int, shuffle: bool = True) -> list[int]:
    """The order the ``n`` responses are shown in: label ``[j + 1]`` shows response ``order[j]``.

    A seeded shuffle (the same on every machine and re-run) against the ranker's position
    bias; the identity when ``shuffle`` is off. Sample 0 is the plain shuffle; sample ``k`` shows
    first the response sample 0 shows at position ``k mod n`` (the rest in a shuffle of its own), so
    K <= n orders each show a different response first: a judge that favours the response shown
    first (Zheng et al. 2023, arXiv 2306.05685, Sec. 3.3) can push a response up in at most
    ``ceil(K / n)`` of the K orders, and a majority of the orders outvotes it (balanced positions,
    as in Wang et al. 2023, arXiv 2305.17926, Sec. 3.2).

    >>> presentation_order(0, "p1", 0, 4) == presentation_order(0, "p1", 0, 4)
    True
    >>> sorted(presentation_order(0, "p1", 1, 4))
    [0, 1, 2, 3]
    >>> [presentation_order(0, "p1", k, 4)[0] for k in range(5)] == presentation_order(0, "p1", 0, 4) + presentation_order(0, "p1", 0, 4)[:1]
    True
    >>> presentation_order(0, "p1", 0, 3, shuffle=False)
    [0, 1, 2]
    """
    order = list(range(n))
    if not shuffle:
        return order
    random.Random(f"{seed}:{prompt_id}:0").shuffle(order)
    if sample == 0:
        return order
    first = order[sample % n]
    rest = [i for i in range(n) if i != first]
    random.Random(f"{seed}:{prompt_id}:{sample}").shuffle(rest)
    return [first, *rest]


def first_ask_messages(
    templates: RankerTemplates, job: RankJob, k: int, *, shuffle: bool, json_output: bool
) -> tuple[list[int], list[Message]]:
    """``(presentation order, chat messages)`` of the first ask of sample ``k`` of ``job``: what
    the ranker sends before any correction re-ask (``cyclealign templates render`` shows the same).

    Args:
        templates: the ranker templates in use.
        job: the prompt, its responses, demonstrations and shuffle seed.
        k: the sample (presentation order) index, ``0 <= k < ranker.consistency``.
        shuffle: ``ranker.shuffle`` (False: responses shown in generation order).
        json_output: the call asks for structured output (demonstrations answer in JSON).

    Raises:
        TemplateError: a template fails to render (file named).
    """
    order = presentation_order(job.shuffle_seed, job.prompt.id, k, len(job.responses), shuffle)
    messages = templates.build_messages(
        job.prompt.query_text, [job.responses[i] for i in order], job.demos, json_output=json_output
    )
    return order, messages


def parse_reply(text: str, n: int, order: list[int], complete_last: bool) -> list[int]:
    """The ranking a reply gives, mapped back from presentation labels through ``order``
    (response indices, best first).

    Raises:
        RankingParseError: an empty reply, or one :func:`~cyclealign.ranker.parse.parse_ranking` rejects.

    >>> parse_reply("[2] > [1] > [3]", 3, [2, 0, 1], False)
    [0, 2, 1]
    >>> parse_reply("  ", 3, [0, 1, 2], False)
    Traceback (most recent call last):
    ...
    cyclealign.ranker.parse.RankingParseError: empty reply
    """
    if not text.strip():
        raise RankingParseError("empty reply")
    return [order[j] for j in parse_ranking(text, n, complete_last=complete_last)]


def unparsable_reason(attempts: int, reason: str) -> str:
    """The ``reason`` of a sample none of whose ``attempts`` replies parsed.

    >>> unparsable_reason(3, "no ranking found")
    'unparsable after 3 attempts: no ranking found'
    """
    return f"{RankStatus.UNPARSABLE.label} after {attempts} attempts: {reason}"


def api_error_reason(description: str) -> str:
    """The ``reason`` of a sample whose call failed with a transport error (``"<type>: <message>"``).

    >>> api_error_reason("InternalServerError: HTTP 503: overloaded")
    'api error: InternalServerError: HTTP 503: overloaded'
    """
    return f"{RankStatus.API_ERROR.label}: {description}"


class Combined(NamedTuple):
    """One prompt's outcome from its samples (see :func:`combine_samples`)."""

    ranking: list[int] | None
    """0-based, best first; None when unranked."""
    status: RankStatus
    reason: str | None
    """Why unranked (None when ranked)."""
    consistent: bool | None
    """With several samples that all ranked, whether they agreed; None otherwise."""
    confidence: float | None = None
    """With several samples that all ranked, their aggregate's confidence; None otherwise."""
    pair_agreement: list[list[Any]] | None = None
    """With ``confidence``: ``[a, b, share]`` per pair, ``a`` above ``b`` in the aggregate."""


def combine_samples(
    samples: Sequence[RankSample], aggregate: AggregateMode = "strict", min_confidence: float = 0.0
) -> Combined:
    """One prompt's ranking, status, reason and consistency from its samples (presentation orders).

    An API error wins (the prompt is asked again on resume), then an unparsable sample. With
    several samples that all ranked, their rankings are aggregated
    (:func:`~cyclealign.ranker.aggregate.aggregate_rankings`: ``aggregate`` ``borda`` or
    ``kemeny``) and the aggregate kept when its confidence reaches ``min_confidence``; in
    ``strict`` mode the ranking is kept only when all agree (the Kemeny aggregate's confidence is
    recorded beside, for comparison). Either way ``consistent`` says whether all agreed.

    Args:
        samples: the K samples of one prompt, in sample order.
        aggregate: ``ranker.aggregate``: ``strict``, ``borda`` or ``kemeny``.
        min_confidence: ``ranker.min_confidence`` (ignored in strict mode).

    >>> combine_samples([RankSample([0, 1], ["[2] > [1]"], [1, 0])])
    Combined(ranking=[1, 0], status=<RankStatus.RANKED: 'ranked'>, reason=None, consistent=None, confidence=None, pair_agreement=None)
    >>> c = combine_samples([RankSample([0, 1], [], [1, 0]), RankSample([1, 0], [], [0, 1])])
    >>> c.ranking, c.status.value, c.reason, c.consistent, c.confidence
    (None, 'inconsistent', 'inconsistent across 2 presentation orders: [2] > [1]; [1] > [2]', False, 0.5)
    >>> three = [RankSample([0, 1, 2], [], r) for r in ([0, 1, 2], [1, 0, 2], [0, 1, 2])]
    >>> c = combine_samples(three, "kemeny", 0.6)
    >>> c.ranking, c.status.value, c.consistent, round(c.confidence, 3), c.pair_agreement[0]
    ([0, 1, 2], 'ranked', False, 0.889, [0, 1, 0.6666666666666666])
    >>> combine_samples(three, "kemeny", 0.9).reason
    'inconsistent across 3 presentation orders (confidence 0.889 < ranker.min_confidence 0.9): [1] > [2] > [3]; [2] > [1] > [3]; [1] > [2] > [3]'
    >>> c = combine_samples([RankSample([0, 1], [], None, "unparsable after 1 attempts: x", status=RankStatus.UNPARSABLE),
    ...                      RankSample([1, 0], [], None, "api error: E: y", status=RankStatus.API_ERROR)])
    >>> c.status.value, c.reason
    ('api_error', 'api error: E: y')
    """
    failed = [s for s in samples if s.ranking is None]
    api_errors = [s for s in failed if s.status is RankStatus.API_ERROR]
    if api_errors:
        return Combined(None, RankStatus.API_ERROR, api_errors[0].reason, None)
    if failed:
        return Combined(None, failed[0].status, failed[0].reason, None)
    if len(samples) == 1:
        return Combined(samples[0].ranking, RankStatus.RANKED, None, None)
    rankings = [s.ranking or [] for s in samples]
    consistent = all(r == rankings[0] for r in rankings)
    agg = aggregate_rankings(rankings, "kemeny" if aggregate == "strict" else aggregate)
    pairs = [[a, b, share] for a, b, share in agg.pairs]
    if consistent:
        return Combined(rankings[0], RankStatus.RANKED, None, True, agg.confidence, pairs)
    if aggregate != "strict" and agg.confidence >= min_confidence - 1e-9:  # 2/3 read as 0.666...
        return Combined(agg.ranking, RankStatus.RANKED, None, False, agg.confidence, pairs)
    shown = "; ".join(" > ".join(f"[{i + 1}]" for i in r) for r in rankings)
    why = "" if aggregate == "strict" else f" (confidence {agg.confidence:.3f} < ranker.min_confidence {min_confidence:g})"
    reason = f"{RankStatus.INCONSISTENT.label} across {len(samples)} presentation orders{why}: {shown}"
    return Combined(None, RankStatus.INCONSISTENT, reason, False, agg.confidence, pairs)


def reparse_sample(sample: RankSample, n: int, complete_last: bool) -> RankSample:
    """``sample`` with its ranking re-derived from its stored replies (no call): the first reply
    that parses, mapped back through ``sample.order``. API-error samples are returned as they are.

    >>> s = reparse_sample(RankSample([1, 0], ["[2] > [1]"], None, "unparsable after 1 attempts: x"), 2, False)
    >>> s.ranking, s.reason, s.status.value
    ([0, 1], None, 'ranked')
    >>> s = reparse_sample(RankSample([0, 1, 2], ["[3] > [1]"], [2, 0, 1]), 3, False)
    >>> s.ranking, s.reason, s.status.value
    (None, 'unparsable after 1 attempts: missing label [2]', 'unparsable')
    """
    if sample.status is RankStatus.API_ERROR:
        return sample
    reason = "no reply"
    for text in sample.replies:
        try:
            ranking = parse_reply(text, n, sample.order, complete_last)
        except RankingParseError as e:
            reason = e.reason
            continue
        return RankSample(sample.order, list(sample.replies), ranking, None, status=RankStatus.RANKED)
    return RankSample(
        sample.order, list(sample.replies), None, unparsable_reason(len(sample.replies), reason), status=RankStatus.UNPARSABLE
    )
