"""What an evaluation evaluates: the :class:`EvalPlan`, and how policies are named.

A policy is named by its round index: :data:`BASE` (``-1``) is the base policy (no adapter),
``k`` the policy with round ``k``'s adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from cyclealign.config.eval import EvalConfig
from cyclealign.errors import ConfigError
from cyclealign.rundir import round_dir_name

__all__ = ["BASE", "EvalPlan", "label", "policy_slug"]

BASE = -1
"""The round index that names the base policy (no adapter)."""

_EVAL_DEFAULTS = EvalConfig.model_fields


def label(round_index: int) -> str:
    """``"base"`` or ``"round k"``."""
    return "base" if round_index == BASE else f"round {round_index}"


def policy_slug(round_index: int) -> str:
    """The policy's name in file names: ``"base"`` or ``"round_003"``."""
    return "base" if round_index == BASE else round_dir_name(round_index)


@dataclass
class EvalPlan:
    """What to evaluate.

    Attributes:
        prompts: held-out prompt source, or several (any format :func:`cyclealign.data.sources.load_prompts`
            reads); with several, results are also broken down by source.
        num_prompts: how many held-out prompts per source (a seeded sample).
        rounds: policies to evaluate (``-1`` = base); None = base and the latest trained round.
        vs: the reference policy of the win rate (``-1`` = base).
        reward_model: HF sequence-classification model id or path, or None.
        judge_max_tokens: completion cap per pairwise judge call, tokens (default: that of
            :class:`~cyclealign.config.eval.EvalConfig`, 16).
        decoding: ``"greedy"`` (default) or ``"sample"``: how the judged response is decoded.
        max_new_tokens: length cap of every evaluation generation, tokens (default 128).

    Raises:
        ConfigError: an out-of-range setting (named as its ``eval.*`` field), an empty list of
            sources, or two sources with the same name.
    """

    prompts: Path | Sequence[Path]
    num_prompts: int = _EVAL_DEFAULTS["num_prompts"].default
    rounds: list[int] | None = None
    vs: int = BASE
    reward_model: str | None = None
    judge_max_tokens: int = _EVAL_DEFAULTS["judge_max_tokens"].default
    decoding: Literal["greedy", "sample"] = _EVAL_DEFAULTS["decoding"].default
    max_new_tokens: int = _EVAL_DEFAULTS["max_new_tokens"].default

    def __post_init__(self) -> None:
        prompts = [Path(p) for p in self.prompts] if isinstance(self.prompts, (list, tuple)) else Path(self.prompts)
        try:
            EvalConfig(
                prompts=prompts,
                num_prompts=self.num_prompts,
                reward_model=self.reward_model,
                judge_max_tokens=self.judge_max_tokens,
                decoding=self.decoding,
                max_new_tokens=self.max_new_tokens,
            )
        except ValidationError as e:
            raise ConfigError(
                "; ".join(
                    f"eval.{'.'.join(map(str, err['loc']))}: {err['msg']}" if err["loc"] else err["msg"].removeprefix("Value error, ")
                    for err in e.errors()
                )
            ) from None
        self.prompts = prompts

    @property
    def sources(self) -> list[Path]:
        """The prompt sources as a list."""
        return list(self.prompts) if isinstance(self.prompts, list) else [self.prompts]

    @classmethod
    def from_config(cls, settings: EvalConfig, rounds: list[int] | None = None, vs: int = BASE) -> "EvalPlan":
        """The plan of a run's ``eval`` settings (``settings.prompts`` must be set)."""
        return cls(
            settings.prompt_sources,
            settings.num_prompts,
            rounds=rounds,
            vs=vs,
            reward_model=settings.reward_model,
            judge_max_tokens=settings.judge_max_tokens,
            decoding=settings.decoding,
            max_new_tokens=settings.max_new_tokens,
        )
