"""Token log-probabilities of responses under a causal LM: the one scoring routine shared by
white-box ranking (:mod:`cyclealign.policy`) and the ranking losses (:mod:`cyclealign.train`).
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each label token under the (untempered) softmax of its logits.

    Args:
        logits: ``[batch, seq, vocab]`` raw logits; ``logits[:, t]`` predicts ``labels[:, t]``.
        labels: ``[batch, seq]`` token ids (any value where masked out later; negatives allowed).
    Returns:
        ``[batch, seq]`` float32 log-probabilities.
    """
    safe = labels.clamp(min=0)
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, safe.unsqueeze(-1)).squeeze(-1)


def mean_logprob(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Length-normalised log-likelihood: mean token log-prob over the masked positions.

    Args:
        token_logp: ``[batch, seq]`` from :func:`token_logprobs`.
        mask: ``[batch, seq]`` 1 where a position belongs to the response.
    Returns:
        ``[batch]`` mean log-prob per response (nats per token); 0 for an empty mask.
    """
    mask = mask.to(token_logp.dtype)
    return (token_logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def response_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """Per-token log-probs of response tokens with one forward pass.

    Args:
        input_ids: ``[batch, seq]`` prompt + response ids, right-padded.
        attention_mask: ``[batch, seq]`` 1 on real tokens.
        response_mask: ``[batch, seq]`` 1 on response tokens (the scored positions).
    Returns:
        ``[batch, seq - 1]`` log-probs of tokens ``1..seq-1``, zeroed outside the response
        (aligned with ``response_mask[:, 1:]``).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, V]
    logp = token_logprobs(logits[:, :-1], input_ids[:, 1:])  # [B, T-1]
    return logp * response_mask[:, 1:].to(logp.dtype)
