"""Pairwise judging for evaluation: is response A better than B, by the black-box model?

The judge sees the conversation and two responses labelled ``[1]`` and ``[2]``
(``prompts/judge_system.jinja``, ``prompts/judge_user.jinja``) and answers ``[1]``, ``[2]`` or
``tie``. Each pair is judged in both presentation orders (:func:`pair_outcome`): a win counts
only when the judge prefers the same response in both orders, which cancels position bias
(Zheng et al. 2023, "Judging LLM-as-a-judge", section 3.4, "swap position").
"""

from __future__ import annotations

import re
from pathlib import Path

from cyclealign.records import Message
from cyclealign.templates.files import JUDGE_REQUIRED, JUDGE_VARIABLES, TemplateFiles
from cyclealign.templates.ranker import neutralize_delimiters, render_checked

__all__ = ["JudgeTemplates", "VerdictParseError", "pair_outcome", "parse_verdict"]

_VERDICT = re.compile(r"\[\s*([12])\s*\]|\btie\b", re.IGNORECASE)


class VerdictParseError(ValueError):
    """The judge's reply holds no single verdict."""


def parse_verdict(reply: str) -> int | None:
    """The judge's verdict: ``0`` (the response shown first is better), ``1`` (the second), or
    ``None`` (a tie).

    Raises:
        VerdictParseError: no verdict, or conflicting ones.

    >>> parse_verdict("[2]"), parse_verdict("Response [1] is better."), parse_verdict("Tie.")
    (1, 0, None)
    >>> parse_verdict("[1] or [2]")
    Traceback (most recent call last):
    ...
    cyclealign.templates.judge.VerdictParseError: conflicting verdicts: [1], [2]
    """
    found = []
    for m in _VERDICT.finditer(reply):
        v = "tie" if m.group(1) is None else f"[{m.group(1)}]"
        if v not in found:
            found.append(v)
    if not found:
        raise VerdictParseError("no verdict ([1], [2] or tie) found")
    if len(found) > 1:
        raise VerdictParseError(f"conflicting verdicts: {', '.join(found)}")
    return None if found[0] == "tie" else int(found[0][1]) - 1


def pair_outcome(verdict_ab: int | None, verdict_ba: int | None) -> str:
    """``"win"``, ``"loss"`` or ``"tie"`` for A, from the verdicts with A shown first (``ab``) and
    with B shown first (``ba``): a win or loss needs both orders to agree.

    >>> pair_outcome(0, 1), pair_outcome(1, 0), pair_outcome(0, 0), pair_outcome(None, 1)
    ('win', 'loss', 'tie', 'tie')
    """
    a_first = {0: "A", 1: "B", None: "tie"}[verdict_ab]
    b_first = {0: "B", 1: "A", None: "tie"}[verdict_ba]
    if a_first == b_first == "A":
        return "win"
    if a_first == b_first == "B":
        return "loss"
    return "tie"


class JudgeTemplates:
    """The two judge templates, from a user folder laid over the shipped ones (``prompts/``).

    Args:
        folder: the user's templates folder, holding any of :attr:`FILES` (the others are the
            shipped ones); None: the shipped templates.

    Raises:
        TemplateError: the folder is missing or holds an unknown ``*.jinja`` file, a file does
            not parse (file and line named), uses a variable other than those of
            :data:`~cyclealign.templates.files.JUDGE_VARIABLES` (``judge_system``: none;
            ``judge_user``: ``query``, ``first``, ``second``), or ``judge_user`` leaves one of
            its three variables out.
    """

    FILES = ("judge_system.jinja", "judge_user.jinja")

    def __init__(self, folder: str | Path | None = None) -> None:
        self.files = TemplateFiles(folder)
        self.folder = self.files.user or self.files.shipped
        system, self._user = (
            self.files.load(name, JUDGE_VARIABLES[name], JUDGE_REQUIRED.get(name, frozenset())) for name in self.FILES
        )
        self._system = render_checked(self.files, system, "judge_system.jinja")  # no variables: rendered once

    def messages(self, query: str, first: str, second: str) -> list[Message]:
        """``[system, user]`` asking which of ``first`` ([1]) and ``second`` ([2]) is better.

        Raises:
            TemplateError: ``judge_user.jinja`` fails to render (file and line named).
        """
        user = render_checked(
            self.files,
            self._user,
            "judge_user.jinja",
            query=neutralize_delimiters(query),
            first=neutralize_delimiters(first),
            second=neutralize_delimiters(second),
        )
        return [{"role": "system", "content": self._system}, {"role": "user", "content": user}]

    def file_hashes(self) -> dict[str, str]:
        """``{file name: sha256 hex of its text}`` of the two judge templates in use."""
        return self.files.file_hashes(self.FILES)
