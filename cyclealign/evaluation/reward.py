"""Reward-model scores of responses, the conversation formatted as the reward model was trained on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from cyclealign.config import Config
from cyclealign.errors import ConfigError
from cyclealign.records import Generation, Message, PromptRecord

__all__ = ["RewardScorer", "RewardStyle", "judged_rewards", "reward_input", "reward_input_style", "reward_scores"]


RewardStyle = Literal["oasst", "chat_template", "text_pair", "plain"]
"""How a reward model reads a conversation (see :func:`reward_input`)."""

_PLAIN_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}
_OASST_ROLES = {"user": "<|prompter|>", "assistant": "<|assistant|>", "system": "<|system|>"}


def reward_input(
    messages: Sequence[Message],
    response: str,
    style: RewardStyle,
    *,
    eos_token: str = "<|endoftext|>",
    chat_template: Callable[[list[Message]], str] | None = None,
) -> str | tuple[str, str]:
    r"""The reward model's input for ``response`` to the conversation ``messages``.

    Styles (:func:`reward_input_style` picks one from the tokenizer):

    * ``"oasst"``: OpenAssistant's format (e.g. ``OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5``):
      each turn ``<|prompter|>`` / ``<|assistant|>`` / ``<|system|>`` + text + ``eos_token``.
    * ``"text_pair"``: a cross-encoder's ``(question, answer)`` pair (OpenAssistant's DeBERTa reward
      models): the question is the user's message, or the plain ``Human:``/``Assistant:``
      transcript of a multi-turn conversation.
    * ``"chat_template"``: ``chat_template(messages + [assistant response])`` (the tokenizer's own).
    * ``"plain"``: ``Human: ...\n\nAssistant: ...`` text.

    Returns:
        One text, or ``(question, answer)`` for ``"text_pair"``.

    Raises:
        ValueError: an unknown style, or ``"chat_template"`` without ``chat_template``.

    >>> chat = [{"role": "user", "content": "Hi"}]
    >>> reward_input(chat, "Hello!", "oasst")
    '<|prompter|>Hi<|endoftext|><|assistant|>Hello!<|endoftext|>'
    >>> reward_input(chat, "Hello!", "text_pair")
    ('Hi', 'Hello!')
    >>> reward_input([*chat, {"role": "assistant", "content": "Yes?"}, {"role": "user", "content": "Bye"}], "Bye!", "plain")
    'Human: Hi\n\nAssistant: Yes?\n\nHuman: Bye\n\nAssistant: Bye!'
    >>> reward_input(chat, "Hello!", "chat_template", chat_template=lambda ms: "|".join(m["content"] for m in ms))
    'Hi|Hello!'
    """
    full = [*messages, {"role": "assistant", "content": response}]
    if style == "oasst":
        return "".join(f"{_OASST_ROLES[m['role']]}{m['content']}{eos_token}" for m in full)
    if style == "text_pair":
        single = len(messages) == 1 and messages[0]["role"] == "user"
        question = messages[0]["content"] if single else "\n\n".join(f"{_PLAIN_ROLES[m['role']]}: {m['content']}" for m in messages)
        return question, response
    if style == "plain":
        return "\n\n".join(f"{_PLAIN_ROLES[m['role']]}: {m['content']}" for m in full)
    if style == "chat_template":
        if chat_template is None:
            raise ValueError("reward_input: style 'chat_template' needs the chat_template function")
        return chat_template(full)
    raise ValueError(f"reward_input: unknown style {style!r} (expected oasst, text_pair, chat_template or plain)")


def reward_input_style(tokenizer: Any) -> RewardStyle:
    """The input format a reward model was trained on, read from its tokenizer (not its name).

    ``"oasst"`` when the vocabulary has OpenAssistant's ``<|prompter|>`` and ``<|assistant|>``
    tokens; else ``"chat_template"`` when the tokenizer has a chat template; else ``"text_pair"``
    for a cross-encoder (a tokenizer with both a CLS and a SEP token, e.g. DeBERTa); else ``"plain"``.
    """
    vocab = tokenizer.get_vocab()
    if "<|prompter|>" in vocab and "<|assistant|>" in vocab:
        return "oasst"
    if getattr(tokenizer, "chat_template", None):
        return "chat_template"
    if getattr(tokenizer, "cls_token", None) is not None and getattr(tokenizer, "sep_token", None) is not None:
        return "text_pair"
    return "plain"


class RewardScorer:
    """A sequence-classification reward model, loaded once and called on batches of pairs.

    The conversation and response are formatted as the model was trained on (:func:`reward_input`
    with :func:`reward_input_style`; ``style`` holds the detected one). Inputs longer than
    ``min(1024, tokenizer.model_max_length)`` tokens are cut from the left (the start of the
    conversation), a text pair longest-first.

    Raises:
        ConfigError: the model cannot be loaded (the id or path is named).
    """

    def __init__(self, model_id: str, cfg: Config) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from cyclealign.models.loading import LOAD_KWARGS, resolve_device

        try:
            tok = AutoTokenizer.from_pretrained(model_id)
            model = AutoModelForSequenceClassification.from_pretrained(model_id, **LOAD_KWARGS).eval()
        except (OSError, ValueError) as e:
            raise ConfigError(f"--eval-reward-model {model_id}: cannot load a sequence-classification model: {e}") from None
        self.device = resolve_device(cfg.model)
        model.to(self.device)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        self.style: RewardStyle = reward_input_style(tok)
        if self.style != "text_pair":
            tok.truncation_side = "left"  # keep the response's end, which a decoder reward model reads
        self.max_length = min(1024, int(tok.model_max_length))
        self.tokenizer, self.model = tok, model

    def inputs(self, pairs: list[tuple[PromptRecord, str]]) -> list[str | tuple[str, str]]:
        """The formatted input of each ``(prompt, response)`` pair."""
        tok = self.tokenizer

        def template(messages: list[Message]) -> str:
            return tok.apply_chat_template(messages, tokenize=False)

        eos = tok.eos_token or "<|endoftext|>"
        return [reward_input(p.messages, r, self.style, eos_token=eos, chat_template=template) for p, r in pairs]

    def __call__(self, pairs: list[tuple[PromptRecord, str]], batch_size: int = 8) -> list[float]:
        """Scores of ``(prompt, response)`` pairs (logit 0), ``batch_size`` pairs per forward pass."""
        import torch

        tok = self.tokenizer
        inputs = self.inputs(pairs)
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                chunk = inputs[start : start + batch_size]
                if self.style == "text_pair":
                    texts: Any = ([q for q, _ in chunk], [a for _, a in chunk])
                else:
                    texts = (chunk,)
                enc = tok(*texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
                logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
                scores.extend(float(x) for x in logits[:, 0].float().cpu())
        return scores


def reward_scores(model_id: str, pairs: list[tuple[PromptRecord, str]], cfg: Config, batch_size: int = 8) -> list[float]:
    """Scores of ``(prompt, response)`` pairs by a sequence-classification reward model (logit 0).

    The input is formatted as the model was trained on (see :class:`RewardScorer`). Loads the
    model on every call; to score several batches of pairs with one model, use :class:`RewardScorer`.

    Raises:
        ConfigError: the model cannot be loaded (the id or path is named).
    """
    return RewardScorer(model_id, cfg)(pairs, batch_size=batch_size)


def judged_rewards(scorer: RewardScorer, judged: list[Generation], by_id: dict[str, PromptRecord]) -> dict[str, float]:
    """A reward model's score of each prompt's judged response: ``{prompt id: score}``."""
    answered = [g for g in judged if g.responses]
    scores = scorer([(by_id[g.prompt_id], g.responses[0]) for g in answered])
    return {g.prompt_id: s for g, s in zip(answered, scores)}
