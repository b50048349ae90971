"""Durable files: atomic, umask-respecting writes and JSON / JSON-lines reading that survives a crash.

- :func:`atomic_write_text` (and :func:`write_json`, :func:`write_jsonl`): a temporary file in the
  same folder, fsynced and renamed into place, so a reader sees the old file or the new one;
- :func:`append_jsonl`: one fsynced line at a time, for files that grow as results arrive;
  :func:`cut_torn_tail` and :func:`read_jsonl` leave out a last line torn by a crash;
- :func:`read_json`, :func:`read_records`: reading that names the file and line of what is wrong
  (:class:`~cyclealign.errors.RunDirError`), never a traceback;
- :func:`process_umask`, :func:`with_umask_mode`, :func:`make_work_dir`: files and folders made
  with the modes the user's umask gives, as ``open`` would.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cyclealign.errors import RunDirError

log = logging.getLogger(__name__)


def process_umask() -> int:
    """The process's umask (read from ``/proc/self/status`` where it is there, else set and restored)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def with_umask_mode(path: Path) -> Path:
    """Give a file or folder made by ``tempfile`` (0600 / 0700) the mode a plain ``open`` or
    ``mkdir`` would have given it (0666 / 0777 less the umask), so that the run directory's files
    are as readable as the user's others (a vLLM server running as another user reads the adapter)."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~process_umask())
    return Path(path)


def make_work_dir(parent: Path, prefix: str) -> Path:
    """A new scratch folder in ``parent`` (created if missing) with the umask's mode; renamed
    into place when complete, it is as readable as a folder made with ``mkdir``."""
    parent.mkdir(parents=True, exist_ok=True)
    return with_umask_mode(Path(tempfile.mkdtemp(prefix=prefix, dir=parent)))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder, fsync, rename; the file
    gets the mode a plain ``open`` would give it (the umask's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~process_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path, key: str | None = None) -> Any:
    """One JSON document written by :func:`write_json` (``doc[key]`` when ``key`` is given).

    Raises:
        RunDirError: the file is not valid JSON (torn or edited by hand) or lacks ``key``; the
            message names the file.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if key is None else doc[key]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: not valid JSON ({e}); restore it or remove the round's folder to redo it") from None
    except (KeyError, TypeError):
        raise RunDirError(f"{path}: no {key!r} field (not a file cyclealign wrote)") from None


def write_json(path: Path, obj: Any) -> None:
    """Atomically write one JSON document."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """Atomically write JSON lines."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def cut_torn_tail(path: Path) -> bool:
    """Cut a torn last line (a write a crash or kill interrupted: no closing newline) off
    ``path``, so that the next append starts a line of its own; says so in the log. Returns
    whether it cut one."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return False
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return False
            f.seek(0)
            data = f.read()
    except FileNotFoundError:
        return False
    keep = data.rfind(b"\n") + 1
    log.warning("%s: cut a torn last line (%d bytes of an interrupted write)", path, size - keep)
    with open(path, "r+b") as f:
        f.truncate(keep)
    return True


def append_jsonl(path: Path, row: Any, fsync: bool = True) -> None:
    """Append one JSON line (used for paid results, one by one); ``fsync`` also survives a power
    loss, without it the line survives the process being killed. A torn last line left by an
    earlier crash is cut first (:func:`cut_torn_tail`): appended to it, the new line would be
    torn too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cut_torn_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[Any]:
    """Read JSON lines; a torn (unparsable) *last* line is left out with a warning in the log
    (a round's torn ranking is asked again on resume, from the reply cache), any other bad line raises.

    Raises:
        RunDirError: a line other than the last is not valid JSON (names file and line).
    """
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines):  # torn tail from an interrupted append: said, not silently dropped
                log.warning("%s:%d: a torn last line (an interrupted write) is left out", path, i)
                break
            raise RunDirError(f"{path}:{i}: corrupt line ({e.msg})") from None
    return rows


def read_records(path: Path, cls: Any) -> list[Any]:
    """Read JSON lines (:func:`read_jsonl`, a torn last line left out) as records: ``cls.from_json``
    of each row (``cls``: a record class of :mod:`cyclealign.records`).

    Raises:
        RunDirError: a line is corrupt, or its row is not a ``cls`` (a missing or unknown field,
            a wrong type); names the file and the line.
    """
    out = []
    for i, row in enumerate(read_jsonl(path), 1):
        try:
            out.append(cls.from_json(row))
        except (TypeError, KeyError, ValueError, AttributeError) as e:
            name = getattr(cls, "__name__", "record")
            raise RunDirError(f"{path}:{i}: not a {name} row ({type(e).__name__}: {e})") from None
    return out
