"""Which candidates a round ranks under a call budget: the signals on literals, the choice, its
file, and what later rounds count as used (cyclealign.data.candidates, cyclealign.data.selection)."""

import json
import math

import pytest

from cyclealign.config import build_config
from cyclealign.data.candidates import (
    Selection,
    diversity_score,
    random_score,
    select_candidates,
    selection_seed,
    uncertainty_score,
)
from cyclealign.data.selection import select_next_prompts, used_prompt_counts
from cyclealign.records import Generation, PromptRecord
from cyclealign.rundir import RunDir
from cyclealign.files import write_json


def gen(pid, token_ids, logprobs):
    return Generation(pid, [0], [f"r{i}" for i in range(len(token_ids))], token_ids, logprobs)


def test_uncertainty_is_the_mean_pairwise_bradley_terry_entropy():
    h = lambda p: -p * math.log(p) - (1 - p) * math.log(1 - p)  # noqa: E731
    sig = lambda d: 1 / (1 + math.exp(-d))  # noqa: E731
    g = gen("p", [[1], [2], [3]], [-0.5, -1.0, -2.5])
    expected = (h(sig(0.5)) + h(sig(2.0)) + h(sig(1.5))) / 3
    assert uncertainty_score(g) == pytest.approx(expected)
    assert uncertainty_score(gen("p", [[1], [2]], [-1.0, -1.0])) == pytest.approx(math.log(2))  # a tie: most unsure
    # Order and a common shift do not matter; a wider spread is surer.
    assert uncertainty_score(gen("p", [[1], [2], [3]], [-2.5, -0.5, -1.0])) == pytest.approx(expected)
    assert uncertainty_score(gen("p", [[1], [2], [3]], [-1.5, -2.0, -3.5])) == pytest.approx(expected)
    assert uncertainty_score(gen("p", [[1], [2]], [-1.0, -50.0])) < 1e-15
    assert uncertainty_score(gen("p", [[1]], [-1.0])) is None


def test_diversity_is_the_mean_pairwise_distinct_token_jaccard_distance():
    same = gen("p", [[5, 6, 7], [5, 6, 7]], [0.0, 0.0])
    apart = gen("p", [[5, 6, 7], [8, 9]], [0.0, 0.0])
    near = gen("p", [[5, 6, 7, 8], [5, 6, 7, 9]], [0.0, 0.0])  # 3 of 5 distinct tokens shared
    reordered = gen("p", [[5, 6, 7], [7, 6, 5, 5]], [0.0, 0.0])  # the same tokens: no diversity
    assert diversity_score(same) == 0.0 and diversity_score(apart) == 1.0 and diversity_score(reordered) == 0.0
    assert diversity_score(near) == pytest.approx(0.4)
    three = gen("p", [[5, 6, 7, 8], [5, 6, 7, 9], [8, 9]], [0.0] * 3)
    assert diversity_score(three) == pytest.approx((0.4 + 0.8 + 0.8) / 3)
    assert diversity_score(gen("p", [[5, 6]], [0.0])) is None


def test_random_scores_depend_on_the_seed_and_prompt_only():
    g, h = gen("a", [[1], [2]], [0.0, 0.0]), gen("b", [[1], [2]], [0.0, 0.0])
    assert random_score(g, 3) == random_score(gen("a", [[9], [8]], [-5.0, -1.0]), 3)
    assert len({random_score(g, 3), random_score(h, 3), random_score(g, 4)}) == 3
    assert selection_seed(5, 2) == 7


def test_select_candidates_chooses_the_top_scores_ties_to_the_earlier_and_never_a_single_response():
    gens = [
        gen("p0", [[1, 2], [3, 4]], [-1.0, -3.0]),
        gen("p1", [[1, 2], [1, 2, 3]], [-1.0, -1.0]),  # a tie: the most uncertain
        gen("p2", [[1, 2]], [-1.0]),  # one response: nothing to rank
        gen("p3", [[5, 6], [7, 8]], [-1.0, -1.2]),
    ]
    sel = select_candidates(gens, "uncertainty", 2, 1, seed=0)
    assert sel.chosen == ["p1", "p3"] and sel.not_selected == ["p0"]
    assert [c.score is None for c in sel.candidates] == [False, False, True, False]
    # diversity: p0 and p3 both 1.0, p1 1/3; a budget of 1 goes to the earlier of the tie
    assert select_candidates(gens, "diversity", 1, 1, seed=0).chosen == ["p0"]
    # consistency K: calls_per_round / K prompts; a budget above the candidates takes every scored one
    assert len(select_candidates(gens, "random", 4, 2, seed=0).chosen) == 2
    assert select_candidates(gens, "random", 9, 1, seed=0).chosen == ["p0", "p1", "p3"]
    # the same seed chooses the same; the choice does not depend on the list's order
    a = select_candidates(gens, "random", 2, 1, seed=11)
    assert a == select_candidates(gens, "random", 2, 1, seed=11)
    assert set(select_candidates(gens[::-1], "random", 2, 1, seed=11).chosen) == set(a.chosen)
    with pytest.raises(ValueError, match="unknown selection signal"):
        select_candidates(gens, "entropy", 2, 1, seed=0)
    with pytest.raises(ValueError, match="buys no ranking"):
        select_candidates(gens, "random", 1, 2, seed=0)


def test_a_selection_round_trips_through_json():
    sel = select_candidates([gen("a", [[1], [2]], [-1.0, -2.0]), gen("b", [[1], [2]], [-1.0, -1.0])], "uncertainty", 1, 1, 4)
    doc = json.loads(json.dumps(sel.to_json()))
    assert doc["chosen"] == ["b"] and doc["signal"] == "uncertainty" and doc["seed"] == 4
    assert Selection.from_json(doc) == sel


def test_candidates_not_selected_are_not_used_and_are_drawn_again_first(tmp_path):
    prompts = [PromptRecord(f"p{i}", [{"role": "user", "content": f"q{i}"}]) for i in range(6)]
    cfg = build_config(run_dir=tmp_path / "run", prompts_per_round=3, **{"ranker.calls_per_round": 1})
    run = RunDir(cfg.run_dir)
    rd = run.round(0)
    drawn = select_next_prompts(prompts, 3, cfg.seed, {})
    rd.record_prompts(drawn, "test")
    gens = [gen(p.id, [[1, i], [2, i]], [-1.0, -1.0 - i]) for i, p in enumerate(drawn)]
    sel = select_candidates(gens, "uncertainty", 1, 1, 0)
    assert sel.chosen == [drawn[0].id]
    write_json(rd.selection, sel.to_json())
    used = used_prompt_counts(run, prompts, 1, cfg)
    assert used == {drawn[0].content_hash: 1}
    # the next round draws the never-used ones first, and the not-selected ones are among them
    nxt = select_next_prompts(prompts, 5, cfg.seed, used, new_only=True)
    assert {p.id for p in nxt} == {p.id for p in prompts} - {drawn[0].id}
    # a round without selection.json used all its prompts, as before
    rd.selection.unlink()
    assert used_prompt_counts(run, prompts, 1, cfg) == {p.content_hash: 1 for p in drawn}
