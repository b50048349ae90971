"""The black-box ranker: an OpenAI-compatible chat endpoint that ranks N responses per prompt.

One prompt (CycleAlign, Hong et al. 2023, arXiv 2310.16271, step 2), for each of
``ranker.consistency`` presentation orders (a seeded shuffle against position bias)::

    messages = [system] + demos as (user, assistant) turns + [user: query + shuffled responses [1]..[N]]
    reply    = endpoint.complete(messages)      # cache, budget, limits, retries: ranker.endpoint
    ranking  = parse_ranking(reply, N)          # unparsable -> re-ask with a correction
    ranking  = [order[j] for j in ranking]      # labels mapped back to responses

A round's prompts are ranked concurrently (:meth:`Ranker.rank_all`: ``asyncio`` and
``openai.AsyncOpenAI``, at most ``ranker.concurrency`` requests in flight, optional
requests-per-minute and tokens-per-minute limits); results come back in prompt order. The
transport lives in :mod:`cyclealign.ranker.http`, the endpoint (cache, budget, limits,
structured-output fallback, ledger) in :mod:`cyclealign.ranker.endpoint`, the pure protocol
(orders, parsing, combining samples) in :mod:`cyclealign.ranker.ranking`.

Failure policy, so that a round goes on when single prompts fail:

* transport errors (connection, timeout, 429, 5xx, a truncated or non-JSON body) are retried
  ``max_retries`` times with exponential backoff and jitter, waiting at least the server's
  ``Retry-After``; if they persist the prompt comes back **unranked** with status
  ``api_error`` and ``reason="api error: ..."`` (a resumed run asks again);
* an unparsable reply is answered with a correction message, ``max_reasks`` times, then the
  prompt comes back unranked (``unparsable``, ``reason="unparsable after K attempts: ..."``);
  an invalid judgement is never turned into a label;
* with several orders, the rankings are aggregated (``ranker.aggregate``: Kemeny or Borda,
  :mod:`cyclealign.ranker.aggregate`) and an aggregate below ``ranker.min_confidence`` leaves
  the prompt unranked (``inconsistent``); in strict mode any disagreement does;
* errors retries cannot fix (401 bad key, 403, 404 unknown model, 400/422 bad request)
  raise :class:`~cyclealign.errors.RankerError` and stop the run;
* a call that could push the run over ``ranker.max_cost_usd`` is not sent: the calls in
  flight finish, then :class:`~cyclealign.errors.BudgetError` stops the run (resumable).

The API key is held by the ``openai`` client only: it never appears in a message, a log
line, a ``repr``, the cache or a :class:`RankResult`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tenacity.wait import wait_base

from cyclealign.config.ranker import RankerConfig
from cyclealign.errors import BudgetError
from cyclealign.ranker.cache import CachedReply, ReplyCache
from cyclealign.ranker.endpoint import ChatEndpoint, ChatRequest, Usage
from cyclealign.ranker.feed import JobFeed
from cyclealign.ranker.http import CALL_ERRORS, CallRecord
from cyclealign.ranker.parse import RankingParseError, ranking_json_schema
from cyclealign.ranker.pricing import Budget, Price
from cyclealign.ranker.ranking import (
    RankJob,
    api_error_reason,
    combine_samples,
    first_ask_messages,
    parse_reply,
    presentation_order,
    unparsable_reason,
)
from cyclealign.records import Demonstration, Message, PromptRecord, RankResult, RankSample, RankStatus
from cyclealign.templates.ranker import RankerTemplates

if TYPE_CHECKING:
    import openai

__all__ = ["Ranker"]

log = logging.getLogger(__name__)


class Ranker:
    """Ranks responses with a black-box chat model behind an OpenAI-compatible API.

    The calls go through :attr:`endpoint` (a :class:`~cyclealign.ranker.endpoint.ChatEndpoint`:
    reply cache, budget, limits, retries, ledger); the Ranker builds the messages, re-asks with
    corrections and combines the presentation orders. The endpoint is either given (``endpoint=``:
    the run's, which the pairwise judge uses too) or made from the connection arguments below.

    Args:
        cfg: the ranker section of the run's config.
        endpoint: the chat endpoint to rank through (None: one made from ``base_url``, ``model``,
            ``api_key`` and the other connection arguments, which are not allowed beside it).
        base_url: the API's base URL, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        model: model name sent with each request.
        api_key: the key; kept by the ``openai`` client, never logged or shown.
        templates: the ranker's prompt templates.
        retry_wait: tenacity wait strategy between transport retries (default: exponential
            backoff with jitter, 1 s doubling up to 60 s); tests pass ``tenacity.wait_none()``.
            Either way the server's ``Retry-After`` is a lower bound.
        cache: the reply cache (None: no cache; every call is sent). ``cfg.cache=False``
            (``--no-cache``) skips reading it; replies are still stored.
        price: USD per token of ``model`` (None: unknown, costs count as 0 and no budget can apply).
        budget: the run's budget (None: no limit).
        on_call: the default cost ledger, for calls made without one (the loop passes each round's
            ledger to :meth:`rank_all`): called with a :data:`CallRecord` after each paid call.
        endpoint_id: names the endpoint in cache keys instead of ``base_url`` (the embedded
            server's port changes every run, its model does not).

    Raises:
        ConfigError: ``cfg.max_cost_usd`` is set but the model's price is unknown.
        ValueError: both ``endpoint`` and connection arguments, or neither.
    """

    def __init__(
        self,
        cfg: RankerConfig,
        *,
        templates: RankerTemplates,
        endpoint: ChatEndpoint | None = None,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        retry_wait: wait_base | None = None,
        cache: ReplyCache | None = None,
        price: Price | None = None,
        budget: Budget | None = None,
        on_call: Callable[[CallRecord], None] | None = None,
        endpoint_id: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.templates = templates
        if endpoint is not None:
            given = {"base_url": base_url, "model": model, "api_key": api_key, "retry_wait": retry_wait, "cache": cache,
                     "price": price, "budget": budget, "on_call": on_call, "endpoint_id": endpoint_id}
            if any(v is not None for v in given.values()):
                raise ValueError(f"Ranker: endpoint= and {', '.join(k for k, v in given.items() if v is not None)} (the endpoint's own)")
            self.endpoint = endpoint
        elif base_url is None or model is None or api_key is None:
            raise ValueError("Ranker: an endpoint=, or base_url=, model= and api_key=")
        else:
            self.endpoint = ChatEndpoint(
                cfg,
                base_url=base_url,
                model=model,
                api_key=api_key,
                template_hash=templates.template_hash(),
                retry_wait=retry_wait,
                cache=cache,
                price=price,
                budget=budget,
                on_call=on_call,
                endpoint_id=endpoint_id,
            )
        """The chat endpoint every call of this ranker goes through (its cache keys hold the ranker
        templates' hash, :meth:`RankerTemplates.template_hash`)."""
        self._schemas: dict[int, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"Ranker(base_url={self.base_url!r}, model={self.model!r})"

    # -- the endpoint's settings -----------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The API's base URL without credentials."""
        return self.endpoint.base_url

    @property
    def model(self) -> str:
        """The model name sent with each request."""
        return self.endpoint.model

    @property
    def cache(self) -> ReplyCache | None:
        """The reply cache (None: none)."""
        return self.endpoint.cache

    @property
    def price(self) -> Price | None:
        """USD per token of the model (None: unknown)."""
        return self.endpoint.price

    @property
    def budget(self) -> Budget:
        """The run's budget."""
        return self.endpoint.budget

    @property
    def on_call(self) -> Callable[[CallRecord], None] | None:
        """The endpoint's default cost ledger, for calls made without one (settable)."""
        return self.endpoint.on_call

    @on_call.setter
    def on_call(self, fn: Callable[[CallRecord], None] | None) -> None:
        self.endpoint.on_call = fn

    @property
    def structured(self) -> bool:
        """Whether calls ask for structured output (JSON schema); ``auto`` turns it off on refusal."""
        return self.endpoint.structured

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Nothing to close between calls: each :meth:`rank_all` opens and closes its own client."""

    def __enter__(self) -> "Ranker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sync_client(self) -> openai.OpenAI:
        """A synchronous client for administrative calls (Batch API files and jobs), with the
        ``openai`` client's own retries (see :meth:`ChatEndpoint.sync_client`)."""
        return self.endpoint.sync_client()

    # -- public API ------------------------------------------------------------------------
    def preflight(self) -> None:
        """One cheap call (a 1-token chat completion, never cached) to fail fast on a bad key, model or URL.

        Raises:
            RankerError: the key is rejected, the model or endpoint is unknown, the request is
                refused, or the server stays unreachable after the transport retries.
        """
        self.endpoint.preflight()

    def rank(
        self, prompt: PromptRecord, responses: Sequence[str], demos: Sequence[Demonstration], shuffle_seed: int = 0
    ) -> RankResult:
        """Rank one prompt's ``responses``; see :meth:`rank_all` (a list of one job).

        Raises:
            RankerError, BudgetError: as :meth:`rank_all`.
            ValueError: fewer than 2 responses.
        """
        (result,) = self.rank_all([RankJob(prompt, list(responses), list(demos), shuffle_seed)])
        assert result is not None
        return result

    def rank_all(
        self,
        jobs: Sequence[RankJob] | JobFeed[RankJob],
        on_result: Callable[[int, RankResult], None] | None = None,
        on_call: Callable[[CallRecord], None] | None = None,
    ) -> list[RankResult]:
        """Rank every job concurrently (at most ``cfg.concurrency`` requests in flight).

        Args:
            jobs: the prompts to rank, or a :class:`~cyclealign.ranker.feed.JobFeed` that another
                thread fills while they are ranked (the pipelined round): each job goes out as
                soon as it is put and a worker is free; the call returns once the feed is closed
                and every job is done.
            on_result: called as ``on_result(index, result)`` the moment each job finishes (in
                completion order, in this thread): the loop persists results there.
            on_call: the cost ledger, called with a :data:`CallRecord` after each paid call
                (None: the endpoint's default ledger, :attr:`on_call`).

        Returns:
            One :class:`RankResult` per job, **in job order** (a feed's: put order): ranked (``ranking`` a 0-based
            permutation of the job's responses, best first), or unranked with its ``status``
            and ``reason`` ``"unparsable after K attempts: <why>"``, ``"api error: <type>: <message>"``
            or ``"inconsistent across K presentation orders: ..."``. Token usage, calls, cost,
            raw replies and presentation orders are filled in either way.

        Raises:
            RankerError: the API refused a request in a way retrying cannot fix (401, 403, 404,
                400, 422); jobs still in flight are cancelled.
            BudgetError: a call was held back by the budget; jobs in flight finished first and
                were passed to ``on_result``; the others were not started.
            ValueError: a job with fewer than 2 responses (a feed's: when it comes up).
            asyncio.CancelledError: the feed was cancelled (results passed to ``on_result`` are kept).
        """
        if not isinstance(jobs, JobFeed):
            for job in jobs:
                _check_job(job)
        results: dict[int, RankResult] = {}

        async def one(i: int, job: RankJob) -> None:
            _check_job(job)
            results[i] = result = await self._rank_job(job, on_call)
            if on_result is not None:
                on_result(i, result)

        held = self.endpoint.run_pool(jobs, one)
        if held:
            raise BudgetError(
                f"{self.budget.reached()}; {len(jobs) - held} of {len(jobs)} prompts ranked in this "
                "call were kept. Raise --max-cost-usd and --resume to go on."
            )
        return [results[i] for i in sorted(results)]

    def job_order(self, job: RankJob, k: int) -> list[int]:
        """The presentation order of sample ``k`` of ``job``."""
        return presentation_order(job.shuffle_seed, job.prompt.id, k, len(job.responses), self.cfg.shuffle)

    def first_request(self, job: RankJob, k: int) -> tuple[str, dict[str, Any]]:
        """``(cache key, request body)`` of the first ask of sample ``k`` of ``job`` (for the Batch API)."""
        order, messages = self._first_messages(job, k)
        return self.endpoint.prepare(self._request(messages, self.cfg.temperature, order))

    def cost_of(self, reply: CachedReply) -> float:
        """USD billed for ``reply`` (its ``usage``; Batch API replies at the batch discount)."""
        return self.endpoint.cost_of(reply)

    def record_batch_reply(self, key: str, reply: CachedReply, on_call: Callable[[CallRecord], None] | None = None) -> float:
        """Store a Batch API reply in the cache and the cost ledger ``on_call`` (None: the default);
        returns its cost (USD)."""
        return self.endpoint.record_batch_reply(key, reply, on_call)

    # -- one prompt ------------------------------------------------------------------------
    async def _rank_job(self, job: RankJob, on_call: Callable[[CallRecord], None] | None) -> RankResult:
        t0 = time.perf_counter()
        usage = Usage()
        if self.cfg.consistency == 1:
            samples = [await self._ask(job, 0, usage, on_call)]  # no extra task per prompt in the common case
        else:
            samples = list(await asyncio.gather(*(self._ask(job, k, usage, on_call) for k in range(self.cfg.consistency))))
        latency_s = time.perf_counter() - t0
        combined = combine_samples(samples, self.cfg.aggregate, self.cfg.min_confidence)
        result = RankResult(
            prompt_id=job.prompt.id,
            ranking=combined.ranking,
            reason=combined.reason,
            status=combined.status,
            samples=samples,
            consistent=combined.consistent,
            confidence=combined.confidence,
            pair_agreement=combined.pair_agreement,
            attempts=usage.attempts,
            api_calls=usage.api_calls,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=usage.cost_usd,
            latency_s=latency_s,
        )
        if result.reason:
            log.info("ranker: prompt %s unranked: %s", job.prompt.id, result.reason)
        return result

    def _first_messages(self, job: RankJob, k: int) -> tuple[list[int], list[Message]]:
        """``(presentation order, messages)`` of the first ask of sample ``k`` of ``job``."""
        return first_ask_messages(self.templates, job, k, shuffle=self.cfg.shuffle, json_output=self.endpoint.structured)

    def _request(self, messages: list[Message], temperature: float, order: list[int]) -> ChatRequest:
        """The endpoint request of one ask: its ranking schema goes out while structured output is on."""
        n = len(order)
        schema = self._schemas.get(n)
        if schema is None:
            schema = self._schemas[n] = ranking_json_schema(n)
        return ChatRequest(messages, temperature, schema, order)

    async def _ask(self, job: RankJob, k: int, usage: Usage, on_call: Callable[[CallRecord], None] | None) -> RankSample:
        """One presentation order: ask, re-ask with corrections, map the ranking back."""
        n = len(job.responses)
        json_output = self.endpoint.structured
        order, messages = self._first_messages(job, k)
        replies: list[str] = []
        reason = "no reply"
        for attempt in range(self.cfg.max_reasks + 1):
            temperature = self.cfg.temperature if attempt == 0 else self.cfg.reask_temperature
            try:
                reply = await self.endpoint.complete(self._request(messages, temperature, order), usage, on_call)
            except CALL_ERRORS as e:  # retryable ones, after the retries ran out
                why = api_error_reason(self.endpoint.describe(e))
                log.warning("ranker: prompt %s: %s", job.prompt.id, why)
                return RankSample(order, replies, None, why, status=RankStatus.API_ERROR)
            text = reply.get("content") or ""
            replies.append(text)
            try:
                ranking = parse_reply(text, n, order, bool(self.cfg.complete_missing_last))
            except RankingParseError as e:
                reason = e.reason
                log.info("ranker: prompt %s: unparsable reply (%s): %r", job.prompt.id, reason, text[:200])
                messages = [
                    *messages,
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": self.templates.correction(reason, n, json_output)},
                ]
                continue
            return RankSample(order, replies, ranking, None, status=RankStatus.RANKED)
        return RankSample(order, replies, None, unparsable_reason(len(replies), reason), status=RankStatus.UNPARSABLE)


def _check_job(job: RankJob) -> None:
    """Raises ValueError for a job with fewer than 2 responses (nothing to rank)."""
    if len(job.responses) < 2:
        raise ValueError(f"ranking needs at least 2 responses, got {len(job.responses)} for prompt {job.prompt.id!r}")
