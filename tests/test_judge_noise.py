"""The noisy rule judge (position bias, adjacent swaps) through the real server and ranker client,
its determinism, and the label-accuracy measure built on it (and the bench's label-only mode)."""

from __future__ import annotations

import argparse
import json
import urllib.request

import pytest
import tenacity

from cyclealign.config.ranker import RankerConfig
from cyclealign.efficacy.labels import MODES, label_accuracy, pair_counts, pooled
from cyclealign.efficacy.rules import RULES
from cyclealign.efficacy.server import JudgeNoise, RuleBlackBox, rule_answer
from cyclealign.ranker.client import Ranker
from cyclealign.records import PromptRecord
from cyclealign.resources import default_templates_dir
from cyclealign.templates.ranker import RankerTemplates

PROMPT = PromptRecord("q", [{"role": "user", "content": "Tell me about tea."}])
# paragraphs: 2 breaks > 1 break > none (the first two certain, the last two tie)
RESPONSES = ["Plain.", "Para one.\n\nPara two.\n\nPara three.", "A.\n\nB.", "Flat too."]


def rank_through(box: RuleBlackBox, seeds: range) -> list:
    ranker = Ranker(
        RankerConfig(shuffle=True, structured_output="off", max_retries=1, timeout_s=10.0),
        base_url=box.base_url, model=box.model, api_key="rule-black-box",
        templates=RankerTemplates(default_templates_dir()), retry_wait=tenacity.wait_none(),
    )
    with ranker:
        return [ranker.rank(PROMPT, RESPONSES, [], shuffle_seed=s) for s in seeds]


def test_position_bias_moves_the_first_shown_response_to_the_top_at_p1_and_not_at_p0():
    with RuleBlackBox(RULES["paragraphs"], JudgeNoise(position_bias=0.0)) as exact:
        assert exact.model == "rule-paragraphs"
        clean = rank_through(exact, range(12))
    with RuleBlackBox(RULES["paragraphs"], JudgeNoise(position_bias=1.0)) as biased:
        assert biased.model == "rule-paragraphs-pb1-sw0-s0"  # its cached replies apart from the exact judge's
        noisy = rank_through(biased, range(12))
    assert all(r.ranking[:2] == [1, 2] for r in clean)
    assert all(r.ranking[0] == r.samples[0].order[0] for r in noisy)  # shown first, ranked first
    # the bias changed the labels wherever the rule's best was not shown first, and left the rest in the rule's order
    changed = [c.ranking != n.ranking for c, n in zip(clean, noisy)]
    assert sum(changed) >= 6
    for c, n in zip(clean, noisy):
        assert [i for i in n.ranking if i != n.ranking[0]] == [i for i in c.ranking if i != n.ranking[0]]


def body(order: list[int], extra: str = "") -> dict:
    shown = "\n\n".join(f'<response id="{j + 1}">\nresponse {i}: {"you " * i}\n</response>' for j, i in enumerate(order))
    return {"model": "m", "messages": [{"role": "user", "content": extra + shown}]}


def test_the_noise_is_a_function_of_the_request_and_the_seed():
    rule, noise = RULES["marker"], JudgeNoise(position_bias=0.5, swap_prob=0.3, seed=4)
    requests = [body([3, 1, 0, 2, 4], extra=f"prompt {k}\n") for k in range(30)]
    first = [rule_answer(rule, r, noise) for r in requests]
    assert first == [rule_answer(rule, r, JudgeNoise(0.5, 0.3, seed=4)) for r in requests]
    assert first != [rule_answer(rule, r, JudgeNoise(0.5, 0.3, seed=5)) for r in requests]
    assert len(set(first)) > 1  # the requests differ, so do their draws
    exact = rule_answer(rule, requests[0])
    assert exact == "[5] > [1] > [4] > [2] > [3]" and all(rule_answer(rule, r, JudgeNoise()) == exact for r in requests)
    # over HTTP, the same request gets the same reply (cache and resume see what a fresh run sees)
    with RuleBlackBox(rule, noise) as box:
        def ask(req):
            http = urllib.request.Request(f"{box.base_url}/chat/completions", json.dumps(req).encode(), {"Content-Type": "application/json"})
            with urllib.request.urlopen(http, timeout=10) as resp:
                return json.loads(resp.read())["choices"][0]["message"]["content"]

        assert [ask(r) for r in requests[:5]] == first[:5] == [ask(r) for r in requests[:5]]


@pytest.mark.parametrize("field", ["position_bias", "swap_prob"])
def test_noise_probabilities_are_checked(field):
    with pytest.raises(ValueError, match=f"{field}=1.5: a probability"):
        JudgeNoise(**{field: 1.5})


def test_swaps_alone_change_labels_and_the_rate_grows_with_q():
    rule = RULES["brevity"]
    lists = [(f"p{i}", [" ".join(["w"] * (n + 1)) for n in range(4)]) for i in range(60)]  # no ties: 1-4 words
    wrong = []
    for q in (0.0, 0.1, 0.4):
        r = label_accuracy(rule, lists, JudgeNoise(swap_prob=q, seed=1), consistency=3)
        wrong.append(1 - r["single"]["pair_accuracy"])
    assert wrong[0] == 0.0 < wrong[1] < wrong[2]


def test_label_accuracy_on_literals():
    assert pair_counts([0, 1, 2], [1.0, 1.0, 0.0]) == (2, 2)
    rule = RULES["brevity"]
    lists = [(f"p{i}", [" ".join(["w"] * (n + 1)) for n in range(4)]) for i in range(40)]
    exact = label_accuracy(rule, lists, JudgeNoise(), consistency=3)
    assert set(exact) == set(MODES)
    assert all(exact[m]["pair_accuracy"] == 1.0 and exact[m]["kept_share"] == 1.0 for m in MODES)
    assert exact["single"]["calls"] == 40 and exact["kemeny"]["calls"] == 120
    biased = label_accuracy(rule, lists, JudgeNoise(position_bias=0.5, seed=2), consistency=3, thresholds=(1.0,))
    assert biased["single"]["pair_accuracy"] < 1.0
    # each order shows another response first: one biased order is always outvoted
    assert biased["kemeny"]["kept_share"] == 1.0 and biased["kemeny"]["pair_accuracy"] == 1.0
    assert biased["strict"]["kept_share"] < 1.0 and biased["kemeny_at"]["1"]["kept"] == biased["strict"]["kept"]
    with pytest.raises(ValueError, match="K >= 2"):
        label_accuracy(rule, lists, JudgeNoise(), consistency=1)
    both = pooled([exact["single"], biased["single"]])
    assert both["prompts"] == 80 and both["truth_pairs"] == 2 * exact["single"]["truth_pairs"]


def test_bench_label_only_mode_pools_rules_and_draws():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_efficacy.py"
    spec = importlib.util.spec_from_file_location("bench_efficacy", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lists = {0: [(f"hh:p{i}", [" ".join(["you"] * n + ["w"] * (4 - n)) for n in range(4)]) for i in range(20)]}
    args = argparse.Namespace(position_bias=0.3, swap_prob=0.0, consistency=3, min_confidence=0.6, judge_draws=2, label_lists="heldout")
    out = bench.label_only(args, [RULES["marker"], RULES["brevity"]], [0], lists)
    json.dumps(out)  # one JSON line
    assert out["all_rules"]["kemeny"]["prompts"] == 2 * 2 * 20  # rules x draws x lists
    assert set(out["rules"]) == {"marker", "brevity"} and "0.9" in out["all_rules"]["kemeny_at"]
    assert out["all_rules"]["kemeny"]["kept_share"] >= out["all_rules"]["strict"]["kept_share"]
