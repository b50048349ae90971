"""The transformers generation backend (CPU or a single GPU).

Sampling returns, for free, the log-likelihood the white-box ranking needs: generate()
is asked for the raw (unprocessed) logits of every step, and the log-softmax of those at
the sampled token is the *untempered* policy's token log-prob, with no second forward pass.
``tests/test_policy.py`` checks it against a separate forward pass.

Each prompt is prefilled once: one forward pass over the batch's prompts (all but the last
token) fills a :class:`~transformers.DynamicCache`, which is repeated N times along the batch
(``batch_repeat_interleave``) before ``generate()`` samples the N continuations from it; the
plain ``generate(num_return_sequences=N)`` would run every prompt through the model N times.
The rows and the random draws are those of ``generate(num_return_sequences=N)``: the same seed
samples the same responses as that call, up to float rounding of the logits.

Decoding itself avoids two per-step costs of ``generate()``'s defaults that grow with the batch:
the cache writes each step into preallocated room (:class:`~cyclealign.models.kv_cache.PreallocatedLayer`,
no ``torch.cat`` of the whole cache), and top-p searches the largest logits instead of sorting
the vocabulary (:class:`~cyclealign.policy.nucleus.TemperedNucleusWarper`); both leave the
scores the sampler sees, and so the draws, as they were.

De-duplication, resampling, prompt encoding and decoding are :class:`~cyclealign.policy.base.SamplingPolicy`'s;
this module only runs one ``generate()`` per batch.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
from pathlib import Path

import torch
from transformers import LogitsProcessorList

from cyclealign.config.policy import GenerationConfig, ModelConfig
from cyclealign.models.kv_cache import cache_kwarg, empty_cache, left_padded_positions, output_cache, preallocate
from cyclealign.models.loading import load_causal_lm, resolve_device, resolve_dtype
from cyclealign.models.logprobs import token_logprobs
from cyclealign.models.packing import attention_mask_kind, segment_attention_mask
from cyclealign.policy.base import SamplingPolicy
from cyclealign.policy.nucleus import TemperedNucleusWarper
from cyclealign.records import Sample

log = logging.getLogger(__name__)


class TransformersPolicy(SamplingPolicy):
    """Samples N responses per prompt (or decodes one greedily) with ``model.generate`` (the white-box policy).

    The model is loaded on first use (and again after :meth:`close`), with the adapter of the
    last :meth:`load_adapter` call merged in.

    Args:
        model_dir: base model id or directory (see :func:`cyclealign.models.loading.resolve_model_dir`).
        model_cfg: device and dtype.
        gen_cfg: N, temperature, top_p, token limits, batch size.
    """

    def __init__(self, model_dir: str, model_cfg: ModelConfig, gen_cfg: GenerationConfig) -> None:
        super().__init__(model_dir, gen_cfg)
        self.device = resolve_device(model_cfg)
        self.dtype = resolve_dtype(model_cfg, self.device)
        self.adapter: Path | None = None
        self._model: torch.nn.Module | None = None

    @property
    def model(self) -> torch.nn.Module:
        """The policy in eval mode on ``self.device``, the current adapter merged (loaded now if closed)."""
        if self._model is None:
            self._model = self._load(self.adapter)
        return self._model

    def _load(self, adapter: Path | None) -> torch.nn.Module:
        model = load_causal_lm(self.model_dir, self.dtype)
        if adapter is not None:
            from peft import PeftModel

            # Merged into a fresh copy of the base: generation then runs at base-model speed.
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        return model.to(self.device).eval()

    def load_adapter(self, path: Path | None) -> None:
        """Generate from now on with the PEFT LoRA adapter at ``path`` (``None`` = base policy);
        the model is (re)loaded now unless it is already loaded with that adapter."""
        if path == self.adapter and self._model is not None:
            return
        self.close()
        self._model = self._load(path)
        self.adapter = path

    def close(self) -> None:
        """Drop the model (``gc.collect()``, and ``torch.cuda.empty_cache()`` on CUDA) so that its
        memory is free for training; the adapter is remembered and the next use reloads it."""
        if self._model is None:
            return
        self._model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def begin_sampling(self, seed: int) -> None:
        """Load the model if closed (loading may draw random numbers), then ``torch.manual_seed(seed)``:
        every batch of the call continues that one torch stream (the per-batch seeds are unused;
        a journalled batch's stream state, :meth:`stream_state`, lets a resumed call skip it)."""
        self.model  # noqa: B018 - load before seeding
        torch.manual_seed(seed)

    def stream_state(self) -> str:
        """torch's CPU generator state and, on CUDA, the device's, as base64 JSON (about 7 KB)."""
        state = {"cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
        if self.device.type == "cuda":
            state["cuda"] = base64.b64encode(torch.cuda.get_rng_state(self.device).numpy().tobytes()).decode()
        return json.dumps(state)

    def restore_stream(self, state: str) -> None:
        """Set torch's generators to a :meth:`stream_state`."""
        saved = json.loads(state)
        torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(saved["cpu"])), dtype=torch.uint8))
        if "cuda" in saved and self.device.type == "cuda":
            torch.cuda.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(saved["cuda"])), dtype=torch.uint8), self.device)

    @torch.no_grad()
    def sample_batch(
        self,
        prompt_ids: list[list[int]],
        *,
        n: int,
        seed: int | None,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
    ) -> list[list[Sample]]:
        """One left-padded prefill and ``generate()`` call: ``n`` samples for each prompt
        (``temperature == 0``: greedy, ``n`` must be 1), at most ``max_new_tokens`` new tokens each.

        ``seed`` is unused: sampling draws from torch's global stream, seeded per
        :meth:`sample` call by :meth:`begin_sampling`. See
        :meth:`~cyclealign.policy.base.SamplingPolicy.sample_batch` for the returned samples.
        """
        tok = self.tokenizer
        pad, eos = tok.pad_token_id, tok.eos_token_id
        greedy = temperature == 0.0
        if greedy and n != 1:
            raise ValueError(f"greedy decoding gives one response per prompt, not n={n}")
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for i, p in enumerate(prompt_ids):  # left padding
            input_ids[i, width - len(p) :] = torch.tensor(p)
            attention[i, width - len(p) :] = 1
        decoding = (
            {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            if greedy
            else {
                "do_sample": True,
                "temperature": 1.0,  # both applied by the one processor, in transformers' order
                "top_p": 1.0,
                "top_k": 0,
                "logits_processor": LogitsProcessorList([TemperedNucleusWarper(temperature, top_p)]),
            }
        )
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        cache = _prefill(self.model, input_ids, attention, n)
        if cache is not None:
            preallocate(cache, reserve=max_new_tokens)  # decoding writes into spare room, no per-step cat
        out = self.model.generate(
            input_ids=input_ids.repeat_interleave(n, dim=0),
            attention_mask=attention.repeat_interleave(n, dim=0),
            **({} if cache is None else {cache_kwarg(self.model): cache}),
            **decoding,
            max_new_tokens=max_new_tokens,
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
        results: list[list[Sample]] = []
        for b in range(len(prompt_ids)):
            row = []
            for s in range(b * n, (b + 1) * n):
                ids = gen[s, : int(lengths[s])].tolist()
                row.append(Sample(ids, float(mean[s]), bool(finished[s])))
            results.append(row)
        return results


def _prefill(model: torch.nn.Module, input_ids: torch.Tensor, attention: torch.Tensor, n: int):
    """The KV cache of every prompt but its last token, computed once and repeated ``n`` times.

    The prompts are prefilled packed, several to a row (:func:`_packed_prefill`), where the
    model's attention takes a 4D mask and its cache is all full-attention layers;
    else as the left-padded batch, position ids following the padding as ``generate()``
    computes them.

    Args:
        input_ids: ``[B, W]`` left-padded prompts. attention: ``[B, W]`` 1 on real tokens.
        n: rows per prompt in the cache (prompt ``b``'s copies are rows ``b*n .. b*n+n-1``, the
            order of ``repeat_interleave`` and of ``generate(num_return_sequences=n)``).
    Returns:
        A :class:`~transformers.DynamicCache` of ``B*n`` rows and ``W - 1`` positions (None when
        ``W == 1``); given it with the repeated ``[B*n, W]`` prompts, ``generate()`` runs only
        the last prompt token before sampling.
    """
    if input_ids.shape[1] < 2:
        return None  # a one-token prompt: nothing to prefill
    prefix, mask = input_ids[:, :-1], attention[:, :-1]
    cache = _packed_prefill(model, prefix, mask)
    if cache is None:
        out = model(
            input_ids=prefix,
            attention_mask=mask,
            position_ids=left_padded_positions(mask),
            use_cache=True,
            logits_to_keep=1,
            **{cache_kwarg(model): empty_cache(model)},
        )
        cache = output_cache(out)
    if n > 1:
        cache.batch_repeat_interleave(n)
    return cache


def _packed_prefill(model: torch.nn.Module, prefix: torch.Tensor, mask: torch.Tensor):
    """The left-padded prompts' cache from one forward pass over their real tokens only.

    The prompts are packed, longest first, into as few rows as hold them without exceeding the
    longest prompt (first-fit decreasing), so no row is longer and there are no more rows than
    in the padded batch: fewer tokens through the linear layers, no more attention. Each prompt
    attends only to its own earlier tokens (:func:`cyclealign.models.packing.segment_attention_mask`),
    with position ids from 0 as in its padded row; the keys and values are then laid out
    left-padded, ``[B, heads, W, head_dim]``, zeros on padding (which the attention mask hides).
    On HH-RLHF batches padding is more than half of the padded prefill's tokens.

    Args:
        prefix: ``[B, W]`` left-padded prompt tokens. mask: ``[B, W]`` 1 on real tokens.
    Returns:
        The :class:`~transformers.DynamicCache`, or None where the model's attention takes no 4D
        mask or its cache has other than full-attention layers (sliding windows): the caller
        then prefills the padded batch.
    """
    kind = attention_mask_kind(model)
    cache = empty_cache(model)
    if kind is None or any(type(layer).__name__ != "DynamicLayer" for layer in getattr(cache, "layers", [None])):
        return None
    lengths = mask.long().sum(-1).tolist()  # [B] real tokens per row
    width = prefix.shape[1]
    bins: list[list[int]] = []  # prompts of each packed row
    room: list[int] = []
    for b in sorted((b for b in range(len(lengths)) if lengths[b] > 0), key=lambda b: -lengths[b]):
        k = next((k for k, r in enumerate(room) if r >= lengths[b]), len(bins))
        if k == len(bins):  # no row has room: a new one
            bins.append([])
            room.append(width)
        bins[k].append(b)
        room[k] -= lengths[b]
    if not bins:
        return None
    # Prompt b's real tokens sit at columns W - m_b .. W - 1 of the padded batch and at offsets
    # o .. o + m_b - 1 of its packed row; the index lists pair them, token by token.
    src_row, src_col, dst_row, dst_col, position = [], [], [], [], []
    for g, members in enumerate(bins):
        offset = 0
        for b in members:
            m = lengths[b]
            src_row += [b] * m
            src_col += range(width - m, width)
            dst_row += [g] * m
            dst_col += range(offset, offset + m)
            position += range(m)
            offset += m
    device = prefix.device
    src = (torch.tensor(src_row, device=device), torch.tensor(src_col, device=device))  # padded (row, column)
    dst = (torch.tensor(dst_row, device=device), torch.tensor(dst_col, device=device))  # packed (row, offset)
    shape = (len(bins), max(dst_col) + 1)  # [G, L], L <= W
    packed = torch.zeros(shape, dtype=prefix.dtype, device=device)
    packed[dst] = prefix[src]
    positions = torch.zeros(shape, dtype=torch.long, device=device)
    positions[dst] = torch.tensor(position, device=device)  # 0, 1, ... within each prompt
    segments = torch.full(shape, -1, dtype=torch.long, device=device)
    segments[dst] = src[0]
    attn = segment_attention_mask(segments, kind=kind, dtype=next(model.parameters()).dtype)
    out = model(
        input_ids=packed, attention_mask=attn, position_ids=positions, use_cache=True, logits_to_keep=1,
        **{cache_kwarg(model): cache},
    )
    padded = empty_cache(model)
    for index, layer in enumerate(output_cache(out).layers):  # [G, heads, L, dim] -> [B, heads, W, dim]
        keys = layer.keys.new_zeros(len(lengths), layer.keys.shape[1], width, layer.keys.shape[3])
        values = layer.values.new_zeros(len(lengths), layer.values.shape[1], width, layer.values.shape[3])
        keys[src[0], :, src[1]] = layer.keys[dst[0], :, dst[1]]
        values[src[0], :, src[1]] = layer.values[dst[0], :, dst[1]]
        padded.update(keys, values, index)
    return padded
