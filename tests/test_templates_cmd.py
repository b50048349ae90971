"""`cyclealign templates`: the overlay loader, `check`, `list`, `copy`, and `render` against what the
ranker really sends to a real local HTTP server (tests/scripted_api.py); template hashes per round."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import tenacity
from scripted_api import ScriptedAPI
from typer.testing import CliRunner

from cyclealign.cli.templates import templates_app
from cyclealign.config import build_config
from cyclealign.data.selection import select_round_prompts
from cyclealign.data.sources import load_prompts
from cyclealign.errors import TemplateError
from cyclealign.evaluation.runner import judge_templates
from cyclealign.demos import read_pool
from cyclealign.round import Round
from cyclealign.progress import NullReporter
from cyclealign.ranker.client import Ranker
from cyclealign.records import Demonstration, Generation
from cyclealign.report.html import write_report
from cyclealign.resources import default_demos_path, default_templates_dir
from cyclealign.rundir import RunDir
from cyclealign.files import write_json, write_jsonl
from cyclealign.templates.files import TEMPLATE_NAMES
from cyclealign.templates.judge import JudgeTemplates
from cyclealign.templates.ranker import RankerTemplates, load_demonstrations

runner = CliRunner()
SHIPPED = default_templates_dir()


def invoke(*args):
    return runner.invoke(templates_app, [str(a) for a in args])


def flat(output):
    """Output with rich's line wrapping undone (it breaks long paths)."""
    return output.replace("\n", "")


def overlay(tmp_path, **files):
    """A user templates folder holding only ``files`` (name without .jinja -> text)."""
    folder = tmp_path / "mine"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.jinja").write_text(text)
    return folder


# -- check -----------------------------------------------------------------------------------


def test_check_passes_on_the_shipped_set_and_on_a_copy(tmp_path):
    result = invoke("check", "--templates", SHIPPED)
    assert result.exit_code == 0, result.output
    assert result.output.count("ok ") == 6 and "error" not in result.output
    assert invoke("copy", "--templates", tmp_path / "copy").exit_code == 0
    result = invoke("check", "--templates", tmp_path / "copy")
    assert result.exit_code == 0, result.output
    assert result.output.count("ok ") == 6 and "(user: " in result.output


def test_check_reports_a_syntax_error_with_file_and_line(tmp_path):
    folder = overlay(tmp_path, ranker_user="Conversation:\n{{ query }}\n{% for r in responses %}\n{{ r }\n")
    result = invoke("check", "--templates", folder)
    assert result.exit_code == 2
    assert f"{folder / 'ranker_user.jinja'}:4: template syntax error" in flat(result.output)
    assert result.output.count("ok ") == 5  # the other files, shipped, are fine


def test_check_reports_missing_and_unknown_variables(tmp_path):
    folder = overlay(
        tmp_path,
        judge_user="{{ query }}\n[1] {{ first }}",  # leaves out `second`
        ranker_correction="Wrong: {{ error }}.\nLabels [1] to [{{ n }}], or a JSON ranking.\n{{ attempts }}",
    )
    result = invoke("check", "--templates", folder)
    out = flat(result.output)
    assert result.exit_code == 2
    assert f"{folder / 'judge_user.jinja'}: template does not use the required variables second" in out
    assert f"{folder / 'ranker_correction.jinja'}:3: unknown template variables attempts" in out


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"ranker_answer": "{% if labels %}best is two{% endif %}"}, "ranker_answer.jinja: the answer rendered for the ranking [3] > [1] > [4] > [2] is 'best is two', which the reply parser rejects (no ranking found)"),
        ({"ranker_answer": "{{ labels | reverse | join(' > ') }}"}, "ranker_answer.jinja: the answer rendered for the ranking [3] > [1] > [4] > [2] is '2 > 4 > 1 > 3'"),
        ({"ranker_answer": "[{{ labels | reverse | join('] > [') }}]"}, "which the reply parser reads as [2] > [4] > [1] > [3]"),
        ({"ranker_system": "Rank the {{ n }} responses.{% if json_output %} Use JSON: ranking.{% endif %}"}, "ranker_system.jinja: the system message (n=4, text answers) does not name the labels [1] and [4]"),
        ({"judge_system": "Pick the better one.", "judge_user": "{{ query }} {{ first }} {{ second }}"}, "judge_system.jinja: the judge messages do not name the verdict labels [1] and [2]"),
    ],
)
def test_check_reports_a_rendering_the_parser_cannot_read(tmp_path, files, expected):
    result = invoke("check", "--templates", overlay(tmp_path, **files))
    assert result.exit_code == 2
    assert expected in flat(result.output)


def test_check_refuses_a_typo_and_a_missing_folder(tmp_path):
    folder = overlay(tmp_path, ranker_sytem="x")
    result = invoke("check", "--templates", folder)
    assert result.exit_code == 2
    assert "unknown template file(s) ranker_sytem.jinja" in flat(result.output) and "ranker_system.jinja" in flat(result.output)
    with pytest.raises(TemplateError, match="ranker_sytem.jinja"):
        RankerTemplates(folder)
    result = invoke("check", "--templates", tmp_path / "nowhere")
    assert result.exit_code == 2 and "templates folder not found" in flat(result.output)
    result = invoke("check", "--templates", folder / "ranker_sytem.jinja")  # a file given for the folder
    assert result.exit_code == 2 and "a file, not a templates folder" in flat(result.output)


# -- the overlay -----------------------------------------------------------------------------


def test_one_overridden_file_works_for_ranker_and_judge(tmp_path):
    shipped_ranker, shipped_judge = RankerTemplates(None), JudgeTemplates(None)
    folder = overlay(tmp_path, ranker_system="Rank {{ n }} responses: [1] .. [{{ n }}].", judge_system="Say [1] or [2].")
    ranker = RankerTemplates(folder)
    assert ranker.system(3) == "Rank 3 responses: [1] .. [3]."
    assert ranker.query_block("User: hi", ["a", "b"]) == shipped_ranker.query_block("User: hi", ["a", "b"])
    assert ranker.files.origin("ranker_system.jinja") == "user" and ranker.files.origin("ranker_user.jinja") == "shipped"
    hashes = ranker.file_hashes()
    assert sorted(hashes) == sorted(TEMPLATE_NAMES[:4]) and hashes != shipped_ranker.file_hashes()
    assert {k for k in hashes if hashes[k] != shipped_ranker.file_hashes()[k]} == {"ranker_system.jinja"}
    assert ranker.template_hash() != shipped_ranker.template_hash()

    cfg = build_config(**{"ranker.templates_dir": folder})
    for judge in (JudgeTemplates(folder), judge_templates(cfg)):
        system, user = judge.messages("User: hi", "a", "b")
        assert system["content"] == "Say [1] or [2]."
        assert user == shipped_judge.messages("User: hi", "a", "b")[1]
        assert judge.file_hashes()["judge_user.jinja"] == shipped_judge.file_hashes()["judge_user.jinja"]
    # a copy of the shipped texts is the same templates: the same hash (reply cache keys unchanged)
    copy = tmp_path / "copy"
    shutil.copytree(SHIPPED, copy)
    assert RankerTemplates(copy).template_hash() == shipped_ranker.template_hash()


def test_judge_templates_are_checked_for_variables(tmp_path):
    with pytest.raises(TemplateError, match=r"judge_system\.jinja:2: unknown template variables query \(this template may use: none\)"):
        JudgeTemplates(overlay(tmp_path, judge_system="Judge.\n{{ query }}"))
    with pytest.raises(TemplateError, match=r"judge_user\.jinja: template does not use the required variables first, second"):
        JudgeTemplates(overlay(tmp_path, judge_system="[1] [2]", judge_user="{{ query }}"))


def test_list_shows_the_override_winning_and_show_prints_it(tmp_path):
    folder = overlay(tmp_path, ranker_answer="{% for l in labels %}[{{ l }}]{% if not loop.last %} > {% endif %}{% endfor %}\n")
    result = invoke("list", "--templates", folder)
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    assert [r[0] for r in rows] == [n.removesuffix(".jinja") for n in TEMPLATE_NAMES]
    assert rows[2] == ["ranker_answer", "user", str(folder / "ranker_answer.jinja")]
    assert rows[0] == ["ranker_system", "shipped", str(SHIPPED / "ranker_system.jinja")]
    assert invoke("show", "ranker_answer", "--templates", folder).output == (folder / "ranker_answer.jinja").read_text()
    assert invoke("show", "judge_user.jinja").output == (SHIPPED / "judge_user.jinja").read_text()
    result = invoke("show", "ranker_sytem")
    assert result.exit_code == 2 and "unknown template 'ranker_sytem'" in flat(result.output)
    assert invoke("path").output.strip() == str(SHIPPED)


def test_copy_copies_six_files_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "t"
    result = invoke("copy", "--templates", target)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in target.iterdir()) == sorted(TEMPLATE_NAMES)
    for name in TEMPLATE_NAMES:
        assert (target / name).read_text() == (SHIPPED / name).read_text()
    (target / "ranker_system.jinja").write_text("edited [1] [{{ n }}]")
    result = invoke("copy", "--templates", target)
    assert result.exit_code == 2 and "would overwrite" in flat(result.output) and "--force" in flat(result.output)
    assert (target / "ranker_system.jinja").read_text() == "edited [1] [{{ n }}]"
    assert invoke("copy", "--templates", target, "--force").exit_code == 0
    assert (target / "ranker_system.jinja").read_text() == (SHIPPED / "ranker_system.jinja").read_text()


def test_render_without_a_run_shows_the_first_shipped_demonstration():
    result = invoke("render", "ranker", "--json")
    assert result.exit_code == 0, result.output
    messages = json.loads(result.output)
    demos = load_demonstrations(default_demos_path())
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * len(demos) + ["user"]
    assert demos[0].query in messages[-1]["content"]
    judge = json.loads(invoke("render", "judge", "--json").output)
    assert [m["role"] for m in judge] == ["system", "user"] and demos[0].responses[1] in judge[1]["content"]
    text = invoke("render", "ranker").output
    assert "system" in text and messages[0]["content"].splitlines()[0] in text
    # A prompt or round of no run is refused, not ignored.
    result = invoke("render", "ranker", "--prompt-id", "p3")
    assert result.exit_code == 2 and "pass the run with --run-dir" in flat(result.output)


# -- render == what the ranker sends; hashes per round ----------------------------------------


def make_run(tmp_path, prompts_file, base_url, templates_dir):
    """A minimal run dir by hand: config.json, round 0 finished up to its pool (and rank phase with
    the shipped templates' hashes), round 1 generated."""
    cfg = build_config(
        run_dir=tmp_path / "run", prompts=prompts_file, rounds=2, prompts_per_round=2, seed=7,
        **{
            "ranker.base_url": base_url, "ranker.model": "scripted", "ranker.templates_dir": templates_dir,
            "ranker.cache_path": tmp_path / "cache.sqlite", "ranker.max_retries": 0, "generation.num_samples": 4,
        },
    )
    run = RunDir(cfg.run_dir)
    run.path.mkdir(parents=True)
    run.config.write_text(cfg.to_json())
    prompts = load_prompts(prompts_file)
    for k in (0, 1):
        gens = [
            Generation(p.id, [1, 2], [f"{p.id} answer {j} <{k}>" for j in range(4)], [[1]] * 4, [-1.0, -2.0, -0.5, -3.0], [True] * 4)
            for p in select_round_prompts(prompts, k, cfg.prompts_per_round, cfg.seed)
        ]
        write_jsonl(run.round(k).generations, [g.to_json() for g in gens])
    pool = [Demonstration("User: Say hi.", ["Hi!", "Go away.", "Hello."], [2, 0, 1], "dynamic", 0, 3)]
    write_jsonl(run.round(0).demo_pool, [d.to_json() for d in pool])
    shipped = RankerTemplates(None).file_hashes()
    write_json(run.round(0).path / "manifest.json", {"round": 0, "phases": {"rank": {"templates": shipped}}})
    return cfg, run


def test_render_equals_what_the_ranker_sends_and_the_manifest_records_template_hashes(tmp_path, prompts_file, caplog):
    folder = overlay(tmp_path, ranker_system="Rank the {{ n }} responses, labels [1] to [{{ n }}]; JSON ranking: {{ json_output }}.")
    with ScriptedAPI(fallback=lambda request: "[1] > [2] > [3] > [4]") as api:
        cfg, run = make_run(tmp_path, prompts_file, api.base_url, folder)
        templates = RankerTemplates(cfg.ranker.templates_dir)
        ranker = Ranker(
            cfg.ranker, base_url=api.base_url, model="scripted", api_key="sk-test", templates=templates,
            retry_wait=tenacity.wait_none(),
        )
        prompts = select_round_prompts(load_prompts(cfg.prompts), 1, cfg.prompts_per_round, cfg.seed)
        static = load_demonstrations(default_demos_path())
        with caplog.at_level(logging.WARNING):
            Round(cfg, run, 1, prompts, NullReporter()).rank(ranker, static, read_pool(run, 1, cfg.agreement.pool_max_size))
    sent = [r["messages"] for r in api.requests]
    assert len(sent) == 2
    for p in prompts:
        result = invoke("render", "ranker", "--run-dir", run.path, "--round", 1, "--prompt-id", p.id, "--json")
        assert result.exit_code == 0, result.output
        rendered = json.loads(result.output)
        assert rendered in sent
        # 4 static demos, then the dynamic one from round 0's pool, shuffled and in the user's system template
        assert len(rendered) == 1 + 2 * 5 + 1 and "Say hi." in rendered[9]["content"]
        assert rendered[0]["content"] == "Rank the 4 responses, labels [1] to [4]; JSON ranking: True."
    # the round manifest records the ranker templates' hashes; the changed file is named in a warning
    recorded = run.round(1).phases()["rank"]["templates"]
    assert recorded == templates.file_hashes() and len(recorded) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("templates changed since round 0: ranker_system.jinja" in w for w in warnings), warnings
    # the report shows the templates per round and marks the change
    write_jsonl(run.metrics, [{"round": 0}, {"round": 1}])
    html = write_report(run.path).read_text()
    assert "Ranker templates" in html and 'class="note">ranker_system.jinja</td>' in html
    assert f"ranker_system {recorded['ranker_system.jinja'][:12]}" in html


def test_render_refuses_an_unknown_prompt_and_call(tmp_path, prompts_file):
    cfg, run = make_run(tmp_path, prompts_file, "http://127.0.0.1:9/v1", None)
    result = invoke("render", "ranker", "--run-dir", run.path, "--round", 1, "--prompt-id", "nope")
    assert result.exit_code == 2 and "no prompt 'nope' in round 1" in flat(result.output)
    result = invoke("render", "rankr")
    assert result.exit_code == 2 and "unknown call 'rankr'" in flat(result.output)
    result = invoke("render", "ranker", "--run-dir", run.path, "--sample", 1)
    assert result.exit_code == 2 and "ranker.consistency=1" in flat(result.output)


def test_the_old_spellings_of_run_and_folder_work_for_one_release_with_a_note(tmp_path, prompts_file):
    cfg, run = make_run(tmp_path, prompts_file, "http://127.0.0.1:9/v1", None)
    new = invoke("render", "ranker", "--run-dir", run.path, "--round", 1, "--json")
    old = invoke("render", "ranker", "--run", run.path, "--round", 1, "--json")
    assert new.exit_code == old.exit_code == 0, old.output
    assert old.stdout == new.stdout and new.stderr == ""
    assert old.stderr.splitlines() == ["cyclealign: --run is deprecated; use --run-dir RUN_DIR (the old form goes in the next release)"]
    both = invoke("render", "ranker", "--run-dir", run.path, "--run", tmp_path)
    assert both.exit_code == 2 and len(both.stderr.splitlines()) == 1 and "give --run-dir only" in both.stderr
    note = "cyclealign: the positional FOLDER is deprecated; use --templates FOLDER (the old form goes in the next release)"
    old = invoke("copy", tmp_path / "old")
    assert old.exit_code == 0 and old.stderr.splitlines() == [note] and sorted(p.name for p in (tmp_path / "old").iterdir()) == sorted(TEMPLATE_NAMES)
    old = invoke("check", tmp_path / "old")
    assert old.exit_code == 0 and old.stderr.splitlines() == [note] and old.stdout == invoke("check", "--templates", tmp_path / "old").stdout
    for command in ("check", "copy"):
        neither = invoke(command)
        assert neither.exit_code == 2 and neither.stderr.splitlines() == ["error: missing option --templates FOLDER"]
