"""Held-out prompts of an evaluation: prompts of one or several sources that no round of the run trains on."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path

from cyclealign.config import Config
from cyclealign.config.eval import EvalConfig
from cyclealign.data.selection import recorded_round_prompts
from cyclealign.data.sources import load_prompts
from cyclealign.errors import ConfigError
from cyclealign.records import PromptRecord
from cyclealign.rundir import RunDir

__all__ = ["held_out_prompts", "held_out_sources", "trained_rounds"]


def _trained_texts(cfg: Config) -> set[str]:
    """Conversation texts of every prompt any of the run's ``cfg.rounds`` rounds draws."""
    trained: set[str] = set()
    run_prompts = load_prompts(cfg.prompts)
    run = RunDir(cfg.run_dir)
    for k in range(cfg.rounds):  # what a round recorded, else what it would draw
        trained.update(p.query_text for p in recorded_round_prompts(run, cfg, k, run_prompts))
    return trained


def held_out_prompts(cfg: Config, source: Path, count: int, trained: Collection[str] | None = None) -> list[PromptRecord]:
    """``count`` prompts of ``source`` that no round of the run trains on (seeded sample).

    A prompt is "trained on" when its conversation text equals that of a prompt any of the
    run's ``cfg.rounds`` rounds draws (``trained``: those texts, when already computed).

    Raises:
        DataError: unreadable prompt file.
        ConfigError: no held-out prompt is left.
    """
    candidates = load_prompts(source)
    trained = _trained_texts(cfg) if trained is None else trained
    held = [p for p in candidates if p.query_text not in trained]
    if not held:
        raise ConfigError(f"{source}: every prompt is one the run trains on; evaluation needs held-out prompts")
    random.Random(cfg.seed + 7919).shuffle(held)
    return held[:count]


def held_out_sources(cfg: Config, sources: Sequence[Path], count: int) -> tuple[list[PromptRecord], dict[str, str]]:
    """:func:`held_out_prompts` of each source (``count`` per source), and each prompt's source name.

    Each source is sampled as it would be alone, so a one-source evaluation sees the same
    prompts as before. Prompt ids that more than one source uses (explicit ``"id"`` fields)
    are prefixed with their source name, ``"<source>/<id>"``; other ids are kept.

    Returns:
        ``(prompts, source_of)``: the prompts, source by source in the given order, and
        ``{prompt id: source name}`` (:meth:`EvalConfig.source_name`: the file stem).

    Raises:
        DataError: an unreadable prompt file.
        ConfigError: a source with no held-out prompt; two sources with the same name.
    """
    names = [EvalConfig.source_name(s) for s in sources]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"--eval-prompts {sources[names.index(name)]} and {sources[i]} have the same name {name!r}; rename one")
    trained = _trained_texts(cfg)
    picked = [(name, held_out_prompts(cfg, source, count, trained)) for name, source in zip(names, sources)]
    uses = Counter(p.id for _, held in picked for p in held)  # ids are unique within a source
    prompts: list[PromptRecord] = []
    source_of: dict[str, str] = {}
    for name, held in picked:
        for p in held:
            record = p if uses[p.id] == 1 else PromptRecord(f"{name}/{p.id}", p.messages)
            prompts.append(record)
            source_of[record.id] = name
    return prompts, source_of


def trained_rounds(run: RunDir, rounds: int) -> list[int]:
    """The rounds among the first ``rounds`` that trained an adapter, in order."""
    return [k for k in range(rounds) if run.round(k).has_adapter()]
