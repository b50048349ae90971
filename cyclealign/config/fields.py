"""The config's fields as rows (dotted name, type, default, description): what ``cyclealign
config fields`` prints, read from the pydantic models of :mod:`cyclealign.config`."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from cyclealign.errors import ConfigError

__all__ = ["FieldRow", "config_fields"]


@dataclass(frozen=True)
class FieldRow:
    """One config field: ``name`` (dotted, as ``--set`` takes it), ``type``, ``default`` (as
    text; ``-`` when it is computed) and ``description``."""

    name: str
    type: str
    default: str
    description: str


def _type_text(annotation: Any) -> str:
    """A field's type as a user reads it (``int``, ``str | None``, ``pro | rrhf``).

    >>> _type_text(typing.Literal["pro", "rrhf"]), _type_text(int | None)
    ('pro | rrhf', 'int | None')
    """
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_text(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_text(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def config_fields(model: type[BaseModel], section: str | None = None, prefix: str = "") -> list[FieldRow]:
    """Every leaf field of ``model`` (sections recursed into), in declaration order.

    Raises:
        ConfigError: ``section`` is not one of the model's sections.
    """
    if section is not None:
        sub = model.model_fields.get(section)
        inner = getattr(sub, "annotation", None) if sub is not None else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            sections = [n for n, f in model.model_fields.items() if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)]
            raise ConfigError(f"config fields {section!r}: not a section (sections: {', '.join(sections)})")
        return config_fields(inner, None, f"{section}.")
    rows: list[FieldRow] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(config_fields(annotation, None, f"{prefix}{name}."))
            continue
        default = "-" if field.default_factory is not None or field.is_required() else str(field.default)
        rows.append(FieldRow(prefix + name, _type_text(annotation), default, field.description or ""))
    return rows
