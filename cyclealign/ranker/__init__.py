"""The black-box ranker: templates (Jinja2 files), a pure reply parser, the API client, and
the embedded ``transformers serve`` server used when no external API is configured."""

from cyclealign.ranker.client import RETRYABLE_ERRORS, Ranker, api_key_from_env, retry_after_s, wait_retry_after
from cyclealign.ranker.parse import RankingParseError, parse_ranking
from cyclealign.ranker.server import EmbeddedServer, serve_command
from cyclealign.ranker.templates import TEMPLATE_VARIABLES, RankerTemplates, load_demonstrations

__all__ = [
    "RETRYABLE_ERRORS",
    "TEMPLATE_VARIABLES",
    "EmbeddedServer",
    "Ranker",
    "RankerTemplates",
    "RankingParseError",
    "api_key_from_env",
    "load_demonstrations",
    "parse_ranking",
    "retry_after_s",
    "serve_command",
    "wait_retry_after",
]
