"""The generation-backend protocol and the record it produces."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cyclealign.records import PromptRecord


@dataclass
class Generation:
    """N sampled responses to one prompt, with the policy's own scores.

    Attributes:
        prompt_id: id of the :class:`~cyclealign.records.PromptRecord`.
        prompt_token_ids: the chat-templated prompt as token ids (what generation saw).
        responses: response texts (special tokens removed), distinct, ``len <= N``.
        response_token_ids: the sampled token ids of each response, EOS included when reached.
        logprob_mean: length-normalised log-likelihood of each response (mean token
            log-prob in nats under the *untempered* policy, EOS included).
        finished: whether each response ended with EOS (False = cut at max_new_tokens).
    """

    prompt_id: str
    prompt_token_ids: list[int]
    responses: list[str] = field(default_factory=list)
    response_token_ids: list[list[int]] = field(default_factory=list)
    logprob_mean: list[float] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Generation":
        return cls(**d)


class GenerationBackend(Protocol):
    """What the round needs from a white-box policy for sampling."""

    def load_adapter(self, path: Path | None) -> None:
        """Generate with the LoRA adapter at ``path`` (PEFT format); ``None`` = the base policy."""

    def sample(
        self,
        prompts: list[PromptRecord],
        seed: int,
        progress: Callable[[int], None] | None = None,
        max_new_tokens: int | None = None,
    ) -> list[Generation]:
        """Sample N distinct responses per prompt, scored by length-normalised log-likelihood
        (``max_new_tokens``: length cap in tokens; None = the backend's configured one)."""

    def greedy(
        self, prompts: list[PromptRecord], max_new_tokens: int | None = None, progress: Callable[[int], None] | None = None
    ) -> list[Generation]:
        """One greedy (argmax) response per prompt (what held-out evaluation judges by default)."""
