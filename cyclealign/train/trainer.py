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
from cyclealign.train.losses import pro_loss, sft_loss

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
        ranking_loss (`str`, defaults to `"pro"`): listwise loss; `"pro"` = Plackett-Luce
            (Song et al. 2023).
        pro_temperature (`float`, defaults to `1.0`): PRO scores are divided by it.
        sft_weight (`float`, defaults to `0.1`): weight of the NLL term on the top response.
        max_length (`int`, defaults to `512`): prompt + response tokens kept per sequence
            (the prompt is left-truncated first, then the response right-truncated).
        pad_token_id (`int`, defaults to `0`): id used to pad sequences.
    """

    ranking_loss: str = field(default="pro", metadata={"help": "Listwise ranking loss: 'pro'."})
    pro_temperature: float = field(default=1.0, metadata={"help": "PRO softmax temperature."})
    sft_weight: float = field(default=0.1, metadata={"help": "Weight of the SFT term on the top response."})
    max_length: int = field(default=512, metadata={"help": "Max prompt + response tokens per sequence."})
    pad_token_id: int = field(default=0, metadata={"help": "Padding token id."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    logging_steps: float = field(default=1, metadata={"help": "Log every X update steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the ranking columns."})
    report_to: Any = field(default="none", metadata={"help": "Integrations to report to."})


def collate_lists(examples: list[dict[str, Any]], pad_token_id: int, max_length: int) -> dict[str, torch.Tensor]:
    """Pack ranking lists into one right-padded batch of sequences.

    Args:
        examples: dicts with ``prompt_ids`` (list[int]) and ``responses_ids`` (list[list[int]],
            best first).
    Returns:
        ``input_ids`` / ``attention_mask`` / ``response_mask``: ``[sum N_b, seq]``;
        ``list_sizes``: ``[batch]`` number of responses of each list (in order).
    """
    rows: list[tuple[list[int], int]] = []  # (ids, prompt length)
    sizes = []
    for ex in examples:
        sizes.append(len(ex["responses_ids"]))
        for resp in ex["responses_ids"]:
            prompt = ex["prompt_ids"][-max(max_length - len(resp), max_length // 2) :]
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
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "response_mask": resp_mask,
        "list_sizes": torch.tensor(sizes, dtype=torch.long),
    }


class RankingTrainer(_BaseTrainer):
    """Listwise ranking trainer: one forward pass over the ``[N, seq]`` batch of each list.

    Loss per list: ``pro_loss(scores) + sft_weight * sft_loss(top response)``, where
    ``scores[k]`` is response k's mean token log-prob (label order). Logged per step:
    ``loss``, ``ranking_loss``, ``sft_loss``, ``ranking_accuracy`` (fraction of lists whose
    log-likelihood order equals the label exactly).
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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg: RankingConfig = self.args
        logp = response_logprobs(model, inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"])
        mask = inputs["response_mask"][:, 1:]  # [R, T-1], aligned with logp
        scores = (logp.sum(-1) / mask.sum(-1).clamp(min=1))  # [R] mean log-prob per response
        sizes = inputs["list_sizes"].tolist()
        width = max(sizes)
        padded = scores.new_zeros((len(sizes), width))
        valid = torch.zeros((len(sizes), width), dtype=torch.bool, device=scores.device)
        tops = []
        start = 0
        for b, n in enumerate(sizes):
            padded[b, :n] = scores[start : start + n]
            valid[b, :n] = True
            tops.append(start)
            start += n
        rank = pro_loss(padded, valid, cfg.pro_temperature)  # [B]
        sft = sft_loss(logp[tops], mask[tops])  # [B]
        loss = (rank + cfg.sft_weight * sft).mean()
        with torch.no_grad():
            acc = [
                float(all(padded[b, k] >= padded[b, k + 1] for k in range(n - 1))) for b, n in enumerate(sizes)
            ]
        m = self._step_metrics
        m["ranking_loss"].append(float(rank.detach().mean()))
        m["sft_loss"].append(float(sft.detach().mean()))
        m["ranking_accuracy"].append(sum(acc) / len(acc))
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key, values in self._step_metrics.items():
            if values and "loss" in logs:
                logs[key] = sum(values) / len(values)
                values.clear()
        super().log(logs, start_time)


@dataclass
class TrainStats:
    """Summary of one round's training.

    Attributes:
        steps: optimiser steps. lists: ranking lists seen (with repeats over epochs).
        train_loss: mean total loss (nats). ranking_loss / sft_loss: mean of each part.
        ranking_accuracy: mean over logged steps of the exact-order accuracy on the training lists.
        tokens: prompt + response tokens processed (one epoch counted per pass).
        wall_s: seconds.
    """

    steps: int
    lists: int
    train_loss: float
    ranking_loss: float
    sft_loss: float
    ranking_accuracy: float
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

    Only LoRA parameters require gradients (PEFT freezes the base).
    """
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    if adapter is None:
        return get_peft_model(base, lora_config(cfg))
    return PeftModel.from_pretrained(base, str(adapter), is_trainable=True)


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
) -> TrainStats:
    """Fine-tune ``model`` (a PEFT model) on the round's rankings and save its adapter.

    The adapter is written in the standard PEFT format (``adapter_config.json`` +
    ``adapter_model.safetensors``) to a temporary folder and renamed to ``out_dir``,
    so ``out_dir`` exists only when complete.

    Raises:
        ValueError: no example has >= 2 responses.
    """
    from datasets import Dataset

    usable = [e for e in examples if len(e.responses_ids) >= 2]
    if not usable:
        raise ValueError("no ranking list with at least 2 responses to train on")
    dataset = Dataset.from_list([{"prompt_ids": e.prompt_ids, "responses_ids": e.responses_ids} for e in usable])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="train-", dir=out_dir.parent))
    args = RankingConfig(
        output_dir=str(work / "trainer"),
        per_device_train_batch_size=1,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",
        save_strategy="no",
        seed=seed,
        bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(),
        use_cpu=device.type == "cpu",
        disable_tqdm=True,
        ranking_loss=cfg.loss,
        pro_temperature=cfg.pro_temperature,
        sft_weight=cfg.sft_weight,
        max_length=cfg.max_length,
        pad_token_id=pad_token_id,
    )
    trainer = RankingTrainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # progress is the caller's to show
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    history = [h for h in trainer.state.log_history if "ranking_loss" in h]

    def mean(key: str) -> float:
        vals = [h[key] for h in history if key in h]
        return sum(vals) / len(vals) if vals else float("nan")

    tmp_adapter = work / "adapter"
    model.save_pretrained(str(tmp_adapter))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp_adapter, out_dir)
    shutil.rmtree(work, ignore_errors=True)
    per_epoch_tokens = sum(len(e.prompt_ids) * len(e.responses_ids) + sum(map(len, e.responses_ids)) for e in usable)
    return TrainStats(
        steps=int(result.global_step),
        lists=int(round(len(usable) * cfg.epochs)),
        train_loss=float(result.training_loss),
        ranking_loss=mean("ranking_loss"),
        sft_loss=mean("sft_loss"),
        ranking_accuracy=mean("ranking_accuracy"),
        tokens=int(per_epoch_tokens * cfg.epochs),
        wall_s=wall,
        log_history=history,
    )
