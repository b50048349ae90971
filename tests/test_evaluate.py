"""Held-out evaluation: pairwise win rate with order swaps, ties and a binomial interval; greedy
judged responses next to sampled ones for agreement; generations keyed by decoding and token cap;
a breakdown by prompt source; reward-model input formats; the whole `eval` on a real trained run
against a real local HTTP judge; `iterate --eval-every`."""

from __future__ import annotations

import json
import re

import pytest
from scipy.stats import binomtest
from scripted_api import Reply, ScriptedAPI
from scripted_run import KEY, make_config, make_ranker, ranking_requests, reverse_ranker

from cyclealign.evaluation.plan import EvalPlan
from cyclealign.evaluation.reward import reward_input, reward_input_style
from cyclealign.evaluation.runner import evaluate_run, evaluated
from cyclealign.evaluation.winrate import judge_pairs, wilson_interval, win_summary
from cyclealign.loop import iterate
from cyclealign.progress import NullReporter
from cyclealign.records import Generation, PromptRecord
from cyclealign.resources import default_templates_dir
from cyclealign.rundir import RunDir
from cyclealign.files import read_jsonl
from cyclealign.templates.judge import JudgeTemplates
from cyclealign.templates.ranker import RankerTemplates


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
        line = win_summary(judge_pairs(ranker.endpoint, judge_t, tmp_path, 0, -1, gens_a, gens_b, prompts))
        assert api.count == 12  # both orders of the 6 pairs that differ
        orders = {tuple(shown_pair(r)) for r in api.requests if "q0" in r["messages"][-1]["content"]}
        assert orders == {("good q0", "bad q0"), ("bad q0", "good q0")}
    assert (line["wins"], line["losses"], line["ties"], line["invalid"], line["identical"]) == (2, 1, 3, 1, 1)
    assert line["win_rate"] == pytest.approx(2 / 6) and line["win_rate_ties_half"] == pytest.approx(3.5 / 6)
    ci = binomtest(2, 6).proportion_ci(method="wilson")
    assert (line["ci_low"], line["ci_high"]) == pytest.approx((ci.low, ci.high))
    rows = read_jsonl(tmp_path / "judgements_round_000_vs_base.jsonl")
    assert [r["outcome"] for r in rows] == ["win", "win", "loss", "tie", "tie", "invalid", "tie"]
    assert rows[6]["identical"] and rows[6]["replies"] == [] and not any(r["identical"] for r in rows[:6])
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
            **{"eval.every": 1, "eval.prompts": held, "eval.num_prompts": 8, "eval.max_new_tokens": 12},
        )
        iterate(cfg, environ={"OPENAI_API_KEY": KEY})
        out = cfg.run_dir / "eval"
        summary = read_jsonl(out / "summary.jsonl")
        assert [s["label"] for s in summary] == ["base", "round 0"]
        base, r0 = summary
        assert r0["vs"] == "base" and r0["prompts"] == 3  # the trained-on prompt was left out
        assert r0["wins"] + r0["losses"] + r0["ties"] + r0["invalid"] == 3
        assert 0 <= r0["ci_low"] <= r0["win_rate"] <= r0["ci_high"] <= 1
        assert -1 <= r0["kendall_tau"] <= 1 and 0 < r0["length_mean"] <= 12 and "win_rate" not in base
        assert (r0["decoding"], r0["max_new_tokens"]) == ("greedy", 12) and "by_source" not in r0
        # The judged responses are the greedy ones; agreement ranked N samples per prompt.
        greedy = read_jsonl(out / "generations_round_000_greedy_12tok.jsonl")
        assert all(len(g["responses"]) == 1 and len(g["response_token_ids"][0]) <= 12 for g in greedy)
        assert all(len(g["responses"]) >= 2 for g in read_jsonl(out / "generations_round_000_sampled_12tok.jsonl"))
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
        lines = evaluate_run(cfg, EvalPlan(held, 8, max_new_tokens=12), environ={"OPENAI_API_KEY": KEY})
        assert api.count == before + 1  # the preflight ping only
        assert [ln.get("win_rate") for ln in lines] == [s.get("win_rate") for s in summary]
    assert len(ranking_requests(api)) > 0



class FixedPolicy:
    """A stand-in generation backend: two fixed sampled responses per prompt and one greedy one,
    tagged with the loaded adapter; records each call as (kind, tag, max_new_tokens)."""

    def __init__(self):
        self.adapter, self.calls = None, []

    def load_adapter(self, path):
        self.adapter = path

    @property
    def tag(self):
        return "base" if self.adapter is None else "tuned"

    def sample(self, prompts, seed, progress=None, max_new_tokens=None):
        self.calls.append(("sampled", self.tag, max_new_tokens))
        t = self.tag
        return [
            Generation(p.id, [1], [f"{t} {p.id}", f"{t} {p.id}, longer"], [[1], [1, 2]], [-1.0, -2.0], [True, True])
            for p in prompts
        ]

    def greedy(self, prompts, max_new_tokens=None, progress=None):
        self.calls.append(("greedy", self.tag, max_new_tokens))
        return [Generation(p.id, [1], [f"{self.tag} {p.id} greedy"], [[1, 2, 3]], [-0.5], [True]) for p in prompts]


def trained_run(tmp_path, prompts_file):
    """A run whose round 0 counts as trained (FixedPolicy ignores the adapter path)."""
    from cyclealign.config import build_config

    cfg = build_config(run_dir=tmp_path / "run", prompts=prompts_file, rounds=1, prompts_per_round=4)
    run = RunDir(cfg.run_dir)
    run.round(0).mark_done("train", adapter=True)
    return cfg, run


def write_prompts(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_run_evaluation_loads_the_policy_only_for_missing_generations_and_the_reward_model_once(
    tmp_path, prompts_file, monkeypatch
):
    import cyclealign.evaluation.runner as evaluate

    held = write_prompts(tmp_path / "held_out.jsonl", [{"prompt": q} for q in ("Name a planet.", "Say thanks.")])
    cfg, run = trained_run(tmp_path, prompts_file)
    loaded = []

    class LengthScorer:
        style = "plain"

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
        # Greedy by default, with eval's own token cap (128), not generation.max_new_tokens (64).
        assert backend.calls == [(kind, tag, 128) for tag in ("base", "tuned") for kind in ("sampled", "greedy")]
        assert len(factory_calls) == 4
        judge_calls = [r for r in api.requests if "Which response is better?" in r["messages"][-1]["content"]]
        assert len(judge_calls) == 4 and {r["max_tokens"] for r in judge_calls} == {9}
        assert {tuple(shown_pair(r)) for r in judge_calls} >= {(f"tuned {p} greedy", f"base {p} greedy") for p in ("held_out:1", "held_out:2")}

        # Every generation is on disk now: evaluating again does not ask for the policy.
        again = evaluate.run_evaluation(cfg, run, plan, ranker=ranker, policy=policy, judge=judge_t)
        assert len(factory_calls) == 4 and len(backend.calls) == 4
    assert [ln["label"] for ln in lines] == ["base", "round 0"]
    for line, slug in zip(lines, ("base", "round_000")):
        greedy = [g["responses"][0] for g in read_jsonl(cfg.run_dir / "eval" / f"generations_{slug}_greedy_128tok.jsonl")]
        assert len(greedy) == 2 and line["reward_mean"] == pytest.approx(sum(map(len, greedy)) / 2)
        assert line["length_mean"] == 3 and line["ranked"] == 2  # the judged response; agreement on the 2 samples
        assert (line["decoding"], line["max_new_tokens"], line["reward_input"]) == ("greedy", 128, "plain")
    samples = read_jsonl(cfg.run_dir / "eval" / "samples.jsonl")
    assert {s["response"] for s in samples} == {f"{t} held_out:{i} greedy" for t in ("base", "tuned") for i in (1, 2)}
    assert {(s["tokens"], s["finished"]) for s in samples} == {(3, True)}  # the report marks finished=False as cut
    assert again == lines


def test_sample_decoding_judges_the_first_sample_and_a_new_token_cap_generates_afresh(tmp_path, prompts_file):
    import cyclealign.evaluation.runner as evaluate

    held = write_prompts(tmp_path / "held_out.jsonl", [{"prompt": "Name a planet."}])
    cfg, run = trained_run(tmp_path, prompts_file)
    backend = FixedPolicy()
    with ScriptedAPI(fallback=judge_or_rank) as api:
        ranker = make_ranker(api, RankerTemplates(default_templates_dir()))
        judge_t = JudgeTemplates(default_templates_dir())

        def evaluate_with(**settings):
            return evaluate.run_evaluation(cfg, run, EvalPlan(held, 1, **settings), ranker=ranker, policy=lambda: backend, judge=judge_t)

        sampled = evaluate_with(decoding="sample", max_new_tokens=16)
        assert backend.calls == [("sampled", "base", 16), ("sampled", "tuned", 16)]  # no greedy pass
        rows = read_jsonl(run.path / "eval" / "judgements_round_000_vs_base.jsonl")
        assert (rows[0]["a"], rows[0]["b"]) == ("tuned held_out:1", "base held_out:1")
        assert sampled[1]["length_mean"] == 1 and sampled[1]["decoding"] == "sample"

        # Another cap: nothing of the 16-token generations is reused; those files stay as they were.
        backend.calls.clear()
        greedy = evaluate_with(max_new_tokens=32)
        assert backend.calls == [(kind, tag, 32) for tag in ("base", "tuned") for kind in ("sampled", "greedy")]
        assert greedy[1]["length_mean"] == 3 and greedy[1]["max_new_tokens"] == 32
        names = sorted(p.name for p in (run.path / "eval").glob("generations_*"))
        assert names == sorted(
            f"generations_{slug}_{kind}" for slug in ("base", "round_000") for kind in ("sampled_16tok.jsonl", "sampled_32tok.jsonl", "greedy_32tok.jsonl")
        )
        summary = read_jsonl(run.path / "eval" / "summary.jsonl")
        assert [(s["label"], s["decoding"], s["max_new_tokens"]) for s in summary] == [("base", "greedy", 32), ("round 0", "greedy", 32)]


def test_several_prompt_sources_are_summarised_one_by_one(tmp_path, prompts_file):
    import cyclealign.evaluation.runner as evaluate

    # The judge prefers round 0 on the questions of source a, and base on those of source b.
    def judge(request):
        user = request["messages"][-1]["content"]
        if "Which response is better?" not in user:
            return reverse_ranker(request)
        first, _ = shown_pair(request)
        want = "base" if "Give a number." in user else "tuned"
        return "[1]" if first.startswith(want) else "[2]"

    a = write_prompts(tmp_path / "a.jsonl", [{"prompt": "Name a planet.", "id": 1}, {"prompt": "Say thanks.", "id": 2}])
    b = write_prompts(tmp_path / "b.jsonl", [{"prompt": "Give a number.", "id": 1}, {"prompt": "Name a color."}])
    cfg, run = trained_run(tmp_path, prompts_file)  # "Name a color." is trained on: b keeps one prompt
    with ScriptedAPI(fallback=judge) as api:
        ranker = make_ranker(api, RankerTemplates(default_templates_dir()))
        judge_t = JudgeTemplates(default_templates_dir())
        base, r0 = evaluate.run_evaluation(cfg, run, EvalPlan([a, b], 8), ranker=ranker, policy=FixedPolicy, judge=judge_t)
    assert r0["prompts"] == 3 and (r0["wins"], r0["losses"], r0["ties"]) == (2, 1, 0)
    assert list(r0["by_source"]) == ["a", "b"] and list(base["by_source"]) == ["a", "b"]
    by = r0["by_source"]
    assert (by["a"]["prompts"], by["a"]["wins"], by["a"]["losses"], by["a"]["win_rate"]) == (2, 2, 0, 1.0)
    assert (by["b"]["prompts"], by["b"]["wins"], by["b"]["losses"], by["b"]["win_rate"]) == (1, 0, 1, 0.0)
    assert by["a"]["ci_low"] == pytest.approx(wilson_interval(2, 2)[0])
    assert {k for k in by["a"]} == {"prompts", *(k for k in r0 if k not in ("round", "label", "vs", "prompts", "decoding", "max_new_tokens", "by_source"))}
    assert by["a"]["ranked"] + by["b"]["ranked"] == r0["ranked"] == 3
    assert "wins" not in base["by_source"]["a"] and base["by_source"]["b"]["length_mean"] == 3
    # Id 1 is in both sources: those two prompts are told apart by their source; id 2 is kept.
    samples = read_jsonl(run.path / "eval" / "samples.jsonl")
    assert {(s["prompt_id"], s["source"]) for s in samples} == {("a/1", "a"), ("2", "a"), ("b/1", "b")}
    rows = read_jsonl(run.path / "eval" / "judgements_round_000_vs_base.jsonl")
    assert [(r["prompt_id"], r["source"], r["outcome"]) for r in rows] == [("a/1", "a", "win"), ("2", "a", "win"), ("b/1", "b", "loss")]


def test_eval_plan_errors_name_the_setting(tmp_path):
    from cyclealign.errors import ConfigError

    with pytest.raises(ConfigError, match=r"eval\.decoding"):
        EvalPlan(tmp_path / "p.jsonl", decoding="beam")
    with pytest.raises(ConfigError, match=r"eval\.max_new_tokens"):
        EvalPlan(tmp_path / "p.jsonl", max_new_tokens=0)
    with pytest.raises(ConfigError, match=r"x/held\.jsonl and \S*y/held\.jsonl\.gz have the same name 'held'"):
        EvalPlan([tmp_path / "x" / "held.jsonl", tmp_path / "y" / "held.jsonl.gz"])
    with pytest.raises(ConfigError, match="empty list"):
        EvalPlan([])
    assert EvalPlan([tmp_path / "p.jsonl"]).sources == [tmp_path / "p.jsonl"]


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
    from cyclealign.evaluation.reward import reward_scores

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
    from cyclealign.evaluation.reward import reward_scores

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
            **{"eval.every": 1, "eval.prompts": held, "eval.num_prompts": 8, "eval.max_new_tokens": 8},
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


# --- reward-model input formats -------------------------------------------------------------

CHAT = [{"role": "user", "content": "Name a planet."}]
TURNS = [*CHAT, {"role": "assistant", "content": "Which kind?"}, {"role": "user", "content": "A big one."}]


def test_reward_input_formats_each_style():
    assert reward_input(TURNS, "Jupiter.", "oasst") == (
        "<|prompter|>Name a planet.<|endoftext|><|assistant|>Which kind?<|endoftext|>"
        "<|prompter|>A big one.<|endoftext|><|assistant|>Jupiter.<|endoftext|>"
    )
    system = [{"role": "system", "content": "Be brief."}, *CHAT]
    assert reward_input(system, "Mars.", "oasst", eos_token="</s>") == "<|system|>Be brief.</s><|prompter|>Name a planet.</s><|assistant|>Mars.</s>"
    assert reward_input(CHAT, "Mars.", "text_pair") == ("Name a planet.", "Mars.")
    assert reward_input(TURNS, "Jupiter.", "text_pair") == ("Human: Name a planet.\n\nAssistant: Which kind?\n\nHuman: A big one.", "Jupiter.")
    assert reward_input(CHAT, "Mars.", "plain") == "Human: Name a planet.\n\nAssistant: Mars."
    with pytest.raises(ValueError, match="needs the chat_template"):
        reward_input(CHAT, "Mars.", "chat_template")
    with pytest.raises(ValueError, match="unknown style 'llama'"):
        reward_input(CHAT, "Mars.", "llama")


def tiny_bert(out):
    """A real (tiny, seeded, untrained) BERT cross-encoder with a 1-logit head and a WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = "name a planet . mars jupiter is the largest venus big one which kind ? human assistant :".split()
    vocab = out / "vocab.txt"
    out.mkdir(parents=True, exist_ok=True)
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(words)]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def tiny_oasst(out, embedded_model_dir):
    """A real (tiny, seeded, untrained) decoder reward model whose tokenizer has OpenAssistant's
    special tokens, as OpenAssistant's Pythia reward models do (and no chat template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    tok.chat_template = None
    tok.add_tokens(["<|prompter|>", "<|assistant|>"], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<|padding|>", "eos_token": "<|endoftext|>"})
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_reward_input_style_is_read_from_the_tokenizer(tmp_path, embedded_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    assert reward_input_style(tok) == "chat_template"
    tok.chat_template = None
    assert reward_input_style(tok) == "plain"
    oasst = AutoTokenizer.from_pretrained(tiny_oasst(tmp_path / "oasst", embedded_model_dir))
    assert reward_input_style(oasst) == "oasst"
    assert reward_input_style(AutoTokenizer.from_pretrained(tiny_bert(tmp_path / "bert"))) == "text_pair"


def test_reward_scorer_feeds_a_cross_encoder_a_text_pair(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cyclealign.config import build_config
    from cyclealign.evaluation.reward import RewardScorer

    path = tiny_bert(tmp_path / "bert")
    scorer = RewardScorer(str(path), build_config(**{"model.device": "cpu"}))
    assert scorer.style == "text_pair"
    prompt = PromptRecord("p", CHAT)
    pairs = [(prompt, "Mars."), (prompt, "Jupiter is the largest planet."), (PromptRecord("q", TURNS), "Jupiter.")]
    scores = scorer(pairs, batch_size=3)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():  # what the model card does: tokenizer(question, answer)
        expected = [float(model(**tok(*reward_input(p.messages, r, "text_pair"), return_tensors="pt")).logits[0, 0]) for p, r in pairs]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert len(set(round(s, 5) for s in scores)) == 3


def test_reward_scorer_writes_the_openassistant_format(tmp_path, embedded_model_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cyclealign.config import build_config
    from cyclealign.evaluation.reward import RewardScorer

    path = tiny_oasst(tmp_path / "oasst", embedded_model_dir)
    scorer = RewardScorer(str(path), build_config(**{"model.device": "cpu"}))
    assert scorer.style == "oasst"
    pairs = [(PromptRecord("p", CHAT), "Mars."), (PromptRecord("q", TURNS), "Jupiter, the largest planet of all.")]
    text = scorer.inputs(pairs)[0]
    assert text == "<|prompter|>Name a planet.<|endoftext|><|assistant|>Mars.<|endoftext|>"
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(text)["input_ids"]
    assert tok.convert_tokens_to_ids(["<|prompter|>", "<|assistant|>", "<|endoftext|>"]) == [ids[0], ids[ids.index(tok.convert_tokens_to_ids("<|assistant|>"))], ids[-1]]
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():  # one at a time, no padding: the score of the final <|endoftext|>
        alone = [float(model(**tok(t, return_tensors="pt")).logits[0, 0]) for t in scorer.inputs(pairs)]
    assert scorer(pairs, batch_size=2) == pytest.approx(alone, abs=1e-4)


def test_a_resumed_run_redoes_an_evaluation_recorded_with_other_decoding_settings(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.evaluations() == []
    run.record_evaluation(evaluated=["base", "round 0"], decoding="greedy", max_new_tokens=128, wall_s=1.0)
    held = tmp_path / "held.jsonl"
    assert evaluated(run, 0, EvalPlan(held))
    assert evaluated(run, -1, EvalPlan(held))
    assert not evaluated(run, 0, EvalPlan(held, decoding="sample"))
    assert not evaluated(run, 0, EvalPlan(held, max_new_tokens=64))
    assert not evaluated(run, 1, EvalPlan(held))
    run.record_evaluation(evaluated=["round 1"], decoding="sample", max_new_tokens=128, wall_s=1.0)
    assert evaluated(run, 1, EvalPlan(held, decoding="sample")) and not evaluated(run, 1, EvalPlan(held))
    assert [e["evaluated"] for e in run.evaluations()] == [["base", "round 0"], ["round 1"]]
