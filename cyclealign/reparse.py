"""``cyclealign reparse``: re-derive a run's rankings from the raw replies on disk, with no API call.

When the parser is fixed (or ``ranker.complete_missing_last`` is changed), the replies already
paid for are read again: every sample's stored replies go through
:func:`~cyclealign.ranker.parse.parse_ranking`, the samples are combined as in the ranker
(consistency across presentation orders included), and ``rankings.jsonl`` is rewritten.
API errors stay as they are (a resume asks again).

A round whose agreement or training already used the old rankings is only rewritten with
``rewind=True``: its agreement, train and metrics phases are reset, and every later round
(whose policy came from the old adapter) is moved to ``RUN_DIR/rewound/``, so
``cyclealign iterate --resume`` redoes them, its ranker calls served from the reply cache
where the requests are unchanged.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from cyclealign.errors import RunDirError
from cyclealign.ranker.ranking import AggregateMode, combine_samples, reparse_sample
from cyclealign.records import RankResult
from cyclealign.rundir import Phase, RunDir
from cyclealign.files import write_jsonl
from cyclealign.runlock import RunLock

__all__ = ["ReparseSummary", "reparse_run"]

DOWNSTREAM = (Phase.AGREEMENT, Phase.TRAIN, Phase.METRICS)


@dataclass
class ReparseSummary:
    """What reparsing did to one round.

    Attributes:
        round: the round index.
        prompts: prompts with a stored result.
        ranked_before, ranked_after: ranked prompts before and after.
        changed: prompts whose ranking or reason changed.
        written: whether ``rankings.jsonl`` was rewritten (False: no change, or a dry run).
        rewound: whether the round's later phases were reset.
    """

    round: int
    prompts: int
    ranked_before: int
    ranked_after: int
    changed: int
    written: bool
    rewound: bool = False


def reparse_results(
    results: list[RankResult],
    sizes: dict[str, int],
    complete_last: bool,
    aggregate: AggregateMode = "strict",
    min_confidence: float = 0.0,
) -> list[RankResult]:
    """``results`` with rankings re-derived from their stored replies (pure; no I/O).

    Args:
        results: stored results of one round.
        sizes: number of responses per prompt id (from the round's generations).
        complete_last: the parser's ``complete_last`` (``ranker.complete_missing_last``).
        aggregate, min_confidence: ``ranker.aggregate`` and ``ranker.min_confidence`` (how
            several presentation orders combine, :func:`~cyclealign.ranker.ranking.combine_samples`).
    """
    out = []
    for r in results:
        n = sizes.get(r.prompt_id, 0)
        if not r.samples or n < 2:
            out.append(r)
            continue
        samples = [reparse_sample(s, n, complete_last) for s in r.samples]
        c = combine_samples(samples, aggregate, min_confidence)
        out.append(
            replace(
                r, ranking=c.ranking, reason=c.reason, status=c.status, samples=samples, consistent=c.consistent,
                confidence=c.confidence, pair_agreement=c.pair_agreement,
            )
        )
    return out


def reparse_run(
    run_dir: Path,
    *,
    rounds: list[int] | None = None,
    rewind: bool = False,
    dry_run: bool = False,
    complete_last: bool | None = None,
) -> list[ReparseSummary]:
    """Re-apply the parser to every stored ranker reply of ``run_dir`` (no API call).

    Args:
        run_dir: the run directory.
        rounds: the rounds to reparse (default: every round with rankings).
        rewind: allow rewriting rounds whose later phases are done (they are reset; later
            rounds move to ``RUN_DIR/rewound/<time>/``).
        dry_run: report only; write nothing.
        complete_last: override ``ranker.complete_missing_last`` of the run's config.

    Returns:
        One :class:`ReparseSummary` per round looked at.

    Raises:
        RunDirError: no run at ``run_dir``, or a changed round whose agreement/training already
            used the old rankings and ``rewind`` is off (nothing is written then).
        LockedError: another process (an ``iterate``) holds the run directory (not for ``dry_run``).
        ConfigError: the run's ``config.json`` is invalid.
    """
    run = RunDir(run_dir)
    cfg = run.read_config()
    complete = bool(cfg.ranker.complete_missing_last) if complete_last is None else complete_last
    indices = rounds if rounds is not None else [k for k in range(_last_round(run) + 1) if run.round(k).rankings.exists()]
    plans = []
    for k in indices:
        rd = run.round(k)
        if not rd.rankings.exists():
            raise RunDirError(f"{rd.path}: round {k} has no rankings.jsonl")
        gens = rd.read_generations()
        sizes = {g.prompt_id: len(g.responses) for g in gens}
        old = rd.read_rankings()  # prompt order
        new = reparse_results(old, sizes, complete, cfg.ranker.aggregate, cfg.ranker.min_confidence)
        changed = sum((a.ranking, a.reason) != (b.ranking, b.reason) for a, b in zip(old, new))
        summary = ReparseSummary(
            round=k,
            prompts=len(old),
            ranked_before=sum(r.ranking is not None for r in old),
            ranked_after=sum(r.ranking is not None for r in new),
            changed=changed,
            written=False,
        )
        plans.append((rd, new, summary))
    stale = [s.round for rd, _, s in plans if s.changed and any(rd.is_done(p) for p in DOWNSTREAM)]
    if stale and not rewind and not dry_run:
        raise RunDirError(
            f"{run_dir}: reparsing changes rankings of round(s) {', '.join(map(str, stale))} whose agreement/training "
            "already used the old ones; pass --rewind to reset those phases and set later rounds aside "
            "(then `cyclealign iterate --resume`), or --dry-run to only see the changes"
        )
    if dry_run:
        return [s for _, _, s in plans]
    with RunLock(run.path):  # not while an iterate (or another reparse) writes the run
        _write(run, plans, stale)
    return [s for _, _, s in plans]


def _write(run: RunDir, plans: list, stale: list[int]) -> None:
    """Write the reparsed rankings; reset the stale rounds' later phases, set later rounds aside
    and rewrite ``metrics.jsonl`` without the rewound rounds."""
    first_stale = min(stale) if stale else None
    for rd, new, summary in plans:
        if not summary.changed:
            continue
        write_jsonl(rd.rankings, [r.to_json() for r in new])
        summary.written = True
        if rd.is_done(Phase.RANK):
            info = dict(rd.phases()[Phase.RANK])
            info.update(ranked=summary.ranked_after, unranked=summary.prompts - summary.ranked_after, reparsed=True)
            rd.mark_done(Phase.RANK, **info)
        if summary.round in stale:
            rd.reset(*DOWNSTREAM)
            summary.rewound = True
    if first_stale is not None:
        _set_aside_after(run, first_stale)
        run.rewrite_metrics()


def _last_round(run: RunDir) -> int:
    ks = [int(p.name.split("_")[1]) for p in run.path.glob("round_*") if p.name.split("_")[1].isdigit()]
    return max(ks, default=-1)


def _set_aside_after(run: RunDir, index: int) -> None:
    """Move rounds after ``index`` to ``RUN_DIR/rewound/<time>/`` (they trained on a stale policy)."""
    later = [run.round(k).path for k in range(index + 1, _last_round(run) + 1) if run.round(k).path.exists()]
    if not later:
        return
    dest = run.rewound / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for path in later:
        shutil.move(str(path), str(dest / path.name))
    if run.metrics.exists():
        shutil.move(str(run.metrics), str(dest / run.metrics.name))
