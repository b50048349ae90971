"""Response log-probs of ranking lists with each list's prompt run through the model once.

A list's N responses share one prompt. The plain way (:func:`cyclealign.logprobs.response_logprobs`
over the ``[N, seq]`` batch) runs the prompt's tokens through the model N times, forward and
backward, and every row is padded to the longest response. Here each list is packed into one
row, ``prompt + response_1 + ... + response_N`` with no padding, and a 4D attention mask lets
each response attend to the prompt and to its own earlier tokens only; each response's position
ids restart where the prompt ends, so every token sees exactly the context it has in the plain
batch ("prefix sharing": Wang et al. 2024, "Accelerating Direct Preference Optimization with
Prefix Sharing", arXiv 2410.20305). The lists of a batch are packed rows of one forward pass,
and the LM head runs only on the positions whose next token is scored. The loss and the LoRA
gradients equal the plain path's up to float rounding (``tests/test_train_shared_prompt.py``,
``tests/test_devices.py`` on CUDA in float32 and bfloat16). On HH-RLHF, where prompts are long
and responses short, the prompt is most of a training step's work (``scripts/bench_round.py``).
"""

from __future__ import annotations

import torch

from cyclealign.packing import attention_mask_kind, segment_attention_mask
from cyclealign.logprobs import response_logprobs, token_logprobs

__all__ = ["list_response_logprobs", "shared_prompt_length"]


def shared_prompt_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor) -> int | None:
    """The length of the prompt every row of one list shares, or None when the rows differ.

    Rows share a prompt when each is ``prompt + response + right padding`` with the same
    prompt tokens (a prompt cut to fit ``train.max_length`` differs by response length, and
    then the list takes the plain path).

    >>> ids = torch.tensor([[5, 6, 7, 0], [5, 6, 8, 9]])
    >>> att = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    >>> shared_prompt_length(ids, att, torch.tensor([[0, 0, 1, 0], [0, 0, 1, 1]]))
    2
    >>> shared_prompt_length(ids, att, torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])) is None
    True

    Args:
        input_ids, attention_mask, response_mask: ``[N, seq]`` rows of one list, as
            :func:`cyclealign.train.trainer.collate_lists` packs them.
    """
    starts = response_mask.long().argmax(-1)  # [N] first response position
    p = int(starts[0])
    if p < 1 or bool((starts != p).any()) or not bool(response_mask[:, p].all()):
        return None
    lengths = attention_mask.long().sum(-1)  # [N]
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    real = positions[None, :] < lengths[:, None]
    if not torch.equal(attention_mask.bool(), real) or not torch.equal(response_mask.bool(), real & (positions >= p)[None, :]):
        return None  # not prompt + response + right padding
    return p if bool((input_ids[:, :p] == input_ids[:1, :p]).all()) else None


def list_response_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    list_sizes: list[int],
) -> torch.Tensor:
    """Per-token log-probs of the response tokens of a batch of ranking lists, each list's
    prompt run once (see the module docstring); same contract as
    :func:`cyclealign.logprobs.response_logprobs`.

    Args:
        input_ids: ``[R, seq]`` prompt + response ids of all lists' rows, right-padded.
        attention_mask: ``[R, seq]`` 1 on real tokens. response_mask: ``[R, seq]`` 1 on response tokens.
        list_sizes: rows of each list, in order (sum = R).
    Returns:
        ``[R, seq - 1]`` float32 log-probs of tokens ``1..seq-1``, zeroed outside the response
        (aligned with ``response_mask[:, 1:]``). A list whose rows do not share their prompt
        (:func:`shared_prompt_length`; a prompt cut per response to fit ``train.max_length``)
        is packed one row per response. Rows that are not ``prompt + response + right
        padding``, and models whose attention takes no 4D mask (flash-attention kernels), take
        the plain ``[N, seq]`` forward.
    """
    out = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, device=input_ids.device)
    packable = attention_mask_kind(model) is not None
    groups: list[tuple[int, list[int]]] = []  # (prompt length, rows) of each packed row
    plain: list[int] = []
    start = 0
    for n in list_sizes:
        rows = list(range(start, start + n))
        start += n
        sl = slice(rows[0], rows[-1] + 1)
        p = shared_prompt_length(input_ids[sl], attention_mask[sl], response_mask[sl]) if packable else None
        if p is not None:
            groups.append((p, rows))
            continue
        for r in rows:  # each row on its own: a packed row of one response, or the plain forward
            q = shared_prompt_length(input_ids[r : r + 1], attention_mask[r : r + 1], response_mask[r : r + 1])
            if packable and q is not None:
                groups.append((q, [r]))
            else:
                plain.append(r)
    if groups:
        _packed_logprobs(model, input_ids, attention_mask, groups, out)
    if plain:
        idx = torch.tensor(plain, device=input_ids.device)
        out[idx] = response_logprobs(model, input_ids[idx], attention_mask[idx], response_mask[idx])
    return out


def _packed_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    groups: list[tuple[int, list[int]]],
    out: torch.Tensor,
) -> None:
    """Fill ``out`` (``[R, seq - 1]``) at the response positions of ``groups``' rows from one
    forward pass over the packed rows (``[G, L]``, right-padded to the longest)."""
    device = input_ids.device
    lengths = attention_mask.long().sum(-1).tolist()  # [R] real tokens per row
    packed_rows, positions, segments = [], [], []
    pred, target, dest_row, dest_col = [], [], [], []  # one entry per scored token
    for g, (p, rows) in enumerate(groups):
        ids = [input_ids[rows[0], :p]]
        pos = [torch.arange(p, device=device)]
        seg = [torch.zeros(p, dtype=torch.long, device=device)]
        offset = p
        for k, r in enumerate(rows, start=1):
            m = lengths[r] - p  # response tokens
            ids.append(input_ids[r, p : lengths[r]])
            pos.append(torch.arange(p, p + m, device=device))
            seg.append(torch.full((m,), k, dtype=torch.long, device=device))
            # Token j of the response sits at packed position offset + j and original position p + j;
            # it is predicted from packed position p - 1 (j = 0: the prompt's last token) or offset + j - 1.
            pred.extend([(g, p - 1)] + [(g, offset + j - 1) for j in range(1, m)])
            target.append(input_ids[r, p : lengths[r]])
            dest_row.extend([r] * m)
            dest_col.extend(range(p - 1, p - 1 + m))
            offset += m
        packed_rows.append(torch.cat(ids))
        positions.append(torch.cat(pos))
        segments.append(torch.cat(seg))
    width = max(len(x) for x in packed_rows)
    G = len(groups)
    packed = torch.zeros(G, width, dtype=input_ids.dtype, device=device)  # [G, L]
    pos_ids = torch.zeros(G, width, dtype=torch.long, device=device)
    seg_ids = torch.full((G, width), -1, dtype=torch.long, device=device)  # -1: padding
    for g, (x, q, s) in enumerate(zip(packed_rows, positions, segments)):
        packed[g, : len(x)], pos_ids[g, : len(x)], seg_ids[g, : len(x)] = x, q, s
    # A response token attends to the prompt (segment 0) and to its own earlier tokens.
    mask = segment_attention_mask(
        seg_ids, kind=attention_mask_kind(model), dtype=next(model.parameters()).dtype, shared_prefix=True
    )  # [G, 1, L, L]
    keep = sorted({c for _, c in pred})  # packed positions whose next token is scored
    column = {c: i for i, c in enumerate(keep)}
    logits = model(
        input_ids=packed, attention_mask=mask, position_ids=pos_ids,
        logits_to_keep=torch.tensor(keep, device=device),
    ).logits  # [G, K, V]
    rows_g = torch.tensor([g for g, _ in pred], device=device)
    cols_k = torch.tensor([column[c] for _, c in pred], device=device)
    logp = token_logprobs(logits[rows_g, cols_k][None], torch.cat(target)[None])[0]  # [scored tokens]
    out[torch.tensor(dest_row, device=device), torch.tensor(dest_col, device=device)] = logp
