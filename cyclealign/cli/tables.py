"""The rich tables the CLI prints: rounds, held-out evaluation, run status.

Which metrics they show, under which label and with how many decimals is
:mod:`cyclealign.metrics`' to say (the HTML report reads the same declarations).
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from cyclealign.cli.common import cell, spend_text
from cyclealign.metrics import (
    CLI_EVAL_ROWS,
    CLI_ROUND_ROWS,
    CLI_SOURCE_ROWS,
    STATUS_ROWS,
    TIMED_PHASES,
    eval_metric,
    round_metric,
)

__all__ = ["eval_table", "round_table", "status_table"]


def round_table(rows: list[dict[str, Any]]) -> Table:
    """A rich table of round metrics (``metrics.jsonl`` lines): one column per round, one row per
    metric of :data:`~cyclealign.metrics.CLI_ROUND_ROWS`, then each timed phase's wall seconds
    (fits 80 columns).

    Raises:
        KeyError: a line without ``round`` or without a timed phase in ``phase_s``.
    """
    table = Table(title="CycleAlign rounds")
    table.add_column("metric")
    for m in rows:
        table.add_column(f"round {m['round']}", justify="right")
    for key in CLI_ROUND_ROWS:
        metric = round_metric(key)
        table.add_row(metric.label, *[metric.text(m, nonfinite=None) for m in rows])
    digits = round_metric("phase_s").digits
    for phase in TIMED_PHASES:
        table.add_row(f"{phase} s", *[cell(m["phase_s"][phase], digits) for m in rows])
    return table


def eval_table(lines: list[dict[str, Any]]) -> Table:
    """A rich table of evaluation summary lines (:func:`cyclealign.evaluation.runner.run_evaluation`): one
    column per policy, the rows of :data:`~cyclealign.metrics.CLI_EVAL_ROWS`; with several prompt
    sources (``by_source``), the rows of :data:`~cyclealign.metrics.CLI_SOURCE_ROWS` per source follow.

    Raises:
        KeyError, IndexError: no line, or a line without ``label`` / ``vs``.
    """
    table = Table(title="held-out evaluation")
    table.add_column("metric")
    for line in lines:
        table.add_column(line["label"], justify="right")
    for key in CLI_EVAL_ROWS:
        metric = eval_metric(key)
        label = f"{metric.label} vs {lines[0]['vs']}" if key == "win_rate" else metric.label
        table.add_row(label, *[metric.text(ln, nonfinite=None) for ln in lines])
    if any("decoding" in ln for ln in lines):
        judged = eval_metric("judged_response")
        table.add_row(judged.label, *[judged.text(ln) for ln in lines])
    sources = list(dict.fromkeys(src for ln in lines for src in ln.get("by_source", {})))
    for src in sources:
        parts = [ln.get("by_source", {}).get(src, {}) for ln in lines]
        table.add_section()
        for key in CLI_SOURCE_ROWS:
            if key == "reward_mean" and not any("reward_mean" in p for p in parts):
                continue  # no reward model scored this evaluation
            metric = eval_metric(key)
            table.add_row(f"{src}: {metric.label}", *[metric.text(p, nonfinite=None) for p in parts])
    return table


def status_table(st: dict[str, Any], title: str) -> Table:
    """``cyclealign status`` as a two-column table, from :func:`cyclealign.schedule.run_status`'s dict.

    Raises:
        KeyError: ``st`` lacks a field ``run_status`` returns.
    """
    table = Table(title=title, show_header=False)
    table.add_column("field")
    table.add_column("value")
    table.add_row("state", st["state"])
    table.add_row("rounds done", f"{st['rounds_done']} / {st['rounds_scheduled']}")
    if st["phase_pending"]:
        table.add_row(f"round {st['round']}", f"done: {', '.join(st['phases_done']) or '-'}; next: {st['phase_pending']}")
    lock = st["lock"]
    holder = "free" if lock is None else f"pid {lock.get('pid')} on {lock.get('host')} since {lock.get('started')}"
    table.add_row("lock", holder + ("" if lock is None or lock["live"] else " (stale: that process died)"))
    table.add_row("ranker spend", spend_text(st["spend"], embedded=st.get("ranker", "") is None))
    last = st["last_metrics"] or {}
    table.add_row("last round", cell(last.get("round")))
    for key in STATUS_ROWS:
        metric = round_metric(key)
        table.add_row(metric.label, metric.text(last, nonfinite=None))
    table.add_row("promoted", st["promoted"] or "-")
    if st.get("stale_servers_stopped"):
        pids = ", ".join(str(p) for p in st["stale_servers_stopped"])
        table.add_row("stopped", f"server(s) left running by a killed run: pid {pids}")
    return table
