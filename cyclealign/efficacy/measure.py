"""Held-out efficacy measures of a policy against a known rule.

- :func:`property_rate`: the rule's property averaged over a policy's own sampled responses
  (how often the policy now *does* what the black box prefers);
- :func:`rule_tau`: Kendall tau-b between the policy's length-normalised log-likelihood of a
  fixed set of responses and the rule's scores of them, averaged over prompts (how far the
  policy's own preferences moved toward the rule's; the white-box ranking of CycleAlign,
  Hong et al. 2023, Sec. 3.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from scipy.stats import kendalltau

from cyclealign.efficacy.rules import Rule
from cyclealign.policy.base import Generation
from cyclealign.train.trainer import list_logps


def property_rate(rule: Rule, gens: Sequence[Generation]) -> float:
    """Mean of ``rule.property`` over every response of ``gens`` (in [0, 1]).

    Raises:
        ValueError: no response at all.
    """
    values = [rule.property(r) for g in gens for r in g.responses]
    if not values:
        raise ValueError("no response to measure")
    return sum(values) / len(values)


def mean_tau(pairs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> float | None:
    """Mean Kendall tau-b over lists of (rule scores, policy scores); lists where either side is
    constant (tau undefined) are left out; ``None`` when every list is.

    >>> mean_tau([([3, 2, 1], [0.3, 0.2, 0.1]), ([1, 1, 1], [0.1, 0.2, 0.3]), ([1, 2, 3], [0.3, 0.2, 0.1])])
    0.0
    """
    taus = []
    for rule_scores, policy_scores in pairs:
        tau = kendalltau(rule_scores, policy_scores).statistic
        if tau is not None and not math.isnan(tau):
            taus.append(float(tau))
    return sum(taus) / len(taus) if taus else None


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


def rule_tau(rule: Rule, gens: Sequence[Generation], policy_scores: Sequence[Sequence[float]]) -> float | None:
    """Mean Kendall tau-b between the rule's scores and ``policy_scores`` over the prompts of ``gens``
    (see :func:`mean_tau`); ``policy_scores`` as :func:`loglik_scores` returns them."""
    pairs = [([rule.score(r) for r in g.responses], s) for g, s in zip(gens, policy_scores) if len(g.responses) >= 2]
    return mean_tau(pairs)
