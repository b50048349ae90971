"""The OpenAI Batch API path (``ranker.batch``): a round's first asks as one offline job, at half price.

Flow (https://platform.openai.com/docs/guides/batch)::

    first asks not in the cache -> JSONL {custom_id: cache key, method, url, body}
        -> files.create(purpose="batch") -> batches.create(...)   # state saved: ranker_batch.json
        -> batches.retrieve(...) every ranker.batch_poll_s until completed / failed / expired / cancelled
        -> files.content(output_file_id): each 200 answer goes into the reply cache (batch=True)

After the download the round is ranked as usual (:meth:`Ranker.rank_all`): the first asks
come from the cache, and only re-asks (unparsable answers) and requests the batch failed
are sent online. The state file is written right after the batch is created, so a crashed or
interrupted run resumes waiting on the same batch instead of paying for a second one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

from cyclealign.errors import BudgetError, RankerError
from cyclealign.ranker.client import Ranker
from cyclealign.ranker.endpoint import ChatEndpoint
from cyclealign.ranker.http import CallRecord, MalformedResponseError, check_completion, reply_of
from cyclealign.ranker.pricing import FREE, BudgetExhausted, estimate_tokens
from cyclealign.ranker.ranking import RankJob
from cyclealign.files import write_json

__all__ = ["FINAL_STATUSES", "prefetch_batch"]

log = logging.getLogger(__name__)

FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
"""Batch statuses after which nothing more will come."""


def prefetch_batch(
    ranker: Ranker, jobs: list[RankJob], state_path: Path, on_call: Callable[[CallRecord], None] | None = None
) -> dict[str, Any]:
    """Fill the reply cache with the first asks of ``jobs`` through one Batch API job, and wait for it.

    Args:
        ranker: the run's ranker (its cache, budget, price and client settings are used).
        jobs: the prompts about to be ranked.
        state_path: where the batch id is kept (``round_k/ranker_batch.json``).
        on_call: the cost ledger for the batch's replies (None: the endpoint's default).

    Returns:
        ``{"batch_id", "status", "requests", "answered", "failed", "cost_usd"}`` (empty when every
        first ask was already cached).

    Raises:
        BudgetError: the batch's worst-case cost does not fit in ``ranker.max_cost_usd``.
        RankerError: the API refused the upload or the batch (bad key, no Batch API at the URL),
            or the batch ended ``failed`` without any output.
    """
    endpoint = ranker.endpoint
    if endpoint.cache is None:
        raise RankerError("ranker.batch needs the reply cache: the batch's answers are read from it")
    state = _read_state(state_path)
    requests: dict[str, dict[str, Any]] = {}
    for job in jobs:
        for k in range(ranker.cfg.consistency):
            key, body = ranker.first_request(job, k)
            if key not in endpoint.cache:
                requests[key] = body
    if not requests and state.get("status") != "submitted":
        return {}
    with endpoint.sync_client() as client:
        if state.get("status") != "submitted":
            state = _submit(client, endpoint, requests, state_path)
        batch = _wait(client, endpoint.cfg.batch_poll_s, state)
        out = {"batch_id": batch.id, "status": batch.status, "requests": len(state["keys"]), "answered": 0, "failed": 0}
        cost = 0.0
        if batch.output_file_id:
            for line in client.files.content(batch.output_file_id).text.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                response = row.get("response") or {}
                try:
                    if response.get("status_code") != 200:
                        raise MalformedResponseError(f"status {response.get('status_code')}")
                    reply = reply_of(check_completion(response.get("body")))
                except MalformedResponseError:
                    continue  # asked online by the ranking that follows
                cost += endpoint.record_batch_reply(row["custom_id"], reply, on_call)
                out["answered"] += 1
        out["failed"] = len(state["keys"]) - out["answered"]
        out["cost_usd"] = cost
    endpoint.budget.settle(state.get("reserved_usd", 0.0), 0.0)
    state["status"] = "downloaded"
    write_json(state_path, state)
    if batch.status != "completed":
        log.warning("ranker batch %s ended %s: %d of %d answered", batch.id, batch.status, out["answered"], out["requests"])
    if batch.status == "failed" and not batch.output_file_id:
        errors = getattr(getattr(batch, "errors", None), "data", None) or []
        detail = "; ".join(str(getattr(e, "message", e)) for e in errors[:3]) or "no details"
        raise RankerError(f"the ranker batch {batch.id} failed: {detail}")
    log.info("ranker batch %s: %d answered, %d failed, $%.4f", batch.id, out["answered"], out["failed"], cost)
    return out


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _submit(
    client: openai.OpenAI, endpoint: ChatEndpoint, requests: dict[str, dict[str, Any]], state_path: Path
) -> dict[str, Any]:
    """Upload the requests and create the batch; the state file records it before anything else."""
    reserved = sum(
        (endpoint.price or FREE).cost_usd(estimate_tokens(b["messages"]), endpoint.cfg.max_tokens, batch=True)
        for b in requests.values()
    )
    try:
        endpoint.budget.reserve(reserved)
    except BudgetExhausted as e:
        raise BudgetError(f"{e}; the batch of {len(requests)} requests could cost up to ${reserved:.4f}") from None
    lines = [
        json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body})
        for key, body in requests.items()
    ]
    try:
        upload = client.files.create(file=("cyclealign-ranker.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"tool": "cyclealign", "state_file": str(state_path)[-500:]},
        )
    except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError, openai.BadRequestError) as e:
        endpoint.budget.settle(reserved, 0.0)
        raise RankerError(f"the ranker API at {endpoint.base_url} refused the batch upload: {endpoint.describe(e)}") from None
    state = {
        "status": "submitted",
        "batch_id": batch.id,
        "input_file_id": upload.id,
        "keys": list(requests),
        "reserved_usd": reserved,
        "submitted_at": time.time(),
    }
    write_json(state_path, state)
    log.info("ranker batch %s submitted: %d requests", batch.id, len(requests))
    return state


def _wait(client: openai.OpenAI, poll_s: float, state: dict[str, Any]) -> Any:
    """Poll the batch every ``poll_s`` seconds until it reaches a final status; returns the Batch object."""
    while True:
        batch = client.batches.retrieve(state["batch_id"])
        if batch.status in FINAL_STATUSES:
            return batch
        counts = batch.request_counts
        log.info(
            "ranker batch %s: %s (%s/%s done)",
            batch.id,
            batch.status,
            getattr(counts, "completed", "?"),
            getattr(counts, "total", "?"),
        )
        time.sleep(poll_s)
