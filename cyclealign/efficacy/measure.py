"""Held-out efficacy measures of a policy against a known rule.

- :func:`property_rate`: the rule's property averaged over a policy's own sampled responses
  (how often the policy now *does* what the black box prefers);
- :func:`rule_tau`: Kendall tau-b between the policy's length-normalised log-likelihood of a
  fixed set of responses and the rule's scores of them, averaged over prompts (how far the
  policy's own preferences moved toward the rule's; the white-box ranking of CycleAlign,
  Hong et al. 2023, Sec. 3.2);
- :func:`spread`: mean, min and max of a measure over seeds;
- :func:`bootstrap_ratio`: how precisely a few held-out prompts pin down the ratio of two
  methods' movements (a percentile interval from resampling the prompts);
  :func:`bootstrap_tau_change` likewise for the rise of the held-out tau, and
  :func:`bootstrap_rate_difference` for the difference of two policies' property rates.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence

import torch
from scipy.stats import kendalltau

from cyclealign.efficacy.rules import Rule
from cyclealign.records import Generation
from cyclealign.train.scoring import list_logps


def spread(values: Sequence[float | None]) -> dict[str, float | None]:
    """``mean``, ``min`` and ``max`` of the defined ``values`` (all None when none is), e.g. a
    measure over seeds.

    >>> spread([1.0, None, 3.0])
    {'mean': 2.0, 'min': 1.0, 'max': 3.0}
    """
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "min": None, "max": None}
    return {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}


def property_rate(rule: Rule, gens: Sequence[Generation]) -> float:
    """Mean of ``rule.property`` over every response of ``gens`` (in [0, 1]).

    Raises:
        ValueError: no response at all.
    """
    terms = prompt_properties(rule, gens)
    responses = sum(n for _, n in terms)
    if not responses:
        raise ValueError("no response to measure")
    return sum(total for total, _ in terms) / responses


def prompt_properties(rule: Rule, gens: Sequence[Generation]) -> list[tuple[float, int]]:
    """Per prompt of ``gens``: (sum of ``rule.property`` over its responses, number of responses),
    the terms :func:`property_rate` pools, kept apart for :func:`bootstrap_ratio`."""
    return [(sum(rule.property(r) for r in g.responses), len(g.responses)) for g in gens]


def bootstrap_ratio(
    seeds: Sequence[Mapping[str, Sequence[tuple[float, int]]]],
    *,
    draws: int = 2000,
    level: float = 0.9,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of moved(cyclealign) / moved(baseline), the ratio of the
    seed-mean movements, resampling each seed's held-out prompts with replacement (paired: one
    draw of prompts serves the three policies, which were sampled on the same prompts).

    Args:
        seeds: per seed, ``{"before": ..., "cyclealign": ..., "baseline": ...}``, each the
            :func:`prompt_properties` of that policy's samples on the seed's held-out prompts
            (same prompts, same order).
        draws: bootstrap resamples. level: the interval's coverage (0.9: the 5th and 95th
            percentiles).
    Returns:
        ``(low, high)`` over the draws where the baseline moved up (elsewhere the ratio is
        undefined), or None when fewer than half of the draws are such.
    Raises:
        ValueError: a seed whose three lists differ in length, or no prompt.
    """
    rng = random.Random(seed)
    for s in seeds:
        sizes = {len(s["before"]), len(s["cyclealign"]), len(s["baseline"])}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"each seed needs the same non-empty prompts for the three policies, got sizes {sizes}")

    def rate(terms: Sequence[tuple[float, int]], idx: list[int]) -> float:
        return sum(terms[i][0] for i in idx) / max(sum(terms[i][1] for i in idx), 1)

    ratios = []
    for _ in range(draws):
        moved_c = moved_b = 0.0
        for s in seeds:
            idx = [rng.randrange(len(s["before"])) for _ in s["before"]]
            before = rate(s["before"], idx)
            moved_c += rate(s["cyclealign"], idx) - before
            moved_b += rate(s["baseline"], idx) - before
        if moved_b > 0:
            ratios.append(moved_c / moved_b)
    if len(ratios) < draws / 2:
        return None
    return _percentile_interval(ratios, level)


def _percentile_interval(values: list[float], level: float) -> tuple[float, float]:
    """The central ``level`` interval of ``values`` (bootstrap draws): their ``(1-level)/2`` and
    ``(1+level)/2`` percentiles."""
    values = sorted(values)
    tail = (1 - level) / 2
    return values[int(tail * len(values))], values[min(int((1 - tail) * len(values)), len(values) - 1)]


def _mean_defined(taus: Sequence[float | None]) -> float | None:
    """Mean of the defined (non-None) taus; None when none is."""
    defined = [t for t in taus if t is not None]
    return sum(defined) / len(defined) if defined else None


def list_taus(pairs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> list[float | None]:
    """Kendall tau-b of each list of (rule scores, policy scores); None where either side is
    constant (tau undefined).

    >>> list_taus([([3, 2, 1], [0.3, 0.2, 0.1]), ([1, 1, 1], [0.1, 0.2, 0.3])])
    [1.0, None]
    """
    taus: list[float | None] = []
    for rule_scores, policy_scores in pairs:
        tau = kendalltau(rule_scores, policy_scores).statistic
        taus.append(None if tau is None or math.isnan(tau) else float(tau))
    return taus


def mean_tau(pairs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> float | None:
    """Mean Kendall tau-b over lists of (rule scores, policy scores); lists where either side is
    constant (tau undefined) are left out; ``None`` when every list is.

    >>> mean_tau([([3, 2, 1], [0.3, 0.2, 0.1]), ([1, 1, 1], [0.1, 0.2, 0.3]), ([1, 2, 3], [0.3, 0.2, 0.1])])
    0.0
    """
    return _mean_defined(list_taus(pairs))


def bootstrap_tau_change(
    seeds: Sequence[Mapping[str, Sequence[float | None]]],
    *,
    draws: int = 2000,
    level: float = 0.9,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the held-out tau's rise: the mean over seeds of
    (mean tau after - mean tau before), resampling each seed's prompts with replacement (paired:
    before and after score the same responses of the same prompts).

    Args:
        seeds: per seed, ``{"before": ..., "after": ...}``, each :func:`prompt_taus` of the same
            prompts (None where tau is undefined; such prompts are left out of both means).
        draws, level: as :func:`bootstrap_ratio`.
    Returns:
        ``(low, high)``, or None when no seed has a prompt with a tau on both sides.
    Raises:
        ValueError: a seed whose two lists differ in length.
    """
    rng = random.Random(seed)
    paired = []
    for s in seeds:
        if len(s["before"]) != len(s["after"]):
            raise ValueError(f"before and after need the same prompts, got {len(s['before'])} and {len(s['after'])}")
        both = [(b, a) for b, a in zip(s["before"], s["after"]) if b is not None and a is not None]
        if both:
            paired.append(both)
    if not paired:
        return None
    changes = []
    for _ in range(draws):
        total = 0.0
        for both in paired:
            draw = [both[rng.randrange(len(both))] for _ in both]
            total += sum(a - b for b, a in draw) / len(draw)
        changes.append(total / len(paired))
    return _percentile_interval(changes, level)


def bootstrap_rate_difference(
    seeds: Sequence[Mapping[str, Sequence[tuple[float, int]]]],
    *,
    draws: int = 2000,
    level: float = 0.9,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the difference of two policies' property rates, the mean
    over seeds of rate(after) - rate(reference), resampling each seed's held-out prompts with
    replacement (paired: both policies sampled the same prompts). With the same base policy
    before both, it is also the difference of their movements; unlike :func:`bootstrap_ratio`,
    it is defined when the reference did not move.

    Args:
        seeds: per seed, ``{"reference": ..., "after": ...}``, each :func:`prompt_properties` of
            that policy's samples on the seed's held-out prompts (same prompts, same order).
        draws, level: as :func:`bootstrap_ratio`.
    Returns:
        ``(low, high)``, or None without a seed.
    Raises:
        ValueError: a seed whose two lists differ in length or are empty.

    >>> ref, after = [(1.0, 4), (0.0, 4)], [(3.0, 4), (2.0, 4)]
    >>> bootstrap_rate_difference([{"reference": ref, "after": after}], draws=200)
    (0.5, 0.5)
    """
    rng = random.Random(seed)
    for s in seeds:
        if len(s["reference"]) != len(s["after"]) or not s["after"]:
            raise ValueError(f"reference and after need the same non-empty prompts, got {len(s['reference'])} and {len(s['after'])}")
    if not seeds:
        return None

    def rate(terms: Sequence[tuple[float, int]], idx: list[int]) -> float:
        return sum(terms[i][0] for i in idx) / max(sum(terms[i][1] for i in idx), 1)

    diffs = []
    for _ in range(draws):
        total = 0.0
        for s in seeds:
            idx = [rng.randrange(len(s["after"])) for _ in s["after"]]
            total += rate(s["after"], idx) - rate(s["reference"], idx)
        diffs.append(total / len(seeds))
    return _percentile_interval(diffs, level)


def loglik_scores(
    model, gens: Sequence[Generation], *, pad_token_id: int, max_length: int, device: torch.device
) -> list[list[float]]:
    """Length-normalised log-likelihood (nats per token) of every response of ``gens`` under ``model``.

    Returns:
        One ``[N]`` list per generation, in response order.
    """
    rows = [{"prompt_ids": g.prompt_token_ids, "responses_ids": g.response_token_ids} for g in gens]
    scored = list_logps(model, rows, pad_token_id=pad_token_id, max_length=max_length, device=device)
    return [[s / max(n, 1) for s, n in zip(sums, lengths)] for sums, lengths in scored]


def mean_score(scores: Sequence[Sequence[float]]) -> float:
    """Mean over every response of per-response scores (``[prompts][N]``, as :func:`loglik_scores`
    returns them); 0.0 for none.

    >>> mean_score([[-1.0, -2.0], [-3.0]])
    -2.0
    """
    flat = [s for row in scores for s in row]
    return sum(flat) / len(flat) if flat else 0.0


def prompt_taus(rule: Rule, gens: Sequence[Generation], policy_scores: Sequence[Sequence[float]]) -> list[float | None]:
    """Per prompt of ``gens``, the Kendall tau-b between the rule's scores of its responses and
    ``policy_scores`` (as :func:`loglik_scores` returns them); None where undefined (fewer than 2
    responses, or either side constant)."""
    return [
        list_taus([([rule.score(r) for r in g.responses], s)])[0] if len(g.responses) >= 2 else None
        for g, s in zip(gens, policy_scores)
    ]


def rule_tau(rule: Rule, gens: Sequence[Generation], policy_scores: Sequence[Sequence[float]]) -> float | None:
    """Mean Kendall tau-b between the rule's scores and ``policy_scores`` over the prompts of ``gens``
    (:func:`prompt_taus`, undefined ones left out); None when none is defined."""
    return _mean_defined(prompt_taus(rule, gens, policy_scores))
