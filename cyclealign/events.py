"""Machine-readable run log: one JSON line per event in ``RUN_DIR/events.jsonl``.

Every line has ``time`` (ISO 8601, UTC), ``event`` and the event's fields:

==================  =====================================================================
event               fields
==================  =====================================================================
``run_start``       ``pid``, ``rounds`` (scheduled in total), ``resume``, ``command``
``run_plan``        what the run is about to do: ``policy``, ``backend``, ``ranker``, ``prompts``,
                    ``run_dir``, ``resume``, ``rounds``, ``rounds_done``, ``prompts_per_round``,
                    ``num_samples``, ``ranker_calls`` (first asks of the pending rounds)
``lock_takeover``   ``stale`` (the dead holder's pid, host, start time)
``stale_servers_stopped``  ``pids`` (servers a killed run of the directory had left running)
``phase_start``     ``round``, ``phase``, ``total`` (progress steps or null)
``phase_end``       ``round``, ``phase`` and what the manifest records (``wall_s``, ...)
``round_end``       ``round`` and the round's metrics line
``promotion``       ``promoted`` (bool), ``condition``, ``round``, ``values``, ``reason``,
                    ``adapter`` (when promoted)
``budget``          ``message`` (ranker.max_cost_usd reached: stopped, resumable)
``nothing_to_do``   ``message``
``error``           ``type``, ``message``
``interrupted``     ``signal`` (2 SIGINT, 15 SIGTERM), ``message``: stopped, resumable
``run_end``         ``exit_code``, ``rounds_done``, ``wall_s``
==================  =====================================================================

Lines are appended (and flushed) one by one, so a scheduler or a dashboard can tail the file.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cyclealign.files import append_jsonl

__all__ = ["EventLog", "EventReporter"]


class EventLog:
    """Appends events to ``path`` (``RUN_DIR/events.jsonl``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def emit(self, event: str, **fields: Any) -> None:
        """Append one event line (``time``, ``event``, then ``fields``); values must be JSON-serialisable."""
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        append_jsonl(self.path, {"time": now, "event": event, **fields}, fsync=False)


class EventReporter:
    """A :class:`cyclealign.progress.Reporter` that writes phase and round events to an
    :class:`EventLog` and forwards every call to ``inner`` (the rich progress, or nothing).

    Attributes:
        phases_run: how many phases started during this invocation (0: there was nothing to do).
    """

    def __init__(self, log: EventLog, inner: Any = None) -> None:
        self.log, self.inner = log, inner
        self.phases_run = 0

    def phase_start(self, round_index: int, phase: str, total: int | None) -> None:
        """A ``phase_start`` event (not for the trainer's ``train-steps`` counter), then forward."""
        if phase != "train-steps":  # the trainer's step counter, not a phase
            self.phases_run += 1
            self.log.emit("phase_start", round=round_index, phase=phase, total=total)
        if self.inner is not None:
            self.inner.phase_start(round_index, phase, total)

    def advance(self, n: int = 1) -> None:
        """Forward only (progress steps are not events)."""
        if self.inner is not None:
            self.inner.advance(n)

    def phase_end(self, round_index: int, phase: str, info: dict[str, Any]) -> None:
        """A ``phase_end`` event with what the manifest records, then forward."""
        self.log.emit("phase_end", round=round_index, phase=phase, **{k: v for k, v in info.items() if k not in ("round", "phase")})
        if self.inner is not None:
            self.inner.phase_end(round_index, phase, info)

    def round_end(self, metrics: dict[str, Any]) -> None:
        """A ``round_end`` event holding the round's metrics line, then forward."""
        self.log.emit("round_end", **metrics)
        if self.inner is not None:
            self.inner.round_end(metrics)
