"""Held-out evaluation of a run: does a round align the policy? (``cyclealign eval``)

For each evaluated policy (``base`` = no adapter, ``round k`` = the adapter trained in round k),
on held-out prompts (none of those the run trained on), from one prompt source or several:

* **the judged response**: one response per prompt, decoded greedily by default
  (``eval.decoding = "greedy"``, as PRO and RRHF evaluate), or the first of the N sampled
  responses (``"sample"``); at most ``eval.max_new_tokens`` (128) new tokens, whatever the
  training rounds' ``generation.max_new_tokens``. Win rate, reward and length are measured on it.
* **win rate** against a reference policy (default: base): the judged responses are compared
  pairwise by the black-box model in both presentation orders (:mod:`cyclealign.ranker.judge`);
  a win or a loss needs both orders to agree, anything else is a tie (a pair of identical
  responses is a tie without a call). ``win_rate = wins / judged`` with a Wilson 95% interval
  (``scipy.stats.binomtest``); ``win_rate_ties_half = (wins + ties / 2) / judged``. Unparsable
  or failed judgements are counted as ``invalid`` and left out.
* **ranking agreement**: the black-box ranking of the policy's N *sampled* responses (always
  sampled, with the run's temperature and seed) against the policy's own log-likelihood
  ranking: mean Kendall tau and LCS agreement (length / N), as in training.
* **reward model** (optional): mean and std of a sequence-classification model's score of the
  judged response, the conversation formatted as that model was trained (:func:`reward_input`).
* **length**: mean, std and median length of the judged response in tokens (LLM judges favour
  longer answers; a rising win rate with rising length deserves suspicion).

With several prompt sources each summary line also has ``by_source``: the same metrics per
source (named by file stem, :meth:`~cyclealign.config.EvalConfig.source_name`).

Everything lands in ``RUN_DIR/eval/`` (generations, rankings, judgements, ``summary.jsonl``,
``samples.jsonl``). Generation files are named by policy, decoding and token cap
(``generations_base_greedy_128tok.jsonl``), so changing either generates afresh rather than
reusing stale text; generations are reused otherwise and judge/ranker calls come from the
reply cache, so a re-run costs no API call.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from cyclealign.agreement import kendall_tau, lcs, ranking_from_scores
from cyclealign.config import Config, EvalConfig
from cyclealign.data import load_prompts, recorded_round_prompts
from cyclealign.errors import ConfigError, RunDirError
from cyclealign.policy.base import Generation, GenerationBackend
from cyclealign.ranker.client import RankJob, Ranker
from cyclealign.ranker.judge import JudgeTemplates, VerdictParseError, pair_outcome, parse_verdict
from cyclealign.records import Message, PromptRecord
from cyclealign.rundir import RunDir, read_jsonl, round_dir_name, write_jsonl

__all__ = [
    "EvalPlan",
    "RewardScorer",
    "held_out_prompts",
    "held_out_sources",
    "label",
    "reward_input",
    "reward_input_style",
    "run_evaluation",
    "wilson_interval",
    "win_summary",
]

BASE = -1
"""The round index that names the base policy (no adapter)."""

_EVAL_DEFAULTS = EvalConfig.model_fields


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
        prompts: held-out prompt source, or several (any format :func:`cyclealign.data.load_prompts`
            reads); with several, results are also broken down by source.
        num_prompts: how many held-out prompts per source (a seeded sample).
        rounds: policies to evaluate (``-1`` = base); None = base and the latest trained round.
        vs: the reference policy of the win rate (``-1`` = base).
        reward_model: HF sequence-classification model id or path, or None.
        judge_max_tokens: completion cap per pairwise judge call, tokens (default: that of
            :class:`~cyclealign.config.EvalConfig`, 16).
        decoding: ``"greedy"`` (default) or ``"sample"``: how the judged response is decoded.
        max_new_tokens: length cap of every evaluation generation, tokens (default 128).

    Raises:
        ConfigError: an out-of-range setting (named as its ``eval.*`` field), an empty list of
            sources, or two sources with the same name.
    """

    prompts: Path | Sequence[Path]
    num_prompts: int = _EVAL_DEFAULTS["num_prompts"].default
    rounds: list[int] | None = None
    vs: int = BASE
    reward_model: str | None = None
    judge_max_tokens: int = _EVAL_DEFAULTS["judge_max_tokens"].default
    decoding: Literal["greedy", "sample"] = _EVAL_DEFAULTS["decoding"].default
    max_new_tokens: int = _EVAL_DEFAULTS["max_new_tokens"].default

    def __post_init__(self) -> None:
        prompts = [Path(p) for p in self.prompts] if isinstance(self.prompts, (list, tuple)) else Path(self.prompts)
        try:
            EvalConfig(
                prompts=prompts,
                num_prompts=self.num_prompts,
                reward_model=self.reward_model,
                judge_max_tokens=self.judge_max_tokens,
                decoding=self.decoding,
                max_new_tokens=self.max_new_tokens,
            )
        except ValidationError as e:
            raise ConfigError(
                "; ".join(
                    f"eval.{'.'.join(map(str, err['loc']))}: {err['msg']}" if err["loc"] else err["msg"].removeprefix("Value error, ")
                    for err in e.errors()
                )
            ) from None
        self.prompts = prompts

    @property
    def sources(self) -> list[Path]:
        """The prompt sources as a list."""
        return list(self.prompts) if isinstance(self.prompts, list) else [self.prompts]

    @classmethod
    def from_config(cls, settings: EvalConfig, rounds: list[int] | None = None, vs: int = BASE) -> "EvalPlan":
        """The plan of a run's ``eval`` settings (``settings.prompts`` must be set)."""
        return cls(
            settings.prompt_sources,
            settings.num_prompts,
            rounds=rounds,
            vs=vs,
            reward_model=settings.reward_model,
            judge_max_tokens=settings.judge_max_tokens,
            decoding=settings.decoding,
            max_new_tokens=settings.max_new_tokens,
        )


def _trained_texts(cfg: Config) -> set[str]:
    """Conversation texts of every prompt any of the run's ``cfg.rounds`` rounds draws."""
    trained: set[str] = set()
    run_prompts = load_prompts(cfg.prompts)
    run = RunDir(cfg.run_dir)
    for k in range(cfg.rounds):  # what a round recorded, else what it would draw
        trained.update(p.query_text for p in recorded_round_prompts(run, cfg, k, run_prompts))
    return trained


def held_out_prompts(cfg: Config, source: Path, count: int, trained: Collection[str] | None = None) -> list[PromptRecord]:
    """``count`` prompts of ``source`` that no round of the run trains on (seeded sample).

    A prompt is "trained on" when its conversation text equals that of a prompt any of the
    run's ``cfg.rounds`` rounds draws (``trained``: those texts, when already computed).

    Raises:
        DataError: unreadable prompt file.
        ConfigError: no held-out prompt is left.
    """
    candidates = load_prompts(source)
    trained = _trained_texts(cfg) if trained is None else trained
    held = [p for p in candidates if p.query_text not in trained]
    if not held:
        raise ConfigError(f"{source}: every prompt is one the run trains on; evaluation needs held-out prompts")
    random.Random(cfg.seed + 7919).shuffle(held)
    return held[:count]


def held_out_sources(cfg: Config, sources: Sequence[Path], count: int) -> tuple[list[PromptRecord], dict[str, str]]:
    """:func:`held_out_prompts` of each source (``count`` per source), and each prompt's source name.

    Each source is sampled as it would be alone, so a one-source evaluation sees the same
    prompts as before. Prompt ids that more than one source uses (explicit ``"id"`` fields)
    are prefixed with their source name, ``"<source>/<id>"``; other ids are kept.

    Returns:
        ``(prompts, source_of)``: the prompts, source by source in the given order, and
        ``{prompt id: source name}`` (:meth:`EvalConfig.source_name`: the file stem).

    Raises:
        DataError: an unreadable prompt file.
        ConfigError: a source with no held-out prompt; two sources with the same name.
    """
    names = [EvalConfig.source_name(s) for s in sources]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"--prompts {sources[names.index(name)]} and {sources[i]} have the same name {name!r}; rename one")
    trained = _trained_texts(cfg)
    picked = [(name, held_out_prompts(cfg, source, count, trained)) for name, source in zip(names, sources)]
    uses = Counter(p.id for _, held in picked for p in held)  # ids are unique within a source
    prompts: list[PromptRecord] = []
    source_of: dict[str, str] = {}
    for name, held in picked:
        for p in held:
            record = p if uses[p.id] == 1 else PromptRecord(f"{name}/{p.id}", p.messages)
            prompts.append(record)
            source_of[record.id] = name
    return prompts, source_of


def _trained_rounds(run: RunDir, rounds: int) -> list[int]:
    return [k for k in range(rounds) if run.round(k).has_adapter()]


@dataclass
class _PolicyResults:
    """Per-prompt results of one policy, keyed by prompt id (aggregated by :func:`_summarise`)."""

    agreement: dict[str, tuple[float, float]]  # ranked prompts: (Kendall tau, LCS length / N)
    lengths: dict[str, int]  # judged response length, tokens
    rewards: dict[str, float] | None = None  # reward model score of the judged response
    judgements: list[dict[str, Any]] | None = None  # rows of :func:`_judge` (not for the reference)


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
        policy: returns the generation backend (``load_adapter(path | None)``,
            ``sample(prompts, seed, max_new_tokens=)``, ``greedy(prompts, max_new_tokens=)``);
            called only when a policy's held-out generations are not already in ``eval/``, so an
            evaluation whose generations are all on disk loads no model.
        judge: the pairwise judge templates.

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
    trained = _trained_rounds(run, cfg.rounds)
    rounds = plan.rounds if plan.rounds is not None else [BASE, *trained[-1:]]
    for k in {*rounds, plan.vs}:
        if k != BASE and k not in trained:
            raise RunDirError(f"{run.path}: round {k} has no trained adapter to evaluate (trained: {trained or 'none'})")
    policies = sorted({*rounds, plan.vs})
    out = run.path / "eval"
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
            agreement=_agreement(ranker, out, k, sampled[k], by_id, cfg.seed),
            lengths={g.prompt_id: len(g.response_token_ids[0]) for g in judged[k] if g.responses},
        )
        if plan.reward_model:
            if reward is None:
                reward = RewardScorer(plan.reward_model, cfg)
            results[k].rewards = _rewards(reward, judged[k], by_id)
    for k in rounds:
        if k != plan.vs:
            results[k].judgements = _judge(
                ranker, judge, out, k, plan.vs, judged[k], judged[plan.vs], by_id, plan.judge_max_tokens, source_of
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
    summary = {row["round"]: row for row in read_jsonl(out / "summary.jsonl")}
    summary.update(lines)
    write_jsonl(out / "summary.jsonl", [summary[k] for k in sorted(summary)])
    samples = {(s["round"], s["prompt_id"]): s for s in read_jsonl(out / "samples.jsonl")}
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
                }
    write_jsonl(out / "samples.jsonl", [samples[key] for key in sorted(samples)])
    return [lines[k] for k in policies]


def _first_response(g: Generation) -> Generation:
    """``g`` with only its first sampled response (the judged response of ``decoding="sample"``)."""
    return Generation(g.prompt_id, g.prompt_token_ids, g.responses[:1], g.response_token_ids[:1], g.logprob_mean[:1], g.finished[:1])


def generations_path(out: Path, k: int, kind: Literal["sampled", "greedy"], max_new_tokens: int) -> Path:
    """Where policy ``k``'s evaluation generations of one kind and token cap are kept.

    >>> generations_path(Path("eval"), -1, "greedy", 128).as_posix()
    'eval/generations_base_greedy_128tok.jsonl'
    """
    return out / f"generations_{_slug(k)}_{kind}_{max_new_tokens}tok.jsonl"


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
    cached = [Generation.from_json(d) for d in read_jsonl(path)]
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
    ranker: Ranker, out: Path, k: int, gens: list[Generation], by_id: dict[str, PromptRecord], seed: int
) -> dict[str, tuple[float, float]]:
    """Black-box rankings of each prompt's samples (written to ``rankings_<policy>.jsonl``) against
    the policy's log-likelihood ranking: ``{prompt id: (Kendall tau, LCS length / N)}`` of the
    prompts that were ranked (those with >= 2 samples and a parsed ranking)."""
    jobs = [RankJob(by_id[g.prompt_id], g.responses, [], seed) for g in gens if len(g.responses) >= 2]
    results = ranker.rank_all(jobs) if jobs else []
    write_jsonl(out / f"rankings_{_slug(k)}.jsonl", [r.to_json() for r in results])
    scores = {g.prompt_id: g.logprob_mean for g in gens}
    agreement = {}
    for r in results:
        if r.ranking is None:
            continue
        white = ranking_from_scores(scores[r.prompt_id])
        agreement[r.prompt_id] = (kendall_tau(r.ranking, white), len(lcs(r.ranking, white)) / len(white))
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


def _judge(
    ranker: Ranker,
    judge: JudgeTemplates,
    out: Path,
    k: int,
    vs: int,
    judged_a: Sequence[Generation],
    judged_b: Sequence[Generation],
    by_id: dict[str, PromptRecord],
    max_tokens: int = 16,
    source_of: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Pairwise judgements of policy ``k`` (A) against ``vs`` (B), both orders, on each prompt's
    judged (first) response; ``max_tokens``: completion cap per judge call, tokens.

    A pair of identical responses (same text up to surrounding whitespace: greedy decoding, or
    sampling with the same seed, gives that when behaviour is unchanged) is a tie without a call.
    Writes and returns the rows of ``judgements_<k>_vs_<vs>.jsonl``, one per prompt both policies
    answered: ``prompt_id``, ``source`` (with ``source_of``), ``a``, ``b``, ``replies`` (raw
    texts, None for a failed call), ``outcome`` (win | loss | tie | invalid), ``problem``,
    ``identical``.
    """
    b_by_id = {g.prompt_id: g for g in judged_b}
    pairs = [
        (g.prompt_id, g.responses[0], b_by_id[g.prompt_id].responses[0])
        for g in judged_a
        if g.responses and b_by_id.get(g.prompt_id) and b_by_id[g.prompt_id].responses
    ]
    # Identical responses are a tie by definition: no judge call is paid for them.
    asked = [(pid, a, b) for pid, a, b in pairs if a.strip() != b.strip()]
    conversations = []
    for pid, a, b in asked:
        query = by_id[pid].query_text
        conversations += [judge.messages(query, a, b), judge.messages(query, b, a)]
    replies = ranker.ask_all(conversations, max_tokens=max_tokens) if conversations else []
    reply_pairs = {pid: replies[2 * i : 2 * i + 2] for i, (pid, _, _) in enumerate(asked)}
    rows = []
    for pid, a, b in pairs:
        row: dict[str, Any] = {"prompt_id": pid}
        if source_of is not None:
            row["source"] = source_of[pid]
        if pid not in reply_pairs:
            rows.append(row | {"a": a, "b": b, "replies": [], "outcome": "tie", "problem": None, "identical": True})
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
        rows.append(row | {"a": a, "b": b, "replies": raw, "outcome": outcome, "problem": problem, "identical": False})
    write_jsonl(out / f"judgements_{_slug(k)}_vs_{_slug(vs)}.jsonl", rows)
    return rows


def win_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Win-rate numbers of judgement rows (``outcome`` win | loss | tie | invalid, ``identical``).

    ``judged = wins + losses + ties`` (invalid rows are left out); ``win_rate = wins / judged``
    with its Wilson 95% interval ``ci_low``/``ci_high``, ``win_rate_ties_half = (wins + ties / 2)
    / judged``; rates are None with nothing judged.

    >>> s = win_summary([{"outcome": "win"}, {"outcome": "tie", "identical": True}, {"outcome": "invalid"}])
    >>> s["wins"], s["ties"], s["invalid"], s["identical"], s["win_rate"], s["win_rate_ties_half"]
    (1, 1, 1, 1, 0.5, 0.75)
    """
    counts = Counter(row["outcome"] for row in rows)
    wins, losses, ties = counts["win"], counts["loss"], counts["tie"]
    judged = wins + losses + ties
    low, high = wilson_interval(wins, judged)
    return {
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "invalid": counts["invalid"],
        "identical": sum(bool(row.get("identical")) for row in rows),
        "win_rate": wins / judged if judged else None,
        "win_rate_ties_half": (wins + ties / 2) / judged if judged else None,
        "ci_low": low,
        "ci_high": high,
    }


def _rewards(scorer: RewardScorer, judged: list[Generation], by_id: dict[str, PromptRecord]) -> dict[str, float]:
    """A reward model's score of each prompt's judged response: ``{prompt id: score}``."""
    answered = [g for g in judged if g.responses]
    scores = scorer([(by_id[g.prompt_id], g.responses[0]) for g in answered])
    return {g.prompt_id: s for g, s in zip(answered, scores)}


RewardStyle = Literal["oasst", "chat_template", "text_pair", "plain"]
"""How a reward model reads a conversation (see :func:`reward_input`)."""

_PLAIN_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}
_OASST_ROLES = {"user": "<|prompter|>", "assistant": "<|assistant|>", "system": "<|system|>"}


def reward_input(
    messages: Sequence[Message],
    response: str,
    style: RewardStyle,
    *,
    eos_token: str = "<|endoftext|>",
    chat_template: Callable[[list[Message]], str] | None = None,
) -> str | tuple[str, str]:
    r"""The reward model's input for ``response`` to the conversation ``messages``.

    Styles (:func:`reward_input_style` picks one from the tokenizer):

    * ``"oasst"``: OpenAssistant's format (e.g. ``OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5``):
      each turn ``<|prompter|>`` / ``<|assistant|>`` / ``<|system|>`` + text + ``eos_token``.
    * ``"text_pair"``: a cross-encoder's ``(question, answer)`` pair (OpenAssistant's DeBERTa reward
      models): the question is the user's message, or the plain ``Human:``/``Assistant:``
      transcript of a multi-turn conversation.
    * ``"chat_template"``: ``chat_template(messages + [assistant response])`` (the tokenizer's own).
    * ``"plain"``: ``Human: ...\n\nAssistant: ...`` text.

    Returns:
        One text, or ``(question, answer)`` for ``"text_pair"``.

    Raises:
        ValueError: an unknown style, or ``"chat_template"`` without ``chat_template``.

    >>> chat = [{"role": "user", "content": "Hi"}]
    >>> reward_input(chat, "Hello!", "oasst")
    '<|prompter|>Hi<|endoftext|><|assistant|>Hello!<|endoftext|>'
    >>> reward_input(chat, "Hello!", "text_pair")
    ('Hi', 'Hello!')
    >>> reward_input([*chat, {"role": "assistant", "content": "Yes?"}, {"role": "user", "content": "Bye"}], "Bye!", "plain")
    'Human: Hi\n\nAssistant: Yes?\n\nHuman: Bye\n\nAssistant: Bye!'
    >>> reward_input(chat, "Hello!", "chat_template", chat_template=lambda ms: "|".join(m["content"] for m in ms))
    'Hi|Hello!'
    """
    full = [*messages, {"role": "assistant", "content": response}]
    if style == "oasst":
        return "".join(f"{_OASST_ROLES[m['role']]}{m['content']}{eos_token}" for m in full)
    if style == "text_pair":
        single = len(messages) == 1 and messages[0]["role"] == "user"
        question = messages[0]["content"] if single else "\n\n".join(f"{_PLAIN_ROLES[m['role']]}: {m['content']}" for m in messages)
        return question, response
    if style == "plain":
        return "\n\n".join(f"{_PLAIN_ROLES[m['role']]}: {m['content']}" for m in full)
    if style == "chat_template":
        if chat_template is None:
            raise ValueError("reward_input: style 'chat_template' needs the chat_template function")
        return chat_template(full)
    raise ValueError(f"reward_input: unknown style {style!r} (expected oasst, text_pair, chat_template or plain)")


def reward_input_style(tokenizer: Any) -> RewardStyle:
    """The input format a reward model was trained on, read from its tokenizer (not its name).

    ``"oasst"`` when the vocabulary has OpenAssistant's ``<|prompter|>`` and ``<|assistant|>``
    tokens; else ``"chat_template"`` when the tokenizer has a chat template; else ``"text_pair"``
    for a cross-encoder (a tokenizer with both a CLS and a SEP token, e.g. DeBERTa); else ``"plain"``.
    """
    vocab = tokenizer.get_vocab()
    if "<|prompter|>" in vocab and "<|assistant|>" in vocab:
        return "oasst"
    if getattr(tokenizer, "chat_template", None):
        return "chat_template"
    if getattr(tokenizer, "cls_token", None) is not None and getattr(tokenizer, "sep_token", None) is not None:
        return "text_pair"
    return "plain"


class RewardScorer:
    """A sequence-classification reward model, loaded once and called on batches of pairs.

    The conversation and response are formatted as the model was trained on (:func:`reward_input`
    with :func:`reward_input_style`; ``style`` holds the detected one). Inputs longer than
    ``min(1024, tokenizer.model_max_length)`` tokens are cut from the left (the start of the
    conversation), a text pair longest-first.

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
        self.style: RewardStyle = reward_input_style(tok)
        if self.style != "text_pair":
            tok.truncation_side = "left"  # keep the response's end, which a decoder reward model reads
        self.max_length = min(1024, int(tok.model_max_length))
        self.tokenizer, self.model = tok, model

    def inputs(self, pairs: list[tuple[PromptRecord, str]]) -> list[str | tuple[str, str]]:
        """The formatted input of each ``(prompt, response)`` pair."""
        tok = self.tokenizer

        def template(messages: list[Message]) -> str:
            return tok.apply_chat_template(messages, tokenize=False)

        eos = tok.eos_token or "<|endoftext|>"
        return [reward_input(p.messages, r, self.style, eos_token=eos, chat_template=template) for p, r in pairs]

    def __call__(self, pairs: list[tuple[PromptRecord, str]], batch_size: int = 8) -> list[float]:
        """Scores of ``(prompt, response)`` pairs (logit 0), ``batch_size`` pairs per forward pass."""
        import torch

        tok = self.tokenizer
        inputs = self.inputs(pairs)
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                chunk = inputs[start : start + batch_size]
                if self.style == "text_pair":
                    texts: Any = ([q for q, _ in chunk], [a for _, a in chunk])
                else:
                    texts = (chunk,)
                enc = tok(*texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
                logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
                scores.extend(float(x) for x in logits[:, 0].float().cpu())
        return scores


def reward_scores(model_id: str, pairs: list[tuple[PromptRecord, str]], cfg: Config, batch_size: int = 8) -> list[float]:
    """Scores of ``(prompt, response)`` pairs by a sequence-classification reward model (logit 0).

    The input is formatted as the model was trained on (see :class:`RewardScorer`). Loads the
    model on every call; to score several batches of pairs with one model, use :class:`RewardScorer`.

    Raises:
        ConfigError: the model cannot be loaded (the id or path is named).
    """
    return RewardScorer(model_id, cfg)(pairs, batch_size=batch_size)
