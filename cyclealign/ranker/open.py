"""Opening the run's black-box ranker: the embedded server or an API endpoint, key, cache, price and budget."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from cyclealign.config import Config
from cyclealign.config.policy import ModelConfig
from cyclealign.models.loading import resolve_model_dir
from cyclealign.ranker.cache import ReplyCache
from cyclealign.ranker.client import Ranker
from cyclealign.ranker.endpoint import ChatEndpoint
from cyclealign.ranker.http import api_key_from_env
from cyclealign.ranker.pricing import Budget, ranker_price
from cyclealign.ranker.server import EmbeddedServer
from cyclealign.rundir import RunDir
from cyclealign.templates.ranker import RankerTemplates


@contextlib.contextmanager
def open_ranker(
    cfg: Config, run: RunDir, environ: Mapping[str, str], templates: RankerTemplates
) -> Iterator[Ranker]:
    """The black-box ranker for this run; starts (and finally stops) the embedded server if needed.

    With ``ranker.base_url`` unset, ``transformers serve`` is started on a free loopback port
    with the embedded SmolLM2 model (no API key needed, free); otherwise the key is read from
    the environment variable ``ranker.api_key_env`` and checked with one cheap preflight call
    before any other work. The reply cache, the model's price and the run's budget (what the
    cost ledger says the run already spent) are set up here.

    Raises:
        RankerError: the key is missing or rejected, the server cannot start, or the cache
            cannot be opened.
        ConfigError: a budget is set but the model's price is unknown, or a bad price table.
    """
    r = cfg.ranker
    with contextlib.ExitStack() as stack:
        price = ranker_price(r)
        if r.base_url is not None:
            key = api_key_from_env(r, environ)  # before the cache or anything else is touched
        cache = stack.enter_context(ReplyCache(cfg.ranker_cache_path))
        budget = Budget(r.max_cost_usd, spent_usd=run.ranker_spend()["cost_usd"])
        if r.base_url is None:
            embedded_dir = resolve_model_dir(ModelConfig(cache_dir=cfg.model.cache_dir))
            server = stack.enter_context(
                EmbeddedServer(
                    embedded_dir, log_path=run.server_log, startup_timeout_s=r.server_startup_timeout_s, pid_path=run.server_pid
                )
            )
            # The port changes every run: cache keys name the embedded model instead.
            base_url, model, key, endpoint_id = server.base_url, server.model, "local", "embedded"
        else:
            base_url, model, endpoint_id = r.base_url, r.model or "", None
        # One endpoint, two users: the Ranker, and evaluation's pairwise judge (through it, no
        # Ranker involved: cyclealign.evaluation.winrate.judge_pairs). Cache keys hold the
        # ranker templates' hash for both, as they always have.
        endpoint = ChatEndpoint(
            r,
            base_url=base_url,
            model=model,
            api_key=key,
            template_hash=templates.template_hash(),
            cache=cache,
            price=price,
            budget=budget,
            endpoint_id=endpoint_id,
        )
        if r.base_url is not None:
            endpoint.preflight()
        yield stack.enter_context(Ranker(r, templates=templates, endpoint=endpoint))


