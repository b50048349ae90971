"""One ranking from K rankings of the same N responses (K presentation orders): pure functions.

The ranker asks ``ranker.consistency`` = K shuffled presentation orders of one prompt's responses
(against the judge's position bias). Strict mode keeps the ranking only when all K agree;
aggregation combines them into one instead, and says how sure it is:

- **Borda count** (Borda 1781): response ``i`` scores ``sum_k (N - 1 - pos_k(i))``, ``pos_k(i)``
  its 0-based position in ranking ``k``; the aggregate sorts by score, highest first.
- **Kemeny-optimal** (Kemeny 1959, "Mathematics without numbers", Daedalus 88): the permutation
  ``pi`` minimising ``sum_k d(pi, r_k)``, ``d`` the Kendall distance (pairs ordered differently);
  the maximum-likelihood ranking under a Mallows noise model (Young 1988). Exact for N <= 8 by
  dynamic programming over subsets (``O(2^N N^2)``); Borda above (:data:`KEMENY_MAX_N`).
  Aggregating listwise rankings over shuffled orders is permutation self-consistency (Tang et al.
  2023, arXiv 2310.07712, which also takes the Kemeny ranking).

Per-pair agreement and confidence (:class:`Aggregate`): for each pair ``a`` above ``b`` in the
aggregate, the share of the K rankings that also put ``a`` above ``b``; the confidence is their
mean over the ``N (N - 1) / 2`` pairs, which equals ``(1 + mean_k tau(aggregate, r_k)) / 2``
(Kendall's tau-a of the aggregate with each ranking, mapped to [0, 1]). 1.0 when all K agree.
A pure-noise judge still scores about 0.75 at K = 2 or 3 (the aggregate sides with the majority
of every pair it can), so a threshold below 2/3 mainly drops aggregates that had to decide a pair
against its majority (a cycle: a > b, b > c, c > a).

Ties are broken deterministically: Borda by the position in the first ranking (``rankings[0]``);
Kemeny among equally good permutations by the fewest pairs ordered against the Borda ranking,
then the lexicographically smallest (so with K = 2, every split pair a tie, the first ranking's
order decides through Borda).

Rankings are complete permutations: the parser's ``complete_missing_last`` already turns a reply
that ranked N - 1 responses into a complete ranking (the missing one last), and a reply ranking
fewer is unparsable, so no partial ranking reaches aggregation.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Literal, NamedTuple

__all__ = ["AGGREGATE_METHODS", "Aggregate", "KEMENY_MAX_N", "aggregate_rankings", "borda", "kemeny", "pair_agreement"]

KEMENY_MAX_N = 8
"""The largest N the exact Kemeny ranking is computed for (2^8 x 8^2 steps); above, Borda."""

AGGREGATE_METHODS = ("borda", "kemeny")
"""The aggregation methods (``ranker.aggregate`` also takes ``strict``, which aggregates nothing)."""


class Aggregate(NamedTuple):
    """K rankings combined into one.

    Attributes:
        ranking: the aggregate, 0-based response indices, best first.
        pairs: ``(a, b, share)`` for every pair, ``a`` above ``b`` in ``ranking`` (pairs in the
            aggregate's order): the share of the K rankings that put ``a`` above ``b`` too.
        confidence: the mean of the shares, in [0, 1] (1.0: all K rankings agree).
        method: ``"borda"`` or ``"kemeny"``, the method that produced ``ranking`` (``"borda"``
            when Kemeny was asked for N above :data:`KEMENY_MAX_N`).
    """

    ranking: list[int]
    pairs: list[tuple[int, int, float]]
    confidence: float
    method: str


def _check(rankings: Sequence[Sequence[int]]) -> int:
    """N, after checking that ``rankings`` are K >= 1 permutations of ``range(N)``, N >= 2."""
    if not rankings:
        raise ValueError("aggregating needs at least one ranking")
    n = len(rankings[0])
    for r in rankings:
        if sorted(r) != list(range(n)):
            raise ValueError(f"aggregating needs permutations of range({n}), got {list(r)}")
    if n < 2:
        raise ValueError(f"aggregating needs at least 2 responses, got {n}")
    return n


def _above(rankings: Sequence[Sequence[int]], n: int) -> list[list[int]]:
    """``w[a][b]``: how many of ``rankings`` put ``a`` above ``b`` (``[N, N]``)."""
    w = [[0] * n for _ in range(n)]
    for r in rankings:
        for i, a in enumerate(r):
            for b in r[i + 1:]:
                w[a][b] += 1
    return w


def borda(rankings: Sequence[Sequence[int]]) -> list[int]:
    """The Borda ranking of ``rankings`` (K permutations of ``range(N)``, each best first):
    highest ``sum_k (N - 1 - pos_k(i))`` first, ties by the position in ``rankings[0]``.

    Raises:
        ValueError: no ranking, N < 2, or a ranking that is not a permutation of ``range(N)``.

    >>> borda([[0, 1, 2], [1, 0, 2], [0, 2, 1]])
    [0, 1, 2]
    >>> borda([[2, 0, 1], [0, 2, 1]])  # 2 and 0 tie: the first ranking's order
    [2, 0, 1]
    """
    n = _check(rankings)
    score = [0] * n
    for r in rankings:
        for pos, i in enumerate(r):
            score[i] += n - 1 - pos
    first = {i: pos for pos, i in enumerate(rankings[0])}
    return sorted(range(n), key=lambda i: (-score[i], first[i]))


def kemeny(rankings: Sequence[Sequence[int]]) -> list[int]:
    """The Kemeny-optimal ranking of ``rankings`` (Kemeny 1959): the permutation with the fewest
    pairwise disagreements summed over the K rankings, exact by dynamic programming over the
    subsets of responses placed first (``O(2^N N^2)``). Ties: the fewest pairs ordered against
    the :func:`borda` ranking, then the lexicographically smallest.

    Raises:
        ValueError: as :func:`borda`, or N > :data:`KEMENY_MAX_N` (use :func:`aggregate_rankings`,
            which falls back to Borda).

    >>> kemeny([[0, 1, 2], [1, 2, 0], [2, 0, 1]])  # a cycle: each pair 2-1, one must lose
    [0, 1, 2]
    >>> kemeny([[0, 1, 2, 3], [1, 0, 2, 3], [0, 1, 3, 2]])
    [0, 1, 2, 3]
    >>> kemeny([[3, 2, 1, 0], [3, 2, 0, 1]])  # 0 and 1 split 1-1: the first ranking's order
    [3, 2, 1, 0]
    """
    n = _check(rankings)
    if n > KEMENY_MAX_N:
        raise ValueError(f"exact Kemeny is for N <= {KEMENY_MAX_N}, got N={n}")
    w = _above(rankings, n)
    pos_b = {i: p for p, i in enumerate(borda(rankings))}
    # cost[a][b]: placing a above b costs (rankings putting b above a, 1 if Borda puts b above a)
    cost = [[(w[b][a], int(pos_b[b] < pos_b[a])) for b in range(n)] for a in range(n)]
    full = (1 << n) - 1
    # best[S]: the least (disagreements, against Borda) of ordering the responses not in S,
    # placed below every response of S; S grows from the top.
    best: list[tuple[int, int]] = [(0, 0)] * (full + 1)
    choice = [0] * (full + 1)
    for s in range(full - 1, -1, -1):
        rest = [i for i in range(n) if not s >> i & 1]
        found: tuple[int, int] | None = None
        for a in rest:  # a next, above every other response not in S
            d = sum(cost[a][b][0] for b in rest if b != a)
            t = sum(cost[a][b][1] for b in rest if b != a)
            tail = best[s | 1 << a]
            total = (d + tail[0], t + tail[1])
            if found is None or total < found:  # strict: the smallest index wins a tie
                found, choice[s] = total, a
        assert found is not None
        best[s] = found
    out, s = [], 0
    while s != full:
        out.append(choice[s])
        s |= 1 << choice[s]
    return out


def pair_agreement(ranking: Sequence[int], rankings: Sequence[Sequence[int]]) -> list[tuple[int, int, float]]:
    """For every pair ``a`` above ``b`` in ``ranking``, the share of ``rankings`` that put ``a``
    above ``b`` too (pairs in ``ranking``'s order).

    Raises:
        ValueError: as :func:`borda` (``ranking`` among the rankings checked).

    >>> pair_agreement([0, 1, 2], [[0, 1, 2], [1, 0, 2]])
    [(0, 1, 0.5), (0, 2, 1.0), (1, 2, 1.0)]
    """
    n = _check([ranking, *rankings])
    w = _above(rankings, n)
    k = len(rankings)
    return [(a, b, w[a][b] / k) for a, b in combinations(ranking, 2)]


def aggregate_rankings(rankings: Sequence[Sequence[int]], method: Literal["borda", "kemeny"] = "kemeny") -> Aggregate:
    """``rankings`` (K permutations of ``range(N)``, best first, response indices) combined by
    ``method``, with the per-pair agreement and the confidence (their mean; see the module).
    ``kemeny`` above N = :data:`KEMENY_MAX_N` falls back to Borda (``method`` says so).

    Raises:
        ValueError: an unknown ``method``, no ranking, N < 2, or a ranking that is not a
            permutation of ``range(N)``.

    >>> a = aggregate_rankings([[0, 1, 2], [0, 1, 2], [1, 0, 2]])
    >>> a.ranking, a.pairs[0], round(a.confidence, 4), a.method
    ([0, 1, 2], (0, 1, 0.6666666666666666), 0.8889, 'kemeny')
    >>> aggregate_rankings([[1, 0], [1, 0]], "borda").confidence
    1.0
    """
    if method not in AGGREGATE_METHODS:
        raise ValueError(f"unknown aggregation {method!r}; known: {', '.join(AGGREGATE_METHODS)}")
    n = _check(rankings)
    used = "kemeny" if method == "kemeny" and n <= KEMENY_MAX_N else "borda"
    ranking = kemeny(rankings) if used == "kemeny" else borda(rankings)
    pairs = pair_agreement(ranking, rankings)
    return Aggregate(ranking, pairs, sum(s for _, _, s in pairs) / len(pairs), used)
