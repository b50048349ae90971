"""``cyclealign iterate``'s flags as config layers: which flags the command line gave, the config
field each one sets, and the one validated :class:`~cyclealign.config.Config` of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cyclealign.config import Config, layer_config, parse_set_options
from cyclealign.config.files import flatten, read_config_file
from cyclealign.errors import CycleAlignError

__all__ = ["FLAG_FIELDS", "explicit_flags", "iterate_config"]


def iterate_config(
    ctx: typer.Context, config_file: Path | None, set_items: list[str] | None, resume: bool, add_rounds: int | None
) -> tuple[Config, bool]:
    """The run's one validated config and whether it resumes.

    Precedence: the defaults < the run's saved ``config.json`` (when resuming) < ``--config``
    file < flags given on the command line < ``--set``. ``--add-rounds K`` resumes an existing
    run (or starts a new one) and schedules ``K`` rounds beyond those finished.

    Raises:
        ConfigError: naming the invalid key (and the file).
    """
    from cyclealign.rundir import RunDir

    flags = explicit_flags(ctx)
    sets = parse_set_options(set_items)
    file_layer = flatten(read_config_file(config_file)) if config_file is not None else {}
    run_dir = Path(str(sets.get("run_dir") or flags.get("run_dir") or file_layer.get("run_dir") or "runs/default"))
    run = RunDir(run_dir)
    if add_rounds is not None:
        resume = run.config.exists()
    saved = flatten(run.read_config().model_dump(mode="json")) if resume and run.config.exists() else {}
    layers = [saved, file_layer, flags, sets]
    if add_rounds is not None:
        layers.append({"rounds": run.finished_rounds() + add_rounds})
    try:
        cfg = layer_config(*layers)
    except CycleAlignError as e:
        where = f"{config_file}: " if config_file is not None and any(k in file_layer for k in _error_keys(str(e))) else ""
        raise type(e)(where + str(e)) from None
    return cfg, resume


def _error_keys(message: str) -> list[str]:
    """The dotted fields a ``ConfigError`` message names (``field: problem; field: problem``)."""
    return [part.split(":")[0].strip() for part in message.split(";")]


def explicit_flags(ctx: typer.Context) -> dict[str, Any]:
    """Dotted config fields of the flags given on the command line (not their defaults)."""
    out = {}
    for name, field in FLAG_FIELDS.items():
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE":
            value = ctx.params[name]
            if field == "eval.prompts" and isinstance(value, (list, tuple)):  # one source stays a plain path
                value = value[0] if len(value) == 1 else list(value) or None
            out[field] = str(value) if isinstance(value, Path) else value
    return out


FLAG_FIELDS = {
    "prompts": "prompts",
    "rounds": "rounds",
    "prompts_per_round": "prompts_per_round",
    "num_samples": "generation.num_samples",
    "run_dir": "run_dir",
    "model": "model.name_or_path",
    "device": "model.device",
    "policy_backend": "generation.backend",
    "policy_base_url": "vllm.base_url",
    "ranker_base_url": "ranker.base_url",
    "ranker_model": "ranker.model",
    "ranker_api_key_env": "ranker.api_key_env",
    "max_new_tokens": "generation.max_new_tokens",
    "temperature": "generation.temperature",
    "num_dynamic_demos": "ranker.num_dynamic_demos",
    "ranker_concurrency": "ranker.concurrency",
    "ranker_rpm": "ranker.requests_per_minute",
    "ranker_tpm": "ranker.tokens_per_minute",
    "cache": "ranker.cache",
    "ranker_cache": "ranker.cache_path",
    "max_cost_usd": "ranker.max_cost_usd",
    "ranker_price_input": "ranker.price_input_per_mtok",
    "ranker_price_output": "ranker.price_output_per_mtok",
    "ranker_prices": "ranker.prices_path",
    "ranker_shuffle": "ranker.shuffle",
    "ranker_consistency": "ranker.consistency",
    "ranker_aggregate": "ranker.aggregate",
    "ranker_min_confidence": "ranker.min_confidence",
    "ranker_calls_per_round": "ranker.calls_per_round",
    "ranker_selection": "ranker.selection",
    "ranker_structured_output": "ranker.structured_output",
    "ranker_batch": "ranker.batch",
    "pipeline": "ranker.pipeline",
    "eval_every": "eval.every",
    "eval_prompts": "eval.prompts",
    "eval_decoding": "eval.decoding",
    "eval_max_new_tokens": "eval.max_new_tokens",
    "agreement_min_length": "agreement.min_length",
    "loss": "train.loss",
    "beta": "train.beta",
    "reference": "train.reference",
    "qlora": "train.qlora",
    "merge": "train.merge",
    "sft_weight": "train.sft_weight",
    "sft_reduction": "train.sft_reduction",
    "sft_pro_scale": "train.sft_pro_scale",
    "kl_weight": "train.kl_weight",
    "pro_temperature": "train.pro_temperature",
    "pro_reward_gap": "train.pro_reward_gap",
    "train_target": "train.target",
    "replay_rounds": "train.replay_rounds",
    "learning_rate": "train.learning_rate",
    "epochs": "train.epochs",
    "carry_optimizer": "train.carry_optimizer",
    "max_grad_norm": "train.max_grad_norm",
    "lora_r": "train.lora_r",
    "lora_alpha": "train.lora_alpha",
    "seed": "seed",
    "templates": "ranker.templates_dir",
}
"""``iterate`` parameter name -> the dotted :class:`~cyclealign.config.Config` field it sets."""
