"""Sequence log-probs of ranking lists under a model, without training: the reference model's
scores of the reference-based losses, and held-out measures."""

from __future__ import annotations

from typing import Any

import torch

from cyclealign.config.train import TrainConfig
from cyclealign.train.examples import collate_lists
from cyclealign.train.shared_prompt import list_response_logprobs

__all__ = ["list_logps", "reference_logps"]


@torch.no_grad()
def _scored_lists(model, rows: list[dict[str, Any]], *, pad_token_id: int, max_length: int, device: torch.device):
    """Per row: ``[N, T-1]`` per-token log-probs and the ``[N, T-1]`` response mask they align with."""
    was_training = model.training
    model.eval()
    out = []
    for row in rows:
        batch = collate_lists([row], pad_token_id, max_length)
        logp = list_response_logprobs(
            model,
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch["response_mask"].to(device),
            batch["list_sizes"].tolist(),
        )  # [N, T-1], the prompt run once
        out.append((logp.float().cpu(), batch["response_mask"][:, 1:]))
    model.train(was_training)
    return out


def list_logps(
    model, rows: list[dict[str, Any]], *, pad_token_id: int, max_length: int, device: torch.device
) -> list[tuple[list[float], list[int]]]:
    """Sequence log-probs and lengths of every response of every ranking list, one list at a time
    (its prompt run once: :func:`cyclealign.train.shared_prompt.list_response_logprobs`).

    Args:
        rows: dicts with ``prompt_ids`` and ``responses_ids`` (as :func:`collate_lists` takes).
    Returns:
        Per row: (``[N]`` summed log-probs in nats, ``[N]`` response lengths in tokens).
    """
    scored = _scored_lists(model, rows, pad_token_id=pad_token_id, max_length=max_length, device=device)
    return [(logp.sum(-1).tolist(), mask.sum(-1).tolist()) for logp, mask in scored]


def reference_logps(
    model, rows: list[dict[str, Any]], cfg: TrainConfig, *, pad_token_id: int, device: torch.device
) -> list[list[list[float]]]:
    """Per-token log-probs of every response under the reference model, computed once before training.

    The reference is the policy as it enters this round's training: with
    ``cfg.reference == "previous"`` that is the model as given (the previous round's adapter);
    with ``"initial"`` the adapter is disabled, leaving the initial (base) policy. Precomputing
    them (as TRL's ``precompute_ref_log_probs`` does) keeps one model in memory.

    Returns:
        Per row, per response: the log-probs (nats) of its tokens as training keeps them
        (``cfg.max_length``), in order; a response's sequence log-prob is their sum.
    """
    import contextlib

    ctx = model.disable_adapter() if cfg.reference == "initial" else contextlib.nullcontext()
    with ctx:
        scored = _scored_lists(model, rows, pad_token_id=pad_token_id, max_length=cfg.max_length, device=device)
    return [[lp[m.bool()].tolist() for lp, m in zip(logp, mask)] for logp, mask in scored]
