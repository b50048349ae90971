"""The policy as a round trains it: the base model with a PEFT LoRA adapter (optionally a 4-bit
QLoRA base), and the merged checkpoint saved after training."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from cyclealign.config.train import TrainConfig
from cyclealign.files import make_work_dir

__all__ = ["load_trainable_policy", "lora_config", "save_merged"]


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

    from cyclealign.models.loading import load_causal_lm

    if cfg.qlora:
        base = _load_4bit(model_dir, device)
    else:
        base = load_causal_lm(model_dir, dtype).to(device)
    if adapter is None:
        return get_peft_model(base, lora_config(cfg))
    return PeftModel.from_pretrained(base, str(adapter), is_trainable=True)


def check_qlora(device: torch.device) -> None:
    """What QLoRA needs, checked before a run starts (nothing paid for first).

    Raises:
        ConfigError: ``device`` is not a CUDA device, or bitsandbytes is not installed.
    """
    import importlib.util

    from cyclealign.errors import ConfigError

    if device.type != "cuda":
        raise ConfigError(f"train.qlora (--qlora) needs a CUDA device (model.device resolved to {device})")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("train.qlora (--qlora) needs bitsandbytes: pip install bitsandbytes")


def _load_4bit(model_dir: str, device: torch.device):
    """The base model quantised to 4-bit NF4 on ``device`` (QLoRA's base), ready for k-bit training."""
    check_qlora(device)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    from cyclealign.models.loading import load_causal_lm

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    base = load_causal_lm(model_dir, torch.bfloat16, quantization_config=quant, device_map={"": device.index or 0})
    return prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)


def save_merged(model, tokenizer_dir: str, out_dir: Path) -> Path:
    """Save the policy with its LoRA adapter merged into the base weights, atomically.

    ``model`` (a PEFT model) is merged in place and must not be trained afterwards. The folder
    holds a plain transformers checkpoint (config, safetensors, tokenizer from ``tokenizer_dir``)
    that any transformers or vLLM loader takes without PEFT.
    """
    from transformers import AutoTokenizer

    merged = model.merge_and_unload()
    tmp = make_work_dir(out_dir.parent, "merged-")
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(str(tmp))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
