"""Held-out evaluation: pairwise win rate with order swaps, ties and a binomial interval; the
whole `eval` on a real trained run against a real local HTTP judge; `iterate --eval-every`."""

from __future__ import annotations

import json
import re

import pytest
from scipy.stats import binomtest
from scripted_api import Reply, ScriptedAPI
from test_loop import KEY, make_config, ranking_requests, reverse_ranker
from test_ranker_client import make_ranker

from cyclealign.evaluate import EvalPlan, _win_rate, wilson_interval
from cyclealign.loop import NullReporter, evaluate_run, iterate
from cyclealign.policy.base import Generation
from cyclealign.ranker import RankerTemplates
from cyclealign.ranker.judge import JudgeTemplates
from cyclealign.records import PromptRecord
from cyclealign.resources import default_templates_dir
from cyclealign.rundir import RunDir, read_jsonl


def shown_pair(request):
    user = request["messages"][-1]["content"]
    return re.findall(r'<response id="\d">\n(.*?)\n</response>', user, re.S)


def test_win_rate_counts_a_win_only_when_both_orders_agree(tmp_path):
    # A's responses say "good", B's say "bad". Per prompt the judge behaves differently:
    #   q0, q1: prefers the good one in both orders -> win
    #   q2: prefers the bad one in both orders -> loss
    #   q3: always picks [1] (position bias) -> tie
    #   q4: says "tie" -> tie
    #   q5: unparsable -> invalid, left out
    #   q6: both policies gave the same response -> tie, never sent to the judge
    def judge(request):
        q = re.search(r"User: (q\d)", request["messages"][-1]["content"]).group(1)
        first, second = shown_pair(request)
        if q in ("q0", "q1"):
            return "[1]" if "good" in first else "[2]"
        if q == "q2":
            return "[1]" if "bad" in first else "[2]"
        return {"q3": "[1]", "q4": "tie", "q5": "I cannot decide between [1] or [2]"}[q]

    prompts = {f"q{i}": PromptRecord(f"q{i}", [{"role": "user", "content": f"q{i}"}]) for i in range(7)}
    gens_a = [Generation(p, [1], ["same" if p == "q6" else f"good {p}"], [[1]], [-1.0], [True]) for p in prompts]
    gens_b = [Generation(p, [1], ["same\n" if p == "q6" else f"bad {p}"], [[1]], [-1.0], [True]) for p in prompts]
    with ScriptedAPI(fallback=lambda r: Reply(judge(r))) as api:
        ranker = make_ranker(api, RankerTemplates(default_templates_dir()))
        judge_t = JudgeTemplates(default_templates_dir())
        line = _win_rate(ranker, judge_t, tmp_path, 0, -1, gens_a, gens_b, prompts)
        assert api.count == 12  # both orders of the 6 pairs that differ
        orders = {tuple(shown_pair(r)) for r in api.requests if "q0" in r["messages"][-1]["content"]}
        assert orders == {("good q0", "bad q0"), ("bad q0", "good q0")}
    assert (line["wins"], line["losses"], line["ties"], line["invalid"], line["identical"]) == (2, 1, 3, 1, 1)
    assert line["win_rate"] == pytest.approx(2 / 6) and line["win_rate_ties_half"] == pytest.approx(3.5 / 6)
    ci = binomtest(2, 6).proportion_ci(method="wilson")
    assert (line["ci_low"], line["ci_high"]) == pytest.approx((ci.low, ci.high))
    rows = read_jsonl(tmp_path / "judgements_round_000_vs_base.jsonl")
    assert [r["outcome"] for r in rows] == ["win", "win", "loss", "tie", "tie", "invalid", "tie"]
    assert rows[6]["identical"] and rows[6]["replies"] == []
    assert rows[5]["problem"].startswith("unparsable verdict: conflicting verdicts")


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (None, None)
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and 0 < high < 0.35
    low, high = wilson_interval(10, 10)
    assert 0.65 < low < 1 and high == pytest.approx(1.0)


def judge_or_rank(request):
    """The ranker's scripted answers, and for the judge: always prefer the longer response."""
    if "Which response is better?" in request["messages"][-1]["content"]:
        first, second = shown_pair(request)
        return "[1]" if len(first) >= len(second) else "[2]"
    return reverse_ranker(request)


@pytest.mark.slow
def test_eval_every_round_then_eval_again_costs_no_call(tmp_path, prompts_file):
    held = tmp_path / "held_out.jsonl"
    questions = ["Name a planet.", "Say thanks.", "Name a color.", "Give a number."]  # "Name a color." is trained on
    held.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions))
    with ScriptedAPI(fallback=judge_or_rank) as api:
        cfg = make_config(
            tmp_path, prompts_file, api, rounds=1, prompts_per_round=4,
            **{"eval.every": 1, "eval.prompts": held, "eval.num_prompts": 8},
        )
        iterate(cfg, environ={"OPENAI_API_KEY": KEY})
        out = cfg.run_dir / "eval"
        summary = read_jsonl(out / "summary.jsonl")
        assert [s["label"] for s in summary] == ["base", "round 0"]
        base, r0 = summary
        assert r0["vs"] == "base" and r0["prompts"] == 3  # the trained-on prompt was left out
        assert r0["wins"] + r0["losses"] + r0["ties"] + r0["invalid"] == 3
        assert 0 <= r0["ci_low"] <= r0["win_rate"] <= r0["ci_high"] <= 1
        assert -1 <= r0["kendall_tau"] <= 1 and r0["length_mean"] > 0 and "win_rate" not in base
        samples = read_jsonl(out / "samples.jsonl")
        assert {s["label"] for s in samples} == {"base", "round 0"} and len(samples) == 6
        assert "Name a color." not in {s["prompt"].split(": ", 1)[1] for s in samples}
        ledger = read_jsonl(RunDir(cfg.run_dir).ranker_calls)
        assert any(c["round"] == "eval" for c in ledger)
        judge_calls = [r for r in api.requests if "Which response is better?" in r["messages"][-1]["content"]]
        assert len(judge_calls) == 2 * (3 - r0["identical"])  # both orders of each pair that differs
        assert {r["max_tokens"] for r in judge_calls} == {cfg.eval.judge_max_tokens}

        # The same evaluation again: generations reused, every judge/ranker reply from the cache.
        before = api.count
        lines = evaluate_run(cfg, EvalPlan(held, 8), environ={"OPENAI_API_KEY": KEY})
        assert api.count == before + 1  # the preflight ping only
        assert [ln.get("win_rate") for ln in lines] == [s.get("win_rate") for s in summary]
    assert len(ranking_requests(api)) > 0



class FixedPolicy:
    """A stand-in generation backend: two fixed responses per prompt, tagged with the loaded adapter."""

    def __init__(self):
        self.adapter, self.sampled = None, []

    def load_adapter(self, path):
        self.adapter = path

    def sample(self, prompts, seed, progress=None):
        tag = "base" if self.adapter is None else "tuned"
        self.sampled.append(tag)
        return [
            Generation(p.id, [1], [f"{tag} {p.id}", f"{tag} {p.id}, longer"], [[1], [1, 2]], [-1.0, -2.0], [True, True])
            for p in prompts
        ]


def test_run_evaluation_loads_the_policy_only_for_missing_generations_and_the_reward_model_once(
    tmp_path, prompts_file, monkeypatch
):
    import cyclealign.evaluate as evaluate
    from cyclealign.config import build_config

    held = tmp_path / "held_out.jsonl"
    held.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ("Name a planet.", "Say thanks.")))
    cfg = build_config(run_dir=tmp_path / "run", prompts=prompts_file, rounds=1, prompts_per_round=2)
    run = RunDir(cfg.run_dir)
    run.round(0).mark_done("train", adapter=True)  # round 0 counts as trained; FixedPolicy ignores the path
    loaded = []

    class LengthScorer:
        def __init__(self, model_id, cfg):
            loaded.append(model_id)

        def __call__(self, pairs, batch_size=8):
            return [float(len(response)) for _, response in pairs]

    monkeypatch.setattr(evaluate, "RewardScorer", LengthScorer)
    backend, factory_calls = FixedPolicy(), []

    def policy():
        factory_calls.append(1)
        return backend

    plan = EvalPlan(held, 2, reward_model="length-rm", judge_max_tokens=9)
    with ScriptedAPI(fallback=judge_or_rank) as api:
        ranker = make_ranker(api, RankerTemplates(default_templates_dir()))
        judge_t = JudgeTemplates(default_templates_dir())
        lines = evaluate.run_evaluation(cfg, run, plan, ranker=ranker, policy=policy, judge=judge_t)
        assert loaded == ["length-rm"]  # one load scores both policies
        assert backend.sampled == ["base", "tuned"] and len(factory_calls) == 2
        judge_calls = [r for r in api.requests if "Which response is better?" in r["messages"][-1]["content"]]
        assert len(judge_calls) == 4 and {r["max_tokens"] for r in judge_calls} == {9}

        # Every generation is on disk now: evaluating again does not ask for the policy.
        again = evaluate.run_evaluation(cfg, run, plan, ranker=ranker, policy=policy, judge=judge_t)
        assert len(factory_calls) == 2 and backend.sampled == ["base", "tuned"]
    assert [ln["label"] for ln in lines] == ["base", "round 0"]
    for line, slug in zip(lines, ("base", "round_000")):
        firsts = [g["responses"][0] for g in read_jsonl(cfg.run_dir / "eval" / f"generations_{slug}.jsonl")]
        assert len(firsts) == 2 and line["reward_mean"] == pytest.approx(sum(map(len, firsts)) / 2)
    assert again == lines


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, embedded_model_dir):
    """A real local sequence-classification model: SmolLM2's body with a seeded 1-logit head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(embedded_model_dir, num_labels=1)
    out = tmp_path_factory.mktemp("reward_model")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(embedded_model_dir).save_pretrained(out)
    return out


@pytest.mark.slow
def test_reward_scores_do_not_depend_on_batching_or_padding(reward_model_dir):
    from cyclealign.config import Config
    from cyclealign.evaluate import reward_scores

    cfg = Config()
    prompt = PromptRecord(id="p", messages=[{"role": "user", "content": "Name a planet."}])
    pairs = [(prompt, "Mars."), (prompt, "Jupiter is the largest planet of the solar system, a gas giant."), (prompt, "Venus.")]
    batched = reward_scores(str(reward_model_dir), pairs, cfg, batch_size=3)
    alone = [reward_scores(str(reward_model_dir), [p], cfg, batch_size=1)[0] for p in pairs]
    assert batched == pytest.approx(alone, abs=1e-3)  # the padded batch reads each pair's own last token
    assert len(set(round(s, 4) for s in batched)) == 3  # distinct responses, distinct scores


def test_reward_model_that_cannot_load_names_the_path(tmp_path):
    from cyclealign.config import Config
    from cyclealign.errors import ConfigError
    from cyclealign.evaluate import reward_scores

    missing = tmp_path / "no_such_reward_model"
    prompt = PromptRecord(id="p", messages=[{"role": "user", "content": "Hi."}])
    with pytest.raises(ConfigError, match="no_such_reward_model"):
        reward_scores(str(missing), [(prompt, "Hello.")], Config())


class CrashAtEval(NullReporter):
    """Simulates a crash as the evaluation after a round starts (the round itself is finished)."""

    def phase_start(self, round_index, phase, total):
        if phase == "eval":
            raise KeyboardInterrupt("simulated crash during the evaluation")


@pytest.mark.slow
def test_an_evaluation_cut_off_by_a_crash_is_done_on_resume(tmp_path, prompts_file):
    held = tmp_path / "held_out.jsonl"
    held.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ["Name a planet.", "Say thanks."]))
    with ScriptedAPI(fallback=judge_or_rank) as api:
        cfg = make_config(
            tmp_path, prompts_file, api, rounds=1, prompts_per_round=4,
            **{"eval.every": 1, "eval.prompts": held, "eval.num_prompts": 8},
        )
        with pytest.raises(KeyboardInterrupt):
            iterate(cfg, environ={"OPENAI_API_KEY": KEY}, reporter=CrashAtEval())
        run = RunDir(cfg.run_dir)
        assert run.round(0).is_done("metrics") and read_jsonl(run.path / "eval" / "summary.jsonl") == []
        iterate(cfg, resume=True, environ={"OPENAI_API_KEY": KEY})
        summary = read_jsonl(run.path / "eval" / "summary.jsonl")
        assert [s["label"] for s in summary] == ["base", "round 0"] and summary[1]["prompts"] == 2
        # Evaluated once: a further resume finds it done and sends no judge call.
        judged = sum("Which response is better?" in r["messages"][-1]["content"] for r in api.requests)
        iterate(cfg, resume=True, environ={"OPENAI_API_KEY": KEY})
        assert sum("Which response is better?" in r["messages"][-1]["content"] for r in api.requests) == judged
