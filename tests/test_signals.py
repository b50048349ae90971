"""Signals and child servers, with real processes: SIGTERM and SIGINT stop `iterate` cleanly (the
embedded `transformers serve` it started is stopped, the lock released, an `interrupted` event, exit
128 + the signal); after SIGKILL the server dies with its parent; a server left behind anyway is
found by its pid file and stopped by the next run or `status`; files keep the umask's modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cyclealign.cli import app
from cyclealign.config import build_config
from cyclealign.runlock import RunLock
from cyclealign.rundir import RunDir
from cyclealign.files import atomic_write_text, make_work_dir, read_jsonl
from cyclealign.serving import process_start, reap_stale_server

pytestmark = pytest.mark.slow


def events(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "events.jsonl")


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def signal_when(proc: subprocess.Popen, ready, sig: int, what: str, settle_s: float = 0.0) -> str:
    """Once ``ready()`` (or the process ended), wait ``settle_s`` and send ``sig``; the process's
    output. The process is killed if it outlives the test."""
    try:
        wait_for(lambda: ready() or proc.poll() is not None, 600, what)
        time.sleep(settle_s)
        proc.send_signal(sig)
        return proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()


def start_iterate(run_dir: Path, prompts_file: Path, *extra: str) -> subprocess.Popen:
    """`cyclealign iterate` in a process of its own, with the embedded ranker (a `transformers serve` child)."""
    cmd = [sys.executable, "-m", "cyclealign.cli", "iterate", "--run-dir", str(run_dir), "--prompts", str(prompts_file),
           "--rounds", "1", "--prompts-per-round", "4", "--num-samples", "2", "--max-new-tokens", "48", "--quiet", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def in_generate(run_dir: Path) -> bool:
    return (run_dir / "events.jsonl").exists() and any(
        e["event"] == "phase_start" and e.get("phase") == "generate" for e in events(run_dir)
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_generation_stops_the_run_and_its_server_and_resume_finishes(sig, tmp_path, prompts_file):
    run_dir = tmp_path / "run"
    proc = start_iterate(run_dir, prompts_file)
    servers = []

    def generating() -> bool:
        if not in_generate(run_dir):
            return False
        server = json.loads((run_dir / "server.pid").read_text())
        assert process_start(server["pid"]) == server["start"]  # the embedded ranker server runs
        servers.append(server)
        return True

    out = signal_when(proc, generating, sig, "the generate phase")
    server = servers[0]
    assert proc.returncode == 128 + sig, out
    assert "interrupted: stopped by " + sig.name in out and "Traceback" not in out
    assert [e["signal"] for e in events(run_dir) if e["event"] == "interrupted"] == [sig]
    assert process_start(server["pid"]) is None and not (run_dir / "server.pid").exists()  # stopped, not orphaned
    assert not (run_dir / "lock.json").exists()
    assert not RunDir(run_dir).round(0).is_done("generate")
    if sig == signal.SIGTERM:  # the run resumes from there
        result = CliRunner().invoke(app, ["iterate", "--run-dir", str(run_dir), "--resume", "--quiet"], env={"HF_HUB_OFFLINE": "1"})
        assert result.exit_code == 0, result.output
        assert RunDir(run_dir).finished_rounds() == 1 and not (run_dir / "server.pid").exists()


def test_after_sigkill_the_server_dies_with_its_parent(tmp_path, prompts_file):
    run_dir = tmp_path / "run"
    proc = start_iterate(run_dir, prompts_file)
    try:
        wait_for(lambda: in_generate(run_dir) or proc.poll() is not None, 600, "the generate phase")
        server = json.loads((run_dir / "server.pid").read_text())
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: process_start(server["pid"]) is None, 60, "the orphaned server to stop")
    # the pid file is left: status finds nothing running under it any more and clears it
    result = CliRunner().invoke(app, ["status", "--run-dir", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["stale_servers_stopped"] == [] and not (run_dir / "server.pid").exists()


def sleeper(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """A long-lived process in its own session, recorded as a server's pid file would record it."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    pid_file = tmp_path / "server.pid"
    pid_file.write_text(json.dumps({"pid": proc.pid, "start": process_start(proc.pid), "command": ["sleep", "300"]}))
    return proc, pid_file


def test_a_server_left_behind_is_stopped_by_status_and_by_the_next_run(tmp_path, prompts_file):
    proc, pid_file = sleeper(tmp_path)
    assert reap_stale_server(pid_file, grace_s=5) == proc.pid
    assert proc.wait(timeout=10) == -signal.SIGTERM and not pid_file.exists()
    # a recycled pid (another start time) is not touched
    other, pid_file = sleeper(tmp_path)
    record = json.loads(pid_file.read_text())
    pid_file.write_text(json.dumps({**record, "start": record["start"] - 1}))
    assert reap_stale_server(pid_file) is None and other.poll() is None
    other.kill()
    other.wait()

    run_dir = tmp_path / "run"  # a run directory whose servers were left running by a killed run
    RunDir(run_dir).prepare(build_config(**{"run_dir": run_dir}).to_json(), False)
    left, _ = sleeper(tmp_path)
    (tmp_path / "server.pid").rename(run_dir / "server.pid")
    result = CliRunner().invoke(app, ["status", "--run-dir", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["stale_servers_stopped"] == [left.pid] and left.wait(timeout=10) == -signal.SIGTERM

    left, _ = sleeper(tmp_path)
    (tmp_path / "server.pid").rename(run_dir / "policy_server.pid")
    with RunLock(run_dir) as lock:  # what iterate and eval take first
        assert lock.stopped_servers == [left.pid]
    assert left.wait(timeout=10) == -signal.SIGTERM


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_files_and_folders_get_the_umasks_modes(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "config.json", "{}")
        folder = make_work_dir(tmp_path / "round_000", "adapter-")
    finally:
        os.umask(old)
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask


def slow_reverse_ranker(request):
    """Ranks last-shown-first, 0.4 s a call, so that a signal can land inside the rank phase."""
    import re

    from scripted_api import Reply

    n = len(re.findall(r'<response id="\d+">', request["messages"][-1]["content"]))
    return Reply(" > ".join(f"[{i}]" for i in range(n, 0, -1)) if n else "ok", delay_s=0.4 if n else 0.0)


def adapter_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "round_000" / "adapter" / "adapter_model.safetensors"))


ROUNDING_ATOL = 1e-5
"""How far (absolute) a resumed run's adapter weights may lie from an uninterrupted run's. CPU
kernels may round differently from run to run (thread scheduling, memory alignment), and Adam's
g / sqrt(v) enlarges that where a gradient is near zero: measured up to 1.4e-6 (SIGTERM in the
generate phase, 28 of 9,216 weights past 1e-7). One step at the default learning rate (4e-4) moves
a weight about 40 times as far, so a resume that trained on other data, in another order, for
another number of steps or from another initialisation still fails."""


def assert_same_adapter(got: dict, want: dict, what: str = "") -> None:
    """The two adapters' weights agree up to :data:`ROUNDING_ATOL`."""
    import torch

    assert got.keys() == want.keys(), what
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=ROUNDING_ATOL, msg=lambda m: f"{what} {k}: {m}")


def test_sigterm_in_each_phase_then_resume_equals_an_uninterrupted_run(tmp_path, prompts_file):
    """kill -TERM of `iterate` in the generate, rank and train phase, then --resume: the same
    rankings and adapter as an uninterrupted run, no ranking asked twice (the one in flight aside)."""
    from scripted_api import ScriptedAPI

    def args(run_dir: Path, url: str) -> list[str]:
        return ["iterate", "--run-dir", str(run_dir), "--prompts", str(prompts_file), "--rounds", "1", "--prompts-per-round", "4",
                "--num-samples", "3", "--max-new-tokens", "24", "--epochs", "1", "--quiet", "--ranker-base-url", url,
                "--ranker-model", "scripted", "--ranker-cache", str(run_dir.parent / f"{run_dir.name}.sqlite"),
                "--set", "ranker.concurrency=1", "--set", "agreement.min_length=1"]

    def rankings(run_dir: Path) -> list:
        return [(r["prompt_id"], r["ranking"]) for r in read_jsonl(run_dir / "round_000" / "rankings.jsonl")]

    with ScriptedAPI(fallback=slow_reverse_ranker) as api:
        ref = tmp_path / "reference"
        assert CliRunner().invoke(app, args(ref, api.base_url)).exit_code == 0
        for phase in ("generate", "rank", "train"):
            run_dir = tmp_path / phase
            before = len(api.requests)
            proc = subprocess.Popen([sys.executable, "-m", "cyclealign.cli", *args(run_dir, api.base_url)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            started = lambda: (run_dir / "events.jsonl").exists() and any(  # noqa: E731
                e["event"] == "phase_start" and e.get("phase") == phase for e in events(run_dir))
            try:
                wait_for(lambda: started() or proc.poll() is not None, 600, f"the {phase} phase")
                time.sleep(0.5)  # inside the phase
                proc.send_signal(signal.SIGTERM)
                out = proc.communicate(timeout=120)[0].decode()
            finally:
                if proc.poll() is None:
                    proc.kill()
            assert proc.returncode == 143, (phase, out)
            assert not RunDir(run_dir).round(0).is_done(phase), phase
            result = CliRunner().invoke(app, [*args(run_dir, api.base_url), "--resume"])
            assert result.exit_code == 0, (phase, result.output)
            asked = [json.dumps(r["messages"], sort_keys=True) for r in api.requests[before:] if "<response id=" in r["messages"][-1]["content"]]
            assert len(asked) - len(set(asked)) <= 1, phase  # the request in flight at the signal, at most
            assert rankings(run_dir) == rankings(ref), phase
            assert_same_adapter(adapter_weights(run_dir), adapter_weights(ref), phase)
            assert not (run_dir / "lock.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_a_signal_during_eval_stops_it_cleanly_and_the_same_command_finishes(sig, tmp_path, prompts_file):
    """Ctrl-C in `cyclealign eval`: exit 130 with one line, the lock released, no traceback; the
    same command then finishes (held-out prompts: the run's own source, as no eval.prompts is set)."""
    from scripted_api import ScriptedAPI

    run_dir = tmp_path / "run"
    with ScriptedAPI(fallback=slow_reverse_ranker) as api:
        made = CliRunner().invoke(app, [
            "iterate", "--run-dir", str(run_dir), "--prompts", str(prompts_file), "--rounds", "1", "--prompts-per-round", "2",
            "--num-samples", "2", "--max-new-tokens", "8", "--epochs", "1", "--quiet", "--ranker-base-url", api.base_url,
            "--ranker-model", "scripted", "--ranker-cache", str(tmp_path / "cache.sqlite"), "--set", "agreement.min_length=1",
        ], env={"HF_HUB_OFFLINE": "1"})
        assert made.exit_code == 0, made.output
        cmd = [sys.executable, "-m", "cyclealign.cli", "eval", "--run-dir", str(run_dir), "--eval-num-prompts", "2", "--eval-max-new-tokens", "8"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        out = signal_when(proc, lambda: (run_dir / "eval").exists(), sig, "the evaluation", settle_s=0.5)
        assert proc.returncode == 128 + sig, out
        assert "interrupted: stopped by " + sig.name in out and "Traceback" not in out, out
        assert "held-out prompts: the run's own prompt source" in out
        assert not (run_dir / "lock.json").exists()
        again = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
        assert again.returncode == 0, again.stdout + again.stderr
        assert (run_dir / "eval" / "summary.jsonl").exists()


def test_sigkill_mid_generation_then_resume_equals_an_uninterrupted_sequential_run(tmp_path):
    """kill -9 of a pipelined `iterate` (tiny model) once two generation batches and a ranking are
    on disk, then --resume: only the batches not journalled are sampled again, no ranking is asked
    twice (those in flight aside), and generations, rankings and adapter equal those of an
    uninterrupted run with the pipeline off."""
    from scripted_api import ScriptedAPI
    from scripted_run import reverse_ranker
    from tiny_model import build_tiny_model_dir

    model_dir = build_tiny_model_dir(tmp_path / "tiny")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about the number {i}."}) + "\n" for i in range(24)))

    def args(run_dir: Path, url: str) -> list[str]:
        return ["iterate", "--run-dir", str(run_dir), "--prompts", str(prompts), "--rounds", "1", "--prompts-per-round", "24",
                "--num-samples", "3", "--max-new-tokens", "64", "--epochs", "1", "--quiet", "--model", str(model_dir),
                "--device", "cpu", "--ranker-base-url", url, "--ranker-model", "scripted",
                "--ranker-cache", str(run_dir.parent / f"{run_dir.name}.sqlite"), "--ranker-concurrency", "2",
                "--set", "generation.batch_size=2", "--set", "agreement.min_length=1"]

    def outputs(run_dir: Path) -> tuple[list, list]:
        rd = run_dir / "round_000"
        return read_jsonl(rd / "generations.jsonl"), [(r["prompt_id"], r["ranking"]) for r in read_jsonl(rd / "rankings.jsonl")]

    with ScriptedAPI(fallback=reverse_ranker) as api:
        ref = tmp_path / "reference"
        result = CliRunner().invoke(app, [*args(ref, api.base_url), "--no-pipeline"], env={"HF_HUB_OFFLINE": "1"})
        assert result.exit_code == 0, result.output
        assert RunDir(ref).round(0).phases()["rank"]["ranked_during_generate"] == 0

        run_dir = tmp_path / "killed"
        rd = RunDir(run_dir).round(0)
        before = len(api.requests)
        proc = subprocess.Popen([sys.executable, "-m", "cyclealign.cli", *args(run_dir, api.base_url)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})

        def mid_generation() -> bool:
            return (rd.generation_batches.is_file() and rd.generation_batches.read_text().count("\n") >= 2
                    and rd.rankings.is_file() and rd.rankings.read_text().count("\n") >= 1)

        try:
            wait_for(lambda: mid_generation() or proc.poll() is not None, 600, "two batches and a ranking")
            proc.kill()
            out = proc.communicate(timeout=60)[0].decode()
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL, out
        assert not rd.is_done("generate") and not rd.generations.exists()
        kept = len(read_jsonl(rd.generation_batches))
        assert 2 <= kept < 12 and read_jsonl(rd.rankings)  # some batches and rankings survived the kill

        result = CliRunner().invoke(app, [*args(run_dir, api.base_url), "--resume"], env={"HF_HUB_OFFLINE": "1"})
        assert result.exit_code == 0, result.output
        asked = [json.dumps(r["messages"], sort_keys=True) for r in api.requests[before:] if "<response id=" in r["messages"][-1]["content"]]
    assert rd.phases()["generate"]["batches_reused"] == kept  # the rest sampled again, these read back
    assert rd.phases()["rank"]["pipelined"] is True and rd.phases()["rank"]["ranked_during_generate"] > 0
    assert len(asked) - len(set(asked)) <= 2 and len(set(asked)) == 24  # the requests in flight at the kill, at most
    assert outputs(run_dir) == outputs(ref)
    assert_same_adapter(adapter_weights(run_dir), adapter_weights(ref))
