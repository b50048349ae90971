import json

import pytest
from typer.testing import CliRunner

from cyclealign.cli import app
from cyclealign.files import read_jsonl
from scripted_api import ScriptedAPI
from scripted_run import reverse_ranker

runner = CliRunner()


def test_help_lists_the_main_flags():
    result = runner.invoke(app, ["iterate", "--help"], env={"COLUMNS": "200"})  # rich cuts long names at 80
    assert result.exit_code == 0
    for flag in ("--prompts", "--rounds", "--prompts-per-round", "--num-samples", "--run-dir", "--resume", "--ranker-base-url",
                 "--policy-backend", "--policy-base-url"):
        assert flag in result.output
    assert "transformers (CPU or one GPU) | vllm" in " ".join(result.output.split())  # the backend choice


def test_bad_prompt_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    result = runner.invoke(app, ["iterate", "--prompts", str(bad), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "bad.jsonl:2" in result.output
    assert "Traceback" not in result.output


def test_bad_flag_value_names_the_field(tmp_path):
    result = runner.invoke(app, ["iterate", "--num-samples", "1", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "generation.num_samples" in result.output


def test_config_file_with_explicit_flag_override(tmp_path):
    from cyclealign.config import build_config

    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(build_config(**{"generation.num_samples": 5, "run_dir": tmp_path / "run"}).to_json())
    # --num-samples 1 given explicitly overrides the file (and is invalid): the error proves it won
    result = runner.invoke(app, ["iterate", "--config", str(cfg_file), "--num-samples", "1"])
    assert result.exit_code == 2 and "generation.num_samples" in result.output


def test_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"cyclealign {version('cyclealign')}"


@pytest.mark.slow
def test_cli_runs_a_round_and_prints_the_summary(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n" + json.dumps({"prompt": "Name a fruit."}) + "\n")
    with ScriptedAPI(fallback=reverse_ranker) as api:
        args = [
            "iterate", "--prompts", str(prompts), "--rounds", "1", "--prompts-per-round", "2",
            "--num-samples", "2", "--max-new-tokens", "6", "--run-dir", str(tmp_path / "run"),
            "--ranker-base-url", api.base_url, "--ranker-model", "scripted",
            "--ranker-cache", str(tmp_path / "cache.sqlite"),
        ]
        result = runner.invoke(app, args, env={"OPENAI_API_KEY": "sk-cli-test"})
        assert result.exit_code == 0, result.output
        assert "agreement rate" in result.output and "Kendall tau" in result.output
        assert "ranker cost USD" in result.output
        # The start block says what is about to happen; the round's table is printed once.
        out = " ".join(result.output.split())
        assert f"scripted at {api.base_url}" in out and "2 per round, N=2" in out and "about 2 first asks" in out
        assert result.output.count("Kendall tau") == 1
        plan = next(e for e in read_jsonl(tmp_path / "run" / "events.jsonl") if e["event"] == "run_plan")
        assert plan["ranker_calls"] == 2 and plan["rounds"] == 1 and plan["resume"] is False
        assert (tmp_path / "run" / "round_000" / "adapter" / "adapter_config.json").is_file()

        # A budget too small for one call: the run stops cleanly (exit code 3), resumable.
        # (--no-cache: the same requests are in the cache, and cached replies cost nothing.)
        budget = [a if a != str(tmp_path / "run") else str(tmp_path / "run2") for a in args]
        budget += ["--no-cache", "--max-cost-usd", "0.000001", "--ranker-price-input", "1", "--ranker-price-output", "1"]
        result = runner.invoke(app, budget, env={"OPENAI_API_KEY": "sk-cli-test"})
    assert result.exit_code == 3, result.output
    assert "stopped:" in result.output and "--max-cost-usd" in result.output
    assert (tmp_path / "run2" / "round_000" / "generations.jsonl").is_file()


def test_bad_input_leaves_no_run_directory_behind(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nope": 1}\n')
    result = runner.invoke(app, ["iterate", "--prompts", str(bad), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "bad.jsonl:1" in result.output
    assert not (tmp_path / "run").exists()  # fixing the file and re-running needs no --resume


def test_eval_judge_max_tokens_goes_into_the_plan_defaulting_to_the_run_config(tmp_path, monkeypatch):
    import cyclealign.evaluation.runner
    from cyclealign.config import build_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(build_config(**{"run_dir": run_dir, "eval.judge_max_tokens": 24}).to_json())
    plans = []
    line = {"round": -1, "label": "base", "vs": "base", "prompts": 0}
    monkeypatch.setattr(cyclealign.evaluation.runner, "evaluate_run", lambda cfg, plan, environ=None: plans.append((cfg, plan)) or [line])
    held = tmp_path / "held.jsonl"
    for extra in ([], ["--eval-judge-max-tokens", "7"]):
        result = runner.invoke(app, ["eval", "--run-dir", str(run_dir), "--eval-prompts", str(held), *extra])
        assert result.exit_code == 0, result.output
    assert [plan.judge_max_tokens for _, plan in plans] == [24, 7]
    assert {cfg.eval.judge_max_tokens for cfg, _ in plans} == {24}  # the run's config is left as saved
    result = runner.invoke(app, ["eval", "--run-dir", str(run_dir), "--eval-prompts", str(held), "--eval-judge-max-tokens", "3"])
    assert result.exit_code == 2  # min=4


def test_eval_decoding_token_cap_and_several_sources_go_into_the_plan(tmp_path, monkeypatch):
    import cyclealign.evaluation.runner
    from cyclealign.config import build_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(build_config(**{"run_dir": run_dir, "eval.decoding": "sample"}).to_json())
    plans = []
    line = {"round": -1, "label": "base", "vs": "base", "prompts": 0, "decoding": "sample", "max_new_tokens": 128,
            "by_source": {"a": {"prompts": 0}, "b": {"prompts": 0}}}
    monkeypatch.setattr(cyclealign.evaluation.runner, "evaluate_run", lambda cfg, plan, environ=None: plans.append(plan) or [line])
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    result = runner.invoke(app, ["eval", "--run-dir", str(run_dir), "--eval-prompts", str(a)])
    assert result.exit_code == 0, result.output
    assert "sample, 128 tok" in result.output and "b: win rate" in result.output
    result = runner.invoke(app, ["eval", "--run-dir", str(run_dir), "--eval-prompts", str(a), "--eval-prompts", str(b), "--eval-decoding", "greedy", "--eval-max-new-tokens", "48"])
    assert result.exit_code == 0, result.output
    assert [(p.prompts, p.decoding, p.max_new_tokens) for p in plans] == [(a, "sample", 128), ([a, b], "greedy", 48)]
    result = runner.invoke(app, ["eval", "--run-dir", str(run_dir), "--eval-prompts", str(a), "--eval-decoding", "beam"])
    assert result.exit_code == 2 and "eval.decoding" in result.output


def test_eval_defaults_to_the_runs_saved_eval_settings(tmp_path, monkeypatch):
    import cyclealign.evaluation.runner
    from cyclealign.config import build_config

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    saved = {"run_dir": run_dir, "eval.prompts": [str(a), str(b)], "eval.num_prompts": 5, "eval.reward_model": "rm"}
    (run_dir / "config.json").write_text(build_config(**saved).to_json())
    plans = []
    line = {"round": -1, "label": "base", "vs": "base", "prompts": 0}
    monkeypatch.setattr(cyclealign.evaluation.runner, "evaluate_run", lambda cfg, plan, environ=None: plans.append(plan) or [line])
    assert runner.invoke(app, ["eval", "--run-dir", str(run_dir)]).exit_code == 0
    assert runner.invoke(app, ["eval", "--run-dir", str(run_dir), "--eval-prompts", str(a), "--eval-num-prompts", "7"]).exit_code == 0
    assert [(p.prompts, p.num_prompts, p.reward_model) for p in plans] == [([a, b], 5, "rm"), (a, 7, "rm")]
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(build_config(run_dir=bare, prompts=str(b)).to_json())
    result = runner.invoke(app, ["eval", "--run-dir", str(bare)])  # no eval.prompts: the run's own source
    assert result.exit_code == 0 and "held-out prompts: the run's own prompt source" in " ".join(result.output.split())
    assert plans[-1].prompts == b


def test_iterate_eval_flags_reach_the_config(tmp_path, monkeypatch):
    import cyclealign.loop

    seen = []
    monkeypatch.setattr(cyclealign.loop, "iterate", lambda cfg, **kw: seen.append(cfg) or [])
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    base = ["iterate", "--run-dir", str(tmp_path / "run"), "--eval-every", "1"]
    for extra in (["--eval-prompts", str(a)], ["--eval-prompts", str(a), "--eval-prompts", str(b), "--eval-decoding", "sample", "--eval-max-new-tokens", "96"]):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 0, result.output
    assert [(c.eval.prompts, c.eval.decoding, c.eval.max_new_tokens) for c in seen] == [(a, "greedy", 128), ([a, b], "sample", 96)]
    assert seen[1].generation.max_new_tokens == 64  # training keeps its own cap
    result = runner.invoke(app, [*base, "--eval-prompts", str(a), "--eval-max-new-tokens", "0"])
    assert result.exit_code == 2 and "eval.max_new_tokens" in result.output


def test_iterate_train_flags_reach_the_config_and_unset_ones_keep_its_defaults(tmp_path, monkeypatch):
    import cyclealign.loop
    from cyclealign.config.train import TrainConfig

    seen = []
    monkeypatch.setattr(cyclealign.loop, "iterate", lambda cfg, **kw: seen.append(cfg) or [])
    base = ["iterate", "--run-dir", str(tmp_path / "run")]
    extra = ["--train-target", "agreement", "--sft-pro-scale", "--sft-reduction", "sum", "--pro-reward-gap", "--lora-r", "4", "--epochs", "1",
             "--no-carry-optimizer", "--max-grad-norm", "0", "--replay-rounds", "2"]
    for args in ([], extra):
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 0, result.output
    assert seen[0].train == TrainConfig()  # no flag given: the config's defaults
    t = seen[1].train
    assert (t.target, t.sft_pro_scale, t.sft_reduction, t.pro_reward_gap, t.lora_r, t.epochs) == ("agreement", True, "sum", True, 4, 1.0)
    assert (t.carry_optimizer, t.max_grad_norm, t.replay_rounds) == (False, 0.0, 2)


def _commands(group, path=()):
    """Every command of the typer app as (name path, click-level command)."""
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_help_says_what_an_option_takes_not_a_python_type():
    import typer.main

    for path, _ in _commands(typer.main.get_command(app)):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        options = result.output.split("Options", 1)[-1]
        for python_type in ("<bool>", "<list[", "<str>", "<int>", "<float>", "<path>"):
            assert python_type not in options, (path, python_type)
    text = runner.invoke(app, ["iterate", "--help"], env={"COLUMNS": "200"}).output
    panels = [line.split("─ ", 1)[1].split(" ")[0] for line in text.splitlines() if line.startswith("╭─ ")]
    assert panels == ["Options", "Run", "Policy", "Ranker", "Evaluation", "Training"]
    assert "KEY=VALUE" in text


# -- one spelling per concept (cyclealign/cli/common.py) ---------------------------------------------

# Positional arguments that stay: a template's name (``templates show/render NAME``) and a config section
# (``config fields SECTION``); a run directory or a folder is always an option.
POSITIONALS = {"name", "section"}
# ``--rounds N`` is iterate's count of rounds (``config show`` takes iterate's flags); choosing rounds is ``--round R``.
ROUND_COUNT = {("iterate",), ("config", "show")}


def _params(cmd):
    """(visible options, visible arguments, hidden parameters) of a typer command."""
    params = [p for p in cmd.params if p.name != "help"]
    return ([p for p in params if p.param_type_name == "option" and not p.hidden],
            [p for p in params if p.param_type_name == "argument" and not p.hidden],
            [p for p in params if p.hidden])


def _config_field(path, param):
    """The dotted config field an option sets: iterate's (and config show's) from their flag table,
    any other command's from the ``eval.x`` its help names (``default: the run's eval.x``)."""
    import re

    from cyclealign.cli.flags import FLAG_FIELDS

    if path in ROUND_COUNT:
        return FLAG_FIELDS.get(param.name)
    found = re.search(r"\beval\.(\w+)", param.help or "")
    return f"eval.{found.group(1)}" if found else None


def test_every_command_spells_each_concept_one_way():
    import typer.main

    commands = list(_commands(typer.main.get_command(app)))
    spellings, names = {}, {}
    for path, cmd in commands:
        options, arguments, hidden = _params(cmd)
        assert {a.name for a in arguments} <= POSITIONALS, (path, [a.name for a in arguments])
        for p in options:
            opts = tuple(p.opts + p.secondary_opts)
            spellings.setdefault(p.name, set()).add(opts)
            for opt in opts:
                names.setdefault(opt, set()).add(p.name)
            assert "--run" not in opts, path
            assert "--rounds" not in opts or (path in ROUND_COUNT and p.name == "rounds" and p.type_descriptor.annotation is int), path
            field = _config_field(path, p)
            if field is not None and field.startswith("eval."):
                assert opts == ("--eval-" + field.removeprefix("eval.").replace("_", "-"),), (path, opts, field)
        for p in hidden:  # a hidden parameter is the deprecated spelling of a visible one
            assert p.name.startswith("old_"), (path, p.name)
    assert spellings["run_dir"] == {("--run-dir",)}
    assert spellings["templates"] == {("--templates",)}
    assert spellings["round_index"] == {("--round",)}
    assert spellings["verbose"] == {("--verbose", "-v")}
    one_way = {name: opts for name, opts in spellings.items() if len(opts) > 1}
    assert one_way == {}, one_way  # the same parameter spelled two ways in two commands
    one_name = {opt: n for opt, n in names.items() if len(n) > 1}
    assert one_name == {}, one_name  # one option string, two meanings
    takes_run = {" ".join(path) for path, cmd in commands if "run_dir" in {p.name for p in cmd.params}}
    assert takes_run == {"iterate", "config show", "train-round", "eval", "reparse", "export", "report", "publish", "templates render", "status"}


def test_help_hides_the_deprecated_spellings():
    import re

    import typer.main

    for path, cmd in _commands(typer.main.get_command(app)):
        _, _, hidden = _params(cmd)
        text = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
        usage = next(line for line in text.splitlines() if "Usage:" in line)
        for p in hidden:
            for spelling in getattr(p, "opts", []):
                if spelling.startswith("--"):
                    assert not re.search(rf"(?<![\w-]){spelling}(?![\w-])", text), (path, spelling)
            if p.metavar:  # a hidden positional: not in the usage line either
                assert p.metavar not in usage, (path, usage)


def _new_run(tmp_path):
    from cyclealign.config import build_config
    from cyclealign.rundir import RunDir

    cfg = build_config(run_dir=tmp_path / "run", rounds=1)
    RunDir(cfg.run_dir).prepare(cfg.to_json(), resume=False)
    return str(cfg.run_dir)


RUN_DIR_NOTE = "cyclealign: the positional RUN_DIR is deprecated; use --run-dir RUN_DIR (the old form goes in the next release)"


def test_the_positional_run_dir_still_works_for_one_release_with_a_note(tmp_path):
    run = _new_run(tmp_path)
    new = runner.invoke(app, ["status", "--run-dir", run, "--json"])
    old = runner.invoke(app, ["status", run, "--json"])
    assert new.exit_code == old.exit_code == 0, old.output
    assert old.stdout == new.stdout and json.loads(new.stdout)["rounds_scheduled"] == 1
    assert new.stderr == "" and old.stderr.splitlines() == [RUN_DIR_NOTE]
    assert runner.invoke(app, ["status", "--run-dir", run, run, "--json"]).exit_code == 0  # both, the same path
    other = str(tmp_path / "other")
    both = runner.invoke(app, ["status", "--run-dir", other, run])
    assert both.exit_code == 2 and both.stdout == ""
    assert both.stderr.splitlines() == [f"error: --run-dir {other} disagrees with {run} given as the positional RUN_DIR (deprecated); give --run-dir only"]
    # every command that took the positional: the note, then the command's own error about that folder
    nowhere = str(tmp_path / "nowhere")
    for args in (["status"], ["report"], ["reparse"], ["eval"], ["publish", "--to", "http://127.0.0.1:9"],
                 ["export", "--format", "dpo", "--out", str(tmp_path / "out")]):
        old = runner.invoke(app, [args[0], nowhere, *args[1:]])
        lines = old.stderr.splitlines()
        assert old.exit_code == 2 and lines[0] == RUN_DIR_NOTE and nowhere in lines[1], (args, old.output)
        neither = runner.invoke(app, args)
        assert neither.exit_code == 2 and neither.stderr.splitlines() == ["error: missing option --run-dir RUN_DIR"], (args, neither.output)


def test_eval_takes_its_old_flag_names_for_one_release_with_a_note(tmp_path, monkeypatch):
    import cyclealign.evaluation.runner
    from cyclealign.config import build_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(build_config(run_dir=run_dir).to_json())
    plans = []
    line = {"round": -1, "label": "base", "vs": "base", "prompts": 0}
    monkeypatch.setattr(cyclealign.evaluation.runner, "evaluate_run", lambda cfg, plan, environ=None: plans.append(plan) or [line])
    held = tmp_path / "held.jsonl"
    old = ["--prompts", str(held), "--num-prompts", "3", "--decoding", "sample", "--max-new-tokens", "40",
           "--judge-max-tokens", "8", "--reward-model", "rm"]
    new = ["--eval-prompts", str(held), "--eval-num-prompts", "3", "--eval-decoding", "sample", "--eval-max-new-tokens", "40",
           "--eval-judge-max-tokens", "8", "--eval-reward-model", "rm"]
    result = runner.invoke(app, ["eval", "--run-dir", str(run_dir), *old])
    assert result.exit_code == 0, result.output
    notes = [ln for ln in result.stderr.splitlines() if "deprecated" in ln]
    assert sorted(notes) == sorted(f"cyclealign: {o} is deprecated; use {n} (the old form goes in the next release)" for o, n in zip(old[::2], new[::2]))
    assert runner.invoke(app, ["eval", "--run-dir", str(run_dir), *new]).exit_code == 0
    assert plans[0] == plans[1] and (plans[0].num_prompts, plans[0].decoding, plans[0].reward_model) == (3, "sample", "rm")
    result = runner.invoke(app, ["eval", "--run-dir", str(run_dir), "--eval-num-prompts", "3", "--num-prompts", "4"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: --eval-num-prompts 3 disagrees with 4 given as --num-prompts (deprecated); give --eval-num-prompts only"]
