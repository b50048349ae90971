"""Held-out evaluation of a run: does a round align the policy? (``cyclealign eval``)

For each evaluated policy (``base`` = no adapter, ``round k`` = the adapter trained in round k),
on held-out prompts (none of those the run trained on):

* **win rate** against a reference policy (default: base): the first sampled response of each
  policy is judged pairwise by the black-box model in both presentation orders
  (:mod:`cyclealign.ranker.judge`); a win or a loss needs both orders to agree, anything else
  is a tie (a pair of identical responses is a tie without a call). ``win_rate = wins / judged``
  with a Wilson 95% interval (``scipy.stats.binomtest``);
  ``win_rate_ties_half = (wins + ties / 2) / judged``. Unparsable or failed judgements are
  counted as ``invalid`` and left out.
* **ranking agreement**: the black-box ranking of the policy's N samples against the policy's
  own log-likelihood ranking: mean Kendall tau and LCS agreement (length / N), as in training.
* **reward model** (optional): mean and std of a sequence-classification model's score of
  the first response.
* **length**: mean, std and median response length in tokens over all samples (LLM judges
  favour longer answers; a rising win rate with rising length deserves suspicion).

Everything lands in ``RUN_DIR/eval/`` (generations, rankings, judgements, ``summary.jsonl``,
``samples.jsonl``); generations are reused and judge/ranker calls come from the reply cache,
so a re-run costs no API call.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclealign.agreement import kendall_tau, lcs, ranking_from_scores
from cyclealign.config import Config, EvalConfig
from cyclealign.data import load_prompts, select_round_prompts
from cyclealign.errors import ConfigError, RunDirError
from cyclealign.policy.base import Generation, GenerationBackend
from cyclealign.ranker.client import RankJob, Ranker
from cyclealign.ranker.judge import JudgeTemplates, VerdictParseError, pair_outcome, parse_verdict
from cyclealign.records import PromptRecord
from cyclealign.rundir import RunDir, read_jsonl, round_dir_name, write_jsonl

__all__ = ["EvalPlan", "held_out_prompts", "label", "run_evaluation", "wilson_interval"]

BASE = -1
"""The round index that names the base policy (no adapter)."""


def label(round_index: int) -> str:
    """``"base"`` or ``"round k"``."""
    return "base" if round_index == BASE else f"round {round_index}"


def _slug(round_index: int) -> str:
    return "base" if round_index == BASE else round_dir_name(round_index)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval of a binomial proportion (``scipy.stats.binomtest``); ``(None, None)`` with no trials.

    >>> [round(x, 3) for x in wilson_interval(7, 10)]
    [0.397, 0.892]
    """
    if trials == 0:
        return None, None
    from scipy.stats import binomtest

    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass
class EvalPlan:
    """What to evaluate.

    Attributes:
        prompts: held-out prompt source (any format :func:`cyclealign.data.load_prompts` reads).
        num_prompts: how many held-out prompts (a seeded sample).
        rounds: policies to evaluate (``-1`` = base); None = base and the latest trained round.
        vs: the reference policy of the win rate (``-1`` = base).
        reward_model: HF sequence-classification model id or path, or None.
        judge_max_tokens: completion cap per pairwise judge call, tokens (default: that of
            :class:`~cyclealign.config.EvalConfig`, 16).
    """

    prompts: Path
    num_prompts: int = 32
    rounds: list[int] | None = None
    vs: int = BASE
    reward_model: str | None = None
    judge_max_tokens: int = EvalConfig.model_fields["judge_max_tokens"].default


def held_out_prompts(cfg: Config, source: Path, count: int) -> list[PromptRecord]:
    """``count`` prompts of ``source`` that no round of the run trains on (seeded sample).

    A prompt is "trained on" when its conversation text equals that of a prompt any of the
    run's ``cfg.rounds`` rounds draws.

    Raises:
        DataError: unreadable prompt file.
        ConfigError: no held-out prompt is left.
    """
    candidates = load_prompts(source)
    trained: set[str] = set()
    run_prompts = load_prompts(cfg.prompts)
    for k in range(cfg.rounds):
        trained.update(p.query_text for p in select_round_prompts(run_prompts, k, cfg.prompts_per_round, cfg.seed))
    held = [p for p in candidates if p.query_text not in trained]
    if not held:
        raise ConfigError(f"{source}: every prompt is one the run trains on; evaluation needs held-out prompts")
    random.Random(cfg.seed + 7919).shuffle(held)
    return held[:count]


def _trained_rounds(run: RunDir, rounds: int) -> list[int]:
    return [k for k in range(rounds) if run.round(k).has_adapter()]


def run_evaluation(
    cfg: Config,
    run: RunDir,
    plan: EvalPlan,
    *,
    ranker: Ranker,
    policy: Callable[[], GenerationBackend],
    judge: JudgeTemplates,
) -> list[dict[str, Any]]:
    """Evaluate ``plan.rounds`` on held-out prompts; returns (and writes) the summary lines.

    Args:
        cfg: the run's config.
        run: the run directory (results go to ``run.path / "eval"``).
        plan: what to evaluate.
        ranker: the run's black-box ranker (also the pairwise judge).
        policy: returns the generation backend (``load_adapter(path | None)``, ``sample(prompts, seed)``);
            called only when a policy's held-out generations are not already in ``eval/``, so an
            evaluation whose generations are all on disk loads no model.
        judge: the pairwise judge templates.

    Raises:
        RunDirError: a requested round has no trained adapter.
        RankerError, BudgetError: from the black-box calls.
    """
    trained = _trained_rounds(run, cfg.rounds)
    rounds = plan.rounds if plan.rounds is not None else [BASE, *trained[-1:]]
    for k in {*rounds, plan.vs}:
        if k != BASE and k not in trained:
            raise RunDirError(f"{run.path}: round {k} has no trained adapter to evaluate (trained: {trained or 'none'})")
    policies = sorted({*rounds, plan.vs})
    out = run.path / "eval"
    out.mkdir(parents=True, exist_ok=True)
    prompts = held_out_prompts(cfg, plan.prompts, plan.num_prompts)
    by_id = {p.id: p for p in prompts}

    gens = {k: _generations(run, out, k, prompts, policy, cfg.seed) for k in policies}
    lines: dict[int, dict[str, Any]] = {}
    reward: RewardScorer | None = None  # loaded once, on first use
    for k in policies:
        lines[k] = {"round": k, "label": label(k), "vs": label(plan.vs), "prompts": len(prompts)}
        lines[k].update(_agreement(ranker, out, k, gens[k], by_id, cfg.seed))
        lines[k].update(_lengths(gens[k]))
        if plan.reward_model:
            if reward is None:
                reward = RewardScorer(plan.reward_model, cfg)
            lines[k].update(_reward(reward, gens[k], by_id))
    for k in rounds:
        if k != plan.vs:
            lines[k].update(
                _win_rate(ranker, judge, out, k, plan.vs, gens[k], gens[plan.vs], by_id, plan.judge_max_tokens)
            )
    summary = {row["round"]: row for row in read_jsonl(out / "summary.jsonl")}
    summary.update(lines)
    write_jsonl(out / "summary.jsonl", [summary[k] for k in sorted(summary)])
    samples = {(s["round"], s["prompt_id"]): s for s in read_jsonl(out / "samples.jsonl")}
    for k in policies:
        for g in gens[k]:
            if g.responses:
                samples[(k, g.prompt_id)] = {
                    "round": k,
                    "label": label(k),
                    "prompt_id": g.prompt_id,
                    "prompt": by_id[g.prompt_id].query_text,
                    "response": g.responses[0],
                }
    write_jsonl(out / "samples.jsonl", [samples[key] for key in sorted(samples)])
    return [lines[k] for k in policies]


def _generations(
    run: RunDir, out: Path, k: int, prompts: list[PromptRecord], policy: Callable[[], GenerationBackend], seed: int
) -> list[Generation]:
    """Policy ``k``'s samples on the held-out prompts, reused from ``eval/`` when the prompts match
    (``policy()`` is called only when they are not)."""
    path = out / f"generations_{_slug(k)}.jsonl"
    cached = [Generation.from_json(d) for d in read_jsonl(path)]
    if [g.prompt_id for g in cached] == [p.id for p in prompts]:
        return cached
    backend = policy()
    backend.load_adapter(None if k == BASE else run.round(k).adapter)
    gens = backend.sample(prompts, seed=seed + 104729)  # the same seed for every policy
    write_jsonl(path, [g.to_json() for g in gens])
    return gens


def _agreement(ranker: Ranker, out: Path, k: int, gens: list[Generation], by_id: dict[str, PromptRecord], seed: int) -> dict[str, Any]:
    jobs = [RankJob(by_id[g.prompt_id], g.responses, [], seed) for g in gens if len(g.responses) >= 2]
    results = ranker.rank_all(jobs) if jobs else []
    write_jsonl(out / f"rankings_{_slug(k)}.jsonl", [r.to_json() for r in results])
    scores = {g.prompt_id: g.logprob_mean for g in gens}
    taus, agreements = [], []
    for r in results:
        if r.ranking is None:
            continue
        white = ranking_from_scores(scores[r.prompt_id])
        taus.append(kendall_tau(r.ranking, white))
        agreements.append(len(lcs(r.ranking, white)) / len(white))
    return {
        "ranked": len(taus),
        "kendall_tau": statistics.fmean(taus) if taus else None,
        "agreement_rate": statistics.fmean(agreements) if agreements else None,
    }


def _lengths(gens: list[Generation]) -> dict[str, Any]:
    lengths = [len(ids) for g in gens for ids in g.response_token_ids]
    return {
        "length_mean": statistics.fmean(lengths) if lengths else None,
        "length_std": statistics.pstdev(lengths) if lengths else None,
        "length_median": statistics.median(lengths) if lengths else None,
    }


def _win_rate(
    ranker: Ranker,
    judge: JudgeTemplates,
    out: Path,
    k: int,
    vs: int,
    gens_a: Sequence[Generation],
    gens_b: Sequence[Generation],
    by_id: dict[str, PromptRecord],
    max_tokens: int = 16,
) -> dict[str, Any]:
    """Pairwise judgements of policy ``k`` (A) against ``vs`` (B), both orders, on the first responses
    (``max_tokens``: completion cap per judge call, tokens). A pair of identical responses (the
    policies sample with the same seed, so unchanged behaviour gives the same text) is a tie
    without a call; ``identical`` counts them."""
    b_by_id = {g.prompt_id: g for g in gens_b}
    pairs = [(g.prompt_id, g.responses[0], b_by_id[g.prompt_id].responses[0]) for g in gens_a if g.responses and b_by_id.get(g.prompt_id) and b_by_id[g.prompt_id].responses]
    # Identical responses are a tie by definition: no judge call is paid for them.
    asked = [(pid, a, b) for pid, a, b in pairs if a.strip() != b.strip()]
    conversations = []
    for pid, a, b in asked:
        query = by_id[pid].query_text
        conversations += [judge.messages(query, a, b), judge.messages(query, b, a)]
    replies = ranker.ask_all(conversations, max_tokens=max_tokens) if conversations else []
    reply_pairs = {pid: replies[2 * i : 2 * i + 2] for i, (pid, _, _) in enumerate(asked)}
    rows, counts = [], {"win": 0, "loss": 0, "tie": 0, "invalid": 0}
    for pid, a, b in pairs:
        if pid not in reply_pairs:
            counts["tie"] += 1
            rows.append({"prompt_id": pid, "a": a, "b": b, "replies": [], "outcome": "tie", "problem": None, "identical": True})
            continue
        verdicts, raw, problem = [], [], None
        for reply in reply_pairs[pid]:
            if isinstance(reply, Exception):
                problem = f"api error: {type(reply).__name__}"
                raw.append(None)
                continue
            text = reply.get("content") or ""
            raw.append(text)
            try:
                verdicts.append(parse_verdict(text))
            except VerdictParseError as e:
                problem = f"unparsable verdict: {e}"
        outcome = "invalid" if problem else pair_outcome(verdicts[0], verdicts[1])
        counts[outcome] += 1
        rows.append({"prompt_id": pid, "a": a, "b": b, "replies": raw, "outcome": outcome, "problem": problem})
    write_jsonl(out / f"judgements_{_slug(k)}_vs_{_slug(vs)}.jsonl", rows)
    judged = counts["win"] + counts["loss"] + counts["tie"]
    low, high = wilson_interval(counts["win"], judged)
    return {
        "wins": counts["win"],
        "losses": counts["loss"],
        "ties": counts["tie"],
        "invalid": counts["invalid"],
        "identical": len(pairs) - len(asked),
        "win_rate": counts["win"] / judged if judged else None,
        "win_rate_ties_half": (counts["win"] + counts["tie"] / 2) / judged if judged else None,
        "ci_low": low,
        "ci_high": high,
    }


def _reward(scorer: RewardScorer, gens: list[Generation], by_id: dict[str, PromptRecord]) -> dict[str, Any]:
    """Mean and std of a reward model's score of each prompt's first response."""
    scores = scorer([(by_id[g.prompt_id], g.responses[0]) for g in gens if g.responses])
    return {
        "reward_mean": statistics.fmean(scores) if scores else None,
        "reward_std": statistics.pstdev(scores) if scores else None,
    }


class RewardScorer:
    """A sequence-classification reward model, loaded once and called on batches of pairs
    (see :func:`reward_scores`).

    Raises:
        ConfigError: the model cannot be loaded (the id or path is named).
    """

    def __init__(self, model_id: str, cfg: Config) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from cyclealign.models import resolve_device

        try:
            tok = AutoTokenizer.from_pretrained(model_id)
            model = AutoModelForSequenceClassification.from_pretrained(model_id).eval()
        except (OSError, ValueError) as e:
            raise ConfigError(f"--reward-model {model_id}: cannot load a sequence-classification model: {e}") from None
        self.device = resolve_device(cfg.model)
        model.to(self.device)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        self.tokenizer, self.model = tok, model

    def __call__(self, pairs: list[tuple[PromptRecord, str]], batch_size: int = 8) -> list[float]:
        """Scores of ``(prompt, response)`` pairs (logit 0), ``batch_size`` pairs per forward pass."""
        import torch

        tok = self.tokenizer
        texts = []
        for prompt, response in pairs:
            chat = [*prompt.messages, {"role": "assistant", "content": response}]
            if getattr(tok, "chat_template", None):
                texts.append(tok.apply_chat_template(chat, tokenize=False))
            else:
                texts.append(f"{prompt.query_text}\n\nAssistant: {response}")
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                enc = tok(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=1024)
                logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
                scores.extend(float(x) for x in logits[:, 0].float().cpu())
        return scores


def reward_scores(model_id: str, pairs: list[tuple[PromptRecord, str]], cfg: Config, batch_size: int = 8) -> list[float]:
    """Scores of ``(prompt, response)`` pairs by a sequence-classification reward model (logit 0).

    The conversation is formatted with the model tokenizer's chat template when it has one,
    else as ``User: ...\\n\\nAssistant: ...`` text. Loads the model on every call; to score
    several batches of pairs with one model, use :class:`RewardScorer`.

    Raises:
        ConfigError: the model cannot be loaded (the id or path is named).
    """
    return RewardScorer(model_id, cfg)(pairs, batch_size=batch_size)
