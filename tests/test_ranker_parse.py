"""parse_ranking: the pure parser of the ranker's replies (1-based labels in, 0-based ranking out)."""

import pytest

from cyclealign.ranker.parse import RankingParseError, parse_ranking


@pytest.mark.parametrize(
    ("reply", "n", "expected"),
    [
        ("[2] > [1] > [4] > [3]", 4, [1, 0, 3, 2]),
        ("[1] > [2]", 2, [0, 1]),
        ("[2]>[1]>[3]", 3, [1, 0, 2]),  # no spaces
        ("[ 2 ]  >\n[1] >   [3]", 3, [1, 0, 2]),  # odd whitespace, line breaks
        ("Ranking: [3] > [1] > [2]\nBecause [3] answers the question.", 3, [2, 0, 1]),  # extra text
        ("**[3] > [2] > [1]**", 3, [2, 1, 0]),  # markdown around it
        ("[2] > [1] > [3]. To repeat: [2] > [1] > [3]", 3, [1, 0, 2]),  # same chain twice is fine
        ("[10] > [1] > [2] > [3] > [4] > [5] > [6] > [7] > [8] > [9]", 10, [9, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
    ],
)
def test_valid(reply, n, expected):
    assert parse_ranking(reply, n) == expected


@pytest.mark.parametrize(
    ("reply", "n", "reason"),
    [
        ("Response 2 is the best one.", 3, "no ranking found"),
        ("", 3, "no ranking found"),
        ("[2]", 3, "no ranking found"),  # a lone label is not a chain
        ("2 > 1 > 3", 3, "no ranking found"),  # labels must be bracketed
        ("[2] > [1]", 3, "missing label [3]"),
        ("[2] > [1]", 4, "missing labels [3], [4]"),
        ("[2] > [1] > [2] > [3]", 3, "duplicated label [2]"),
        ("[1] > [5] > [2] > [3]", 3, "label [5] out of range [1]..[3]"),
        ("[0] > [1] > [2]", 3, "label [0] out of range [1]..[3]; missing label [3]"),
        ("I think [2] > [1] > [3], or maybe [1] > [2] > [3].", 3, "ambiguous: 2 different rankings"),
    ],
)
def test_invalid(reply, n, reason):
    with pytest.raises(RankingParseError) as e:
        parse_ranking(reply, n)
    assert reason in str(e.value)
    assert e.value.reason == str(e.value)


def test_parse_error_is_a_value_error():
    assert issubclass(RankingParseError, ValueError)


def test_n_below_two_is_a_programming_error():
    with pytest.raises(ValueError, match="n >= 2"):
        parse_ranking("[1]", 1)
