"""The KV cache across transformers versions: its argument name, an empty cache, left-padded positions.

transformers 5.x renamed the cache argument and output field from ``past_key_values`` to
``cache`` (the old name is deprecated); :func:`cache_kwarg` and :func:`output_cache` use
whichever the installed version's model takes, so neither name is hard-coded.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

__all__ = [
    "PreallocatedLayer",
    "base_model",
    "cache_kwarg",
    "empty_cache",
    "left_padded_positions",
    "output_cache",
    "preallocate",
]


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


class PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer that writes each step's keys and values into spare room.

    transformers' ``DynamicLayer`` grows by ``torch.cat`` at every decoding step, copying the
    whole cache each time (quadratic in the generated length). This layer keeps its keys and
    values in buffers ``[batch, kv_heads, capacity, head_dim]`` with ``reserve`` free positions
    and exposes the filled part as views (``keys`` / ``values``: ``[batch, kv_heads, seq,
    head_dim]``), so a step writes only its own positions. The views hold the same numbers a
    ``DynamicLayer`` would, so attention computes the same result. When the room runs out, or
    another method (``batch_repeat_interleave``, ``batch_select_indices``, ``reorder_cache``)
    replaced the tensors, the next update moves them into new buffers with ``reserve`` free
    positions again.
    """

    def __init__(self, reserve: int = 64, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reserve = reserve
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def _in_buffer(self, length: int, new: int, batch: int) -> bool:
        buf = self._key_buffer
        return (
            buf is not None
            and buf.shape[0] == batch
            and length + new <= buf.shape[-2]
            and (length == 0 or self.keys.data_ptr() == buf.data_ptr())
        )

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``[batch, kv_heads, new, head_dim]`` keys and values; returns the layer's
        keys and values so far (views, ``[batch, kv_heads, seq, head_dim]``)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        new = key_states.shape[-2]
        if not self._in_buffer(length, new, key_states.shape[0]):
            capacity = length + new + self.reserve
            keys = key_states.new_empty(*key_states.shape[:2], capacity, key_states.shape[-1])
            values = value_states.new_empty(*value_states.shape[:2], capacity, value_states.shape[-1])
            if length:
                keys[:, :, :length] = self.keys
                values[:, :, :length] = self.values
            self._key_buffer, self._value_buffer = keys, values
        self._key_buffer[:, :, length : length + new] = key_states
        self._value_buffer[:, :, length : length + new] = value_states
        self.keys = self._key_buffer[:, :, : length + new]
        self.values = self._value_buffer[:, :, : length + new]
        return self.keys, self.values

    def reset(self) -> None:
        """Drop the buffers with the tensors (as ``DynamicLayer.reset``)."""
        self._key_buffer = self._value_buffer = None
        super().reset()


def preallocate(cache, reserve: int) -> None:
    """Make each plain full-attention layer of ``cache`` (a ``DynamicCache``) a
    :class:`PreallocatedLayer` with room for ``reserve`` more positions, in place; its keys and
    values move into the new buffers at the next update. Other layer kinds (sliding windows,
    quantised) are left as they are."""
    for index, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer:
            grown = PreallocatedLayer(reserve=reserve)
            grown.__dict__.update(layer.__dict__)
            cache.layers[index] = grown
