"""Config files and dotted keys: reading a YAML or JSON config file, flattening nested fields to
``section.field`` keys, and one-line validation errors."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from cyclealign.errors import ConfigError

__all__ = ["flatten", "format_validation_error", "read_config_file"]


def flatten(d: dict[str, object], prefix: str = "") -> dict[str, object]:
    """Nested config JSON as dotted keys.

    >>> flatten({"rounds": 2, "ranker": {"model": "m"}})
    {'rounds': 2, 'ranker.model': 'm'}
    """
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def format_validation_error(e: ValidationError) -> str:
    """One line per failing field: ``generation.num_samples: Input should be ...``."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def read_config_file(path: Path) -> dict[str, object]:
    """The nested fields of a config file: YAML when its suffix is ``.yaml``/``.yml``, else JSON.

    Raises:
        ConfigError: the file cannot be read, does not parse (naming its line), or is not a mapping.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file holds a mapping of config fields, got {type(data).__name__}")
    return data
