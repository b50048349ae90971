"""Which prompts a round gets: the seeded order of a prompt source, never-used prompts first,
and the prompts each round of a run recorded.

:func:`select_round_prompts` and :func:`select_next_prompts` are pure; :func:`recorded_round_prompts`
and :func:`used_prompt_counts` read what a run directory recorded (``round_k/prompts.json``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING

from cyclealign.data.candidates import Selection
from cyclealign.errors import RunDirError
from cyclealign.records import PromptRecord
from cyclealign.files import read_json

if TYPE_CHECKING:
    from cyclealign.config import Config
    from cyclealign.rundir import RunDir

__all__ = ["recorded_round_prompts", "select_next_prompts", "select_round_prompts", "used_prompt_counts"]


def select_round_prompts(
    prompts: list[PromptRecord], round_index: int, per_round: int, seed: int
) -> list[PromptRecord]:
    """The prompts of round ``round_index``: the next ``per_round`` of a seeded shuffle, cycling.

    All prompts are shuffled once with ``random.Random(seed)``; round ``r`` takes positions
    ``[r * per_round, (r + 1) * per_round)`` of that order, modulo ``len(prompts)``, so rounds
    are disjoint until the prompts run out and then cycle through the same order again. A
    round never holds a prompt twice: with ``per_round > len(prompts)`` it holds them all.

    Raises:
        ValueError: ``prompts`` is empty, ``round_index < 0`` or ``per_round < 1``.

    >>> ps = [PromptRecord(id=f"p{i}", messages=[{"role": "user", "content": str(i)}]) for i in range(5)]
    >>> [[p.id for p in select_round_prompts(ps, r, per_round=2, seed=0)] for r in range(4)]
    [['p2', 'p1'], ['p0', 'p4'], ['p3', 'p2'], ['p1', 'p0']]
    >>> len(select_round_prompts(ps, 0, per_round=9, seed=0))
    5
    """
    if not prompts:
        raise ValueError("no prompts to select from")
    if round_index < 0 or per_round < 1:
        raise ValueError(f"need round_index >= 0 and per_round >= 1, got {round_index} and {per_round}")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    start = round_index * per_round
    return [prompts[order[(start + k) % len(order)]] for k in range(min(per_round, len(order)))]


def select_next_prompts(
    prompts: list[PromptRecord], per_round: int, seed: int, used: Mapping[str, int], new_only: bool = False
) -> list[PromptRecord]:
    """The prompts of the next round of a run whose earlier rounds used the prompts ``used``
    (content hash -> number of rounds that used it): never-used prompts first, then the least used.

    Within each use count the order is the seeded shuffle of :func:`select_round_prompts`, so on
    a prompt source that does not change, round ``r`` gets exactly what ``select_round_prompts``
    gives it (in the same order, unless ``per_round`` covers the whole source); when the source grows between rounds (lines appended, files added), the new
    prompts are drawn before any prompt is used a second time. Prompts are matched by content
    (:attr:`~cyclealign.records.PromptRecord.content_hash`), so re-indexed ids do not matter.

    Args:
        new_only: take only never-used prompts (fewer than ``per_round``, or none, when the
            source has no more).

    Raises:
        ValueError: ``prompts`` is empty or ``per_round < 1``.

    >>> ps = [PromptRecord(id=f"p{i}", messages=[{"role": "user", "content": str(i)}]) for i in range(5)]
    >>> used = {ps[i].content_hash: 1 for i in (2, 1, 0, 4)}
    >>> [p.id for p in select_next_prompts(ps, 2, seed=0, used=used)], [p.id for p in select_next_prompts(ps, 2, 0, used, new_only=True)]
    (['p3', 'p2'], ['p3'])
    """
    if not prompts:
        raise ValueError("no prompts to select from")
    if per_round < 1:
        raise ValueError(f"need per_round >= 1, got {per_round}")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    count = [used.get(p.content_hash, 0) for p in prompts]
    ranked = sorted(order, key=lambda i: count[i])  # stable: the shuffle order within a use count
    if new_only:
        ranked = [i for i in ranked if count[i] == 0]
    return [prompts[i] for i in ranked[:per_round]]


def _resolve(run: RunDir, index: int, recorded: list[tuple[str, str]], prompts: list[PromptRecord], source: object) -> list[PromptRecord]:
    """The recorded ``(id, content hash)`` pairs of round ``index`` looked up in ``prompts`` (by hash;
    by id for a pair without one). Raises RunDirError naming the missing ones."""
    rd = run.round(index)
    where = rd.prompts_file if rd.prompts_file.is_file() else rd.generations
    by_hash = {p.content_hash: p for p in prompts}
    by_id = {p.id: p for p in prompts}
    found = [by_hash.get(h) if h else by_id.get(i) for i, h in recorded]
    missing = [i for (i, _), p in zip(recorded, found) if p is None]
    if missing:
        raise RunDirError(
            f"{where}: prompts {', '.join(missing[:5])} of round {index} are no longer in the "
            f"prompt source {source or '(the shipped set)'} (a scheduled run's source may grow, but not lose or change prompts)"
        )
    return found  # type: ignore[return-value]


def used_prompt_counts(run: RunDir, prompts: list[PromptRecord], before_round: int, cfg: Config) -> dict[str, int]:
    """How many of rounds ``0 .. before_round - 1`` used each prompt (by content hash), from
    what they recorded (:func:`recorded_round_prompts`). A candidate a round drew but did not
    send to the ranker (``ranker.calls_per_round``: not selected in its ``selection.json``) was
    not used: later rounds draw it as if that round had not.

    Raises:
        RunDirError: as :func:`recorded_round_prompts`, or a ``selection.json`` that is not valid JSON.
    """
    counts: dict[str, int] = {}
    for k in range(before_round):
        rd = run.round(k)
        skipped = set(Selection.from_json(read_json(rd.selection)).not_selected) if rd.selection.is_file() else set()
        recorded = rd.read_prompt_ids() or []
        for i, p in enumerate(recorded_round_prompts(run, cfg, k, prompts)):
            if i < len(recorded) and recorded[i][0] in skipped:  # the recorded id: a grown source may re-index
                continue
            counts[p.content_hash] = counts.get(p.content_hash, 0) + 1
    return counts


def recorded_round_prompts(run: RunDir, cfg: Config, index: int, prompts: list[PromptRecord]) -> list[PromptRecord]:
    """Round ``index``'s prompts as the run recorded them (``round_k/prompts.json``, written
    before the round generates), looked up in ``prompts`` (the run's prompt source) by content;
    a round from before prompts were recorded uses its generations' ids, and one without those
    either falls back to :func:`select_round_prompts`.

    Raises:
        RunDirError: a recorded prompt is no longer in the prompt source.
    """
    recorded = run.round(index).read_prompt_ids()
    if recorded is None:
        return select_round_prompts(prompts, index, cfg.prompts_per_round, cfg.seed)
    return _resolve(run, index, recorded, prompts, cfg.prompts)
