"""One OpenAI-compatible chat endpoint, as the ranker and the judge use it.

:class:`ChatEndpoint` owns everything between a conversation and its reply::

    key, body = endpoint.prepare(request)        # request body and reply-cache key
    reply     = cache.get(key)                   # a reply already paid for is never bought twice
             or budget.reserve(worst case)       # BudgetExhausted: the call is not sent
                -> slot (ranker.concurrency) -> RPM / TPM limits (aiolimiter)
                -> POST /chat/completions, transport retries (cyclealign.ranker.http)
                -> cache.put(key, reply)         # stored before it is used
                -> ledger line (on_call), budget settled to the real cost

With ``ranker.structured_output=auto`` a refused ``response_format`` (HTTP 400/422) turns
structured output off for the rest of the run and the call is sent again without it. The API
key is held by the ``openai`` clients only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import openai
import tenacity
from aiolimiter import AsyncLimiter
from tenacity.wait import wait_base

from cyclealign.config.ranker import RankerConfig, structured_at_start
from cyclealign.errors import BudgetError, ConfigError, RankerError
from cyclealign.ranker.cache import CachedReply, ReplyCache, request_key
from cyclealign.ranker.feed import JobFeed
from cyclealign.ranker.http import (
    CALL_ERRORS, CallRecord, ErrorText, call_record, post_completion, probe_connection, reply_of, retry_logger,
    send_with_retries, wait_retry_after, without_userinfo,
)
from cyclealign.ranker.pricing import FREE, Budget, BudgetExhausted, Price, estimate_tokens
from cyclealign.records import Message

__all__ = ["ChatEndpoint", "ChatRequest", "Usage"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask for.

    Attributes:
        messages: the conversation, as sent.
        temperature: sampling temperature (None: ``ranker.temperature``).
        response_format: sent while the endpoint uses structured output (see
            :attr:`ChatEndpoint.structured`); None: never sent (and a refusal is fatal).
        order: the presentation order of the responses shown, part of the cache key (None: none).
        max_tokens: the completion cap, tokens (None: ``ranker.max_tokens``).
    """

    messages: list[Message]
    temperature: float | None = None
    response_format: dict[str, Any] | None = None
    order: list[int] | None = None
    max_tokens: int | None = None


@dataclass
class Usage:
    """What the completions used for one prompt took: all of them (``attempts``, tokens) and
    the paid ones among them (``api_calls``, ``cost_usd`` in USD); cached replies cost nothing."""

    attempts: int = 0
    api_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, reply: CachedReply, paid_usd: float | None) -> None:
        """Count ``reply``; ``paid_usd`` is its cost when it was sent, None when it came from the cache."""
        usage = reply.get("usage") or {}
        self.attempts += 1
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)
        if paid_usd is not None:
            self.api_calls += 1
            self.cost_usd += paid_usd


class _StructuredUnsupported(Exception):
    """The endpoint refused ``response_format``; the caller retries the call without it."""


class ChatEndpoint:
    """An OpenAI-compatible chat API with the run's reply cache, budget, limits and ledger.

    Args:
        cfg: the ranker section of the run's config (retries, timeout, concurrency, RPM/TPM
            limits, ``cache``, ``structured_output``, ``max_tokens``, ``temperature``).
        template_hash: the ranker templates' hash, part of every cache key.
        base_url, model, api_key, retry_wait, cache, price, budget, endpoint_id: as for
            :class:`~cyclealign.ranker.client.Ranker` (``price`` is USD per token, None: unknown).
        on_call: the default cost ledger: called with a :data:`~cyclealign.ranker.http.CallRecord`
            after each paid call made without a ledger of its own (each call can pass one:
            ``on_call=`` of :meth:`complete`, :meth:`complete_all`, :meth:`record_batch_reply`).

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
        template_hash: str,
        retry_wait: wait_base | None = None,
        cache: ReplyCache | None = None,
        price: Price | None = None,
        budget: Budget | None = None,
        on_call: Callable[[CallRecord], None] | None = None,
        endpoint_id: str | None = None,
    ) -> None:
        self.cfg = cfg
        self._base_url = base_url
        self.base_url = without_userinfo(base_url)  # for messages
        self._endpoint = endpoint_id or self.base_url
        self.model = model
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
        self._warned: set[str] = set()  # requests already said to be over ranker.warn_request_tokens
        self.errors = ErrorText(api_key, base_url=self.base_url, model=model, api_key_env=cfg.api_key_env)
        fallback = retry_wait if retry_wait is not None else tenacity.wait_exponential_jitter(initial=1, max=60)
        self._wait = wait_retry_after(fallback)
        self._log_retry = retry_logger(self.errors, cfg.max_retries)
        self._template_hash = template_hash
        self._structured = structured_at_start(cfg)
        self._client: openai.AsyncOpenAI | None = None
        self._slots: asyncio.Semaphore | None = None
        self._rpm: AsyncLimiter | None = None
        self._tpm: AsyncLimiter | None = None

    def __repr__(self) -> str:
        return f"ChatEndpoint(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def structured(self) -> bool:
        """Whether calls send their ``response_format``; ``auto`` turns it off on refusal."""
        return self._structured

    def describe(self, e: BaseException) -> str:
        """``"<ExceptionType>: <short message>"`` of an API error, redacted (for logs and reasons)."""
        return self.errors.describe(e)

    def sync_client(self) -> openai.OpenAI:
        """A synchronous client for administrative calls (Batch API files and jobs), with the
        ``openai`` client's own retries (``cfg.max_retries``, honouring ``Retry-After``)."""
        return openai.OpenAI(
            api_key=self._api_key, base_url=self._base_url, max_retries=self.cfg.max_retries, timeout=self.cfg.timeout_s
        )

    # -- event loop and workers ------------------------------------------------------------
    def run(self, coro_fn: Callable[[], Any]) -> Any:
        """``await coro_fn()`` in a fresh event loop with a fresh async client and limiters; its result."""

        async def main() -> Any:
            # aiohttp as the transport: the openai SDK's recommendation for concurrency (httpx's
            # connection pool costs ~1 ms of CPU per request with dozens of connections).
            timeout = self.cfg.timeout_s
            client = openai.AsyncOpenAI(
                api_key=self._api_key, base_url=self._base_url, max_retries=0, timeout=timeout,
                http_client=openai.DefaultAioHttpClient(timeout=timeout),
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

    def run_pool(self, items: Sequence[Any] | JobFeed[Any], one: Callable[[int, Any], Any]) -> int:
        """Run ``await one(i, item)`` for every item with ``cfg.concurrency`` workers (see :meth:`run`).

        Args:
            items: the items, or a :class:`~cyclealign.ranker.feed.JobFeed` another thread fills
                while the workers run (they end when it is closed and done; its ``cancel``
                cancels them).

        Returns:
            How many items the budget held back (their ``one`` raised :class:`BudgetExhausted`).

        Raises:
            Exception: whatever else a ``one`` raised (the other workers are cancelled).
            asyncio.CancelledError: the feed was cancelled.
        """
        feed = items if isinstance(items, JobFeed) else None
        pending = iter(enumerate(items)) if feed is None else None
        held = 0

        async def next_item() -> tuple[int, Any] | None:
            if feed is not None:
                return await feed.get()
            assert pending is not None
            return next(pending, None)

        async def worker() -> None:
            nonlocal held
            # Items are prepared (messages rendered, cache looked up) only when a worker is free,
            # so the first requests go out at once and memory stays flat for large rounds.
            while (entry := await next_item()) is not None:
                try:
                    await one(*entry)
                except BudgetExhausted:
                    held += 1

        async def all_items() -> None:
            if feed is not None:
                feed.attach()
            workers = self.cfg.concurrency if feed is not None else min(self.cfg.concurrency, len(items))
            tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        self.run(all_items)
        return held

    def complete_all(
        self, requests: Sequence[ChatRequest], on_call: Callable[[CallRecord], None] | None = None
    ) -> list[CachedReply | Exception]:
        """Send each request once, concurrently (reply cache, budget, retries, concurrency and
        rate limits as for rankings); used by evaluation's pairwise judge. Each paid call goes to
        the ledger ``on_call`` (None: the endpoint's default ledger).

        Returns:
            Per request, in order: the reply (``{"content", "usage", ...}``), or the transport
            error that outlived the retries.

        Raises:
            RankerError: a refusal retrying cannot fix (401, 403, 404, 400).
            BudgetError: the budget held a call back (the replies received are in the cache).
        """
        results: list[CachedReply | Exception | None] = [None] * len(requests)

        async def one(i: int, request: ChatRequest) -> None:
            try:
                results[i] = await self.complete(request, on_call=on_call)
            except CALL_ERRORS as e:
                results[i] = e

        if self.run_pool(requests, one):
            raise BudgetError(
                f"{self.budget.reached()}. Raise --max-cost-usd and run again: answers already paid for are cached."
            )
        return [r for r in results if r is not None]

    def preflight(self) -> None:
        """One cheap call (a 1-token chat completion, never cached) to fail fast on a bad key, model or URL.

        Raises:
            RankerError: the connection is refused or the host unknown (at once), the key is
                rejected, the model or endpoint is unknown, the request is refused, or the server
                stays unreachable after the transport retries.
        """
        probe_connection(self.base_url, timeout_s=min(10.0, self.cfg.timeout_s))

        async def ping() -> None:
            body = {"model": self.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
            try:
                await self._send(body)
            except RankerError:
                raise
            except CALL_ERRORS as e:
                raise RankerError(
                    f"the ranker API at {self.base_url} failed the preflight call after "
                    f"{self.cfg.max_retries + 1} attempt(s): {self.describe(e)}"
                ) from None

        self.run(ping)

    # -- one completion --------------------------------------------------------------------
    def prepare(self, request: ChatRequest) -> tuple[str, dict[str, Any]]:
        """``(cache key, request body)`` of ``request`` as it would be sent now (the body's
        ``response_format`` depends on :attr:`structured`)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "temperature": self.cfg.temperature if request.temperature is None else request.temperature,
            "max_tokens": request.max_tokens or self.cfg.max_tokens,
        }
        if request.response_format is not None and self._structured:
            body["response_format"] = request.response_format
        key = request_key(base_url=self._endpoint, request=body, template_hash=self._template_hash, order=request.order)
        return key, body

    async def complete(
        self, request: ChatRequest, usage: Usage | None = None, on_call: Callable[[CallRecord], None] | None = None
    ) -> CachedReply:
        """One completion (inside :meth:`run`): from the cache, or sent (budget, concurrency and
        rate limits applied) and stored in the cache before it is returned; counted in ``usage``;
        a paid one is written to the ledger ``on_call`` (None: the endpoint's default ledger).

        Raises:
            BudgetExhausted: the call could push the run over its budget (not sent).
            RankerError: a refusal retrying cannot fix.
            openai.APIError, MalformedResponseError: a transport error outlived the retries.
        """
        while True:
            key, body = self.prepare(request)
            if self.cache is not None and self.cfg.cache:
                hit = self.cache.get(key)
                if hit is not None:
                    if usage is not None:
                        usage.add(hit, None)
                    return hit
            price = self.price or FREE
            # The prompt estimate feeds the budget reservation, the TPM limiter and the size warning.
            prompt_estimate = estimate_tokens(request.messages)
            limit = self.cfg.warn_request_tokens
            if limit is not None and prompt_estimate > limit and key not in self._warned:
                self._warned.add(key)
                log.warning(
                    "a ranker request of about %d prompt tokens (over ranker.warn_request_tokens=%d) is being sent to %s",
                    prompt_estimate, limit, without_userinfo(self.base_url),
                )
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
                        fallback = self.cfg.structured_output == "auto" and request.response_format is not None
                        completion = await self._send(body, structured_fallback=fallback)
                    except _StructuredUnsupported:
                        continue
                    reply = reply_of(completion)
                    if self.cache is not None:
                        # persisted before anything uses it, and before the slot frees up for the next call
                        self.cache.put(key, self.model, reply)
                paid = self._account(key, reply, on_call)
                if usage is not None:
                    usage.add(reply, paid)
                return reply
            finally:
                self.budget.settle(reserved, paid)

    async def _send(self, body: dict[str, Any], structured_fallback: bool = False) -> dict[str, Any]:
        """One chat completion, with tenacity retries on :data:`~cyclealign.ranker.http.RETRYABLE_ERRORS`.

        Raises:
            RankerError: on a non-retryable refusal (see :meth:`ErrorText.fatal`).
            _StructuredUnsupported: ``structured_fallback`` and the endpoint refused
                ``response_format`` (structured output is then off for the rest of the run).
            openai.APIError, MalformedResponseError: a retryable error that outlived the retries.
        """
        assert self._client is not None
        client = self._client
        try:
            return await send_with_retries(
                lambda: post_completion(client, body),
                max_retries=self.cfg.max_retries,
                wait=self._wait,
                before_sleep=self._log_retry,
            )
        except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
            if structured_fallback and "response_format" in body and self._structured:
                self._structured = False
                log.warning(
                    "ranker: %s refused structured output (HTTP %s: %s); using text answers from now on",
                    self.base_url, e.status_code, self.errors.server_message(e),
                )
                raise _StructuredUnsupported() from None
            raise RankerError(self.errors.fatal(e)) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise RankerError(self.errors.fatal(e)) from None

    # -- cost ------------------------------------------------------------------------------
    def cost_of(self, reply: CachedReply) -> float:
        """USD billed for ``reply`` (its ``usage``; Batch API replies at the batch discount)."""
        usage = reply.get("usage") or {}
        price = self.price or FREE
        return price.cost_usd(
            int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), bool(reply.get("batch"))
        )

    def record_batch_reply(
        self, key: str, reply: CachedReply, on_call: Callable[[CallRecord], None] | None = None
    ) -> float:
        """Store a Batch API reply in the cache and the cost ledger ``on_call`` (None: the
        endpoint's default ledger); returns its cost (USD)."""
        reply = {**reply, "batch": True}
        if self.cache is not None:
            self.cache.put(key, self.model, reply)
        paid = self._account(key, reply, on_call)
        self.budget.settle(0.0, paid)
        return paid

    def _account(self, key: str, reply: CachedReply, on_call: Callable[[CallRecord], None] | None) -> float:
        """USD billed for the paid ``reply`` of request ``key``, written to the cost ledger
        ``on_call`` (None: the endpoint's default, :attr:`on_call`)."""
        paid = self.cost_of(reply)
        ledger = on_call if on_call is not None else self.on_call
        if ledger is not None:
            ledger(call_record(key, self.model, reply, paid))
        return paid
