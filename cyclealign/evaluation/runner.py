"""Held-out evaluation of a run: does a round align the policy? (``cyclealign eval``)

For each evaluated policy (``base`` = no adapter, ``round k`` = the adapter trained in round k),
on held-out prompts (none of those the run trained on), from one prompt source or several:

* **the judged response**: one response per prompt, decoded greedily by default
  (``eval.decoding = "greedy"``, as PRO and RRHF evaluate), or the first of the N sampled
  responses (``"sample"``); at most ``eval.max_new_tokens`` (128) new tokens, whatever the
  training rounds' ``generation.max_new_tokens``. Win rate, reward and length are measured on it.
* **win rate** against a reference policy (default: base): the judged responses are compared
  pairwise by the black-box model in both presentation orders (:mod:`cyclealign.templates.judge`);
  a win or a loss needs both orders to agree, anything else is a tie (a pair of identical
  responses is a tie without a call). ``win_rate = wins / judged`` with a Wilson 95% interval
  (``scipy.stats.binomtest``); ``win_rate_ties_half = (wins + ties / 2) / judged``. Unparsable
  or failed judgements are counted as ``invalid`` and left out.
* **ranking agreement**: the black-box ranking of the policy's N *sampled* responses (always
  sampled, with the run's temperature and seed) against the policy's own log-likelihood
  ranking: mean Kendall tau and LCS agreement (length / N), as in training.
* **reward model** (optional): mean and std of a sequence-classification model's score of the
  judged response, the conversation formatted as that model was trained (:func:`~cyclealign.evaluation.reward.reward_input`).
* **length**: mean, std and median length of the judged response in tokens (LLM judges favour
  longer answers; a rising win rate with rising length deserves suspicion).

With several prompt sources each summary line also has ``by_source``: the same metrics per
source (named by file stem, :meth:`~cyclealign.config.eval.EvalConfig.source_name`).

Everything lands in ``RUN_DIR/eval/`` (generations, rankings, judgements, ``summary.jsonl``,
``samples.jsonl``, and ``manifest.json``, which lists each finished evaluation). Generation files are named by policy, decoding and token cap
(``generations_base_greedy_128tok.jsonl``), so changing either generates afresh rather than
reusing stale text; generations are reused otherwise and judge/ranker calls come from the
reply cache, so a re-run costs no API call.

The parts live in their own modules: :mod:`cyclealign.evaluation.plan` (what to evaluate),
:mod:`cyclealign.evaluation.heldout` (the held-out prompts), :mod:`cyclealign.evaluation.winrate` (pairwise judge and
win rate), :mod:`cyclealign.evaluation.reward` (reward-model scores); this module runs them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cyclealign.agreement import agreement_of
from cyclealign.config import Config
from cyclealign.errors import RunDirError
from cyclealign.evaluation.heldout import held_out_sources, trained_rounds
from cyclealign.evaluation.plan import BASE, EvalPlan, label, policy_slug
from cyclealign.evaluation.reward import RewardScorer, judged_rewards
from cyclealign.evaluation.winrate import judge_pairs, win_summary
from cyclealign.policy.base import GenerationBackend
from cyclealign.progress import NullReporter, Reporter, timed_phase
from cyclealign.ranker.client import Ranker
from cyclealign.ranker.http import CallRecord
from cyclealign.ranker.ranking import RankJob
from cyclealign.records import Generation, PromptRecord
from cyclealign.rundir import Phase, RunDir
from cyclealign.files import read_jsonl, read_records, write_jsonl
from cyclealign.templates.judge import JudgeTemplates

__all__ = ["evaluate_run", "evaluate_with", "evaluated", "judge_templates", "run_evaluation"]


@dataclass
class _PolicyResults:
    """Per-prompt results of one policy, keyed by prompt id (aggregated by :func:`_summarise`)."""

    agreement: dict[str, tuple[float, float]]  # ranked prompts: (Kendall tau, LCS length / N)
    lengths: dict[str, int]  # judged response length, tokens
    rewards: dict[str, float] | None = None  # reward model score of the judged response
    judgements: list[dict[str, Any]] | None = None  # rows of :func:`judge_pairs` (not for the reference)

def run_evaluation(
    cfg: Config,
    run: RunDir,
    plan: EvalPlan,
    *,
    ranker: Ranker,
    policy: Callable[[], GenerationBackend],
    judge: JudgeTemplates,
    on_call: Callable[[CallRecord], None] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate ``plan.rounds`` on held-out prompts; returns (and writes) the summary lines.

    Args:
        cfg: the run's config.
        run: the run directory (results go to :attr:`~cyclealign.rundir.RunDir.eval_dir`).
        plan: what to evaluate.
        ranker: the run's black-box ranker; the pairwise judge asks through its chat endpoint.
        policy: returns the generation backend (``load_adapter(path | None)``,
            ``sample(prompts, seed, max_new_tokens=)``, ``greedy(prompts, max_new_tokens=)``);
            called only when a policy's held-out generations are not already in ``eval/``, so an
            evaluation whose generations are all on disk loads no model.
        judge: the pairwise judge templates.
        on_call: the cost ledger of every paid call, rankings and judgements (None: the
            endpoint's default).

    Returns:
        One summary line per evaluated policy (and the reference), by round: ``round``, ``label``,
        ``vs``, ``prompts``, ``decoding``, ``max_new_tokens``, the metrics of :func:`_summarise`
        (and ``reward_input``, the reward model's input format), plus ``by_source`` (source name ->
        ``prompts`` and the same metrics) when the plan has several prompt sources.

    Raises:
        RunDirError: a requested round has no trained adapter.
        ConfigError, DataError: no held-out prompt in a source; an unreadable source or reward model.
        RankerError, BudgetError: from the black-box calls.
    """
    trained = trained_rounds(run, cfg.rounds)
    rounds = plan.rounds if plan.rounds is not None else [BASE, *trained[-1:]]
    for k in {*rounds, plan.vs}:
        if k != BASE and k not in trained:
            raise RunDirError(f"{run.path}: round {k} has no trained adapter to evaluate (trained: {trained or 'none'})")
    policies = sorted({*rounds, plan.vs})
    out = run.eval_dir
    out.mkdir(parents=True, exist_ok=True)
    prompts, source_of = held_out_sources(cfg, plan.sources, plan.num_prompts)
    by_id = {p.id: p for p in prompts}

    sampled: dict[int, list[Generation]] = {}
    judged: dict[int, list[Generation]] = {}
    for k in policies:  # both kinds of one policy before the next: one adapter load each
        sampled[k] = _generations(run, out, k, prompts, policy, "sampled", plan.max_new_tokens, cfg.seed)
        if plan.decoding == "greedy":
            judged[k] = _generations(run, out, k, prompts, policy, "greedy", plan.max_new_tokens, cfg.seed)
        else:
            judged[k] = [_first_response(g) for g in sampled[k]]

    results: dict[int, _PolicyResults] = {}
    reward: RewardScorer | None = None  # loaded once, on first use
    for k in policies:
        results[k] = _PolicyResults(
            agreement=_agreement(ranker, out, k, sampled[k], by_id, cfg.seed, on_call),
            lengths={g.prompt_id: len(g.response_token_ids[0]) for g in judged[k] if g.responses},
        )
        if plan.reward_model:
            if reward is None:
                reward = RewardScorer(plan.reward_model, cfg)
            results[k].rewards = judged_rewards(reward, judged[k], by_id)
    for k in rounds:
        if k != plan.vs:
            results[k].judgements = judge_pairs(
                ranker.endpoint, judge, out, k, plan.vs, judged[k], judged[plan.vs], by_id, plan.judge_max_tokens,
                source_of, on_call,
            )

    sources = list(dict.fromkeys(source_of.values()))
    lines: dict[int, dict[str, Any]] = {}
    for k in policies:
        line = {"round": k, "label": label(k), "vs": label(plan.vs), "prompts": len(prompts)}
        line |= {"decoding": plan.decoding, "max_new_tokens": plan.max_new_tokens}
        line |= _summarise(results[k], set(by_id))
        if reward is not None:
            line["reward_input"] = reward.style
        if len(sources) > 1:
            line["by_source"] = {}
            for name in sources:
                ids = {pid for pid, src in source_of.items() if src == name}
                line["by_source"][name] = {"prompts": len(ids), **_summarise(results[k], ids)}
        lines[k] = line
    summary = {row["round"]: row for row in read_jsonl(run.eval_summary)}
    summary.update(lines)
    write_jsonl(run.eval_summary, [summary[k] for k in sorted(summary)])
    samples = {(s["round"], s["prompt_id"]): s for s in read_jsonl(run.eval_samples)}
    for k in policies:
        for g in judged[k]:
            if g.responses:
                samples[(k, g.prompt_id)] = {
                    "round": k,
                    "label": label(k),
                    "prompt_id": g.prompt_id,
                    "source": source_of[g.prompt_id],
                    "prompt": by_id[g.prompt_id].query_text,
                    "response": g.responses[0],
                    "decoding": plan.decoding,
                    "tokens": len(g.response_token_ids[0]),  # False: cut at plan.max_new_tokens (the report marks it)
                    "finished": g.finished[0] if g.finished else None,
                }
    write_jsonl(run.eval_samples, [samples[key] for key in sorted(samples)])
    return [lines[k] for k in policies]

def _first_response(g: Generation) -> Generation:
    """``g`` with only its first sampled response (the judged response of ``decoding="sample"``)."""
    return Generation(g.prompt_id, g.prompt_token_ids, g.responses[:1], g.response_token_ids[:1], g.logprob_mean[:1], g.finished[:1])

def generations_path(out: Path, k: int, kind: Literal["sampled", "greedy"], max_new_tokens: int) -> Path:
    """Where policy ``k``'s evaluation generations of one kind and token cap are kept.

    >>> generations_path(Path("eval"), -1, "greedy", 128).as_posix()
    'eval/generations_base_greedy_128tok.jsonl'
    """
    return out / f"generations_{policy_slug(k)}_{kind}_{max_new_tokens}tok.jsonl"

def _generations(
    run: RunDir,
    out: Path,
    k: int,
    prompts: list[PromptRecord],
    policy: Callable[[], GenerationBackend],
    kind: Literal["sampled", "greedy"],
    max_new_tokens: int,
    seed: int,
) -> list[Generation]:
    """Policy ``k``'s held-out generations: N samples per prompt (``kind="sampled"``, the same
    seed for every policy) or one greedy response; at most ``max_new_tokens`` tokens each. Reused
    from :func:`generations_path` when its prompts match (``policy()`` is called only when not)."""
    path = generations_path(out, k, kind, max_new_tokens)
    cached = read_records(path, Generation)
    if [g.prompt_id for g in cached] == [p.id for p in prompts]:
        return cached
    backend = policy()
    backend.load_adapter(None if k == BASE else run.round(k).adapter)
    if kind == "greedy":
        gens = backend.greedy(prompts, max_new_tokens=max_new_tokens)
    else:
        gens = backend.sample(prompts, seed=seed + 104729, max_new_tokens=max_new_tokens)
    write_jsonl(path, [g.to_json() for g in gens])
    return gens


def _agreement(
    ranker: Ranker,
    out: Path,
    k: int,
    gens: list[Generation],
    by_id: dict[str, PromptRecord],
    seed: int,
    on_call: Callable[[CallRecord], None] | None,
) -> dict[str, tuple[float, float]]:
    """Black-box rankings of each prompt's samples (written to ``rankings_<policy>.jsonl``) against
    the policy's log-likelihood ranking: ``{prompt id: (Kendall tau, LCS length / N)}`` of the
    prompts that were ranked (those with >= 2 samples and a parsed ranking)."""
    jobs = [RankJob(by_id[g.prompt_id], g.responses, [], seed) for g in gens if len(g.responses) >= 2]
    results = ranker.rank_all(jobs, on_call=on_call) if jobs else []
    write_jsonl(out / f"rankings_{policy_slug(k)}.jsonl", [r.to_json() for r in results])
    scores = {g.prompt_id: g.logprob_mean for g in gens}
    agreement = {}
    for r in results:
        if r.ranking is not None:
            a = agreement_of(r.ranking, scores[r.prompt_id])
            agreement[r.prompt_id] = (a.kendall_tau, a.rate)
    return agreement


def _stats(values: list[float], prefix: str, median: bool = False) -> dict[str, Any]:
    out = {f"{prefix}_mean": statistics.fmean(values) if values else None, f"{prefix}_std": statistics.pstdev(values) if values else None}
    if median:
        out[f"{prefix}_median"] = statistics.median(values) if values else None
    return out


def _summarise(results: _PolicyResults, ids: set[str]) -> dict[str, Any]:
    """The metrics of one policy over the prompts ``ids``: ``ranked``, ``kendall_tau``,
    ``agreement_rate``, ``length_mean/std/median`` (tokens), ``reward_mean/std`` (with a reward
    model) and :func:`win_summary` (for a policy judged against the reference); None where no
    prompt contributes."""
    ranked = [v for pid, v in results.agreement.items() if pid in ids]
    line: dict[str, Any] = {
        "ranked": len(ranked),
        "kendall_tau": statistics.fmean(t for t, _ in ranked) if ranked else None,
        "agreement_rate": statistics.fmean(a for _, a in ranked) if ranked else None,
    }
    line |= _stats([float(n) for pid, n in results.lengths.items() if pid in ids], "length", median=True)
    if results.rewards is not None:
        line |= _stats([r for pid, r in results.rewards.items() if pid in ids], "reward")
    if results.judgements is not None:
        line |= win_summary([row for row in results.judgements if row["prompt_id"] in ids])
    return line


def evaluated(run: RunDir, index: int, plan: EvalPlan) -> bool:
    """Whether ``eval/manifest.json`` lists policy ``index`` (a round, or ``BASE``) as evaluated
    with ``plan``'s decoding and token cap: a resumed run does not redo it (an evaluation with
    other settings does not count)."""
    return any(
        label(index) in entry["evaluated"]
        and entry.get("decoding") == plan.decoding
        and entry.get("max_new_tokens") == plan.max_new_tokens
        for entry in run.evaluations()
    )


def judge_templates(cfg: Config) -> JudgeTemplates:
    """The judge templates: each file from the user's templates folder when it has it, else the shipped one.

    Raises:
        TemplateError: the folder is missing, holds an unknown ``*.jinja`` file, or a judge
            template does not parse or uses the wrong variables (file and line named).
    """
    return JudgeTemplates(cfg.ranker.templates_dir)


def evaluate_with(
    cfg: Config,
    run: RunDir,
    plan: EvalPlan,
    ranker: Ranker,
    policy: Callable[[], GenerationBackend],
    reporter: Reporter | None = None,
    round_index: int = BASE,
) -> list[dict[str, Any]]:
    """:func:`run_evaluation` with the run's ranker, as one timed phase (``eval``, reported as
    of round ``round_index``) recorded in ``eval/manifest.json`` once its results are written.
    Paid calls go to the cost ledger as round ``"eval"``. ``policy`` returns the (cached)
    policy; it is called only when an evaluation generation is missing.

    Raises:
        RunDirError, ConfigError, RankerError, BudgetError, DataError: see :func:`run_evaluation`.
    """
    lines: list[dict[str, Any]] = []

    def ledger(call: CallRecord) -> None:
        run.record_call("eval", call)

    def body() -> dict[str, Any]:
        lines.extend(run_evaluation(cfg, run, plan, ranker=ranker, policy=policy, judge=judge_templates(cfg), on_call=ledger))
        return {"evaluated": [ln["label"] for ln in lines], "decoding": plan.decoding, "max_new_tokens": plan.max_new_tokens}

    timed_phase(reporter or NullReporter(), round_index, Phase.EVAL, None, body, lambda info: run.record_evaluation(**info))
    return lines


def evaluate_run(cfg: Config, plan: EvalPlan, environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """``cyclealign eval``: open the run's ranker (starting the embedded server if needed) and the
    policy, and evaluate ``plan`` on the run in ``cfg.run_dir``.

    Raises:
        RunDirError, ConfigError, RankerError, BudgetError, DataError: see :func:`run_evaluation`.
    """
    import os

    from cyclealign.models.loading import resolve_model_dir
    from cyclealign.policy.handle import PolicyHandle
    from cyclealign.ranker.open import open_ranker
    from cyclealign.resources import default_templates_dir
    from cyclealign.templates.ranker import RankerTemplates

    run = RunDir(cfg.run_dir)
    templates = RankerTemplates(cfg.ranker.templates_dir or default_templates_dir())
    model_dir = resolve_model_dir(cfg.model)
    environ = os.environ if environ is None else environ
    # The policy is made on first use: an evaluation whose generations are all on disk loads no model.
    with open_ranker(cfg, run, environ, templates) as ranker, PolicyHandle(cfg, model_dir, environ) as policy:
        return evaluate_with(cfg, run, plan, ranker, policy)
