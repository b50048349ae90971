"""Response log-probs of ranking lists with each list's prompt run through the model once.

A list's N responses share one prompt. The plain way (:func:`cyclealign.models.logprobs.response_logprobs`
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

from cyclealign.models.logprobs import response_logprobs, token_logprobs
from cyclealign.models.packing import attention_mask_kind, segment_attention_mask

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
            :func:`cyclealign.train.examples.collate_lists` packs them.
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
    :func:`cyclealign.models.logprobs.response_logprobs`.

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
    if attention_mask_kind(model) is None:
        return response_logprobs(model, input_ids, attention_mask, response_mask)
    out = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, device=input_ids.device)
    groups: list[tuple[int, list[int]]] = []  # (prompt length, rows) of each packed row
    plain: list[int] = []
    start = 0
    for n in list_sizes:
        rows = list(range(start, start + n))
        sl = slice(start, start + n)
        start += n
        p = shared_prompt_length(input_ids[sl], attention_mask[sl], response_mask[sl])
        if p is not None:
            groups.append((p, rows))
            continue
        for r in rows:  # each row on its own: a packed row of one response, or the plain forward
            q = shared_prompt_length(input_ids[r : r + 1], attention_mask[r : r + 1], response_mask[r : r + 1])
            if q is not None:
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
    forward pass over the packed rows (``[G, L]``, right-padded to the longest).

    A token at column ``c`` of its batch row keeps ``c`` as its position id in the packed row;
    the packing is index lists built on the CPU, one gather and one scatter on the device.
    """
    lengths = attention_mask.long().sum(-1).tolist()  # [R] real tokens per row
    src_row, src_col, dst_row, dst_col, segment = [], [], [], [], []  # one entry per packed token
    pred_row, pred_col, score_row, score_col = [], [], [], []  # one entry per scored token
    for g, (p, rows) in enumerate(groups):
        src_row += [rows[0]] * p
        src_col += range(p)
        dst_row += [g] * p
        dst_col += range(p)
        segment += [0] * p
        offset = p
        for k, r in enumerate(rows, start=1):
            m = lengths[r] - p  # response tokens, at batch columns p .. p + m - 1
            src_row += [r] * m
            src_col += range(p, p + m)
            dst_row += [g] * m
            dst_col += range(offset, offset + m)
            segment += [k] * m
            # Response token j is predicted from packed position p - 1 (j = 0: the prompt's last
            # token) or offset + j - 1; its log-prob goes to column p + j - 1 of ``out``.
            pred_row += [g] * m
            pred_col += [p - 1] + list(range(offset, offset + m - 1))
            score_row += [r] * m
            score_col += range(p - 1, p - 1 + m)
            offset += m
    device = input_ids.device
    src = (torch.tensor(src_row, device=device), torch.tensor(src_col, device=device))  # batch (row, column)
    dst = (torch.tensor(dst_row, device=device), torch.tensor(dst_col, device=device))  # packed (row, position)
    shape = (len(groups), max(dst_col) + 1)  # [G, L]
    packed = torch.zeros(shape, dtype=input_ids.dtype, device=device)
    packed[dst] = input_ids[src]
    pos_ids = torch.zeros(shape, dtype=torch.long, device=device)
    pos_ids[dst] = src[1]
    seg_ids = torch.full(shape, -1, dtype=torch.long, device=device)  # -1: padding
    seg_ids[dst] = torch.tensor(segment, device=device)
    # A response token attends to the prompt (segment 0) and to its own earlier tokens.
    mask = segment_attention_mask(
        seg_ids, kind=attention_mask_kind(model), dtype=next(model.parameters()).dtype, shared_prefix=True
    )  # [G, 1, L, L]
    keep = sorted(set(pred_col))  # packed positions whose next token is scored
    column = {c: i for i, c in enumerate(keep)}
    logits = model(
        input_ids=packed, attention_mask=mask, position_ids=pos_ids, logits_to_keep=torch.tensor(keep, device=device)
    ).logits  # [G, K, V]
    rows_g = torch.tensor(pred_row, device=device)
    cols_k = torch.tensor([column[c] for c in pred_col], device=device)
    score = (torch.tensor(score_row, device=device), torch.tensor(score_col, device=device))
    targets = input_ids[score[0], score[1] + 1]  # the scored tokens themselves
    out[score] = token_logprobs(logits[rows_g, cols_k][None], targets[None])[0]
