"""The one validated configuration object of a run, built once at the edge (CLI) and passed down.

Every field is documented where it is declared; cross-field checks raise
:class:`pydantic.ValidationError`, which the CLI turns into :class:`~cyclealign.errors.ConfigError`
naming the field. The resolved config is saved as ``config.json`` in the run directory
(the API key is never a field: it is read from the environment variable named by
``ranker.api_key_env``, once, by the ranker client).

Every section is declared in a module of its own: :mod:`~cyclealign.config.policy` (model,
generation, vllm), :mod:`~cyclealign.config.ranker` (ranker, agreement), :mod:`~cyclealign.config.train`,
:mod:`~cyclealign.config.eval`; files and dotted keys are :mod:`~cyclealign.config.files`. This
package is the public face (``from cyclealign.config import Config, build_config``; the sections
are reachable here as :class:`Config`'s field types); the package's own modules import each name
from the module that declares it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, model_validator

from cyclealign.config.eval import EvalConfig
from cyclealign.config.files import format_validation_error, read_config_file
from cyclealign.config.policy import GenerationConfig, ModelConfig, VLLMConfig, lora_rank_slot
from cyclealign.config.ranker import AgreementConfig, RankerConfig
from cyclealign.config.section import Section
from cyclealign.config.train import TrainConfig
from cyclealign.errors import ConfigError

__all__ = [
    "Config",
    "RESUMABLE_CHANGES",
    "SAVED_BEFORE",
    "build_config",
    "config_fields",
    "layer_config",
    "parse_set_options",
    "with_saved_before",
]


class Config(Section):
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
        if self.train.kl_weight > 0 and self.train.loss == "dpo":
            raise ValueError("train.kl_weight is for the listwise losses (pro, rrhf, dpo-pl, lipo); loss=dpo uses TRL's DPO loss")
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
        calls, k = self.ranker.calls_per_round, self.ranker.consistency
        if calls is not None and calls % k:
            raise ValueError(
                f"ranker.calls_per_round={calls} is not a multiple of ranker.consistency={k}: each ranked prompt "
                f"costs {k} first asks (one per presentation order); use {max(k, calls - calls % k)} or {calls - calls % k + k}"
            )
        if self.ranker.batch and self.ranker.base_url is None:
            raise ValueError("ranker.batch needs an external ranker.base_url (the embedded server has no Batch API)")
        if self.ranker.base_url is not None and self.ranker.model is None:
            raise ValueError(f"ranker.model is required with ranker.base_url={self.ranker.base_url!r}")
        if self.vllm.max_lora_rank is None:
            self.vllm.max_lora_rank = lora_rank_slot(self.train.lora_r)  # type: ignore[assignment]
        if self.vllm.base_url is not None and self.generation.backend != "vllm":
            raise ValueError(
                f"vllm.base_url={self.vllm.base_url!r} (--policy-base-url) is for generation.backend=vllm "
                "(--policy-backend vllm); the transformers backend would ignore it"
            )
        if self.ranker.model is not None and self.ranker.base_url is None:
            raise ValueError(
                f"ranker.model={self.ranker.model!r} needs ranker.base_url (--ranker-base-url): without it the "
                "embedded SmolLM2 ranks, not that model"
            )
        if self.generation.backend == "vllm" and (self.vllm.max_lora_rank or 0) < self.train.lora_r:
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
    def ranked_per_round(self) -> int:
        """Prompts a round sends the ranker at most: all ``prompts_per_round`` candidates, or
        ``ranker.calls_per_round / ranker.consistency`` of them when that is fewer.

        >>> Config(prompts_per_round=8).ranked_per_round, Config(prompts_per_round=8, ranker={"calls_per_round": 3}).ranked_per_round
        (8, 3)
        """
        calls = self.ranker.calls_per_round
        return self.prompts_per_round if calls is None else min(self.prompts_per_round, calls // self.ranker.consistency)

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
    def from_saved_file(cls, path: Path) -> "Config":
        """A run's saved ``config.json``, as :meth:`from_json_file`, a field added since the run was
        saved reading its :data:`SAVED_BEFORE` value (where one is declared) instead of today's default.

        Raises:
            ConfigError: as :meth:`from_json_file`.
        """
        try:
            return cls.model_validate(with_saved_before(read_config_file(path)))
        except ValidationError as e:
            raise ConfigError(f"{path}: {format_validation_error(e)}") from None

    @classmethod
    def schema_json(cls) -> str:
        """The JSON schema of a config file (``cyclealign config schema``), field descriptions included."""
        return json.dumps(cls.model_json_schema(), indent=2)


RESUMABLE_CHANGES = frozenset(
    {
        # Where the run and its inputs are, and where it runs: a run directory moved or copied, the
        # prompt source by another path (a round's prompts are matched by content), another device.
        "run_dir",
        "prompts",
        "model.device",
        "model.cache_dir",
        "train.launcher",
        "train.num_processes",
        # Where the ranker is reached and how it is paid for (ranker.model, its templates' content
        # and the demonstrations define the results and must stay).
        "ranker.base_url",
        "ranker.api_key_env",
        "ranker.cache_path",
        "ranker.prices_path",
        "ranker.warn_request_tokens",
        "rounds",
        "ranker.concurrency",
        "ranker.requests_per_minute",
        "ranker.tokens_per_minute",
        "ranker.cache",
        "ranker.timeout_s",
        "ranker.max_retries",
        "ranker.max_cost_usd",
        "ranker.batch_poll_s",
        "ranker.pipeline",
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
        "vllm.api_key_env",
    }
)
"""Dotted config fields a resumed run may change: they bound or schedule work, not its results."""


SAVED_BEFORE: dict[str, object] = {
    # K presentation orders were kept only when all agreed before ranker.aggregate existed.
    "ranker.aggregate": "strict",
}
"""Fields added since runs were first saved whose default changed what a run does: a saved
``config.json`` from before the field (its section there, the field not) reads this value, so a
resumed or reparsed old run goes on as it started."""


def with_saved_before(saved: dict[str, object]) -> dict[str, object]:
    """A saved config (nested, as ``config.json`` holds it) with each :data:`SAVED_BEFORE` field
    its section lacks filled in (a copy; ``saved`` is not changed).

    >>> with_saved_before({"ranker": {"consistency": 3}})["ranker"]
    {'consistency': 3, 'aggregate': 'strict'}
    >>> with_saved_before({"ranker": {"aggregate": "borda"}})["ranker"]["aggregate"], with_saved_before({})
    ('borda', {})
    """
    out = json.loads(json.dumps(saved))
    for key, value in SAVED_BEFORE.items():
        *heads, last = key.split(".")
        node = out
        for h in heads:
            node = node.get(h) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(last, value)
    return out


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
        ConfigError: an item without ``=``, a key that is not a config field (the known
            fields of its section are listed), or a list, mapping or quoted value that is not
            valid YAML (``[q_proj, `` is refused, not taken as the text it is).

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
        except yaml.YAMLError as e:
            if raw.lstrip()[:1] in "[{\"'":  # meant as a list, mapping or quoted string: say so, do not guess
                problem = str(getattr(e, "problem", None) or e).strip()
                raise ConfigError(f"--set {key}={raw}: not valid YAML ({problem})") from None
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
