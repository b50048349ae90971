"""Export a run's black-box rankings as a Hugging Face dataset: ranking lists or DPO preference pairs.

The rankings live in ``round_XXX/rankings.jsonl`` (0-based, best first) and the responses they rank
in ``round_XXX/generations.jsonl``; the prompts themselves are not stored per round, so their chat
messages are rebuilt from the run's ``config.json`` exactly as :func:`cyclealign.loop.iterate` drew
them (:func:`~cyclealign.data.sources.load_run_prompts`, i.e. :func:`~cyclealign.data.sources.load_prompts` on
``cfg.prompts``, then :func:`~cyclealign.data.selection.select_round_prompts`). Two formats:

- ``"ranking"``: one row per ranked prompt: ``prompt`` (chat messages), ``responses`` (texts, in
  generation order), ``ranking`` (indices into ``responses``, best first), ``round``, ``prompt_id``;
- ``"dpo"``: TRL's conversational preference format, which ``trl.DPOTrainer`` loads as is:
  ``prompt`` (chat messages), ``chosen`` / ``rejected`` (one assistant message each), one row per
  (better, worse) pair of every ranking (``N(N-1)/2`` per prompt, :func:`cyclealign.pairs.preference_pairs`),
  plus ``round`` and ``prompt_id``.

Unranked prompts (``ranking`` null) are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from cyclealign.config import Config
from cyclealign.data.selection import recorded_round_prompts
from cyclealign.data.sources import load_run_prompts
from cyclealign.errors import ConfigError, HubError, RunDirError
from cyclealign.pairs import preference_pairs
from cyclealign.records import Message
from cyclealign.rundir import RunDir

__all__ = [
    "FEATURES",
    "FORMATS",
    "RankedList",
    "export_rankings",
    "parse_rounds",
    "push_to_hub",
    "ranked_lists",
    "round_indices",
    "to_rows",
]

FORMATS = ("dpo", "ranking")

_MESSAGES = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
_META = {"round": datasets.Value("int64"), "prompt_id": datasets.Value("string")}
FEATURES = {
    "ranking": datasets.Features(
        {
            "prompt": _MESSAGES,
            "responses": [datasets.Value("string")],
            "ranking": [datasets.Value("int64")],
            **_META,
        }
    ),
    "dpo": datasets.Features({"prompt": _MESSAGES, "chosen": _MESSAGES, "rejected": _MESSAGES, **_META}),
}
"""The column types of each format (stable, also for an export of a single row)."""


@dataclass(frozen=True)
class RankedList:
    """One ranked prompt of a round: its messages, responses and the black-box ranking.

    Attributes:
        round: round index (0-based).
        prompt_id: id of the prompt.
        prompt: the prompt's chat messages (the last one is the user's turn).
        responses: the policy's responses, in generation order.
        ranking: permutation of ``range(len(responses))``, 0-based, best first.
    """

    round: int
    prompt_id: str
    prompt: list[Message]
    responses: list[str]
    ranking: list[int]


def parse_rounds(text: str) -> list[int]:
    """Round indices from a comma-separated list (the CLI's ``--rounds``).

    Raises:
        ConfigError: an entry is not a non-negative integer, or the list is empty.

    >>> parse_rounds("0,1, 3")
    [0, 1, 3]
    >>> parse_rounds("0,x")
    Traceback (most recent call last):
    ...
    cyclealign.errors.ConfigError: --rounds: 'x' is not a round index (expected e.g. 0,1)
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"--rounds: no round index in {text!r} (expected e.g. 0,1)")
    for p in parts:
        if not p.isdigit():
            raise ConfigError(f"--rounds: {p!r} is not a round index (expected e.g. 0,1)")
    return [int(p) for p in parts]


def round_indices(run: RunDir, cfg: Config, rounds: list[int] | None) -> list[int]:
    """The rounds to read: ``rounds`` (each must have a ``rankings.jsonl``), or by default every
    scheduled round that has one.

    Raises:
        RunDirError: a requested round has no ``rankings.jsonl``, or (default) no round has one.
    """
    if rounds is None:
        found = [k for k in range(cfg.rounds) if run.round(k).rankings.is_file()]
        if not found:
            raise RunDirError(f"{run.path}: no round has a rankings.jsonl yet")
        return found
    for k in rounds:
        if not run.round(k).rankings.is_file():
            raise RunDirError(f"{run.round(k).rankings}: not found (round {k} has no black-box rankings)")
    return sorted(set(rounds))


def ranked_lists(run_dir: Path, rounds: list[int] | None = None) -> list[RankedList]:
    """Every ranked prompt of ``rounds`` (default: all rounds with rankings), in round then prompt order.

    Raises:
        RunDirError: missing ``config.json``, prompt source, ``rankings.jsonl`` or generations; a
            ranking for a prompt that is not in the round or has no generation; a ranking that is
            not a permutation of the prompt's responses (each message names the file).
        ConfigError, DataError: an invalid ``config.json`` or prompt source.
    """
    run = RunDir(run_dir)
    cfg = run.read_config()
    prompts = load_run_prompts(run, cfg)
    lists: list[RankedList] = []
    for k in round_indices(run, cfg, rounds):
        rd = run.round(k)
        by_id = {p.id: p for p in recorded_round_prompts(run, cfg, k, prompts)}
        if not rd.generations.is_file():
            raise RunDirError(f"{rd.generations}: not found (round {k} has rankings but no generations)")
        gens = {g.prompt_id: g for g in rd.read_generations()}
        for r in rd.read_rankings():  # prompt order
            if r.ranking is None:
                continue
            if r.prompt_id not in gens:
                raise RunDirError(f"{rd.rankings}: prompt {r.prompt_id!r} has a ranking but no line in {rd.generations.name}")
            if r.prompt_id not in by_id:
                raise RunDirError(
                    f"{rd.generations}: prompt {r.prompt_id!r} is not among round {k}'s prompts drawn from "
                    f"{cfg.prompts or 'the shipped prompt set'}; has the prompt source changed since the run?"
                )
            responses = gens[r.prompt_id].responses
            if sorted(r.ranking) != list(range(len(responses))):
                raise RunDirError(
                    f"{rd.rankings}: prompt {r.prompt_id!r}: ranking {r.ranking} is not a permutation of its "
                    f"{len(responses)} responses"
                )
            lists.append(RankedList(k, r.prompt_id, list(by_id[r.prompt_id].messages), list(responses), list(r.ranking)))
    return lists


def _check_format(fmt: str) -> None:
    """Raises ConfigError: ``fmt`` is not one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def to_rows(lists: list[RankedList], fmt: str) -> list[dict[str, Any]]:
    """Dataset rows of ``fmt`` (``"dpo"`` or ``"ranking"``) from ranked lists.

    Raises:
        ConfigError: unknown format.
    """
    _check_format(fmt)
    rows: list[dict[str, Any]] = []
    for rl in lists:
        meta = {"round": rl.round, "prompt_id": rl.prompt_id}
        if fmt == "ranking":
            rows.append({"prompt": rl.prompt, "responses": rl.responses, "ranking": rl.ranking, **meta})
            continue
        for better, worse in preference_pairs(rl.ranking):
            rows.append(
                {
                    "prompt": rl.prompt,
                    "chosen": [{"role": "assistant", "content": rl.responses[better]}],
                    "rejected": [{"role": "assistant", "content": rl.responses[worse]}],
                    **meta,
                }
            )
    return rows


def export_rankings(run_dir: Path, fmt: str, out: Path, rounds: list[int] | None = None) -> datasets.Dataset:
    """Build the ``fmt`` dataset of the run's rankings and save it to ``out`` (``Dataset.save_to_disk``).

    Args:
        run_dir: the run directory.
        fmt: ``"dpo"`` (TRL conversational preference pairs) or ``"ranking"`` (one list per prompt).
        out: folder to save to; must not exist yet or be empty.
        rounds: round indices to export; None = every round with a ``rankings.jsonl``.

    Returns:
        The saved dataset (``save_to_disk`` format; reload with ``datasets.load_from_disk``).

    Raises:
        ConfigError: unknown ``fmt``.
        RunDirError: see :func:`ranked_lists`; no ranked prompt in the rounds; ``out`` is not empty.
    """
    _check_format(fmt)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirError(f"{out}: already exists and is not an empty folder; pick another --out")
    lists = ranked_lists(run_dir, rounds)
    if not lists:
        raise RunDirError(f"{run_dir}: no ranked prompt to export in round(s) {rounds if rounds is not None else 'any'}")
    dataset = datasets.Dataset.from_list(to_rows(lists, fmt), features=FEATURES[fmt])
    dataset.save_to_disk(str(out))
    return dataset


def push_to_hub(dataset: datasets.Dataset, repo_id: str) -> None:
    """Upload ``dataset`` to the Hugging Face Hub as ``repo_id`` (``Dataset.push_to_hub``; needs a
    login, e.g. ``hf auth login`` or ``HF_TOKEN``).

    Raises:
        HubError: the Hub is unreachable (``HF_HUB_OFFLINE=1``, no network), refuses the login or
            the repo; the message says why in one line.
    """
    try:
        dataset.push_to_hub(repo_id)
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises many types (HTTP, offline, auth, OS)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"could not push to the Hugging Face Hub repo {repo_id!r}: {type(e).__name__}: {reason}") from None
