"""Ranker throughput: R ranking requests against a local server with a fixed latency, at concurrency C.

The server (tests/scripted_api.py, a real HTTP server) runs in its own process so that it does
not compete with the client for the GIL; every request waits ``--latency-s`` and answers a
valid ranking. The client is the real :class:`cyclealign.ranker.client.Ranker` (async openai client,
reply cache on disk, templates, parser). The ideal wall time is ``R * latency / C``; the
printed ``ratio`` is measured wall time over that bound (target: <= 1.15).

    python scripts/bench_ranker.py                       # 1000 requests, 100 ms, concurrency 32
    python scripts/bench_ranker.py --requests 200 --concurrency 8

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVER = """
import importlib.util, sys, time
sys.setswitchinterval(0.0002)  # 32 handler threads wake from their sleep at once: hand the GIL over fast
# tests/scripted_api.py loaded from its file (tests/ is not put on sys.path)
spec = importlib.util.spec_from_file_location("scripted_api", {scripted_api!r})
scripted_api = sys.modules["scripted_api"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scripted_api)
Reply, ScriptedAPI = scripted_api.Reply, scripted_api.ScriptedAPI
reply = lambda req: Reply("[2] > [1] > [4] > [3]", prompt_tokens=500, completion_tokens=12)
api = ScriptedAPI(fallback=reply, latency_s={latency!r}).start()
print(api.port, flush=True)
sys.stdin.read()  # serve until the parent closes stdin
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--latency-s", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--no-cache", action="store_true", help="rank without the on-disk reply cache")
    args = ap.parse_args()

    import tenacity

    from cyclealign.config.ranker import RankerConfig
    from cyclealign.ranker.cache import ReplyCache
    from cyclealign.ranker.client import Ranker
    from cyclealign.ranker.ranking import RankJob
    from cyclealign.records import PromptRecord
    from cyclealign.resources import default_templates_dir
    from cyclealign.templates.ranker import RankerTemplates

    server = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(scripted_api=str(ROOT / "tests" / "scripted_api.py"), latency=args.latency_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            cache = None if args.no_cache else ReplyCache(Path(tmp) / "cache.sqlite")
            cfg = RankerConfig(concurrency=args.concurrency, structured_output="off", max_retries=0, timeout_s=30)
            ranker = Ranker(
                cfg,
                base_url=f"http://127.0.0.1:{port}/v1",
                model="bench",
                api_key="sk-bench",
                templates=RankerTemplates(default_templates_dir()),
                retry_wait=tenacity.wait_none(),
                cache=cache,
            )
            def jobs(count: int, kind: str) -> list[RankJob]:
                return [
                    RankJob(
                        PromptRecord(f"{kind}{i}", [{"role": "user", "content": f"{kind} question {i}: how do I boil an egg?"}]),
                        [f"Response {j} to {kind} question {i}: boil it for {j + 5} minutes." for j in range(4)],
                    )
                    for i in range(count)
                ]

            ranker.rank_all(jobs(8, "warm-up"))  # imports, templates, first connections: not timed
            timed = jobs(args.requests, "timed")
            t0, c0 = time.perf_counter(), time.process_time()
            results = ranker.rank_all(timed)
            wall, client_cpu = time.perf_counter() - t0, time.process_time() - c0
            if cache is not None:
                cache.close()
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    import resource

    server_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu_s = server_cpu.ru_utime + server_cpu.ru_stime
    ideal = args.requests * args.latency_s / args.concurrency
    print(
        json.dumps(
            {
                "bench": "ranker",
                "requests": args.requests,
                "latency_s": args.latency_s,
                "concurrency": args.concurrency,
                "cache": not args.no_cache,
                "ranked": sum(r.ranking is not None for r in results),
                "wall_s": round(wall, 3),
                "client_cpu_ms_per_request": round(1000 * client_cpu / args.requests, 3),
                "server_cpu_s_total": round(server_cpu_s, 3),
                "ideal_s": round(ideal, 3),
                "ratio": round(wall / ideal, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
