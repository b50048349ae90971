"""Everything a later phase would refuse is refused before anything starts or is paid for: one line,
exit 2, and no run directory left behind; broken run-directory files and OS errors are one line too."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from cyclealign.cli import app

runner = CliRunner()


def iterate(tmp_path, *args):
    return runner.invoke(app, ["iterate", "--run-dir", str(tmp_path / "run"), "--rounds", "1", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--promote-if", "win_rate>=0.5"], "--promote-if needs --eval-every"),
        (["--policy-base-url", "http://127.0.0.1:9/v1"], "is for generation.backend=vllm (--policy-backend vllm)"),
        (["--ranker-model", "gpt-4o-mini"], "needs ranker.base_url (--ranker-base-url): without it the embedded SmolLM2 ranks"),
        (["--set", "train.lora_target_modules=[q_proj, "], "--set train.lora_target_modules=[q_proj, : not valid YAML"),
        (["--set", "vllm.max_lora_rank=24"], "vllm.max_lora_rank: Input should be 1, 8, 16"),
    ],
)
def test_flags_a_later_phase_would_refuse_are_refused_at_once(tmp_path, args, message):
    result = iterate(tmp_path, *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")
def test_a_cuda_device_or_qlora_without_cuda_is_refused_before_the_run_starts(tmp_path):
    result = iterate(tmp_path, "--device", "cuda")
    assert result.exit_code == 2 and "model.device='cuda': this torch is built without CUDA" in result.output, result.output
    result = iterate(tmp_path, "--qlora")
    assert result.exit_code == 2 and "train.qlora (--qlora) needs a CUDA device" in result.output, result.output
    assert not (tmp_path / "run").exists()
    # the same directory can then be used at once
    assert "already holds a run" not in iterate(tmp_path, "--device", "cuda:3").output


def test_templates_are_checked_with_templates_checks_rules_at_start(tmp_path):
    folder = tmp_path / "tpl"
    folder.mkdir()
    (folder / "ranker_user.jinja").write_text("{{ query }} {% for r in responses %}{{ r.text }}{% endfor %}")
    result = iterate(tmp_path, "--templates", str(folder))
    assert result.exit_code == 2 and "cannot render: 'str object' has no attribute 'text'" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_a_broken_run_directory_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    result = runner.invoke(app, ["iterate", "--run-dir", str(afile), "--rounds", "1"])
    assert result.exit_code == 2 and "a file, not a run directory" in result.output, result.output
    run = tmp_path / "r"
    (run / "round_000").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"run_dir": str(run)}))
    (run / "round_000" / "manifest.json").write_text('{"phases": {"gen')  # torn by a crash
    result = runner.invoke(app, ["status", "--run-dir", str(run)])
    assert result.exit_code == 2 and "round_000/manifest.json: not valid JSON" in result.output, result.output
    result = runner.invoke(app, ["publish", "--run-dir", str(run), "--to", "notaurl"])
    assert result.exit_code == 2 and "--to 'notaurl': not an http(s):// URL" in result.output, result.output
    assert "Traceback" not in result.output


def test_a_run_file_row_that_is_not_a_record_is_one_line(tmp_path):
    """A line of generations.jsonl that parses as JSON but is no Generation (a hand edit, another
    tool's file) gives exit 2 naming the file and line (every reader goes through
    ``rundir.read_records``: ``tests/test_rundir.py`` checks each record file)."""
    run = tmp_path / "r"
    (run / "round_000").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"run_dir": str(run)}))
    (run / "round_000" / "manifest.json").write_text(json.dumps({"phases": {"generate": {}, "rank": {}}}))
    (run / "round_000" / "generations.jsonl").write_text('{"prompt_id": "p0", "colour": "blue"}\n')
    (run / "round_000" / "rankings.jsonl").write_text('{"prompt_id": "p0", "ranking": [0]}\n')
    for args in (["reparse", "--run-dir", str(run)], ["reparse", "--run-dir", str(run), "--dry-run"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "round_000/generations.jsonl:1: not a Generation row" in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_a_refused_connection_is_told_at_once_and_leaves_no_run(tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--ranker-base-url", f"http://127.0.0.1:{port}/v1", "--ranker-model", "judge"]  # loopback: no key needed
    for _ in range(2):  # the same command again meets the same error, not "already holds a run"
        t0 = time.monotonic()
        result = iterate(tmp_path, *args)
        assert result.exit_code == 2 and f"connection refused (nothing listens on 127.0.0.1:{port}" in result.output, result.output
        assert time.monotonic() - t0 < 20 and not (tmp_path / "run").exists()


def test_a_loopback_ranker_needs_no_key_a_remote_one_does():
    from cyclealign.config.ranker import RankerConfig
    from cyclealign.errors import RankerError
    from cyclealign.ranker.http import api_key_from_env

    assert api_key_from_env(RankerConfig(base_url="http://127.0.0.1:8001/v1", model="m"), {}) == "EMPTY"
    assert api_key_from_env(RankerConfig(base_url="http://localhost:8001/v1", model="m"), {"OPENAI_API_KEY": "k"}) == "k"
    with pytest.raises(RankerError, match="set the environment variable OPENAI_API_KEY"):
        api_key_from_env(RankerConfig(base_url="https://api.example.com/v1", model="m"), {})


def test_dry_run_prints_the_plan_and_calls_writes_and_pays_nothing(tmp_path, prompts_file):
    from cyclealign.config import build_config
    from cyclealign.data.sources import load_prompts
    from cyclealign.ranker.estimate import estimate_run
    from cyclealign.ranker.pricing import resolve_price
    from cyclealign.resources import default_demos_path, default_templates_dir
    from cyclealign.templates.ranker import RankerTemplates, load_demonstrations

    args = ["--dry-run", "--prompts", str(prompts_file), "--prompts-per-round", "3", "--rounds", "2",
            "--ranker-base-url", "https://api.example.com/v1", "--ranker-model", "gpt-4o-mini",
            "--set", "ranker.consistency=3", "--set", "ranker.shuffle=true"]
    result = iterate(tmp_path, *args)  # no key in the environment: nothing is called
    assert result.exit_code == 0, result.output
    assert "18 first asks" in result.output and "USD" in result.output and not (tmp_path / "run").exists()
    cfg = build_config(**{"prompts": prompts_file, "prompts_per_round": 3, "rounds": 2, "ranker.base_url": "https://api.example.com/v1",
                          "ranker.model": "gpt-4o-mini", "ranker.consistency": 3})
    est = estimate_run(cfg, load_prompts(prompts_file), RankerTemplates(default_templates_dir()),
                       load_demonstrations(default_demos_path()), rounds=2)
    assert est.calls == 18 and est.completion_tokens == 18 * cfg.ranker.max_tokens
    assert est.cost_usd == pytest.approx(resolve_price("gpt-4o-mini").cost_usd(est.prompt_tokens, est.completion_tokens))
    assert 300 < est.prompt_tokens_per_call[0] <= est.prompt_tokens_per_call[1]
    unknown = build_config(**{"ranker.base_url": "https://x/v1", "ranker.model": "my-own-judge"})
    assert estimate_run(unknown, load_prompts(prompts_file), RankerTemplates(default_templates_dir()), [], 1).cost_usd is None


@pytest.fixture
def read_only_run(tmp_path):
    """A run directory on a read-only bind mount (root ignores file modes); skipped where mounting is not allowed."""
    import shutil
    import subprocess

    from cyclealign.config import build_config
    from cyclealign.rundir import RunDir

    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    src, ro = tmp_path / "src", tmp_path / "ro"
    ro.mkdir()
    cfg = build_config(**{"run_dir": src, "rounds": 1, "ranker.base_url": "http://127.0.0.1:9/v1", "ranker.model": "m"})
    RunDir(src).prepare(cfg.to_json(), resume=False)
    (src / "round_000").mkdir()
    (src / "round_000" / "rankings.jsonl").write_text("")
    (src / "round_000" / "generations.jsonl").write_text("")
    if subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("bind mounts are not allowed here")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("read-only remounts are not allowed here")
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_a_read_only_run_directory_is_one_line(read_only_run):
    for args in (["iterate", "--run-dir", str(read_only_run), "--resume"], ["reparse", "--run-dir", str(read_only_run), "--rewind"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Read-only file system" in result.output and "Traceback" not in result.output, (args, result.output)
