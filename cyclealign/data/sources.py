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

A row becomes a prompt in :mod:`cyclealign.data.rows`; the round's prompts are then drawn with
:func:`~cyclealign.data.selection.select_round_prompts` (:mod:`cyclealign.data.selection`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyclealign import resources
from cyclealign.data.rows import parse_row
from cyclealign.errors import DataError, RunDirError
from cyclealign.records import PromptRecord

if TYPE_CHECKING:
    from cyclealign.config import Config
    from cyclealign.rundir import RunDir

__all__ = ["SUFFIXES", "load_prompts", "load_run_prompts"]

SUFFIXES = (".jsonl", ".jsonl.gz")


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
    :func:`load_prompts` reads it; a round's prompts are then
    :func:`~cyclealign.data.selection.select_round_prompts` of them.

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
