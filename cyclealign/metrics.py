"""The metrics: every per-round metric and every held-out evaluation metric, declared once, and
how a value reads as a table cell (:func:`fmt`).

Each :class:`Metric` names the key a line holds (``metrics.jsonl``, ``eval/summary.jsonl``), the
label every view prints and the decimals of its floats. Three layers read these declarations and no
other list of metrics exists:

- :meth:`cyclealign.round.Round.metrics` builds the round's ``metrics.jsonl`` line with
  :func:`round_line` (keys and their order: :data:`ROUND_METRICS`; where a value comes from the
  round's manifest, :attr:`Metric.source` names the phase and its field, so a manifest field that
  ``metrics.jsonl`` holds under another key, ``rank.prompt_tokens`` as ``tokens_sent``, is renamed
  here and nowhere else);
- the CLI's per-round and evaluation tables (:mod:`cyclealign.cli.tables`);
- the HTML report's tables (:mod:`cyclealign.report.sections`).

Evaluation lines are written by :func:`cyclealign.evaluation.runner.run_evaluation`; their keys are read
here, not renamed. A few columns combine keys (wins / losses / ties, the 95% interval,
mean ± std): those are :class:`Metric` s with a ``cell`` function.

Stdlib only, besides the phase names (:class:`cyclealign.rundir.Phase`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cyclealign.rundir import PHASES, Phase

__all__ = [
    "CLI_EVAL_ROWS",
    "CLI_ROUND_ROWS",
    "CLI_SOURCE_ROWS",
    "EVAL_METRICS",
    "Metric",
    "REPORT_EVAL_COLUMNS",
    "REPORT_ROUND_COLUMNS",
    "REPORT_ROUND_TABLES",
    "ROUND_METRICS",
    "STATUS_ROWS",
    "TIMED_PHASES",
    "eval_metric",
    "fmt",
    "number",
    "phase_total",
    "round_line",
    "round_metric",
]

TIMED_PHASES = tuple(p for p in PHASES if p is not Phase.METRICS)
"""The timed phases of a round, in order; ``phase_s`` holds their wall seconds."""


def fmt(value: Any, digits: int = 3, nonfinite: str | None = "-") -> str:
    """A table cell: ``-`` for a missing value (None), floats with ``digits`` decimals, anything
    else as ``str``.

    A NaN or infinite float reads ``nonfinite`` (default ``-``: shown as missing, as in the report);
    with ``nonfinite=None`` it is formatted like any float (``nan``, ``inf``), as the CLI prints it.

    >>> [fmt(None), fmt(3), fmt(0.12345), fmt(float("nan")), fmt("base")]
    ['-', '3', '0.123', '-', 'base']
    >>> [fmt(float("nan"), nonfinite=None), fmt(float("inf"), 1, nonfinite=None), fmt(2.0, 1)]
    ['nan', 'inf', '2.0']
    """
    if value is None:
        return "-"
    if isinstance(value, float):
        if nonfinite is not None and not math.isfinite(value):
            return nonfinite
        return f"{value:.{digits}f}"
    return str(value)


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, null, NaN, infinite, not a number).

    >>> [number(v) for v in (1, 0.5, None, float("nan"), "3", True)]
    [1.0, 0.5, None, None, None, None]
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Metric:
    """One metric (a row of the CLI's tables, a column of the report's).

    Attributes:
        key: the key in the line (``metrics.jsonl``, an evaluation summary line); for a column
            that combines keys (``cell`` set), its own name, which no line holds.
        label: what every view prints for it.
        digits: decimals of a float value.
        source: ``(phase, field)``: :func:`round_line` copies the round manifest's entry of that
            phase and field; None: the value is computed by the caller.
        required: with ``source``, the field must be there (else KeyError); otherwise a missing
            field reads None (rounds recorded by older versions lack it).
        cell: a combined column's value from the whole line, None when the line lacks it (None:
            the value is the line's ``key``).
    """

    key: str
    label: str
    digits: int = 3
    source: tuple[str, str] | None = None
    required: bool = False
    cell: Callable[[Mapping[str, Any]], Any] | None = None

    def value(self, line: Mapping[str, Any]) -> Any:
        """The line's value of this metric (None when missing)."""
        return self.cell(line) if self.cell is not None else line.get(self.key)

    def text(self, line: Mapping[str, Any], nonfinite: str | None = "-") -> str:
        """The value as a table cell (:func:`fmt` with :attr:`digits`;
        ``nonfinite``: what NaN and infinite floats read, None = as formatted, ``nan``).

        >>> m = Metric("x", "x", 2)
        >>> m.text({"x": 0.5}), m.text({}), m.text({"x": float("nan")}), m.text({"x": float("nan")}, None)
        ('0.50', '-', '-', 'nan')
        """
        return fmt(self.value(line), self.digits, nonfinite=nonfinite)


def phase_total(line: Mapping[str, Any]) -> float | None:
    """Sum of a round line's ``phase_s`` wall seconds (None without them; a non-finite entry counts 0).

    >>> phase_total({"phase_s": {"generate": 1.5, "rank": 2.0}}), phase_total({})
    (3.5, None)
    """
    phases = line.get("phase_s")
    return sum(number(v) or 0.0 for v in phases.values()) if isinstance(phases, dict) else None


ROUND_METRICS: tuple[Metric, ...] = (
    Metric("round", "round", 0),
    Metric("prompts", "prompts", 0, ("generate", "prompts"), True),
    Metric("responses", "responses", 0, ("generate", "responses"), True),
    Metric("selected", "sent to ranker", 0, ("rank", "selected")),  # candidates asked (ranker.calls_per_round chooses them)
    Metric("ranked", "ranked", 0, ("rank", "ranked"), True),
    Metric("unranked", "unranked", 0, ("rank", "unranked"), True),
    Metric("agreement_rate", "agreement rate", 3),  # mean LCS length / N over ranked prompts
    Metric("kendall_tau", "Kendall tau", 3),  # mean over ranked prompts
    Metric("pool_added", "demos added", 0, ("agreement", "pool_added"), True),
    Metric("pool_size", "demo pool size", 0, ("agreement", "pool_size"), True),
    Metric("train_loss", "train loss", 3, ("train", "train_loss")),
    Metric("ranking_loss", "ranking loss", 3, ("train", "ranking_loss")),
    Metric("sft_loss", "SFT loss", 3, ("train", "sft_loss")),
    Metric("train_ranking_accuracy", "train ranking acc.", 3, ("train", "ranking_accuracy")),
    Metric("train_grad_norm", "train grad norm", 3, ("train", "grad_norm")),
    Metric("unranked_reasons", "unranked reasons"),  # {status label: prompts}
    Metric("ranker_calls", "ranker calls", 0, ("rank", "calls"), True),
    Metric("ranker_api_calls", "ranker API calls", 0, ("rank", "api_calls")),
    Metric("ranker_cache_hits", "ranker cache hits", 0, ("rank", "cache_hits")),
    Metric("tokens_sent", "ranker tokens sent", 0, ("rank", "prompt_tokens"), True),
    Metric("tokens_received", "ranker tokens received", 0, ("rank", "completion_tokens"), True),
    Metric("ranker_cost_usd", "ranker cost USD", 4, ("rank", "cost_usd")),
    # of the prompts whose K > 1 presentation orders all ranked:
    Metric("consistency_rate", "consistency rate", 3, ("rank", "consistency_rate")),  # all K agree (strict mode keeps these)
    Metric("kept_rate", "kept after aggregation", 3, ("rank", "kept_rate")),  # kept under ranker.aggregate
    Metric("confidence_mean", "ranking confidence", 3, ("rank", "confidence_mean")),  # mean aggregate confidence
    Metric("generated_tokens", "generated tokens", 0, ("generate", "generated_tokens"), True),
    Metric("phase_s", "wall s (phases)", 1, cell=phase_total),  # {phase: wall seconds}; shown: their sum
)
"""Every key of a ``metrics.jsonl`` line, in the line's order."""

_ROUND = {m.key: m for m in ROUND_METRICS}


def round_metric(key: str) -> Metric:
    """The :data:`ROUND_METRICS` entry of ``key``.

    Raises:
        KeyError: not a round metric.
    """
    return _ROUND[key]


def round_line(phases: Mapping[str, Mapping[str, Any]], computed: Mapping[str, Any]) -> dict[str, Any]:
    """A round's ``metrics.jsonl`` line: every :data:`ROUND_METRICS` key in order, copied from the
    round manifest's ``phases`` (:attr:`Metric.source`) or taken from ``computed`` (the others).

    Raises:
        KeyError: a phase is missing, a ``required`` field is missing, or ``computed`` lacks a key.

    >>> ph = {"generate": {"prompts": 2, "responses": 8, "generated_tokens": 90},
    ...       "rank": {"ranked": 2, "unranked": 0, "calls": 2, "prompt_tokens": 500, "completion_tokens": 20},
    ...       "agreement": {"pool_added": 1, "pool_size": 1}, "train": {"train_loss": 1.5}}
    >>> line = round_line(ph, {"round": 0, "agreement_rate": 0.5, "kendall_tau": 0.0, "unranked_reasons": {},
    ...                        "phase_s": {}})
    >>> line["tokens_sent"], line["ranker_api_calls"], line["train_loss"], list(line)[:3]
    (500, None, 1.5, ['round', 'prompts', 'responses'])
    """
    line: dict[str, Any] = {}
    for m in ROUND_METRICS:
        if m.source is None:
            line[m.key] = computed[m.key]
        else:
            phase, field = m.source
            line[m.key] = phases[phase][field] if m.required else phases[phase].get(field)
    return line


CLI_ROUND_ROWS = (
    "prompts", "selected", "ranked", "unranked", "agreement_rate", "kendall_tau", "pool_size", "train_loss", "ranker_calls",
    "ranker_api_calls", "ranker_cache_hits", "tokens_sent", "tokens_received", "ranker_cost_usd", "consistency_rate",
    "kept_rate", "confidence_mean",
)
"""Round metrics the CLI's round table shows (then one row per timed phase, wall seconds)."""

REPORT_ROUND_TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Ranking and training", (
        "round", "prompts", "selected", "ranked", "unranked", "agreement_rate", "kendall_tau", "consistency_rate",
        "kept_rate", "confidence_mean", "pool_size", "train_loss", "ranking_loss", "sft_loss", "train_ranking_accuracy",
    )),
    ("Ranker cost, tokens and time", (
        "round", "ranker_calls", "ranker_api_calls", "ranker_cache_hits", "tokens_sent", "tokens_received",
        "ranker_cost_usd", "generated_tokens", "phase_s",
    )),
)
"""The report's per-round tables, ``(title, round metric keys)``: quality in one, cost and time in
the other, so that each fits a 1400 px window (a column no round has is left out)."""

REPORT_ROUND_COLUMNS = tuple(dict.fromkeys(key for _, keys in REPORT_ROUND_TABLES for key in keys))
"""Every round metric the report's tables show (:data:`REPORT_ROUND_TABLES`, each key once)."""

STATUS_ROWS = ("prompts", "selected", "ranked", "ranker_calls", "ranker_api_calls", "agreement_rate", "kendall_tau", "train_loss")
"""Round metrics ``cyclealign status`` shows of the last finished round."""


# -- held-out evaluation ------------------------------------------------------------------------
def _has_counts(line: Mapping[str, Any]) -> bool:
    return all(k in line for k in ("wins", "losses", "ties"))


def _wins_losses_ties(line: Mapping[str, Any]) -> str | None:
    """``wins / losses / ties`` of a judged policy, None for one without judgements.

    >>> _wins_losses_ties({"wins": 7, "losses": 2, "ties": 1}), _wins_losses_ties({})
    ('7 / 2 / 1', None)
    """
    return f"{line['wins']} / {line['losses']} / {line['ties']}" if _has_counts(line) else None


def _interval(line: Mapping[str, Any]) -> str | None:
    """The Wilson 95% interval ``[low, high]`` of the win rate, None without one.

    >>> _interval({"ci_low": 0.4526, "ci_high": 0.9368}), _interval({"ci_low": None})
    ('[0.453, 0.937]', None)
    """
    if number(line.get("ci_low")) is None:
        return None
    return f"[{fmt(number(line.get('ci_low')))}, {fmt(number(line.get('ci_high')))}]"


def _mean_std(prefix: str) -> Callable[[Mapping[str, Any]], str | None]:
    """The cell ``<prefix>_mean ± <prefix>_std`` (2 decimals; None without a mean).

    >>> _mean_std("length")({"length_mean": 42.5, "length_std": 6.25}), _mean_std("reward")({"reward_mean": None})
    ('42.50 ± 6.25', None)
    """

    def cell(line: Mapping[str, Any]) -> str | None:
        mean = number(line.get(f"{prefix}_mean"))
        return None if mean is None else f"{fmt(mean, 2)} ± {fmt(number(line.get(f'{prefix}_std')), 2)}"

    return cell


def _judged_response(line: Mapping[str, Any]) -> str | None:
    """How the judged response was decoded and capped, None for a line from before it was recorded.

    >>> _judged_response({"decoding": "sample", "max_new_tokens": 128}), _judged_response({})
    ('sample, 128 tok', None)
    """
    return f"{line['decoding']}, {line['max_new_tokens']} tok" if "decoding" in line else None


def _policy(line: Mapping[str, Any]) -> Any:
    """The policy's label (a line without one: its round index)."""
    return line.get("label", line.get("round"))


EVAL_METRICS: tuple[Metric, ...] = (
    Metric("label", "policy", cell=_policy),
    Metric("vs", "vs"),
    Metric("prompts", "prompts", 0),
    Metric("wins_losses_ties", "wins / losses / ties", cell=_wins_losses_ties),  # of wins, losses, ties
    Metric("win_rate", "win rate"),  # wins / judged pairs
    Metric("ci_low", "95% CI low"),
    Metric("ci_high", "95% CI high"),
    Metric("ci", "95% CI", cell=_interval),  # of ci_low, ci_high
    Metric("identical", "identical pairs (tie, no call)", 0),
    Metric("invalid", "invalid judgements", 0),
    Metric("win_rate_ties_half", "win rate, ties half"),
    Metric("kendall_tau", "Kendall tau"),  # black-box vs the policy's own ranking of held-out samples
    Metric("agreement_rate", "agreement rate"),
    Metric("length_mean", "length mean (tokens)"),
    Metric("length", "length (tokens)", cell=_mean_std("length")),  # of length_mean, length_std
    Metric("reward_mean", "reward mean"),
    Metric("reward", "reward", cell=_mean_std("reward")),  # of reward_mean, reward_std
    Metric("judged_response", "judged response", cell=_judged_response),  # of decoding, max_new_tokens
)
"""The held-out evaluation metrics the CLI and the report show (keys of
:func:`cyclealign.evaluation.runner.run_evaluation`'s summary lines, and combined columns)."""

_EVAL = {m.key: m for m in EVAL_METRICS}


def eval_metric(key: str) -> Metric:
    """The :data:`EVAL_METRICS` entry of ``key``.

    Raises:
        KeyError: not an evaluation metric.
    """
    return _EVAL[key]


CLI_EVAL_ROWS = (
    "win_rate", "ci_low", "ci_high", "wins_losses_ties", "identical", "invalid", "win_rate_ties_half",
    "kendall_tau", "agreement_rate", "length_mean", "reward_mean",
)
"""Evaluation rows of ``cyclealign eval``'s table (the win rate's label names the reference)."""

CLI_SOURCE_ROWS = ("prompts", "win_rate", "wins_losses_ties", "kendall_tau", "length_mean", "reward_mean")
"""Rows the CLI's evaluation table shows per prompt source (``by_source``; reward only when scored)."""

REPORT_EVAL_COLUMNS = (
    "label", "vs", "prompts", "wins_losses_ties", "win_rate", "ci", "kendall_tau", "agreement_rate", "length", "reward",
)
"""Columns of the report's evaluation table, one row per policy."""
