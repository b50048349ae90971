"""Which responses a round trains on (train.target), read from real run-directory files."""

from __future__ import annotations

import pytest

from cyclealign.records import Generation, RankResult
from cyclealign.rundir import RunDir
from cyclealign.files import write_jsonl
from cyclealign.train.phase import round_examples, training_examples


@pytest.fixture
def run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    rd = run.round(0)
    rd.path.mkdir(parents=True)
    gens = [
        Generation("a", [1, 2], responses=["r0", "r1", "r2", "r3"], response_token_ids=[[10], [11], [12], [13]]),
        Generation("b", [3], responses=["s0", "s1", "s2"], response_token_ids=[[20], [21], [22]]),
        Generation("c", [4], responses=["t0", "t1"], response_token_ids=[[30], [31]]),
    ]
    write_jsonl(rd.generations, [g.to_json() for g in gens])
    write_jsonl(
        rd.rankings,
        [RankResult("a", [2, 0, 3, 1]).to_json(), RankResult("b", [1, 2, 0]).to_json(), RankResult("c", None, reason="x").to_json()],
    )
    write_jsonl(
        rd.agreement,
        [
            {"prompt_id": "a", "blackbox": [2, 0, 3, 1], "whitebox": [2, 3, 0, 1], "agreement": [2, 3, 1], "n": 4},
            {"prompt_id": "b", "blackbox": [1, 2, 0], "whitebox": [0, 2, 1], "agreement": [2], "n": 3},
        ],
    )
    return run


def test_blackbox_target_trains_every_ranked_prompt_on_its_whole_ranking(run):
    ex = round_examples(run, 0, "blackbox")
    assert [(e.prompt_ids, e.responses_ids) for e in ex] == [([1, 2], [[12], [10], [13], [11]]), ([3], [[21], [22], [20]])]


def test_agreement_target_trains_on_the_lcs_only_and_skips_short_ones(run):
    ex = round_examples(run, 0, "agreement")
    assert [(e.prompt_ids, e.responses_ids) for e in ex] == [([1, 2], [[12], [13], [11]])]


def test_unknown_target_is_named(run):
    with pytest.raises(ValueError, match="train.target must be 'blackbox' or 'agreement', got 'x'"):
        round_examples(run, 0, "x")


def test_replay_rounds_trains_earlier_rounds_rankings_first(run):
    rd = run.round(1)
    rd.path.mkdir(parents=True)
    write_jsonl(rd.generations, [Generation("d", [5], responses=["u0", "u1"], response_token_ids=[[40], [41]]).to_json()])
    write_jsonl(rd.rankings, [RankResult("d", [1, 0]).to_json()])
    own = [([5], [[41], [40]])]
    pairs = lambda exs: [(e.prompt_ids, e.responses_ids) for e in exs]  # noqa: E731
    assert pairs(training_examples(run, 1, "blackbox", 0)) == own
    round0 = pairs(round_examples(run, 0, "blackbox"))
    assert pairs(training_examples(run, 1, "blackbox", 1)) == round0 + own
    assert pairs(training_examples(run, 1, "blackbox", 5)) == round0 + own  # no rounds before 0
    assert pairs(training_examples(run, 0, "blackbox", 1)) == round0
    # The target applies to the replayed rounds too; round 1 has no agreement file: nothing of its own.
    assert pairs(training_examples(run, 1, "agreement", 1)) == pairs(round_examples(run, 0, "agreement"))
    with pytest.raises(ValueError, match="train.replay_rounds must be >= 0, got -1"):
        training_examples(run, 1, "blackbox", -1)
