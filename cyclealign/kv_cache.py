"""The KV cache across transformers versions: its argument name, an empty cache, left-padded positions.

transformers 5.x renamed the cache argument and output field from ``past_key_values`` to
``cache`` (the old name is deprecated); :func:`cache_kwarg` and :func:`output_cache` use
whichever the installed version's model takes, so neither name is hard-coded.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["base_model", "cache_kwarg", "empty_cache", "left_padded_positions", "output_cache"]


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT model (``model`` itself when it is not one)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name of the cache argument of ``model``'s forward (and ``generate``): ``"cache"``
    on transformers versions that renamed it, else ``"past_key_values"``. A PEFT model is
    looked through to its base model."""
    params = inspect.signature(type(base_model(model)).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def empty_cache(model: torch.nn.Module):
    """A new, empty :class:`~transformers.DynamicCache` for ``model`` (PEFT looked through)."""
    from transformers import DynamicCache

    return DynamicCache(config=base_model(model).config)


def output_cache(out: Any):
    """The cache returned by a forward pass called with ``use_cache=True``."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def left_padded_positions(attention: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows, as ``generate()`` derives them from the mask.

    >>> left_padded_positions(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])).tolist()
    [[0, 0, 0, 1], [0, 1, 2, 3]]

    Args:
        attention: ``[batch, seq]`` 1 on real tokens (padding on the left).
    Returns:
        ``[batch, seq]`` long: 0, 1, ... over the real tokens, 0 on padding.
    """
    return (attention.long().cumsum(-1) - 1).masked_fill(attention == 0, 0)
