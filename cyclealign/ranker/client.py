"""The black-box ranker: an OpenAI-compatible chat endpoint that ranks N responses per prompt.

One prompt (CycleAlign, Hong et al. 2023, arXiv 2310.16271, step 2), for each of
``ranker.consistency`` presentation orders (a seeded shuffle against position bias)::

    messages = [system] + demos as (user, assistant) turns + [user: query + shuffled responses [1]..[N]]
    reply    = cache.get(key) or chat.completions.create(...)   # stored in the cache before use
    ranking  = parse_ranking(reply, N)                          # unparsable -> re-ask with a correction
    ranking  = [order[j] for j in ranking]                      # labels mapped back to responses

A round's prompts are ranked concurrently (:meth:`Ranker.rank_all`: ``asyncio`` and
``openai.AsyncOpenAI``, at most ``ranker.concurrency`` requests in flight, optional
requests-per-minute and tokens-per-minute limits); results come back in prompt order.

Failure policy, so that a round goes on when single prompts fail:

* transport errors (connection, timeout, 429, 5xx, a truncated or non-JSON body) are retried
  ``max_retries`` times with exponential backoff and jitter, waiting at least the server's
  ``Retry-After``; if they persist the prompt comes back **unranked** with
  ``reason="api error: ..."`` (a resumed run asks again);
* an unparsable reply is answered with a correction message, ``max_reasks`` times, then the
  prompt comes back unranked with ``reason="unparsable after K attempts: ..."``; an invalid
  judgement is never turned into a label;
* with several orders, rankings that disagree leave the prompt unranked (``"inconsistent ..."``);
* errors retries cannot fix (401 bad key, 403, 404 unknown model, 400/422 bad request)
  raise :class:`~cyclealign.errors.RankerError` and stop the run;
* a call that could push the run over ``ranker.max_cost_usd`` is not sent: the calls in
  flight finish, then :class:`~cyclealign.errors.BudgetError` stops the run (resumable).

The API key is held by the ``openai`` client only: it never appears in a message, a log
line, a ``repr``, the cache or a :class:`RankResult`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai
import tenacity
from aiolimiter import AsyncLimiter
from tenacity.wait import wait_base

from cyclealign.config import RankerConfig
from cyclealign.errors import BudgetError, ConfigError, RankerError
from cyclealign.ranker.cache import CachedReply, ReplyCache, request_key
from cyclealign.ranker.parse import RankingParseError, parse_ranking, ranking_json_schema
from cyclealign.ranker.pricing import FREE, Budget, BudgetExhausted, Price, estimate_tokens
from cyclealign.ranker.templates import RankerTemplates
from cyclealign.records import Demonstration, Message, PromptRecord, RankResult, RankSample

__all__ = [
    "RETRYABLE_ERRORS",
    "MalformedResponseError",
    "RankJob",
    "Ranker",
    "api_key_from_env",
    "combine_samples",
    "first_ask_messages",
    "presentation_order",
    "reparse_sample",
    "retry_after_s",
    "structured_at_start",
    "wait_retry_after",
]

log = logging.getLogger(__name__)


def _transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP library's transport errors (``httpx2`` in recent ``openai`` releases, ``httpx`` before)."""
    import importlib

    for name in ("httpx2", "httpx"):
        try:
            return (importlib.import_module(name).TransportError,)
        except (ImportError, AttributeError):
            continue
    return ()


_BODY_ERRORS: tuple[type[Exception], ...] = (json.JSONDecodeError, *_transport_errors())
"""A response body that broke off or is not JSON, as raised while reading it."""


class MalformedResponseError(Exception):
    """The server answered 200 with a body that is not a chat completion (truncated, HTML, bad JSON)."""


RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    openai.APIConnectionError,  # refused, reset, dropped, and APITimeoutError
    openai.RateLimitError,  # 429
    openai.InternalServerError,  # 5xx
    MalformedResponseError,  # a broken 200 body: the same request may come back whole
)
"""Errors worth retrying: the same request may succeed a moment later."""
MAX_RETRY_AFTER_S = 300.0
"""A server's ``Retry-After`` is honoured up to this many seconds."""

_MAX_MESSAGE_CHARS = 300


def retry_after_s(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds a server asks us to wait, from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date).

    >>> retry_after_s({"retry-after": "2"})
    2.0
    >>> retry_after_s({"retry-after-ms": "1500", "retry-after": "9"})
    1.5
    >>> retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0)
    10.0
    >>> retry_after_s({"retry-after": "soon"}) is None
    True
    """
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = lower.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            if name != "retry-after":
                continue
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            if when is None:
                continue
            seconds = when.timestamp() - (time.time() if now is None else now)
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


class wait_retry_after(wait_base):
    """Tenacity wait: ``fallback``'s wait, but at least the failed response's ``Retry-After``.

    Applies to any HTTP error carrying the header (429, and 503 from some servers); capped at
    ``max_s`` so a misbehaving server cannot stall the run for hours.
    """

    def __init__(self, fallback: wait_base, max_s: float = MAX_RETRY_AFTER_S) -> None:
        self.fallback = fallback
        self.max_s = max_s

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        wait = float(self.fallback(retry_state))
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        if isinstance(exc, openai.APIStatusError):
            asked = retry_after_s(exc.response.headers)
            if asked is not None:
                wait = max(wait, min(asked, self.max_s))
        return wait


def api_key_from_env(cfg: RankerConfig, environ: Mapping[str, str]) -> str:
    """The ranker API key, from the environment variable named by ``cfg.api_key_env``.

    Used only with a user-given ``ranker.base_url`` (the embedded server needs no key).

    Raises:
        RankerError: the variable is unset or empty (the message names the variable, never a value).
    """
    key = (environ.get(cfg.api_key_env) or "").strip()
    if not key:
        url = _without_userinfo(cfg.base_url or "")
        raise RankerError(
            f"the ranker API key is missing: set the environment variable {cfg.api_key_env} "
            f"(needed for ranker.base_url={url}; ranker.api_key_env names another variable)"
        )
    return key


def _without_userinfo(url: str) -> str:
    """``url`` without any ``user:password@`` part, for messages.

    >>> _without_userinfo("https://bob:hunter2@llm.example.com/v1")
    'https://***@llm.example.com/v1'
    """
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]+@", r"\1***@", url)


def combine_samples(samples: Sequence[RankSample]) -> tuple[list[int] | None, str | None, bool | None]:
    """One prompt's ``(ranking, reason, consistent)`` from its samples (presentation orders).

    An API error wins (the prompt is asked again on resume), then an unparsable sample; with
    several samples the ranking is kept only when all agree.

    >>> combine_samples([RankSample([0, 1], ["[2] > [1]"], [1, 0])])
    ([1, 0], None, None)
    >>> combine_samples([RankSample([0, 1], [], [1, 0]), RankSample([1, 0], [], [0, 1])])
    (None, 'inconsistent across 2 presentation orders: [2] > [1]; [1] > [2]', False)
    """
    failed = [s for s in samples if s.ranking is None]
    api_errors = [s for s in failed if (s.reason or "").startswith("api error")]
    if api_errors:
        return None, api_errors[0].reason, None
    if failed:
        return None, failed[0].reason, None
    if len(samples) == 1:
        return samples[0].ranking, None, None
    first = samples[0].ranking
    if all(s.ranking == first for s in samples):
        return first, None, True
    shown = "; ".join(" > ".join(f"[{i + 1}]" for i in s.ranking or []) for s in samples)
    return None, f"inconsistent across {len(samples)} presentation orders: {shown}", False


def parse_reply(text: str, n: int, order: list[int], complete_last: bool) -> list[int]:
    """The ranking a reply gives, mapped back from presentation labels through ``order``
    (response indices, best first).

    Raises:
        RankingParseError: an empty reply, or one :func:`parse_ranking` rejects.

    >>> parse_reply("[2] > [1] > [3]", 3, [2, 0, 1], False)
    [0, 2, 1]
    """
    if not text.strip():
        raise RankingParseError("empty reply")
    return [order[j] for j in parse_ranking(text, n, complete_last=complete_last)]


def unparsable_reason(attempts: int, reason: str) -> str:
    """The ``reason`` of a sample none of whose ``attempts`` replies parsed."""
    return f"unparsable after {attempts} attempts: {reason}"


def reparse_sample(sample: RankSample, n: int, complete_last: bool) -> RankSample:
    """``sample`` with its ranking re-derived from its stored replies (no call): the first reply
    that parses, mapped back through ``sample.order``. API-error samples are returned as they are.

    >>> reparse_sample(RankSample([1, 0], ["[2] > [1]"], None, "unparsable after 1 attempts: x"), 2, False)
    RankSample(order=[1, 0], replies=['[2] > [1]'], ranking=[0, 1], reason=None)
    """
    if (sample.reason or "").startswith("api error"):
        return sample
    reason = "no reply"
    for text in sample.replies:
        try:
            ranking = parse_reply(text, n, sample.order, complete_last)
        except RankingParseError as e:
            reason = e.reason
            continue
        return RankSample(sample.order, list(sample.replies), ranking, None)
    return RankSample(sample.order, list(sample.replies), None, unparsable_reason(len(sample.replies), reason))


def presentation_order(seed: int, prompt_id: str, sample: int, n: int, shuffle: bool = True) -> list[int]:
    """The order the ``n`` responses are shown in: label ``[j + 1]`` shows response ``order[j]``.

    A seeded shuffle (the same on every machine and re-run) against the ranker's position
    bias; the identity when ``shuffle`` is off.

    >>> presentation_order(0, "p1", 0, 4) == presentation_order(0, "p1", 0, 4)
    True
    >>> sorted(presentation_order(0, "p1", 1, 4))
    [0, 1, 2, 3]
    >>> presentation_order(0, "p1", 0, 3, shuffle=False)
    [0, 1, 2]
    """
    order = list(range(n))
    if shuffle:
        random.Random(f"{seed}:{prompt_id}:{sample}").shuffle(order)
    return order


@dataclass(frozen=True)
class RankJob:
    """One prompt to rank: its responses (in generation order) and the demonstrations to show.

    Attributes:
        prompt: the prompt; its :attr:`~PromptRecord.query_text` is shown as the conversation.
        responses: the N >= 2 responses.
        demos: in-context demonstrations, rendered as earlier user/assistant turns.
        shuffle_seed: seed of the presentation orders (the loop passes ``seed + round``).
    """

    prompt: PromptRecord
    responses: list[str]
    demos: list[Demonstration] = field(default_factory=list)
    shuffle_seed: int = 0


def structured_at_start(cfg: RankerConfig) -> bool:
    """Whether a ranker with ``cfg`` starts out asking for structured output (``auto`` turns
    it off for the rest of the run when the endpoint refuses it).

    >>> structured_at_start(RankerConfig(structured_output="auto")), structured_at_start(RankerConfig(structured_output="off"))
    (True, False)
    """
    return (cfg.structured_output or "off") != "off"


def first_ask_messages(
    templates: RankerTemplates, job: RankJob, k: int, *, shuffle: bool, json_output: bool
) -> tuple[list[int], list[Message]]:
    """``(presentation order, chat messages)`` of the first ask of sample ``k`` of ``job``: what
    the ranker sends before any correction re-ask (``cyclealign templates render`` shows the same).

    Args:
        templates: the ranker templates in use.
        job: the prompt, its responses, demonstrations and shuffle seed.
        k: the sample (presentation order) index, ``0 <= k < ranker.consistency``.
        shuffle: ``ranker.shuffle`` (False: responses shown in generation order).
        json_output: the call asks for structured output (demonstrations answer in JSON).

    Raises:
        TemplateError: a template fails to render (file named).
    """
    order = presentation_order(job.shuffle_seed, job.prompt.id, k, len(job.responses), shuffle)
    messages = templates.build_messages(
        job.prompt.query_text, [job.responses[i] for i in order], job.demos, json_output=json_output
    )
    return order, messages


@dataclass
class _Usage:
    attempts: int = 0
    api_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, reply: CachedReply, paid_usd: float | None) -> None:
        usage = reply.get("usage") or {}
        self.attempts += 1
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)
        if paid_usd is not None:
            self.api_calls += 1
            self.cost_usd += paid_usd


class _StructuredUnsupported(Exception):
    """The endpoint refused ``response_format``; the caller retries the call without it."""


CallRecord = dict[str, Any]
"""One paid call, as passed to ``on_call``: ``{"key", "model", "prompt_tokens", "completion_tokens",
"cost_usd", "batch", "time"}`` (no message text, no key)."""


class Ranker:
    """Ranks responses with a black-box chat model behind an OpenAI-compatible API.

    Args:
        cfg: the ranker section of the run's config.
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
        on_call: called with a :data:`CallRecord` after each paid call (the loop's cost ledger).
        endpoint_id: names the endpoint in cache keys instead of ``base_url`` (the embedded
            server's port changes every run, its model does not).

    Raises:
        ConfigError: ``cfg.max_cost_usd`` is set but the model's price is unknown.
    """

    def __init__(
        self,
        cfg: RankerConfig,
        *,
        base_url: str,
        model: str,
        api_key: str,
        templates: RankerTemplates,
        retry_wait: wait_base | None = None,
        cache: ReplyCache | None = None,
        price: Price | None = None,
        budget: Budget | None = None,
        on_call: Callable[[CallRecord], None] | None = None,
        endpoint_id: str | None = None,
    ) -> None:
        self.cfg = cfg
        self._base_url = base_url
        self.base_url = _without_userinfo(base_url)
        self._endpoint = endpoint_id or self.base_url
        self.model = model
        self.templates = templates
        self.cache = cache
        self.price = price
        self.budget = budget or Budget(None)
        if self.budget.limit_usd is not None and price is None:
            raise ConfigError(
                f"ranker.max_cost_usd is set but the price of model {model!r} is unknown: add it to a "
                "ranker.prices_path table or set ranker.price_input_per_mtok and ranker.price_output_per_mtok"
            )
        self.on_call = on_call
        self._api_key = api_key
        self._secrets = [s for s in {api_key, api_key.strip()} if len(s) >= 4]
        fallback = retry_wait if retry_wait is not None else tenacity.wait_exponential_jitter(initial=1, max=60)
        self._wait = wait_retry_after(fallback)
        self._template_hash = templates.template_hash()
        self._structured = structured_at_start(cfg)
        self._client: openai.AsyncOpenAI | None = None
        self._slots: asyncio.Semaphore | None = None
        self._rpm: AsyncLimiter | None = None
        self._tpm: AsyncLimiter | None = None

    def __repr__(self) -> str:
        return f"Ranker(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def structured(self) -> bool:
        """Whether calls ask for structured output (JSON schema); ``auto`` turns it off on refusal."""
        return self._structured

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Nothing to close between calls: each :meth:`rank_all` opens and closes its own client."""

    def __enter__(self) -> "Ranker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sync_client(self) -> openai.OpenAI:
        """A synchronous client for administrative calls (Batch API files and jobs), with the
        ``openai`` client's own retries (``cfg.max_retries``, honouring ``Retry-After``)."""
        return openai.OpenAI(
            api_key=self._api_key, base_url=self._base_url, max_retries=self.cfg.max_retries, timeout=self.cfg.timeout_s
        )

    def _run(self, coro_fn: Callable[[], Any]) -> Any:
        """Run ``coro_fn()`` in a fresh event loop with a fresh async client and limiters."""

        async def main() -> Any:
            # aiohttp as the transport: the openai SDK's recommendation for concurrency (httpx's
            # connection pool costs ~1 ms of CPU per request with dozens of connections).
            client = openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=self._base_url,
                max_retries=0,
                timeout=self.cfg.timeout_s,
                http_client=openai.DefaultAioHttpClient(timeout=self.cfg.timeout_s),
            )
            self._client = client
            self._slots = asyncio.Semaphore(self.cfg.concurrency)
            rpm, tpm = self.cfg.requests_per_minute, self.cfg.tokens_per_minute
            self._rpm = AsyncLimiter(rpm, 60.0) if rpm else None
            self._tpm = AsyncLimiter(tpm, 60.0) if tpm else None
            try:
                return await coro_fn()
            finally:
                await client.close()
                self._client = None

        return asyncio.run(main())

    # -- public API ------------------------------------------------------------------------
    def preflight(self) -> None:
        """One cheap call (a 1-token chat completion, never cached) to fail fast on a bad key, model or URL.

        Raises:
            RankerError: the key is rejected, the model or endpoint is unknown, the request is
                refused, or the server stays unreachable after the transport retries.
        """

        async def ping() -> None:
            body = {"model": self.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
            try:
                await self._create(body)
            except RankerError:
                raise
            except (openai.APIError, MalformedResponseError) as e:
                raise RankerError(
                    f"the ranker API at {self.base_url} failed the preflight call after "
                    f"{self.cfg.max_retries + 1} attempt(s): {self._describe(e)}"
                ) from None

        self._run(ping)

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
        self, jobs: Sequence[RankJob], on_result: Callable[[int, RankResult], None] | None = None
    ) -> list[RankResult]:
        """Rank every job concurrently (at most ``cfg.concurrency`` requests in flight).

        Args:
            jobs: the prompts to rank.
            on_result: called as ``on_result(index, result)`` the moment each job finishes (in
                completion order, in this thread): the loop persists results there.

        Returns:
            One :class:`RankResult` per job, **in job order**: ranked (``ranking`` a 0-based
            permutation of the job's responses, best first), or unranked with ``reason``
            ``"unparsable after K attempts: <why>"``, ``"api error: <type>: <message>"`` or
            ``"inconsistent across K presentation orders: ..."``. Token usage, calls, cost,
            raw replies and presentation orders are filled in either way.

        Raises:
            RankerError: the API refused a request in a way retrying cannot fix (401, 403, 404,
                400, 422); jobs still in flight are cancelled.
            BudgetError: a call was held back by the budget; jobs in flight finished first and
                were passed to ``on_result``; the others were not started.
            ValueError: a job with fewer than 2 responses.
        """
        for job in jobs:
            if len(job.responses) < 2:
                raise ValueError(f"ranking needs at least 2 responses, got {len(job.responses)} for prompt {job.prompt.id!r}")
        results: list[RankResult | None] = [None] * len(jobs)

        async def one(i: int, job: RankJob) -> None:
            results[i] = result = await self._rank_job(job)
            if on_result is not None:
                on_result(i, result)

        held = self._run_pool(jobs, one)
        if held:
            raise BudgetError(
                f"{self.budget.reached()}; {len(jobs) - held} of {len(jobs)} prompts ranked in this "
                "call were kept. Raise --max-cost-usd and --resume to go on."
            )
        return [r for r in results if r is not None]

    def _run_pool(self, items: Sequence[Any], one: Callable[[int, Any], Any]) -> int:
        """Run ``await one(i, item)`` for every item with ``cfg.concurrency`` workers.

        Returns:
            How many items the budget held back (their ``one`` raised :class:`BudgetExhausted`).
        """
        pending = iter(enumerate(items))
        held = 0

        async def worker() -> None:
            nonlocal held
            # Items are prepared (messages rendered, cache looked up) only when a worker is free,
            # so the first requests go out at once and memory stays flat for large rounds.
            for i, item in pending:
                try:
                    await one(i, item)
                except BudgetExhausted:
                    held += 1

        async def all_items() -> None:
            tasks = [asyncio.ensure_future(worker()) for _ in range(min(self.cfg.concurrency, len(items)))]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        self._run(all_items)
        return held

    def ask_all(self, conversations: Sequence[list[Message]], max_tokens: int = 16) -> list[CachedReply | Exception]:
        """Send each conversation once, as the rankings are sent (reply cache, budget, retries,
        concurrency and rate limits), without structured output; used by evaluation's judge.

        Returns:
            Per conversation, in order: the reply (``{"content", "usage", ...}``), or the
            transport error that outlived the retries.

        Raises:
            RankerError: a refusal retrying cannot fix (401, 403, 404, 400).
            BudgetError: the budget held a call back (the replies received are in the cache).
        """
        results: list[CachedReply | Exception | None] = [None] * len(conversations)

        async def one(i: int, messages: list[Message]) -> None:
            try:
                results[i] = await self._complete(
                    messages, self.cfg.temperature, 2, None, _Usage(), structured=False, max_tokens=max_tokens
                )
            except (openai.APIError, MalformedResponseError) as e:
                results[i] = e

        if self._run_pool(conversations, one):
            raise BudgetError(
                f"{self.budget.reached()}. Raise --max-cost-usd and run again: answers already paid for are cached."
            )
        return [r for r in results if r is not None]

    # -- one prompt ------------------------------------------------------------------------
    async def _rank_job(self, job: RankJob) -> RankResult:
        t0 = time.perf_counter()
        usage = _Usage()
        if self.cfg.consistency == 1:
            samples = [await self._ask(job, 0, usage)]  # no extra task per prompt in the common case
        else:
            samples = await asyncio.gather(*(self._ask(job, k, usage) for k in range(self.cfg.consistency)))
        result = RankResult(
            prompt_id=job.prompt.id,
            ranking=None,
            samples=list(samples),
            attempts=usage.attempts,
            api_calls=usage.api_calls,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=usage.cost_usd,
            latency_s=time.perf_counter() - t0,
        )
        result.ranking, result.reason, result.consistent = combine_samples(result.samples)
        if result.reason:
            log.info("ranker: prompt %s unranked: %s", job.prompt.id, result.reason)
        return result

    def job_order(self, job: RankJob, k: int) -> list[int]:
        """The presentation order of sample ``k`` of ``job``."""
        return presentation_order(job.shuffle_seed, job.prompt.id, k, len(job.responses), self.cfg.shuffle)

    def _first_messages(self, job: RankJob, k: int) -> tuple[list[int], list[Message]]:
        """``(presentation order, messages)`` of the first ask of sample ``k`` of ``job``."""
        return first_ask_messages(self.templates, job, k, shuffle=self.cfg.shuffle, json_output=self._structured)

    def first_request(self, job: RankJob, k: int) -> tuple[str, dict[str, Any]]:
        """``(cache key, request body)`` of the first ask of sample ``k`` of ``job`` (for the Batch API)."""
        order, messages = self._first_messages(job, k)
        body = self._body(messages, self.cfg.temperature, len(order))
        return self._key(body, order), body

    async def _ask(self, job: RankJob, k: int, usage: _Usage) -> RankSample:
        """One presentation order: ask, re-ask with corrections, map the ranking back."""
        n = len(job.responses)
        json_output = self._structured
        order, messages = self._first_messages(job, k)
        sample = RankSample(order=order)
        reason = "no reply"
        for attempt in range(self.cfg.max_reasks + 1):
            temperature = self.cfg.temperature if attempt == 0 else self.cfg.reask_temperature
            try:
                reply = await self._complete(messages, temperature, n, order, usage)
            except (openai.APIError, MalformedResponseError) as e:  # retryable ones, after the retries ran out
                sample.reason = f"api error: {self._describe(e)}"
                log.warning("ranker: prompt %s: %s", job.prompt.id, sample.reason)
                return sample
            text = reply.get("content") or ""
            sample.replies.append(text)
            try:
                sample.ranking = parse_reply(text, n, order, bool(self.cfg.complete_missing_last))
                return sample
            except RankingParseError as e:
                reason = e.reason
                log.info("ranker: prompt %s: unparsable reply (%s): %r", job.prompt.id, reason, text[:200])
                messages = [
                    *messages,
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": self.templates.correction(reason, n, json_output)},
                ]
        sample.reason = unparsable_reason(len(sample.replies), reason)
        return sample

    # -- one completion --------------------------------------------------------------------
    def _body(
        self, messages: list[Message], temperature: float, n: int, structured: bool | None = None, max_tokens: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens or self.cfg.max_tokens,
        }
        if self._structured if structured is None else structured:
            body["response_format"] = ranking_json_schema(n)
        return body

    def _key(self, body: dict[str, Any], order: list[int] | None) -> str:
        return request_key(base_url=self._endpoint, request=body, template_hash=self._template_hash, order=order)

    def cost_of(self, reply: CachedReply) -> float:
        """USD billed for ``reply`` (its ``usage``; Batch API replies at the batch discount)."""
        usage = reply.get("usage") or {}
        price = self.price or FREE
        return price.cost_usd(
            int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), bool(reply.get("batch"))
        )

    async def _complete(
        self,
        messages: list[Message],
        temperature: float,
        n: int,
        order: list[int] | None,
        usage: _Usage,
        structured: bool | None = None,
        max_tokens: int | None = None,
    ) -> CachedReply:
        """One completion: from the cache, or sent (budget, concurrency and rate limits applied)
        and stored in the cache before it is returned."""
        while True:
            body = self._body(messages, temperature, n, structured, max_tokens)
            key = self._key(body, order)
            if self.cache is not None and self.cfg.cache:
                hit = self.cache.get(key)
                if hit is not None:
                    usage.add(hit, None)
                    return hit
            price = self.price or FREE
            # The prompt estimate only feeds the budget reservation and the TPM limiter.
            prompt_estimate = estimate_tokens(messages) if price != FREE or self._tpm is not None else 0
            reserved = price.cost_usd(prompt_estimate, body["max_tokens"])
            self.budget.reserve(reserved)
            paid = 0.0
            try:
                assert self._slots is not None
                async with self._slots:
                    if self._rpm is not None:
                        await self._rpm.acquire()
                    if self._tpm is not None:
                        await self._tpm.acquire(min(prompt_estimate + body["max_tokens"], self._tpm.max_rate))
                    try:
                        fallback = self.cfg.structured_output == "auto" and structured is None
                        completion = await self._create(body, structured_fallback=fallback)
                    except _StructuredUnsupported:
                        continue
                    reply = _reply_of(completion)
                    if self.cache is not None:
                        # persisted before anything uses it, and before the slot frees up for the next call
                        self.cache.put(key, self.model, reply)
                paid = self._account(key, reply)
                usage.add(reply, paid)
                return reply
            finally:
                self.budget.settle(reserved, paid)

    async def _create(self, body: dict[str, Any], structured_fallback: bool = False) -> Any:
        """One chat completion, with tenacity retries on :data:`RETRYABLE_ERRORS`.

        Raises:
            RankerError: on a non-retryable refusal (see :meth:`_fatal`).
            _StructuredUnsupported: ``structured_fallback`` and the endpoint refused
                ``response_format`` (structured output is then off for the rest of the run).
            openai.APIError, MalformedResponseError: a retryable error that outlived the retries.
        """
        assert self._client is not None
        client = self._client

        async def call() -> dict[str, Any]:
            try:
                # The documented low-level call (openai README, "undocumented endpoints"): the body
                # goes out as built and the JSON comes back as a dict, skipping the SDK's per-message
                # parameter transform and response model construction (together ~1 ms of CPU a
                # request, which caps throughput at high concurrency).
                data = await client.post("/chat/completions", body=body, cast_to=dict)
            except _BODY_ERRORS as e:
                raise MalformedResponseError(f"unreadable response body ({type(e).__name__}: {e})") from None
            return check_completion(data)

        async def with_retries() -> dict[str, Any]:
            # The first attempt runs bare (no retry machinery on the common, successful path);
            # a retryable failure replays into tenacity as its attempt 1, so the backoff and
            # Retry-After waits are exactly tenacity's.
            try:
                return await call()
            except RETRYABLE_ERRORS as e:
                if self.cfg.max_retries == 0:
                    raise
                first: list[BaseException] = [e]
            retrying = tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(self.cfg.max_retries + 1),
                wait=self._wait,
                retry=tenacity.retry_if_exception_type(RETRYABLE_ERRORS),
                before_sleep=self._log_retry,
                reraise=True,
            )

            async def attempt() -> dict[str, Any]:
                if first:
                    raise first.pop()
                return await call()

            return await retrying(attempt)

        try:
            return await with_retries()
        except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
            if structured_fallback and "response_format" in body and self._structured:
                self._structured = False
                log.warning(
                    "ranker: %s refused structured output (HTTP %s: %s); using text answers from now on",
                    self.base_url,
                    e.status_code,
                    self._server_message(e),
                )
                raise _StructuredUnsupported() from None
            raise RankerError(self._fatal(e)) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise RankerError(self._fatal(e)) from None

    def record_batch_reply(self, key: str, reply: CachedReply) -> float:
        """Store a Batch API reply in the cache and the cost ledger; returns its cost (USD)."""
        reply = {**reply, "batch": True}
        if self.cache is not None:
            self.cache.put(key, self.model, reply)
        paid = self._account(key, reply)
        self.budget.settle(0.0, paid)
        return paid

    def _account(self, key: str, reply: CachedReply) -> float:
        """USD billed for the paid ``reply`` of request ``key``, written to the cost ledger (``on_call``)."""
        paid = self.cost_of(reply)
        if self.on_call is not None:
            self.on_call(_call_record(key, self.model, reply, paid))
        return paid

    # -- messages --------------------------------------------------------------------------
    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        sleep = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "ranker call failed (%s); retry %d/%d in %.1f s",
            self._describe(exc) if exc else "?",
            state.attempt_number,
            self.cfg.max_retries,
            sleep,
        )

    def _redact(self, text: str) -> str:
        """``text`` with the API key (and anything that looks like a key) masked, shortened."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = re.sub(r"\b(sk|rk|pk)-[A-Za-z0-9_\-*.]{4,}", r"\1-***", text)
        text = re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)
        text = " ".join(text.split())
        return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."

    def _server_message(self, e: openai.APIError) -> str:
        """The server's own error message, redacted and shortened."""
        body = e.body
        msg: Any = None
        if isinstance(body, dict):
            msg = body.get("message") or body.get("detail") or body.get("error")
        elif isinstance(body, str) and body.strip():
            msg = body
        if msg is None or isinstance(msg, (dict, list)):
            msg = e.message if msg is None else str(msg)
        return self._redact(str(msg))

    def _describe(self, e: BaseException) -> str:
        """``"<ExceptionType>: <short message>"`` for logs and ``RankResult.reason``."""
        if isinstance(e, openai.APIStatusError):
            return f"{type(e).__name__}: HTTP {e.status_code}: {self._server_message(e)}"
        return f"{type(e).__name__}: {self._redact(str(e))}"

    def _fatal(self, e: openai.APIStatusError) -> str:
        where = f"at {self.base_url}"
        if isinstance(e, openai.AuthenticationError):
            return (
                f"the ranker API rejected the key (401) {where}; check the key in the environment "
                f"variable {self.cfg.api_key_env}"
            )
        detail = self._server_message(e)
        if isinstance(e, openai.PermissionDeniedError):
            return f"the ranker API denied access (403) to model {self.model!r} {where}: {detail}"
        if isinstance(e, openai.NotFoundError):
            return (
                f"the ranker API found no model {self.model!r} or no chat endpoint (404) {where} "
                f"(ranker.base_url usually ends in /v1): {detail}"
            )
        return f"the ranker API rejected the request ({e.status_code}) for model {self.model!r} {where}: {detail}"


def check_completion(data: Any) -> dict[str, Any]:
    """``data`` if it is a chat completion object (a dict with a ``choices`` list).

    Raises:
        MalformedResponseError: anything else (an HTML page, a JSON object of another shape).
    """
    if isinstance(data, dict) and isinstance(data.get("choices"), list):
        return data
    shown = data if isinstance(data, str) else json.dumps(data)[:200] if isinstance(data, (dict, list)) else type(data).__name__
    raise MalformedResponseError(f"the response is not a chat completion: {str(shown)[:120]!r}")


def _reply_of(completion: dict[str, Any]) -> CachedReply:
    """The parts of a chat completion (JSON object) the ranker keeps: content, usage, finish reason."""
    choices = completion.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    usage = completion.get("usage")
    return {
        "content": content if isinstance(content, str) else None,
        "usage": None
        if not isinstance(usage, dict)
        else {
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
        },
        "finish_reason": choice.get("finish_reason"),
        "batch": False,
    }


def _call_record(key: str, model: str, reply: CachedReply, cost_usd: float) -> CallRecord:
    usage = reply.get("usage") or {}
    return {
        "key": key,
        "model": model,
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
        "cost_usd": cost_usd,
        "batch": bool(reply.get("batch")),
        "time": time.time(),
    }
