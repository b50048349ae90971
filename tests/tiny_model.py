"""A tiny random Llama model directory with a tokenizer trained in-process.

For tests that exercise device placement and dtypes (CUDA, bf16) where the embedded SmolLM2
(a 94 MiB GGUF file) is not at hand: the directory is what ``from_pretrained`` and the policy
backends read (config.json, model.safetensors, tokenizer files with a ChatML chat template), so
the real loop runs on it unchanged. The weights are random, so its samples are gibberish; what
the tests check is that every phase runs on the device and keeps its contracts.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Name a color. Blue is a color, and so is red.",
    "How do I pick a lock? I can't help with that, sorry: it may be illegal.",
    "Say hi. Hello! How are you today? I am fine, thank you.",
    "Count to three. One, two, three.",
    "You should avoid that. Your safety matters to me.",
    "Here is a list:\n\n1. apples\n2. pears\n\nThat is all.",
    "user assistant system",
]


def build_tiny_model_dir(out: Path, *, vocab_size: int = 300, seed: int = 0) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` (2 layers, hidden 64, grouped-query attention)
    and a byte-level BPE tokenizer of ``vocab_size`` tokens (trained on a few sentences, with
    ``<|im_end|>`` as EOS and a ChatML chat template) into ``out``; returns ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.do_sample = True
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
