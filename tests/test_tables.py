"""The one metrics table: metrics.jsonl's keys and order, and every layer that shows metrics reads it."""

from __future__ import annotations

import inspect
import json

from cyclealign import metrics as tables
from cyclealign import rundir
from cyclealign.config import build_config
from cyclealign.round import Round
from cyclealign.metrics import (
    CLI_EVAL_ROWS,
    CLI_ROUND_ROWS,
    CLI_SOURCE_ROWS,
    EVAL_METRICS,
    REPORT_EVAL_COLUMNS,
    REPORT_ROUND_COLUMNS,
    ROUND_METRICS,
    STATUS_ROWS,
)
from cyclealign.progress import NullReporter
from cyclealign.records import RankResult
from cyclealign.rundir import RunDir
from cyclealign.files import write_jsonl

METRICS_JSONL_KEYS = [
    "round", "prompts", "responses", "selected", "ranked", "unranked", "agreement_rate", "kendall_tau", "pool_added", "pool_size",
    "train_loss", "ranking_loss", "sft_loss", "train_ranking_accuracy", "train_grad_norm", "unranked_reasons",
    "ranker_calls", "ranker_api_calls", "ranker_cache_hits", "tokens_sent", "tokens_received", "ranker_cost_usd",
    "consistency_rate", "kept_rate", "confidence_mean", "generated_tokens", "phase_s",
]
"""metrics.jsonl's keys in their order: run directories stay byte-compatible."""


def test_round_metrics_are_the_metrics_jsonl_keys_in_order():
    assert [m.key for m in ROUND_METRICS] == METRICS_JSONL_KEYS
    assert tables.TIMED_PHASES == tuple(p for p in rundir.PHASES if p != "metrics")


def test_every_view_shows_declared_metrics_only():
    round_keys = {m.key for m in ROUND_METRICS}
    eval_keys = {m.key for m in EVAL_METRICS}
    assert set(CLI_ROUND_ROWS) | set(REPORT_ROUND_COLUMNS) | set(STATUS_ROWS) <= round_keys
    assert set(CLI_EVAL_ROWS) | set(CLI_SOURCE_ROWS) | set(REPORT_EVAL_COLUMNS) | {"judged_response"} <= eval_keys
    assert len({m.label for m in ROUND_METRICS}) == len(ROUND_METRICS)
    assert len({m.label for m in EVAL_METRICS}) == len(EVAL_METRICS)


def test_report_plots_read_metrics_jsonl_keys():
    from cyclealign.report import plots as report_plots

    source = inspect.getsource(report_plots)
    for name in ("agreement_rate", "kendall_tau", "train_loss", "ranking_loss", "sft_loss", "pool_size", "pool_added",
                 "tokens_sent", "tokens_received", "ranker_cost_usd", "unranked_reasons", "phase_s"):
        assert f'"{name}"' in source and name in METRICS_JSONL_KEYS


def test_eval_metrics_read_the_keys_evaluation_writes():
    from cyclealign.evaluation.winrate import win_summary

    written = set(win_summary([])) | {"label", "vs", "prompts", "decoding", "max_new_tokens", "ranked", "kendall_tau",
                                      "agreement_rate", "length_mean", "length_std", "reward_mean", "reward_std"}
    plain = {m.key for m in EVAL_METRICS if m.cell is None}
    assert plain <= written, plain - written


def test_round_metrics_line_from_a_round_manifest(tmp_path):
    """Round.metrics builds the line from the manifest as it always did (keys, order, values)."""
    cfg = build_config(run_dir=tmp_path / "run")
    run = RunDir(cfg.run_dir)
    run.prepare(cfg.to_json(), resume=False)
    rd = run.round(0)
    write_jsonl(rd.agreement, [{"prompt_id": "a", "agreement": [0, 1, 2], "n": 4, "kendall_tau": 0.5},
                               {"prompt_id": "b", "agreement": [1], "n": 4, "kendall_tau": -0.25}])
    write_jsonl(rd.rankings, [RankResult("a", [0, 1, 2, 3]).to_json(), RankResult("b", [3, 2, 1, 0]).to_json(),
                              RankResult("c", None, reason="unparsable after 3 attempts").to_json()])
    rd.mark_done("generate", prompts=3, responses=12, generated_tokens=300, wall_s=1.5)
    rd.mark_done("rank", ranked=2, unranked=1, calls=5, api_calls=4, cache_hits=1, prompt_tokens=900,
                 completion_tokens=40, cost_usd=0.0021, wall_s=2.0)
    rd.mark_done("agreement", pool_added=1, pool_size=3, wall_s=0.25)
    rd.mark_done("train", adapter=True, train_loss=1.5, ranking_loss=1.25, sft_loss=2.5, ranking_accuracy=0.75,
                 grad_norm=0.5, wall_s=3.0)
    line = Round(cfg, run, 0, [], NullReporter()).metrics()
    assert list(line) == METRICS_JSONL_KEYS
    assert line == {
        "round": 0, "prompts": 3, "responses": 12, "selected": None, "ranked": 2, "unranked": 1, "agreement_rate": (3 / 4 + 1 / 4) / 2,
        "kendall_tau": 0.125, "pool_added": 1, "pool_size": 3, "train_loss": 1.5, "ranking_loss": 1.25, "sft_loss": 2.5,
        "train_ranking_accuracy": 0.75, "train_grad_norm": 0.5, "unranked_reasons": {"unparsable": 1},
        "ranker_calls": 5, "ranker_api_calls": 4, "ranker_cache_hits": 1, "tokens_sent": 900, "tokens_received": 40,
        "ranker_cost_usd": 0.0021, "consistency_rate": None, "kept_rate": None, "confidence_mean": None, "generated_tokens": 300,
        "phase_s": {"generate": 1.5, "rank": 2.0, "agreement": 0.25, "train": 3.0},
    }
    assert json.loads(json.dumps(rd.phases()["metrics"]))["tokens_sent"] == 900  # as recorded in the manifest


def test_cli_and_report_show_the_same_labels(tmp_path):
    from rich.console import Console

    from cyclealign.cli.tables import round_table
    from cyclealign.report.sections import metric_table

    line = {k: 1 for k in METRICS_JSONL_KEYS} | {"phase_s": {p: 1.0 for p in tables.TIMED_PHASES}, "ranker_cost_usd": 0.00214}
    console = Console(width=200, record=True, file=open(tmp_path / "out.txt", "w"))
    console.print(round_table([line]))
    printed = console.export_text()
    columns, rows = metric_table([line])
    for key in set(CLI_ROUND_ROWS) & set(REPORT_ROUND_COLUMNS):
        label = tables.round_metric(key).label
        assert label in printed and {"key": key, "label": label} in columns
    assert "0.0021" in printed and "0.0021" in rows[0]  # one format: 4 decimals of USD in both
