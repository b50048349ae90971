"""Round-speed benchmark: the generate and train phases as cyclealign runs them vs the plainest baseline.

In one process, on the same K HH-RLHF harmless-base prompts (a round's prompts: the seeded
selection ``iterate`` makes), N responses each, at most T new tokens:

* **generate** (i) cyclealign: :meth:`TransformersPolicy.sample` (``generation.batch_size``
  prompts per call, each prompt prefilled once and its KV cache shared by its N samples); (ii) baseline: one
  ``model.generate(num_return_sequences=N)`` per prompt, with the untempered token log-probs
  from the raw logits as cyclealign keeps them. Throughput = sampled tokens / second (every
  sampled token counts, EOS included, duplicates too).
* **train** one epoch of PRO + SFT (the defaults' loss) over the K ranking lists of the
  cyclealign samples, ranked by the policy's own likelihood order reversed (the label does not
  change the speed), from the same fresh LoRA: (i) cyclealign: :func:`train_round` (TRL trainer,
  each list packed into one row with its prompt run once, adapter saved); (ii) baseline: a plain loop, one ``[N, seq]``
  forward and backward per list and an AdamW step. Throughput = lists / second.

A warm-up (one prompt, one list) runs first. Peak memory is the process RSS above its level
at the phase's start (CPU; CUDA: allocated memory), see ``bench_train.PeakMemory``.

``--backend vllm``: the generate phase only, cyclealign's two backends on the same prompts, N and
token cap, one after the other in one run: (i) the vLLM backend (:class:`VLLMPolicy`), the real
vLLM server started by cyclealign through ``vllm.command`` from ``--vllm-python`` (default
``.venv-vllm/bin/python``, built by ``scripts/setup.sh --vllm``), every prompt's request in
flight at once; its start-up is timed apart, after it one warm-up request; (ii) the transformers
backend (:class:`TransformersPolicy`) as above. ``vllm_ratio`` = vLLM tokens/s / transformers tokens/s.

Prints one JSON line with seconds, tokens/s, lists/s, peak MiB and the ratios
(cyclealign / baseline), e.g.::

    .venv/bin/python scripts/bench_round.py                   # 12 prompts, N=4, 64 tokens
    .venv/bin/python scripts/bench_round.py --prompts 4 --hh path/to/harmless-base-test.jsonl.gz
    .venv/bin/python scripts/bench_round.py --backend vllm    # vLLM backend vs transformers backend
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from bench_train import PeakMemory  # noqa: E402  (scripts/ is on sys.path when run as a script)
from cyclealign.config import build_config  # noqa: E402
from cyclealign.data.selection import select_round_prompts  # noqa: E402
from cyclealign.data.sources import load_prompts  # noqa: E402
from cyclealign.models.loading import load_causal_lm, resolve_device, resolve_dtype, resolve_model_dir  # noqa: E402
from cyclealign.models.logprobs import response_logprobs, token_logprobs  # noqa: E402
from cyclealign.models.tokenizer import load_tokenizer  # noqa: E402
from cyclealign.policy.hf import TransformersPolicy  # noqa: E402
from cyclealign.policy.vllm import VLLMPolicy  # noqa: E402
from cyclealign.records import Sample  # noqa: E402
from cyclealign.train.examples import RankingExample, collate_lists  # noqa: E402
from cyclealign.train.lora import load_trainable_policy  # noqa: E402
from cyclealign.train.losses import pro_loss, sft_loss  # noqa: E402
from cyclealign.train.trainer import train_round  # noqa: E402

DEFAULT_HH = Path(__file__).resolve().parent.parent.parent / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
DEFAULT_VLLM_PYTHON = Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "python"
# CPU vLLM: float32 as the transformers backend, and a per-step token budget that keeps its engine alive
# under concurrent seeded requests (chunked prefill's default killed it: "CPU Generator does not use offset").
VLLM_CPU_ARGS = ["--dtype", "float32", "--max-num-batched-tokens", "16384", "--max-num-seqs", "64"]


class Counting:
    """A backend mix-in counting the tokens its batches sample."""

    tokens = 0

    def sample_batch(self, prompt_ids, **kw) -> list[list[Sample]]:
        out = super().sample_batch(prompt_ids, **kw)
        self.tokens += sum(len(s[0]) for row in out for s in row)
        return out


class CountingPolicy(Counting, TransformersPolicy):
    """cyclealign's transformers backend, counting the tokens its batches sample."""


class CountingVLLMPolicy(Counting, VLLMPolicy):
    """cyclealign's vLLM backend, counting the tokens its batches sample."""


@torch.no_grad()
def baseline_generate(model, tok, prompt_ids: list[list[int]], n: int, max_new_tokens: int, cfg) -> int:
    """One ``generate(num_return_sequences=n)`` per prompt; returns the tokens sampled."""
    tokens = 0
    for ids in prompt_ids:
        out = model.generate(
            input_ids=torch.tensor([ids], device=model.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=model.device),
            do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
            max_new_tokens=max_new_tokens, num_return_sequences=n,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            return_dict_in_generate=True, output_logits=True,
        )
        gen = out.sequences[:, len(ids):]  # [n, T]
        logp = token_logprobs(torch.stack(out.logits, dim=1), gen)  # [n, T] untempered
        is_eos = gen == tok.eos_token_id
        keep = ~((is_eos.cumsum(-1) - is_eos.long()) > 0)
        _ = (logp * keep).sum(-1) / keep.sum(-1).clamp(min=1)  # the white-box ranking's scores
        tokens += int(keep.sum())
    return tokens


def baseline_train(model, examples: list[RankingExample], cfg, pad_token_id: int, device) -> None:
    """One epoch, one list per step: ``[N, seq]`` forward + backward, PRO + SFT, AdamW."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    model.train()
    for ex in examples:
        b = collate_lists([{"prompt_ids": ex.prompt_ids, "responses_ids": ex.responses_ids}], pad_token_id, cfg.max_length)
        b = {k: v.to(device) for k, v in b.items()}
        logp = response_logprobs(model, b["input_ids"], b["attention_mask"], b["response_mask"])
        mask = b["response_mask"][:, 1:]
        scores = (logp.sum(-1) / mask.sum(-1).clamp(min=1))[None]  # [1, N]
        n = scores.shape[1]
        sft = sft_loss(logp[:1], mask[:1], cfg.sft_reduction) * ((n - 1) ** 2 if cfg.sft_pro_scale else 1)
        loss = (pro_loss(scores, None, cfg.pro_temperature) + cfg.sft_weight * sft).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def bench_config(a: argparse.Namespace, **fields):
    """The run's config for the benchmark's K prompts, N, token cap and seed (no resampling pass)."""
    return build_config(**{
        "seed": a.seed, "model.device": a.device, "model.name_or_path": a.model, "generation.num_samples": a.n,
        "generation.max_new_tokens": a.max_new_tokens, "generation.max_resample": 0, **fields,
    })


def timed_sample(policy, prompts, seed: int, device):
    """A warm-up call on one prompt, then the timed call on all: (generations, seconds, peak MiB,
    tokens sampled, warm-up seconds)."""
    t0 = time.perf_counter()
    policy.sample(prompts[:1], seed=seed)
    warm_s = time.perf_counter() - t0
    policy.tokens = 0
    gens, wall, mib = timed(lambda: policy.sample(prompts, seed=seed), device)
    return gens, wall, mib, policy.tokens, warm_s


def timed(fn, device):
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        value = fn()
        wall = time.perf_counter() - t0
    gc.collect()
    return value, wall, mem.peak_mib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=12, help="K: the round's prompts (ranking lists).")
    ap.add_argument("--n", type=int, default=4, help="N: responses per prompt.")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--hh", type=Path, default=DEFAULT_HH, help="HH-RLHF harmless-base JSONL[.gz]")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default=None, help="model directory or id (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                    help="transformers: both phases against plain baselines; vllm: the generate phase, vLLM backend vs transformers backend")
    ap.add_argument("--vllm-python", type=Path, default=DEFAULT_VLLM_PYTHON, help="Python of the venv vLLM is installed in")
    ap.add_argument("--vllm-arg", action="append", default=None,
                    help="an argument for the vLLM server (repeatable; default on CPU: " + " ".join(VLLM_CPU_ARGS) + ")")
    a = ap.parse_args()
    if not a.hh.exists():
        raise SystemExit(f"--hh {a.hh}: no such file (the HH-RLHF harmless-base test split)")
    if a.backend == "vllm":
        return bench_vllm(a)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cfg = bench_config(a, **{"train.epochs": 1.0})
    model_dir = str(resolve_model_dir(cfg.model))
    device = resolve_device(cfg.model)
    dtype = resolve_dtype(cfg.model, device)
    tok = load_tokenizer(model_dir)
    prompts = select_round_prompts(load_prompts(a.hh), 0, a.prompts, a.seed)
    policy = CountingPolicy(model_dir, cfg.model, cfg.generation)
    gens, ca_gen_s, ca_gen_mib, ca_tokens, _ = timed_sample(policy, prompts, a.seed, device)  # the warm-up loads the model
    prompt_ids = [g.prompt_token_ids for g in gens]

    base = load_causal_lm(model_dir, dtype).to(device).eval()
    torch.manual_seed(a.seed)
    baseline_generate(base, tok, prompt_ids[:1], a.n, a.max_new_tokens, cfg.generation)  # warm-up
    bl_tokens, bl_gen_s, bl_gen_mib = timed(
        lambda: baseline_generate(base, tok, prompt_ids, a.n, a.max_new_tokens, cfg.generation), device
    )
    base = None  # free the baseline's model before training
    policy.close()
    gc.collect()

    examples = []
    for g in gens:
        order = sorted(range(len(g.responses)), key=lambda k: g.logprob_mean[k])  # likelihood order reversed
        examples.append(RankingExample(g.prompt_token_ids, [g.response_token_ids[k] for k in order]))
    examples = [e for e in examples if len(e.responses_ids) >= 2]
    random.Random(a.seed).shuffle(examples)

    def fresh():
        torch.manual_seed(a.seed)
        return load_trainable_policy(model_dir, None, cfg.train, device, dtype)

    with tempfile.TemporaryDirectory(prefix="bench-round-") as tmp:
        def ours(model, exs, name):
            return train_round(model, exs, cfg.train, pad_token_id=tok.pad_token_id, out_dir=Path(tmp) / name,
                               seed=a.seed, device=device)

        ours(fresh(), examples[:1], "warm")
        model = fresh()
        _, ca_train_s, ca_train_mib = timed(lambda: ours(model, examples, "adapter"), device)
        baseline_train(fresh(), examples[:1], cfg.train, tok.pad_token_id, device)  # warm-up
        model = fresh()
        _, bl_train_s, bl_train_mib = timed(
            lambda: baseline_train(model, examples, cfg.train, tok.pad_token_id, device), device
        )
    lens = [len(e.prompt_ids) for e in examples]
    result = {
        "bench": "round", "device": str(device), "prompts": len(prompts), "n": a.n, "max_new_tokens": a.max_new_tokens,
        "prompt_tokens_mean": round(sum(lens) / len(lens), 1), "prompt_tokens_max": max(lens),
        "generate": {
            "cyclealign": {"s": round(ca_gen_s, 2), "tokens": ca_tokens, "tokens_per_s": round(ca_tokens / ca_gen_s, 2),
                           "peak_mib": round(ca_gen_mib, 1)},
            "baseline": {"s": round(bl_gen_s, 2), "tokens": bl_tokens, "tokens_per_s": round(bl_tokens / bl_gen_s, 2),
                         "peak_mib": round(bl_gen_mib, 1)},
        },
        "train": {
            "cyclealign": {"s": round(ca_train_s, 2), "lists_per_s": round(len(examples) / ca_train_s, 4),
                           "peak_mib": round(ca_train_mib, 1)},
            "baseline": {"s": round(bl_train_s, 2), "lists_per_s": round(len(examples) / bl_train_s, 4),
                         "peak_mib": round(bl_train_mib, 1)},
            "lists": len(examples),
        },
    }
    result["generate_ratio"] = round((ca_tokens / ca_gen_s) / (bl_tokens / bl_gen_s), 3)
    result["train_ratio"] = round(bl_train_s / ca_train_s, 3)
    print(json.dumps(result), flush=True)


def bench_vllm(a: argparse.Namespace) -> None:
    """The generate phase through the vLLM backend (the real server) and the transformers backend."""
    if not a.vllm_python.exists():
        raise SystemExit(f"--vllm-python {a.vllm_python}: not found (build it with scripts/setup.sh --vllm)")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tmp = tempfile.TemporaryDirectory(prefix="bench-round-vllm-")
    cfg = bench_config(a)
    model_dir = str(resolve_model_dir(cfg.model))
    device = resolve_device(cfg.model)
    prompts = select_round_prompts(load_prompts(a.hh), 0, a.prompts, a.seed)

    hf = CountingPolicy(model_dir, cfg.model, cfg.generation)
    _, hf_s, _, hf_tokens, _ = timed_sample(hf, prompts, a.seed, device)
    hf.close()
    gc.collect()

    extra = a.vllm_arg if a.vllm_arg is not None else (VLLM_CPU_ARGS if device.type == "cpu" else [])
    vcfg = bench_config(a, **{
        "run_dir": Path(tmp.name) / "run", "generation.backend": "vllm", "generation.batch_size": len(prompts),
        "vllm.request_concurrency": len(prompts), "vllm.extra_args": extra, "vllm.sleep_during_train": False,
        "vllm.command": [str(a.vllm_python), "-m", "vllm.entrypoints.openai.api_server"],
    })
    policy = CountingVLLMPolicy(vcfg, model_dir)
    try:
        _, vllm_s, _, vllm_tokens, startup_s = timed_sample(policy, prompts, a.seed, device)  # the warm-up starts the server
    finally:
        policy.shutdown()
        tmp.cleanup()
    result = {
        "bench": "round_generate_vllm", "device": str(device), "model": a.model or "SmolLM2-135M-Instruct",
        "prompts": len(prompts), "n": a.n, "max_new_tokens": a.max_new_tokens, "vllm_args": extra,
        "vllm": {"s": round(vllm_s, 2), "tokens": vllm_tokens, "tokens_per_s": round(vllm_tokens / vllm_s, 2),
                 "startup_and_warmup_s": round(startup_s, 1)},
        "transformers": {"s": round(hf_s, 2), "tokens": hf_tokens, "tokens_per_s": round(hf_tokens / hf_s, 2)},
    }
    result["vllm_ratio"] = round((vllm_tokens / vllm_s) / (hf_tokens / hf_s), 3)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
