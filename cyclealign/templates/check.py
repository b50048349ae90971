"""``cyclealign templates check``: a templates folder, loaded as an overlay, checked file by file.

Besides the load-time checks of :class:`~cyclealign.templates.files.TemplateFiles`
(syntax, unknown and missing variables, with file and line), each template is rendered with a
sample of :data:`SAMPLE_N` responses and the rendering must still ask for what the reply
parsers accept. The criterion, per file:

==========================  ==================================================================
``ranker_system``           with text answers it names the first and last labels ``[1]`` and
                            ``[N]``; with structured output it names the JSON key ``ranking``
``ranker_user``             it shows the query and every response
``ranker_answer``           the answer rendered for each of :data:`SAMPLE_RANKINGS` parses back
                            (:func:`~cyclealign.ranker.parse.parse_ranking`) to that ranking:
                            demonstrations teach the model the format the parser reads
``ranker_correction``       as ``ranker_system`` (it re-asks for the format)
``judge_system`` + ``judge_user``  together they name the verdict labels ``[1]`` and ``[2]``
                            (:func:`~cyclealign.templates.judge.parse_verdict`); ``judge_user``
                            shows the query and both responses
==========================  ==================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from cyclealign.errors import TemplateError
from cyclealign.ranker.parse import RankingParseError, parse_ranking
from cyclealign.templates.files import JUDGE_REQUIRED, JUDGE_VARIABLES, TEMPLATE_NAMES, TemplateFiles
from cyclealign.templates.ranker import REQUIRED_VARIABLES, TEMPLATE_VARIABLES, render_checked

__all__ = ["SAMPLE_N", "SAMPLE_RANKINGS", "FileCheck", "check_templates"]

SAMPLE_N = 4
"""Responses in the sample a template is rendered with."""
SAMPLE_QUERY = "User: What is the capital of France?"
SAMPLE_RESPONSES = ["Paris.", "Lyon.", "The capital of France is Paris.", "I don't know."]
SAMPLE_RANKINGS: tuple[list[int], ...] = ([2, 0, 3, 1], [0, 1, 2, 3], [3, 2, 1, 0], [1, 0], [2, 0, 1])
"""0-based rankings the answer template must render parseably (N = 4, 2 and 3)."""


@dataclass
class FileCheck:
    """The outcome of one template file.

    Attributes:
        name: the file name (``ranker_system.jinja`` ...).
        origin: ``"user"`` or ``"shipped"``: which file won.
        path: the winning file.
        problems: ``"{path}[:{line}]: {what}"`` per problem; empty when the file is fine.
    """

    name: str
    origin: str
    path: Path
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the file has no problem."""
        return not self.problems


def _labels_named(text: str, n: int) -> bool:
    return "[1]" in text and f"[{n}]" in text


def _check_format(check: FileCheck, render: Callable[[bool], str], what: str) -> None:
    """``render(json_output)`` must name the labels (text answers) and ``ranking`` (structured output)."""
    text, structured = render(False), render(True)
    if not _labels_named(text, SAMPLE_N):
        check.problems.append(
            f"{check.path}: {what} (n={SAMPLE_N}, text answers) does not name the labels [1] and [{SAMPLE_N}]: "
            "the reply parser reads answers like [2] > [1] > [4] > [3]"
        )
    if "ranking" not in structured:
        check.problems.append(
            f'{check.path}: {what} (n={SAMPLE_N}, structured output) does not name the JSON key "ranking" '
            'of the answers the reply parser reads ({"ranking": [2, 1, 4, 3]})'
        )


def _behaviour(files: TemplateFiles, name: str, template: jinja2.Template, check: FileCheck) -> None:
    """The rendering checks of one ranker file (see the module docstring); appends to ``check``."""

    def render(**variables: object) -> str:
        return render_checked(files, template, name, **variables)

    if name == "ranker_system.jinja":
        _check_format(check, lambda js: render(n=SAMPLE_N, json_output=js), "the system message")
    elif name == "ranker_correction.jinja":
        _check_format(
            check, lambda js: render(error="missing label [3]", n=SAMPLE_N, json_output=js), "the correction message"
        )
    elif name == "ranker_user.jinja":
        text = render(query=SAMPLE_QUERY, responses=SAMPLE_RESPONSES, n=SAMPLE_N)
        missing = [f"response {i + 1}" for i, r in enumerate(SAMPLE_RESPONSES) if r not in text]
        if SAMPLE_QUERY not in text:
            missing.insert(0, "the query")
        if missing:
            check.problems.append(f"{check.path}: the rendered query block does not show {', '.join(missing)}")
    elif name == "ranker_answer.jinja":
        for ranking in SAMPLE_RANKINGS:
            labels = [i + 1 for i in ranking]
            text = render(labels=labels)
            shown = " > ".join(f"[{x}]" for x in labels)
            try:
                parsed = parse_ranking(text, len(ranking))
            except RankingParseError as e:
                check.problems.append(
                    f"{check.path}: the answer rendered for the ranking {shown} is {text!r}, which the reply "
                    f"parser rejects ({e.reason})"
                )
                return
            if parsed != ranking:
                got = " > ".join(f"[{x + 1}]" for x in parsed)
                check.problems.append(
                    f"{check.path}: the answer rendered for the ranking {shown} is {text!r}, which the reply parser reads as {got}"
                )
                return


def _judge_behaviour(files: TemplateFiles, loaded: dict[str, jinja2.Template], checks: dict[str, FileCheck]) -> None:
    """The rendering checks of the two judge files (see the module docstring); appends to ``checks``."""
    first, second = SAMPLE_RESPONSES[0], SAMPLE_RESPONSES[1]
    texts = {}
    for name, variables in (
        ("judge_system.jinja", {}),
        ("judge_user.jinja", {"query": SAMPLE_QUERY, "first": first, "second": second}),
    ):
        try:
            texts[name] = render_checked(files, loaded[name], name, **variables)
        except TemplateError as e:
            checks[name].problems.append(str(e))
            return
    user = checks["judge_user.jinja"]
    missing = [what for what, text in (("the query", SAMPLE_QUERY), ("first", first), ("second", second)) if text not in texts[user.name]]
    if missing:
        user.problems.append(f"{user.path}: the rendered judge query does not show {', '.join(missing)}")
    both = "".join(texts.values())
    if "[1]" not in both or "[2]" not in both:
        system = checks["judge_system.jinja"]
        blamed = system if system.origin == "user" else user
        blamed.problems.append(
            f"{blamed.path}: the judge messages do not name the verdict labels [1] and [2] "
            "(the verdict parser reads [1], [2] or tie)"
        )


def check_templates(folder: str | Path | None) -> list[FileCheck]:
    """Check every template of ``folder`` laid over the shipped ones (see the module docstring).

    Returns:
        One :class:`FileCheck` per file of :data:`~cyclealign.templates.files.TEMPLATE_NAMES`,
        in that order, each with its problems (file and line where known).

    Raises:
        TemplateError: ``folder`` is not a folder, or holds an unknown ``*.jinja`` file.
    """
    files = TemplateFiles(folder)
    variables = {**TEMPLATE_VARIABLES, **JUDGE_VARIABLES}
    required = {**REQUIRED_VARIABLES, **JUDGE_REQUIRED}
    checks = {name: FileCheck(name, files.origin(name), files.path(name)) for name in TEMPLATE_NAMES}
    loaded: dict[str, jinja2.Template] = {}
    for name in TEMPLATE_NAMES:
        try:
            loaded[name] = files.load(name, variables[name], required.get(name, frozenset()))
            if name in TEMPLATE_VARIABLES:
                _behaviour(files, name, loaded[name], checks[name])
        except TemplateError as e:
            checks[name].problems.append(str(e))
    if all(name in loaded for name in JUDGE_VARIABLES):
        _judge_behaviour(files, loaded, checks)
    return list(checks.values())
