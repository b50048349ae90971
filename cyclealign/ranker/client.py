"""The black-box ranker: one OpenAI-compatible chat endpoint that ranks N responses per prompt.

One :meth:`Ranker.rank` call (CycleAlign, Hong et al. 2023, arXiv 2310.16271, step 2)::

    messages = [system] + demos as (user, assistant) turns + [user: query + responses [1]..[N]]
    reply    = chat.completions.create(...)          # transport errors retried (tenacity)
    ranking  = parse_ranking(reply, N)               # unparsable -> re-ask with a correction

Failure policy, so that a round goes on when single prompts fail:

* transport errors (connection, timeout, 429, 5xx) are retried ``max_retries`` times with
  exponential backoff and jitter, waiting at least the server's ``Retry-After``; if they
  persist the prompt comes back **unranked** with ``reason="api error: ..."`` (a resumed
  run asks again);
* an unparsable reply is answered with a correction message, ``max_reasks`` times, then the
  prompt comes back unranked with ``reason="unparsable after K attempts: ..."``;
* errors retries cannot fix (401 bad key, 403, 404 unknown model, 400/422 bad request)
  raise :class:`~cyclealign.errors.RankerError` and stop the run.

The API key is held by the ``openai`` client only: it never appears in a message, a log
line, a ``repr`` or a :class:`RankResult`.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import openai
import tenacity
from tenacity.wait import wait_base

from cyclealign.config import RankerConfig
from cyclealign.errors import RankerError
from cyclealign.ranker.parse import RankingParseError, parse_ranking
from cyclealign.ranker.templates import RankerTemplates
from cyclealign.records import Demonstration, Message, PromptRecord, RankResult

__all__ = ["RETRYABLE_ERRORS", "Ranker", "api_key_from_env", "retry_after_s", "wait_retry_after"]

log = logging.getLogger(__name__)

RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    openai.APIConnectionError,  # refused, reset, dropped, and APITimeoutError
    openai.RateLimitError,  # 429
    openai.InternalServerError,  # 5xx
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


class Ranker:
    """Ranks responses with a black-box chat model behind an OpenAI-compatible API.

    Args:
        cfg: the ranker section of the run's config (temperature, max_tokens, timeout_s,
            max_retries, max_reasks are used here).
        base_url: the API's base URL, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        model: model name sent with each request.
        api_key: the key; kept by the ``openai`` client, never logged or shown.
        templates: the ranker's prompt templates.
        retry_wait: tenacity wait strategy between transport retries (default: exponential
            backoff with jitter, 1 s doubling up to 60 s); tests pass ``tenacity.wait_none()``.
            Either way the server's ``Retry-After`` is a lower bound.
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
    ) -> None:
        self.cfg = cfg
        self.base_url = _without_userinfo(base_url)
        self.model = model
        self.templates = templates
        self._secrets = [s for s in {api_key, api_key.strip()} if len(s) >= 4]
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=cfg.timeout_s)
        fallback = retry_wait if retry_wait is not None else tenacity.wait_exponential_jitter(initial=1, max=60)
        self._wait = wait_retry_after(fallback)

    def __repr__(self) -> str:
        return f"Ranker(base_url={self.base_url!r}, model={self.model!r})"

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> "Ranker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ------------------------------------------------------------------------
    def preflight(self) -> None:
        """One cheap call (a 1-token chat completion) to fail fast on a bad key, model or URL.

        Raises:
            RankerError: the key is rejected, the model or endpoint is unknown, the request is
                refused, or the server stays unreachable after the transport retries.
        """
        try:
            self._create([{"role": "user", "content": "ping"}], max_tokens=1)
        except RankerError:
            raise
        except openai.APIError as e:
            raise RankerError(
                f"the ranker API at {self.base_url} failed the preflight call after "
                f"{self.cfg.max_retries + 1} attempt(s): {self._describe(e)}"
            ) from None

    def rank(self, prompt: PromptRecord, responses: Sequence[str], demos: Sequence[Demonstration]) -> RankResult:
        """Ask the black-box model to rank ``responses`` (shown as ``[1]..[N]``) for ``prompt``.

        Args:
            prompt: the prompt; its :attr:`~PromptRecord.query_text` is shown as the conversation.
            responses: the N >= 2 responses, in the order their labels are shown.
            demos: in-context demonstrations, rendered as earlier user/assistant turns.

        Returns:
            A :class:`RankResult`: ranked (``ranking`` a 0-based permutation, best first), or
            unranked with ``reason`` ``"unparsable after K attempts: <why>"`` or
            ``"api error: <type>: <message>"``. Token usage, attempts (chat completions asked
            for, re-asks included), raw replies and wall latency are filled in either way.

        Raises:
            RankerError: the API refused the request in a way retrying cannot fix (401, 403,
                404, 400, 422).
            ValueError: fewer than 2 responses.
        """
        n = len(responses)
        if n < 2:
            raise ValueError(f"rank() needs at least 2 responses, got {n} for prompt {prompt.id!r}")
        result = RankResult(prompt_id=prompt.id, ranking=None)
        messages = self.templates.build_messages(prompt.query_text, list(responses), list(demos))
        t0 = time.perf_counter()
        try:
            reason = "no reply"
            for attempt in range(self.cfg.max_reasks + 1):
                result.attempts += 1
                temperature = self.cfg.temperature if attempt == 0 else self.cfg.reask_temperature
                try:
                    completion = self._create(messages, max_tokens=self.cfg.max_tokens, temperature=temperature)
                except openai.APIError as e:  # retryable ones, after the retries ran out
                    result.reason = f"api error: {self._describe(e)}"
                    log.warning("ranker: prompt %s unranked: %s", prompt.id, result.reason)
                    return result
                reply = self._record(result, completion)
                try:
                    if not reply.strip():
                        raise RankingParseError("empty reply")
                    result.ranking = parse_ranking(reply, n, complete_last=bool(self.cfg.complete_missing_last))
                    return result
                except RankingParseError as e:
                    reason = e.reason
                    log.info("ranker: prompt %s: unparsable reply (%s): %r", prompt.id, reason, reply[:200])
                    messages = [
                        *messages,
                        {"role": "assistant", "content": reply},
                        {"role": "user", "content": self.templates.correction(reason, n)},
                    ]
            result.reason = f"unparsable after {result.attempts} attempts: {reason}"
            return result
        finally:
            result.latency_s = time.perf_counter() - t0

    # -- internals -------------------------------------------------------------------------
    def _create(self, messages: list[Message], *, max_tokens: int, temperature: float | None = None) -> Any:
        """One chat completion, with tenacity retries on :data:`RETRYABLE_ERRORS`.

        Raises:
            RankerError: on a non-retryable refusal (see :meth:`_fatal`).
            openai.APIError: a retryable error that outlived the retries, or another API error.
        """
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.cfg.max_retries + 1),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(RETRYABLE_ERRORS),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(
                self._client.chat.completions.create,
                model=self.model,
                messages=messages,
                temperature=self.cfg.temperature if temperature is None else temperature,
                max_tokens=max_tokens,
            )
        except (
            openai.AuthenticationError,
            openai.PermissionDeniedError,
            openai.NotFoundError,
            openai.BadRequestError,
            openai.UnprocessableEntityError,
        ) as e:
            raise RankerError(self._fatal(e)) from None

    @staticmethod
    def _record(result: RankResult, completion: Any) -> str:
        """Add one completion's usage and reply to ``result``; returns the reply text ('' if none)."""
        usage = getattr(completion, "usage", None)
        result.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
        result.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
        choices = getattr(completion, "choices", None) or []
        content = choices[0].message.content if choices and choices[0].message is not None else None
        reply = content if isinstance(content, str) else ""
        result.raw_replies.append(reply)
        return reply

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
