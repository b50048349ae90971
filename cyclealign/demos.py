"""The dynamic demonstration pool: agreed rankings that become the ranker's in-context examples.

CycleAlign (Hong et al. 2023, arXiv 2310.16271): when the black-box and white-box rankings of
a prompt agree enough (their LCS is long), the prompt with its responses and the agreement
ranking joins a pool of demonstrations, from which later ranker calls draw, beside the static
human-written demonstrations in ``demos/``.

The pool is updated once per round, after the round's rankings are all in, so every ranker
call of round r sees the same pool (the one left by round r-1): calls within a round are
independent, can run concurrently, and a resumed round renders exactly the same requests.

This module is the one place that reads the pool (:func:`read_pool`), selects a call's
demonstrations (:func:`round_demonstrations`) and writes the pool (:func:`write_pool`); the loop
and ``templates render`` both go through it, so a rendered call is the call the ranker sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from cyclealign.records import Demonstration
from cyclealign.rundir import RoundDir, RunDir
from cyclealign.files import read_records, write_jsonl

if TYPE_CHECKING:
    from cyclealign.config.ranker import RankerConfig


def agreement_demonstration(
    query: str, responses: Sequence[str], agreement: Sequence[int], round_index: int
) -> Demonstration:
    """The demonstration a prompt contributes: only the responses on the agreement ranking.

    The LCS ranks a subset of the responses; the demonstration shows that subset, in the
    original response order, with the agreement ranking re-indexed onto it.

    >>> d = agreement_demonstration("User: hi", ["a", "b", "c", "d"], [2, 0, 3], round_index=1)
    >>> d.responses, d.ranking
    (['a', 'c', 'd'], [1, 0, 2])
    """
    kept = sorted(agreement)
    new_index = {old: new for new, old in enumerate(kept)}
    return Demonstration(
        query=query,
        responses=[responses[i] for i in kept],
        ranking=[new_index[i] for i in agreement],
        source="dynamic",
        round=round_index,
        agreement_len=len(agreement),
    )


class DemoPool:
    """Bounded pool of dynamic demonstrations, kept in insertion order.

    Priority (for selection and for eviction when full): longer agreement first, then more
    recent round, then later insertion.

    Args:
        demos: initial contents (e.g. read back from the previous round's ``demo_pool.jsonl``).
        max_size: capacity; the lowest-priority demonstrations are dropped beyond it.
    """

    def __init__(self, demos: Sequence[Demonstration] = (), max_size: int = 256) -> None:
        self.max_size = max_size
        self._demos: list[Demonstration] = []
        for d in demos:
            self.add(d)

    def __len__(self) -> int:
        return len(self._demos)

    def __iter__(self):
        return iter(self._demos)

    def _priority(self, pos: int) -> tuple[int, int, int]:
        d = self._demos[pos]
        return (d.agreement_len, d.round, pos)

    def add(self, demo: Demonstration) -> None:
        """Add a demonstration, evicting the lowest-priority one when over capacity."""
        self._demos.append(demo)
        if len(self._demos) > self.max_size:
            worst = min(range(len(self._demos)), key=self._priority)
            del self._demos[worst]

    def select(self, k: int) -> list[Demonstration]:
        """The ``k`` highest-priority demonstrations (longest agreement, then most recent).

        >>> pool = DemoPool([Demonstration("q1", ["a", "b"], [0, 1], "dynamic", 0, 2),
        ...                  Demonstration("q2", ["a", "b", "c"], [2, 1, 0], "dynamic", 0, 3),
        ...                  Demonstration("q3", ["a", "b"], [1, 0], "dynamic", 1, 2)])
        >>> [d.query for d in pool.select(2)]
        ['q2', 'q3']
        """
        order = sorted(range(len(self._demos)), key=self._priority, reverse=True)
        return [self._demos[i] for i in order[:k]]


def select_demonstrations(
    static: Sequence[Demonstration], pool: DemoPool, num_static: int, num_dynamic: int
) -> list[Demonstration]:
    """The demonstrations of one ranker call: the first ``num_static`` static ones, then the
    ``num_dynamic`` best dynamic ones (shown last, nearest the query)."""
    return list(static[:num_static]) + pool.select(num_dynamic)


def static_demonstrations(cfg: RankerConfig) -> list[Demonstration]:
    """The static demonstrations: ``cfg.demos_path`` or the shipped ``demos/`` file.

    Raises:
        DataError: the file is missing or a line is not a valid demonstration (file and line named).
    """
    from cyclealign.resources import default_demos_path
    from cyclealign.templates.ranker import load_demonstrations

    return load_demonstrations(cfg.demos_path or default_demos_path())


def round_demonstrations(cfg: RankerConfig, static: Sequence[Demonstration], pool: DemoPool) -> list[Demonstration]:
    """The demonstrations every ranker call of a round shows: ``cfg.num_static_demos`` static ones,
    then the ``cfg.num_dynamic_demos`` best of ``pool`` (:func:`select_demonstrations`)."""
    return select_demonstrations(static, pool, cfg.num_static_demos, cfg.num_dynamic_demos)


def read_pool(run: RunDir, index: int, max_size: int) -> DemoPool:
    """The dynamic pool round ``index`` ranks with: the one round ``index - 1`` left in its
    ``demo_pool.jsonl`` (empty for round 0), bounded to ``max_size`` demonstrations.

    Raises:
        RunDirError: a line other than the last of ``demo_pool.jsonl`` is not valid JSON.
    """
    if index == 0:
        return DemoPool(max_size=max_size)
    return DemoPool(read_records(run.round(index - 1).demo_pool, Demonstration), max_size=max_size)


def write_pool(rd: RoundDir, pool: DemoPool) -> None:
    """Write ``pool`` as round ``rd``'s ``demo_pool.jsonl`` (atomically): what the next round ranks with."""
    write_jsonl(rd.demo_pool, [d.to_json() for d in pool])
