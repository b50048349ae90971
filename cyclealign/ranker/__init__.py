"""The black-box ranker: templates (Jinja2 files), a pure reply parser, the API client, and
the embedded ``transformers serve`` server used when no external API is configured.

Modules: :mod:`~cyclealign.ranker.ranking` (the pure ranking protocol), :mod:`~cyclealign.ranker.http`
(transport and errors), :mod:`~cyclealign.ranker.endpoint` (the chat endpoint: cache, budget,
limits, workers), :mod:`~cyclealign.ranker.client` (the :class:`Ranker`), and the rest.

The names below are imported on first use (module ``__getattr__``), so that importing one
light submodule (``cyclealign.ranker.ranking``, ``cyclealign.ranker.parse``) does not pull in
the HTTP stack (``openai``, ``tenacity``, ``aiolimiter``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cyclealign.ranker.cache import ReplyCache, request_key
    from cyclealign.ranker.client import Ranker
    from cyclealign.ranker.endpoint import ChatEndpoint, ChatRequest
    from cyclealign.ranker.http import RETRYABLE_ERRORS, api_key_from_env, retry_after_s, wait_retry_after
    from cyclealign.ranker.parse import RankingParseError, parse_ranking, ranking_json_schema
    from cyclealign.ranker.ranking import RankJob, presentation_order
    from cyclealign.ranker.server import EmbeddedServer, serve_command
    from cyclealign.ranker.templates import TEMPLATE_VARIABLES, RankerTemplates, load_demonstrations

_EXPORTS = {
    "RETRYABLE_ERRORS": "http",
    "TEMPLATE_VARIABLES": "templates",
    "ChatEndpoint": "endpoint",
    "ChatRequest": "endpoint",
    "EmbeddedServer": "server",
    "RankJob": "ranking",
    "Ranker": "client",
    "RankerTemplates": "templates",
    "ReplyCache": "cache",
    "RankingParseError": "parse",
    "api_key_from_env": "http",
    "load_demonstrations": "templates",
    "parse_ranking": "parse",
    "presentation_order": "ranking",
    "ranking_json_schema": "parse",
    "request_key": "cache",
    "retry_after_s": "http",
    "serve_command": "server",
    "wait_retry_after": "http",
}

__all__ = [
    "RETRYABLE_ERRORS",
    "TEMPLATE_VARIABLES",
    "ChatEndpoint",
    "ChatRequest",
    "EmbeddedServer",
    "RankJob",
    "Ranker",
    "RankerTemplates",
    "ReplyCache",
    "RankingParseError",
    "api_key_from_env",
    "load_demonstrations",
    "parse_ranking",
    "presentation_order",
    "ranking_json_schema",
    "request_key",
    "retry_after_s",
    "serve_command",
    "wait_retry_after",
]


def __getattr__(name: str) -> Any:
    """``cyclealign.ranker.<name>``: imports the submodule that defines ``name`` on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
