"""The black-box ranker: templates (Jinja2 files), a pure reply parser, the API client, and
the embedded ``transformers serve`` server used when no external API is configured."""

from cyclealign.ranker.cache import ReplyCache, request_key
from cyclealign.ranker.client import (
    RETRYABLE_ERRORS,
    RankJob,
    Ranker,
    api_key_from_env,
    presentation_order,
    retry_after_s,
    wait_retry_after,
)
from cyclealign.ranker.parse import RankingParseError, parse_ranking, ranking_json_schema
from cyclealign.ranker.server import EmbeddedServer, serve_command
from cyclealign.ranker.templates import TEMPLATE_VARIABLES, RankerTemplates, load_demonstrations

__all__ = [
    "RETRYABLE_ERRORS",
    "TEMPLATE_VARIABLES",
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
