"""Carrying the AdamW state from one round's training to the next (``train.carry_optimizer``).

Each round trains a new ``transformers.Trainer`` on the previous round's adapter. Without the
carry its optimiser starts with zero moment estimates; with it, the state saved beside the
previous round's adapter (``round_k/adapter/optimizer.pt``) is loaded first, as a single
training run over all rounds would keep it. Both round trainers (listwise and TRL DPO) mix in
:class:`CarriedOptimizerMixin`; :func:`~cyclealign.train.session.save_adapter_atomic` writes the
state.

The state is only carried when one process holds all of it: in-process, single-GPU and DDP
training (DDP replicates the optimiser on every rank). Under DeepSpeed ZeRO or FSDP each rank
holds a shard, and ``optimizer.state_dict()`` on the main process is one shard, so there the
round starts from fresh moments and a warning says so (:func:`optimizer_state_is_whole`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "OPTIMIZER_STATE",
    "CarriedOptimizerMixin",
    "carried_state",
    "optimizer_state_is_whole",
    "save_optimizer_state",
]

log = logging.getLogger(__name__)

OPTIMIZER_STATE = "optimizer.pt"
"""File beside a round's adapter with its AdamW state (``train.carry_optimizer``)."""


def optimizer_state_is_whole(trainer) -> bool:
    """Whether ``trainer.optimizer.state_dict()`` on one process is the whole optimiser state:
    False under DeepSpeed (ZeRO shards it) or FSDP, True otherwise (one process, DDP)."""
    return not (getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False))


def save_optimizer_state(trainer, folder: Path) -> bool:
    """Save ``trainer``'s optimiser state as ``folder/optimizer.pt``; returns whether it was saved
    (not when there is no optimiser, or when the state is sharded: see :func:`optimizer_state_is_whole`)."""
    if trainer.optimizer is None:
        return False
    if not optimizer_state_is_whole(trainer):
        log.warning(
            "train.carry_optimizer: the optimiser state is sharded (DeepSpeed ZeRO / FSDP); it is not "
            "saved, and the next round starts from fresh AdamW moments"
        )
        return False
    torch.save(trainer.optimizer.state_dict(), folder / OPTIMIZER_STATE)
    return True


class CarriedOptimizerMixin:
    """``transformers.Trainer`` mixin: ``create_optimizer`` loads ``carried_optimizer_state`` (a
    previous round's ``optimizer.pt``) into the new optimiser when it is set.

    The file must come from the same adapter layout (LoRA rank, target modules): its parameter
    groups are matched by position, as ``torch.optim.Optimizer.load_state_dict`` does.

    Raises:
        ValueError: (from ``load_state_dict``) the saved state has other parameter groups.
    """

    carried_optimizer_state: Path | None = None

    def create_optimizer(self, *args: Any, **kwargs: Any):
        optimizer = super().create_optimizer(*args, **kwargs)  # type: ignore[misc]
        state = self.carried_optimizer_state
        if state is not None:
            if optimizer_state_is_whole(self):
                optimizer.load_state_dict(torch.load(state, map_location="cpu", weights_only=True))
            else:
                log.warning("train.carry_optimizer: %s not loaded: the optimiser is sharded (DeepSpeed ZeRO / FSDP)", state)
        return optimizer


def carried_state(previous_adapter: Path | None, carry: bool) -> Path | None:
    """The previous round's ``optimizer.pt`` to continue from, or None (carry off, first round, or
    a previous round trained without the carry or under a sharded optimiser)."""
    if not carry or previous_adapter is None:
        return None
    path = previous_adapter / OPTIMIZER_STATE
    return path if path.is_file() else None
