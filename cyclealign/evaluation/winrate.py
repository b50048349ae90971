"""Win rate of one policy against another: pairwise judgements by the black box, and their summary.

Each prompt's judged responses of policy A and policy B are compared by the black-box model in
both presentation orders (:mod:`cyclealign.templates.judge`); a win or a loss needs both orders to
agree, anything else is a tie (identical responses are a tie without a call). Failed or
unparsable judgements are ``invalid`` and left out of the rates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cyclealign.evaluation.plan import policy_slug
from cyclealign.ranker.endpoint import ChatEndpoint, ChatRequest
from cyclealign.ranker.http import CallRecord
from cyclealign.records import Generation, PromptRecord
from cyclealign.files import write_jsonl
from cyclealign.templates.judge import JudgeTemplates, VerdictParseError, pair_outcome, parse_verdict

__all__ = ["judge_pairs", "wilson_interval", "win_summary"]


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval of a binomial proportion (``scipy.stats.binomtest``); ``(None, None)`` with no trials.

    >>> [round(x, 3) for x in wilson_interval(7, 10)]
    [0.397, 0.892]
    """
    if trials == 0:
        return None, None
    from scipy.stats import binomtest

    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def judge_pairs(
    endpoint: ChatEndpoint,
    judge: JudgeTemplates,
    out: Path,
    k: int,
    vs: int,
    judged_a: Sequence[Generation],
    judged_b: Sequence[Generation],
    by_id: dict[str, PromptRecord],
    max_tokens: int = 16,
    source_of: dict[str, str] | None = None,
    on_call: Callable[[CallRecord], None] | None = None,
) -> list[dict[str, Any]]:
    """Pairwise judgements of policy ``k`` (A) against ``vs`` (B), both orders, on each prompt's
    judged (first) response; ``max_tokens``: completion cap per judge call, tokens.

    A pair of identical responses (same text up to surrounding whitespace: greedy decoding, or
    sampling with the same seed, gives that when behaviour is unchanged) is a tie without a call.
    Writes and returns the rows of ``judgements_<k>_vs_<vs>.jsonl``, one per prompt both policies
    answered: ``prompt_id``, ``source`` (with ``source_of``), ``a``, ``b``, ``replies`` (raw
    texts, None for a failed call), ``outcome`` (win | loss | tie | invalid), ``problem``,
    ``identical``.

    The judge calls go through ``endpoint``, the run's chat endpoint that the ranker uses too
    (:meth:`~cyclealign.ranker.endpoint.ChatEndpoint.complete_all`): reply cache, budget,
    retries and rate limits as for the rankings, never with structured output; each paid call
    goes to the cost ledger ``on_call`` (None: the endpoint's default).

    Raises:
        RankerError: the API refused a call in a way retrying cannot fix.
        BudgetError: the budget held a judge call back (the answers received are cached).
    """
    b_by_id = {g.prompt_id: g for g in judged_b}
    pairs = [
        (g.prompt_id, g.responses[0], b_by_id[g.prompt_id].responses[0])
        for g in judged_a
        if g.responses and b_by_id.get(g.prompt_id) and b_by_id[g.prompt_id].responses
    ]
    # Identical responses are a tie by definition: no judge call is paid for them.
    asked = [(pid, a, b) for pid, a, b in pairs if a.strip() != b.strip()]
    conversations = []
    for pid, a, b in asked:
        query = by_id[pid].query_text
        conversations += [judge.messages(query, a, b), judge.messages(query, b, a)]
    # Sent as the rankings are (reply cache, budget, retries, limits), never with structured output.
    requests = [ChatRequest(messages, max_tokens=max_tokens) for messages in conversations]
    replies = endpoint.complete_all(requests, on_call=on_call) if requests else []
    reply_pairs = {pid: replies[2 * i : 2 * i + 2] for i, (pid, _, _) in enumerate(asked)}
    rows = []
    for pid, a, b in pairs:
        row: dict[str, Any] = {"prompt_id": pid}
        if source_of is not None:
            row["source"] = source_of[pid]
        if pid not in reply_pairs:
            rows.append(row | {"a": a, "b": b, "replies": [], "outcome": "tie", "problem": None, "identical": True})
            continue
        verdicts, raw, problem = [], [], None
        for reply in reply_pairs[pid]:
            if isinstance(reply, Exception):
                problem = f"api error: {type(reply).__name__}"
                raw.append(None)
                continue
            text = reply.get("content") or ""
            raw.append(text)
            try:
                verdicts.append(parse_verdict(text))
            except VerdictParseError as e:
                problem = f"unparsable verdict: {e}"
        outcome = "invalid" if problem else pair_outcome(verdicts[0], verdicts[1])
        rows.append(row | {"a": a, "b": b, "replies": raw, "outcome": outcome, "problem": problem, "identical": False})
    write_jsonl(out / f"judgements_{policy_slug(k)}_vs_{policy_slug(vs)}.jsonl", rows)
    return rows


def win_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Win-rate numbers of judgement rows (``outcome`` win | loss | tie | invalid, ``identical``).

    ``judged = wins + losses + ties`` (invalid rows are left out); ``win_rate = wins / judged``
    with its Wilson 95% interval ``ci_low``/``ci_high``, ``win_rate_ties_half = (wins + ties / 2)
    / judged``; rates are None with nothing judged.

    >>> s = win_summary([{"outcome": "win"}, {"outcome": "tie", "identical": True}, {"outcome": "invalid"}])
    >>> s["wins"], s["ties"], s["invalid"], s["identical"], s["win_rate"], s["win_rate_ties_half"]
    (1, 1, 1, 1, 0.5, 0.75)
    """
    counts = Counter(row["outcome"] for row in rows)
    wins, losses, ties = counts["win"], counts["loss"], counts["tie"]
    judged = wins + losses + ties
    low, high = wilson_interval(wins, judged)
    return {
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "invalid": counts["invalid"],
        "identical": sum(bool(row.get("identical")) for row in rows),
        "win_rate": wins / judged if judged else None,
        "win_rate_ties_half": (wins + ties / 2) / judged if judged else None,
        "ci_low": low,
        "ci_high": high,
    }
