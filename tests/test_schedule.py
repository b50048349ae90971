"""Config layers and --set, prompt selection across rounds, the run lock, the promotion gate, status."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from cyclealign.cli import app
from cyclealign.config import Config, build_config, config_fields
from cyclealign.config.files import flatten
from cyclealign.data.selection import select_next_prompts, select_round_prompts
from cyclealign.errors import ConfigError, LockedError
from cyclealign.records import PromptRecord
from cyclealign.rundir import RunDir
from cyclealign.files import write_jsonl
from cyclealign.runlock import RunLock, lock_holder
from cyclealign.schedule import parse_conditions, promote, run_status

runner = CliRunner()


def show(*args: str) -> dict:
    result = runner.invoke(app, ["config", "show", "--format", "json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


# -- config --------------------------------------------------------------------------------


def test_config_show_takes_iterates_flags_and_shows_what_iterate_would_run(tmp_path, monkeypatch):
    import cyclealign.loop

    seen = []
    monkeypatch.setattr(cyclealign.loop, "iterate", lambda cfg, **kw: seen.append(cfg) or [])
    flags = ["--run-dir", str(tmp_path / "run"), "--num-samples", "3", "--lora-r", "8", "--max-grad-norm", "0.5",
             "--ranker-consistency", "3", "--eval-max-new-tokens", "96", "--set", "train.epochs=3"]
    assert runner.invoke(app, ["iterate", *flags]).exit_code == 0
    assert show(*flags) == json.loads(seen[-1].to_json())
    # A run directory that holds a run is shown as a resume of it, under the path given now.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(build_config(run_dir="elsewhere/run", **{"train.lora_r": 4}).to_json())
    shown = show("--run-dir", str(tmp_path / "run"), "--rounds", "5")
    assert (shown["run_dir"], shown["train"]["lora_r"], shown["rounds"]) == (str(tmp_path / "run"), 4, 5)


def test_config_fields_lists_every_field_with_its_default_and_meaning():
    from cyclealign.config import Config, build_config
    from cyclealign.config.fields import config_fields
    from cyclealign.config.files import flatten

    rows = {r.name: r for r in config_fields(Config)}
    assert set(rows) == set(flatten(json.loads(build_config().to_json())))  # every field, each once
    assert (rows["train.loss"].type, rows["train.loss"].default) == ("pro | rrhf | dpo-pl | lipo | dpo", "pro")
    assert rows["train.learning_rate"].description
    result = runner.invoke(app, ["config", "fields", "train"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "train.max_grad_norm" in result.output and "ranker.model" not in result.output
    result = runner.invoke(app, ["config", "fields", "nope"])
    assert result.exit_code == 2 and "not a section" in result.output


def test_precedence_defaults_file_flags_for_a_nested_field(tmp_path, monkeypatch):
    import cyclealign.loop

    seen = []
    monkeypatch.setattr(cyclealign.loop, "iterate", lambda cfg, **kw: seen.append(cfg) or [])
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(textwrap.dedent(f"""\
        run_dir: {tmp_path / 'run'}
        generation:
          num_samples: 5
          temperature: 0.7
        train:
          lora_r: 4
        """))
    base = ["iterate", "--config", str(cfg_file)]
    for args in ([], ["--num-samples", "3"], ["--num-samples", "3", "--set", "generation.num_samples=6"]):
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 0, result.output
    assert [c.generation.num_samples for c in seen] == [5, 3, 6]  # file < flag < --set
    assert {c.generation.temperature for c in seen} == {0.7}  # the file's other fields stay
    assert {c.generation.top_p for c in seen} == {0.95}  # defaults fill the rest
    assert {c.train.lora_r for c in seen} == {4}
    # config show gives the same layers, as YAML by default
    result = runner.invoke(app, ["config", "show", "--config", str(cfg_file), "--set", "train.lora_alpha=8"])
    assert result.exit_code == 0 and "lora_r: 4" in result.output and "lora_alpha: 8" in result.output
    # a JSON file is read too, and an error names the file and the key
    bad = tmp_path / "bad.yaml"
    bad.write_text("generation:\n  num_samples: 1\n")
    result = runner.invoke(app, [*["iterate", "--config", str(bad)]])
    assert result.exit_code == 2 and "bad.yaml" in result.output and "generation.num_samples" in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("generation:\n  num_samples: [4\n")
    result = runner.invoke(app, ["config", "show", "--config", str(broken)])
    assert result.exit_code == 2 and "broken.yaml:" in result.output


def _other_value(key: str, default: object, schema: dict) -> object:
    """A valid value different from ``default`` for the field ``key``."""
    if isinstance(default, bool):
        return not default
    if key.endswith("_dir") or key.endswith("_path") or key in ("prompts", "eval.prompts", "train.accelerate_config"):
        return "some/where.jsonl" if key != "run_dir" else "runs/other"
    choices = schema.get("enum") or next((s.get("enum") for s in schema.get("anyOf", []) if s.get("enum")), None)
    if choices:
        return next(c for c in choices if c != default)
    if isinstance(default, int) and not isinstance(default, bool):
        return default + 1 if schema.get("maximum", 10**9) > default else default - 1
    if isinstance(default, float):
        hi = schema.get("maximum") or schema.get("exclusiveMaximum")
        return default / 2 if hi is not None and default * 1.5 + 0.5 > hi else default * 1.5 + 0.5
    if isinstance(default, list):
        return ["x-value"]
    types = {s.get("type") for s in schema.get("anyOf", [])} | {schema.get("type")}
    if "integer" in types:
        return 3
    if "number" in types:
        return 0.5
    return "x-value"


def test_every_config_field_is_settable_from_the_command_line():
    defaults = flatten(Config().model_dump(mode="json"))
    defs = Config.model_json_schema()["$defs"]
    prerequisites = {  # cross-field checks: what a field needs beside it
        "ranker.batch": ["ranker.base_url=http://127.0.0.1:9/v1", "ranker.model=m"],
        "ranker.base_url": ["ranker.model=m"],
        "eval.every": ["eval.prompts=held.jsonl"],
        "ranker.consistency": ["ranker.shuffle=true"],
        "ranker.shuffle": [],
        "train.qlora": ["train.merge=false"],
        "train.merge": ["train.qlora=false"],
        "generation.num_samples": ["ranker.max_tokens=64"],
        "ranker.model": ["ranker.base_url=http://127.0.0.1:9/v1"],
        "vllm.base_url": ["generation.backend=vllm"],
    }
    fields = config_fields()
    assert set(fields) == set(defaults)
    for key in fields:
        section, _, name = key.rpartition(".")
        props = (defs[Config.model_fields[section].annotation.__name__]["properties"] if section else Config.model_json_schema()["properties"])
        value = _other_value(key, defaults[key], props[name])
        if key == "ranker.consistency":
            value = 2
        got = flatten(show("--set", f"{key}={json.dumps(value)}", *sum((["--set", p] for p in prerequisites.get(key, [])), [])))
        want = value
        if isinstance(defaults[key], float) and isinstance(value, int):
            want = float(value)
        assert got[key] == want, key
        assert fields[key], f"{key} has no description (its help text)"


def test_set_errors_name_the_key():
    result = runner.invoke(app, ["config", "show", "--set", "generation.num_sample=3"])
    assert result.exit_code == 2 and "generation.num_sample" in result.output and "generation.num_samples" in result.output
    result = runner.invoke(app, ["config", "show", "--set", "generation.num_samples=1"])
    assert result.exit_code == 2 and "generation.num_samples" in result.output
    result = runner.invoke(app, ["config", "show", "--set", "nonsense"])
    assert result.exit_code == 2 and "section.field=value" in result.output


def test_config_show_yaml_loads_back_and_schema_lists_fields(tmp_path):
    result = runner.invoke(app, ["config", "show", "--set", "train.lora_target_modules=[q_proj, v_proj]", "--set", "rounds=5"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "shown.yaml"
    path.write_text(result.output)
    cfg = Config.from_json_file(path)
    assert cfg.train.lora_target_modules == ["q_proj", "v_proj"] and cfg.rounds == 5
    schema = json.loads(runner.invoke(app, ["config", "schema"]).output)
    assert "generation" in schema["properties"] and "num_samples" in schema["$defs"]["GenerationConfig"]["properties"]


# -- prompt selection ----------------------------------------------------------------------


def _prompts(n: int) -> list[PromptRecord]:
    return [PromptRecord(f"p{i}", [{"role": "user", "content": f"prompt {i}"}]) for i in range(n)]


@pytest.mark.parametrize("n,per_round,seed", [(5, 2, 0), (7, 3, 1), (4, 4, 2), (3, 5, 3), (10, 3, 4)])
def test_next_prompts_equal_the_fixed_schedule_on_a_fixed_source(n, per_round, seed):
    prompts = _prompts(n)
    used: dict[str, int] = {}
    for r in range(7):
        got = select_next_prompts(prompts, per_round, seed, used)
        want = select_round_prompts(prompts, r, per_round, seed)
        if per_round >= n:  # every round holds all prompts; only their order may differ
            assert sorted(p.id for p in got) == sorted(p.id for p in want)
        else:
            assert got == want, r
        for p in got:
            used[p.content_hash] = used.get(p.content_hash, 0) + 1


def test_a_grown_source_is_drawn_before_any_prompt_repeats():
    prompts = _prompts(6)
    used = {p.content_hash: 1 for p in prompts}
    grown = prompts + [PromptRecord(f"new{i}", [{"role": "user", "content": f"new {i}"}]) for i in range(3)]
    random.Random(0).shuffle(grown)  # ids and positions may change: prompts are matched by content
    got = select_next_prompts(grown, 4, 0, used)
    assert {p.id for p in got[:3]} == {"new0", "new1", "new2"} and got[3].id.startswith("p")
    assert [p.id for p in select_next_prompts(grown, 4, 0, used, new_only=True)] == [p.id for p in got[:3]]
    assert select_next_prompts(prompts, 4, 0, used, new_only=True) == []


# -- the lock ------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from cyclealign.runlock import RunLock
with RunLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_lock_refuses_a_second_holder_and_a_killed_holder_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        holder = lock_holder(run_dir)
        assert holder["pid"] == proc.pid and holder["live"] is True
        with pytest.raises(LockedError, match=f"pid {proc.pid}"):
            with RunLock(run_dir):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock_holder(run_dir)["live"] is False  # the record stays, the lock went with the process
    with RunLock(run_dir) as lock:
        assert lock.took_over["pid"] == proc.pid
        assert lock_holder(run_dir)["pid"] == os.getpid()
    assert lock_holder(run_dir) is None  # a clean release leaves no record


def test_iterate_on_a_locked_run_exits_5_and_touches_nothing(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(build_config(run_dir=run_dir).to_json())
    before = sorted(p.name for p in run_dir.iterdir())
    with RunLock(run_dir):
        result = runner.invoke(app, ["iterate", "--run-dir", str(run_dir), "--resume"])
    assert result.exit_code == 5, result.output
    assert "in use by another cyclealign process" in " ".join(result.output.split())
    assert sorted(p.name for p in run_dir.iterdir() if p.name != "lock") == before  # the lock file itself stays


# -- promotion and status ------------------------------------------------------------------


def _finished_round(run: RunDir, k: int, adapter: bool = True) -> None:
    rd = run.round(k)
    (rd.adapter).mkdir(parents=True)
    for phase in ("generate", "rank", "agreement"):
        rd.mark_done(phase)
    rd.mark_done("train", adapter=adapter)
    rd.mark_done("metrics", round=k, agreement_rate=0.5, kendall_tau=0.1, train_loss=1.0)


def test_promotion_gate_writes_promoted_only_when_the_evaluation_passes(tmp_path):
    run = RunDir(tmp_path / "run")
    (run.path).mkdir()
    run.config.write_text(build_config(run_dir=run.path).to_json())
    conds = parse_conditions("win_rate>=0.5, by_source.hh.win_rate>0.4")
    assert not promote(run, conds).promoted  # no round yet
    _finished_round(run, 0)
    p = promote(run, conds)
    assert not p.promoted and "--eval-every" in p.reason
    write_jsonl(run.path / "eval" / "summary.jsonl", [{"round": -1, "win_rate": None}, {"round": 0, "win_rate": 0.45, "by_source": {"hh": {"win_rate": 0.5}}}])
    p = promote(run, conds)
    assert not p.promoted and "win_rate=0.45 fails win_rate>=0.5" in p.reason and not (run.path / "promoted").exists()
    write_jsonl(run.path / "eval" / "summary.jsonl", [{"round": 0, "win_rate": 0.6, "by_source": {"hh": {"win_rate": 0.5}}}])
    p = promote(run, conds)
    assert p.promoted and (run.path / "promoted").read_text().strip() == str(run.round(0).adapter.resolve())
    with pytest.raises(ConfigError, match="METRIC OP NUMBER"):
        parse_conditions("win_rate=>0.5")


def test_status_reports_rounds_phase_spend_and_lock(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config.write_text(build_config(run_dir=run.path, rounds=3).to_json())
    _finished_round(run, 0)
    run.round(1).mark_done("generate")
    run.record_call(1, {"prompt_tokens": 100, "completion_tokens": 10, "cost_usd": 0.002})
    st = run_status(run.path)
    assert (st["rounds_done"], st["rounds_scheduled"], st["state"], st["round"]) == (1, 3, "interrupted", 1)
    assert st["phases_done"] == ["generate"] and st["phase_pending"] == "rank"
    assert st["spend"]["cost_usd"] == pytest.approx(0.002) and st["last_metrics"]["agreement_rate"] == 0.5
    with RunLock(run.path):
        assert run_status(run.path)["state"] == "running"
        result = runner.invoke(app, ["status", "--run-dir", str(run.path)])
    assert result.exit_code == 0 and "running" in result.output and "next: rank" in result.output
    # The embedded ranker costs nothing: its calls are not shown as paid ones at 0 USD.
    assert "1 calls to the embedded ranker (free)" in result.output and "USD" not in result.output
    result = runner.invoke(app, ["status", "--run-dir", str(run.path), "--json"])
    assert json.loads(result.output)["lock"] is None and json.loads(result.output)["ranker"] is None
    paid = RunDir(tmp_path / "paid")
    paid.path.mkdir()
    paid.config.write_text(build_config(run_dir=paid.path, **{"ranker.base_url": "http://127.0.0.1:9/v1", "ranker.model": "gpt-x"}).to_json())
    paid.record_call(0, {"prompt_tokens": 100, "completion_tokens": 10, "cost_usd": 0.002})
    assert "1 paid calls, 100 + 10 tokens, 0.0020 USD" in " ".join(runner.invoke(app, ["status", "--run-dir", str(paid.path)]).output.split())
    assert runner.invoke(app, ["status", "--run-dir", str(tmp_path / "nothing")]).exit_code == 2
