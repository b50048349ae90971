"""What every generation backend shares: the protocol, and :class:`SamplingPolicy`, the
de-duplication and resampling loop over one abstract batch sampler. The records it produces
(:class:`~cyclealign.records.Generation`, :class:`~cyclealign.records.Sample`) are
:mod:`cyclealign.records`'; the tokenizer helpers :mod:`cyclealign.models.tokenizer`'s.

A backend (``transformers`` in :mod:`cyclealign.policy.hf`, a vLLM server in
:mod:`cyclealign.policy.vllm`) subclasses :class:`SamplingPolicy` and implements:

* :meth:`SamplingPolicy.sample_batch`: N samples for each of a batch of token-id prompts;
* :meth:`SamplingPolicy.load_adapter`: generate with a PEFT LoRA adapter (or the base);
* :meth:`SamplingPolicy.close`: release its memory (or server); the next call reopens it;

and may override :meth:`SamplingPolicy.begin_sampling` (called once per :meth:`~SamplingPolicy.sample`
call, before the first batch). Prompt encoding, response decoding, de-duplication, resampling
passes and their seeds live here, once. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cyclealign.models.tokenizer import encode_prompt, load_tokenizer
from cyclealign.records import Generation, PromptRecord, Sample

if TYPE_CHECKING:
    from cyclealign.config.policy import GenerationConfig

log = logging.getLogger(__name__)


class GenerationBackend(Protocol):
    """What the round needs from a white-box policy for sampling."""

    def load_adapter(self, path: Path | None) -> None:
        """Generate with the LoRA adapter at ``path`` (PEFT format); ``None`` = the base policy."""

    def sample(
        self,
        prompts: list[PromptRecord],
        seed: int,
        progress: Callable[[int], None] | None = None,
        max_new_tokens: int | None = None,
        journal: BatchJournal | None = None,
        on_generation: Callable[[Generation], None] | None = None,
    ) -> list[Generation]:
        """Sample N distinct responses per prompt, scored by length-normalised log-likelihood
        (``max_new_tokens``: length cap in tokens; None = the backend's configured one); see
        :meth:`SamplingPolicy.sample` for ``journal`` and ``on_generation``."""

    def greedy(
        self, prompts: list[PromptRecord], max_new_tokens: int | None = None, progress: Callable[[int], None] | None = None
    ) -> list[Generation]:
        """One greedy (argmax) response per prompt (what held-out evaluation judges by default)."""

    def close(self) -> None:
        """Release the backend's memory or server (before the train phase); the next
        ``sample``/``greedy``/``load_adapter`` call reopens it. Closing twice is a no-op."""

    def shutdown(self) -> None:
        """Release everything for good (at the end of a run: a server the backend started stops)."""


# -- the shared sampling loop ------------------------------------------------------------------


def derive_seed(*parts: int) -> int:
    """A seed in ``[0, 2**31)`` determined by ``parts`` (stable across processes and platforms).

    >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2), derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    (True, True)
    """
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class BatchJournal(Protocol):
    """Where :meth:`SamplingPolicy.sample` keeps each finished batch, so that a run killed or
    failed mid-phase does not sample it again (:class:`cyclealign.rundir.GenerationJournal`)."""

    def lookup(self, key: str) -> tuple[list[list[Sample]], str | None] | None:
        """The batch sampled under ``key`` (:func:`batch_key`) and the random stream's state it
        left (:meth:`SamplingPolicy.stream_state`), or None."""

    def record(self, key: str, samples: list[list[Sample]], stream: str | None) -> None:
        """Keep ``samples`` (``[B][n]``) and the stream state ``stream`` under ``key`` before the
        next batch is sampled."""


def batch_key(attempt: int, batch_index: int, seed: int, prompt_ids: list[list[int]], **sampling: Any) -> str:
    """What one batch's draws depend on (pass, batch, seed, prompts' token ids, sampling
    settings), as a digest: a journal entry is reused only for the very same batch.

    >>> batch_key(0, 1, 7, [[1, 2]], n=4) == batch_key(0, 1, 7, [[1, 2]], n=4) != batch_key(0, 1, 7, [[1, 3]], n=4)
    True
    """
    text = json.dumps([attempt, batch_index, seed, prompt_ids, sorted(sampling.items())])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class SamplingPolicy(ABC):
    """A generation backend's shared half: encodes prompts, decodes, de-duplicates and resamples.

    Subclasses implement :meth:`sample_batch`, :meth:`load_adapter` and :meth:`close`; they
    may override :meth:`begin_sampling`.

    Args:
        model_dir: base model id or directory; its tokenizer (and chat template) is loaded here.
        gen_cfg: N, temperature, top_p, token limits, batch size, resampling passes.

    Attributes:
        tokenizer: the model's tokenizer (:func:`load_tokenizer`); kept across :meth:`close`.
        gen_cfg: as given.
    """

    def __init__(self, model_dir: str, gen_cfg: GenerationConfig) -> None:
        self.model_dir = model_dir
        self.gen_cfg = gen_cfg
        self.tokenizer = load_tokenizer(model_dir)

    # -- what a backend implements ----------------------------------------------------------

    @abstractmethod
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
        """Sample ``n`` responses for each prompt of one batch.

        Args:
            prompt_ids: ``B`` chat-templated prompts as token ids (from :func:`encode_prompt`).
            n: responses per prompt (1 when greedy).
            seed: this batch's seed, distinct for every batch and resampling pass of a
                :meth:`sample` call (:func:`derive_seed` of the call's seed, the pass and the batch);
                None when greedy. A backend with one global RNG stream (torch) may instead
                seed that stream once in :meth:`begin_sampling` and ignore this.
            temperature: sampling temperature; ``0.0`` = greedy (argmax) decoding, then
                ``n == 1`` and ``top_p == 1.0``.
            top_p: nucleus mass (no top-k cut).
            max_new_tokens: at most this many response tokens each.
        Returns:
            ``B`` lists (in prompt order) of ``n`` :class:`Sample` (or ``(token_ids, logprob_mean,
            finished)`` tuples): token ids up to and including the first EOS, their mean token
            log-prob under the *untempered* policy (raw logits, before temperature / top-p;
            nats, EOS included), and whether EOS was reached.
        """

    @abstractmethod
    def load_adapter(self, path: Path | None) -> None:
        """Generate from now on with the PEFT LoRA adapter at ``path`` (``None`` = the base policy);
        reopens a closed backend."""

    @abstractmethod
    def close(self) -> None:
        """Release the model's memory (or stop / sleep the server); the next :meth:`sample`,
        :meth:`greedy` or :meth:`load_adapter` call reopens it with the current adapter.
        Closing a closed backend does nothing."""

    def shutdown(self) -> None:
        """Release everything at the end of a run; by default :meth:`close` (a backend with a
        server of its own stops it here, where :meth:`close` may only put it to sleep)."""
        self.close()

    def begin_sampling(self, seed: int) -> None:
        """Called once at the start of every :meth:`sample` call, before its first batch
        (the transformers backend loads its model here). Default: nothing."""

    def stream_state(self) -> str | None:
        """The state of the random stream the batches draw from, as text, after a batch; None for
        a backend whose batch draws depend on the batch's own seed alone (vLLM seeds each request).
        :meth:`sample` journals it with each batch, so that a resumed call that skips a journalled
        batch continues the stream where that batch left it. Default: None."""
        return None

    def restore_stream(self, state: str) -> None:
        """Set the random stream to a :meth:`stream_state` of an earlier batch. Default: nothing."""

    # -- shared -----------------------------------------------------------------------------

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _encode_all(self, prompts: list[PromptRecord]) -> tuple[list[list[int]], list[Generation]]:
        encoded = [encode_prompt(self.tokenizer, p, self.gen_cfg.max_prompt_tokens) for p in prompts]
        return encoded, [Generation(prompt_id=p.id, prompt_token_ids=ids) for p, ids in zip(prompts, encoded)]

    def sample(
        self,
        prompts: list[PromptRecord],
        seed: int,
        progress: Callable[[int], None] | None = None,
        max_new_tokens: int | None = None,
        journal: BatchJournal | None = None,
        on_generation: Callable[[Generation], None] | None = None,
    ) -> list[Generation]:
        """Sample ``N = gen_cfg.num_samples`` distinct responses per prompt.

        Identical responses (same text after stripping whitespace) are dropped; prompts
        left with fewer than N distinct responses are sampled again (N more each), up to
        ``gen_cfg.max_resample`` extra passes, so a generation may hold fewer than N.
        Each batch of ``gen_cfg.batch_size`` prompts of pass ``a`` is sampled with seed
        ``derive_seed(seed, a, batch_index)`` (a backend that draws from one stream, seeded per
        call by :meth:`begin_sampling`, continues it instead); pass 0's batches are the prompts in
        order, a later pass's those still short of N, in order. A batch found in ``journal`` is not
        sampled again, and the stream is set to the state it left (:meth:`stream_state`) before
        the next batch is sampled: the batches, and so the draws, are an uninterrupted call's
        whichever of them a journal already held.

        Args:
            prompts: the round's prompts.
            seed: seed of this call (the loop passes ``config.seed + round``); the same seed,
                prompts and adapter give the same generations.
            progress: called with the number of prompts of each finished first-pass batch.
            max_new_tokens: response length cap, tokens; None = ``gen_cfg.max_new_tokens``
                (evaluation passes its own ``eval.max_new_tokens``).
            journal: where each finished batch (and the stream state it left) is kept as soon as
                it is sampled; a batch already in it is not sampled again.
            on_generation: called with each prompt's :class:`Generation` once its responses are
                final (N distinct, or the last pass is over) and its batch is in ``journal``, in
                the order prompts finish: the pipelined round ranks it from there.
        Returns:
            One :class:`Generation` per prompt, in prompt order; its responses in the order sampled.
        """
        cfg = self.gen_cfg
        limit = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        self.begin_sampling(seed)
        encoded, gens = self._encode_all(prompts)
        seen: list[set[str]] = [set() for _ in prompts]
        todo = list(range(len(prompts)))
        settings = {"n": cfg.num_samples, "temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": limit}
        left: str | None = None  # the stream state a journalled batch left, not yet restored
        for attempt in range(cfg.max_resample + 1):
            for batch_index, start in enumerate(range(0, len(todo), cfg.batch_size)):
                chunk = todo[start : start + cfg.batch_size]
                batch_ids = [encoded[i] for i in chunk]
                batch_seed = derive_seed(seed, attempt, batch_index)
                key = batch_key(attempt, batch_index, batch_seed, batch_ids, **settings) if journal is not None else ""
                found = journal.lookup(key) if journal is not None else None
                if found is not None:
                    batch, left = found
                else:
                    if left is not None:  # the batch before was read back: continue the stream it left
                        self.restore_stream(left)
                        left = None
                    batch = self.sample_batch(batch_ids, seed=batch_seed, **settings)
                    if journal is not None:
                        journal.record(key, [[Sample(*s) for s in row] for row in batch], self.stream_state())
                for i, samples in zip(chunk, batch, strict=True):
                    for ids, lp, fin in samples:
                        text = self._decode(ids)
                        if text in seen[i] or len(gens[i].responses) >= cfg.num_samples:
                            continue
                        seen[i].add(text)
                        g = gens[i]
                        g.responses.append(text)
                        g.response_token_ids.append(list(ids))
                        g.logprob_mean.append(float(lp))
                        g.finished.append(bool(fin))
                if progress is not None and attempt == 0:
                    progress(len(chunk))
                if on_generation is not None:
                    for i in chunk:
                        if len(gens[i].responses) >= cfg.num_samples:
                            on_generation(gens[i])
            todo = [i for i in todo if len(gens[i].responses) < cfg.num_samples]
            if not todo:
                break
        if todo:
            log.info("%d prompts kept fewer than %d distinct responses", len(todo), cfg.num_samples)
            if on_generation is not None:
                for i in todo:
                    on_generation(gens[i])
        if left is not None:  # the last batches were read back: leave the stream as they left it
            self.restore_stream(left)
        return gens

    def greedy(
        self,
        prompts: list[PromptRecord],
        max_new_tokens: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        """Greedy (argmax) decoding: one deterministic response per prompt.

        Args:
            prompts: the prompts, ``gen_cfg.batch_size`` per :meth:`sample_batch` call (the
                response does not depend on the batching up to float rounding).
            max_new_tokens: response length cap, tokens; None = ``gen_cfg.max_new_tokens``.
            progress: called with the number of prompts of each finished batch.
        Returns:
            One :class:`Generation` per prompt, in prompt order, each with exactly one response
            (possibly empty text when the model emits EOS at once); ``logprob_mean`` is the mean
            token log-prob of that response under the policy (nats, EOS included).
        """
        cfg = self.gen_cfg
        limit = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        encoded, gens = self._encode_all(prompts)
        for start in range(0, len(prompts), cfg.batch_size):
            batch = self.sample_batch(
                encoded[start : start + cfg.batch_size], n=1, seed=None, temperature=0.0, top_p=1.0, max_new_tokens=limit
            )
            for g, [(ids, lp, fin)] in zip(gens[start : start + cfg.batch_size], batch, strict=True):
                g.responses.append(self._decode(ids))
                g.response_token_ids.append(list(ids))
                g.logprob_mean.append(float(lp))
                g.finished.append(bool(fin))
            if progress is not None:
                progress(len(batch))
        return gens
