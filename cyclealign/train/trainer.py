"""Ranking fine-tuning of the policy with TRL's trainer machinery and a PEFT LoRA adapter.

:class:`RankingTrainer` subclasses TRL's base trainer (itself a ``transformers.Trainer``):
TRL/transformers own the optimiser, scheduler, gradient accumulation, device placement,
mixed precision and logging; this module adds only what CycleAlign needs: a collator that
packs the N responses of one prompt into one ``[N, seq]`` batch, and a loss that is a
listwise ranking loss (PRO) on their length-normalised log-likelihoods plus an SFT term
on the top-ranked response.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_callback import PrinterCallback
from trl.trainer.base_config import _BaseConfig
from trl.trainer.base_trainer import _BaseTrainer

from cyclealign.config import TrainConfig
from cyclealign.logprobs import response_logprobs
from cyclealign.train.losses import (
    dpo_pl_loss,
    implicit_rewards,
    lipo_lambda_loss,
    pairwise_accuracy,
    pro_loss,
    pro_reward_gap_loss,
    rrhf_loss,
    sft_loss,
)

REFERENCE_LOSSES = ("dpo-pl", "lipo")
"""Losses over implicit rewards, which need the reference model's log-probs."""

log = logging.getLogger(__name__)


@dataclass
class RankingExample:
    """One training list: a prompt and its responses in label order (best first).

    Attributes:
        prompt_ids: chat-templated prompt token ids.
        responses_ids: response token ids, best first (>= 2 responses).
    """

    prompt_ids: list[int]
    responses_ids: list[list[int]]


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
        sft_weight (`float`, defaults to `0.05`): weight of the NLL term on the top response.
        sft_reduction (`str`, defaults to `"sum"`): the NLL per token (`"mean"`) or summed (`"sum"`).
        sft_pro_scale (`bool`, defaults to `True`): multiply the SFT term by `(n-1)^2` (PRO's code).
        max_length (`int`, defaults to `512`): prompt + response tokens kept per sequence
            (the prompt is left-truncated first, then the response right-truncated).
        pad_token_id (`int`, defaults to `0`): id used to pad sequences.
    """

    ranking_loss: str = field(default="pro", metadata={"help": "Ranking loss: pro, rrhf, dpo-pl, lipo."})
    beta: float = field(default=0.1, metadata={"help": "Implicit-reward scale (dpo-pl, lipo)."})
    pro_temperature: float = field(default=1.0, metadata={"help": "PRO softmax temperature."})
    pro_reward_gap: bool = field(default=False, metadata={"help": "PRO reward-gap temperatures (rank rewards)."})
    sft_weight: float = field(default=0.05, metadata={"help": "Weight of the SFT term on the top response."})
    sft_reduction: str = field(default="sum", metadata={"help": "SFT NLL per token (mean) or summed (sum)."})
    sft_pro_scale: bool = field(default=True, metadata={"help": "Scale the SFT term by (n-1)^2 (PRO)."})
    max_length: int = field(default=512, metadata={"help": "Max prompt + response tokens per sequence."})
    pad_token_id: int = field(default=0, metadata={"help": "Padding token id."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    logging_steps: float = field(default=1, metadata={"help": "Log every X update steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the ranking columns."})
    report_to: Any = field(default="none", metadata={"help": "Integrations to report to."})


def usable_lists(examples: list[RankingExample]) -> list[RankingExample]:
    """The lists with at least 2 responses (a ranking of one says nothing).

    Raises:
        ValueError: none is left.
    """
    usable = [e for e in examples if len(e.responses_ids) >= 2]
    if not usable:
        raise ValueError("no ranking list with at least 2 responses to train on")
    return usable


def training_arguments(cfg: TrainConfig, *, work: Path, seed: int, device: torch.device) -> dict[str, Any]:
    """The ``TrainingArguments`` both round trainers (ranking and TRL DPO) share: schedule,
    accumulation, precision (bf16 on CUDA, fp32 on CPU), no checkpoints, no tqdm, a log per step."""
    return dict(
        output_dir=str(work / "trainer"),
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
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


def keep_prompt_tail(prompt_ids: list[int], response_len: int, max_length: int) -> list[int]:
    """The prompt's last tokens that fit beside a response of ``response_len`` in ``max_length``
    (at least ``max_length // 2`` of them; the response is cut at ``max_length`` afterwards)."""
    return prompt_ids[-max(max_length - response_len, max_length // 2) :]


OPTIMIZER_STATE = "optimizer.pt"
"""File beside a round's adapter with its AdamW state (``train.carry_optimizer``)."""


def save_adapter_atomic(trainer, work: Path, out_dir: Path, save_optimizer: bool = False) -> None:
    """Save the trained adapter (PEFT format) into ``work``, rename it to ``out_dir``, remove ``work``.

    With ``save_optimizer``, the optimiser's state is saved beside it (``optimizer.pt``) for the
    next round to continue from. Only the main process writes (DDP / DeepSpeed); every process
    waits for it.
    """
    if trainer.accelerator.is_main_process:
        tmp_adapter = work / "adapter"
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(tmp_adapter))
        if save_optimizer and trainer.optimizer is not None:
            torch.save(trainer.optimizer.state_dict(), tmp_adapter / OPTIMIZER_STATE)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp_adapter, out_dir)
    trainer.accelerator.wait_for_everyone()
    shutil.rmtree(work, ignore_errors=True)


def collate_lists(examples: list[dict[str, Any]], pad_token_id: int, max_length: int) -> dict[str, torch.Tensor]:
    """Pack ranking lists into one right-padded batch of sequences.

    Args:
        examples: dicts with ``prompt_ids`` (list[int]) and ``responses_ids`` (list[list[int]],
            best first).
    Returns:
        ``input_ids`` / ``attention_mask`` / ``response_mask``: ``[sum N_b, seq]``;
        ``list_sizes``: ``[batch]`` number of responses of each list (in order);
        ``ref_logps``: ``[sum N_b]`` reference sequence log-probs, when the examples carry them.
    """
    rows: list[tuple[list[int], int]] = []  # (ids, prompt length)
    sizes = []
    for ex in examples:
        sizes.append(len(ex["responses_ids"]))
        for resp in ex["responses_ids"]:
            prompt = keep_prompt_tail(ex["prompt_ids"], len(resp), max_length)
            ids = (prompt + resp)[:max_length]
            rows.append((ids, len(prompt)))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    resp_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, plen) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention[r, : len(ids)] = 1
        resp_mask[r, plen : len(ids)] = 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "response_mask": resp_mask,
        "list_sizes": torch.tensor(sizes, dtype=torch.long),
    }
    if all(ex.get("ref_logps") is not None for ex in examples):
        batch["ref_logps"] = torch.tensor([x for ex in examples for x in ex["ref_logps"]], dtype=torch.float32)
    return batch


class RankingTrainer(_BaseTrainer):
    """Listwise ranking trainer: one forward pass over the ``[N, seq]`` batch of each list.

    Loss per list: ``ranking_loss(scores) + sft_weight * c_n * sft_loss(top response)``, where
    ``scores[k]`` is response k's mean token log-prob (PRO, RRHF) or implicit reward (DPO-PL,
    LiPO; the examples then carry ``ref_logps``), in label order, and ``c_n = (n-1)^2`` with
    ``sft_pro_scale`` (else 1). Logged per step: ``loss``, ``ranking_loss``, ``sft_loss``,
    ``ranking_accuracy`` (fraction of response pairs whose length-normalised log-likelihood
    orders them as the label does, before the step's update), ``grad_norm`` (before clipping),
    ``tokens_per_s``.
    """

    _tag_names = ["trl", "cyclealign", "ranking"]
    _name = "Ranking"
    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args: Any, optimizer_state: Path | None = None, **kwargs: Any) -> None:
        self._optimizer_state = optimizer_state
        args_ = kwargs.get("args")
        if "data_collator" not in kwargs and args_ is not None:
            kwargs["data_collator"] = lambda exs: collate_lists(exs, args_.pad_token_id, args_.max_length)
        super().__init__(*args, **kwargs)
        self._step_metrics: dict[str, list[float]] = {"ranking_loss": [], "sft_loss": [], "ranking_accuracy": []}
        self._tokens = 0
        self._last_log = time.perf_counter()

    def create_optimizer(self, *args: Any, **kwargs: Any):
        """transformers' optimiser, with the previous round's AdamW state loaded when given
        (``train.carry_optimizer``: the moment estimates carry over with the adapter)."""
        optimizer = super().create_optimizer(*args, **kwargs)
        if self._optimizer_state is not None:
            optimizer.load_state_dict(torch.load(self._optimizer_state, map_location="cpu", weights_only=True))
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Mean over the batch's lists of ranking loss + ``sft_weight`` x SFT loss (nats).

        ``inputs`` is a :func:`collate_lists` batch: ``[R, seq]`` tensors for the R responses of
        all lists, ``list_sizes`` ``[B]``, and ``ref_logps`` ``[R]`` for the reference losses.
        """
        cfg: RankingConfig = self.args
        logp = response_logprobs(model, inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"])
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
        loss = (rank + cfg.sft_weight * sft).mean()
        m = self._step_metrics
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


def lora_config(cfg: TrainConfig):
    """PEFT LoRA configuration for a causal LM from :class:`TrainConfig`."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def load_trainable_policy(
    model_dir: str, adapter: Path | None, cfg: TrainConfig, device: torch.device, dtype: torch.dtype
):
    """The base model with a trainable LoRA adapter: a fresh one, or ``adapter`` to continue.

    Only LoRA parameters require gradients (PEFT freezes the base). With ``cfg.qlora`` the base
    is loaded 4-bit (NF4, double quantisation, bf16 compute; Dettmers et al. 2023, QLoRA) through
    bitsandbytes and prepared with PEFT's ``prepare_model_for_kbit_training``.

    Raises:
        ConfigError: ``cfg.qlora`` without a CUDA device or without bitsandbytes installed.
    """
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    if cfg.qlora:
        base = _load_4bit(model_dir, device)
    else:
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    if adapter is None:
        return get_peft_model(base, lora_config(cfg))
    return PeftModel.from_pretrained(base, str(adapter), is_trainable=True)


def _load_4bit(model_dir: str, device: torch.device):
    """The base model quantised to 4-bit NF4 on ``device`` (QLoRA's base), ready for k-bit training."""
    import importlib.util

    from cyclealign.errors import ConfigError

    if device.type != "cuda":
        raise ConfigError(f"train.qlora needs a CUDA device (model.device resolved to {device})")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("train.qlora needs bitsandbytes: pip install bitsandbytes")
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    base = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quant, dtype=torch.bfloat16, device_map={"": device.index or 0}
    )
    return prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)


def save_merged(model, tokenizer_dir: str, out_dir: Path) -> Path:
    """Save the policy with its LoRA adapter merged into the base weights, atomically.

    ``model`` (a PEFT model) is merged in place and must not be trained afterwards. The folder
    holds a plain transformers checkpoint (config, safetensors, tokenizer from ``tokenizer_dir``)
    that any transformers or vLLM loader takes without PEFT.
    """
    from transformers import AutoTokenizer

    merged = model.merge_and_unload()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="merged-", dir=out_dir.parent))
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(str(tmp))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@torch.no_grad()
def list_logps(
    model, rows: list[dict[str, Any]], *, pad_token_id: int, max_length: int, device: torch.device
) -> list[tuple[list[float], list[int]]]:
    """Sequence log-probs and lengths of every response of every ranking list, one forward pass per list.

    Args:
        rows: dicts with ``prompt_ids`` and ``responses_ids`` (as :func:`collate_lists` takes).
    Returns:
        Per row: (``[N]`` summed log-probs in nats, ``[N]`` response lengths in tokens).
    """
    was_training = model.training
    model.eval()
    out = []
    for row in rows:
        batch = collate_lists([row], pad_token_id, max_length)
        logp = response_logprobs(
            model,
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch["response_mask"].to(device),
        )  # [N, T-1]
        out.append((logp.sum(-1).float().cpu().tolist(), batch["response_mask"].sum(-1).tolist()))
    model.train(was_training)
    return out


def reference_logps(
    model, rows: list[dict[str, Any]], cfg: TrainConfig, *, pad_token_id: int, device: torch.device
) -> list[list[float]]:
    """Sequence log-probs of every response under the reference model, computed once before training.

    The reference is the policy as it enters this round's training: with
    ``cfg.reference == "previous"`` that is the model as given (the previous round's adapter);
    with ``"initial"`` the adapter is disabled, leaving the initial (base) policy. Precomputing
    them (as TRL's ``precompute_ref_log_probs`` does) keeps one model in memory.

    Returns:
        One list per row: ``[N]`` summed log-probs (nats) of its responses, in row order.
    """
    import contextlib

    ctx = model.disable_adapter() if cfg.reference == "initial" else contextlib.nullcontext()
    with ctx:
        scored = list_logps(model, rows, pad_token_id=pad_token_id, max_length=cfg.max_length, device=device)
    return [sums for sums, _ in scored]


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
    if cfg.loss in REFERENCE_LOSSES:
        for row, ref in zip(rows, reference_logps(model, rows, cfg, pad_token_id=pad_token_id, device=device)):
            row["ref_logps"] = ref
    dataset = Dataset.from_list(rows)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="train-", dir=out_dir.parent))
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
        max_length=cfg.max_length,
        pad_token_id=pad_token_id,
    )
    state = previous_adapter / OPTIMIZER_STATE if cfg.carry_optimizer and previous_adapter is not None else None
    trainer = RankingTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        callbacks=callbacks,
        optimizer_state=state if state is not None and state.is_file() else None,
    )
    trainer.remove_callback(PrinterCallback)  # progress is the caller's to show
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    history = [h for h in trainer.state.log_history if "ranking_loss" in h]

    save_adapter_atomic(trainer, work, out_dir, save_optimizer=cfg.carry_optimizer)
    per_epoch_tokens = sum(len(e.prompt_ids) * len(e.responses_ids) + sum(map(len, e.responses_ids)) for e in usable)
    return TrainStats(
        steps=int(result.global_step),
        lists=int(round(len(usable) * cfg.epochs)),
        train_loss=float(result.training_loss),
        ranking_loss=history_mean(history, "ranking_loss"),
        sft_loss=history_mean(history, "sft_loss"),
        ranking_accuracy=history_mean(history, "ranking_accuracy"),
        grad_norm=history_mean(history, "grad_norm"),
        tokens=int(per_epoch_tokens * cfg.epochs),
        wall_s=wall,
        log_history=history,
    )
