"""A run and a ranker against the scripted API (tests/scripted_api.py), shared by the loop, eval,
ranker and CLI tests: the API keys, a ranker that ranks last-shown-first, a small two-round
config and a :class:`~cyclealign.ranker.client.Ranker` with no retry waits. Plain helpers
(passed as values, e.g. ``ScriptedAPI(fallback=reverse_ranker)``); the fixtures are conftest.py's."""

from __future__ import annotations

import re

import tenacity
from scripted_api import ScriptedAPI

from cyclealign.config import build_config
from cyclealign.config.ranker import RankerConfig
from cyclealign.ranker.client import Ranker
from cyclealign.templates.ranker import RankerTemplates

RANKER_KEY = "sk-test-SECRET-0123456789abcdef"
"""The key :func:`make_ranker` sends (test_ranker_client.py checks where it appears)."""

KEY = "sk-test-DO-NOT-LEAK-1234"
"""The key whole runs (:func:`make_config`) are given through ``OPENAI_API_KEY``."""


def reverse_ranker(request):
    """Ranks responses last-shown-first; answers the preflight ping with anything."""
    text = request["messages"][-1]["content"]
    n = len(re.findall(r'<response id="\d+">', text))
    if n == 0:
        return "pong"
    return " > ".join(f"[{i}]" for i in range(n, 0, -1))


def ranking_requests(api):
    """The requests ``api`` received that asked for a ranking (not the preflight ping)."""
    return [r for r in api.requests if "<response id=" in r["messages"][-1]["content"]]


def make_config(tmp_path, prompts_file, api, **extra):
    """Two rounds of two prompts, three samples of up to 8 tokens, ranked by ``api``; ``extra`` overrides dotted fields."""
    return build_config(
        **{
            "run_dir": tmp_path / "run",
            "prompts": prompts_file,
            "rounds": 2,
            "prompts_per_round": 2,
            "generation.num_samples": 3,
            "generation.max_new_tokens": 8,
            "agreement.min_length": 1,
            "ranker.base_url": api.base_url,
            "ranker.model": "scripted",
            "ranker.cache_path": tmp_path / "ranker_cache.sqlite",
            **extra,
        }
    )


def make_ranker(api: ScriptedAPI, templates: RankerTemplates, *, key: str = RANKER_KEY, reply_cache=None, budget=None, price=None, **cfg) -> Ranker:
    """A Ranker on ``api`` with no retry waits; ``cfg`` overrides RankerConfig fields (shuffle off by default)."""
    cfg = {"max_retries": 2, "max_reasks": 2, "timeout_s": 5.0, "shuffle": False, "structured_output": "off", **cfg}
    return Ranker(
        RankerConfig(**cfg),
        base_url=api.base_url,
        model="scripted",
        api_key=key,
        templates=templates,
        retry_wait=tenacity.wait_none(),
        cache=reply_cache,
        budget=budget,
        price=price,
    )
