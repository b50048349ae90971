"""An HTML report of a run: metrics across rounds, plots, held-out evaluation and sample responses.

:func:`write_report` reads the run directory (never writes to it outside the report folder) and
writes ``report.html``, one self-contained file (the plots are embedded as base64 PNG data URIs),
plus each plot as a separate PNG next to it. The page is rendered from the Jinja2 template
``cyclealign/assets/report.html.jinja`` with autoescaping, so response texts are HTML-escaped.

Sources:

- ``metrics.jsonl`` (one line per round, see :meth:`cyclealign.loop.Round.metrics`); for a run
  interrupted before it was written, the ``metrics`` phase each finished round recorded in its
  manifest. Plots: agreement rate and Kendall tau; train loss (with its ranking and SFT terms);
  unranked rate with the unranked reasons; demonstration pool; ranker tokens and cost; phase
  wall times. Runs written by older versions may lack some keys: a plot without data is left out.
- each round's manifest: the content hashes of the ranker templates its rank phase used, shown
  per round, with the files that changed since the previous round marked.
- ``eval/summary.jsonl`` (``cyclealign eval``), when present: a win-rate plot with the Wilson 95%
  interval and a table of the evaluation numbers.
- ``eval/samples.jsonl``, when present: up to :data:`SAMPLE_PROMPTS` held-out prompts with each
  policy's response side by side; otherwise the first :data:`ROUND_SAMPLES` prompts of each round
  with their top- and bottom-ranked responses (prompt texts rebuilt from the run's prompt source).

Plots are drawn on matplotlib ``Figure`` objects with the Agg canvas (no pyplot, no display).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cyclealign import rundir
from cyclealign.data import load_run_prompts, recorded_round_prompts
from cyclealign.errors import CycleAlignError, RunDirError
from cyclealign.formatting import fmt
from cyclealign.rundir import RunDir, read_jsonl

if TYPE_CHECKING:
    from cyclealign.config import Config

TEMPLATE = Path(__file__).resolve().parent / "assets" / "report.html.jinja"
SAMPLE_PROMPTS = 5
"""Held-out prompts shown side by side when ``eval/samples.jsonl`` exists."""
ROUND_SAMPLES = 3
"""Prompts shown per round (top- and bottom-ranked response) otherwise."""
DPI = 100
"""PNG resolution, dots per inch (a 6.4 x 3.6 in panel is 640 x 360 pixels)."""
PANEL = (6.4, 3.6)
"""Size of one plot panel, inches."""
PHASES = tuple(p for p in rundir.PHASES if p != "metrics")
"""The timed phases of a round, in order (the ``metrics`` phase records their wall times)."""


@dataclass(frozen=True)
class Plot:
    """One rendered plot.

    Attributes:
        name: file stem (``<name>.png`` in the report folder) and HTML anchor.
        title: caption.
        png: the PNG bytes.
    """

    name: str
    title: str
    png: bytes

    @property
    def data_uri(self) -> str:
        """The PNG as a ``data:image/png;base64,...`` URI."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, null, NaN, infinite, not a number).

    >>> [number(v) for v in (1, 0.5, None, float("nan"), "3", True)]
    [1.0, 0.5, None, None, None, None]
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def load_metrics(run: RunDir) -> list[dict[str, Any]]:
    """The run's per-round metrics lines, by round: ``metrics.jsonl``, or (a run interrupted before
    writing it) the ``metrics`` phase recorded in each finished round's manifest.

    Raises:
        RunDirError: no metrics at all (naming the directory), or a corrupt line (naming the file).
    """
    rows = read_jsonl(run.metrics)
    if not rows:
        rows = [dict(run.round(k).phases()["metrics"], round=k) for k in range(run.finished_rounds())]
    if not rows:
        raise RunDirError(f"{run.metrics}: not found and no round of {run.path} has finished: nothing to report")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("round"), int):
            raise RunDirError(f"{run.metrics}:{i}: a metrics line needs an integer \"round\"")
    return sorted(rows, key=lambda r: r["round"])


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(rounds, values) of ``key`` over ``rows``, leaving out rounds where it is missing or not finite.

    >>> series([{"round": 0, "x": 1}, {"round": 1}, {"round": 2, "x": 0.5}], "x")
    ([0, 2], [1.0, 0.5])
    """
    points = [(r["round"], number(r.get(key))) for r in rows]
    kept = [(k, v) for k, v in points if v is not None]
    return [k for k, _ in kept], [v for _, v in kept]


def _figure(panels: int = 1) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(PANEL[0] * panels, PANEL[1]), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    return fig, list(axes)


def _round_axis(ax: Any, rounds: list[int]) -> None:
    """Integer round ticks, with room for a bar at each end (also when there is one round)."""
    ax.set_xlabel("round")
    ax.set_xticks(sorted(set(rounds)))
    ax.set_xlim(min(rounds) - 0.6, max(rounds) + 0.6)
    ax.grid(True, axis="y", alpha=0.3)


def _bar_ylim(ax: Any, values: list[float]) -> None:
    """y from 0 with headroom for bar labels (an all-zero series gets a unit axis, not a negative one)."""
    top = max(values, default=0.0)
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)


def _legend_outside(ax: Any) -> None:
    """The legend to the right of the axes, where it cannot hide a bar."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def _line_plot(
    rows: list[dict[str, Any]],
    keys: list[tuple[str, str]],
    ylabel: str,
    title: str,
    ylim: tuple[float, float] | None = None,
) -> Figure | None:
    """One line over rounds per ``(key, label)`` series that has data (None when none has); with
    ``ylim``, that y range and a grey line at 0."""
    fig, (ax,) = _figure()
    seen: list[int] = []
    for key, label in keys:
        x, y = series(rows, key)
        if x:
            ax.plot(x, y, marker="o", label=label)
            seen += x
    if not seen:
        return None
    if ylim is not None:
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best")
    _round_axis(ax, seen)
    return fig


def _stacked(ax: Any, x: list[int], layers: list[tuple[str, list[float]]]) -> list[float]:
    """One bar per round for each ``(label, values)`` layer, stacked in order; returns the stack heights."""
    bottom = [0.0] * len(x)
    for label, values in layers:
        ax.bar(x, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    return bottom


def plot_agreement(rows: list[dict[str, Any]]) -> Figure | None:
    """Agreement rate (mean LCS length / N, in [0, 1]) and Kendall tau (in [-1, 1]) per round."""
    return _line_plot(
        rows,
        [("agreement_rate", "agreement rate (LCS / N)"), ("kendall_tau", "Kendall tau")],
        "black-box vs white-box ranking",
        "Agreement between the two rankings",
        ylim=(-1.05, 1.05),
    )


def plot_loss(rows: list[dict[str, Any]]) -> Figure | None:
    """Mean training loss per round, with its ranking and SFT terms where recorded (nats)."""
    return _line_plot(
        rows,
        [("train_loss", "train loss"), ("ranking_loss", "ranking loss"), ("sft_loss", "SFT loss")],
        "loss (nats)",
        "Training loss",
    )


def plot_unranked(rows: list[dict[str, Any]]) -> Figure | None:
    """Unranked rate (unranked / (ranked + unranked)) per round and, where recorded, the unranked
    prompts by reason (stacked counts)."""
    points = []
    for r in rows:
        ranked, unranked = number(r.get("ranked")), number(r.get("unranked"))
        if ranked is not None and unranked is not None and ranked + unranked > 0:
            points.append((r["round"], unranked / (ranked + unranked)))
    if not points:
        return None
    reasons = sorted({k for r in rows for k in (r.get("unranked_reasons") or {})})
    fig, axes = _figure(2 if reasons else 1)
    ax = axes[0]
    ax.plot([k for k, _ in points], [v for _, v in points], marker="o", color="tab:red")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("unranked / prompts")
    ax.set_title("Unranked rate")
    _round_axis(ax, [k for k, _ in points])
    if reasons:
        ax = axes[1]
        x = [r["round"] for r in rows]
        _stacked(ax, x, [(reason, [float((r.get("unranked_reasons") or {}).get(reason, 0)) for r in rows]) for reason in reasons])
        ax.set_ylabel("unranked prompts")
        ax.set_title("Unranked prompts by reason")
        ax.yaxis.get_major_locator().set_params(integer=True)
        _legend_outside(ax)
        _round_axis(ax, x)
    return fig


def plot_pool(rows: list[dict[str, Any]]) -> Figure | None:
    """Dynamic demonstration pool size after each round (line) and demonstrations added (bars)."""
    x, size = series(rows, "pool_size")
    if not x:
        return None
    fig, (ax,) = _figure()
    xa, added = series(rows, "pool_added")
    if xa:
        ax.bar(xa, added, color="tab:green", alpha=0.4, label="added this round")
    ax.plot(x, size, marker="o", color="tab:green", label="pool size")
    ax.set_ylabel("demonstrations")
    ax.set_title("Dynamic demonstration pool")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    _round_axis(ax, x)
    return fig


def plot_ranker(rows: list[dict[str, Any]]) -> Figure | None:
    """Ranker tokens per round (sent = prompt tokens, received = completion tokens, as the API
    billed them) and the ranker's cost in USD."""
    xs, sent = series(rows, "tokens_sent")
    xr, received = series(rows, "tokens_received")
    xc, cost = series(rows, "ranker_cost_usd")
    if not (xs or xr or xc):
        return None
    panels = (1 if xs or xr else 0) + (1 if xc else 0)
    fig, axes = _figure(panels)
    if xs or xr:
        ax = axes[0]
        width = 0.4
        if xs:
            bars = ax.bar([k - width / 2 for k in xs], sent, width, label="sent (prompt)")
            ax.bar_label(bars, fmt="{:,.0f}", fontsize="x-small")
        if xr:
            bars = ax.bar([k + width / 2 for k in xr], received, width, label="received (completion)")
            ax.bar_label(bars, fmt="{:,.0f}", fontsize="x-small")
        _bar_ylim(ax, sent + received)
        ax.set_ylabel("tokens")
        ax.set_title("Ranker tokens")
        _legend_outside(ax)
        _round_axis(ax, xs + xr)
    if xc:
        ax = axes[-1]
        bars = ax.bar(xc, cost, color="tab:purple")
        ax.bar_label(bars, fmt="${:,.4f}", fontsize="x-small")
        _bar_ylim(ax, cost)
        ax.set_ylabel("USD")
        ax.set_title("Ranker cost")
        _round_axis(ax, xc)
    return fig


def plot_phases(rows: list[dict[str, Any]]) -> Figure | None:
    """Wall seconds of each phase per round, stacked."""
    timed = [r for r in rows if isinstance(r.get("phase_s"), dict)]
    if not timed:
        return None
    phases = list(PHASES) + sorted({p for r in timed for p in r["phase_s"]} - set(PHASES))
    fig, (ax,) = _figure()
    x = [r["round"] for r in timed]
    layers = [(phase, [number(r["phase_s"].get(phase)) or 0.0 for r in timed]) for phase in phases]
    totals = _stacked(ax, x, [(phase, secs) for phase, secs in layers if any(secs)])
    for k, total in zip(x, totals):
        ax.annotate(f"{total:.1f} s", (k, total), ha="center", va="bottom", fontsize="small")
    ax.margins(y=0.1)
    ax.set_ylabel("wall seconds")
    ax.set_title("Time per phase")
    _legend_outside(ax)
    _round_axis(ax, x)
    return fig


def plot_win_rate(summary: list[dict[str, Any]]) -> Figure | None:
    """Held-out pairwise outcomes of each evaluated policy against its reference.

    One stacked bar per policy: the shares of wins, ties and losses among judged pairs (invalid
    judgements left out, their count under the bar); a black interval on the win share is the
    Wilson 95% interval of ``wins / judged``; a diamond marks ``(wins + ties / 2) / judged``, whose
    parity is 0.5 (dashed line). Rows without win counts are skipped; None when none has any.
    """
    rows = [s for s in summary if number(s.get("win_rate")) is not None and all(k in s for k in ("wins", "losses", "ties"))]
    if not rows:
        return None
    fig, (ax,) = _figure()
    x = list(range(len(rows)))
    judged = [max(1, s["wins"] + s["losses"] + s["ties"]) for s in rows]
    win = [s["wins"] / j for s, j in zip(rows, judged)]
    tie = [s["ties"] / j for s, j in zip(rows, judged)]
    loss = [s["losses"] / j for s, j in zip(rows, judged)]
    ax.bar(x, win, color="tab:green", alpha=0.8, label="wins")
    ax.bar(x, tie, bottom=win, color="lightgrey", label="ties")
    ax.bar(x, loss, bottom=[w + t for w, t in zip(win, tie)], color="tab:red", alpha=0.7, label="losses")
    # A missing interval bound draws no bar on that side.
    lows, highs = [number(s.get("ci_low")) for s in rows], [number(s.get("ci_high")) for s in rows]
    low = [0.0 if lo is None else max(0.0, w - lo) for lo, w in zip(lows, win)]
    high = [0.0 if hi is None else max(0.0, hi - w) for hi, w in zip(highs, win)]
    ax.errorbar(x, win, yerr=[low, high], fmt="none", ecolor="black", capsize=6, label="win rate, Wilson 95%", clip_on=False)
    half = [w + t / 2 for w, t in zip(win, tie)]
    ax.scatter(x, half, marker="D", color="black", zorder=3, label="win rate, ties half", clip_on=False)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="parity (ties half)")
    refs = sorted({str(s.get("vs", "?")) for s in rows})
    labels = []
    for s in rows:
        extra = f", {s['invalid']} invalid" if s.get("invalid") else ""
        labels.append(f"{s.get('label', s.get('round'))} vs {s.get('vs', '?')}\nW/L/T {s['wins']}/{s['losses']}/{s['ties']}{extra}")
    ax.set_xticks(x, labels, fontsize="small")
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of judged pairs")
    ax.set_title(f"Held-out pairwise judgements vs {', '.join(refs)}")
    _legend_outside(ax)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


METRIC_PLOTS: list[tuple[str, str, Callable[[list[dict[str, Any]]], Figure | None]]] = [
    ("agreement", "Agreement rate and Kendall tau per round", plot_agreement),
    ("loss", "Training loss per round", plot_loss),
    ("unranked", "Unranked rate and reasons per round", plot_unranked),
    ("pool", "Dynamic demonstration pool", plot_pool),
    ("ranker", "Ranker tokens and cost per round", plot_ranker),
    ("phases", "Wall time per phase", plot_phases),
]

METRIC_COLUMNS = [
    ("round", "round", 0),
    ("prompts", "prompts", 0),
    ("ranked", "ranked", 0),
    ("unranked", "unranked", 0),
    ("agreement_rate", "agreement rate", 3),
    ("kendall_tau", "Kendall tau", 3),
    ("pool_size", "pool size", 0),
    ("train_loss", "train loss", 3),
    ("ranking_loss", "ranking loss", 3),
    ("sft_loss", "SFT loss", 3),
    ("train_ranking_accuracy", "train ranking acc.", 3),
    ("ranker_calls", "ranker calls", 0),
    ("ranker_api_calls", "API calls", 0),
    ("ranker_cache_hits", "cache hits", 0),
    ("tokens_sent", "tokens sent", 0),
    ("tokens_received", "tokens received", 0),
    ("ranker_cost_usd", "cost USD", 4),
    ("consistency_rate", "consistency rate", 3),
    ("generated_tokens", "generated tokens", 0),
    ("phase_total_s", "wall s (phases)", 1),
]
"""(key, header, decimals) of the per-round table; a column no round has is left out."""


def _metric_table(rows: list[dict[str, Any]]) -> tuple[list[dict[str, str]], list[list[str]]]:
    def cell(r: dict[str, Any], key: str) -> Any:
        if key == "phase_total_s":
            phases = r.get("phase_s")
            return sum(number(v) or 0.0 for v in phases.values()) if isinstance(phases, dict) else None
        return r.get(key)

    cols = [(k, label, d) for k, label, d in METRIC_COLUMNS if any(cell(r, k) is not None for r in rows)]
    return [{"key": k, "label": label} for k, label, _ in cols], [[fmt(cell(r, k), d) for k, _, d in cols] for r in rows]


EVAL_COLUMNS = [
    "policy", "vs", "prompts", "wins / losses / ties", "win rate", "95% CI", "Kendall tau", "agreement rate",
    "length (tokens)", "reward",
]


def _eval_table(summary: list[dict[str, Any]]) -> list[list[str]]:
    def pm(mean: Any, std: Any) -> str:
        return "-" if number(mean) is None else f"{fmt(number(mean), 2)} ± {fmt(number(std), 2)}"

    out = []
    for s in summary:
        wlt = f"{s['wins']} / {s['losses']} / {s['ties']}" if all(k in s for k in ("wins", "losses", "ties")) else "-"
        ci = f"[{fmt(number(s.get('ci_low')))}, {fmt(number(s.get('ci_high')))}]" if number(s.get("ci_low")) is not None else "-"
        out.append(
            [
                fmt(s.get("label", s.get("round"))), fmt(s.get("vs")), fmt(s.get("prompts")), wlt,
                fmt(number(s.get("win_rate"))), ci, fmt(number(s.get("kendall_tau"))),
                fmt(number(s.get("agreement_rate"))), pm(s.get("length_mean"), s.get("length_std")),
                pm(s.get("reward_mean"), s.get("reward_std")),
            ]
        )
    return out


def _eval_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
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


def _round_samples(run: RunDir, rounds: list[int], cfg: Config | None, config_error: Exception | None = None) -> dict[str, Any]:
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


def _template_rows(run: RunDir, rounds: list[int]) -> list[dict[str, Any]]:
    """Per round: the ranker templates its rank phase recorded (``name``: first 12 hex digits of
    the content hash) and the files changed since the previous round; empty when no round
    recorded them (a run from before template hashes were recorded)."""
    from cyclealign.ranker.template_files import changed_templates

    recorded = {k: run.round(k).phases().get("rank", {}).get("templates") for k in rounds}
    if not any(recorded.values()):
        return []
    rows = []
    for k in rounds:
        hashes = recorded[k] or {}
        shown = ", ".join(f"{name.removesuffix('.jinja')} {digest[:12]}" for name, digest in sorted(hashes.items()))
        rows.append({"round": k, "templates": shown or "-", "changed": changed_templates(recorded.get(k - 1), hashes)})
    return rows


def _settings(cfg: Config | None) -> list[tuple[str, str]]:
    """A few fields of the run's config for the page header (empty without one: config.json unreadable)."""
    from cyclealign.models import EMBEDDED_NAME

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


def _render(fig: Figure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


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
    out = Path(out) if out is not None else run.path / "report"
    rows = load_metrics(run)
    summary = _read_eval(run.path / "eval" / "summary.jsonl", ("round",))
    samples = _read_eval(run.path / "eval" / "samples.jsonl", ("round", "prompt_id", "response"))

    try:
        cfg, config_error = run.read_config(), None
    except (CycleAlignError, OSError, ValueError) as e:  # the report still renders, without the settings
        cfg, config_error = None, e

    out.mkdir(parents=True, exist_ok=True)
    figures = [(name, title, draw(rows)) for name, title, draw in METRIC_PLOTS]
    if summary:
        figures.append(("win_rate", "Held-out win rate with Wilson 95% interval", plot_win_rate(summary)))
    plots, skipped = [], []
    for name, title, fig in figures:
        if fig is None:
            skipped.append(name)
            (out / f"{name}.png").unlink(missing_ok=True)  # a stale plot of an earlier report
            continue
        plot = Plot(name, title, _render(fig))
        (out / f"{name}.png").write_bytes(plot.png)
        plots.append(plot)

    columns, table = _metric_table(rows)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    html = env.get_template(TEMPLATE.name).render(
        run_name=run.path.resolve().name,
        run_dir=str(run.path),
        settings=_settings(cfg),
        metric_columns=columns,
        metric_rows=table,
        template_rows=_template_rows(run, [r["round"] for r in rows]),
        eval_columns=EVAL_COLUMNS,
        eval_rows=_eval_table(summary),
        plots=plots,
        skipped=skipped,
        samples=_eval_samples(samples) if samples else _round_samples(run, [r["round"] for r in rows], cfg, config_error),
    )
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path
