"""What a run would send the black-box ranker, estimated before anything is called or paid for
(``cyclealign iterate --dry-run``): calls, prompt tokens and USD from the price table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cyclealign.config import Config
from cyclealign.data.selection import select_round_prompts
from cyclealign.ranker.pricing import estimate_tokens, ranker_price
from cyclealign.ranker.ranking import RankJob, clip_prompt, first_ask_messages
from cyclealign.records import Demonstration, PromptRecord
from cyclealign.templates.ranker import RankerTemplates

__all__ = ["RunEstimate", "estimate_run"]


@dataclass(frozen=True)
class RunEstimate:
    """The ranker's share of the rounds still to run.

    Attributes:
        rounds: rounds whose ranking phase is still to run.
        prompts_per_round: prompts each of them ranks (``ranker.calls_per_round / consistency`` of
            the candidates, when that is fewer).
        calls: first asks (``rounds * prompts * ranker.consistency``; correction re-asks come on top).
        prompt_tokens_per_call: mean and max estimated prompt tokens of one call (tokens).
        prompt_tokens: estimated prompt tokens of all calls; ``completion_tokens``: at most
            ``ranker.max_tokens`` per call (tokens).
        cost_usd: estimated USD from the price table; None when the model's price is unknown
            (0.0 for the embedded ranker).
        max_cost_usd: the run's budget (``--max-cost-usd``), or None.
        prompts_cut: prompts of the sampled round longer than ``ranker.max_prompt_tokens``.
    """

    rounds: int
    prompts_per_round: int
    calls: int
    prompt_tokens_per_call: tuple[int, int]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    max_cost_usd: float | None
    prompts_cut: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def estimate_run(
    cfg: Config, prompts: list[PromptRecord], templates: RankerTemplates, static_demos: list[Demonstration], rounds: int
) -> RunEstimate:
    """Estimate the ranker calls of ``rounds`` rounds without calling anything.

    Each call is rendered as it would be sent (templates, demonstrations, the prompt cut to
    ``ranker.max_prompt_tokens``) for round 0's prompts, with N responses at the token cap
    (``generation.max_new_tokens`` words: about one token each); the dynamic demonstrations of
    later rounds are counted as static ones of the same size. Token counts are
    :func:`~cyclealign.ranker.pricing.estimate_tokens`' (3 bytes a token: they err high).

    Raises:
        TemplateError: a template fails to render (file named).
        ConfigError: a bad price table.
    """
    r = cfg.ranker
    # With ranker.calls_per_round, the ranker sees cfg.ranked_per_round of the candidates (which
    # ones is decided after generation; the first of them stand in for it here).
    chosen = select_round_prompts(prompts, 0, cfg.prompts_per_round, cfg.seed)[: cfg.ranked_per_round]
    response = " ".join(["word"] * cfg.generation.max_new_tokens)
    shown = list(static_demos[: r.num_static_demos])
    demos = shown + [shown[i % len(shown)] for i in range(r.num_dynamic_demos)] if shown else []
    per_call, cut = [], 0
    for p in chosen:
        prompt, was_cut = clip_prompt(p, r.max_prompt_tokens)
        cut += was_cut
        job = RankJob(prompt, [response] * cfg.generation.num_samples, demos, cfg.seed)
        per_call.append(estimate_tokens(first_ask_messages(templates, job, 0, shuffle=r.shuffle, json_output=False)[1]))
    calls = rounds * len(chosen) * r.consistency
    mean = round(sum(per_call) / len(per_call)) if per_call else 0
    prompt_tokens, completion_tokens = calls * mean, calls * r.max_tokens
    price = ranker_price(r)
    cost = None if price is None else price.cost_usd(prompt_tokens, completion_tokens, batch=r.batch)
    return RunEstimate(
        rounds=rounds, prompts_per_round=len(chosen), calls=calls, prompt_tokens_per_call=(mean, max(per_call, default=0)),
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost, max_cost_usd=r.max_cost_usd,
        prompts_cut=cut,
    )
