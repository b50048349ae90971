"""On-disk cache of raw ranker replies: a paid answer is stored before it is used, and never bought twice.

Every chat-completion request the ranker would send is keyed by :func:`request_key`, a
sha256 over the endpoint, the model, the rendered messages, the template hash, the sampling
parameters (temperature, max_tokens, response_format) and the presentation order (the
shuffle). The raw reply (content, usage, finish reason) is committed to SQLite *before* the
ranker parses it, so a crash right after a paid call loses nothing: a re-run, a resume, or a
second run with the same inputs gets the stored reply instead of a new call.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed row survives the process
being killed (``kill -9``); only a power loss can drop the last commits. One file can be
shared by many runs (the default lives in the user's cache folder) and by concurrent
processes (SQLite locks; writers wait up to 30 s).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from cyclealign.errors import RankerError

__all__ = ["CachedReply", "ReplyCache", "request_key"]

CachedReply = dict[str, Any]
"""A stored reply: ``{"content": str | None, "usage": {"prompt_tokens", "completion_tokens"} | None,
"finish_reason": str | None, "batch": bool}``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    reply TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def request_key(
    *,
    base_url: str,
    request: dict[str, Any],
    template_hash: str,
    order: list[int] | None,
) -> str:
    """The cache key of one chat-completion request (sha256 hex, 64 characters).

    Args:
        base_url: the API's base URL without credentials (a different provider is a different key).
        request: the request body as sent: ``model``, ``messages``, ``temperature``,
            ``max_tokens`` and ``response_format`` when present; keys are sorted before hashing.
        template_hash: :meth:`RankerTemplates.template_hash` of the templates in use.
        order: the presentation order of the responses (the seeded shuffle), or None.

    >>> a = request_key(base_url="u", request={"model": "m", "messages": []}, template_hash="t", order=[1, 0])
    >>> a == request_key(base_url="u", request={"messages": [], "model": "m"}, template_hash="t", order=[1, 0])
    True
    >>> a == request_key(base_url="u", request={"model": "m", "messages": []}, template_hash="t", order=[0, 1])
    False
    """
    payload = {"base_url": base_url, "request": request, "template_hash": template_hash, "order": order}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ReplyCache:
    """The reply store: ``get``/``put`` by :func:`request_key`.

    Args:
        path: the SQLite file (created with its folder if missing).

    Raises:
        RankerError: the file cannot be opened or is not a cache database (the path is named).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise RankerError(f"{self.path}: cannot open the ranker reply cache: {e}") from None

    def get(self, key: str) -> CachedReply | None:
        """The stored reply for ``key``, or None."""
        row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, model: str, reply: CachedReply) -> None:
        """Store ``reply`` under ``key`` (committed before this returns; a second put replaces it)."""
        self._db.execute(
            "INSERT OR REPLACE INTO replies (key, model, reply, created) VALUES (?, ?, ?, ?)",
            (key, model, json.dumps(reply, ensure_ascii=False), time.time()),
        )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM replies WHERE key = ?", (key,)).fetchone() is not None

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> "ReplyCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
