import itertools
import random

import pytest

from cyclealign.agreement import kendall_tau, lcs, ranking_from_scores


def _is_subsequence(sub, seq):
    it = iter(seq)
    return all(x in it for x in sub)


def _brute_lcs_len(a, b):
    best = 0
    for k in range(len(a), 0, -1):
        for combo in itertools.combinations(a, k):
            if _is_subsequence(combo, b):
                return k
    return best


def test_lcs_known_cases():
    assert lcs([0, 1, 2, 3], [0, 1, 2, 3]) == [0, 1, 2, 3]
    assert lcs([1, 0, 2, 3], [0, 1, 2, 3]) in ([1, 2, 3], [0, 2, 3])
    assert lcs([0, 1, 2, 3], [3, 2, 1, 0]) in ([[i] for i in range(4)])
    assert lcs([2, 0, 3, 1], [2, 3, 0, 1]) in ([2, 0, 1], [2, 3, 1])


def test_lcs_matches_brute_force_on_random_permutations():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 6)
        a, b = list(range(n)), list(range(n))
        rng.shuffle(a)
        rng.shuffle(b)
        common = lcs(a, b)
        assert _is_subsequence(common, a) and _is_subsequence(common, b)
        assert len(common) == _brute_lcs_len(a, b)


def test_kendall_tau_values():
    assert kendall_tau([0, 1, 2, 3], [0, 1, 2, 3]) == 1.0
    assert kendall_tau([0, 1, 2, 3], [3, 2, 1, 0]) == -1.0
    # one discordant pair of 6: (5 - 1) / 6
    assert kendall_tau([0, 1, 2, 3], [0, 1, 3, 2]) == pytest.approx(4 / 6)
    assert kendall_tau([1, 0], [0, 1]) == -1.0


def test_kendall_tau_rejects_different_items():
    with pytest.raises(ValueError, match="permutations"):
        kendall_tau([0, 1, 2], [0, 1, 3])
    with pytest.raises(ValueError):
        kendall_tau([0], [0])


def test_ranking_from_scores_highest_first_with_stable_ties():
    assert ranking_from_scores([-2.0, -1.0, -1.0, -3.0]) == [1, 2, 0, 3]
