"""Response log-probs of a ranking list with its prompt run through the model once.

A list's N responses share one prompt. The plain way (:func:`cyclealign.logprobs.response_logprobs`
over the ``[N, seq]`` batch) runs the prompt's tokens through the model N times, forward and
backward. Here the prompt goes through once (``[1, P]``), its KV cache is repeated N times
along the batch, and the responses (``[N, R]``) attend to it; gradients flow back through the
cache into the prompt's forward, so the LoRA weights on the prompt path train as before and
the loss and gradients equal the plain path's up to float rounding
(``tests/test_train_shared_prompt.py``). On HH-RLHF, where prompts are long and responses
short, this is most of a training step's work (``scripts/bench_round.py``).
"""

from __future__ import annotations

import torch

from cyclealign.kv_cache import base_model, cache_kwarg, empty_cache, output_cache
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
        (:func:`shared_prompt_length`), a model with gradient checkpointing on (which turns
        the cache off), or a model wrapped for multi-process training (DDP, FSDP, DeepSpeed
        expect one forward per backward) takes the plain ``[N, seq]`` forward.
    """
    out = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, device=input_ids.device)
    plain = _distributed(model) or (model.training and _checkpointing(model))
    start = 0
    for n in list_sizes:
        rows = slice(start, start + n)
        start += n
        ids, att, resp = input_ids[rows], attention_mask[rows], response_mask[rows]
        p = None if plain else shared_prompt_length(ids, att, resp)
        if p is None:
            out[rows] = response_logprobs(model, ids, att, resp)
            continue
        width = int(att.sum(-1).max())  # prompt + longest response
        prompt = model(input_ids=ids[:1, :p], use_cache=True, logits_to_keep=1, **{cache_kwarg(model): empty_cache(model)})
        cache = output_cache(prompt)
        if n > 1:
            cache.batch_repeat_interleave(n)
        tokens = ids[:, p:width]  # [n, r]
        logits = model(input_ids=tokens, attention_mask=att[:, :width], use_cache=True, **{cache_kwarg(model): cache}).logits
        first = token_logprobs(prompt.logits[:, -1:].expand(n, -1, -1), tokens[:, :1])  # [n, 1]
        rest = token_logprobs(logits[:, :-1], tokens[:, 1:])  # [n, r - 1]
        logp = torch.cat([first, rest], dim=1) * resp[:, p:width].to(first.dtype)
        out[rows, p - 1 : width - 1] = logp
    return out


def _distributed(model: torch.nn.Module) -> bool:
    return isinstance(model, torch.nn.parallel.DistributedDataParallel) or type(model).__name__ in (
        "DeepSpeedEngine",
        "FullyShardedDataParallel",
    )


def _checkpointing(model: torch.nn.Module) -> bool:
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # the new name first
        if hasattr(type(base_model(model)), name):
            return bool(getattr(model, name))
    return False

