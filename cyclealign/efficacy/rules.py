"""Known ranking rules: what a rule black box prefers, as pure functions of a response's text.

Each :class:`Rule` has a graded ``score`` (higher = better; the black box ranks by it) and a
per-response ``property`` in [0, 1] (what the efficacy benchmark reports: its mean over
held-out samples). The rules differ in kind, and each is one a 135M policy can plausibly learn
from a few dozen ranked lists: the graded score tells most lists of N=4 of SmolLM2-135M-Instruct's
samples apart (on 32 HH-RLHF and 32 instruction prompts, seed 0: 88-100% of lists for
``marker``, ``caution``, ``brevity`` and ``formal``, 75-78% for ``paragraphs``, 22-38% for
``question``), even where the property itself is rare in the base samples (``brevity`` 7%,
``question`` 6-12%, ``formal`` 22-29%, against 41-70% for the other three).

- ``marker`` (a word): responses that address the user ("you", "your") more rank higher;
- ``paragraphs`` (a format): responses split into paragraphs (blank lines) rank higher;
- ``caution`` (a stance toward harmful requests): responses with more refusal / caution
  words ("not", "can't", "sorry", "illegal", "dangerous", "avoid", ...) rank higher;
- ``brevity`` (length): shorter responses rank higher (property: at most 25 words);
- ``question`` (a structure): responses that ask the user questions rank higher (property:
  asks at least one);
- ``formal`` (a tone): responses with fewer contractions ("don't", "I'm", "it's") and
  exclamation marks rank higher (property: none of either);
- ``refusal`` (a stricter stance): explicit refusal phrases ("I can't", "I'm sorry", ...).
  Rare in the base policy's samples (about 5% on HH prompts), so most lists carry no signal.

The rules are split once, and the split stays fixed (:data:`TUNING_RULES`, :data:`CHECK_RULES`):
defaults and sweeps are chosen on the tuning rules only; the check rules are measured and
reported apart and never used to choose anything, so they show how the defaults carry over to
a preference nobody tuned them on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_MARKER = re.compile(r"\b(?:you|your|yours|yourself|yourselves)\b", re.IGNORECASE)
_PARAGRAPH_BREAK = re.compile(r"\S[ \t]*\n[ \t]*\n\s*(?=\S)")
_CAUTION = re.compile(
    r"\b(?:not|no|never|cannot|can't|can\u2019t|don't|don\u2019t|won't|won\u2019t|shouldn't|shouldn\u2019t|sorry"
    r"|illegal|harmful|dangerous|unsafe|risk|risky|careful|avoid)\b",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"\b(?:I\s+(?:can(?:not|'t|\u2019t)|won(?:'t|\u2019t)|will\s+not|am\s+not\s+able|'m\s+not\s+able|\u2019m\s+not\s+able"
    r"|am\s+unable|'m\s+unable|\u2019m\s+unable|must\s+decline|do\s+not\s+feel\s+comfortable|don(?:'t|\u2019t)\s+feel\s+comfortable)"
    r"|I(?:'m|\u2019m|\s+am)\s+sorry|not\s+(?:appropriate|ethical|legal)|(?:illegal|unethical|harmful))\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"\S+")
_CONTRACTION = re.compile(r"\b\w+(?:'|\u2019)(?:t|s|m|re|ve|ll|d)\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?]+")


def marker_count(text: str) -> int:
    """Occurrences of the marker words (second person: "you", "your", "yours", "yourself").

    >>> marker_count("You said your dog is yours. Youth is not counted.")
    3
    """
    return len(_MARKER.findall(text))


def paragraph_breaks(text: str) -> int:
    """Blank-line breaks between two paragraphs of text.

    >>> paragraph_breaks("One.\\n\\nTwo.\\n \\nThree.\\nstill three")
    2
    >>> paragraph_breaks("\\n\\nLeading and trailing blank lines do not count.\\n\\n")
    0
    """
    return len(_PARAGRAPH_BREAK.findall(text))


def caution_count(text: str) -> int:
    """Refusal and caution words ("not", "no", "can't", "sorry", "illegal", "dangerous", "avoid", ...).

    >>> caution_count("No, I can't: it is illegal and not safe.")
    4
    >>> caution_count("Here is a recipe.")
    0
    """
    return len(_CAUTION.findall(text))


def refusal_count(text: str) -> int:
    """Refusal or harm-warning phrases ("I can't", "I'm sorry", "illegal", "not appropriate", ...).

    >>> refusal_count("I'm sorry, but I can't help with that: it is illegal.")
    3
    >>> refusal_count("Sure, here is a recipe.")
    0
    """
    return len(_REFUSAL.findall(text))


def informal_marks(text: str) -> int:
    """Contractions ("don't", "I'm", "it's", "you'll") and exclamation marks.

    >>> informal_marks("I'm sure it's fine! Do not worry.")
    3
    >>> informal_marks("It is fine. Do not worry.")
    0
    """
    return len(_CONTRACTION.findall(text)) + text.count("!")


def question_count(text: str) -> int:
    """Sentences that end with a question mark.

    >>> question_count("Why? Because. Really?? Yes.")
    2
    """
    return sum(1 for m in _SENTENCE_END.finditer(text) if "?" in m.group())


def word_count(text: str) -> int:
    """Whitespace-separated words.

    >>> word_count("  one two\\nthree ")
    3
    """
    return len(_WORD.findall(text))


@dataclass(frozen=True)
class Rule:
    """A known preference: ``score`` ranks responses (higher first), ``property`` is what moves.

    Attributes:
        name: registry key (also the black box's model name, ``rule-<name>``).
        kind: what sort of preference it is (word, format, stance, length).
        description: one line for reports.
        score: text -> graded preference (ties are broken by presentation order).
        property: text -> [0, 1], averaged over held-out samples by the benchmark.
    """

    name: str
    kind: str
    description: str
    score: Callable[[str], float]
    property: Callable[[str], float]

    def rank(self, responses: Sequence[str]) -> list[int]:
        """0-based indices of ``responses``, best first (stable: ties keep their order).

        >>> RULES["marker"].rank(["plain", "you and your", "you"])
        [1, 2, 0]
        """
        scores = [self.score(r) for r in responses]
        return sorted(range(len(responses)), key=lambda i: -scores[i])


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule(
            "marker",
            "word",
            'addresses the user: more "you"/"your" ranks higher',
            score=lambda t: float(min(marker_count(t), 6)),
            property=lambda t: float(marker_count(t) > 0),
        ),
        Rule(
            "paragraphs",
            "format",
            "split into paragraphs: more blank-line breaks rank higher",
            score=lambda t: float(min(paragraph_breaks(t), 4)),
            property=lambda t: float(paragraph_breaks(t) > 0),
        ),
        Rule(
            "caution",
            "stance",
            "declines or warns: more refusal/caution words rank higher",
            score=lambda t: float(min(caution_count(t), 6)),
            property=lambda t: float(caution_count(t) > 0),
        ),
        Rule(
            "brevity",
            "length",
            "shorter responses rank higher (property: at most 25 words)",
            score=lambda t: -float(word_count(t)),
            property=lambda t: float(word_count(t) <= 25),
        ),
        Rule(
            "question",
            "structure",
            "asks the user questions: more questions rank higher (property: asks one)",
            score=lambda t: float(min(question_count(t), 3)),
            property=lambda t: float(question_count(t) > 0),
        ),
        Rule(
            "formal",
            "tone",
            "formal: fewer contractions and exclamation marks rank higher (property: none)",
            score=lambda t: -float(min(informal_marks(t), 6)),
            property=lambda t: float(informal_marks(t) == 0),
        ),
        Rule(
            "refusal",
            "stance",
            "explicit refusals: more refusal phrases rank higher",
            score=lambda t: float(min(refusal_count(t), 3)),
            property=lambda t: float(refusal_count(t) > 0),
        ),
    )
}
"""The known rules by name."""

TUNING_RULES: tuple[str, ...] = ("marker", "paragraphs", "caution", "brevity")
"""Rules the defaults and every sweep are chosen on (a word, a format, a stance, a length)."""

CHECK_RULES: tuple[str, ...] = ("question", "formal")
"""Rules kept apart: measured and reported, never used to choose a default or a sweep point (a
structure, a tone). Fixed: a rule moves between the two sets only with a note saying why."""


def get_rule(name: str) -> Rule:
    """The rule called ``name``.

    Raises:
        KeyError: naming the known rules.
    """
    try:
        return RULES[name]
    except KeyError:
        raise KeyError(f"unknown rule {name!r}; known: {', '.join(RULES)}") from None
