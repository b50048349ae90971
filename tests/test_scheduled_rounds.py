"""Scheduled rounds through the real CLI: the real SmolLM2 policy, a real local HTTP ranker
(scripted replies), real run directories, real processes for the lock."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from cyclealign.cli import app
from cyclealign.rundir import RunDir
from cyclealign.files import read_jsonl
from scripted_api import ScriptedAPI

pytestmark = pytest.mark.slow
runner = CliRunner()
KEY = "sk-test-schedule-0000"


def reverse_ranker(request):
    text = request["messages"][-1]["content"]
    n = len(re.findall(r'<response id="\d+">', text))
    return "pong" if n == 0 else " > ".join(f"[{i}]" for i in range(n, 0, -1))


def small_run(run_dir, prompts, api, tmp_path):
    return [
        "--run-dir", str(run_dir), "--prompts", str(prompts), "--prompts-per-round", "2", "--num-samples", "2",
        "--max-new-tokens", "6", "--epochs", "1", "--ranker-base-url", api.base_url, "--ranker-model", "scripted",
        "--ranker-cache", str(tmp_path / f"{run_dir.name}-cache.sqlite"), "--set", "agreement.min_length=1",
    ]


def round_files(run_dir):
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.parent.name != "adapter")


def test_three_scheduled_rounds_equal_one_three_round_run(tmp_path, prompts_file, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ScriptedAPI(fallback=reverse_ranker) as api:
        once = tmp_path / "once"
        result = runner.invoke(app, ["iterate", *small_run(once, prompts_file, api, tmp_path), "--rounds", "3", "--quiet"])
        assert result.exit_code == 0, result.output
        nightly = tmp_path / "nightly"
        for night in range(3):
            # the same line every night: the first creates the run, later ones resume it
            result = runner.invoke(app, ["iterate", *small_run(nightly, prompts_file, api, tmp_path), "--add-rounds", "1", "--quiet"])
            assert result.exit_code == 0, result.output
            assert RunDir(nightly).finished_rounds() == night + 1
        # a resumed run reuses its saved config: no flag needs repeating
        result = runner.invoke(app, ["iterate", "--run-dir", str(nightly), "--add-rounds", "1", "--new-prompts-only", "--quiet"])
    # 4 prompts, 2 per round: rounds 0 and 1 used them all, so a fourth round has no new prompt
    assert result.exit_code == 4, result.output
    assert "nothing to do" in result.output
    assert RunDir(nightly).finished_rounds() == 3 and not (nightly / "round_003").exists()
    assert round_files(once) == [f for f in round_files(nightly)]
    a, b = RunDir(once), RunDir(nightly)
    for k in range(3):
        pa, pb = (json.loads(r.round(k).prompts_file.read_text())["prompts"] for r in (a, b))
        assert pa == pb
        assert a.round(k).has_adapter() and b.round(k).has_adapter()
    assert read_jsonl(a.round(0).generations) == read_jsonl(b.round(0).generations)
    assert [len(json.loads(a.round(k).prompts_file.read_text())["prompts"]) for k in range(3)] == [2, 2, 2]
    used = [p["hash"] for k in range(2) for p in json.loads(a.round(k).prompts_file.read_text())["prompts"]]
    assert len(set(used)) == 4  # rounds 0 and 1 use every prompt once before round 2 repeats any
    assert json.loads(b.config.read_text())["rounds"] == 3
    events = [e["event"] for e in read_jsonl(nightly / "events.jsonl")]
    assert events.count("run_start") == 4 and events.count("round_end") == 3 and events[-1] == "nothing_to_do"
    assert {"phase_start", "phase_end", "run_end"} <= set(events)


def test_appended_prompts_are_used_next_and_never_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = tmp_path / "incoming.jsonl"
    source.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ("Say hi.", "Name a color.")))
    with ScriptedAPI(fallback=reverse_ranker) as api:
        line = ["iterate", *small_run(tmp_path / "run", source, api, tmp_path), "--add-rounds", "1", "--new-prompts-only"]
        assert runner.invoke(app, [*line, "--quiet"]).exit_code == 0
        idle = runner.invoke(app, [*line, "--quiet"])  # no new prompt: nothing to do, nothing changes
        assert idle.exit_code == 4, idle.output
        with source.open("a") as f:  # new prompts arrive
            f.write("".join(json.dumps({"prompt": q}) + "\n" for q in ("Name an animal.", "Count to three.", "Say bye.")))
        refused = runner.invoke(app, [*line, "--promote-if", "win_rate>=0.5"])  # no --eval-every: refused before any work
        assert refused.exit_code == 2 and "--promote-if needs --eval-every" in refused.output, refused.output
        assert RunDir(tmp_path / "run").finished_rounds() == 1
        result = runner.invoke(app, line)
        assert result.exit_code == 0, result.output
    run = RunDir(tmp_path / "run")
    assert run.finished_rounds() == 2 and not (run.path / "round_002").exists()
    ids = [[p["id"] for p in json.loads(run.round(k).prompts_file.read_text())["prompts"]] for k in (0, 1)]
    assert sorted(ids[0]) == ["incoming:1", "incoming:2"]
    assert set(ids[1]) <= {"incoming:3", "incoming:4", "incoming:5"} and len(ids[1]) == 2
    assert not (run.path / "promoted").exists()
    events = read_jsonl(run.path / "events.jsonl")
    assert [e["event"] for e in events if e["event"] in ("nothing_to_do", "promotion")] == ["nothing_to_do"]


def test_a_second_iterate_is_refused_and_a_killed_ones_lock_is_taken_over(tmp_path, prompts_file):
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    run_dir = tmp_path / "run"
    # Each API call takes 5 s, so that the first is still inside its round (preflight, rank) when
    # it is killed: a round of this small run takes only a few seconds of compute.
    with ScriptedAPI(fallback=reverse_ranker, latency_s=5.0) as api:
        args = [*small_run(run_dir, prompts_file, api, tmp_path), "--rounds", "1"]
        first = subprocess.Popen([sys.executable, "-m", "cyclealign.cli", "iterate", *args, "--quiet"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 120
            while not (run_dir / "lock.json").exists() and time.time() < deadline:
                time.sleep(0.2)
            assert (run_dir / "lock.json").exists()
            second = subprocess.run([sys.executable, "-m", "cyclealign.cli", "iterate", *args, "--resume"], env=env,
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode == 5, second.stderr
            assert f"pid {first.pid}" in " ".join(second.stderr.split())
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        status = runner.invoke(app, ["status", "--run-dir", str(run_dir), "--json"])
        if status.exit_code == 0:  # the first got as far as writing its config
            assert json.loads(status.output)["lock"]["live"] is False
        resume = ["--resume"] if (run_dir / "config.json").exists() else []
        third = subprocess.run([sys.executable, "-m", "cyclealign.cli", "iterate", *args, *resume, "--quiet"], env=env,
                               capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr
    assert "took over a stale lock" in " ".join(third.stderr.split())
    events = read_jsonl(run_dir / "events.jsonl")
    assert any(e["event"] == "lock_takeover" and e["stale"]["pid"] == first.pid for e in events)
    assert RunDir(run_dir).finished_rounds() == 1 and not (run_dir / "lock.json").exists()
