"""Config section of a round's training (step 5): the ranking loss, LoRA and the launcher."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from cyclealign.config.section import Section

__all__ = ["TrainConfig"]


class TrainConfig(Section):
    """Ranking fine-tuning with TRL + PEFT LoRA (step 5)."""

    loss: Literal["pro", "rrhf", "dpo-pl", "lipo", "dpo"] = Field(
        "pro",
        description="Ranking loss: pro (Song et al. 2023), rrhf (Yuan et al. 2023), "
        "dpo-pl (Rafailov et al. 2023, A.3), lipo (LiPO-lambda, Liu et al. 2024), or dpo: the "
        "ranking expanded into preference pairs and trained with TRL's DPOTrainer.",
    )
    dpo_pairs: Literal["all", "adjacent"] = Field("all", description="dpo: all (better, worse) pairs, or adjacent ones.")
    dpo_loss_type: str = Field("sigmoid", description="dpo: TRL DPOConfig.loss_type (sigmoid, ipo, hinge, ...).")
    beta: float = Field(0.1, gt=0, description="Implicit-reward scale of dpo-pl and lipo.")
    reference: Literal["initial", "previous"] = Field(
        "initial",
        description="Reference policy of dpo-pl, lipo, dpo and kl_weight: the initial policy (LoRA disabled) or the "
        "previous round's policy (the adapter as this round's training starts).",
    )
    pro_temperature: float = Field(1.0, gt=0, description="PRO: scores are divided by this before the softmax.")
    pro_reward_gap: bool = Field(
        False,
        description="PRO: scale each step's scores by reward-gap temperatures (Song et al. 2023, Eq. 8-9), "
        "with rank rewards (r = -label position); pro_temperature still divides the scores.",
    )
    target: Literal["blackbox", "agreement"] = Field(
        "blackbox",
        description="What each ranked prompt trains on: the black-box ranking of all its responses, or only "
        "the responses of its black-box/white-box agreement (LCS) in that order (CycleAlign's pseudo-label; "
        "prompts whose LCS is shorter than 2 are left out).",
    )
    replay_rounds: int = Field(
        0,
        ge=0,
        description="Each round also trains on the rankings of this many rounds before it (the responses the "
        "earlier policies sampled), oldest first: rankings already paid for keep training.",
    )
    sft_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of the SFT (NLL) term on the top response. PRO's HH-RLHF setting is 0.05 with "
        "sft_reduction=sum and sft_pro_scale=true.",
    )
    sft_reduction: Literal["mean", "sum"] = Field(
        "mean", description="SFT term per token (mean) or summed over the response's tokens (sum: PRO's reference code)."
    )
    sft_pro_scale: bool = Field(
        False, description="Multiply the SFT term by (n-1)^2 for a list of n responses, as PRO's reference code does."
    )
    kl_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of a per-token KL anchor to the reference policy (train.reference) on every ranked "
        "response's tokens: the k3 estimator exp(r) - 1 - r, r = log pi_ref - log pi (GRPO, Shao et al. 2024, Eq. 4), "
        "averaged over the list's response tokens. It resists pushing the worse responses' tokens far below the "
        "reference's, which is where ranking losses garble text. Not used by loss=dpo. 0: off.",
    )
    learning_rate: float = Field(
        4e-4,
        gt=0,
        description="AdamW learning rate (constant). Chosen on scripts/bench_efficacy.py's tuning rules: 4e-4 moves the policy "
        "further than 3e-4 on all four (brevity: the mean of 3 seeds); one brevity seed of three lost more fluency than the "
        "bench's bound.",
    )
    epochs: float = Field(2.0, gt=0, description="Passes over the round's rankings.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps (1 step = 1 prompt's list).")
    carry_optimizer: bool = Field(
        True,
        description="Continue each round from the previous round's AdamW state (saved as adapter/optimizer.pt, "
        "2 floats per LoRA weight) instead of fresh moment estimates. Not carried where the state is sharded "
        "(DeepSpeed ZeRO, FSDP): those rounds start fresh, with a warning.",
    )
    max_grad_norm: float = Field(
        5.0,
        ge=0,
        description="Clip each step's gradient to this global norm (0: no clipping). Chosen on scripts/bench_efficacy.py: "
        "at 1.0 every step (norms 3-6, spikes to 60) was clipped to the same size, which flattened the few lists that carry "
        "a length preference; 5.0 keeps their weight and caps the spikes.",
    )
    max_length: int = Field(512, ge=32, description="Prompt + response tokens kept per sequence.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (the update is scaled by alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    lora_target_modules: str | list[str] = Field("all-linear", description="PEFT target_modules.")
    launcher: Literal["inprocess", "accelerate", "torchrun"] = Field(
        "inprocess",
        description="Run training in the loop's process, or as `cyclealign train-round` under "
        "`accelerate launch` (multi-GPU DDP / DeepSpeed) or `torchrun` (DDP, also over CPU processes).",
    )
    num_processes: int = Field(1, ge=1, description="Processes for the accelerate / torchrun launcher.")
    accelerate_config: Path | None = Field(
        None,
        description="accelerate config file for launcher=accelerate: a path, or the name of a shipped one "
        "(ddp, zero2, zero3: cyclealign/assets/accelerate/<name>.yaml, looked up in the installed package at launch).",
    )
    qlora: bool = Field(
        False, description="QLoRA: load the base 4-bit (NF4) with bitsandbytes; CUDA only."
    )
    merge: bool = Field(
        False, description="Also save each round's policy with the adapter merged into the base (round_k/merged/)."
    )
