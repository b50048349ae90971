"""Scheduled alignment: exit codes for schedulers, the promotion gate, and a run's status.

A nightly ``cyclealign iterate --run-dir DIR --add-rounds 1`` (cron, a systemd timer) does one
more round; ``--promote-if 'win_rate>=0.5'`` then writes ``DIR/promoted`` (the path of the
adapter a server should load) only when the round's evaluation passes; ``cyclealign status
--run-dir DIR`` tells where the run stands.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cyclealign.errors import ConfigError, LockedError
from cyclealign.rundir import PHASES, Phase, RunDir
from cyclealign.files import atomic_write_text, read_jsonl
from cyclealign.runlock import RunLock, lock_holder

__all__ = ["EXIT_CODES", "Condition", "Promotion", "parse_conditions", "promote", "run_status"]

EXIT_CODES: dict[str, int] = {
    "done": 0,  # the requested rounds (and evaluations) are finished
    "error": 2,  # bad input, a rejected key, a broken run directory, a failed launched trainer
    "budget": 3,  # ranker.max_cost_usd reached: finished work kept, resumable
    "nothing_to_do": 4,  # no phase had to run, or --new-prompts-only found no unused prompt
    "locked": 5,  # another live process holds the run directory
    "interrupted": 130,  # SIGINT (Ctrl-C): servers stopped, lock released, the phase left pending; --resume continues
    "terminated": 143,  # SIGTERM (timeout, systemctl stop, a scheduler's kill): likewise
}
"""``cyclealign iterate``'s exit codes, by outcome (1 is an unexpected crash: a Python traceback)."""

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|==|!=|>|<)\s*(-?[\d.]+(?:e-?\d+)?)\s*$")


@dataclass(frozen=True)
class Condition:
    """``metric op threshold`` on an evaluation summary line (``win_rate >= 0.5``)."""

    metric: str
    op: str
    threshold: float

    def holds(self, line: dict[str, Any]) -> bool | None:
        """Whether the condition holds for ``line``; None when the line lacks the metric (or it is null).
        A dotted metric (``by_source.hh.win_rate``) reads a nested value."""
        value = _read(line, self.metric)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return bool(_OPS[self.op](value, self.threshold))

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


def parse_conditions(text: str) -> list[Condition]:
    """Parse ``--promote-if``: one or more ``metric op number`` conditions joined by ``,`` (all must hold).

    Raises:
        ConfigError: a condition that does not parse (the expected form is shown).

    >>> [str(c) for c in parse_conditions("win_rate>=0.5, kendall_tau > 0")]
    ['win_rate>=0.5', 'kendall_tau>0']
    """
    out = []
    for part in text.split(","):
        m = _CONDITION.match(part)
        if not m:
            raise ConfigError(
                f"--promote-if {part.strip()!r}: expected METRIC OP NUMBER, e.g. win_rate>=0.5 "
                "(OP one of >=, >, <=, <, ==, !=; several joined by commas)"
            )
        out.append(Condition(m.group(1), m.group(2), float(m.group(3))))
    return out


@dataclass
class Promotion:
    """The promotion gate's decision on a run's latest trained round."""

    promoted: bool
    round: int | None
    reason: str
    values: dict[str, Any] = field(default_factory=dict)
    adapter: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"promoted": self.promoted, "round": self.round, "reason": self.reason, "values": self.values, "adapter": self.adapter}


def promote(run: RunDir, conditions: list[Condition]) -> Promotion:
    """Check ``conditions`` on the evaluation of the run's latest trained round (its line in
    ``eval/summary.jsonl``) and, when all hold, write ``RUN_DIR/promoted``: one line, the absolute
    path of that round's adapter (atomically). A failed gate leaves an earlier ``promoted`` as it is.

    Returns:
        The decision, with the values it read and the reason (no trained round, no evaluation of
        it: set ``--eval-every``, a metric missing, a condition failed).
    """
    latest = run.latest_trained_round(run.finished_rounds() - 1)
    if latest is None:
        return Promotion(False, None, "no finished round trained an adapter")
    line = next((row for row in read_jsonl(run.eval_summary) if row.get("round") == latest), None)
    if line is None:
        return Promotion(False, latest, f"round {latest} has no evaluation (run with --eval-every so that each round is evaluated)")
    values = {}
    for c in conditions:
        ok = c.holds(line)
        values[c.metric] = _read(line, c.metric)
        if ok is None:
            return Promotion(False, latest, f"the evaluation of round {latest} has no value for {c.metric!r}", values)
        if not ok:
            return Promotion(False, latest, f"{c.metric}={values[c.metric]} fails {c}", values)
    adapter = str(run.round(latest).adapter.resolve())
    atomic_write_text(run.promoted, adapter + "\n")
    return Promotion(True, latest, "all conditions hold: " + ", ".join(map(str, conditions)), values, adapter)


def _read(line: dict[str, Any], dotted: str) -> Any:
    value: Any = line
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def run_status(run_dir: Path) -> dict[str, Any]:
    """Where a run stands: ``rounds_scheduled``, ``rounds_done``, ``state`` (``done``,
    ``running``, ``interrupted`` or ``not started``), the pending ``round`` with its
    ``phases_done`` and ``phase_pending``, the ``last_metrics`` line, ranker ``spend`` (calls,
    tokens, USD), the ``ranker`` model (None: the embedded one, free), the ``lock`` holder (``live`` false for a stale one), ``promoted``
    (the adapter path, or None) and ``stale_servers_stopped``: the process ids of servers a
    killed run had left running, stopped now (only while no run holds the lock).

    Raises:
        RunDirError: no run in ``run_dir`` (no ``config.json``).
        ConfigError: an invalid ``config.json``.
    """
    run = RunDir(run_dir)
    cfg = run.read_config()
    done = run.finished_rounds()
    holder = lock_holder(run.path)
    stopped: list[int] = []
    if not (holder and holder["live"]) and (run.server_pid.exists() or run.policy_server_pid.exists()):
        try:  # a server left by a killed run: stopped while no run can start
            with RunLock(run.path) as lock:
                stopped = lock.stopped_servers
        except LockedError:
            pass
    pending_round = done
    rd = run.round(pending_round)
    phases_done = [p for p in PHASES if rd.is_done(p)]
    started = bool(phases_done) or rd.read_prompt_ids() is not None
    if holder is not None and holder["live"]:
        state = "running"
    elif done >= cfg.rounds and not started:
        state = "done"
    elif started:
        state = "interrupted"
    else:
        state = "not started" if done == 0 else "waiting"
    last = run.round(done - 1).phases()[Phase.METRICS] if done else None
    return {
        "run_dir": str(run.path),
        "rounds_scheduled": cfg.rounds,
        "rounds_done": done,
        "state": state,
        "round": pending_round if state != "done" else None,
        "phases_done": phases_done if started else [],
        "phase_pending": next((p for p in PHASES if p not in phases_done), None) if started else None,
        "last_metrics": last,
        "spend": run.ranker_spend(),
        "ranker": None if cfg.ranker.base_url is None else cfg.ranker.model,
        "lock": holder,
        "promoted": run.promoted.read_text().strip() if run.promoted.is_file() else None,
        "stale_servers_stopped": stopped,
    }
