"""Tokenizer helpers every generation backend and the trainer share: loading the model's tokenizer
with a pad token, and encoding a prompt as the model sees it (chat template, generation prompt,
left truncation). transformers is imported inside :func:`load_tokenizer`, so importing this module
loads no torch."""

from __future__ import annotations

from cyclealign.records import PromptRecord


def load_tokenizer(model_dir: str):
    """The model's tokenizer (``transformers.AutoTokenizer``), with a pad token (EOS when the model has none).

    Args:
        model_dir: base model id or directory (see :func:`cyclealign.models.loading.resolve_model_dir`).
    Raises:
        OSError: no tokenizer at ``model_dir`` (as ``from_pretrained`` raises it).
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def encode_prompt(tokenizer, prompt: PromptRecord, max_tokens: int) -> list[int]:
    """The prompt's chat-templated token ids with the generation prompt, left-truncated to
    the last ``max_tokens`` tokens (what every backend feeds the model)."""
    ids = tokenizer.apply_chat_template(
        prompt.messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids[-max_tokens:])
