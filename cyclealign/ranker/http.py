"""The ranker's HTTP transport: one chat completion, retries, ``Retry-After``, errors and replies.

* transport errors (connection, timeout, 429, 5xx, a truncated or non-JSON body:
  :data:`RETRYABLE_ERRORS`) are retried with tenacity (:func:`send_with_retries`), waiting at
  least the server's ``Retry-After`` (:class:`wait_retry_after`);
* a 200 whose body is not a chat completion is a :class:`MalformedResponseError` (retried);
* error messages for logs and results are redacted (:class:`ErrorText`): the API key, or
  anything that looks like one, never appears in them;
* a completion is reduced to the parts the ranker keeps (:func:`reply_of`, a
  :data:`~cyclealign.ranker.cache.CachedReply`), a paid call to a ledger line (:func:`call_record`).
"""

from __future__ import annotations

import email.utils
import importlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import openai
import tenacity
from tenacity.wait import wait_base

from cyclealign.config.ranker import RankerConfig
from cyclealign.errors import RankerError
from cyclealign.ranker.cache import CachedReply

__all__ = [
    "CALL_ERRORS",
    "MAX_RETRY_AFTER_S",
    "RETRYABLE_ERRORS",
    "CallRecord",
    "ErrorText",
    "MalformedResponseError",
    "api_key_from_env",
    "call_record",
    "check_completion",
    "post_completion",
    "reply_of",
    "retry_after_s",
    "retry_logger",
    "send_with_retries",
    "wait_retry_after",
    "without_userinfo",
]

log = logging.getLogger(__name__)


def _transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP library's transport errors (``httpx2`` in recent ``openai`` releases, ``httpx`` before)."""
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
CALL_ERRORS: tuple[type[Exception], ...] = (openai.APIError, MalformedResponseError)
"""What a call can still fail with once the retries ran out (the refusals retrying cannot fix
are raised as :class:`~cyclealign.errors.RankerError` instead)."""
MAX_RETRY_AFTER_S = 300.0
"""A server's ``Retry-After`` is honoured up to this many seconds."""

_MAX_MESSAGE_CHARS = 300

CallRecord = dict[str, Any]
"""One paid call, as passed to ``on_call``: ``{"key", "model", "prompt_tokens", "completion_tokens",
"cost_usd", "batch", "time"}`` (no message text, no key)."""


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


def without_userinfo(url: str) -> str:
    """``url`` without any ``user:password@`` part, for messages.

    >>> without_userinfo("https://bob:hunter2@llm.example.com/v1")
    'https://***@llm.example.com/v1'
    """
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]+@", r"\1***@", url)


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine (``localhost``, ``127.0.0.0/8``, ``::1``).

    >>> is_loopback("http://127.0.0.1:8000/v1"), is_loopback("http://localhost/v1"), is_loopback("https://api.openai.com/v1")
    (True, True, False)
    """
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def probe_connection(url: str, timeout_s: float) -> None:
    """Open (and close) a TCP connection to ``url``'s host and port: a refused connection or an
    unknown host is told at once, not after the transport's retries and timeouts.

    Raises:
        RankerError: the connection is refused (nothing listens there) or the host name does
            not resolve. A timeout is not raised here (the preflight call then says more).
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    shown = without_userinfo(url)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except ConnectionRefusedError:
        raise RankerError(f"the ranker API at {shown}: connection refused (nothing listens on {host}:{port}; is the server running?)") from None
    except socket.gaierror as e:
        raise RankerError(f"the ranker API at {shown}: cannot resolve host {host!r} ({e.strerror})") from None
    except OSError:
        return  # a timeout or an unreachable network: the preflight call reports it with its retries


def api_key_from_env(cfg: RankerConfig, environ: Mapping[str, str]) -> str:
    """The ranker API key, from the environment variable named by ``cfg.api_key_env``.

    Used only with a user-given ``ranker.base_url`` (the embedded server needs no key). A ranker
    on this machine (a loopback URL: a self-hosted judge) may run without one: then ``"EMPTY"``.

    Raises:
        RankerError: the variable is unset or empty and the URL is not loopback (the message
            names the variable, never a value).
    """
    key = (environ.get(cfg.api_key_env) or "").strip()
    if not key and is_loopback(cfg.base_url or ""):
        return "EMPTY"
    if not key:
        url = without_userinfo(cfg.base_url or "")
        raise RankerError(
            f"the ranker API key is missing: set the environment variable {cfg.api_key_env} "
            f"(needed for ranker.base_url={url}; ranker.api_key_env names another variable)"
        )
    return key


def check_completion(data: Any) -> dict[str, Any]:
    """``data`` if it is a chat completion object (a dict with a ``choices`` list).

    Raises:
        MalformedResponseError: anything else (an HTML page, a JSON object of another shape).

    >>> check_completion({"choices": []})
    {'choices': []}
    """
    if isinstance(data, dict) and isinstance(data.get("choices"), list):
        return data
    shown = data if isinstance(data, str) else json.dumps(data)[:200] if isinstance(data, (dict, list)) else type(data).__name__
    raise MalformedResponseError(f"the response is not a chat completion: {str(shown)[:120]!r}")


def reply_of(completion: dict[str, Any]) -> CachedReply:
    """The parts of a chat completion (JSON object) the ranker keeps: content, usage, finish reason.

    >>> reply_of({"choices": [{"message": {"content": "[1] > [2]"}, "finish_reason": "stop"}]})
    {'content': '[1] > [2]', 'usage': None, 'finish_reason': 'stop', 'batch': False}
    """
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


def call_record(key: str, model: str, reply: CachedReply, cost_usd: float) -> CallRecord:
    """The cost-ledger line of the paid ``reply`` to request ``key`` (see :data:`CallRecord`)."""
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


async def post_completion(client: openai.AsyncOpenAI, body: dict[str, Any]) -> dict[str, Any]:
    """One ``POST /chat/completions`` of ``body``; the completion as a JSON object (no retry).

    Raises:
        MalformedResponseError: the body broke off, is not JSON, or is not a chat completion.
        openai.APIError: the call failed (connection, timeout, an HTTP error status).
    """
    try:
        # The documented low-level call (openai README, "undocumented endpoints"): the body
        # goes out as built and the JSON comes back as a dict, skipping the SDK's per-message
        # parameter transform and response model construction (together ~1 ms of CPU a
        # request, which caps throughput at high concurrency).
        data = await client.post("/chat/completions", body=body, cast_to=dict)
    except _BODY_ERRORS as e:
        raise MalformedResponseError(f"unreadable response body ({type(e).__name__}: {e})") from None
    return check_completion(data)


async def send_with_retries(
    call: Callable[[], Awaitable[dict[str, Any]]],
    *,
    max_retries: int,
    wait: wait_base,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
) -> dict[str, Any]:
    """``await call()``, retried up to ``max_retries`` times on :data:`RETRYABLE_ERRORS`.

    The first attempt runs bare (no retry machinery on the common, successful path); a
    retryable failure replays into tenacity as its attempt 1, so the backoff and
    ``Retry-After`` waits are exactly tenacity's.

    Raises:
        Exception: the last error, once the retries ran out, or any non-retryable one at once.
    """
    try:
        return await call()
    except RETRYABLE_ERRORS as e:
        if max_retries == 0:
            raise
        first: list[BaseException] = [e]
    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(max_retries + 1),
        wait=wait,
        retry=tenacity.retry_if_exception_type(RETRYABLE_ERRORS),
        before_sleep=before_sleep,
        reraise=True,
    )

    async def attempt() -> dict[str, Any]:
        if first:
            raise first.pop()
        return await call()

    return await retrying(attempt)


class ErrorText:
    """Short, redacted messages about API errors, for logs, results and :class:`RankerError`.

    Args:
        api_key: the key to mask wherever it appears (anything that looks like a key is masked too).
        base_url: the endpoint, without credentials, as named in messages.
        model: the model name.
        api_key_env: the environment variable the key came from (named on a 401).

    >>> ErrorText("sk-abc-123456", base_url="u", model="m", api_key_env="K").redact("bad key sk-abc-123456 sent")
    'bad key *** sent'
    """

    def __init__(self, api_key: str, *, base_url: str, model: str, api_key_env: str) -> None:
        self._secrets = [s for s in {api_key, api_key.strip()} if len(s) >= 4]
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env

    def redact(self, text: str) -> str:
        """``text`` with the API key (and anything that looks like a key) masked, shortened."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = re.sub(r"\b(sk|rk|pk)-[A-Za-z0-9_\-*.]{4,}", r"\1-***", text)
        text = re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)
        text = " ".join(text.split())
        return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."

    def server_message(self, e: openai.APIError) -> str:
        """The server's own error message, redacted and shortened."""
        body = e.body
        msg: Any = None
        if isinstance(body, dict):
            msg = body.get("message") or body.get("detail") or body.get("error")
        elif isinstance(body, str) and body.strip():
            msg = body
        if msg is None or isinstance(msg, (dict, list)):
            msg = e.message if msg is None else str(msg)
        return self.redact(str(msg))

    def describe(self, e: BaseException) -> str:
        """``"<ExceptionType>: <short message>"`` for logs and ``RankResult.reason``."""
        if isinstance(e, openai.APIStatusError):
            return f"{type(e).__name__}: HTTP {e.status_code}: {self.server_message(e)}"
        return f"{type(e).__name__}: {self.redact(str(e))}"

    def fatal(self, e: openai.APIStatusError) -> str:
        """The message of the :class:`RankerError` raised for a refusal retrying cannot fix."""
        where = f"at {self.base_url}"
        if isinstance(e, openai.AuthenticationError):
            return (
                f"the ranker API rejected the key (401) {where}; check the key in the environment "
                f"variable {self.api_key_env}"
            )
        detail = self.server_message(e)
        if isinstance(e, openai.PermissionDeniedError):
            return f"the ranker API denied access (403) to model {self.model!r} {where}: {detail}"
        if isinstance(e, openai.NotFoundError):
            return (
                f"the ranker API found no model {self.model!r} or no chat endpoint (404) {where} "
                f"(ranker.base_url usually ends in /v1): {detail}"
            )
        return f"the ranker API rejected the request ({e.status_code}) for model {self.model!r} {where}: {detail}"


def retry_logger(errors: ErrorText, max_retries: int) -> Callable[[tenacity.RetryCallState], None]:
    """A tenacity ``before_sleep`` hook: one warning per retry, the error described by ``errors``."""

    def log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        sleep = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "ranker call failed (%s); retry %d/%d in %.1f s",
            errors.describe(exc) if exc else "?",
            state.attempt_number,
            max_retries,
            sleep,
        )

    return log_retry
