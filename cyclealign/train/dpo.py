"""Pairwise DPO on the round's rankings with TRL's own ``DPOTrainer``: a baseline for the listwise losses.

A ranking of N responses is split into preference pairs (:func:`ranking_to_pairs`) and trained with
``trl.DPOTrainer`` (Rafailov et al. 2023, "Direct Preference Optimization", arXiv 2305.18290, Eq. 7,
or any other ``DPOConfig.loss_type``) on the same PEFT LoRA policy :func:`train_round` trains.

The pairs are fed to TRL **as token ids** (``prompt_ids`` / ``chosen_ids`` / ``rejected_ids``, the
columns TRL's ``DataCollatorForPreference`` consumes), so the sampled tokens are trained exactly as
sampled. TRL 1.16's ``DPOTrainer._prepare_dataset`` always tokenises text columns and has no
pre-tokenised path, so :class:`_TokenIdsDPOTrainer` overrides it to pass an already tokenised dataset
through unchanged.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from cyclealign.config.train import TrainConfig
from cyclealign.pairs import preference_pairs
from cyclealign.train.examples import RankingExample, keep_prompt_tail, usable_lists
from cyclealign.train.optimizer_carry import CarriedOptimizerMixin, carried_state
from cyclealign.train.session import (
    DPO_KEYS,
    TrainStats,
    finish_training,
    sequence_tokens,
    timed_train,
    training_arguments,
    work_dir,
)

__all__ = ["PAIR_COLUMNS", "REF_ADAPTER", "ranking_to_pairs", "train_round_dpo"]

PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
REF_ADAPTER = "ref"
"""Name of the frozen copy of the adapter TRL adds to a PEFT model as its reference (peft >= 0.20)."""


def ranking_to_pairs(
    example: RankingExample, mode: Literal["all", "adjacent"] = "all"
) -> list[tuple[list[int], list[int], list[int]]]:
    """Preference pairs ``(prompt_ids, chosen_ids, rejected_ids)`` implied by one ranking (best first):
    :func:`cyclealign.pairs.preference_pairs` of its responses, each with a copy of the prompt.

    ``"all"``: every (better, worse) pair, ``N(N-1)/2`` of them, ordered by the better one's rank then
    the worse one's. ``"adjacent"``: each response against the next one, ``N-1`` pairs.

    Raises:
        ValueError: unknown ``mode``.

    >>> ex = RankingExample([1], [[10], [20], [30]])
    >>> [(c, r) for _, c, r in ranking_to_pairs(ex, "all")]
    [([10], [20]), ([10], [30]), ([20], [30])]
    >>> [(c, r) for _, c, r in ranking_to_pairs(ex, "adjacent")]
    [([10], [20]), ([20], [30])]
    >>> ranking_to_pairs(RankingExample([1], [[10]]), "all")
    []
    """
    pairs = preference_pairs(example.responses_ids, mode)
    return [(list(example.prompt_ids), list(chosen), list(rejected)) for chosen, rejected in pairs]


class _TokenIdsDPOTrainer(CarriedOptimizerMixin, DPOTrainer):
    """``DPOTrainer`` that takes a dataset already holding ``prompt_ids``/``chosen_ids``/``rejected_ids``
    and can continue a previous round's optimiser state (``carried_optimizer_state``)."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if set(PAIR_COLUMNS) <= set(dataset.column_names or []):
            return dataset  # token ids already: nothing to extract, template or tokenise
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


def train_round_dpo(
    model,
    examples: list[RankingExample],
    cfg: TrainConfig,
    *,
    tokenizer,
    pad_token_id: int,
    out_dir: Path,
    seed: int,
    device: torch.device,
    pairs: Literal["all", "adjacent"] = "all",
    loss_type: str | list[str] = "sigmoid",
    callbacks: list | None = None,
    previous_adapter: Path | None = None,
) -> TrainStats:
    """Fine-tune ``model`` (a PEFT model) with ``trl.DPOTrainer`` on the rankings' pairs; save its adapter.

    Each ranking becomes :func:`ranking_to_pairs` pairs; one device batch holds as many pairs as a
    ranking has on average (TRL's sampler shuffles them across lists), so an optimiser step is about
    one ranking list, as in :func:`train_round`. A pair's prompt is left-truncated as
    :func:`~cyclealign.train.examples.collate_lists` does for its longer response; TRL's collator
    then cuts each sequence at ``max_length``.
    The reference is chosen by ``cfg.reference``: ``"previous"`` = the adapter as training starts
    (TRL's frozen ``"ref"`` copy of it), ``"initial"`` = the adapter disabled (the base model); for a
    fresh adapter both are the base model. TRL's ``"ref"`` adapter is removed afterwards, so the model
    comes back with its one trained adapter. Hyper-parameters: ``beta``, ``learning_rate`` (constant
    schedule), ``epochs``, ``grad_accum``, ``max_length`` from ``cfg``; ``loss_type`` is
    ``DPOConfig.loss_type`` (``"sigmoid"`` = DPO, ``"ipo"``, ``"hinge"``, ...). With
    ``cfg.sft_weight > 0``, TRL's ``"sft"`` loss (NLL of each pair's chosen response) is added
    with that weight: TRL's nearest form of the SFT term on the top response. With
    ``cfg.carry_optimizer``, the AdamW state saved beside ``previous_adapter`` is loaded first and
    this round's is saved beside the new adapter (:mod:`~cyclealign.train.optimizer_carry`).

    The adapter is written in PEFT format to a temporary folder, then renamed to ``out_dir``.

    Returns:
        :class:`TrainStats` with ``ranking_loss`` = mean logged TRL loss, ``sft_loss`` = nan (TRL logs
        no separate SFT term), ``ranking_accuracy`` = mean of TRL's ``rewards/accuracies`` (fraction of
        pairs whose implicit reward orders them right), ``lists`` = ranking lists seen, ``tokens`` =
        prompt + response tokens of the pair sequences trained on.
    Raises:
        ValueError: no example has >= 2 responses, or ``pairs`` is unknown.
    """
    from datasets import Dataset

    usable = usable_lists(examples)
    rows: list[dict[str, Any]] = []
    for ex in usable:
        for prompt, chosen, rejected in ranking_to_pairs(ex, pairs):
            prompt = keep_prompt_tail(prompt, max(len(chosen), len(rejected)), cfg.max_length)
            rows.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    per_list = max(1, round(len(rows) / len(usable)))
    loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    loss_weights = None
    if cfg.sft_weight > 0 and "sft" not in loss_types:  # TRL's NLL term on each pair's chosen response
        loss_weights = [1.0] * len(loss_types) + [cfg.sft_weight]
        loss_types.append("sft")
    work = work_dir(out_dir, "train-dpo-")
    args = DPOConfig(
        per_device_train_batch_size=per_list,
        **training_arguments(cfg, work=work, seed=seed, device=device),
        activation_checkpointing=False,  # transformers 5 name of gradient_checkpointing (no deprecation warning)
        beta=cfg.beta,
        loss_type=loss_types,
        loss_weights=loss_weights,
        max_length=cfg.max_length,
    )
    collator = DataCollatorForPreference(pad_token_id=pad_token_id, max_length=cfg.max_length)
    try:
        trainer = _TokenIdsDPOTrainer(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            data_collator=collator,
            callbacks=callbacks,
        )
        trainer.carried_optimizer_state = carried_state(previous_adapter, cfg.carry_optimizer)
        if cfg.reference == "initial" and REF_ADAPTER in model.peft_config:
            model.delete_adapter(REF_ADAPTER)  # TRL then scores the reference with the adapter disabled
        result, wall = timed_train(trainer)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if REF_ADAPTER in getattr(model, "peft_config", {}):
            with contextlib.suppress(ValueError):
                model.delete_adapter(REF_ADAPTER)
    return finish_training(
        trainer,
        result,
        wall,
        keys=DPO_KEYS,
        work=work,
        out_dir=out_dir,
        lists=len(usable),
        tokens_per_epoch=sum(sequence_tokens(r["prompt_ids"], [r["chosen_ids"], r["rejected_ids"]]) for r in rows),
        epochs=cfg.epochs,
        save_optimizer=cfg.carry_optimizer,
    )
