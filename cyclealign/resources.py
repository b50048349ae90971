"""The files that ship with cyclealign, found through :mod:`importlib.resources`: the one place
the package opens a shipped file from.

==========================  ============================================================  ==========================
what                        in a source checkout (editable install)                       in a wheel
==========================  ============================================================  ==========================
ranker/judge templates      ``prompts/`` (top level)                                      ``cyclealign/_shipped/prompts/``
static demonstrations       ``demos/ranking.jsonl`` (top level)                           ``cyclealign/_shipped/demos/``
default prompt set          ``cyclealign/assets/default_prompts.jsonl``                   the same
model price table           ``cyclealign/assets/prices.json``                             the same
HTML report template        ``cyclealign/assets/report.html.jinja``                       the same
accelerate configs          ``cyclealign/assets/accelerate/{ddp,zero2,zero3}.yaml``       the same
==========================  ============================================================  ==========================

``prompts/`` and ``demos/`` stay top-level folders of the repository (users edit and copy them);
the wheel force-includes them under ``cyclealign/_shipped/`` (pyproject.toml). Every function
returns a path on disk (the package must be installed as files, not zipped; else
``FileNotFoundError``); a shipped folder that is missing (a broken install) raises
``FileNotFoundError`` too. Nothing beyond the standard library is needed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = [
    "ACCELERATE_CONFIGS",
    "accelerate_config_path",
    "default_demos_path",
    "default_prompts_path",
    "default_templates_dir",
    "prices_path",
    "report_template_path",
    "shipped_accelerate_config",
]

ACCELERATE_CONFIGS = ("ddp", "zero2", "zero3")
"""Names of the shipped accelerate configs: DDP on every GPU, DeepSpeed ZeRO-2, ZeRO-3 (bf16 each)."""


def _package() -> Path:
    """The installed ``cyclealign`` package folder.

    Raises:
        FileNotFoundError: the package is not a folder on disk (a zip import).
    """
    root = resources.files(__package__ or "cyclealign")
    if not isinstance(root, Path):
        raise FileNotFoundError(f"cyclealign's shipped files need the package installed as files on disk, not {root!r}")
    return root


def _asset(*parts: str) -> Path:
    """A file under ``cyclealign/assets/`` (not checked: whoever opens it names a missing one)."""
    return _package().joinpath("assets", *parts)


def _shipped(name: str) -> Path:
    """A top-level shipped folder: ``cyclealign/_shipped/<name>`` in a wheel, ``<repo>/<name>`` in a checkout.

    Raises:
        FileNotFoundError: neither exists.
    """
    pkg = _package()
    for candidate in (pkg / "_shipped" / name, pkg.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cyclealign's shipped folder {name!r} is missing (looked next to {pkg})")


def default_templates_dir() -> Path:
    """Folder of the shipped ranker and judge Jinja2 templates (``prompts/``)."""
    return _shipped("prompts")


def default_demos_path() -> Path:
    """The static, human-written ranking demonstrations (``demos/ranking.jsonl``)."""
    return _shipped("demos") / "ranking.jsonl"


def default_prompts_path() -> Path:
    """The small default prompt set cyclealign ships (``cyclealign/assets/default_prompts.jsonl``, JSONL)."""
    return _asset("default_prompts.jsonl")


def prices_path() -> Path:
    """The shipped model price table (``cyclealign/assets/prices.json``: USD per 1M tokens per model)."""
    return _asset("prices.json")


def report_template_path() -> Path:
    """The HTML report's Jinja2 template (``cyclealign/assets/report.html.jinja``)."""
    return _asset("report.html.jinja")


def accelerate_config_path(name: str) -> Path:
    """The shipped accelerate config ``name`` (one of :data:`ACCELERATE_CONFIGS`, ``.yaml`` optional),
    for ``train.accelerate_config`` or ``accelerate launch --config_file``.

    Raises:
        ValueError: ``name`` is not a shipped config.

    >>> accelerate_config_path("zero2").name, accelerate_config_path("ddp.yaml").parent.name
    ('zero2.yaml', 'accelerate')
    """
    stem = name.removesuffix(".yaml")
    if stem not in ACCELERATE_CONFIGS:
        raise ValueError(f"{name!r} is not a shipped accelerate config (shipped: {', '.join(ACCELERATE_CONFIGS)})")
    return _asset("accelerate", f"{stem}.yaml")


def shipped_accelerate_config(value: str | Path) -> Path | None:
    """The shipped accelerate config a ``train.accelerate_config`` value names, or None: a bare
    name of :data:`ACCELERATE_CONFIGS` (``zero2``, ``zero2.yaml``) that is not a file in the
    current directory. Any other value is a path of the user's.

    >>> shipped_accelerate_config("zero3").name, shipped_accelerate_config("configs/zero3.yaml")
    ('zero3.yaml', None)
    """
    path = Path(value)
    if path.parent != Path(".") or path.suffix not in ("", ".yaml") or path.stem not in ACCELERATE_CONFIGS or path.exists():
        return None
    return accelerate_config_path(path.name)
