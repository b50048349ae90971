"""Ranking fine-tuning of the policy with TRL's trainer machinery and a PEFT LoRA adapter.

:class:`RankingTrainer` subclasses TRL's base trainer (itself a ``transformers.Trainer``):
TRL/transformers own the optimiser, scheduler, gradient accumulation, device placement,
mixed precision and logging; this module adds only what CycleAlign needs: a collator that
packs the N responses of one prompt into one ``[N, seq]`` batch, and a loss that is a
listwise ranking loss (PRO) on their length-normalised log-likelihoods plus an SFT term
on the top-ranked response.

The pieces both round trainers share live beside it: training lists and their batches
(:mod:`~cyclealign.train.examples`), the arguments and end-of-training routine
(:mod:`~cyclealign.train.session`), the LoRA policy (:mod:`~cyclealign.train.lora`) and reference
scoring (:mod:`~cyclealign.train.scoring`); their public names are importable from here too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from trl.trainer.base_config import _BaseConfig
from trl.trainer.base_trainer import _BaseTrainer

from cyclealign.config.train import TrainConfig
from cyclealign.train.examples import RankingExample, collate_lists, usable_lists
from cyclealign.train.losses import (
    anchor_kl_k3,
    dpo_pl_loss,
    implicit_rewards,
    lipo_lambda_loss,
    pairwise_accuracy,
    pro_loss,
    pro_reward_gap_loss,
    rrhf_loss,
    sft_loss,
)
from cyclealign.train.optimizer_carry import CarriedOptimizerMixin, carried_state
from cyclealign.train.scoring import reference_logps
from cyclealign.train.session import (
    RANKING_KEYS,
    TrainStats,
    finish_training,
    sequence_tokens,
    timed_train,
    training_arguments,
    work_dir,
)
from cyclealign.train.shared_prompt import list_response_logprobs

__all__ = ["REFERENCE_LOSSES", "RANKING_LOSSES", "RankingConfig", "RankingTrainer", "train_round"]

REFERENCE_LOSSES = ("dpo-pl", "lipo")
"""Losses over implicit rewards, which need the reference model's log-probs."""


@dataclass
class RankingConfig(_BaseConfig):
    """TRL trainer configuration for ranking fine-tuning (fields beyond ``TrainingArguments``).

    Parameters:
        ranking_loss (`str`, defaults to `"pro"`): `"pro"` (Plackett-Luce over length-normalised
            log-likelihoods, Song et al. 2023), `"rrhf"` (pairwise hinge, Yuan et al. 2023),
            `"dpo-pl"` (Plackett-Luce over implicit rewards, Rafailov et al. 2023 A.3) or
            `"lipo"` (LiPO-lambda, Liu et al. 2024).
        beta (`float`, defaults to `0.1`): implicit-reward scale of `"dpo-pl"` and `"lipo"`.
        pro_temperature (`float`, defaults to `1.0`): PRO scores are divided by it.
        pro_reward_gap (`bool`, defaults to `False`): PRO's reward-gap temperatures (Eq. 8-9) from
            rank rewards.
        sft_weight (`float`, defaults to `1.0`): weight of the NLL term on the top response.
        sft_reduction (`str`, defaults to `"mean"`): the NLL per token (`"mean"`) or summed (`"sum"`).
        sft_pro_scale (`bool`, defaults to `False`): multiply the SFT term by `(n-1)^2` (PRO's code).
        kl_weight (`float`, defaults to `0.0`): weight of the per-token k3 KL anchor to the reference
            over each list's response tokens (the examples then carry ``ref_token_logps``).
        max_length (`int`, defaults to `512`): prompt + response tokens kept per sequence
            (the prompt is left-truncated first, then the response right-truncated).
        pad_token_id (`int`, defaults to `0`): id used to pad sequences.
    """

    ranking_loss: str = field(default="pro", metadata={"help": "Ranking loss: pro, rrhf, dpo-pl, lipo."})
    beta: float = field(default=0.1, metadata={"help": "Implicit-reward scale (dpo-pl, lipo)."})
    pro_temperature: float = field(default=1.0, metadata={"help": "PRO softmax temperature."})
    pro_reward_gap: bool = field(default=False, metadata={"help": "PRO reward-gap temperatures (rank rewards)."})
    sft_weight: float = field(default=1.0, metadata={"help": "Weight of the SFT term on the top response."})
    sft_reduction: str = field(default="mean", metadata={"help": "SFT NLL per token (mean) or summed (sum)."})
    sft_pro_scale: bool = field(default=False, metadata={"help": "Scale the SFT term by (n-1)^2 (PRO)."})
    kl_weight: float = field(default=0.0, metadata={"help": "Weight of the per-token KL anchor to the reference."})
    max_length: int = field(default=512, metadata={"help": "Max prompt + response tokens per sequence."})
    pad_token_id: int = field(default=0, metadata={"help": "Padding token id."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    logging_steps: float = field(default=1, metadata={"help": "Log every X update steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the ranking columns."})
    report_to: Any = field(default="none", metadata={"help": "Integrations to report to."})


class RankingTrainer(CarriedOptimizerMixin, _BaseTrainer):
    """Listwise ranking trainer: each list's prompt and its N responses packed into one row, the
    prompt run once (:mod:`cyclealign.train.shared_prompt`), one forward pass per batch.

    Loss per list: ``ranking_loss(scores) + sft_weight * c_n * sft_loss(top response) + kl_weight * kl``, where
    ``scores[k]`` is response k's mean token log-prob (PRO, RRHF) or implicit reward (DPO-PL,
    LiPO; the examples then carry ``ref_logps``), in label order, and ``c_n = (n-1)^2`` with
    ``sft_pro_scale`` (else 1), and ``kl`` the mean over the list's response tokens of the k3 KL
    anchor to the reference (:func:`~cyclealign.train.losses.anchor_kl_k3`; with ``kl_weight`` > 0
    the examples carry ``ref_token_logps``). Logged per step: ``loss``, ``ranking_loss``, ``sft_loss``,
    ``kl`` (with ``kl_weight`` > 0), ``ranking_accuracy`` (fraction of response pairs whose length-normalised log-likelihood
    orders them as the label does, before the step's update), ``grad_norm`` (before clipping),
    ``tokens_per_s``. ``carried_optimizer_state``: a previous round's ``optimizer.pt`` to continue
    from (:class:`~cyclealign.train.optimizer_carry.CarriedOptimizerMixin`).
    """

    _tag_names = ["trl", "cyclealign", "ranking"]
    _name = "Ranking"
    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        args_ = kwargs.get("args")
        if "data_collator" not in kwargs and args_ is not None:
            kwargs["data_collator"] = lambda exs: collate_lists(exs, args_.pad_token_id, args_.max_length)
        super().__init__(*args, **kwargs)
        self._step_metrics: dict[str, list[float]] = {"ranking_loss": [], "sft_loss": [], "ranking_accuracy": []}
        self._tokens = 0
        self._last_log = time.perf_counter()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Mean over the batch's lists of ranking loss + ``sft_weight`` x SFT loss (nats).

        ``inputs`` is a :func:`collate_lists` batch: ``[R, seq]`` tensors for the R responses of
        all lists, ``list_sizes`` ``[B]``, and ``ref_logps`` ``[R]`` for the reference losses.
        """
        cfg: RankingConfig = self.args
        logp = list_response_logprobs(  # each list packed: its prompt runs once for the N responses
            model, inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"], inputs["list_sizes"].tolist()
        )
        mask = inputs["response_mask"][:, 1:]  # [R, T-1], aligned with logp
        seq_logp = logp.sum(-1)  # [R] sequence log-prob
        mean_logp = seq_logp / mask.sum(-1).clamp(min=1)  # [R] length-normalised
        if cfg.ranking_loss in REFERENCE_LOSSES:
            scores = implicit_rewards(seq_logp, inputs["ref_logps"].to(seq_logp.dtype), cfg.beta)
        else:
            scores = mean_logp
        sizes = inputs["list_sizes"].tolist()
        index = torch.tensor(
            [[start + k if k < n else start for k in range(max(sizes))] for start, n in zip(_starts(sizes), sizes)],
            device=scores.device,
        )  # [B, N] row of each list position (padding points at the list's first row)
        valid = torch.tensor([[k < n for k in range(max(sizes))] for n in sizes], device=scores.device)
        padded = scores[index]  # [B, N]
        rank = RANKING_LOSSES[cfg.ranking_loss](padded, valid, cfg)  # [B]
        tops = index[:, 0]
        sft = sft_loss(logp[tops], mask[tops], cfg.sft_reduction)  # [B]
        if cfg.sft_pro_scale:
            sft = sft * (inputs["list_sizes"].to(sft.device, sft.dtype) - 1) ** 2
        loss = rank + cfg.sft_weight * sft  # [B]
        m = self._step_metrics
        if cfg.kl_weight > 0:
            per_row = anchor_kl_k3(logp, inputs["ref_token_logps"].to(logp.dtype), mask)  # [R] nats
            tokens = mask.sum(-1).to(per_row.dtype)  # [R]
            kl = (per_row[index] * valid).sum(-1) / (tokens[index] * valid).sum(-1).clamp(min=1)  # [B] per token of each list
            loss = loss + cfg.kl_weight * kl
            m.setdefault("kl", []).append(float(kl.detach().mean()))
        loss = loss.mean()
        m["ranking_loss"].append(float(rank.detach().mean()))
        m["sft_loss"].append(float(sft.detach().mean()))
        m["ranking_accuracy"].append(float(pairwise_accuracy(mean_logp.detach()[index], valid)))
        self._tokens += int(inputs["attention_mask"].sum())
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the step metrics (means since the last log) and tokens/s to TRL's log line."""
        if "loss" in logs:
            for key, values in self._step_metrics.items():
                if values:
                    logs[key] = sum(values) / len(values)
                    values.clear()
            now = time.perf_counter()
            logs["tokens_per_s"] = self._tokens / max(now - self._last_log, 1e-9)
            self._tokens, self._last_log = 0, now
        super().log(logs, start_time)


def _starts(sizes: list[int]) -> list[int]:
    """Row of each list's first response in the packed batch (``[3, 2]`` -> ``[0, 3]``)."""
    out, start = [], 0
    for n in sizes:
        out.append(start)
        start += n
    return out


RANKING_LOSSES = {
    "pro": lambda s, m, cfg: (
        pro_reward_gap_loss(s / cfg.pro_temperature, m) if cfg.pro_reward_gap else pro_loss(s, m, cfg.pro_temperature)
    ),
    "rrhf": lambda s, m, cfg: rrhf_loss(s, m),
    "dpo-pl": lambda s, m, cfg: dpo_pl_loss(s, m),
    "lipo": lambda s, m, cfg: lipo_lambda_loss(s, m),
}
"""Ranking loss name -> ``(scores [B, N], mask [B, N], config) -> [B]``."""


def train_round(
    model,
    examples: list[RankingExample],
    cfg: TrainConfig,
    *,
    pad_token_id: int,
    out_dir: Path,
    seed: int,
    device: torch.device,
    callbacks: list | None = None,
    previous_adapter: Path | None = None,
) -> TrainStats:
    """Fine-tune ``model`` (a PEFT model) on the round's rankings and save its adapter.

    With ``cfg.carry_optimizer``, the AdamW state saved beside ``previous_adapter`` (the adapter
    ``model`` continues, when it has one) is loaded first, and this round's is saved beside
    the new adapter.

    The adapter is written in the standard PEFT format (``adapter_config.json`` +
    ``adapter_model.safetensors``) to a temporary folder and renamed to ``out_dir``,
    so ``out_dir`` exists only when complete.

    Raises:
        ValueError: no example has >= 2 responses.
    """
    from datasets import Dataset

    usable = usable_lists(examples)
    rows: list[dict[str, Any]] = [{"prompt_ids": e.prompt_ids, "responses_ids": e.responses_ids} for e in usable]
    if cfg.loss in REFERENCE_LOSSES or cfg.kl_weight > 0:
        for row, ref in zip(rows, reference_logps(model, rows, cfg, pad_token_id=pad_token_id, device=device)):
            row["ref_token_logps"] = ref
    dataset = Dataset.from_list(rows)
    work = work_dir(out_dir, "train-")
    args = RankingConfig(
        per_device_train_batch_size=1,
        **training_arguments(cfg, work=work, seed=seed, device=device),
        ranking_loss=cfg.loss,
        beta=cfg.beta,
        pro_temperature=cfg.pro_temperature,
        pro_reward_gap=cfg.pro_reward_gap,
        sft_weight=cfg.sft_weight,
        sft_reduction=cfg.sft_reduction,
        sft_pro_scale=cfg.sft_pro_scale,
        kl_weight=cfg.kl_weight,
        max_length=cfg.max_length,
        pad_token_id=pad_token_id,
    )
    trainer = RankingTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        callbacks=callbacks,
    )
    trainer.carried_optimizer_state = carried_state(previous_adapter, cfg.carry_optimizer)
    result, wall = timed_train(trainer)
    return finish_training(
        trainer,
        result,
        wall,
        keys=RANKING_KEYS,
        work=work,
        out_dir=out_dir,
        lists=len(usable),
        tokens_per_epoch=sum(sequence_tokens(e.prompt_ids, e.responses_ids) for e in usable),
        epochs=cfg.epochs,
        save_optimizer=cfg.carry_optimizer,
    )
