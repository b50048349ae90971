"""An HTML report of a run: metrics across rounds, plots, held-out evaluation and sample responses.

:func:`write_report` reads the run directory (never writes to it outside the report folder) and
writes ``report.html``, one self-contained file (the plots are embedded as base64 PNG data URIs),
plus each plot as a separate PNG next to it. The page is rendered from the shipped Jinja2 template
``cyclealign/assets/report.html.jinja`` (:func:`cyclealign.resources.report_template_path`) with
autoescaping, so response texts are HTML-escaped. The plots are :mod:`cyclealign.report.plots`,
the tables and sample blocks :mod:`cyclealign.report.sections`; the metrics both show are
declared in :mod:`cyclealign.metrics`.

Sources:

- each finished round's ``metrics`` phase, as its manifest recorded it (``metrics.jsonl`` holds the
  same lines, see :meth:`cyclealign.round.Round.metrics`); for a run without them, ``metrics.jsonl``.
  Two tables (ranking and training; ranker cost, tokens and time), each fitting a 1400 px
  window. Plots: agreement rate and Kendall tau; train loss (with its ranking and SFT terms);
  unranked rate with the unranked reasons; demonstration pool; ranker tokens and cost (no cost
  panel for a free ranker, with a line saying why); phase wall times. Runs written by older
  versions may lack some keys: a plot without data is left out.
- each round's manifest: the content hashes of the ranker templates its rank phase used, shown
  per round, with the files that changed since the previous round marked.
- ``eval/summary.jsonl`` (``cyclealign eval``), when present: a win-rate plot with the Wilson 95%
  interval and a table of the evaluation numbers; without it, the commands that add one.
- ``eval/samples.jsonl``, when present: up to :data:`~cyclealign.report.sections.SAMPLE_PROMPTS` held-out
  prompts with each policy's response side by side; otherwise the first
  :data:`~cyclealign.report.sections.ROUND_SAMPLES` prompts of each round
  with their top- and bottom-ranked responses (prompt texts rebuilt from the run's prompt source).
  A response cut at the token cap is marked ``… [cut at N tokens]``.

The page fits a 1400 px window without a horizontal scroll: long unbroken words (URLs) wrap
inside their cell, and each wide table sits in a box that scrolls on its own on a narrower one.

Plots are drawn on matplotlib ``Figure`` objects with the Agg canvas (no pyplot, no display).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from cyclealign import resources
from cyclealign.errors import CycleAlignError, RunDirError
from cyclealign.report.plots import METRIC_PLOTS, Plot, plot_win_rate, render_png
from cyclealign.report.sections import (
    eval_columns,
    eval_hint,
    eval_rows,
    eval_samples,
    metric_tables,
    ranker_cost_note,
    round_samples,
    settings,
    template_rows,
)
from cyclealign.rundir import RunDir
from cyclealign.files import read_jsonl

__all__ = ["load_metrics", "write_report"]


def load_metrics(run: RunDir) -> list[dict[str, Any]]:
    """The run's per-round metrics lines, by round: the ``metrics`` phase each finished round
    recorded in its manifest (the source ``metrics.jsonl`` is written from, so a torn or stale
    ``metrics.jsonl`` does not hide or add a round), or ``metrics.jsonl`` for a run whose
    manifests hold none.

    Raises:
        RunDirError: no metrics at all (naming the directory), or a corrupt line (naming the file).
    """
    rows = [{**line, "round": k} for k, line in enumerate(run.metrics_lines())]
    if not rows:
        rows = read_jsonl(run.metrics)
    if not rows:
        raise RunDirError(f"{run.metrics}: not found and no round of {run.path} has finished: nothing to report")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("round"), int):
            raise RunDirError(f"{run.metrics}:{i}: a metrics line needs an integer \"round\"")
    return sorted(rows, key=lambda r: r["round"])


def _read_eval(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """The lines of an ``eval/`` JSONL file (none when it is absent).

    Raises:
        RunDirError: a line is not an object holding the ``required`` keys (naming file and line).
    """
    rows = read_jsonl(path)
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or any(k not in row for k in required):
            raise RunDirError(f"{path}:{i}: expected an object with {', '.join(required)}")
    return rows


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the run's HTML report and its plots; returns the path of ``report.html``.

    Args:
        run_dir: the run directory.
        out: the report folder (created; files in it are replaced); default ``run_dir/report``.

    Returns:
        ``out / "report.html"``; each plot is also ``out / "<name>.png"`` (``agreement``, ``loss``,
        ``unranked``, ``pool``, ``ranker``, ``phases``, ``win_rate``: those with data).

    Raises:
        RunDirError: the run has no metrics (see :func:`load_metrics`) or a corrupt JSONL line.
    """
    run = RunDir(run_dir)
    out = Path(out) if out is not None else run.report_dir
    rows = load_metrics(run)
    summary = _read_eval(run.eval_summary, ("round",))
    samples = _read_eval(run.eval_samples, ("round", "prompt_id", "response"))

    try:
        cfg, config_error = run.read_config(), None
    except (CycleAlignError, OSError, ValueError) as e:  # the report still renders, without the settings
        cfg, config_error = None, e

    out.mkdir(parents=True, exist_ok=True)
    figures = [(name, title, draw(rows)) for name, title, draw in METRIC_PLOTS]
    if summary:
        figures.append(("win_rate", "Held-out win rate with Wilson 95% interval", plot_win_rate(summary)))
    notes = {"ranker": ranker_cost_note(rows, cfg)}
    plots, skipped = [], []
    for name, title, fig in figures:
        if name == "ranker" and notes["ranker"]:
            title = "Ranker tokens per round"
        if fig is None:
            skipped.append(name)
            (out / f"{name}.png").unlink(missing_ok=True)  # a stale plot of an earlier report
            continue
        plot = Plot(name, title, render_png(fig))
        (out / f"{name}.png").write_bytes(plot.png)
        plots.append(plot)

    template = resources.report_template_path()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template.parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    html = env.get_template(template.name).render(
        run_name=run.path.resolve().name,
        run_dir=str(run.path),
        settings=settings(cfg),
        metric_tables=metric_tables(rows),
        template_rows=template_rows(run, [r["round"] for r in rows]),
        eval_columns=eval_columns(),
        eval_rows=eval_rows(summary),
        eval_hint=None if summary else eval_hint(run, cfg),
        plots=plots,
        skipped=skipped,
        plot_notes={name: note for name, note in notes.items() if note},
        samples=eval_samples(samples) if samples else round_samples(run, [r["round"] for r in rows], cfg, config_error),
    )
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path
