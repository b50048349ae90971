"""Locations of the files that ship with cyclealign: ranker templates, static demos, default prompts.

In a source checkout (editable install) they are the top-level ``prompts/`` and ``demos/``
folders; in a wheel they are force-included under ``cyclealign/_shipped/`` (see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _shipped(name: str) -> Path:
    for candidate in (_PKG / "_shipped" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cyclealign's shipped folder {name!r} is missing (looked next to {_PKG})")


def default_templates_dir() -> Path:
    """Folder of the ranker's Jinja2 templates (``prompts/``)."""
    return _shipped("prompts")


def default_demos_path() -> Path:
    """The static, human-written ranking demonstrations (``demos/ranking.jsonl``)."""
    return _shipped("demos") / "ranking.jsonl"


def default_prompts_path() -> Path:
    """The small default prompt set cyclealign ships (``cyclealign/assets/default_prompts.jsonl``)."""
    return _PKG / "assets" / "default_prompts.jsonl"
