"""The report's tables and sample blocks: what :func:`cyclealign.report.html.write_report` hands its
template, built from the run directory's files (read only).

The per-round and evaluation tables show the metrics :mod:`cyclealign.metrics` declares, under
its labels and decimals (the CLI prints the same ones).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cyclealign.data.selection import recorded_round_prompts
from cyclealign.data.sources import load_run_prompts
from cyclealign.errors import CycleAlignError
from cyclealign.metrics import REPORT_EVAL_COLUMNS, REPORT_ROUND_COLUMNS, eval_metric, round_metric
from cyclealign.rundir import Phase, RunDir

if TYPE_CHECKING:
    from cyclealign.config import Config

__all__ = [
    "ROUND_SAMPLES",
    "SAMPLE_PROMPTS",
    "eval_columns",
    "eval_rows",
    "eval_samples",
    "metric_table",
    "round_samples",
    "settings",
    "template_rows",
]

SAMPLE_PROMPTS = 5
"""Held-out prompts shown side by side when ``eval/samples.jsonl`` exists."""
ROUND_SAMPLES = 3
"""Prompts shown per round (top- and bottom-ranked response) otherwise."""


def metric_table(rows: list[dict[str, Any]]) -> tuple[list[dict[str, str]], list[list[str]]]:
    """The per-round table of ``metrics.jsonl`` lines: its columns (``key``, ``label``: those of
    :data:`~cyclealign.metrics.REPORT_ROUND_COLUMNS` that some round has) and one row of cells per line."""
    metrics = [round_metric(k) for k in REPORT_ROUND_COLUMNS]
    shown = [m for m in metrics if any(m.value(r) is not None for r in rows)]
    return [{"key": m.key, "label": m.label} for m in shown], [[m.text(r) for m in shown] for r in rows]


def eval_columns() -> list[str]:
    """Headers of the evaluation table (:data:`~cyclealign.metrics.REPORT_EVAL_COLUMNS`)."""
    return [eval_metric(k).label for k in REPORT_EVAL_COLUMNS]


def eval_rows(summary: list[dict[str, Any]]) -> list[list[str]]:
    """One row of cells per evaluation summary line (``eval/summary.jsonl``), in :func:`eval_columns` order."""
    metrics = [eval_metric(k) for k in REPORT_EVAL_COLUMNS]
    return [[m.text(s) for m in metrics] for s in summary]


def eval_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Up to :data:`SAMPLE_PROMPTS` prompts (first seen first), one column per policy (by round)."""
    labels: dict[int, str] = {}  # round -> label (the last line's)
    prompts: dict[str, Any] = {}  # prompt id -> its text (the first line's), first seen first
    responses: dict[tuple[str, int], Any] = {}  # (prompt id, round) -> response (the last line's)
    for s in samples:
        labels[s["round"]] = s.get("label", str(s["round"]))
        prompts.setdefault(s["prompt_id"], s.get("prompt", s["prompt_id"]))
        responses[(s["prompt_id"], s["round"])] = s["response"]
    policies = sorted(labels)
    rows = [
        {"prompt": prompt, "responses": [responses.get((pid, k), "-") for k in policies]}
        for pid, prompt in list(prompts.items())[:SAMPLE_PROMPTS]
    ]
    return {"kind": "eval", "labels": [labels[k] for k in policies], "rows": rows}


def round_samples(run: RunDir, rounds: list[int], cfg: Config | None, config_error: Exception | None = None) -> dict[str, Any]:
    """The first :data:`ROUND_SAMPLES` prompts of each round (those with generations) with their top-
    and bottom-ranked responses; prompt texts are rebuilt from the run's prompt source named in ``cfg``,
    or shown as ids when it is unavailable (``cfg`` None: ``config_error`` says why)."""
    generations = {k: run.round(k).read_generations()[:ROUND_SAMPLES] for k in rounds}
    generations = {k: gens for k, gens in generations.items() if gens}
    texts: dict[int, dict[str, str]] = {}
    error = config_error
    if cfg is not None and generations:
        try:
            prompts = load_run_prompts(run, cfg)
            for k in generations:
                texts[k] = {p.id: p.query_text for p in recorded_round_prompts(run, cfg, k, prompts)}
        except CycleAlignError as e:
            error = e
    note = None if error is None else f"Prompt texts unavailable, showing prompt ids ({error})."
    blocks = []
    for k, gens in generations.items():
        rankings = {r.prompt_id: r for r in run.round(k).read_rankings()}
        rows = []
        for g in gens:
            r = rankings.get(g.prompt_id)
            if r is not None and r.ranking is not None and len(r.ranking) == len(g.responses):
                top, bottom = g.responses[r.ranking[0]], g.responses[r.ranking[-1]]
            else:
                top, bottom = ("not ranked" if r is None else f"unranked: {r.reason}"), "-"
            rows.append({"prompt": texts.get(k, {}).get(g.prompt_id, g.prompt_id), "top": top, "bottom": bottom})
        blocks.append({"round": k, "rows": rows})
    return {"kind": "rounds" if blocks else "none", "rounds": blocks, "note": note}


def template_rows(run: RunDir, rounds: list[int]) -> list[dict[str, Any]]:
    """Per round: the ranker templates its rank phase recorded (``name``: first 12 hex digits of
    the content hash) and the files changed since the previous round; empty when no round
    recorded them (a run from before template hashes were recorded)."""
    from cyclealign.templates.files import changed_templates

    recorded = {k: run.round(k).phases().get(Phase.RANK, {}).get("templates") for k in rounds}
    if not any(recorded.values()):
        return []
    rows = []
    for k in rounds:
        hashes = recorded[k] or {}
        shown = ", ".join(f"{name.removesuffix('.jinja')} {digest[:12]}" for name, digest in sorted(hashes.items()))
        rows.append({"round": k, "templates": shown or "-", "changed": changed_templates(recorded.get(k - 1), hashes)})
    return rows


def settings(cfg: Config | None) -> list[tuple[str, str]]:
    """A few fields of the run's config for the page header (empty without one: config.json unreadable)."""
    from cyclealign.models.loading import EMBEDDED_NAME

    if cfg is None:
        return []
    embedded = f"embedded {EMBEDDED_NAME}"
    ranker = embedded if cfg.ranker.base_url is None else f"{cfg.ranker.model} @ {cfg.ranker.base_url}"
    return [
        ("policy", cfg.model.name_or_path or embedded),
        ("ranker", ranker),
        ("N", str(cfg.generation.num_samples)),
        ("prompts per round", str(cfg.prompts_per_round)),
        ("loss", cfg.train.loss),
    ]
