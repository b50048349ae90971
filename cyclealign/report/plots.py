"""The report's plots: one matplotlib ``Figure`` per view of the per-round metrics, and the
held-out win rate.

Each ``plot_*`` function takes the rows it draws (``metrics.jsonl`` lines, or evaluation summary
lines for :func:`plot_win_rate`) and returns a ``Figure``, or None when the rows hold none of its
data (runs written by older versions may lack some keys). Figures are drawn with the Agg canvas
(no pyplot, no display); :func:`render_png` turns one into PNG bytes.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cyclealign.metrics import TIMED_PHASES, number

__all__ = [
    "DPI",
    "METRIC_PLOTS",
    "PANEL",
    "Plot",
    "plot_agreement",
    "plot_loss",
    "plot_phases",
    "plot_pool",
    "plot_ranker",
    "plot_unranked",
    "plot_win_rate",
    "render_png",
    "series",
]

DPI = 100
"""PNG resolution, dots per inch (a 6.4 x 3.6 in panel is 640 x 360 pixels)."""
PANEL = (6.4, 3.6)
"""Size of one plot panel, inches."""


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


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(rounds, values) of ``key`` over ``rows``, leaving out rounds where it is missing or not finite.

    >>> series([{"round": 0, "x": 1}, {"round": 1}, {"round": 2, "x": 0.5}], "x")
    ([0, 2], [1.0, 0.5])
    """
    points = [(r["round"], number(r.get(key))) for r in rows]
    kept = [(k, v) for k, v in points if v is not None]
    return [k for k, _ in kept], [v for _, v in kept]


def _figure(panels: int = 1) -> tuple[Figure, list[Any]]:
    """A figure of ``panels`` side-by-side :data:`PANEL` axes on an Agg canvas."""
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
    billed them) and the ranker's cost in USD; the cost panel is left out when every round cost
    0 USD (a free ranker: the report says why, see :func:`cyclealign.report.sections.ranker_cost_note`)."""
    xs, sent = series(rows, "tokens_sent")
    xr, received = series(rows, "tokens_received")
    xc, cost = series(rows, "ranker_cost_usd")
    if not any(cost):
        xc, cost = [], []
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
    phases = list(TIMED_PHASES) + sorted({p for r in timed for p in r["phase_s"]} - set(TIMED_PHASES))
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


def render_png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes at :data:`DPI`."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
