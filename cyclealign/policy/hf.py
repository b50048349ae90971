"""The transformers generation backend (CPU or a single GPU).

Sampling returns, for free, the log-likelihood the white-box ranking needs: generate()
is asked for the raw (unprocessed) logits of every step, and the log-softmax of those at
the sampled token is the *untempered* policy's token log-prob, with no second forward pass.
``tests/test_policy.py`` checks it against a separate forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from cyclealign.config import GenerationConfig, ModelConfig
from cyclealign.logprobs import token_logprobs
from cyclealign.models import resolve_device, resolve_dtype
from cyclealign.policy.base import Generation
from cyclealign.records import PromptRecord

log = logging.getLogger(__name__)


def load_tokenizer(model_dir: str):
    """The model's tokenizer, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def encode_prompt(tokenizer, prompt: PromptRecord, max_tokens: int) -> list[int]:
    """Chat-templated prompt ids with the generation prompt, left-truncated to ``max_tokens``."""
    ids = tokenizer.apply_chat_template(
        prompt.messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids[-max_tokens:])


class TransformersPolicy:
    """Samples N responses per prompt (or decodes one greedily) with ``model.generate`` (the white-box policy).

    Args:
        model_dir: base model id or directory (see :func:`cyclealign.models.resolve_model_dir`).
        model_cfg: device and dtype.
        gen_cfg: N, temperature, top_p, token limits, batch size.
    """

    def __init__(self, model_dir: str, model_cfg: ModelConfig, gen_cfg: GenerationConfig) -> None:
        self.model_dir = model_dir
        self.gen_cfg = gen_cfg
        self.device = resolve_device(model_cfg)
        self.dtype = resolve_dtype(model_cfg, self.device)
        self.tokenizer = load_tokenizer(model_dir)
        self.adapter: Path | None = None
        self.model = self._load(None)

    def _load(self, adapter: Path | None) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=self.dtype)
        if adapter is not None:
            from peft import PeftModel

            # Merged into a fresh copy of the base: generation then runs at base-model speed.
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        return model.to(self.device).eval()

    def load_adapter(self, path: Path | None) -> None:
        """Generate from now on with the PEFT LoRA adapter at ``path`` (``None`` = base policy)."""
        if path == self.adapter:
            return
        self.model = self._load(path)
        self.adapter = path

    @torch.no_grad()
    def _generate_batch(
        self, prompt_ids: list[list[int]], n: int, max_new_tokens: int, greedy: bool = False
    ) -> list[list[tuple[list[int], float, bool]]]:
        """One generate() call: ``n`` samples for each prompt (``greedy``: ``n`` must be 1, the
        argmax decoding), at most ``max_new_tokens`` new tokens each.

        Returns, per prompt, ``n`` tuples (response ids, mean token log-prob, finished).
        """
        cfg, tok = self.gen_cfg, self.tokenizer
        pad, eos = tok.pad_token_id, tok.eos_token_id
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for i, p in enumerate(prompt_ids):  # left padding
            input_ids[i, width - len(p) :] = torch.tensor(p)
            attention[i, width - len(p) :] = 1
        decoding = (
            {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            if greedy
            else {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0}
        )
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            **decoding,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            pad_token_id=pad,
            eos_token_id=eos,
            return_dict_in_generate=True,
            output_logits=True,
        )
        gen = out.sequences[:, width:]  # [B*n, T]
        logits = torch.stack(out.logits, dim=1)  # [B*n, T, V], raw: before temperature / top-p
        logp = token_logprobs(logits, gen)  # [B*n, T]
        is_eos = gen == eos
        # Keep tokens up to and including the first EOS.
        after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
        keep = ~after_eos  # [B*n, T]
        lengths = keep.sum(-1)
        mean = (logp * keep).sum(-1) / lengths.clamp(min=1)
        finished = is_eos.any(-1)
        results: list[list[tuple[list[int], float, bool]]] = []
        for b in range(len(prompt_ids)):
            row = []
            for s in range(b * n, (b + 1) * n):
                ids = gen[s, : int(lengths[s])].tolist()
                row.append((ids, float(mean[s]), bool(finished[s])))
            results.append(row)
        return results

    def sample(
        self,
        prompts: list[PromptRecord],
        seed: int,
        progress: Callable[[int], None] | None = None,
        max_new_tokens: int | None = None,
    ) -> list[Generation]:
        """Sample ``N = gen_cfg.num_samples`` distinct responses per prompt.

        Identical responses (same text after stripping whitespace) are dropped; prompts
        left with fewer than N distinct responses are sampled again, up to
        ``gen_cfg.max_resample`` extra passes, so a generation may hold fewer than N.

        Args:
            prompts: the round's prompts.
            seed: torch seed for this call (the loop passes ``config.seed + round``).
            progress: called with the number of prompts of each finished first-pass batch.
            max_new_tokens: response length cap, tokens; None = ``gen_cfg.max_new_tokens``
                (evaluation passes its own ``eval.max_new_tokens``).
        Returns:
            One :class:`Generation` per prompt, in prompt order.
        """
        cfg, tok = self.gen_cfg, self.tokenizer
        limit = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        torch.manual_seed(seed)
        encoded = [encode_prompt(tok, p, cfg.max_prompt_tokens) for p in prompts]
        gens = [Generation(prompt_id=p.id, prompt_token_ids=ids) for p, ids in zip(prompts, encoded)]
        seen: list[set[str]] = [set() for _ in prompts]
        todo = list(range(len(prompts)))
        for attempt in range(cfg.max_resample + 1):
            for start in range(0, len(todo), cfg.batch_size):
                chunk = todo[start : start + cfg.batch_size]
                batch = self._generate_batch([encoded[i] for i in chunk], cfg.num_samples, limit)
                for i, samples in zip(chunk, batch):
                    for ids, lp, fin in samples:
                        text = tok.decode(ids, skip_special_tokens=True).strip()
                        if text in seen[i] or len(gens[i].responses) >= cfg.num_samples:
                            continue
                        seen[i].add(text)
                        g = gens[i]
                        g.responses.append(text)
                        g.response_token_ids.append(ids)
                        g.logprob_mean.append(lp)
                        g.finished.append(fin)
                if progress is not None and attempt == 0:
                    progress(len(chunk))
            todo = [i for i in todo if len(gens[i].responses) < cfg.num_samples]
            if not todo:
                break
        if todo:
            log.info("%d prompts kept fewer than %d distinct responses", len(todo), cfg.num_samples)
        return gens

    def greedy(
        self,
        prompts: list[PromptRecord],
        max_new_tokens: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        """Greedy (argmax) decoding: one deterministic response per prompt.

        Args:
            prompts: the prompts, ``gen_cfg.batch_size`` per generate() call (left-padded; the
                response does not depend on the batching up to float rounding).
            max_new_tokens: response length cap, tokens; None = ``gen_cfg.max_new_tokens``.
            progress: called with the number of prompts of each finished batch.
        Returns:
            One :class:`Generation` per prompt, in prompt order, each with exactly one response
            (possibly empty text when the model emits EOS at once); ``logprob_mean`` is the mean
            token log-prob of that response under the policy (nats, EOS included).
        """
        cfg, tok = self.gen_cfg, self.tokenizer
        limit = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        encoded = [encode_prompt(tok, p, cfg.max_prompt_tokens) for p in prompts]
        gens = [Generation(prompt_id=p.id, prompt_token_ids=ids) for p, ids in zip(prompts, encoded)]
        for start in range(0, len(prompts), cfg.batch_size):
            batch = self._generate_batch(encoded[start : start + cfg.batch_size], 1, limit, greedy=True)
            for g, [(ids, lp, fin)] in zip(gens[start : start + cfg.batch_size], batch):
                g.responses.append(tok.decode(ids, skip_special_tokens=True).strip())
                g.response_token_ids.append(ids)
                g.logprob_mean.append(lp)
                g.finished.append(fin)
            if progress is not None:
                progress(len(batch))
        return gens
