"""Config section of held-out evaluation (``iterate --eval-every``, ``cyclealign eval``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from cyclealign.config.section import Section

__all__ = ["EvalConfig"]


class EvalConfig(Section):
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
