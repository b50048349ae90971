"""K presentation orders' rankings combined into one: the pure aggregation (Borda, Kemeny, per-pair
agreement, confidence), how a prompt's samples combine under each ``ranker.aggregate``, the config
and its flags, the records, and a real round (tiny model, a real position-biased black box) where
aggregation keeps what strict mode drops."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from cyclealign.config import build_config
from cyclealign.errors import ConfigError, RunDirError
from cyclealign.ranker.aggregate import KEMENY_MAX_N, aggregate_rankings, borda, kemeny, pair_agreement
from cyclealign.ranker.ranking import combine_samples, presentation_order
from cyclealign.records import RankResult, RankSample
from cyclealign.rundir import RunDir


def kendall_distance(a, b):
    pos = {x: i for i, x in enumerate(b)}
    return sum(pos[a[i]] > pos[a[j]] for i in range(len(a)) for j in range(i + 1, len(a)))


# -- the pure aggregation ----------------------------------------------------------------------
def test_borda_on_literals_and_its_tie_break():
    # scores: 0 -> 2+1+2 = 5, 1 -> 1+2+0 = 3, 2 -> 0+0+1 = 1
    assert borda([[0, 1, 2], [1, 0, 2], [0, 2, 1]]) == [0, 1, 2]
    # 0 and 1 tie on 3 each: the first ranking's order decides, whichever it is
    assert borda([[1, 0, 2], [0, 1, 2]]) == [1, 0, 2]
    assert borda([[0, 1, 2], [1, 0, 2]]) == [0, 1, 2]


def test_kemeny_is_the_brute_force_optimum_with_the_documented_tie_break():
    rng = random.Random(7)
    for _ in range(200):
        n, k = rng.randint(2, 6), rng.randint(1, 5)
        rankings = [rng.sample(range(n), n) for _ in range(k)]
        cost = {p: sum(kendall_distance(p, r) for r in rankings) for p in itertools.permutations(range(n))}
        best = min(cost.values())
        b = borda(rankings)
        want = min((list(p) for p, c in cost.items() if c == best), key=lambda p: (kendall_distance(p, b), p))
        assert kemeny(rankings) == want, rankings


def test_kemeny_sides_with_the_majority_where_borda_does_not():
    # two voters put 0 top, one puts 0 last: the majority says 0 first on every pair, but Borda's
    # points reward the lone voter's big gap and put 1 first
    rankings = [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [1, 2, 3, 4, 0]]
    assert kemeny(rankings) == [0, 1, 2, 3, 4]
    assert borda(rankings) == [1, 0, 2, 3, 4]  # 0: 4+4+0 = 8, 1: 3+3+4 = 10
    assert aggregate_rankings(rankings, "kemeny").confidence > aggregate_rankings(rankings, "borda").confidence


def test_pair_agreement_and_confidence_formula():
    rankings = [[0, 1, 2], [0, 1, 2], [1, 0, 2]]
    a = aggregate_rankings(rankings)
    assert a.ranking == [0, 1, 2] and a.method == "kemeny"
    assert a.pairs == pair_agreement([0, 1, 2], rankings) == [(0, 1, 2 / 3), (0, 2, 1.0), (1, 2, 1.0)]
    # confidence = mean per-pair share = (1 + mean Kendall tau of the aggregate with each ranking) / 2
    taus = [1 - 2 * kendall_distance(a.ranking, r) / 3 for r in rankings]
    assert a.confidence == pytest.approx((2 / 3 + 1 + 1) / 3) == pytest.approx((1 + sum(taus) / 3) / 2)
    assert aggregate_rankings([[2, 0, 1]] * 4).confidence == 1.0


def test_a_cycle_forces_one_pair_against_its_majority():
    a = aggregate_rankings([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
    assert a.ranking == [0, 1, 2]  # all rotations cost the same: Borda (all tied) -> the first ranking
    assert sorted(s for _, _, s in a.pairs) == [pytest.approx(1 / 3), pytest.approx(2 / 3), pytest.approx(2 / 3)]
    assert a.confidence == pytest.approx(5 / 9) and a.confidence < 0.6  # the default threshold drops it


def test_kemeny_above_eight_responses_falls_back_to_borda():
    rng = random.Random(0)
    rankings = [rng.sample(range(KEMENY_MAX_N + 1), KEMENY_MAX_N + 1) for _ in range(3)]
    a = aggregate_rankings(rankings, "kemeny")
    assert a.method == "borda" and a.ranking == borda(rankings)
    with pytest.raises(ValueError, match="N <= 8"):
        kemeny(rankings)
    assert aggregate_rankings([r[:8] for r in [list(range(8))] * 2]).method == "kemeny"


@pytest.mark.parametrize("bad", [[], [[0, 1], [0, 0]], [[0]], [[0, 1], [0, 1, 2]]])
def test_not_permutations_are_refused(bad):
    with pytest.raises(ValueError):
        aggregate_rankings(bad)


def test_an_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        aggregate_rankings([[0, 1]], "mean")  # type: ignore[arg-type]


# -- a prompt's samples ----------------------------------------------------------------------
def samples(*rankings):
    return [RankSample(list(range(len(r))), ["x"], list(r)) for r in rankings]


def test_aggregation_keeps_a_two_of_three_majority_that_strict_drops():
    three = samples([0, 1, 2, 3], [0, 1, 2, 3], [3, 0, 1, 2])  # one order's judge put [4] on top
    strict = combine_samples(three, "strict")
    assert strict.ranking is None and strict.status.value == "inconsistent" and strict.consistent is False
    assert strict.confidence == pytest.approx(1 - 3 / 18)  # the Kemeny aggregate's, for comparison
    c = combine_samples(three, "kemeny", 0.6)
    assert c.ranking == [0, 1, 2, 3] and c.status.value == "ranked" and c.reason is None
    assert c.consistent is False and c.confidence == pytest.approx(15 / 18)
    assert [s for _, _, s in c.pair_agreement] == pytest.approx([1, 1, 2 / 3, 1, 2 / 3, 2 / 3])  # pairs with 3 split
    # Borda's points (0: 8, 1: 5, 2: 2, 3: 3) follow the lone order's big jump: 3 above 2
    b = combine_samples(three, "borda", 0.6)
    assert b.ranking == [0, 1, 3, 2] and b.status.value == "ranked" and b.confidence == pytest.approx(14 / 18)
    low = combine_samples(three, "kemeny", 0.9)
    assert low.ranking is None and low.reason.startswith("inconsistent across 3 presentation orders (confidence 0.833 < ")


def test_agreeing_samples_and_failures_combine_as_before():
    same = combine_samples(samples([1, 0, 2], [1, 0, 2]), "kemeny", 1.0)
    assert same.ranking == [1, 0, 2] and same.consistent is True and same.confidence == 1.0
    one = combine_samples(samples([1, 0]), "kemeny")
    assert one.ranking == [1, 0] and one.confidence is None and one.pair_agreement is None
    bad = samples([0, 1]) + [RankSample([0, 1], ["?"], None, "unparsable after 1 attempts: x")]
    assert combine_samples(bad, "kemeny").status.value == "unparsable"


def test_reparse_combines_stored_samples_as_the_run_is_configured():
    from cyclealign.reparse import reparse_results

    stored = [RankResult("p", None, reason="inconsistent across 3 presentation orders: x",
                         samples=[RankSample([0, 1, 2], [t], None) for t in ("[1] > [2] > [3]", "[1] > [2] > [3]", "[2] > [1] > [3]")])]
    strict = reparse_results(stored, {"p": 3}, False)
    assert strict[0].ranking is None and strict[0].consistent is False
    (kept,) = reparse_results(stored, {"p": 3}, False, "kemeny", 0.6)
    assert kept.ranking == [0, 1, 2] and kept.confidence == pytest.approx(8 / 9) and len(kept.pair_agreement) == 3


def test_presentation_orders_show_a_different_response_first():
    for n in (2, 3, 4, 8):
        firsts = [presentation_order(3, "p", k, n)[0] for k in range(n)]
        assert sorted(firsts) == list(range(n))
        assert all(sorted(presentation_order(3, "p", k, n)) == list(range(n)) for k in range(8))
    # sample 0 is the plain seeded shuffle it always was (one-order runs and their cache unchanged)
    order = list(range(4))
    random.Random("3:p:0").shuffle(order)
    assert presentation_order(3, "p", 0, 4) == order


# -- records and config ----------------------------------------------------------------------
def test_rank_results_keep_old_bytes_and_carry_the_confidence():
    old = RankResult("p", [1, 0], samples=samples([1, 0]))
    assert "confidence" not in old.to_json() and "pair_agreement" not in old.to_json()
    new = RankResult("p", [0, 1, 2], samples=samples([0, 1, 2], [1, 0, 2]), consistent=False, confidence=0.833,
                     pair_agreement=[[0, 1, 0.5], [0, 2, 1.0], [1, 2, 1.0]])
    back = RankResult.from_json(json.loads(json.dumps(new.to_json())))
    assert back == new and back.confidence == 0.833


def test_config_validates_the_aggregation_and_its_threshold():
    cfg = build_config()
    assert cfg.ranker.aggregate == "kemeny" and cfg.ranker.min_confidence == 0.6
    with pytest.raises(ConfigError, match="ranker.aggregate"):
        build_config(**{"ranker.aggregate": "mean"})
    with pytest.raises(ConfigError, match="ranker.min_confidence"):
        build_config(**{"ranker.min_confidence": 1.5})


def test_iterate_flags_set_the_aggregation():
    from typer.testing import CliRunner

    from cyclealign.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["iterate", "--dry-run", "--ranker-consistency", "3", "--ranker-aggregate", "borda",
                                "--ranker-min-confidence", "0.75", "--run-dir", "/nonexistent/aggr"], env={"COLUMNS": "250"})
    assert "borda aggregate kept at confidence >= 0.75" in " ".join(shown.output.split()), shown.output
    bad = runner.invoke(app, ["iterate", "--dry-run", "--ranker-aggregate", "vote"])
    assert bad.exit_code == 2 and "ranker.aggregate" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, ["iterate", "--dry-run", "--ranker-min-confidence", "-0.1"])
    assert bad.exit_code == 2 and "ranker.min_confidence" in bad.output


def test_a_run_saved_before_aggregation_resumes_and_reparses_strict(tmp_path):
    cfg = build_config(run_dir=tmp_path / "run", **{"ranker.consistency": 3})
    saved = json.loads(cfg.to_json())
    del saved["ranker"]["aggregate"], saved["ranker"]["min_confidence"]
    run = RunDir(cfg.run_dir)
    run.path.mkdir(parents=True)
    run.config.write_text(json.dumps(saved))
    old = run.read_config()
    assert old.ranker.aggregate == "strict" and old.ranker.min_confidence == 0.6
    run.check_config(old.to_json(), resume=True)  # resumes as it started
    with pytest.raises(RunDirError, match="ranker.aggregate: 'strict' -> 'kemeny'"):
        run.check_config(cfg.to_json(), resume=True)


# -- a real round ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny_model import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_a_round_with_three_orders_keeps_under_aggregation_what_strict_drops(tiny_dir, tmp_path, prompts_file):
    """A real round: a tiny policy, a real local black box whose judge always puts the response
    shown first on top (the rule's order otherwise), three presentation orders. Each order shows
    another response first, so the three rankings differ: strict mode drops every prompt;
    Kemeny aggregation keeps each with the rule's majority order, records its confidence and
    per-pair agreement, and the agreement phase uses the aggregate."""
    from cyclealign.efficacy.rules import RULES
    from cyclealign.efficacy.server import JudgeNoise, RuleBlackBox
    from cyclealign.loop import iterate

    lines = {}
    with RuleBlackBox(RULES["brevity"], JudgeNoise(position_bias=1.0)) as box:
        for mode in ("strict", "kemeny"):
            cfg = build_config(**{
                "run_dir": str(tmp_path / mode), "prompts": str(prompts_file), "rounds": 1, "prompts_per_round": 2,
                "model.name_or_path": str(tiny_dir), "generation.num_samples": 3, "generation.max_new_tokens": 12,
                "ranker.base_url": box.base_url, "ranker.model": box.model, "ranker.cache_path": str(tmp_path / "cache.sqlite"),
                "ranker.consistency": 3, "ranker.aggregate": mode, "train.epochs": 1,
            })
            (lines[mode],) = iterate(cfg, environ={"OPENAI_API_KEY": "rule-black-box"})
    strict, agg = RunDir(tmp_path / "strict").round(0), RunDir(tmp_path / "kemeny").round(0)
    dropped = strict.read_rankings()
    assert [r.status.value for r in dropped] == ["inconsistent", "inconsistent"]
    assert lines["strict"]["ranked"] == 0 and lines["strict"]["consistency_rate"] == 0.0 == lines["strict"]["kept_rate"]
    kept = agg.read_rankings()
    assert [r.status.value for r in kept] == ["ranked", "ranked"]
    assert lines["kemeny"]["ranked"] == 2 and lines["kemeny"]["kept_rate"] == 1.0 and lines["kemeny"]["consistency_rate"] == 0.0
    rows = {row.prompt_id: row for row in agg.read_agreement()}
    for r in kept:
        rankings = [s.ranking for s in r.samples]
        assert len({tuple(x) for x in rankings}) > 1 and r.consistent is False
        a = aggregate_rankings(rankings, "kemeny")
        assert r.ranking == a.ranking and r.confidence == pytest.approx(a.confidence) and r.confidence < 1.0
        assert r.pair_agreement == [[x, y, s] for x, y, s in a.pairs]
        assert rows[r.prompt_id].blackbox == r.ranking  # the LCS and the demo pool see the aggregate
    assert lines["kemeny"]["confidence_mean"] == pytest.approx(sum(r.confidence for r in kept) / 2)
    stored = [json.loads(x) for x in agg.rankings.read_text().splitlines()]
    assert all("confidence" in d and "pair_agreement" in d for d in stored)
