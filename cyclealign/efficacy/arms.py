"""Compared CycleAlign runs ("arms") of the efficacy benchmark, at a fixed number of paid calls.

Two comparisons train several configs per rule and seed and set them side by side:

- **prompt selection under a call budget** (:func:`budget_arms`): each selection signal ranks
  B first asks' worth of 2B candidates (``ranker.calls_per_round = B``), against ``random``
  (the same B calls) and ``all`` (every candidate ranked, 2B calls);
- **a noisy judge at equal calls** (:func:`noise_arms`): C calls a round spent as one ask on C
  prompts (``single``), as K shuffled orders on C / K prompts kept only when all K agree
  (``strict``), or as K orders aggregated by Kemeny at ``ranker.min_confidence``
  (``aggregate``). More, noisier lists against fewer, cleaner ones: the training question
  :mod:`cyclealign.efficacy.labels` leaves open.

:func:`summarise_arms` turns the per-seed measures of the arms into one rule's entry, and
:func:`trained_label_accuracy` says how often the rankings a run trained on agree with the rule.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from cyclealign.efficacy.labels import pair_counts
from cyclealign.efficacy.measure import bootstrap_rate_difference, bootstrap_ratio, bootstrap_tau_change, spread
from cyclealign.efficacy.rules import Rule
from cyclealign.records import Generation, RankResult

__all__ = ["BUDGET_PAIRS", "NOISE_PAIRS", "budget_arms", "noise_arms", "summarise_arms", "trained_label_accuracy"]


def budget_arms(budget: int, signals: Sequence[str], overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The config overrides of the budget axis's runs, by name: each selection signal ranks
    ``budget`` first asks' worth of ``2 budget`` candidates; ``all`` ranks all ``2 budget``.

    >>> budget_arms(3, ["random"], {})["random"]
    {'prompts_per_round': 6, 'ranker.calls_per_round': 3, 'ranker.selection': 'random'}
    >>> budget_arms(3, ["random"], {})["all"]
    {'prompts_per_round': 6}
    """
    arms = {s: {**overrides, "prompts_per_round": 2 * budget, "ranker.calls_per_round": budget, "ranker.selection": s} for s in signals}
    arms["all"] = {**overrides, "prompts_per_round": 2 * budget}
    return arms


def noise_arms(calls: int, consistency: int, min_confidence: float, overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The config overrides of the noisy judge's runs at ``calls`` ranker calls a round, by name:
    ``single`` (one ask a prompt, ``calls`` prompts), ``strict`` and ``aggregate`` (``consistency``
    = K shuffled orders a prompt, ``calls / K`` prompts; all K agree, or Kemeny at
    ``min_confidence``). The candidates are the run's ``prompts_per_round``.

    Raises:
        ValueError: ``calls`` is not a positive multiple of ``consistency``, or K < 2.

    >>> noise_arms(6, 3, 0.6, {})["aggregate"]
    {'ranker.calls_per_round': 6, 'ranker.consistency': 3, 'ranker.aggregate': 'kemeny', 'ranker.min_confidence': 0.6}
    """
    if consistency < 2 or calls < consistency or calls % consistency:
        raise ValueError(f"calls={calls} must be a positive multiple of consistency={consistency} >= 2")
    k_orders = {"ranker.calls_per_round": calls, "ranker.consistency": consistency}
    return {
        "single": {**overrides, "ranker.calls_per_round": calls, "ranker.consistency": 1},
        "strict": {**overrides, **k_orders, "ranker.aggregate": "strict"},
        "aggregate": {**overrides, **k_orders, "ranker.aggregate": "kemeny", "ranker.min_confidence": min_confidence},
    }


BUDGET_PAIRS = (("uncertainty", "random"), ("diversity", "random"), ("random", "all"), ("uncertainty", "all"), ("diversity", "all"))
"""The budget axis's comparisons, (arm, reference): a signal against random at the same calls, and
every B-call arm against ranking all candidates at twice the calls (pairs with an absent arm are skipped)."""

NOISE_PAIRS = (("aggregate", "single"), ("aggregate", "strict"), ("strict", "single"))
"""The noisy judge's comparisons at equal calls, (arm, reference)."""


def trained_label_accuracy(rule: Rule, rounds: Sequence[tuple[Sequence[Generation], Sequence[RankResult]]]) -> dict[str, Any]:
    """How often the rankings a run kept (its black-box labels, ``ranking`` not None) order the
    responses as the rule does: ``lists`` kept, ``pair_accuracy`` (correct / truth pairs, pooled;
    a truth pair is two responses the rule scores apart, :func:`~cyclealign.efficacy.labels.pair_counts`),
    ``informative`` (kept lists with a truth pair: the rule orders at least two of their responses; on
    the others it ties every response and the label is the presentation order) and ``exact`` (share of
    the informative lists that get every truth pair right).

    Args:
        rounds: per round, its generations and ranking results (matched by ``prompt_id``).

    >>> from cyclealign.efficacy.rules import RULES
    >>> g = Generation(prompt_id="p", prompt_token_ids=[], responses=["a b c", "a", "a b"])
    >>> tied = Generation(prompt_id="q", prompt_token_ids=[], responses=["a b", "c d"])  # same length: a rule tie
    >>> trained_label_accuracy(RULES["brevity"], [([g, tied], [RankResult(prompt_id="p", ranking=[1, 0, 2]),
    ...                                                      RankResult(prompt_id="q", ranking=[1, 0])])])
    {'lists': 2, 'informative': 1, 'pair_accuracy': 0.6666666666666666, 'exact': 0.0}
    """
    correct = truth = exact = judged = lists = 0
    for gens, rankings in rounds:
        by_id = {g.prompt_id: g for g in gens}
        for r in rankings:
            g = by_id.get(r.prompt_id)
            if r.ranking is None or g is None:
                continue
            lists += 1
            c, t = pair_counts(r.ranking, [rule.score(text) for text in g.responses])
            correct, truth = correct + c, truth + t
            if t:
                judged += 1
                exact += c == t
    return {
        "lists": lists,
        "informative": judged,
        "pair_accuracy": correct / truth if truth else None,
        "exact": exact / judged if judged else None,
    }


def summarise_arms(
    heldout_kinds: Sequence[str],
    base_per_seed: Sequence[Mapping[str, Any]],
    runs: Sequence[Mapping[str, Mapping[str, Any]]],
    pairs: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """One rule's entry for compared arms: per arm the spread over seeds (mean, min, max) of its
    held-out movement, tau, fluency, ranked prompts and calls per round (and label accuracy when
    measured), with the 90% interval of its tau rise; per ``(arm, reference)`` pair, per kind, the
    ratio of the seed-mean movements with its 90% bootstrap interval
    (:func:`~cyclealign.efficacy.measure.bootstrap_ratio`), and the 90% intervals of the property
    difference (:func:`~cyclealign.efficacy.measure.bootstrap_rate_difference`) and of the tau
    difference (:func:`~cyclealign.efficacy.measure.bootstrap_tau_change`, the reference as "before").

    Args:
        base_per_seed: per seed, per kind, the base policy's ``per_prompt`` and ``tau_per_prompt`` terms.
        runs: per seed, per arm, its measures: ``wall_s``, ``ranked_per_round``,
            ``ranker_calls_per_round``, ``fluency`` (per kind), optionally ``labels``
            (:func:`trained_label_accuracy`), and per kind ``after``, ``moved``, ``tau``,
            ``per_prompt``, ``tau_per_prompt``.
        pairs: the comparisons; a pair naming an arm the runs lack is skipped.
    """
    arms = list(runs[0])
    entry: dict[str, Any] = {"runs": {}, "compare": {}}
    for arm in arms:
        row: dict[str, Any] = {
            field: spread([r[arm][field] for r in runs]) for field in ("ranked_per_round", "ranker_calls_per_round", "wall_s")
        }
        if "labels" in runs[0][arm]:
            row["label_pair_accuracy"] = spread([r[arm]["labels"]["pair_accuracy"] for r in runs])
            row["labels_kept"] = spread([r[arm]["labels"]["lists"] for r in runs])
        for kind in heldout_kinds:
            row[kind] = {
                "after": spread([r[arm][kind]["after"] for r in runs]),
                "moved": spread([r[arm][kind]["moved"] for r in runs]),
                "tau": spread([r[arm][kind]["tau"] for r in runs]),
                "fluency": spread([r[arm]["fluency"][kind] for r in runs]),
                "tau_rise_90": bootstrap_tau_change(
                    [{"before": b[kind]["tau_per_prompt"], "after": r[arm][kind]["tau_per_prompt"]} for b, r in zip(base_per_seed, runs)]
                ),
            }
        entry["runs"][arm] = row
    for arm, ref in pairs:
        if arm not in arms or ref not in arms:
            continue
        out: dict[str, Any] = {}
        for kind in heldout_kinds:
            moved = statistics.fmean(r[arm][kind]["moved"] for r in runs)
            moved_ref = statistics.fmean(r[ref][kind]["moved"] for r in runs)
            out[kind] = {
                "moved": moved,
                "moved_reference": moved_ref,
                "ratio_of_means": moved / moved_ref if moved_ref > 0 else None,
                "ratio_of_means_90": bootstrap_ratio(
                    [{"before": b[kind]["per_prompt"], "cyclealign": r[arm][kind]["per_prompt"], "baseline": r[ref][kind]["per_prompt"]}
                     for b, r in zip(base_per_seed, runs)]
                ),
                "difference_90": bootstrap_rate_difference(
                    [{"reference": r[ref][kind]["per_prompt"], "after": r[arm][kind]["per_prompt"]} for r in runs]
                ),
                "tau_difference_90": bootstrap_tau_change(
                    [{"before": r[ref][kind]["tau_per_prompt"], "after": r[arm][kind]["tau_per_prompt"]} for r in runs]
                ),
            }
        entry["compare"][f"{arm} vs {ref}"] = out
    return entry
