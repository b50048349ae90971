"""One full ``iterate`` round as a user runs it, timed per phase, with the process's peak RSS.

Runs :func:`cyclealign.loop.iterate` (the library behind ``cyclealign iterate``) for one round
of ``--prompts`` HH-RLHF harmless-base prompts (the whole file is the prompt source, multi-turn
dialogues included, as ``--prompts harmless-base-test.jsonl.gz`` gives it), N responses each,
against a real local OpenAI-compatible black box on loopback that ranks by a known rule
(:class:`cyclealign.efficacy.server.RuleBlackBox`), with the project's defaults otherwise.

Prints one JSON line: the round's seconds per phase (``phase_s`` from ``metrics.jsonl``), the
sampled tokens, the wall seconds of the whole call (model loads included) and the peak RSS of
the process (``ru_maxrss``, MiB), e.g.::

    .venv/bin/python scripts/bench_iterate.py                      # 12 prompts, N=4
    PYTHONPATH=../old-checkout .venv/bin/python scripts/bench_iterate.py   # the same round on older code

Needs the HH-RLHF file (``--hh``, default ``../shared/data/hh-rlhf/harmless-base-test.jsonl.gz``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from cyclealign.config import build_config  # noqa: E402
from cyclealign.efficacy.rules import RULES  # noqa: E402
from cyclealign.efficacy.server import RuleBlackBox  # noqa: E402
from cyclealign.loop import iterate  # noqa: E402

DEFAULT_HH = Path(__file__).resolve().parent.parent.parent / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hh", type=Path, default=DEFAULT_HH, help="HH-RLHF harmless-base JSONL[.gz]")
    ap.add_argument("--prompts", type=int, default=12, help="prompts in the round")
    ap.add_argument("--n", type=int, default=4, help="responses per prompt")
    ap.add_argument("--rule", default="paragraphs", choices=sorted(RULES), help="the black box's ranking rule")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if not a.hh.exists():
        print(f"--hh {a.hh}: no such file (the HH-RLHF harmless-base test split)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_iterate-") as tmp, RuleBlackBox(RULES[a.rule]) as box:
        cfg = build_config(**{
            "run_dir": str(Path(tmp) / "run"), "prompts": str(a.hh), "rounds": 1, "prompts_per_round": a.prompts,
            "seed": a.seed, "generation.num_samples": a.n, "ranker.base_url": box.base_url, "ranker.model": box.model,
            "ranker.cache_path": str(Path(tmp) / "cache.sqlite"),
        })
        t0 = time.perf_counter()
        metrics = iterate(cfg, environ={"OPENAI_API_KEY": "rule-black-box"})
        wall = time.perf_counter() - t0
    m = metrics[0]
    print(json.dumps({
        "bench": "iterate",
        "prompts": a.prompts,
        "n": a.n,
        "rule": a.rule,
        "phase_s": {k: round(v, 1) for k, v in m["phase_s"].items()},
        "generated_tokens": m.get("generated_tokens"),
        "ranked": m.get("ranked"),
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
