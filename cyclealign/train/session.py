"""What both round trainers (listwise :func:`~cyclealign.train.trainer.train_round` and pairwise
:func:`~cyclealign.train.dpo.train_round_dpo`) share around TRL's ``train()``: the
``TrainingArguments``, a scratch folder, the timed run, and the end-of-training routine (save the
adapter atomically, count tokens, build :class:`TrainStats` from the logged steps).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_callback import PrinterCallback

from cyclealign.config.train import TrainConfig
from cyclealign.files import make_work_dir
from cyclealign.train.optimizer_carry import save_optimizer_state

__all__ = [
    "DPO_KEYS",
    "LoggedKeys",
    "RANKING_KEYS",
    "TrainStats",
    "finish_training",
    "history_mean",
    "save_adapter_atomic",
    "sequence_tokens",
    "timed_train",
    "training_arguments",
    "work_dir",
]

@dataclass
class TrainStats:
    """Summary of one round's training.

    Attributes:
        steps: optimiser steps. lists: ranking lists seen (with repeats over epochs).
        train_loss: mean total loss (nats). ranking_loss / sft_loss: mean of each part.
        ranking_accuracy: mean over logged steps of the pairwise accuracy on the training lists
            (fraction of response pairs the policy's log-likelihood orders as the label, before each step).
        grad_norm: mean gradient norm over logged steps (before clipping).
        tokens: prompt + response tokens processed (one epoch counted per pass).
        wall_s: seconds.
    """

    steps: int
    lists: int
    train_loss: float
    ranking_loss: float
    sft_loss: float
    ranking_accuracy: float
    grad_norm: float
    tokens: int
    wall_s: float
    log_history: list[dict[str, float]] = field(default_factory=list)


def training_arguments(cfg: TrainConfig, *, work: Path, seed: int, device: torch.device) -> dict[str, Any]:
    """The ``TrainingArguments`` both round trainers (ranking and TRL DPO) share: schedule,
    accumulation, gradient clipping, precision (bf16 on CUDA, fp32 on CPU), no checkpoints, no tqdm, a log per step."""
    return dict(
        output_dir=str(work / "trainer"),
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        max_grad_norm=cfg.max_grad_norm,
        lr_scheduler_type="constant",
        save_strategy="no",
        seed=seed,
        bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(),
        use_cpu=device.type == "cpu",
        disable_tqdm=True,
        report_to="none",
        logging_steps=1,
    )


def history_mean(history: list[dict[str, float]], key: str) -> float:
    """Mean of ``key`` over the trainer's logged steps that have it (nan when none do)."""
    vals = [h[key] for h in history if key in h]
    return sum(vals) / len(vals) if vals else float("nan")


def save_adapter_atomic(trainer, work: Path, out_dir: Path, save_optimizer: bool = False) -> None:
    """Save the trained adapter (PEFT format) into ``work``, rename it to ``out_dir``, remove ``work``.

    With ``save_optimizer``, the optimiser's state is saved beside it (``optimizer.pt``) for the
    next round to continue from, unless it is sharded
    (:func:`~cyclealign.train.optimizer_carry.save_optimizer_state`). Only the main process writes
    (DDP / DeepSpeed); every process waits for it.
    """
    if trainer.accelerator.is_main_process:
        tmp_adapter = work / "adapter"
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(tmp_adapter))
        if save_optimizer:
            save_optimizer_state(trainer, tmp_adapter)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp_adapter, out_dir)
    trainer.accelerator.wait_for_everyone()
    shutil.rmtree(work, ignore_errors=True)


def work_dir(out_dir: Path, prefix: str) -> Path:
    """A new scratch folder beside ``out_dir`` (same filesystem, so the adapter's final rename is atomic)."""
    return make_work_dir(out_dir.parent, prefix)


def timed_train(trainer) -> tuple[Any, float]:
    """Run ``trainer.train()`` without transformers' printed log lines (progress is the caller's to
    show); returns its ``TrainOutput`` and the wall seconds it took."""
    trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    result = trainer.train()
    return result, time.perf_counter() - t0


def sequence_tokens(prompt_ids: list[int], responses: list[list[int]]) -> int:
    """Tokens of the sequences ``prompt + response``, one per response (what one pass trains on).

    >>> sequence_tokens([1, 2, 3], [[4], [5, 6]])
    9
    """
    return sum(len(prompt_ids) + len(r) for r in responses)


@dataclass(frozen=True)
class LoggedKeys:
    """Where a trainer's log lines hold what :class:`TrainStats` reports.

    Attributes:
        ranking_loss: the key averaged into ``ranking_loss``.
        sft_loss: the key averaged into ``sft_loss`` (None: not logged; ``sft_loss`` is nan).
        ranking_accuracy: the key averaged into ``ranking_accuracy``.
        step: keys a log line must hold to count as a training step's (the others are summaries).
    """

    ranking_loss: str
    sft_loss: str | None
    ranking_accuracy: str
    step: tuple[str, ...]


RANKING_KEYS = LoggedKeys("ranking_loss", "sft_loss", "ranking_accuracy", step=("ranking_loss",))
"""The listwise :class:`~cyclealign.train.trainer.RankingTrainer`'s log keys."""
DPO_KEYS = LoggedKeys("loss", None, "rewards/accuracies", step=("loss", "rewards/accuracies"))
"""TRL ``DPOTrainer``'s log keys (its loss is the pairwise one; accuracy = implicit rewards ordering a pair right)."""


def finish_training(
    trainer,
    result: Any,
    wall_s: float,
    *,
    keys: LoggedKeys,
    work: Path,
    out_dir: Path,
    lists: int,
    tokens_per_epoch: int,
    epochs: float,
    save_optimizer: bool = False,
) -> TrainStats:
    """The end of a round's training: save the adapter (:func:`save_adapter_atomic`, from ``work``
    to ``out_dir``) and summarise the run.

    Args:
        trainer: the trainer that ran; its ``state.log_history`` lines with every ``keys.step`` key
            are the logged steps the means are taken over.
        result: what ``trainer.train()`` returned (``global_step``, ``training_loss``).
        wall_s: seconds ``train()`` took.
        lists: ranking lists of one epoch (``lists * epochs`` of them are reported, rounded).
        tokens_per_epoch: prompt + response tokens of one pass (:func:`sequence_tokens`).
        save_optimizer: save the optimiser state beside the adapter (``train.carry_optimizer``).
    """
    history = [h for h in trainer.state.log_history if all(k in h for k in keys.step)]
    save_adapter_atomic(trainer, work, out_dir, save_optimizer=save_optimizer)
    return TrainStats(
        steps=int(result.global_step),
        lists=int(round(lists * epochs)),
        train_loss=float(result.training_loss),
        ranking_loss=history_mean(history, keys.ranking_loss),
        sft_loss=history_mean(history, keys.sft_loss) if keys.sft_loss is not None else float("nan"),
        ranking_accuracy=history_mean(history, keys.ranking_accuracy),
        grad_norm=history_mean(history, "grad_norm"),
        tokens=int(tokens_per_epoch * epochs),
        wall_s=wall_s,
        log_history=history,
    )
