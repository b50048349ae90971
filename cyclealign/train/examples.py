"""Training lists: one prompt's responses in label order, and their packing into one batch.

A :class:`RankingExample` is what both round trainers take (the listwise one packs it with
:func:`collate_lists`; the DPO one expands it into preference pairs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["RankingExample", "collate_lists", "keep_prompt_tail", "usable_lists"]


@dataclass
class RankingExample:
    """One training list: a prompt and its responses in label order (best first).

    Attributes:
        prompt_ids: chat-templated prompt token ids.
        responses_ids: response token ids, best first (>= 2 responses).
    """

    prompt_ids: list[int]
    responses_ids: list[list[int]]


def usable_lists(examples: list[RankingExample]) -> list[RankingExample]:
    """The lists with at least 2 responses (a ranking of one says nothing).

    Raises:
        ValueError: none is left.
    """
    usable = [e for e in examples if len(e.responses_ids) >= 2]
    if not usable:
        raise ValueError("no ranking list with at least 2 responses to train on")
    return usable


def keep_prompt_tail(prompt_ids: list[int], response_len: int, max_length: int) -> list[int]:
    """The prompt's last tokens that fit beside a response of ``response_len`` in ``max_length``
    (at least ``max_length // 2`` of them; the response is cut at ``max_length`` afterwards)."""
    return prompt_ids[-max(max_length - response_len, max_length // 2) :]


def collate_lists(examples: list[dict[str, Any]], pad_token_id: int, max_length: int) -> dict[str, torch.Tensor]:
    """Pack ranking lists into one right-padded batch of sequences.

    Args:
        examples: dicts with ``prompt_ids`` (list[int]) and ``responses_ids`` (list[list[int]],
            best first).
    Returns:
        ``input_ids`` / ``attention_mask`` / ``response_mask``: ``[sum N_b, seq]``;
        ``list_sizes``: ``[batch]`` number of responses of each list (in order);
        ``ref_logps``: ``[sum N_b]`` reference sequence log-probs, and ``ref_token_logps``:
        ``[sum N_b, seq - 1]`` the reference's per-token log-probs aligned with ``response_mask[:, 1:]``
        (0 elsewhere), when the examples carry ``ref_token_logps`` (per response, its kept tokens'
        log-probs, :func:`cyclealign.train.scoring.reference_logps`).

    Raises:
        ValueError: an example's ``ref_token_logps`` do not match its responses' kept tokens.
    """
    rows: list[tuple[list[int], int]] = []  # (ids, prompt length)
    sizes = []
    for ex in examples:
        sizes.append(len(ex["responses_ids"]))
        for resp in ex["responses_ids"]:
            prompt = keep_prompt_tail(ex["prompt_ids"], len(resp), max_length)
            ids = (prompt + resp)[:max_length]
            rows.append((ids, len(prompt)))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    resp_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, plen) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention[r, : len(ids)] = 1
        resp_mask[r, plen : len(ids)] = 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "response_mask": resp_mask,
        "list_sizes": torch.tensor(sizes, dtype=torch.long),
    }
    if all(ex.get("ref_token_logps") is not None for ex in examples):
        per_response = [tokens for ex in examples for tokens in ex["ref_token_logps"]]
        keep = resp_mask[:, 1:].bool()  # [R, seq-1]
        ref = torch.zeros(keep.shape, dtype=torch.float32)
        for r, tokens in enumerate(per_response):
            if len(tokens) != int(keep[r].sum()):
                raise ValueError(f"row {r}: {len(tokens)} reference log-probs for {int(keep[r].sum())} kept response tokens")
            ref[r, keep[r]] = torch.tensor(tokens, dtype=torch.float32)
        batch["ref_token_logps"] = ref
        batch["ref_logps"] = ref.sum(-1)
    return batch
