"""Ranking losses as pure tensor functions.

Scores are length-normalised log-likelihoods (mean token log-prob of each response
given the prompt), ordered **best first** by the label ranking.
"""

from __future__ import annotations

import torch


def pro_loss(scores: torch.Tensor, mask: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Preference Ranking Optimization loss: the Plackett-Luce negative log-likelihood of the ranking.

    Song et al. 2023, "Preference Ranking Optimization for Human Alignment" (arXiv 2306.17492),
    Eq. 7 without the reward-dependent temperature::

        L = - sum_{k=1}^{n-1} log( exp(s_k / T) / sum_{i=k}^{n} exp(s_i / T) )

    where ``s_1 .. s_n`` are the scores in label order (best first) and ``T`` the temperature.

    Args:
        scores: ``[batch, N]`` scores in label order, best first.
        mask: ``[batch, N]`` bool, True on real responses (lists shorter than N are
            right-padded); ``None`` = all real. Each list needs >= 2 real responses.
        temperature: ``T > 0``.
    Returns:
        ``[batch]`` loss per list (nats).

    >>> s = torch.tensor([[0.0, 0.0, 0.0]])
    >>> round(float(pro_loss(s)[0]), 4)  # log 3 + log 2
    1.7918
    """
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    z = (scores / temperature).masked_fill(~mask, float("-inf"))  # [B, N]
    # Denominator of step k: logsumexp over positions k..n (a reversed cumulative logsumexp).
    tail = torch.logcumsumexp(z.flip(-1), dim=-1).flip(-1)  # [B, N]
    step = (tail - z).masked_fill(~mask, 0.0)  # -log P(pick k among k..n)
    # The last real position contributes log(1) = 0, so summing over all real ones is exact.
    return step.sum(-1)


def sft_loss(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per token of a response (the SFT term).

    Args:
        token_logp: ``[batch, seq]`` token log-probs.
        mask: ``[batch, seq]`` 1 on response tokens.
    Returns:
        ``[batch]`` mean NLL per token (nats).
    """
    mask = mask.to(token_logp.dtype)
    return -(token_logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)
