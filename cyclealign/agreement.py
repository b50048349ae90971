"""Agreement between the black-box and the white-box ranking: pure functions on permutations.

Rankings are 0-based permutations, best first (see :mod:`cyclealign.records`).
CycleAlign (Hong et al. 2023, arXiv 2310.16271, Sec. 3) takes the longest common
subsequence (LCS) of the two rankings as the agreement ranking, the pseudo-label that
may join the demonstration pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


def lcs(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Longest common subsequence of two rankings (dynamic programming, O(len(a)·len(b))).

    Ties between equally long subsequences are broken deterministically (skip the
    element of ``a`` first), so the result depends only on the inputs.

    >>> lcs([0, 1, 2, 3], [0, 2, 1, 3])
    [0, 2, 3]
    >>> len(lcs([3, 2, 1, 0], [0, 1, 2, 3]))
    1
    >>> lcs([], [1])
    []
    """
    n, m = len(a), len(b)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            if a[i] == b[j]:
                table[i][j] = table[i + 1][j + 1] + 1
            else:
                table[i][j] = max(table[i + 1][j], table[i][j + 1])
    out, i, j = [], 0, 0
    while i < n and j < m:
        if a[i] == b[j]:
            out.append(a[i])
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return out


def kendall_tau(a: Sequence[int], b: Sequence[int]) -> float:
    """Kendall rank correlation between two rankings of the same items (tau-a, no ties).

    ``tau = (concordant - discordant) / (n (n - 1) / 2)``, in [-1, 1].

    Raises:
        ValueError: the rankings are not permutations of the same items, or have < 2 items.

    >>> kendall_tau([0, 1, 2], [0, 1, 2])
    1.0
    >>> kendall_tau([0, 1, 2], [2, 1, 0])
    -1.0
    >>> round(kendall_tau([0, 1, 2, 3], [1, 0, 2, 3]), 4)
    0.6667
    """
    if sorted(a) != sorted(b) or len(set(a)) != len(a):
        raise ValueError(f"kendall_tau needs two permutations of the same items, got {list(a)} and {list(b)}")
    n = len(a)
    if n < 2:
        raise ValueError("kendall_tau needs at least 2 items")
    pos_b = {item: k for k, item in enumerate(b)}
    score = 0
    for i in range(n):
        for j in range(i + 1, n):
            # a ranks a[i] above a[j]; concordant when b does too.
            score += 1 if pos_b[a[i]] < pos_b[a[j]] else -1
    return score / (n * (n - 1) / 2)


def ranking_from_scores(scores: Sequence[float]) -> list[int]:
    """Indices sorted by score, highest first (stable for ties: lower index first).

    >>> ranking_from_scores([-1.5, -0.2, -3.0])
    [1, 0, 2]
    """
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


class Agreement(NamedTuple):
    """How one prompt's black-box ranking agrees with the policy's own (white-box) ranking.

    Attributes:
        whitebox: the policy's ranking, by length-normalised log-likelihood (best first).
        common: the LCS of the black-box and white-box rankings (the agreement ranking).
        kendall_tau: Kendall tau between the two rankings, in [-1, 1].
    """

    whitebox: list[int]
    common: list[int]
    kendall_tau: float

    @property
    def rate(self) -> float:
        """LCS length / N (1.0: the rankings are the same)."""
        return len(self.common) / len(self.whitebox)


def agreement_of(blackbox: Sequence[int], logprob_mean: Sequence[float]) -> Agreement:
    """The agreement of a black-box ranking with the white-box ranking of the same N responses,
    the policy's mean token log-likelihoods ``logprob_mean`` (``[N]``, nats per token) ranked
    by :func:`ranking_from_scores` (Hong et al. 2023, Sec. 3.2-3.3).

    >>> a = agreement_of([2, 0, 1], [-0.5, -1.0, -0.1])
    >>> a.whitebox, a.common, round(a.kendall_tau, 3), round(a.rate, 3)
    ([2, 0, 1], [2, 0, 1], 1.0, 1.0)
    """
    white = ranking_from_scores(logprob_mean)
    return Agreement(white, lcs(blackbox, white), kendall_tau(blackbox, white))
