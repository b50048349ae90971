"""Preference pairs implied by a ranking: the one expander behind ``cyclealign export --format dpo``
(:func:`cyclealign.export.to_rows`) and pairwise DPO training (:func:`cyclealign.train.dpo.ranking_to_pairs`).

Pure and stdlib only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar

__all__ = ["PAIR_MODES", "preference_pairs"]

T = TypeVar("T")

PAIR_MODES = ("all", "adjacent")
"""``all``: every (better, worse) pair; ``adjacent``: each item against the next one."""


def preference_pairs(ranked: Sequence[T], mode: Literal["all", "adjacent"] = "all") -> list[tuple[T, T]]:
    """The (better, worse) pairs of a sequence in rank order (best first).

    ``"all"``: every pair, ``N(N-1)/2`` of them, ordered by the better one's rank then the worse
    one's. ``"adjacent"``: each item against the next one, ``N-1`` pairs. Items are anything: the
    response indices of a ranking, or the responses themselves.

    Raises:
        ValueError: unknown ``mode``.

    >>> preference_pairs([2, 0, 1])
    [(2, 0), (2, 1), (0, 1)]
    >>> preference_pairs("abc", "adjacent"), preference_pairs([7])
    ([('a', 'b'), ('b', 'c')], [])
    """
    n = len(ranked)
    if mode == "all":
        index = [(i, j) for i in range(n) for j in range(i + 1, n)]
    elif mode == "adjacent":
        index = [(i, i + 1) for i in range(n - 1)]
    else:
        raise ValueError(f"pairs mode must be 'all' or 'adjacent', got {mode!r}")
    return [(ranked[i], ranked[j]) for i, j in index]
