"""Parse the black-box ranker's reply into a ranking: a pure function on strings.

The ranker is asked to answer with the response labels, best first, joined by ``>``:
``[2] > [1] > [4] > [3]``. Labels are 1-based in the reply; the parsed ranking is the
0-based permutation used everywhere else (see :mod:`cyclealign.records`).

The parser is tolerant of what models wrap around the answer (a preamble, markdown, an
explanation afterwards, missing spaces around ``>``) and strict about the answer itself:
every label ``[1]..[N]`` exactly once, in a single unambiguous chain. Its error messages are
short reasons that the ranker client quotes back to the model in a correction re-ask.

With structured output (:func:`ranking_json_schema`) the reply is a JSON object
``{"ranking": [2, 1, 4, 3]}`` of 1-based labels; :func:`parse_ranking` reads that form too,
with the same checks.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["RankingParseError", "parse_ranking", "ranking_json_schema"]

_LABEL = r"\[\s*(\d+)\s*\]"
_CHAIN = re.compile(r"\[\s*\d+\s*\](?:\s*>\s*\[\s*\d+\s*\])+")
"""Two or more bracketed labels joined by ``>``, any whitespace (newlines too) around ``>``."""
_LABEL_RE = re.compile(_LABEL)


class RankingParseError(ValueError):
    """The reply holds no usable ranking; ``str(error)`` is a short reason for the correction prompt."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _labels(labels: list[int]) -> str:
    return ", ".join(f"[{x}]" for x in labels)


def ranking_json_schema(n: int) -> dict[str, Any]:
    """The ``response_format`` of a structured-output ranker call for ``n`` responses.

    An object with one field ``ranking``: ``n`` integer labels in ``1..n``, best first (OpenAI
    structured outputs, ``strict``; vLLM and other servers use it for guided decoding).
    Uniqueness cannot be said in a strict schema, so the parser still checks it.
    """
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "ranking",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {
                    "ranking": {
                        "type": "array",
                        "items": {"type": "integer", "enum": list(range(1, n + 1))},
                        "minItems": n,
                        "maxItems": n,
                    }
                },
                "required": ["ranking"],
                "additionalProperties": False,
            },
        },
    }


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def _json_labels(reply: str) -> list[int] | None:
    """The label list of a ``{"ranking": [...]}`` reply (markdown fences allowed), else None.

    Raises:
        RankingParseError: a JSON object with a ``ranking`` that is not a list of integers.
    """
    match = _JSON_OBJECT.search(reply)
    if match is None:
        return None
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "ranking" not in obj:
        return None
    labels = obj["ranking"]
    if not isinstance(labels, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
        raise RankingParseError('"ranking" must be a list of integer labels')
    return labels


def parse_ranking(reply: str, n: int, complete_last: bool = False) -> list[int]:
    """The 0-based ranking (best first) in ``reply``, a ranking of ``n`` responses labelled ``[1]..[n]``.

    A reply holding a JSON object with a ``ranking`` list (structured output) is read as that
    list of 1-based labels. Otherwise: finds every chain of bracketed labels joined by ``>``; text around the chain is ignored.
    The same chain repeated (e.g. restated after an explanation) counts once.

    Args:
        reply: the raw reply text of the ranker model.
        n: number of responses shown (``>= 2``).
        complete_last: accept a chain of ``n - 1`` distinct in-range labels as the full
            ranking with the one missing label last (a top-(n-1) list fixes the whole order).
            Off by default: the strict reading.

    Returns:
        A permutation of ``range(n)``, best first.

    Raises:
        RankingParseError: no chain found, several different chains (ambiguous), or a chain
            with labels out of range, duplicated or missing. The message names the labels.
        ValueError: ``n < 2`` (a programming error, not a bad reply).

    >>> parse_ranking("[2] > [1] > [4] > [3]", 4)
    [1, 0, 3, 2]
    >>> parse_ranking("Sure! My ranking: **[3]>[1]> [2]**. [3] is the most helpful.", 3)
    [2, 0, 1]
    >>> def why(reply, n):
    ...     try:
    ...         parse_ranking(reply, n)
    ...     except RankingParseError as e:
    ...         print(e)
    >>> why("[2] > [1]", 3)
    missing label [3]
    >>> why("[2] > [1] > [2]", 3)
    duplicated label [2]; missing label [3]
    >>> why("[1] > [5] > [2]", 3)
    label [5] out of range [1]..[3]; missing label [3]
    >>> why("[1] > [2] > [3] or [2] > [1] > [3]", 3)
    ambiguous: 2 different rankings ([1] > [2] > [3]; [2] > [1] > [3])
    >>> why("Response 2 is best.", 3)
    no ranking found
    >>> parse_ranking("[3] > [1] > [4]", 4, complete_last=True)
    [2, 0, 3, 1]
    >>> why("[3] > [1]", 4)
    missing labels [2], [4]
    >>> parse_ranking('{"ranking": [2, 3, 1]}', 3)
    [1, 2, 0]
    >>> why('```json\\n{"ranking": [2, 2, 1]}\\n```', 3)
    duplicated label [2]; missing label [3]
    """
    if n < 2:
        raise ValueError(f"parse_ranking needs n >= 2 responses, got n={n}")
    labels = _json_labels(reply)
    if labels is not None:
        return _check(labels, n, complete_last)
    chains: list[list[int]] = []
    for match in _CHAIN.finditer(reply):
        chain = [int(x) for x in _LABEL_RE.findall(match.group(0))]
        if chain not in chains:
            chains.append(chain)
    if not chains:
        raise RankingParseError("no ranking found")
    if len(chains) > 1:
        shown = "; ".join(" > ".join(f"[{x}]" for x in c) for c in chains[:3])
        raise RankingParseError(f"ambiguous: {len(chains)} different rankings ({shown})")
    (chain,) = chains
    return _check(chain, n, complete_last)


def _check(chain: list[int], n: int, complete_last: bool) -> list[int]:
    """``chain`` (1-based labels) as a 0-based permutation, or RankingParseError naming the problems."""
    problems = []
    out_of_range = sorted({x for x in chain if not 1 <= x <= n})
    if out_of_range:
        word = "label" if len(out_of_range) == 1 else "labels"
        problems.append(f"{word} {_labels(out_of_range)} out of range [1]..[{n}]")
    duplicated = sorted({x for x in chain if 1 <= x <= n and chain.count(x) > 1})
    if duplicated:
        word = "label" if len(duplicated) == 1 else "labels"
        problems.append(f"duplicated {word} {_labels(duplicated)}")
    missing = [x for x in range(1, n + 1) if x not in chain]
    if complete_last and not problems and len(missing) == 1:
        return [x - 1 for x in chain + missing]
    if missing:
        word = "label" if len(missing) == 1 else "labels"
        problems.append(f"missing {word} {_labels(missing)}")
    if problems:
        raise RankingParseError("; ".join(problems))
    return [x - 1 for x in chain]
