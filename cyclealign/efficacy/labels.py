"""Label accuracy of a noisy rule judge: one ask, strict K-consistency and aggregation, against the rule.

No training and no HTTP: each prompt's N responses are shown to the noisy judge in the ranker's
own presentation orders (:func:`~cyclealign.ranker.ranking.presentation_order`), the judge is the
rule black box's noise model (:func:`~cyclealign.efficacy.server.noisy_ranking` on the rule's
ranking of the responses as shown; the draws seeded by the rule, the prompt and the order
instead of the request's bytes, so that rules draw apart), and the K rankings are combined by the ranker's own
:func:`~cyclealign.ranker.ranking.combine_samples`. What comes out is compared with the rule:

- a **truth pair** is two responses the rule scores differently (a tie has no right order and
  is left out); a label's pair is **correct** when it orders a truth pair as the rule does;
- ``pair_accuracy``: correct truth pairs / truth pairs, pooled over the kept labels;
- ``exact``: the share of kept labels (with at least one truth pair) that get every truth pair right;
- ``kept_share``: kept labels / prompts (a single ask keeps every prompt);
- per paid call: ``labels_per_call`` (kept / calls), ``correct_pairs_per_call`` and
  ``wrong_pairs_per_call``.

Equal calls: a single ask spends 1 call per prompt, the K-order modes K. At the same number of
calls (K P), a single ask labels K P prompts where the others label at most P, so the per-call
figures compare the modes at equal cost: one ask per prompt gives a single ask's per-call figures
for any number of prompts (in expectation). Whether more, noisier labels or fewer, cleaner ones
train better at equal cost is a training question this measurement does not answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from cyclealign.efficacy.rules import Rule
from cyclealign.efficacy.server import JudgeNoise, noisy_ranking
from cyclealign.ranker.ranking import combine_samples, presentation_order
from cyclealign.records import RankSample

__all__ = ["COUNTS", "MODES", "judge_rankings", "label_accuracy", "pair_counts", "pooled", "with_rates"]

MODES = ("single", "strict", "borda", "kemeny")
"""How one prompt's label is made: one ask, or K asks kept when all agree, or aggregated."""


def pair_counts(ranking: Sequence[int], scores: Sequence[float]) -> tuple[int, int]:
    """``(correct, truth)``: of the pairs ``scores`` orders strictly (truth pairs), how many
    ``ranking`` (response indices, best first) orders the same way.

    >>> pair_counts([0, 1, 2], [3.0, 2.0, 2.0])  # 1 and 2 tie: no truth
    (2, 2)
    >>> pair_counts([2, 1, 0], [3.0, 2.0, 1.0])
    (0, 3)
    """
    pos = {item: k for k, item in enumerate(ranking)}
    correct = truth = 0
    for i in range(len(scores)):
        for j in range(len(scores)):
            if scores[i] > scores[j]:
                truth += 1
                correct += pos[i] < pos[j]
    return correct, truth


def judge_rankings(rule: Rule, responses: Sequence[str], noise: JudgeNoise, *, prompt_id: str, seed: int, k: int) -> list[list[int]]:
    """The noisy judge's rankings of ``responses`` in ``k`` presentation orders (the ranker's
    shuffles of ``seed`` and ``prompt_id``), mapped back to response indices, best first.

    >>> from cyclealign.efficacy.rules import RULES
    >>> judge_rankings(RULES["brevity"], ["a b c", "a", "a b"], JudgeNoise(), prompt_id="p", seed=0, k=2)
    [[1, 2, 0], [1, 2, 0]]
    """
    out = []
    for sample in range(k):
        order = presentation_order(seed, prompt_id, sample, len(responses))
        shown = rule.rank([responses[i] for i in order])
        rng = random.Random(f"{noise.seed}:{seed}:{rule.name}:{prompt_id}:{sample}")
        out.append([order[j] for j in noisy_ranking(shown, noise, rng)])
    return out


def label_accuracy(
    rule: Rule,
    lists: Sequence[tuple[str, Sequence[str]]],
    noise: JudgeNoise,
    *,
    consistency: int = 3,
    min_confidence: float = 0.6,
    thresholds: Sequence[float] = (),
    seed: int = 0,
) -> dict[str, Any]:
    """How often the noisy judge's labels agree with ``rule``, per :data:`MODES` (see the module).

    Args:
        rule: the rule (the truth, and what the noisy judge ranks by).
        lists: ``(prompt id, N >= 2 responses)`` per prompt.
        noise: the judge's noise.
        consistency: K, the presentation orders of the K-order modes (>= 2).
        min_confidence: the aggregation modes' threshold (``ranker.min_confidence``).
        thresholds: more thresholds to report Kemeny at (``kemeny_at``: threshold -> figures).
        seed: the presentation orders' seed.

    Returns:
        ``{mode: figures}`` for each mode (:func:`with_rates`: the counts and the module's
        rates), and ``kemeny_at`` (threshold -> figures) when ``thresholds`` are given.

    Raises:
        ValueError: ``consistency`` < 2, or a list of fewer than 2 responses.
    """
    if consistency < 2:
        raise ValueError(f"consistency={consistency}: the K-order modes need K >= 2")
    tallies = {m: {"kept": 0, "correct": 0, "truth": 0, "exact": 0, "with_truth": 0} for m in MODES}
    at = {float(t): {"kept": 0, "correct": 0, "truth": 0, "exact": 0, "with_truth": 0} for t in thresholds}

    def count(tally: dict[str, int], ranking: list[int] | None, scores: list[float]) -> None:
        if ranking is None:
            return
        correct, truth = pair_counts(ranking, scores)
        tally["kept"] += 1
        tally["correct"] += correct
        tally["truth"] += truth
        if truth:
            tally["with_truth"] += 1
            tally["exact"] += correct == truth

    for prompt_id, responses in lists:
        if len(responses) < 2:
            raise ValueError(f"prompt {prompt_id!r}: {len(responses)} response(s), ranking needs 2")
        scores = [rule.score(r) for r in responses]
        rankings = judge_rankings(rule, responses, noise, prompt_id=prompt_id, seed=seed, k=consistency)
        samples = [RankSample(list(range(len(responses))), [], r) for r in rankings]
        count(tallies["single"], rankings[0], scores)
        count(tallies["strict"], combine_samples(samples, "strict").ranking, scores)
        for method in ("borda", "kemeny"):
            count(tallies[method], combine_samples(samples, method, min_confidence).ranking, scores)
        for t, tally in at.items():
            count(tally, combine_samples(samples, "kemeny", t).ranking, scores)

    prompts = len(lists)

    def counts(tally: dict[str, int], calls: int) -> dict[str, int]:
        return {"prompts": prompts, "calls": calls, "kept": tally["kept"], "correct_pairs": tally["correct"],
                "truth_pairs": tally["truth"], "exact_labels": tally["exact"], "labels_with_truth": tally["with_truth"]}

    out: dict[str, Any] = {
        m: with_rates(counts(t, prompts if m == "single" else prompts * consistency)) for m, t in tallies.items()
    }
    if thresholds:
        out["kemeny_at"] = {f"{t:g}": with_rates(counts(tally, prompts * consistency)) for t, tally in at.items()}
    return out


def with_rates(c: dict[str, int]) -> dict[str, Any]:
    """Counts (``prompts``, ``calls``, ``kept``, ``correct_pairs``, ``truth_pairs``,
    ``exact_labels``, ``labels_with_truth``) with the module's rates beside them (None where a
    denominator is 0).

    >>> r = with_rates({"prompts": 2, "calls": 6, "kept": 2, "correct_pairs": 5, "truth_pairs": 6,
    ...                 "exact_labels": 1, "labels_with_truth": 2})
    >>> r["kept_share"], round(r["pair_accuracy"], 3), r["exact"], round(r["wrong_pairs_per_call"], 3)
    (1.0, 0.833, 0.5, 0.167)
    """

    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None

    return {
        **c,
        "kept_share": ratio(c["kept"], c["prompts"]),
        "pair_accuracy": ratio(c["correct_pairs"], c["truth_pairs"]),
        "exact": ratio(c["exact_labels"], c["labels_with_truth"]),
        "labels_per_call": ratio(c["kept"], c["calls"]),
        "correct_pairs_per_call": ratio(c["correct_pairs"], c["calls"]),
        "wrong_pairs_per_call": ratio(c["truth_pairs"] - c["correct_pairs"], c["calls"]),
    }


COUNTS = ("prompts", "calls", "kept", "correct_pairs", "truth_pairs", "exact_labels", "labels_with_truth")
"""The counts of a mode's figures (:func:`with_rates` adds the rates)."""


def pooled(figures: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several measurements of one mode (rules, seeds) pooled: counts summed, rates recomputed.

    >>> a = {"prompts": 1, "calls": 3, "kept": 1, "correct_pairs": 3, "truth_pairs": 3, "exact_labels": 1, "labels_with_truth": 1}
    >>> b = {**a, "kept": 0, "correct_pairs": 0, "truth_pairs": 0, "exact_labels": 0, "labels_with_truth": 0}
    >>> p = pooled([a, b]); p["kept_share"], p["pair_accuracy"], p["calls"]
    (0.5, 1.0, 6)
    """
    return with_rates({k: sum(f[k] for f in figures) for k in COUNTS})
