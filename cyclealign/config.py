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

    backend: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="Where the policy samples: transformers (generate() in this process, CPU or one GPU) "
        "or vllm (a vLLM OpenAI-compatible server, see the vllm section).",
    )
    num_samples: int = Field(4, ge=2, le=16, description="N: responses sampled per prompt.")
    temperature: float = Field(0.9, gt=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="Response length cap, tokens.")
    max_prompt_tokens: int = Field(384, ge=16, description="Prompts are left-truncated to this many tokens.")
    batch_size: int = Field(8, ge=1, description="Prompts per generate() call (each yields N sequences).")
    max_resample: int = Field(
        2, ge=0, description="Extra sampling passes for prompts whose N samples had duplicates."
    )


class VLLMConfig(_Section):
    """The vLLM server that hosts the policy when ``generation.backend`` is ``vllm``."""

    base_url: str | None = Field(
        None,
        description="A running vLLM OpenAI-compatible server (…/v1) serving model.name_or_path; "
        "None = cyclealign starts `vllm serve` itself.",
    )
    command: list[str] | str = Field(
        "vllm serve",
        description="The launcher command, as a list or a shell-like string; the model and the flags are "
        "appended (tests point it at a stand-in server).",
    )
    port: int | None = Field(None, ge=1, le=65535, description="Port of the started server; None = a free loopback port.")
    gpu_memory_utilization: float = Field(
        0.35,
        gt=0,
        le=1,
        description="Fraction of the GPU the server may take (weights + KV cache). 0.35 of 80 GB ~ 28 GB: "
        "a 7B bf16 policy (~15 GB) plus KV cache, leaving the rest for LoRA training on the same card.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one model replica is split over (vLLM --tensor-parallel-size).")
    data_parallel_size: int = Field(1, ge=1, description="Model replicas the server runs (vLLM --data-parallel-size).")
    max_lora_rank: int = Field(64, ge=1, description="Largest LoRA rank the server accepts (vLLM --max-lora-rank; >= train.lora_r).")
    max_loras: int = Field(2, ge=1, description="LoRA adapters held at once (vLLM --max-loras): this round's and the previous one.")
    startup_timeout_s: float = Field(600.0, gt=0, description="Wait this long for a started server's /health, seconds.")
    sleep_during_train: bool = Field(
        True, description="Put the server to sleep during the train phase (and wake it after) when it has the sleep/wake endpoints."
    )
    request_concurrency: int = Field(8, ge=1, le=1024, description="Completion requests in flight at once.")
    served_model_name: str | None = Field(
        None, description="The base model's name on the server (vLLM --served-model-name); None = the model as given."
    )
    request_timeout_s: float = Field(600.0, gt=0, description="Per completion request, seconds.")
    extra_args: list[str] = Field(
        default_factory=list, description="More command-line arguments for `vllm serve` (e.g. [--max-model-len, '4096'])."
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
    concurrency: int = Field(8, ge=1, le=1024, description="Ranker requests in flight at once.")
    requests_per_minute: float | None = Field(None, gt=0, description="Requests-per-minute limit; None = none.")
    tokens_per_minute: float | None = Field(
        None, gt=0, description="Tokens-per-minute limit (prompt estimate + max_tokens per request); None = none."
    )
    cache: bool = Field(True, description="Read replies from the reply cache (false = --no-cache; replies are still stored).")
    cache_path: Path | None = Field(
        None, description="SQLite reply cache, shareable across runs; None = <model.cache_dir>/ranker_cache.sqlite."
    )
    shuffle: bool = Field(True, description="Show the responses in a seeded random order (against position bias).")
    consistency: int = Field(
        1, ge=1, le=8, description="K: ask K shuffled orders; keep the ranking only when all K agree."
    )
    structured_output: Literal["auto", "json_schema", "off"] | None = Field(
        None,
        description="Ask for a JSON-schema answer: auto (use it, fall back to text if the endpoint refuses), "
        "json_schema (always), off (text labels). None = auto for an external API, off for the embedded ranker.",
    )
    max_cost_usd: float | None = Field(
        None, ge=0, description="Stop the run (resumable) before ranker spending would exceed this, USD."
    )
    prices_path: Path | None = Field(
        None, description="Price table JSON (USD per 1M tokens per model); None = the shipped table."
    )
    price_input_per_mtok: float | None = Field(None, ge=0, description="Override: USD per 1M prompt tokens.")
    price_output_per_mtok: float | None = Field(None, ge=0, description="Override: USD per 1M completion tokens.")
    batch: bool = Field(
        False, description="Send each round's first asks through the OpenAI Batch API (half price, up to 24 h)."
    )
    batch_poll_s: float = Field(30.0, gt=0, description="Seconds between Batch API status polls.")


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
    sft_weight: float = Field(
        0.05, ge=0, description="Weight of the SFT (NLL) term on the top response (PRO's HH-RLHF setting with the two below)."
    )
    sft_reduction: Literal["mean", "sum"] = Field(
        "sum", description="SFT term per token (mean) or summed over the response's tokens (PRO's reference code)."
    )
    sft_pro_scale: bool = Field(
        True, description="Multiply the SFT term by (n-1)^2 for a list of n responses, as PRO's reference code does."
    )
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate.")
    epochs: float = Field(2.0, gt=0, description="Passes over the round's rankings.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps (1 step = 1 prompt's list).")
    carry_optimizer: bool = Field(
        False,
        description="Continue each round from the previous round's AdamW state (saved as adapter/optimizer.pt) "
        "instead of fresh moment estimates.",
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
        None, description="accelerate config file (e.g. scripts/accelerate/zero2.yaml) for launcher=accelerate."
    )
    qlora: bool = Field(
        False, description="QLoRA: load the base 4-bit (NF4) with bitsandbytes; CUDA only."
    )
    merge: bool = Field(
        False, description="Also save each round's policy with the adapter merged into the base (round_k/merged/)."
    )


class EvalConfig(_Section):
    """Held-out evaluation during a run (``iterate --eval-every``); ``cyclealign eval`` takes the same settings as flags."""

    every: int = Field(0, ge=0, description="Evaluate base vs the latest round every K rounds; 0 = never.")
    prompts: Path | list[Path] | None = Field(
        None,
        description="Held-out prompt source, or a list of them (results are also broken down by source, "
        "named by file stem); prompts the run trains on are left out.",
    )
    num_prompts: int = Field(32, ge=1, description="Held-out prompts per evaluation, per source.")
    reward_model: str | None = Field(None, description="HF sequence-classification model id or path to score responses.")
    judge_max_tokens: int = Field(
        16, ge=4, description="Completion cap per pairwise judge call, tokens (room for a short preamble before [1]/[2]/tie)."
    )
    decoding: Literal["greedy", "sample"] = Field(
        "greedy",
        description="How the one response per prompt that is judged (win rate, reward, length) is decoded: greedy, "
        "or the first of the N sampled responses. Held-out ranking agreement always uses N samples.",
    )
    max_new_tokens: int = Field(
        128, ge=1, le=4096, description="Response length cap of evaluation generations, tokens (training uses generation.max_new_tokens)."
    )

    @model_validator(mode="after")
    def _sources(self) -> "EvalConfig":
        if isinstance(self.prompts, list):
            if not self.prompts:
                raise ValueError("eval.prompts: an empty list; give one source or several (or null)")
            stems = [self.source_name(p) for p in self.prompts]
            for i, stem in enumerate(stems):
                if stem in stems[:i]:
                    first = self.prompts[stems.index(stem)]
                    raise ValueError(
                        f"eval.prompts: {first} and {self.prompts[i]} have the same name {stem!r}; "
                        "sources are reported by name, so rename one"
                    )
        return self

    @staticmethod
    def source_name(path: Path) -> str:
        """The name a prompt source is reported by: its file stem (as in default prompt ids).

        >>> EvalConfig.source_name(Path("data/harmless-base-test.jsonl.gz")), EvalConfig.source_name(Path("ds_dir"))
        ('harmless-base-test', 'ds_dir')
        """
        return Path(path).name.removesuffix(".gz").removesuffix(".jsonl")

    @property
    def prompt_sources(self) -> list[Path]:
        """``prompts`` as a list (empty when unset)."""
        if self.prompts is None:
            return []
        return list(self.prompts) if isinstance(self.prompts, list) else [self.prompts]


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
    eval: EvalConfig = Field(default_factory=EvalConfig)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)

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
        if self.eval.every and self.eval.prompts is None:
            raise ValueError("eval.every needs eval.prompts (held-out prompts, e.g. --eval-prompts PATH)")
        if self.ranker.structured_output is None:
            self.ranker.structured_output = "off" if self.ranker.base_url is None else "auto"
        if self.ranker.consistency > 1 and not self.ranker.shuffle:
            raise ValueError("ranker.consistency > 1 needs ranker.shuffle=true (K identical orders would always agree)")
        if self.ranker.batch and self.ranker.base_url is None:
            raise ValueError("ranker.batch needs an external ranker.base_url (the embedded server has no Batch API)")
        if self.ranker.base_url is not None and self.ranker.model is None:
            raise ValueError(f"ranker.model is required with ranker.base_url={self.ranker.base_url!r}")
        if self.generation.backend == "vllm" and self.vllm.max_lora_rank < self.train.lora_r:
            raise ValueError(
                f"vllm.max_lora_rank={self.vllm.max_lora_rank} is below train.lora_r={self.train.lora_r}: "
                "the server would refuse the round's adapter (raise vllm.max_lora_rank or lower train.lora_r)"
            )
        return self

    @property
    def ranker_cache_path(self) -> Path:
        """The resolved reply cache file."""
        return self.ranker.cache_path or self.model.cache_dir / "ranker_cache.sqlite"

    @property
    def agreement_min_length(self) -> int:
        """The resolved pool threshold (``N - 1`` unless set)."""
        return self.agreement.min_length or self.generation.num_samples - 1

    def to_json(self) -> str:
        """The resolved config as JSON (what ``config.json`` holds; no secrets are fields)."""
        return self.model_dump_json(indent=2)

    def to_yaml(self) -> str:
        """The resolved config as YAML (what ``cyclealign config show`` prints; loads back with ``--config``)."""
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_json_file(cls, path: Path) -> "Config":
        """Load and validate a config file (JSON, or YAML by its ``.yaml``/``.yml`` suffix).

        Raises:
            ConfigError: naming the file and every invalid field (or the line of a syntax error).
        """
        try:
            return cls.model_validate(read_config_file(path))
        except ValidationError as e:
            raise ConfigError(f"{path}: {format_validation_error(e)}") from None

    @classmethod
    def schema_json(cls) -> str:
        """The JSON schema of a config file (``cyclealign config schema``), field descriptions included."""
        return json.dumps(cls.model_json_schema(), indent=2)


RESUMABLE_CHANGES = frozenset(
    {
        "rounds",
        "ranker.concurrency",
        "ranker.requests_per_minute",
        "ranker.tokens_per_minute",
        "ranker.cache",
        "ranker.timeout_s",
        "ranker.max_retries",
        "ranker.max_cost_usd",
        "ranker.batch_poll_s",
        "ranker.server_startup_timeout_s",
        "ranker.templates_dir",  # a template edit between scheduled rounds is recorded per round and reported
        "eval.every",
        "eval.prompts",
        "eval.num_prompts",
        "eval.reward_model",
        "eval.judge_max_tokens",
        "eval.decoding",
        "eval.max_new_tokens",
        # Where and how the vLLM server runs, not what it computes (vllm.extra_args may change that).
        "vllm.base_url",
        "vllm.command",
        "vllm.port",
        "vllm.gpu_memory_utilization",
        "vllm.tensor_parallel_size",
        "vllm.data_parallel_size",
        "vllm.max_lora_rank",
        "vllm.max_loras",
        "vllm.startup_timeout_s",
        "vllm.sleep_during_train",
        "vllm.request_concurrency",
        "vllm.request_timeout_s",
    }
)
"""Dotted config fields a resumed run may change: they bound or schedule work, not its results."""


def flatten(d: dict[str, object], prefix: str = "") -> dict[str, object]:
    """Nested config JSON as dotted keys.

    >>> flatten({"rounds": 2, "ranker": {"model": "m"}})
    {'rounds': 2, 'ranker.model': 'm'}
    """
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def format_validation_error(e: ValidationError) -> str:
    """One line per failing field: ``generation.num_samples: Input should be ...``."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def read_config_file(path: Path) -> dict[str, object]:
    """The nested fields of a config file: YAML when its suffix is ``.yaml``/``.yml``, else JSON.

    Raises:
        ConfigError: the file cannot be read, does not parse (naming its line), or is not a mapping.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file holds a mapping of config fields, got {type(data).__name__}")
    return data


def config_fields() -> dict[str, str]:
    """Every settable config field as a dotted key, with its description (the help text).

    >>> fields = config_fields()
    >>> fields["generation.num_samples"]
    'N: responses sampled per prompt.'
    >>> "model" in fields, "rounds" in fields
    (False, True)
    """
    out: dict[str, str] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = info.description or ""

    walk(Config, "")
    return out


def parse_set_options(items: list[str] | None) -> dict[str, object]:
    """``--set section.field=value`` options as dotted overrides; values are read as YAML
    scalars or lists (``4`` -> int, ``true`` -> bool, ``null`` -> None, ``[a, b]`` -> list).

    Raises:
        ConfigError: an item without ``=``, or a key that is not a config field (the known
            fields of its section are listed).

    >>> parse_set_options(["generation.num_samples=6", "train.qlora=true", "ranker.model=gpt-4o-mini"])
    {'generation.num_samples': 6, 'train.qlora': True, 'ranker.model': 'gpt-4o-mini'}
    """
    import yaml

    fields = config_fields()
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        if key not in fields:
            section = key.rpartition(".")[0]
            near = sorted(k for k in fields if k.rpartition(".")[0] == section) or sorted(fields)
            raise ConfigError(f"--set {key}: not a config field (known: {', '.join(near)})")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key] = raw
        if isinstance(out[key], (dict,)):
            raise ConfigError(f"--set {key}: expected a value or a list, got a mapping")
    return out


def layer_config(*layers: dict[str, object]) -> Config:
    """Validate the merge of dotted-override ``layers``, later ones winning (for example the
    defaults < a saved run's config < a ``--config`` file < command-line flags < ``--set``).

    Raises:
        ConfigError: naming every invalid field of the result.
    """
    merged: dict[str, object] = {}
    for layer in layers:
        merged.update(layer)
    return _validate_dotted(merged)


def build_config(**overrides: object) -> Config:
    """Build a :class:`Config` from dotted overrides (``{"generation.num_samples": 4}``).

    Raises:
        ConfigError: naming every invalid field.
    """
    return _validate_dotted({k: v for k, v in overrides.items() if v is not None})


def _validate_dotted(dotted: dict[str, object]) -> Config:
    """Nest dotted keys and validate; ``ConfigError`` names every invalid field."""
    nested: dict[str, object] = {}
    for key, value in dotted.items():
        node = nested
        *heads, last = key.split(".")
        for h in heads:
            node = node.setdefault(h, {})  # type: ignore[assignment]
        node[last] = value  # type: ignore[index]
    try:
        return Config.model_validate(nested)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
