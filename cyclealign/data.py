"""Prompt sources: JSONL files (plain or gzipped), Hugging Face datasets, HH-RLHF dialogues.

Every source yields :class:`~cyclealign.records.PromptRecord` s. A row (a JSONL line or a
dataset row) may take any of three shapes, detected per row:

- ``{"prompt": "..."}``: a single user turn;
- ``{"messages": [{"role": ..., "content": ...}, ...]}``: a chat, roles ``system`` /
  ``user`` / ``assistant``, the last message from the user;
- ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}``: an HH-RLHF
  preference pair; the prompt is the ``chosen`` dialogue before its last ``Assistant:`` turn
  (``rejected`` shares that prefix and is ignored).

An optional ``"id"`` (string or integer) names the prompt; otherwise the id is
``"<file stem>:<line number>"`` (``"<folder name>:<row index>"`` for datasets).

The round's prompts are then drawn with :func:`select_round_prompts`.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyclealign import resources
from cyclealign.errors import DataError, RunDirError
from cyclealign.records import Message, PromptRecord

if TYPE_CHECKING:
    from cyclealign.config import Config
    from cyclealign.rundir import RunDir

ROLES = ("system", "user", "assistant")
SHAPES = '"prompt" (a string), "messages" (a list of chat messages) or "chosen" (an HH-RLHF dialogue)'
SUFFIXES = (".jsonl", ".jsonl.gz")

# A turn marker in an HH-RLHF dialogue: "Human:" or "Assistant:" at the start of the text or
# after a blank line. A marker inside a turn's text (the raw data has some) stays text.
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_hh_dialogue(text: str) -> list[Message]:
    """Split an HH-RLHF dialogue into chat messages (Human -> user, Assistant -> assistant).

    Turns start with ``Human:`` or ``Assistant:`` at the start of the text or after a blank
    line; contents are stripped. Consecutive turns of the same speaker (a few raw HH
    dialogues have two ``Assistant:`` turns in a row) are merged, joined by a blank line,
    so roles alternate. An empty last turn is kept (an unfinished response).

    Raises:
        ValueError: text before the first turn, no turn at all, or an empty turn that is not
            the last.

    >>> parse_hh_dialogue("\\n\\nHuman: Hi\\n\\nAssistant: Hello!\\n\\nHuman: Bye\\n\\nAssistant: See you")  # doctest: +NORMALIZE_WHITESPACE
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'},
     {'role': 'user', 'content': 'Bye'}, {'role': 'assistant', 'content': 'See you'}]
    >>> parse_hh_dialogue("Human: a\\n\\nAssistant: b\\n\\nAssistant: c")
    [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b\\n\\nc'}]
    >>> parse_hh_dialogue("Hello there")
    Traceback (most recent call last):
    ...
    ValueError: HH dialogue has no "Human:" or "Assistant:" turn
    """
    parts = _HH_TURN.split(text.lstrip(" \t"))
    # parts = [preamble, speaker, content, speaker, content, ...]
    if len(parts) == 1:
        raise ValueError('HH dialogue has no "Human:" or "Assistant:" turn')
    if parts[0].strip():
        raise ValueError(f'HH dialogue has text before its first turn: {parts[0].strip()[:40]!r}')
    messages: list[Message] = []
    turns = list(zip(parts[1::2], parts[2::2]))
    for i, (speaker, content) in enumerate(turns):
        role, content = _HH_ROLE[speaker], content.strip()
        if not content and i < len(turns) - 1:
            raise ValueError(f'HH dialogue has an empty "{speaker}:" turn (turn {i + 1})')
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = "\n\n".join(c for c in (messages[-1]["content"], content) if c)
        else:
            messages.append({"role": role, "content": content})
    return messages


def hh_prompt(text: str) -> list[Message]:
    """The prompt of an HH-RLHF dialogue: its messages before the last ``Assistant:`` turn.

    Earlier assistant turns are kept, so a multi-turn dialogue stays multi-turn; the result
    always ends with a user message.

    Raises:
        ValueError: the dialogue is malformed (see :func:`parse_hh_dialogue`), has no
            ``Assistant:`` turn, or no ``Human:`` turn before its last ``Assistant:`` turn.

    >>> hh_prompt("\\n\\nHuman: Hi\\n\\nAssistant: Hello!\\n\\nHuman: Bye\\n\\nAssistant: See you")
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}, {'role': 'user', 'content': 'Bye'}]
    >>> hh_prompt("\\n\\nHuman: Hi")
    Traceback (most recent call last):
    ...
    ValueError: HH dialogue has no "Assistant:" turn
    """
    messages = parse_hh_dialogue(text)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError('HH dialogue has no "Assistant:" turn')
    if last == 0:
        raise ValueError('HH dialogue has no "Human:" turn before its last "Assistant:" turn')
    return messages[:last]


def parse_messages(value: Any) -> list[Message]:
    """Validate a list of chat messages; returns copies holding only ``role`` and ``content``.

    Raises:
        ValueError: not a non-empty list of objects, a role outside system/user/assistant,
            a content that is not a non-empty string, or a last message not from the user.

    >>> parse_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    >>> parse_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    Traceback (most recent call last):
    ...
    ValueError: the last message must be from the user, got role 'assistant'
    """
    if not isinstance(value, list) or not value:
        raise ValueError(f'"messages" must be a non-empty list, got {type(value).__name__}')
    messages: list[Message] = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping):
            raise ValueError(f"message {i} must be an object, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f'message {i} "content" must be a string, got {type(content).__name__}')
        if not content.strip():
            raise ValueError(f"message {i} has empty content")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise ValueError(f"the last message must be from the user, got role {messages[-1]['role']!r}")
    return messages


def parse_row(row: Any, default_id: str) -> PromptRecord:
    """Turn one JSONL object or dataset row into a :class:`PromptRecord`.

    The shape is detected from the first field present (``messages``, then ``prompt``, then
    ``chosen``); a field whose value is ``None`` counts as absent (datasets fill the columns
    a row lacks with ``None``).

    Raises:
        ValueError: not an object, no recognised field, wrong types, or invalid content.

    >>> parse_row({"prompt": "Hi", "id": 7}, "f:1")
    PromptRecord(id='7', messages=[{'role': 'user', 'content': 'Hi'}])
    >>> parse_row({"text": "Hi"}, "f:1")
    Traceback (most recent call last):
    ...
    ValueError: no recognised field (found: text); expected "prompt" (a string), "messages" (a list of chat messages) or "chosen" (an HH-RLHF dialogue)
    """
    if not isinstance(row, Mapping):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    row = {k: v for k, v in row.items() if v is not None}
    if "messages" in row:
        messages = parse_messages(row["messages"])
    elif "prompt" in row:
        if not isinstance(row["prompt"], str):
            raise ValueError(f'"prompt" must be a string, got {type(row["prompt"]).__name__}')
        if not row["prompt"].strip():
            raise ValueError('"prompt" is empty')
        messages = [{"role": "user", "content": row["prompt"]}]
    elif "chosen" in row:
        if not isinstance(row["chosen"], str):
            raise ValueError(f'"chosen" must be a string, got {type(row["chosen"]).__name__}')
        messages = hh_prompt(row["chosen"])
    else:
        raise ValueError(f"no recognised field (found: {', '.join(row) or 'none'}); expected {SHAPES}")
    id_ = row.get("id", default_id)
    if isinstance(id_, bool) or not isinstance(id_, (str, int)):
        raise ValueError(f'"id" must be a string or an integer, got {type(id_).__name__}')
    return PromptRecord(id=str(id_), messages=messages)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number from 1, parsed JSON) for each non-blank line of a .jsonl / .jsonl.gz file."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8-sig")
                except UnicodeDecodeError as e:
                    raise DataError(path, line_no, f"not valid UTF-8: {e}") from e
                if not text.strip():
                    continue
                try:
                    yield line_no, json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(path, line_no, f"invalid JSON: {e}") from e
    except (gzip.BadGzipFile, EOFError) as e:
        raise DataError(path, None, f"not a valid gzip file: {e}") from e


def _dataset_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row index from 0, row dict) for a Hugging Face dataset directory (see :func:`load_prompts`)."""
    import datasets  # heavy import, only needed for dataset directories

    try:
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(str(path))
    except Exception as e:  # datasets raises many types; all mean "not a loadable dataset"
        raise DataError(path, None, f"cannot load as a Hugging Face dataset: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        if not ds:
            raise DataError(path, None, "the dataset has no splits")
        ds = ds["test"] if "test" in ds else ds[next(iter(ds))]
    yield from enumerate(ds)


def load_prompts(path: Path | None = None) -> list[PromptRecord]:
    """Load prompts from a JSONL file, a gzipped JSONL file or a Hugging Face dataset folder.

    Args:
        path: a ``.jsonl`` or ``.jsonl.gz`` file (one JSON object per line, blank lines
            skipped; gzip is detected by the suffix), or a directory holding a Hugging Face
            dataset: either one saved with ``save_to_disk`` (read with
            ``datasets.load_from_disk``) or a folder of data files (read with
            ``datasets.load_dataset``). When the dataset has several splits, the ``"test"``
            split is used if present, else the first one. ``None`` loads the default prompt
            set cyclealign ships (:func:`resources.default_prompts_path`).

    Each line or row is one of the shapes in the module docstring. Ids default to
    ``"<file stem>:<line number>"`` (line numbers from 1) or ``"<folder name>:<row index>"``
    (row indices from 0). Prompts whose messages repeat an earlier prompt's exactly are
    dropped, keeping the first (HH-RLHF repeats opening turns across its pairs).

    Returns:
        The unique prompts, in file order.

    Raises:
        DataError: the path does not exist or has an unsupported suffix; a line or row is
            invalid (the message names the file and ``line N`` or ``row N``: invalid JSON,
            not an object, no recognised field, wrong types, empty content, bad role, last
            message not from the user, an HH dialogue without a ``Human:`` or ``Assistant:``
            turn); two different prompts share an id; or the source holds no prompts.
    """
    path = resources.default_prompts_path() if path is None else Path(path)
    if not path.exists():
        raise DataError(path, None, "no such file or directory")
    if path.is_dir():
        rows, stem, where = _dataset_rows(path), path.name, "row"
    elif path.name.endswith(SUFFIXES):
        rows, stem, where = _jsonl_rows(path), path.name.removesuffix(".gz").removesuffix(".jsonl"), "line"
    else:
        raise DataError(
            path, None, f"unsupported file type; expected {' or '.join(SUFFIXES)}, or a Hugging Face dataset directory"
        )

    def error(n: int, message: str) -> DataError:
        # JSONL errors read "file:LINE: ..."; dataset errors "dir: row N: ..."
        return DataError(path, n, message) if where == "line" else DataError(path, None, f"row {n}: {message}")

    prompts: list[PromptRecord] = []
    seen_messages: set[tuple[tuple[str, str], ...]] = set()
    seen_ids: dict[str, int] = {}
    for n, row in rows:
        try:
            record = parse_row(row, default_id=f"{stem}:{n}")
        except ValueError as e:
            raise error(n, str(e)) from e
        key = tuple((m["role"], m["content"]) for m in record.messages)
        if key in seen_messages:
            continue
        if record.id in seen_ids:
            raise error(n, f"id {record.id!r} is already used by {where} {seen_ids[record.id]}")
        seen_messages.add(key)
        seen_ids[record.id] = n
        prompts.append(record)
    if not prompts:
        raise DataError(path, None, "no prompts found")
    return prompts


def load_run_prompts(run: RunDir, cfg: Config) -> list[PromptRecord]:
    """Every prompt of a run's prompt source (``cfg.prompts``; the shipped set when None), as
    :func:`load_prompts` reads it; a round's prompts are then :func:`select_round_prompts` of them.

    Args:
        run: the run directory (named in the error when the source is gone).
        cfg: the run's saved config (:meth:`~cyclealign.rundir.RunDir.read_config`).

    Raises:
        RunDirError: the prompt source named in ``config.json`` no longer exists.
        DataError: it exists but is malformed.
    """
    if cfg.prompts is not None and not Path(cfg.prompts).exists():
        raise RunDirError(
            f"{cfg.prompts}: the prompt source named in {run.config} is missing; it is needed to rebuild "
            "the rounds' prompt messages (a relative path is read from the current directory)"
        )
    return load_prompts(cfg.prompts)


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
    what they recorded (:func:`recorded_round_prompts`).

    Raises:
        RunDirError: as :func:`recorded_round_prompts`.
    """
    counts: dict[str, int] = {}
    for k in range(before_round):
        for p in recorded_round_prompts(run, cfg, k, prompts):
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
