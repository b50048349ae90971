"""Packed sequences: several token segments in one row, kept apart by a 4D attention mask.

Used where many rows share or waste work: training packs each ranking list's prompt and its N
responses into one row (:mod:`cyclealign.train.shared_prompt`), and generation prefills a
batch's prompts as one row with no padding (:mod:`cyclealign.policy.hf`). Each token's
position ids restart with its segment, so it sees exactly the context it has in its own row.
"""

from __future__ import annotations

import torch

from cyclealign.models.kv_cache import base_model

__all__ = ["attention_mask_kind", "segment_attention_mask"]


def attention_mask_kind(model: torch.nn.Module) -> str | None:
    """How the model's attention takes a custom 4D mask: ``"bool"`` (SDPA: True = attend),
    ``"additive"`` (eager: 0 or the dtype's minimum, added to the scores), or None (flash
    attention and other kernels that take no 4D mask: the caller keeps its padded rows).
    PEFT, DDP, FSDP and DeepSpeed wrappers are looked through."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP / FSDP / DeepSpeed wrappers
        model = model.module
    config = getattr(base_model(model), "config", None)
    impl = getattr(config, "_attn_implementation", None) or "eager"
    return {"sdpa": "bool", "eager": "additive"}.get(impl)


def segment_attention_mask(
    segments: torch.Tensor, *, kind: str, dtype: torch.dtype, shared_prefix: bool = False
) -> torch.Tensor:
    """The 4D mask of packed rows: a query attends to earlier keys of its own segment, and with
    ``shared_prefix`` also to those of segment 0 (the prefix every later segment continues).

    >>> seg = torch.tensor([[0, 0, 1, 2, 2, -1]])
    >>> segment_attention_mask(seg, kind="bool", dtype=torch.float32, shared_prefix=True)[0, 0].int().tolist()
    [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0], [1, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]]
    >>> segment_attention_mask(seg, kind="bool", dtype=torch.float32)[0, 0, 3].int().tolist()  # no prefix: own segment only
    [0, 0, 0, 1, 0, 0]

    Args:
        segments: ``[G, L]`` long: each position's segment id; -1 on padding (a segment of its
            own, never a prefix).
        kind: ``"bool"`` or ``"additive"`` (see :func:`attention_mask_kind`).
        dtype: the additive mask's dtype (the model's).
    Returns:
        ``[G, 1, L, L]``: bool (True = attend) or additive (0 = attend, the dtype's minimum = not).
    """
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    allowed = segments[:, :, None] == segments[:, None, :]  # [G, L, L] same segment
    if shared_prefix:
        allowed |= (segments[:, None, :] == 0) & (segments[:, :, None] >= 0)  # padding stays apart
    allowed = (allowed & causal)[:, None]  # the diagonal stays: no row of the mask is empty
    if kind == "bool":
        return allowed
    return (~allowed).to(dtype) * torch.finfo(dtype).min
