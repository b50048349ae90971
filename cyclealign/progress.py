"""Progress reporting of a run: the :class:`Reporter` protocol and the one helper that times a phase.

The loop and the evaluation report through a :class:`Reporter` (the CLI draws rich progress
bars and writes ``events.jsonl``; tests and library callers pass None, a :class:`NullReporter`).
Every phase of a round, and an evaluation, runs through :func:`timed_phase`: it reports the
start, times the work, persists what the work returns (with its ``wall_s``) and only then
reports the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["NullReporter", "Reporter", "timed_phase"]


class Reporter(Protocol):
    """Where the loop reports progress (the CLI draws rich progress bars; tests pass None)."""

    def phase_start(self, round_index: int, phase: str, total: int | None) -> None:
        """A phase begins; ``total`` = progress steps (prompts, optimiser steps) or None if unknown."""

    def advance(self, n: int = 1) -> None:
        """``n`` more steps of the current phase are done."""

    def phase_end(self, round_index: int, phase: str, info: dict[str, Any]) -> None:
        """A phase finished and is persisted; ``info`` is what its manifest records (``wall_s``...)."""

    def round_end(self, metrics: dict[str, Any]) -> None:
        """A round finished; ``metrics`` is its ``metrics.jsonl`` line."""


class NullReporter:
    """A :class:`Reporter` that reports nothing."""

    def phase_start(self, round_index: int, phase: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def phase_end(self, round_index: int, phase: str, info: dict[str, Any]) -> None:
        pass

    def round_end(self, metrics: dict[str, Any]) -> None:
        pass


def timed_phase(
    reporter: Reporter,
    round_index: int,
    phase: str,
    total: int | None,
    body: Callable[[], dict[str, Any]],
    record: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Run one phase: report its start, run ``body``, add ``wall_s`` (seconds, 3 decimals) to the
    dict it returns, ``record`` it (the manifest write: the phase is persisted before anyone
    hears it ended), report the end; returns the recorded dict.

    Whatever ``body`` or ``record`` raises propagates; nothing is recorded then.
    """
    reporter.phase_start(round_index, phase, total)
    t0 = time.perf_counter()
    info = body()
    info["wall_s"] = round(time.perf_counter() - t0, 3)
    record(info)
    reporter.phase_end(round_index, phase, info)
    return info
