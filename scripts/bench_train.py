"""Training-speed benchmark: listwise PRO (`train_round`) vs TRL's pairwise DPOTrainer (`train_round_dpo`).

Both train the same fresh LoRA on the same rankings for one epoch, in this process: K ranking lists of
N responses sampled from the embedded SmolLM2 on the shipped prompts, ranked by the policy's own
log-likelihood order reversed (a speed benchmark: the label does not matter). PRO takes one
``[N, seq]`` batch per list; DPO the list's N(N-1)/2 pairs (one device batch of them per list).
A 1-list run of each warms up first. Throughput counts ranking lists, not pairs.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the run minus the allocation before it; on
CPU, the process RSS sampled every 5 ms by a background thread, peak minus the RSS before the run
(freed heap is handed back to the OS with ``malloc_trim`` first, so an earlier run's peak is not
reused unseen).

Prints one JSON line, e.g.::

    python scripts/bench_train.py --lists 8 --n 4 --device cpu
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from cyclealign.config import build_config  # noqa: E402
from cyclealign.config.policy import GenerationConfig, ModelConfig  # noqa: E402
from cyclealign.data.sources import load_prompts  # noqa: E402
from cyclealign.models.loading import resolve_device, resolve_dtype, resolve_model_dir  # noqa: E402
from cyclealign.models.tokenizer import load_tokenizer  # noqa: E402
from cyclealign.policy.hf import TransformersPolicy  # noqa: E402
from cyclealign.train.dpo import train_round_dpo  # noqa: E402
from cyclealign.train.examples import RankingExample  # noqa: E402
from cyclealign.train.lora import load_trainable_policy  # noqa: E402
from cyclealign.train.trainer import train_round  # noqa: E402


def build_rankings(
    model_dir: str, model_cfg: ModelConfig, lists: int, n: int, max_new_tokens: int
) -> list[RankingExample]:
    """``lists`` rankings of up to ``n`` sampled responses, best first = least likely under the policy."""
    gen_cfg = GenerationConfig(num_samples=n, max_new_tokens=max_new_tokens, batch_size=8)
    policy = TransformersPolicy(model_dir, model_cfg, gen_cfg)
    gens = policy.sample(load_prompts()[:lists], seed=0)
    del policy
    examples = []
    for g in gens:
        order = sorted(range(len(g.responses)), key=lambda k: g.logprob_mean[k])  # reversed likelihood order
        examples.append(RankingExample(g.prompt_token_ids, [g.response_token_ids[k] for k in order]))
    return [e for e in examples if len(e.responses_ids) >= 2]


class PeakMemory:
    """Peak memory over a ``with`` block, in MiB above the level at its start."""

    def __init__(self, device: torch.device, interval_s: float = 0.005) -> None:
        self.device, self.interval_s, self.peak_mib = device, interval_s, float("nan")

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        try:  # return freed heap pages to the OS, so an earlier run's peak is not reused unseen
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self._proc = psutil.Process()
        self._start = self._peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mib = (peak - self._start) / 2**20


def run_one(method: str, examples, *, model_dir, tokenizer, cfg, device, dtype) -> dict[str, float]:
    """Train a fresh LoRA on ``examples`` with ``method`` ("pro" or "dpo"); time and measure it."""
    model = load_trainable_policy(model_dir, None, cfg, device, dtype)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        out = Path(tmp) / "adapter"
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            if method == "pro":
                stats = train_round(
                    model, examples, cfg, pad_token_id=tokenizer.pad_token_id, out_dir=out, seed=0, device=device
                )
            else:
                stats = train_round_dpo(
                    model, examples, cfg, tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id, out_dir=out,
                    seed=0, device=device, pairs="all",
                )
            wall = time.perf_counter() - t0
    del model
    gc.collect()
    return {
        "examples_per_s": round(len(examples) / wall, 4),
        "wall_s": round(wall, 3),
        "peak_mem_mib": round(mem.peak_mib, 1),
        "train_s": round(stats.wall_s, 3),  # trainer.train() alone, without setup and adapter save
        "steps": stats.steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lists", type=int, default=8, help="K: ranking lists (prompts).")
    ap.add_argument("--n", type=int, default=4, help="N: responses per list.")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="Sampled response length cap, tokens.")
    a = ap.parse_args()

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    model_cfg = ModelConfig(device=a.device)
    device, model_dir = resolve_device(model_cfg), resolve_model_dir(model_cfg)
    dtype = resolve_dtype(model_cfg, device)
    cfg = build_config(**{"train.epochs": 1.0}).train
    tokenizer = load_tokenizer(model_dir)
    examples = build_rankings(model_dir, model_cfg, a.lists, a.n, a.max_new_tokens)
    common = dict(model_dir=model_dir, tokenizer=tokenizer, cfg=cfg, device=device, dtype=dtype)
    for method in ("pro", "dpo"):  # warm-up: one list each
        run_one(method, examples[:1], **common)
    pro = run_one("pro", examples, **common)
    dpo = run_one("dpo", examples, **common)
    cores = torch.get_num_threads()
    print(
        json.dumps(
            {
                "bench": "train",
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cores} cores)",
                "lists": len(examples),
                "n": a.n,
                "pro": pro,
                "dpo_all_pairs": dpo,
                "speedup_pro_vs_dpo": round(pro["examples_per_s"] / dpo["examples_per_s"], 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
