"""Which of a round's candidate prompts the black box ranks under a call budget
(``ranker.calls_per_round``), by a white-box signal of each candidate's generations.

A round draws ``prompts_per_round`` candidates and samples N responses for each (cheap, local);
the ranker (paid) sees only the ``ranker.calls_per_round / ranker.consistency`` candidates that
score highest by ``ranker.selection``:

- ``random`` (:func:`random_score`): a seeded uniform draw per candidate, the baseline every
  other signal is measured against ("Random Is Hard to Beat", arXiv 2604.02766).
- ``uncertainty`` (:func:`uncertainty_score`): how close the policy's own ranking of its N
  responses is to a coin flip, the mean Bradley-Terry entropy of its pairwise preferences by
  length-normalised log-likelihood (uncertainty sampling, Lewis & Gale 1994, arXiv cmp-lg/9407020;
  for preference labels, BAL-PM, arXiv 2406.10023).
- ``diversity`` (:func:`diversity_score`): how much the responses differ, the mean pairwise
  Jaccard distance of their sets of distinct tokens (a list of near-identical responses teaches
  a ranking loss little; SEA, arXiv 2411.01493, explores for responses whose preference is unsure).

A candidate with fewer than 2 distinct responses has no score and is never chosen (the ranker is
not asked about it, as before: its status is ``too few responses``). Ties are broken by the
candidates' order (the round's prompt order): the earlier one is chosen.

Pure: a :class:`Selection` is computed from :class:`~cyclealign.records.Generation` s and written
by the loop to ``round_k/selection.json`` before the first ranking call.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

from cyclealign.records import Generation

__all__ = [
    "SIGNALS",
    "Candidate",
    "Selection",
    "diversity_score",
    "random_score",
    "select_candidates",
    "selection_seed",
    "uncertainty_score",
]

SIGNALS = ("random", "uncertainty", "diversity")
"""The values of ``ranker.selection``."""


def selection_seed(seed: int, round_index: int) -> int:
    """The seed of round ``round_index``'s ``random`` selection in a run seeded ``seed`` (the same
    number as the round's presentation-order shuffle, :func:`~cyclealign.ranker.ranking.round_shuffle_seed`;
    :func:`random_score` draws from its own stream, prefixed ``select:``).

    >>> selection_seed(7, 2)
    9
    """
    return seed + round_index


def random_score(g: Generation, seed: int) -> float:
    """A uniform draw in [0, 1) from ``random.Random(f"select:{seed}:{prompt id}")``: each
    candidate's score depends only on the seed and its own prompt id, so the same candidates of a
    resumed round draw the same scores.

    >>> g = Generation("p1", [], ["a", "b"], [[1], [2]], [-1.0, -2.0])
    >>> random_score(g, 0) == random_score(g, 0), 0.0 <= random_score(g, 0) < 1.0, random_score(g, 0) != random_score(g, 1)
    (True, True, True)
    """
    return random.Random(f"select:{seed}:{g.prompt_id}").random()


def _pair_entropy(d: float) -> float:
    """Binary entropy (nats) of ``sigmoid(d)``, computed stably: ``log1p(e^-|d|) + |d| sigmoid(-|d|)``.

    >>> round(_pair_entropy(0.0), 4), round(_pair_entropy(2.0), 4), _pair_entropy(800.0)
    (0.6931, 0.3653, 0.0)
    """
    d = abs(d)
    e = math.exp(-d)
    return math.log1p(e) + d * e / (1.0 + e)


def uncertainty_score(g: Generation) -> float | None:
    """How unsure the policy is of its own ranking of the candidate's responses: the mean, over
    the pairs of responses, of the Bradley-Terry entropy of the pair's preference under the
    policy's length-normalised log-likelihoods ``s = g.logprob_mean`` (nats per token)::

        U = mean_{i<j} h(sigmoid(s_i - s_j)),   h(p) = -p ln p - (1 - p) ln(1 - p)

    In nats, in ``(0, ln 2]``: ``ln 2`` when every response is equally likely (the white-box
    ranking is a coin flip, so the black box's ranking is the most news), near 0 when the
    log-likelihoods are far apart. Uncertainty sampling (Lewis & Gale 1994) picks the example
    whose predicted label is closest to 0.5; a ranking of N is N(N-1)/2 pairwise labels (the
    pairs a Plackett-Luce or DPO loss trains on), and their mean entropy counts them all, where
    the smallest adjacent gap is decided by one near-tie (almost always present among 4-8
    samples) and the softmax entropy over N by the top response and by N itself. BAL-PM (arXiv
    2406.10023) uses the same entropy of a Bradley-Terry preference model to pick what to label.

    Returns:
        None for fewer than 2 responses (nothing to rank).

    >>> g = lambda lps: Generation("p", [], [str(i) for i in range(len(lps))], [[i] for i in range(len(lps))], lps)
    >>> round(uncertainty_score(g([-1.0, -1.0])), 4), round(uncertainty_score(g([-1.0, -3.0])), 4), uncertainty_score(g([-1.0]))
    (0.6931, 0.3653, None)
    >>> uncertainty_score(g([-1.0, -1.1, -1.2])) > uncertainty_score(g([-1.0, -2.0, -3.0]))
    True
    """
    s = g.logprob_mean
    if len(s) < 2:
        return None
    pairs = list(combinations(s, 2))
    return sum(_pair_entropy(a - b) for a, b in pairs) / len(pairs)


def _jaccard_distance(a: set, b: set) -> float:
    """``1 - |a & b| / |a | b|``; 0 for two empty sets (identical).

    >>> _jaccard_distance({1, 2}, {2, 3}), _jaccard_distance(set(), set()), _jaccard_distance({1}, {2})
    (0.6666666666666667, 0.0, 1.0)
    """
    union = len(a | b)
    return 1.0 - len(a & b) / union if union else 0.0


def diversity_score(g: Generation) -> float | None:
    """How much the candidate's responses differ: the mean, over pairs of responses, of the
    Jaccard distance between their sets of distinct token ids (``g.response_token_ids``, EOS
    included where reached)::

        D = mean_{i<j} 1 - |T_i & T_j| / |T_i | T_j|

    In ``[0, 1]``: 0 when every response uses the same tokens, 1 when no two share one.
    Responses that differ in a word or two give the ranking loss almost the same sequence to push
    up and down; responses that differ in content give it a preference to learn (the argument for
    diverse responses of SEA, arXiv 2411.01493; distinct tokens as a cheap measure of diversity:
    distinct-n, Li et al. 2016, arXiv 1510.03055). Distinct tokens rather than bigrams: sampled
    responses share few bigrams, so bigram distances crowd near 1 and tie more often (a tie goes
    to prompt order, a seeded shuffle: random). Token ids, not text: no tokenizer, deterministic.

    Returns:
        None for fewer than 2 responses.

    >>> g = lambda ids: Generation("p", [], [str(i) for i in range(len(ids))], ids, [0.0] * len(ids))
    >>> diversity_score(g([[1, 2, 3], [1, 2, 3]])), diversity_score(g([[1, 2, 3], [4, 5, 6]])), diversity_score(g([[1, 2]]))
    (0.0, 1.0, None)
    >>> round(diversity_score(g([[1, 2, 3], [1, 2, 4], [7, 8]])), 4)
    0.8333
    """
    ids = g.response_token_ids
    if len(ids) < 2 or len(g.responses) < 2:
        return None
    sets = [set(x) for x in ids]
    pairs = list(combinations(sets, 2))
    return sum(_jaccard_distance(a, b) for a, b in pairs) / len(pairs)


@dataclass(frozen=True)
class Candidate:
    """One candidate prompt of a selection.

    Attributes:
        id: the prompt id (as the round's generations hold it).
        score: the signal's score (higher = ranked first); None when the candidate has fewer than
            2 distinct responses (never chosen; the ranker is not asked about it).
        chosen: whether the ranker is asked to rank it.
    """

    id: str
    score: float | None
    chosen: bool


@dataclass(frozen=True)
class Selection:
    """A round's choice of which candidates the ranker ranks (``round_k/selection.json``).

    Attributes:
        signal: ``ranker.selection`` (one of :data:`SIGNALS`).
        seed: :func:`selection_seed` of the run seed and the round (used by ``random`` only).
        calls_per_round: ``ranker.calls_per_round``, first asks.
        consistency: ``ranker.consistency``: first asks per ranked prompt.
        candidates: every candidate, in the round's prompt order, with its score.
    """

    signal: str
    seed: int
    calls_per_round: int
    consistency: int
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def chosen(self) -> list[str]:
        """The ids the ranker ranks, in prompt order."""
        return [c.id for c in self.candidates if c.chosen]

    @property
    def not_selected(self) -> list[str]:
        """The ids of candidates with a score that were not chosen: unranked for this round and,
        not having been used, drawn again by later rounds (:func:`~cyclealign.data.selection.used_prompt_counts`)."""
        return [c.id for c in self.candidates if not c.chosen and c.score is not None]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "chosen": self.chosen}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Selection":
        return cls(
            signal=d["signal"], seed=d["seed"], calls_per_round=d["calls_per_round"], consistency=d["consistency"],
            candidates=[Candidate(**c) for c in d["candidates"]],
        )


def _scorer(signal: str, seed: int) -> Callable[[Generation], float | None]:
    """The score function of ``signal`` (random: of ``seed``); a candidate with fewer than 2
    responses scores None whatever the signal.

    Raises:
        ValueError: an unknown signal.
    """
    if signal == "random":
        return lambda g: random_score(g, seed) if len(g.responses) >= 2 else None
    if signal == "uncertainty":
        return lambda g: uncertainty_score(g) if len(g.responses) >= 2 else None
    if signal == "diversity":
        return diversity_score
    raise ValueError(f"unknown selection signal {signal!r} (known: {', '.join(SIGNALS)})")


def select_candidates(
    generations: Sequence[Generation], signal: str, calls_per_round: int, consistency: int, seed: int
) -> Selection:
    """Choose the ``calls_per_round // consistency`` candidates with the highest ``signal`` score
    (all scored ones when there are no more); ties go to the earlier candidate.

    Args:
        generations: the round's generations, one per candidate, in prompt order.
        signal: one of :data:`SIGNALS`.
        calls_per_round: first asks the round may spend (>= ``consistency``).
        consistency: first asks per ranked prompt (``ranker.consistency``).
        seed: :func:`selection_seed` (drawn from by ``random`` only; recorded for all).

    Raises:
        ValueError: an unknown signal, or ``calls_per_round < consistency``.

    >>> ids = [[[1, 2, 3], [1, 2, 3]], [[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [1, 2, 4]], [[7, 8], [8, 7]]]
    >>> lps = [[-1.0, -1.0], [-1.0, -3.0], [-1.0, -1.5], [-1.0, -4.0]]
    >>> gens = [Generation(f"p{i}", [], ["a", "b"], ids[i], lps[i]) for i in range(4)]
    >>> select_candidates(gens, "uncertainty", 2, 1, seed=0).chosen  # closest log-likelihoods
    ['p0', 'p2']
    >>> select_candidates(gens, "diversity", 2, 1, seed=0).chosen  # p3's responses share every token
    ['p1', 'p2']
    >>> sel = select_candidates(gens + [Generation("p9", [], ["a"], [[1]], [-1.0])], "random", 4, 2, seed=3)
    >>> len(sel.chosen), sel.candidates[-1]
    (2, Candidate(id='p9', score=None, chosen=False))
    """
    if calls_per_round < consistency:
        raise ValueError(f"calls_per_round={calls_per_round} buys no ranking at consistency={consistency}")
    score = _scorer(signal, seed)
    scores = [score(g) for g in generations]
    budget = calls_per_round // consistency
    order = sorted((i for i, s in enumerate(scores) if s is not None), key=lambda i: (-scores[i], i))  # type: ignore[operator]
    chosen = set(order[:budget])
    return Selection(
        signal=signal, seed=seed, calls_per_round=calls_per_round, consistency=consistency,
        candidates=[Candidate(g.prompt_id, s, i in chosen) for i, (g, s) in enumerate(zip(generations, scores))],
    )
