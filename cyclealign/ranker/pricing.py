"""What ranker calls cost (USD), and the run's budget that stops new calls before it is exceeded.

Cost of one call = ``prompt_tokens * input + completion_tokens * output`` (USD per 1M tokens,
from the API's ``usage`` field), times ``batch_discount`` for Batch API calls. Prices come
from the shipped table ``cyclealign/assets/prices.json``, a user table
(``ranker.prices_path``), or explicit per-token overrides; see :func:`resolve_price`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyclealign.errors import ConfigError
from cyclealign.resources import prices_path

if TYPE_CHECKING:
    from cyclealign.config.ranker import RankerConfig

__all__ = [
    "Budget", "BudgetExhausted", "Price", "default_prices_path", "estimate_tokens", "load_price_table", "ranker_price",
    "resolve_price",
]


def default_prices_path() -> Path:
    """The shipped price table (USD per 1M tokens): :func:`cyclealign.resources.prices_path`."""
    return prices_path()


@dataclass(frozen=True)
class Price:
    """USD per 1M prompt (input) and completion (output) tokens; ``batch_discount`` multiplies Batch API calls."""

    input_per_mtok: float
    output_per_mtok: float
    batch_discount: float = 0.5

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
        """USD for one call's usage.

        >>> round(Price(2.5, 10.0).cost_usd(1000, 100), 6)
        0.0035
        >>> round(Price(2.5, 10.0).cost_usd(1000, 100, batch=True), 6)
        0.00175
        """
        usd = (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6
        return usd * (self.batch_discount if batch else 1.0)


FREE = Price(0.0, 0.0)
"""The embedded local ranker costs nothing."""


def load_price_table(path: str | Path) -> tuple[dict[str, Price], float]:
    """Read a price table: ``{"batch_discount": 0.5, "models": {name: {"input": usd, "output": usd}}}``.

    Returns:
        ``(prices by model name, batch_discount)``.

    Raises:
        ConfigError: unreadable file, invalid JSON, or a malformed entry (file and model named).
    """
    path = Path(path)
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the price table: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON in the price table: {e.msg}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise ConfigError(f"{path}: a price table needs a 'models' object of {{name: {{input, output}}}}")
    discount = raw.get("batch_discount", 0.5)
    if not isinstance(discount, (int, float)) or not 0 < discount <= 1:
        raise ConfigError(f"{path}: batch_discount must be a number in (0, 1], got {discount!r}")
    prices = {}
    for name, entry in raw["models"].items():
        ok = isinstance(entry, dict) and all(
            isinstance(entry.get(k), (int, float)) and entry[k] >= 0 for k in ("input", "output")
        )
        if not ok:
            raise ConfigError(f"{path}: models.{name}: needs non-negative numbers 'input' and 'output' (USD per 1M tokens)")
        prices[name] = Price(float(entry["input"]), float(entry["output"]), float(discount))
    return prices, float(discount)


def resolve_price(
    model: str,
    *,
    prices_path: str | Path | None = None,
    input_per_mtok: float | None = None,
    output_per_mtok: float | None = None,
) -> Price | None:
    """The price of ``model``: explicit overrides, else the table's exact name, else its longest prefix.

    Returns None when the model is in no table and no override is given (cost unknown).

    Raises:
        ConfigError: only one of the two overrides given, or a bad price table.

    >>> resolve_price("gpt-4o-mini-2024-07-18").input_per_mtok
    0.15
    >>> resolve_price("my-local-model") is None
    True
    >>> resolve_price("x", input_per_mtok=1.0, output_per_mtok=2.0)
    Price(input_per_mtok=1.0, output_per_mtok=2.0, batch_discount=0.5)
    """
    table, discount = load_price_table(prices_path or default_prices_path())
    if (input_per_mtok is None) != (output_per_mtok is None):
        raise ConfigError("ranker.price_input_per_mtok and ranker.price_output_per_mtok must be given together")
    if input_per_mtok is not None and output_per_mtok is not None:
        return Price(input_per_mtok, output_per_mtok, discount)
    if model in table:
        return table[model]
    prefixes = [name for name in table if model.startswith(name)]
    return table[max(prefixes, key=len)] if prefixes else None


def ranker_price(cfg: RankerConfig) -> Price | None:
    """The price of the run's ranker: free for the embedded one (``ranker.base_url`` unset), else
    :func:`resolve_price` of ``ranker.model`` with the config's table and overrides (None: unknown).

    Raises:
        ConfigError: as :func:`resolve_price`.
    """
    if cfg.base_url is None:
        return FREE
    return resolve_price(
        cfg.model or "", prices_path=cfg.prices_path, input_per_mtok=cfg.price_input_per_mtok,
        output_per_mtok=cfg.price_output_per_mtok,
    )


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """An upper-bound-leaning estimate of a request's prompt tokens, before sending it.

    UTF-8 bytes / 3 plus 4 tokens of framing per message: above the usual ~4 characters per
    token of English with BPE tokenizers, so a budget or a tokens-per-minute limit based on it
    errs on the safe side.

    >>> estimate_tokens([{"role": "user", "content": "x" * 300}])
    105
    """
    size = sum(len((m.get("content") or "").encode()) for m in messages)
    return math.ceil(size / 3) + 4 * len(messages) + 1


class BudgetExhausted(Exception):
    """A call was not sent because it could push the run's spend over ``--max-cost-usd``."""


class Budget:
    """The run's spend in USD, and the check made before each paid call.

    A call reserves its worst-case cost (estimated prompt tokens + ``max_tokens``) before it is
    sent and settles to its real cost (from ``usage``) when it returns, so concurrent calls can
    never overshoot the limit together.

    Args:
        limit_usd: the cap, or None for no cap (costs are still counted).
        spent_usd: what the run already spent (earlier rounds and sessions).
    """

    def __init__(self, limit_usd: float | None, spent_usd: float = 0.0) -> None:
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.reserved_usd = 0.0
        self.exhausted = False

    def reserve(self, usd: float) -> None:
        """Reserve ``usd`` for a call about to be sent.

        Raises:
            BudgetExhausted: the reservation would exceed the limit (and every later one is refused
                too, so a round stops cleanly instead of squeezing in cheap calls).
        """
        if self.limit_usd is not None and (self.exhausted or self.spent_usd + self.reserved_usd + usd > self.limit_usd):
            self.exhausted = True
            raise BudgetExhausted(self.reached())
        self.reserved_usd += usd

    def reached(self) -> str:
        """The message of a reached budget: what was spent of the limit (USD)."""
        return f"the ranker budget is reached: spent ${self.spent_usd:.4f} of --max-cost-usd ${self.limit_usd or 0.0:.4f}"

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        """Replace a reservation by the call's real cost (``actual_usd`` = 0 for a call that failed unbilled)."""
        self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)
        self.spent_usd += actual_usd
