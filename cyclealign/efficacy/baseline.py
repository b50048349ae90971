"""The efficacy benchmark's baseline: the plainest correct ranking loop, and its own sweep.

:func:`plain_pro_loop` is a short PRO loop written without any of CycleAlign's machinery (no
TRL, no agreement, no demonstrations): LoRA r=16 on all linear layers, AdamW, one ranked list per
step, two passes over each round's lists, the model and optimiser carried across rounds. Its
loss is Plackett-Luce over length-normalised log-likelihoods plus ``sft_weight`` times the best
response's mean token NLL (Song et al. 2023, arXiv 2306.17492, Eq. 7 with T=1, plus the SFT term
of their Eq. 10 with a mean over tokens).

A baseline that is only run at one setting can be beaten by choosing the other side's settings
well, so the benchmark gives it a sweep of its own (:class:`PlainLoopPoint`, :data:`PLAIN_GRID`:
learning rate x SFT weight x gradient clipping) and compares against its best point per rule,
chosen on tuning prompts that are neither trained on nor held out (:func:`best_point`). Points
whose samples the base policy finds much less likely than its own (more than
:data:`MAX_FLUENCY_DROP` nats per token) are passed over: a rule can be won by garbling text, and
no user would keep such a loop.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cyclealign.models.loading import load_causal_lm
from cyclealign.records import Generation


@dataclass(frozen=True)
class PlainLoopPoint:
    """One setting of the plain loop.

    Attributes:
        learning_rate: AdamW's (constant).
        sft_weight: weight of the best response's mean token NLL beside the Plackett-Luce term.
        max_grad_norm: gradient clipping threshold (L2 norm over the LoRA weights); 0 = off.
    """

    learning_rate: float = 2e-4
    sft_weight: float = 1.0
    max_grad_norm: float = 0.0

    @property
    def name(self) -> str:
        """The point's folder name.

        >>> PlainLoopPoint(2e-4, 1.0, 0.0).name
        'lr0.0002_sft1_clip0'
        """
        return f"lr{self.learning_rate:g}_sft{self.sft_weight:g}_clip{self.max_grad_norm:g}"

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def plain_grid(learning_rates: Sequence[float], sft_weights: Sequence[float], clips: Sequence[float]) -> list[PlainLoopPoint]:
    """Every combination of the three axes, in a fixed order.

    >>> [p.name for p in plain_grid([2e-4], [0.1, 1.0], [0.0])]
    ['lr0.0002_sft0.1_clip0', 'lr0.0002_sft1_clip0']
    """
    return [PlainLoopPoint(lr, w, c) for lr, w, c in itertools.product(learning_rates, sft_weights, clips)]


PLAIN_GRID: list[PlainLoopPoint] = plain_grid([2e-4, 4e-4], [0.1, 1.0], [0.0, 1.0])
"""The baseline's sweep: learning rate {2e-4, 4e-4} x SFT weight {0.1, 1.0} x clipping {off, 1.0}."""


MAX_FLUENCY_DROP = 0.3
"""Nats per token: the most a sweep point's samples may lose in base-policy log-likelihood against
the base policy's own samples (:func:`best_point`). On the efficacy bench's seed 0, runs that win
a rule by degrading text lose 0.5-1.0 (CycleAlign with SFT weight 0.1 on ``brevity``: 0.7 / 1.0;
the plain loop at lr 4e-4, SFT 0.1, clip 1.0 on ``marker`` and ``paragraphs``: 0.5 / 0.6); the
defaults' runs lose at most 0.2."""


def best_point(scores: dict[str, float], drops: dict[str, float] | None = None, max_drop: float | None = None) -> str:
    """The point name with the highest tuning score among those whose fluency drop is at most
    ``max_drop`` (all points when none is, or without ``drops``); ties: the first in ``scores``' order.

    Args:
        scores: per point, the rule's property over its samples of the tuning prompts.
        drops: per point, base-policy nats per token its samples lose against the base
            policy's own (:func:`cyclealign.efficacy.measure.mean_score`; positive = less fluent).
        max_drop: the bound (None: no bound).

    >>> best_point({"a": 0.5, "b": 0.7, "c": 0.7})
    'b'
    >>> best_point({"a": 0.5, "b": 0.9}, drops={"a": 0.1, "b": 0.8}, max_drop=0.3)
    'a'
    >>> best_point({"a": 0.5, "b": 0.9}, drops={"a": 0.4, "b": 0.8}, max_drop=0.3)  # none within: all
    'b'

    Raises:
        ValueError: no point.
    """
    if not scores:
        raise ValueError("no sweep point to choose from")
    eligible = list(scores)
    if drops is not None and max_drop is not None:
        eligible = [name for name in scores if drops[name] <= max_drop] or eligible
    return max(eligible, key=lambda name: (scores[name], -list(scores).index(name)))


def plain_pro_loop(
    model_dir: str,
    round0: list[Generation],
    rank: Callable[[Generation], list[int]],
    sample: Callable[[int, Path], list[Generation]],
    *,
    rounds: int,
    seed: int,
    point: PlainLoopPoint,
    out: Path,
    device: torch.device,
) -> Path:
    """Train the plain PRO loop for ``rounds`` rounds; returns the last round's adapter folder.

    Args:
        model_dir: the base policy's weights.
        round0: round 0's generations (the CycleAlign run's own, so both start from the same samples).
        rank: a generation -> the black box's ranking (0-based indices, best first).
        sample: ``(round, previous adapter folder)`` -> that round's generations (rounds >= 1).
        rounds, seed: the schedule and the seed (initialisation and list order).
        point: learning rate, SFT weight and clipping.
        out: adapters are saved as ``out/round_000``, ``out/round_001``, ...
        device: where to train.

    Each step is :func:`plain_pro_step` on one list. AdamW keeps torch's default weight decay
    (0.01; the round trainer's is 0), so at the same point the two take the same steps up to it.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = load_causal_lm(model_dir, torch.float32).to(device)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=point.learning_rate)
    adapter: Path | None = None
    for k in range(rounds):
        gens = round0 if k == 0 else sample(k, adapter)
        lists = [(g, rank(g)) for g in gens if len(g.responses) >= 2]
        model.train()
        for _ in range(2):
            for g, ranking in random.Random(seed + k).sample(lists, len(lists)):
                plain_pro_step(model, opt, params, g.prompt_token_ids, [g.response_token_ids[i] for i in ranking], point, device)
        adapter = out / f"round_{k:03d}"
        model.save_pretrained(str(adapter))
    assert adapter is not None
    return adapter


def plain_pro_step(
    model,
    opt: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    prompt_ids: list[int],
    responses_ids: list[list[int]],
    point: PlainLoopPoint,
    device: torch.device,
) -> float:
    """One optimiser step of the plain loop on one ranked list; returns its loss (nats).

    Args:
        model: the PEFT model being trained.
        opt, params: its optimiser and trainable parameters (clipped together).
        prompt_ids: the chat-templated prompt's token ids.
        responses_ids: the responses' token ids, best first (``N >= 2``).
        point: the SFT weight and clipping (the learning rate is the optimiser's).
        device: where the model is.

    The batch is ``[N, prompt + longest response]``, right-padded; the loss is
    ``PL(mean log-likelihoods, best first) - sft_weight * mean_logp(best)`` (Song et al. 2023,
    Eq. 7 with T=1, plus the SFT term of Eq. 10 as a mean over tokens).
    """
    width = len(prompt_ids) + max(map(len, responses_ids))
    ids = torch.zeros((len(responses_ids), width), dtype=torch.long)
    att = torch.zeros_like(ids)
    lab = torch.zeros_like(ids, dtype=torch.bool)
    for r, toks in enumerate(responses_ids):
        seq = prompt_ids + toks
        ids[r, : len(seq)] = torch.tensor(seq)
        att[r, : len(seq)] = 1
        lab[r, len(prompt_ids) : len(seq)] = True
    logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits[:, :-1]
    tok = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1)
    mask = lab[:, 1:].to(device).float()
    mean = (tok * mask).sum(-1) / mask.sum(-1)  # [N] length-normalised log-likelihood, best first
    pl = sum(torch.logsumexp(mean[i:], 0) - mean[i] for i in range(len(responses_ids) - 1))
    loss = pl - point.sft_weight * mean[0]
    opt.zero_grad()
    loss.backward()
    if point.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, point.max_grad_norm)
    opt.step()
    return float(loss.detach())
