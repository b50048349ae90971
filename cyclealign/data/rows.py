"""One row of a prompt source (a JSONL line, a dataset row) as a :class:`~cyclealign.records.PromptRecord`:
the three row shapes (``prompt``, ``messages``, HH-RLHF ``chosen``) and their validation.

Pure functions over parsed JSON (stdlib only); :func:`cyclealign.data.sources.load_prompts` reads the
files and names the line of an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cyclealign.records import Message, PromptRecord

__all__ = ["ROLES", "SHAPES", "hh_prompt", "parse_hh_dialogue", "parse_messages", "parse_row"]

ROLES = ("system", "user", "assistant")
SHAPES = '"prompt" (a string), "messages" (a list of chat messages) or "chosen" (an HH-RLHF dialogue)'

# A turn marker in an HH-RLHF dialogue: "Human:" or "Assistant:" at the start of the text or
# after a blank line. A marker inside a turn's text (the raw data has some) stays text.
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_hh_dialogue(text: str) -> list[Message]:
    """Split an HH-RLHF dialogue into chat messages (Human -> user, Assistant -> assistant).

    Turns start with ``Human:`` or ``Assistant:`` at the start of the text or after a blank
    line; contents are stripped. Consecutive turns of the same speaker (a few raw HH
    dialogues have two ``Assistant:`` turns in a row) are merged, joined by a blank line,
    so roles alternate. An empty last turn is kept (an unfinished response).

    Raises:
        ValueError: text before the first turn, no turn at all, or an empty turn that is not
            the last.

    >>> parse_hh_dialogue("\\n\\nHuman: Hi\\n\\nAssistant: Hello!\\n\\nHuman: Bye\\n\\nAssistant: See you")  # doctest: +NORMALIZE_WHITESPACE
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'},
     {'role': 'user', 'content': 'Bye'}, {'role': 'assistant', 'content': 'See you'}]
    >>> parse_hh_dialogue("Human: a\\n\\nAssistant: b\\n\\nAssistant: c")
    [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b\\n\\nc'}]
    >>> parse_hh_dialogue("Hello there")
    Traceback (most recent call last):
    ...
    ValueError: HH dialogue has no "Human:" or "Assistant:" turn
    """
    parts = _HH_TURN.split(text.lstrip(" \t"))
    # parts = [preamble, speaker, content, speaker, content, ...]
    if len(parts) == 1:
        raise ValueError('HH dialogue has no "Human:" or "Assistant:" turn')
    if parts[0].strip():
        raise ValueError(f'HH dialogue has text before its first turn: {parts[0].strip()[:40]!r}')
    messages: list[Message] = []
    turns = list(zip(parts[1::2], parts[2::2]))
    for i, (speaker, content) in enumerate(turns):
        role, content = _HH_ROLE[speaker], content.strip()
        if not content and i < len(turns) - 1:
            raise ValueError(f'HH dialogue has an empty "{speaker}:" turn (turn {i + 1})')
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = "\n\n".join(c for c in (messages[-1]["content"], content) if c)
        else:
            messages.append({"role": role, "content": content})
    return messages


def hh_prompt(text: str) -> list[Message]:
    """The prompt of an HH-RLHF dialogue: its messages before the last ``Assistant:`` turn.

    Earlier assistant turns are kept, so a multi-turn dialogue stays multi-turn; the result
    always ends with a user message.

    Raises:
        ValueError: the dialogue is malformed (see :func:`parse_hh_dialogue`), has no
            ``Assistant:`` turn, or no ``Human:`` turn before its last ``Assistant:`` turn.

    >>> hh_prompt("\\n\\nHuman: Hi\\n\\nAssistant: Hello!\\n\\nHuman: Bye\\n\\nAssistant: See you")
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}, {'role': 'user', 'content': 'Bye'}]
    >>> hh_prompt("\\n\\nHuman: Hi")
    Traceback (most recent call last):
    ...
    ValueError: HH dialogue has no "Assistant:" turn
    """
    messages = parse_hh_dialogue(text)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError('HH dialogue has no "Assistant:" turn')
    if last == 0:
        raise ValueError('HH dialogue has no "Human:" turn before its last "Assistant:" turn')
    return messages[:last]


def parse_messages(value: Any) -> list[Message]:
    """Validate a list of chat messages; returns copies holding only ``role`` and ``content``.

    Raises:
        ValueError: not a non-empty list of objects, a role outside system/user/assistant,
            a content that is not a non-empty string, or a last message not from the user.

    >>> parse_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    >>> parse_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    Traceback (most recent call last):
    ...
    ValueError: the last message must be from the user, got role 'assistant'
    """
    if not isinstance(value, list) or not value:
        raise ValueError(f'"messages" must be a non-empty list, got {type(value).__name__}')
    messages: list[Message] = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping):
            raise ValueError(f"message {i} must be an object, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f'message {i} "content" must be a string, got {type(content).__name__}')
        if not content.strip():
            raise ValueError(f"message {i} has empty content")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise ValueError(f"the last message must be from the user, got role {messages[-1]['role']!r}")
    return messages


def parse_row(row: Any, default_id: str) -> PromptRecord:
    """Turn one JSONL object or dataset row into a :class:`PromptRecord`.

    The shape is detected from the first field present (``messages``, then ``prompt``, then
    ``chosen``); a field whose value is ``None`` counts as absent (datasets fill the columns
    a row lacks with ``None``).

    Raises:
        ValueError: not an object, no recognised field, wrong types, or invalid content.

    >>> parse_row({"prompt": "Hi", "id": 7}, "f:1")
    PromptRecord(id='7', messages=[{'role': 'user', 'content': 'Hi'}])
    >>> parse_row({"text": "Hi"}, "f:1")
    Traceback (most recent call last):
    ...
    ValueError: no recognised field (found: text); expected "prompt" (a string), "messages" (a list of chat messages) or "chosen" (an HH-RLHF dialogue)
    """
    if not isinstance(row, Mapping):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    row = {k: v for k, v in row.items() if v is not None}
    if "messages" in row:
        messages = parse_messages(row["messages"])
    elif "prompt" in row:
        if not isinstance(row["prompt"], str):
            raise ValueError(f'"prompt" must be a string, got {type(row["prompt"]).__name__}')
        if not row["prompt"].strip():
            raise ValueError('"prompt" is empty')
        messages = [{"role": "user", "content": row["prompt"]}]
    elif "chosen" in row:
        if not isinstance(row["chosen"], str):
            raise ValueError(f'"chosen" must be a string, got {type(row["chosen"]).__name__}')
        messages = hh_prompt(row["chosen"])
    else:
        raise ValueError(f"no recognised field (found: {', '.join(row) or 'none'}); expected {SHAPES}")
    id_ = row.get("id", default_id)
    if isinstance(id_, bool) or not isinstance(id_, (str, int)):
        raise ValueError(f'"id" must be a string or an integer, got {type(id_).__name__}')
    return PromptRecord(id=str(id_), messages=messages)
