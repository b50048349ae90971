"""The report's tables and sample blocks: what :func:`cyclealign.report.html.write_report` hands its
template, built from the run directory's files (read only).

The per-round and evaluation tables show the metrics :mod:`cyclealign.metrics` declares, under
its labels and decimals (the CLI prints the same ones); the per-round metrics are split into the
tables :data:`~cyclealign.metrics.REPORT_ROUND_TABLES` names, so that each fits a 1400 px window.

A sample response cut at the token cap carries a mark (:func:`response_cell`): a round's
generations record whether each response ended with EOS (:attr:`cyclealign.records.Generation.finished`;
False: cut at ``generation.max_new_tokens``), and its token count is the cap it was cut at. For
generations that lack ``finished`` (written before it was recorded) a response is taken as cut
when its token count reaches the run's ``generation.max_new_tokens`` (``config.json``). Held-out
samples (``eval/samples.jsonl``) carry ``finished`` and ``tokens`` of their own; lines written
before those keys existed get no mark.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from cyclealign.data.selection import recorded_round_prompts
from cyclealign.data.sources import load_run_prompts
from cyclealign.errors import CycleAlignError
from cyclealign.metrics import REPORT_EVAL_COLUMNS, REPORT_ROUND_COLUMNS, REPORT_ROUND_TABLES, eval_metric, number, round_metric
from cyclealign.records import Generation
from cyclealign.rundir import Phase, RunDir

if TYPE_CHECKING:
    from cyclealign.config import Config

__all__ = [
    "ROUND_SAMPLES",
    "SAMPLE_PROMPTS",
    "eval_columns",
    "eval_hint",
    "eval_rows",
    "eval_samples",
    "metric_table",
    "metric_tables",
    "ranker_cost_note",
    "response_cell",
    "round_samples",
    "settings",
    "template_rows",
]

SAMPLE_PROMPTS = 5
"""Held-out prompts shown side by side when ``eval/samples.jsonl`` exists."""
ROUND_SAMPLES = 3
"""Prompts shown per round (top- and bottom-ranked response) otherwise."""


def metric_table(rows: list[dict[str, Any]], keys: tuple[str, ...] = REPORT_ROUND_COLUMNS) -> tuple[list[dict[str, str]], list[list[str]]]:
    """A per-round table of ``metrics.jsonl`` lines: its columns (``key``, ``label``: those of
    ``keys`` that some round has) and one row of cells per line."""
    metrics = [round_metric(k) for k in keys]
    shown = [m for m in metrics if any(m.value(r) is not None for r in rows)]
    return [{"key": m.key, "label": m.label} for m in shown], [[m.text(r) for m in shown] for r in rows]


def metric_tables(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-round tables of :data:`~cyclealign.metrics.REPORT_ROUND_TABLES`: each a ``title``,
    ``columns`` and ``rows`` (:func:`metric_table`); a table with no column but the round is left out."""
    tables = []
    for title, keys in REPORT_ROUND_TABLES:
        columns, cells = metric_table(rows, keys)
        if any(c["key"] != "round" for c in columns):
            tables.append({"title": title, "columns": columns, "rows": cells})
    return tables


def ranker_cost_note(rows: list[dict[str, Any]], cfg: Config | None) -> str | None:
    """Why the ranker cost panel is left out: one line when every round recorded a ranker cost of
    0 USD (the embedded ranker, a model priced at 0, an unknown price, or only cached replies);
    None when some round cost more, or none recorded a cost.

    Raises nothing (a price table that cannot be read leaves the reason out).
    """
    costs = [number(r.get("ranker_cost_usd")) for r in rows]
    if not any(c is not None for c in costs) or any(c for c in costs):
        return None
    if cfg is None:
        return "The ranker cost 0 USD in every round: no cost chart."
    if cfg.ranker.base_url is None:
        from cyclealign.models.loading import EMBEDDED_NAME

        return f"The ranker was the embedded {EMBEDDED_NAME} (free): 0 USD in every round, no cost chart."
    from cyclealign.errors import ConfigError
    from cyclealign.ranker.pricing import ranker_price

    try:
        price = ranker_price(cfg.ranker)
    except ConfigError:
        price = None
    if price is None:
        return (
            f"No price is known for the ranker model {cfg.ranker.model!r}: its calls counted 0 USD, no cost chart "
            "(set ranker.price_input_per_mtok and ranker.price_output_per_mtok, or add it to ranker.prices_path)."
        )
    if price.input_per_mtok == 0 and price.output_per_mtok == 0:
        return f"The ranker was free ({cfg.ranker.model} priced at 0 USD per million tokens): no cost chart."
    return "The ranker cost 0 USD in every round (no paid call: the replies came from the cache): no cost chart."


def eval_hint(run: RunDir, cfg: Config | None) -> dict[str, str]:
    """The commands that add a held-out evaluation to the report of a run without one: ``eval``
    (its held-out prompts: the run's ``eval.prompts``, else those of its own source no round
    used) and ``report``."""
    where = shlex.quote(str(run.path))
    return {"eval": f"cyclealign eval --run-dir {where}", "report": f"cyclealign report --run-dir {where}"}


def eval_columns() -> list[str]:
    """Headers of the evaluation table (:data:`~cyclealign.metrics.REPORT_EVAL_COLUMNS`)."""
    return [eval_metric(k).label for k in REPORT_EVAL_COLUMNS]


def eval_rows(summary: list[dict[str, Any]]) -> list[list[str]]:
    """One row of cells per evaluation summary line (``eval/summary.jsonl``), in :func:`eval_columns` order."""
    metrics = [eval_metric(k) for k in REPORT_EVAL_COLUMNS]
    return [[m.text(s) for m in metrics] for s in summary]


def response_cell(text: str, cut_at: int | None = None) -> dict[str, Any]:
    """A sample response as the template shows it: its ``text`` and ``cut_at``, the token count
    it was cut at (the cap; None: it ended on its own, or is not known to be cut)."""
    return {"text": text, "cut_at": cut_at}


def _generation_cells(g: Generation, max_new_tokens: int | None) -> list[dict[str, Any]]:
    """Each response of ``g`` as a :func:`response_cell`: cut where ``finished`` is False or, for
    a generation without ``finished``, where its token count reaches ``max_new_tokens``."""
    cells = []
    for i, text in enumerate(g.responses):
        tokens = len(g.response_token_ids[i]) if i < len(g.response_token_ids) else None
        if i < len(g.finished):
            cut = not g.finished[i]
        else:
            cut = tokens is not None and max_new_tokens is not None and tokens >= max_new_tokens
        cells.append(response_cell(text, tokens if cut else None))
    return cells


def eval_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Up to :data:`SAMPLE_PROMPTS` prompts (first seen first), one column per policy (by round);
    a response whose line says ``finished: false`` is marked cut at its ``tokens``."""
    labels: dict[int, str] = {}  # round -> label (the last line's)
    prompts: dict[str, Any] = {}  # prompt id -> its text (the first line's), first seen first
    responses: dict[tuple[str, int], dict[str, Any]] = {}  # (prompt id, round) -> response cell (the last line's)
    for s in samples:
        labels[s["round"]] = s.get("label", str(s["round"]))
        prompts.setdefault(s["prompt_id"], s.get("prompt", s["prompt_id"]))
        cut = s.get("finished") is False and isinstance(s.get("tokens"), int)
        responses[(s["prompt_id"], s["round"])] = response_cell(s["response"], s["tokens"] if cut else None)
    policies = sorted(labels)
    rows = [
        {"prompt": prompt, "responses": [responses.get((pid, k), response_cell("-")) for k in policies]}
        for pid, prompt in list(prompts.items())[:SAMPLE_PROMPTS]
    ]
    return {"kind": "eval", "labels": [labels[k] for k in policies], "rows": rows}


def round_samples(run: RunDir, rounds: list[int], cfg: Config | None, config_error: Exception | None = None) -> dict[str, Any]:
    """The first :data:`ROUND_SAMPLES` prompts of each round (those with generations) with their top-
    and bottom-ranked responses (:func:`response_cell`, marked where cut at the token cap); prompt
    texts are rebuilt from the run's prompt source named in ``cfg``, or shown as ids when it is
    unavailable (``cfg`` None: ``config_error`` says why)."""
    generations = {k: run.round(k).read_generations()[:ROUND_SAMPLES] for k in rounds}
    generations = {k: gens for k, gens in generations.items() if gens}
    max_new_tokens = cfg.generation.max_new_tokens if cfg is not None else None
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
                cells = _generation_cells(g, max_new_tokens)
                top, bottom = cells[r.ranking[0]], cells[r.ranking[-1]]
            else:
                top, bottom = response_cell("not ranked" if r is None else f"unranked: {r.reason}"), response_cell("-")
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
