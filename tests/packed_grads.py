"""The check both packed-training tests make: the PRO + SFT loss and its LoRA gradients through
the packed forward (:func:`list_response_logprobs`) against the plain ``[N, seq]`` forward."""

import torch

from cyclealign.models.logprobs import response_logprobs
from cyclealign.train.losses import pro_loss
from cyclealign.train.shared_prompt import list_response_logprobs


def plain(model, batch):
    """``[R, seq - 1]`` response log-probs from the plain ``[N, seq]`` batch."""
    return response_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])


def packed(model, batch):
    """``[R, seq - 1]`` response log-probs from the packed lists."""
    return list_response_logprobs(
        model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], batch["list_sizes"].tolist()
    )


def loss_and_grads(model, batch, logprobs):
    """PRO over each list (label order = row order) + NLL of its top response, backpropagated.

    Returns:
        (``[R, seq - 1]`` float32 log-probs, the loss, ``{name: float32 gradient}`` of the LoRA weights).
    """
    model.zero_grad()
    logp = logprobs(model, batch)
    mean = logp.float().sum(-1) / batch["response_mask"][:, 1:].sum(-1)
    loss, start = 0.0, 0
    for n in batch["list_sizes"].tolist():
        scores = mean[start : start + n][None]
        loss = loss + pro_loss(scores, torch.ones_like(scores, dtype=torch.bool), 1.0).sum() - logp[start].float().sum()
        start += n
    loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    return logp.detach().float(), loss.item(), grads
