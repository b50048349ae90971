"""Number formatting for the tables printed by the CLI and written into the HTML report (stdlib only)."""

from __future__ import annotations

import math
from typing import Any


def fmt(value: Any, digits: int = 3, nonfinite: str | None = "-") -> str:
    """A table cell: ``-`` for a missing value (None), floats with ``digits`` decimals, anything
    else as ``str``.

    A NaN or infinite float reads ``nonfinite`` (default ``-``: shown as missing, as in the report);
    with ``nonfinite=None`` it is formatted like any float (``nan``, ``inf``), as the CLI prints it.

    >>> [fmt(None), fmt(3), fmt(0.12345), fmt(float("nan")), fmt("base")]
    ['-', '3', '0.123', '-', 'base']
    >>> [fmt(float("nan"), nonfinite=None), fmt(float("inf"), 1, nonfinite=None), fmt(2.0, 1)]
    ['nan', 'inf', '2.0']
    """
    if value is None:
        return "-"
    if isinstance(value, float):
        if nonfinite is not None and not math.isfinite(value):
            return nonfinite
        return f"{value:.{digits}f}"
    return str(value)
