"""Config sections of the black-box side: the ranker endpoint and the agreement that feeds its demonstration pool."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from cyclealign.config.section import Section

__all__ = ["AgreementConfig", "RankerConfig", "structured_at_start"]


class RankerConfig(Section):
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
    warn_request_tokens: int | None = Field(
        16000,
        ge=1,
        description="A ranker request estimated above this many prompt tokens is said in the log before it is sent "
        "(long demonstrations or templates); None = never.",
    )
    max_prompt_tokens: int | None = Field(
        2048,
        ge=64,
        description="The conversation as the ranker sees it is cut to about this many tokens, keeping its end "
        "(as the policy's prompt is: a huge prompt line must not become a huge paid request); None = never cut.",
    )
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
        1, ge=1, le=8,
        description="K: ask K shuffled presentation orders per prompt and combine them (ranker.aggregate).",
    )
    aggregate: Literal["strict", "borda", "kemeny"] = Field(
        "kemeny",
        description="With K > 1 orders: kemeny (the Kemeny-optimal ranking, Borda above N=8) or borda combine the K "
        "rankings and keep the result when its confidence reaches ranker.min_confidence; strict keeps a ranking "
        "only when all K agree.",
    )
    min_confidence: float = Field(
        0.6, ge=0.0, le=1.0,
        description="With ranker.aggregate borda/kemeny: the least confidence (mean share of the K orders agreeing "
        "with the aggregate on each pair) a prompt needs to train; below, it is unranked (inconsistent).",
    )
    calls_per_round: int | None = Field(
        None,
        ge=1,
        description="Ranking calls a round may spend: first asks, one per ranked prompt and presentation order "
        "(a prompt ranked with consistency K costs K; correction re-asks and cache hits aside). A round ranks "
        "calls_per_round / consistency of its prompts_per_round candidates, chosen by ranker.selection; the "
        "others are recorded as not selected and stay available to later rounds. None = rank every candidate.",
    )
    selection: Literal["random", "uncertainty", "diversity"] = Field(
        "random",
        description="Which candidates the ranker sees under ranker.calls_per_round: random (seeded), uncertainty "
        "(the policy's own log-likelihoods of its responses are closest to a tie), diversity (the responses "
        "share the fewest distinct tokens).",
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
    pipeline: bool = Field(
        True,
        description="Rank each prompt as soon as its responses are sampled, while the policy goes on generating "
        "(false: rank after the whole generate phase). Same results either way; not with ranker.batch.",
    )


class AgreementConfig(Section):
    """Agreement between black-box and white-box rankings (step 4)."""

    min_length: int | None = Field(
        None, ge=1, description="LCS length needed to join the demonstration pool; None = N-1."
    )
    pool_max_size: int = Field(256, ge=1, description="Dynamic pool capacity; lowest-priority entries are dropped.")


def structured_at_start(cfg: RankerConfig) -> bool:
    """Whether an endpoint with ``cfg`` starts out asking for structured output (``auto`` turns
    it off for the rest of the run when the endpoint refuses it).

    >>> structured_at_start(RankerConfig(structured_output="auto")), structured_at_start(RankerConfig(structured_output="off"))
    (True, False)
    """
    return (cfg.structured_output or "off") != "off"
