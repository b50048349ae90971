"""kill -9 in the middle of the ranking phase, then resume: nothing paid for is asked again,
and the final rankings equal those of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from scripted_api import ScriptedAPI
from scripted_run import KEY, make_config, reverse_ranker

from cyclealign.loop import iterate
from cyclealign.rundir import RunDir
from cyclealign.files import read_jsonl

pytestmark = pytest.mark.slow

CHILD = """
import sys
from cyclealign.config import Config
from cyclealign.loop import iterate
iterate(Config.from_json_file(sys.argv[1]), environ={"OPENAI_API_KEY": sys.argv[2]})
"""


@pytest.fixture
def prompts_file(tmp_path):
    p = tmp_path / "prompts.jsonl"
    questions = ("Name a color.", "Say hi.", "Name an animal.", "Count to three.", "Name a fruit.", "Say bye.")
    p.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions))
    return p


def is_ranking(body) -> bool:
    return "<response id=" in body["messages"][-1]["content"]


def final_rankings(run_dir):
    return [(r["prompt_id"], r["ranking"]) for r in read_jsonl(RunDir(run_dir).round(0).rankings)]


def test_kill_9_during_ranking_then_resume_equals_an_uninterrupted_run(tmp_path, prompts_file):
    settings = {"rounds": 1, "prompts_per_round": 6, "ranker.concurrency": 1}
    child: dict[str, subprocess.Popen] = {}
    seen = {"ranking": 0}
    lock = threading.Lock()

    def kill_at_fourth(index, body):
        if not is_ranking(body):
            return
        with lock:
            seen["ranking"] += 1
            if seen["ranking"] == 4 and "proc" in child:
                os.kill(child["proc"].pid, signal.SIGKILL)  # before this request is answered
                seen["killed_index"] = index

    with ScriptedAPI(fallback=reverse_ranker, on_request=kill_at_fourth) as api:
        cfg = make_config(tmp_path / "killed", prompts_file, api, **settings)
        cfg_file = tmp_path / "killed.json"
        cfg_file.write_text(cfg.to_json())
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        child["proc"] = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg_file), KEY], env=env)
        assert child["proc"].wait(timeout=600) == -signal.SIGKILL
        rd = RunDir(cfg.run_dir).round(0)
        assert rd.is_done("generate") and not rd.is_done("rank")
        killed_at = api.count
        iterate(cfg, resume=True, environ={"OPENAI_API_KEY": KEY})
        bodies = [json.dumps(b, sort_keys=True) for b in api.requests if is_ranking(b)]
        # The reply to the request that triggered the kill may still be written into the dead
        # socket's buffer; the client never read it.
        answered = [
            json.dumps(b, sort_keys=True)
            for i, (b, ok) in enumerate(zip(api.requests, api.answered), start=1)
            if ok and is_ranking(b) and i != seen["killed_index"]
        ]

    # Nothing answered before the kill was asked again; the request killed in flight was asked once more.
    assert len(answered) == len(set(answered)) == 6
    assert len(bodies) == 7 and len(set(bodies)) == 6
    assert killed_at >= 4

    with ScriptedAPI(fallback=reverse_ranker) as api2:
        ref = make_config(tmp_path / "reference", prompts_file, api2, **settings)
        iterate(ref, environ={"OPENAI_API_KEY": KEY})
    assert final_rankings(cfg.run_dir) == final_rankings(ref.run_dir)
    assert len(final_rankings(cfg.run_dir)) == 6
    for f in [*cfg.run_dir.rglob("*"), tmp_path / "killed" / "ranker_cache.sqlite"]:
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
