"""`cyclealign report`: an HTML report with plots, from a recorded run directory (real files)."""

from __future__ import annotations

import base64
import json
import re

import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from cyclealign.cli import app
from cyclealign.config import build_config
from cyclealign.data.selection import select_round_prompts
from cyclealign.data.sources import load_prompts
from cyclealign.errors import RunDirError
from cyclealign.models.loading import EMBEDDED_NAME
from cyclealign.records import Generation, RankResult
from cyclealign.report.html import write_report
from cyclealign.rundir import RunDir
from cyclealign.files import write_jsonl

runner = CliRunner()


def flat(output):
    """CLI output with rich's line wrapping undone (it breaks long paths)."""
    return output.replace("\n", "")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRIC_PLOTS = ["agreement", "loss", "unranked", "pool", "ranker", "phases"]


def metrics_line(k, **extra):
    line = {
        "round": k, "prompts": 4, "responses": 16, "ranked": 4 - k, "unranked": k,
        "agreement_rate": [0.5, 0.625, 0.8125][k], "kendall_tau": [-0.25, 0.125, 0.4375][k],
        "pool_added": k + 1, "pool_size": [1, 3, 6][k],
        "train_loss": [2.5, 2.0, 1.75][k], "ranking_loss": [2.25, 1.8, 1.6][k], "sft_loss": [2.5, 2.0, 1.5][k],
        "train_ranking_accuracy": 0.5, "unranked_reasons": {} if k == 0 else {"unparsable": 1, "api error": k - 1},
        "ranker_calls": 5, "ranker_api_calls": 5 - k, "ranker_cache_hits": k,
        "tokens_sent": [12000, 11000, 10500][k], "tokens_received": [300, 280, 260][k],
        "ranker_cost_usd": [0.0021, 0.0019, 0.0018][k], "consistency_rate": None, "generated_tokens": 900,
        "phase_s": {"generate": 20.5, "rank": 30.25 + k, "agreement": 0.25, "train": 22.0},
    }
    line.update(extra)
    return line


def make_run(tmp_path, *, with_eval=True, metrics=None, **settings):
    """A recorded 3-round run: metrics.jsonl, generations and rankings, and eval/ files;
    ``settings``: dotted config fields over a ranker ``m`` at ``http://x/v1`` (no known price)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Question <{i}>?"}) + "\n" for i in range(12)))
    cfg = build_config(
        run_dir=tmp_path / "run", prompts=prompts, rounds=3, prompts_per_round=4,
        **{"ranker.base_url": "http://x/v1", "ranker.model": "m", **settings},
    )
    run = RunDir(cfg.run_dir)
    run.prepare(cfg.to_json(), resume=False)
    for k in range(3):
        gens, results = [], []
        for i, p in enumerate(select_round_prompts(load_prompts(prompts), k, 4, cfg.seed)):
            gens.append(Generation(p.id, [1], [f"r{k} {p.id} answer {j}" for j in range(4)], [[1]] * 4, [-1.0] * 4, [True] * 4))
            results.append(RankResult(p.id, [1, 3, 0, 2]) if i >= k else RankResult(p.id, None, reason="unparsable after 3 attempts: x"))
        write_jsonl(run.round(k).generations, [g.to_json() for g in gens])
        write_jsonl(run.round(k).rankings, [r.to_json() for r in results])
    write_jsonl(run.metrics, metrics if metrics is not None else [metrics_line(k) for k in range(3)])
    if with_eval:
        base = {"round": -1, "label": "base", "vs": "base", "prompts": 10, "kendall_tau": 0.1, "agreement_rate": 0.5,
                "length_mean": 40.0, "length_std": 5.0, "reward_mean": None, "reward_std": None}
        rounds = [
            {"round": k, "label": f"round {k}", "vs": "base", "prompts": 10, "wins": w, "losses": l, "ties": 10 - w - l,
             "win_rate": rate, "ci_low": lo, "ci_high": hi, "kendall_tau": None, "agreement_rate": 0.625,
             "length_mean": 42.5, "length_std": 6.25, "reward_mean": 0.3125, "reward_std": 0.1}
            for k, w, l, rate, lo, hi in [(0, 5, 4, 0.5556, 0.2667, 0.8112), (2, 7, 2, 0.7778, 0.4526, 0.9368)]
        ]
        write_jsonl(run.path / "eval" / "summary.jsonl", [base, *rounds])
        samples = [
            {"round": k, "label": label, "prompt_id": f"h{i}", "prompt": f"User: held-out question {i}",
             "response": f"{label} says <b>{i}</b> & more"}
            for k, label in [(-1, "base"), (0, "round 0"), (2, "round 2")]
            for i in range(7)
        ]
        write_jsonl(run.path / "eval" / "samples.jsonl", samples)
    return run


def embedded_images(html):
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_full_report_embeds_plots_numbers_and_samples(tmp_path):
    run = make_run(tmp_path)
    path = write_report(run.path)
    assert path == run.path / "report" / "report.html"
    html = path.read_text()
    names = METRIC_PLOTS + ["win_rate"]
    images = embedded_images(html)
    assert len(images) == len(names)
    for name, data in zip(names, images):
        png = run.path / "report" / f"{name}.png"
        assert png.read_bytes() == data and data.startswith(PNG_MAGIC)
        pixels = imread(png)  # matplotlib reads it back
        assert pixels.shape[0] == 360 and pixels.shape[1] in (640, 1280) and pixels.shape[2] in (3, 4)
    assert imread(run.path / "report" / "unranked.png").shape[1] == 1280  # rate + reasons panels
    # Per-round table and evaluation table hold the recorded numbers.
    for number in ("0.625", "0.812", "0.438", "-0.250", "1.750", "12000", "0.0021", "74.0"):
        assert number in html, number
    for number in ("0.556", "0.778", "[0.453, 0.937]", "7 / 2 / 1", "42.50 ± 6.25", "0.31 ± 0.10"):
        assert number in html, number
    # Held-out samples: 5 prompts of 7, one column per policy, HTML-escaped.
    assert html.count("held-out question") == 5 and "held-out question 5" not in html
    assert "round 2 says &lt;b&gt;4&lt;/b&gt; &amp; more" in html and "<b>4</b>" not in html
    assert html.index("<th>base</th>") < html.index("<th>round 0</th>") < html.index("<th>round 2</th>")


def test_metrics_only_run_shows_ranked_samples_and_skips_missing_plots(tmp_path):
    old = [{"round": k, "ranked": 4, "unranked": 0, "agreement_rate": 0.5, "kendall_tau": 0.0} for k in range(3)]
    run = make_run(tmp_path, with_eval=False, metrics=old)  # an old run: few keys, no eval
    html = write_report(run.path, tmp_path / "rep").read_text()
    assert len(embedded_images(html)) == 2  # agreement and unranked rate only
    assert sorted(p.name for p in (tmp_path / "rep").glob("*.png")) == ["agreement.png", "unranked.png"]
    assert "Not plotted (no data in this run): loss, pool, ranker, phases." in html
    assert "<table class=\"eval\">" not in html and "No held-out evaluation was run." in html and "train loss" not in html
    # Without eval/samples.jsonl: each round's first 3 prompts, top- and bottom-ranked responses
    # (ranking [1, 3, 0, 2]), prompt texts rebuilt from the prompt source and escaped.
    assert html.count("<h3>Round") == 3
    assert "User: Question &lt;" in html
    assert "r0 " in html and 'answer 1</div></td><td><div class="response">r0 ' in html
    assert "unranked: unparsable after 3 attempts: x" in html  # round 1's first prompt


def test_interrupted_run_reports_from_round_manifests(tmp_path):
    run = make_run(tmp_path, with_eval=False, metrics=[])
    run.metrics.unlink()
    with pytest.raises(RunDirError, match="nothing to report"):
        write_report(run.path)
    for k in range(2):  # two rounds finished before the interruption
        for phase in ("generate", "rank", "agreement", "train"):
            run.round(k).mark_done(phase, wall_s=1.0)
        run.round(k).mark_done("metrics", **{key: v for key, v in metrics_line(k).items() if key != "round"}, wall_s=0.1)
    html = write_report(run.path).read_text()
    assert len(embedded_images(html)) == len(METRIC_PLOTS) and "0.625" in html


def test_cli_report(tmp_path):
    run = make_run(tmp_path)
    result = runner.invoke(app, ["report", "--run-dir", str(run.path)])
    assert result.exit_code == 0, result.output
    assert str(run.path / "report" / "report.html") in flat(result.output)
    assert (run.path / "report" / "win_rate.png").is_file()
    result = runner.invoke(app, ["report", "--run-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "error:" in flat(result.output) and "nothing to report" in flat(result.output)


def test_the_report_reads_the_rounds_manifests_not_a_torn_metrics_file(tmp_path):
    from cyclealign.report.html import load_metrics
    from cyclealign.rundir import RunDir

    run = RunDir(tmp_path / "run")
    for k in range(3):
        run.round(k).mark_done("metrics", round=k, agreement_rate=0.5 + k / 10, wall_s=0.0)
    run.metrics.write_text('{"round": 0, "agreement_rate": 0.5}\n{"round": 1, "agree')  # torn by a crash
    assert [r["round"] for r in load_metrics(run)] == [0, 1, 2]  # no round hidden


def test_both_round_tables_hold_their_columns(tmp_path):
    html = write_report(make_run(tmp_path).path).read_text()
    quality = html.index("<h3>Ranking and training</h3>")
    cost = html.index("<h3>Ranker cost, tokens and time</h3>")
    assert quality < html.index('title="metrics.jsonl: train_loss">train loss</th>') < cost
    assert cost < html.index('title="metrics.jsonl: ranker_cost_usd">ranker cost USD</th>') < html.index("<h2>Held-out evaluation")
    assert html.count('title="metrics.jsonl: round">round</th>') == 2  # each table starts with the round


@pytest.mark.parametrize(
    ("settings", "note"),
    [
        ({"ranker.price_input_per_mtok": 0.0, "ranker.price_output_per_mtok": 0.0},
         "The ranker was free (m priced at 0 USD per million tokens): no cost chart."),
        ({"ranker.base_url": None, "ranker.model": None}, f"The ranker was the embedded {EMBEDDED_NAME} (free): 0 USD in every round, no cost chart."),
        ({}, "No price is known for the ranker model &#39;m&#39;: its calls counted 0 USD, no cost chart"),
        ({"ranker.model": "gpt-4o-mini"}, "The ranker cost 0 USD in every round (no paid call: the replies came from the cache)"),
    ],
)
def test_a_run_that_cost_nothing_gets_no_cost_panel_and_a_line_saying_why(tmp_path, settings, note):
    (tmp_path / "free").mkdir(), (tmp_path / "paid").mkdir()
    run = make_run(tmp_path / "free", metrics=[metrics_line(k, ranker_cost_usd=0.0) for k in range(3)], **settings)
    html = write_report(run.path).read_text()
    assert note in html and "Ranker tokens per round (ranker.png)" in html
    assert imread(run.path / "report" / "ranker.png").shape[1] == 640  # tokens only
    paid = write_report(make_run(tmp_path / "paid", **settings).path).read_text()
    assert "no cost chart" not in paid and "Ranker tokens and cost per round (ranker.png)" in paid


def test_a_run_without_evaluation_gets_the_command_that_adds_one(tmp_path):
    for name in ("my run", "other", "evaluated"):
        (tmp_path / name).mkdir()
    run = make_run(tmp_path / "my run", with_eval=False)
    html = write_report(run.path).read_text()
    assert "No held-out evaluation was run." in html
    assert f"cyclealign eval --run-dir &#39;{run.path}&#39;\n" in html and "--prompts" not in html  # quoted for the shell
    assert f"cyclealign report --run-dir &#39;{run.path}&#39;" in html
    held_out = tmp_path / "held.jsonl"
    held_out.write_text(json.dumps({"prompt": "x"}) + "\n")
    run = make_run(tmp_path / "other", with_eval=False, **{"eval.prompts": held_out})
    html = write_report(run.path).read_text()
    assert f"cyclealign eval --run-dir {run.path}\n" in html  # the run names its held-out prompts
    assert "No held-out evaluation" not in write_report(make_run(tmp_path / "evaluated").path).read_text()


def test_responses_cut_at_the_token_cap_are_marked(tmp_path):
    run = make_run(tmp_path)
    (run.path / "eval" / "samples.jsonl").unlink()  # show the rounds' samples
    rd = run.round(0)
    gens = rd.read_generations()
    # Round 0 ranks [1, 3, 0, 2] (top 1, bottom 2). The first prompt's top response was cut at 7
    # tokens (finished False). The second prompt's generation has no `finished` (an older record):
    # its bottom response reached generation.max_new_tokens (64), cut; its top one has 63, not cut.
    gens[0] = Generation(gens[0].prompt_id, [1], gens[0].responses, [[1], [1] * 7, [1], [1]], [-1.0] * 4, [True, False, True, True])
    gens[1] = Generation(gens[1].prompt_id, [1], gens[1].responses, [[1], [1] * 63, [1] * 64, [1]], [-1.0] * 4, [])
    write_jsonl(rd.generations, [g.to_json() for g in gens])
    html = write_report(run.path).read_text()
    assert html.count("… [cut at 7 tokens]</span>") == 1 and html.count("… [cut at 64 tokens]") == 1
    assert html.count("[cut at") == 2  # not the finished responses, nor the 63-token one
    # Held-out samples carry `finished` and `tokens`; lines from before them get no mark.
    (tmp_path / "evaluated").mkdir()
    run = make_run(tmp_path / "evaluated")
    lines = [json.loads(line) for line in (run.path / "eval" / "samples.jsonl").read_text().splitlines()]
    lines[0] |= {"finished": False, "tokens": 128}
    lines[1] |= {"finished": True, "tokens": 20}
    write_jsonl(run.path / "eval" / "samples.jsonl", lines)
    html = write_report(run.path).read_text()
    assert html.count("[cut at") == 1 and "base says &lt;b&gt;0&lt;/b&gt; &amp; more</div><span class=\"cut\"" in html
