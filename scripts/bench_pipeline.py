"""Pipelined-round benchmark: generate and rank one after the other vs overlapped (``ranker.pipeline``).

In one process, one round of ``iterate`` (generate -> rank -> agreement -> train) twice on the
same K single-turn HH-RLHF harmless-base prompts (the seeded selection ``iterate`` makes; the
shipped prompt set when the HH file is absent), N responses each, against the rule black box
(:class:`~cyclealign.efficacy.server.RuleBlackBox`, a real local HTTP server) answering each
ranking call after ``--latency-s`` seconds, ``--concurrency`` calls in flight at most:

* **sequential** (``ranker.pipeline=false``): the rank phase sends its first request once the
  whole generate phase is done: generate+rank wall time is the sum of the two;
* **pipelined** (``ranker.pipeline=true``, the default): each prompt is ranked as soon as its
  responses are sampled.

Each run has its own run directory and reply cache (no answer is reused). The times come from
the phases' start and end as the loop reports them: ``generate_s`` and ``rank_s`` of the
sequential run are each phase on its own; ``total_s`` is from the start of generate to the end
of rank. ``vs_longer_phase`` = pipelined total / max(generate alone, rank alone) (1.0: the
shorter phase hidden entirely), ``speedup`` = sequential total / pipelined total. Asserts that
both runs end with the same generations and rankings, and adapters equal up to float rounding
(:data:`ADAPTER_ATOL`; a second sequential run shows that floor). Prints one JSON line::

    .venv/bin/python scripts/bench_pipeline.py                     # 24 prompts, N=4, 1.5 s a call, 4 at once
    .venv/bin/python scripts/bench_pipeline.py --prompts 4 --max-new-tokens 8   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from cyclealign.config import build_config  # noqa: E402
from cyclealign.data.selection import select_round_prompts  # noqa: E402
from cyclealign.data.sources import load_prompts  # noqa: E402
from cyclealign.efficacy.rules import RULES  # noqa: E402
from cyclealign.efficacy.server import RuleBlackBox  # noqa: E402
from cyclealign.loop import iterate  # noqa: E402
from cyclealign.progress import NullReporter  # noqa: E402
from cyclealign.rundir import RunDir  # noqa: E402
from cyclealign.files import read_jsonl, write_jsonl  # noqa: E402

DEFAULT_HH = Path(__file__).resolve().parent.parent.parent / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"


class PhaseClock(NullReporter):
    """Records when each phase starts and ends (``time.perf_counter`` seconds)."""

    def __init__(self) -> None:
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}

    def phase_start(self, round_index: int, phase: str, total: int | None) -> None:
        self.start.setdefault(phase, time.perf_counter())

    def phase_end(self, round_index: int, phase: str, info: dict[str, Any]) -> None:
        self.end[phase] = time.perf_counter()


def round_prompts(a: argparse.Namespace) -> tuple[list, str]:
    """K prompts as ``iterate`` picks a round's: single-turn HH-RLHF, else the shipped set."""
    if a.hh.exists():
        pool, source = [p for p in load_prompts(a.hh) if len(p.messages) == 1], "hh-rlhf harmless-base (single turn)"
    else:
        print(f"{a.hh} not found: using the shipped prompt set", file=sys.stderr)
        pool, source = load_prompts(None), "shipped"
    return select_round_prompts(pool, 0, a.prompts, a.seed), source


def run_round(a: argparse.Namespace, root: Path, name: str, prompts_path: Path, box: RuleBlackBox, pipeline: bool) -> dict[str, Any]:
    """One round with the pipeline on or off; its phase times and what it produced."""
    cfg = build_config(**{
        "run_dir": str(root / name), "prompts": str(prompts_path), "rounds": 1, "prompts_per_round": a.prompts,
        "seed": a.seed, "model.device": a.device, "generation.num_samples": a.num_samples,
        "generation.max_new_tokens": a.max_new_tokens, "generation.batch_size": a.batch_size, "ranker.base_url": box.base_url, "ranker.model": box.model,
        "ranker.cache_path": str(root / f"{name}.sqlite"), "ranker.concurrency": a.concurrency,
        "ranker.pipeline": pipeline, "train.epochs": 1,
    })
    clock = PhaseClock()
    iterate(cfg, environ={"OPENAI_API_KEY": "rule-black-box"}, reporter=clock)
    rd = RunDir(cfg.run_dir).round(0)
    rank = rd.phases()["rank"]
    return {
        "times": {
            "generate_s": round(clock.end["generate"] - clock.start["generate"], 2),
            "rank_s": round(clock.end["rank"] - clock.start["rank"], 2),  # pipelined: after generation ended
            "total_s": round(clock.end["rank"] - clock.start["generate"], 2),
            "ranked_during_generate": rank["ranked_during_generate"],
        },
        "generations": read_jsonl(rd.generations),
        "rankings": [(r["prompt_id"], r["ranking"]) for r in read_jsonl(rd.rankings)],
        "adapter": rd.adapter / "adapter_model.safetensors",
    }


ADAPTER_ATOL = 1e-3
"""Largest difference between two adapters' weights taken for float rounding. Runs that train on
the same generations, rankings and generator state still differ: CPU kernels (oneDNN, MKL) may
sum in another order from one run to the next in a process, and 24 AdamW steps amplify that
(seen: 1.0e-4 between two sequential runs, with weights of about 0.04). The bench reports that
floor (a second sequential run) beside the pipelined run's difference; a run trained on other
data differs by the size of the update itself (about 1e-2)."""


def adapter_difference(a: Path, b: Path) -> float | None:
    """The largest absolute difference between two saved adapters' tensors; 0.0 when both are
    absent, None when one is absent or their tensors differ in names or shapes."""
    if not a.exists() or not b.exists():
        return 0.0 if a.exists() == b.exists() else None
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    if x.keys() != y.keys() or any(x[k].shape != y[k].shape for k in x):
        return None
    return max((float((x[k] - y[k]).abs().max()) for k in x), default=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=24, help="K: prompts in the round")
    ap.add_argument("--num-samples", type=int, default=4, help="N: responses per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="response length cap, tokens")
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch (generation.batch_size; the last batch's rankings are what the pipeline cannot hide)")
    ap.add_argument("--latency-s", type=float, default=1.5, help="seconds the black box takes per ranking call")
    ap.add_argument("--concurrency", type=int, default=4, help="ranker calls in flight at most")
    ap.add_argument("--rule", default="brevity", choices=sorted(RULES), help="the black box's ranking rule")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hh", type=Path, default=DEFAULT_HH, help="HH-RLHF harmless-base JSONL[.gz] (absent: the shipped prompts)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the two run directories here (default: a temporary folder)")
    a = ap.parse_args()
    prompts, source = round_prompts(a)
    with tempfile.TemporaryDirectory(prefix="bench_pipeline-") as tmp:
        root = a.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        prompts_path = root / "prompts.jsonl"
        write_jsonl(prompts_path, [p.to_json() for p in prompts])
        from cyclealign.config.policy import ModelConfig
        from cyclealign.models.loading import load_causal_lm, resolve_model_dir

        load_causal_lm(resolve_model_dir(ModelConfig()))  # warm-up: the weights in the page cache for both runs
        with RuleBlackBox(RULES[a.rule], latency_s=a.latency_s) as box:
            seq = run_round(a, root, "sequential", prompts_path, box, pipeline=False)
            pipe = run_round(a, root, "pipelined", prompts_path, box, pipeline=True)
            again = run_round(a, root, "sequential-again", prompts_path, box, pipeline=False)  # the float-rounding floor
        assert pipe["generations"] == seq["generations"] == again["generations"], "the pipelined round sampled other responses"
        assert pipe["rankings"] == seq["rankings"] == again["rankings"], "the pipelined round ranked differently"
        diff = {"pipelined": adapter_difference(pipe["adapter"], seq["adapter"]), "sequential_again": adapter_difference(again["adapter"], seq["adapter"])}
        assert all(d is not None and d <= ADAPTER_ATOL for d in diff.values()), f"the rounds trained other adapters (max abs differences {diff})"
    s, p = seq["times"], pipe["times"]
    longer = max(s["generate_s"], s["rank_s"])
    print(json.dumps({
        "prompts": len(prompts), "source": source, "num_samples": a.num_samples, "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size,
        "latency_s": a.latency_s, "concurrency": a.concurrency, "rule": a.rule, "device": a.device,
        "sequential": s, "pipelined": p,
        "vs_longer_phase": round(p["total_s"] / longer, 3) if longer else None,
        "vs_sum": round(p["total_s"] / (s["generate_s"] + s["rank_s"]), 3),
        "speedup": round(s["total_s"] / p["total_s"], 3) if p["total_s"] else None,
        "same_generations": True, "same_rankings": True, "adapter_max_abs_diff_vs_sequential": diff,
    }))


if __name__ == "__main__":
    main()
