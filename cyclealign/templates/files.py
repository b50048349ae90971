"""Where each prompt template comes from: a user folder laid over the shipped ``prompts/``.

A user templates folder (``ranker.templates_dir``, ``--templates``) holds only the files it
overrides; every other template is the shipped one. :class:`TemplateFiles` resolves each of
the six template names (:data:`TEMPLATE_NAMES`) to the user's file when there is one, else to
the shipped file, says which one wins, and loads and checks them (a Jinja2
``FileSystemLoader([user, shipped])`` resolves ``{% include %}`` the same way).

Checks at load time, each raising :class:`~cyclealign.errors.TemplateError` naming the file:

* the user folder does not exist, or holds a ``*.jinja`` file that is no template name (a typo
  such as ``ranker_sytem.jinja`` would otherwise be silently ignored);
* a syntax error (file and line);
* a variable the caller does not provide (file and line of its first use);
* a variable the template must use, left out (the prompt would silently lose the data).
"""

from __future__ import annotations

import hashlib
import logging
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path

import jinja2
import jinja2.meta
import jinja2.nodes

from cyclealign.errors import TemplateError
from cyclealign.resources import default_templates_dir

__all__ = [
    "JUDGE_REQUIRED",
    "JUDGE_VARIABLES",
    "TEMPLATE_NAMES",
    "TemplateFiles",
    "changed_templates",
    "template_line",
    "template_name",
    "warn_changed_templates",
]

log = logging.getLogger(__name__)

TEMPLATE_NAMES: tuple[str, ...] = (
    "ranker_system.jinja",
    "ranker_user.jinja",
    "ranker_answer.jinja",
    "ranker_correction.jinja",
    "judge_system.jinja",
    "judge_user.jinja",
)
"""Every template file cyclealign reads, ranker templates first."""

JUDGE_VARIABLES: dict[str, frozenset[str]] = {
    "judge_system.jinja": frozenset(),
    "judge_user.jinja": frozenset({"query", "first", "second"}),
}
"""The judge templates and the variables evaluation provides when rendering them."""

JUDGE_REQUIRED: dict[str, frozenset[str]] = {"judge_user.jinja": frozenset({"query", "first", "second"})}
"""Variables a judge template must use."""


def template_name(name: str) -> str:
    """The file name of template ``name``, given with or without ``.jinja``.

    Raises:
        TemplateError: no such template (the known names are listed).

    >>> template_name("ranker_system"), template_name("judge_user.jinja")
    ('ranker_system.jinja', 'judge_user.jinja')
    """
    file = name if name.endswith(".jinja") else f"{name}.jinja"
    if file not in TEMPLATE_NAMES:
        known = ", ".join(n.removesuffix(".jinja") for n in TEMPLATE_NAMES)
        raise TemplateError(f"unknown template {name!r} (known: {known})")
    return file


def _first_use(ast: jinja2.nodes.Template, names: Iterable[str]) -> int | None:
    """The line of the first load of any of ``names`` in ``ast`` (None when not found)."""
    wanted = set(names)
    lines = [n.lineno for n in ast.find_all(jinja2.nodes.Name) if n.ctx == "load" and n.name in wanted]
    return min(lines, default=None)


def template_line(exc: BaseException, path: Path) -> int | None:
    """The line of template ``path`` where the rendering error ``exc`` happened (from the
    traceback Jinja2 rewrites to point into templates), or None."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return lines[-1] if lines else None


class TemplateFiles:
    """The six template files of a user folder laid over the shipped folder.

    Args:
        user: the user's templates folder, holding any subset of :data:`TEMPLATE_NAMES`
            (None: the shipped templates only).
        shipped: the shipped folder (default :func:`cyclealign.resources.default_templates_dir`).

    Raises:
        TemplateError: ``user`` is not a folder, or holds a ``*.jinja`` file whose name is not
            one of :data:`TEMPLATE_NAMES` (the message lists the known names).
    """

    def __init__(self, user: str | Path | None = None, shipped: str | Path | None = None) -> None:
        self.shipped = Path(shipped) if shipped is not None else default_templates_dir()
        self.user = Path(user) if user is not None else None
        if self.user is not None:
            if self.user.is_file():
                raise TemplateError(f"{self.user}: a file, not a templates folder (pass the folder that holds your *.jinja files)")
            if not self.user.is_dir():
                raise TemplateError(f"{self.user}: templates folder not found")
            unknown = sorted(p.name for p in self.user.glob("*.jinja") if p.name not in TEMPLATE_NAMES)
            if unknown:
                raise TemplateError(
                    f"{self.user}: unknown template file(s) {', '.join(unknown)} "
                    f"(template files are named: {', '.join(TEMPLATE_NAMES)})"
                )
            if self.user.resolve() == self.shipped.resolve():
                self.user = None  # the shipped folder itself: nothing is overridden
        folders = [str(f) for f in (self.user, self.shipped) if f is not None]
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(folders),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._sources: dict[str, str] = {}

    def origin(self, name: str) -> str:
        """``"user"`` when the user folder overrides template file ``name``, else ``"shipped"``."""
        return "user" if self.user is not None and (self.user / name).is_file() else "shipped"

    def path(self, name: str) -> Path:
        """The file that wins for template file ``name`` (the user's, else the shipped one)."""
        folder = self.user if self.origin(name) == "user" else self.shipped
        assert folder is not None
        return folder / name

    def source(self, name: str) -> str:
        """The text of the winning file of ``name`` (read once, then kept).

        Raises:
            TemplateError: the file cannot be read (a broken install: the shipped file is missing).
        """
        if name not in self._sources:
            path = self.path(name)
            try:
                self._sources[name] = path.read_text(encoding="utf-8")
            except OSError as e:
                raise TemplateError(f"{path}: cannot read template: {e.strerror or e}") from None
        return self._sources[name]

    def load(
        self, name: str, provided: frozenset[str], required: frozenset[str] = frozenset()
    ) -> jinja2.Template:
        """The compiled template ``name``, checked.

        Args:
            name: a file name of :data:`TEMPLATE_NAMES`.
            provided: the variables the caller renders it with.
            required: variables it must use.

        Raises:
            TemplateError: ``"{path}:{line}: template syntax error: ..."``, ``"{path}:{line}:
                unknown template variables ..."`` (line of the first use), or ``"{path}: template
                does not use the required variables ..."``.
        """
        path, source = self.path(name), self.source(name)
        try:
            ast = self.env.parse(source, name=name, filename=str(path))
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"{path}:{e.lineno}: template syntax error: {e.message}") from None
        used = jinja2.meta.find_undeclared_variables(ast) - set(self.env.globals)
        unknown = sorted(used - provided)
        if unknown:
            line = _first_use(ast, unknown)
            where = f"{path}:{line}" if line is not None else f"{path}"
            allowed = ", ".join(sorted(provided)) or "none"
            raise TemplateError(f"{where}: unknown template variables {', '.join(unknown)} (this template may use: {allowed})")
        unused = sorted(required - used)
        if unused:
            raise TemplateError(f"{path}: template does not use the required variables {', '.join(unused)}")
        code = self.env.compile(ast, name=name, filename=str(path))
        return self.env.template_class.from_code(self.env, code, self.env.make_globals(None))

    def file_hashes(self, names: Iterable[str]) -> dict[str, str]:
        """``{file name: sha256 hex of its text}`` of the winning files of ``names``, sorted by name."""
        return {n: hashlib.sha256(self.source(n).encode("utf-8")).hexdigest() for n in sorted(names)}

    def listing(self) -> list[tuple[str, str, Path]]:
        """``(file name, "user" | "shipped", winning path)`` of every template, in :data:`TEMPLATE_NAMES` order."""
        return [(n, self.origin(n), self.path(n)) for n in TEMPLATE_NAMES]


def changed_templates(previous: Mapping[str, str] | None, current: Mapping[str, str] | None) -> list[str]:
    """The template files whose hash differs between two rounds' records (added or removed ones
    too); empty when either record is missing (a round from before hashes were recorded).

    >>> changed_templates({"a.jinja": "1", "b.jinja": "2"}, {"a.jinja": "1", "b.jinja": "3"})
    ['b.jinja']
    >>> changed_templates(None, {"a.jinja": "1"})
    []
    """
    if not previous or not current:
        return []
    return sorted(n for n in set(previous) | set(current) if previous.get(n) != current.get(n))


def warn_changed_templates(
    previous: Mapping[str, str] | None, current: Mapping[str, str] | None, round_index: int
) -> list[str]:
    """Log a warning naming the template files that changed since the previous round's record
    (see :func:`changed_templates`); returns their names."""
    changed = changed_templates(previous, current)
    if changed:
        log.warning(
            "round %d: ranker templates changed since round %d: %s (rankings of the two rounds were asked differently)",
            round_index,
            round_index - 1,
            ", ".join(changed),
        )
    return changed
