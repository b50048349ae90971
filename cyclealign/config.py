"""The one validated configuration object of a run, built once at the edge (CLI) and passed down.

Every field is documented where it is declared; cross-field checks raise
:class:`pydantic.ValidationError`, which the CLI turns into :class:`~cyclealign.errors.ConfigError`
naming the field. The resolved config is saved as ``config.json`` in the run directory
(the API key is never a field: it is read from the environment variable named by
``ranker.api_key_env``, once, by the ranker client).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cyclealign.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """The white-box policy model."""

    name_or_path: str | None = Field(
        None, description="Hugging Face model id or local directory; None = the embedded SmolLM2-135M-Instruct."
    )
    cache_dir: Path = Field(
        Path("~/.cache/cyclealign").expanduser(),
        description="Where the embedded GGUF model is converted to safetensors, once.",
    )
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' = bfloat16 on CUDA, float32 on CPU."
    )


class GenerationConfig(_Section):
    """White-box sampling (step 1 of a round)."""

    num_samples: int = Field(4, ge=2, le=16, description="N: responses sampled per prompt.")
    temperature: float = Field(0.9, gt=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="Response length cap, tokens.")
    max_prompt_tokens: int = Field(384, ge=16, description="Prompts are left-truncated to this many tokens.")
    batch_size: int = Field(8, ge=1, description="Prompts per generate() call (each yields N sequences).")
    max_resample: int = Field(
        2, ge=0, description="Extra sampling passes for prompts whose N samples had duplicates."
    )


class RankerConfig(_Section):
    """The black-box ranker (step 2): any OpenAI-compatible chat endpoint."""

    base_url: str | None = Field(
        None, description="OpenAI-compatible base URL (…/v1); None = start `transformers serve` on the embedded model."
    )
    model: str | None = Field(None, description="Model name sent to the API; None = the served embedded model.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Ranker sampling temperature (first ask).")
    reask_temperature: float = Field(
        0.7, ge=0.0, le=2.0, description="Temperature of correction re-asks (a greedy re-ask tends to repeat itself)."
    )
    max_tokens: int = Field(64, ge=8, description="Completion cap per ranker call, tokens.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout, seconds.")
    max_retries: int = Field(4, ge=0, description="Retries (tenacity, exponential backoff) on transport errors.")
    max_reasks: int = Field(2, ge=0, description="Correction re-asks after an unparsable reply, then unranked.")
    complete_missing_last: bool | None = Field(
        None,
        description="Accept a reply ranking N-1 responses as complete, the missing one last. "
        "None = on for the embedded 135M ranker (which often stops one label short), off for an external API.",
    )
    templates_dir: Path | None = Field(None, description="Folder of ranker templates; None = shipped prompts/.")
    demos_path: Path | None = Field(None, description="Static demonstrations JSONL; None = shipped demos/ranking.jsonl.")
    num_static_demos: int = Field(4, ge=0, description="Static demonstrations per ranker call.")
    num_dynamic_demos: int = Field(2, ge=0, description="k: dynamic (agreement-pool) demonstrations per call.")
    server_startup_timeout_s: float = Field(300.0, gt=0, description="Wait for the embedded server's /health.")


class AgreementConfig(_Section):
    """Agreement between black-box and white-box rankings (step 4)."""

    min_length: int | None = Field(
        None, ge=1, description="LCS length needed to join the demonstration pool; None = N-1."
    )
    pool_max_size: int = Field(256, ge=1, description="Dynamic pool capacity; lowest-priority entries are dropped.")


class TrainConfig(_Section):
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
        description="Reference policy of dpo-pl, lipo and dpo: the initial policy (LoRA disabled) or the "
        "previous round's policy (the adapter as this round's training starts).",
    )
    pro_temperature: float = Field(1.0, gt=0, description="PRO: scores are divided by this before the softmax.")
    sft_weight: float = Field(0.1, ge=0, description="Weight of the SFT (NLL) term on the top response.")
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate.")
    epochs: float = Field(1.0, gt=0, description="Passes over the round's rankings.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps (1 step = 1 prompt's list).")
    max_length: int = Field(512, ge=32, description="Prompt + response tokens kept per sequence.")
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    lora_target_modules: str | list[str] = Field("all-linear", description="PEFT target_modules.")
    launcher: Literal["inprocess", "accelerate", "torchrun"] = Field(
        "inprocess",
        description="Run training in the loop's process, or as `cyclealign train-round` under "
        "`accelerate launch` (multi-GPU DDP / DeepSpeed) or `torchrun` (DDP, also over CPU processes).",
    )
    num_processes: int = Field(1, ge=1, description="Processes for the accelerate / torchrun launcher.")
    accelerate_config: Path | None = Field(
        None, description="accelerate config file (e.g. scripts/accelerate/zero2.yaml) for launcher=accelerate."
    )
    qlora: bool = Field(
        False, description="QLoRA: load the base 4-bit (NF4) with bitsandbytes; CUDA only."
    )
    merge: bool = Field(
        False, description="Also save each round's policy with the adapter merged into the base (round_k/merged/)."
    )


class Config(_Section):
    """A whole `cyclealign iterate` run."""

    run_dir: Path = Field(Path("runs/default"), description="Where every artifact of the run is written.")
    prompts: Path | None = Field(None, description="Prompt source (JSONL[.gz], HH-RLHF, HF dataset dir); None = shipped set.")
    rounds: int = Field(2, ge=1, description="Rounds scheduled in total (a resumed run continues to this count).")
    prompts_per_round: int = Field(8, ge=1, description="Prompts drawn per round (disjoint across rounds while possible).")
    seed: int = Field(0, description="Seed for prompt order, sampling and training.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    ranker: RankerConfig = Field(default_factory=RankerConfig)
    agreement: AgreementConfig = Field(default_factory=AgreementConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        n = self.generation.num_samples
        if self.agreement.min_length is not None and self.agreement.min_length > n:
            raise ValueError(
                f"agreement.min_length={self.agreement.min_length} exceeds generation.num_samples={n}"
            )
        if self.ranker.max_tokens < 6 * n:
            raise ValueError(
                f"ranker.max_tokens={self.ranker.max_tokens} is too small for a ranking of "
                f"generation.num_samples={n} responses (needs about 6 tokens per label: >= {6 * n})"
            )
        if self.train.qlora and self.train.merge:
            raise ValueError("train.merge=true cannot merge into a 4-bit base (train.qlora=true): merge a bf16 base instead")
        if self.ranker.complete_missing_last is None:
            self.ranker.complete_missing_last = self.ranker.base_url is None
        if self.ranker.base_url is not None and self.ranker.model is None:
            raise ValueError(f"ranker.model is required with ranker.base_url={self.ranker.base_url!r}")
        return self

    @property
    def agreement_min_length(self) -> int:
        """The resolved pool threshold (``N - 1`` unless set)."""
        return self.agreement.min_length or self.generation.num_samples - 1

    def to_json(self) -> str:
        """The resolved config as JSON (what ``config.json`` holds; no secrets are fields)."""
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json_file(cls, path: Path) -> "Config":
        """Load and validate a config file.

        Raises:
            ConfigError: naming the file and every invalid field.
        """
        try:
            return cls.model_validate(json.loads(Path(path).read_text()))
        except ValidationError as e:
            raise ConfigError(f"{path}: {format_validation_error(e)}") from None


def format_validation_error(e: ValidationError) -> str:
    """One line per failing field: ``generation.num_samples: Input should be ...``."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def build_config(**overrides: object) -> Config:
    """Build a :class:`Config` from dotted overrides (``{"generation.num_samples": 4}``).

    Raises:
        ConfigError: naming every invalid field.
    """
    nested: dict[str, object] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        node = nested
        *heads, last = key.split(".")
        for h in heads:
            node = node.setdefault(h, {})  # type: ignore[assignment]
        node[last] = value  # type: ignore[index]
    try:
        return Config.model_validate(nested)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
