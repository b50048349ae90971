"""`cyclealign reparse`: rankings re-derived from the raw replies on disk, with no API call."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cyclealign.cli import app
from cyclealign.config import build_config
from cyclealign.errors import RunDirError
from cyclealign.records import Generation, RankResult, RankSample, RankStatus
from cyclealign.reparse import reparse_results, reparse_run
from cyclealign.rundir import RunDir
from cyclealign.files import read_jsonl, write_jsonl


def make_run(tmp_path, results, done=("generate", "rank"), rounds=1):
    cfg = build_config(run_dir=tmp_path / "run", rounds=rounds, **{"ranker.base_url": "http://x/v1", "ranker.model": "m"})
    run = RunDir(cfg.run_dir)
    run.prepare(cfg.to_json(), resume=False)
    for k in range(rounds):
        rd = run.round(k)
        gens = [Generation(r.prompt_id, [1, 2], ["a", "b", "c"], [[1], [2], [3]], [-1.0, -2.0, -3.0], [True] * 3) for r in results]
        write_jsonl(rd.generations, [g.to_json() for g in gens])
        write_jsonl(rd.rankings, [r.to_json() for r in results])
        for phase in done:
            rd.mark_done(phase, ranked=sum(r.ranking is not None for r in results))
    return run


def results():
    return [
        # parsed fine: unchanged
        RankResult("p0", [2, 0, 1], samples=[RankSample([0, 1, 2], ["[3] > [1] > [2]"], [2, 0, 1])], attempts=1),
        # a reply the old (buggy) parser rejected, though it is a valid ranking of the shown order
        RankResult(
            "p1", None, reason="unparsable after 1 attempts: bogus",
            samples=[RankSample([2, 0, 1], ["Ranking: [2]>[3]>[1]"], None, "unparsable after 1 attempts: bogus")],
            attempts=1,
        ),
        # an API error stays as it is: a resume asks again
        RankResult("p2", None, reason="api error: APIConnectionError: x", samples=[RankSample([0, 1, 2], [], None, "api error: APIConnectionError: x")]),
        # only two labels: unranked strictly, ranked with complete_missing_last
        RankResult(
            "p3", None, reason="unparsable after 1 attempts: missing label [2]",
            samples=[RankSample([1, 2, 0], ["[3] > [1]"], None, "unparsable after 1 attempts: missing label [2]")],
        ),
    ]


def test_reparse_fixes_rankings_from_stored_replies(tmp_path):
    run = make_run(tmp_path, results())
    (summary,) = reparse_run(run.path)
    assert (summary.ranked_before, summary.ranked_after, summary.changed, summary.written) == (1, 2, 1, True)
    by_id = {r.prompt_id: r for r in run.round(0).read_rankings()}
    # shown order [2, 0, 1]: labels [2] > [3] > [1] are responses 0 > 1 > 2
    assert by_id["p1"].ranking == [0, 1, 2] and by_id["p1"].reason is None
    assert by_id["p2"].reason.startswith("api error") and by_id["p3"].ranking is None
    assert run.round(0).phases()["rank"]["ranked"] == 2

    (again,) = reparse_run(run.path, complete_last=True)
    assert again.changed == 1 and again.ranked_after == 3
    # shown order [1, 2, 0]: [3] > [1] > (missing [2]) are responses 0 > 1 > 2
    assert {r.prompt_id: r for r in run.round(0).read_rankings()}["p3"].ranking == [0, 1, 2]


def test_reparse_refuses_to_silently_change_a_round_already_trained_on(tmp_path):
    run = make_run(tmp_path, results(), done=("generate", "rank", "agreement", "train", "metrics"), rounds=2)
    before = run.round(0).rankings.read_text()
    with pytest.raises(RunDirError, match="--rewind"):
        reparse_run(run.path)
    assert run.round(0).rankings.read_text() == before  # nothing written
    dry = reparse_run(run.path, dry_run=True)
    assert [s.changed for s in dry] == [1, 1] and not any(s.written for s in dry)

    summaries = reparse_run(run.path, rewind=True)
    assert summaries[0].rewound and summaries[0].written
    assert set(run.round(0).phases()) == {"generate", "rank"}  # agreement, train, metrics to redo
    assert not run.round(1).path.exists()  # trained on the stale policy: set aside
    (aside,) = (run.path / "rewound").iterdir()
    assert (aside / "round_001" / "rankings.jsonl").is_file()


def test_reparse_cli(tmp_path):
    run = make_run(tmp_path, results())
    out = CliRunner().invoke(app, ["reparse", "--run-dir", str(run.path), "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "dry run" in out.output
    assert read_jsonl(run.round(0).rankings)[1]["ranking"] is None  # dry run wrote nothing
    out = CliRunner().invoke(app, ["reparse", "--run-dir", str(tmp_path / "nothing")])
    assert out.exit_code == 2 and "no run here" in out.output


def test_reparse_imports_no_http_stack():
    # reparse needs the pure ranking protocol only: no openai client, retry or rate-limit library
    code = (
        "import sys, cyclealign.reparse, cyclealign.ranker.ranking; "
        "print(','.join(m for m in ('openai', 'tenacity', 'aiolimiter') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_reparsed_results_carry_their_status_and_serialize_as_before():
    new = reparse_results(results(), {f"p{i}": 3 for i in range(4)}, complete_last=False)
    assert [r.status for r in new] == [RankStatus.RANKED, RankStatus.RANKED, RankStatus.API_ERROR, RankStatus.UNPARSABLE]
    assert [s.status for r in new for s in r.samples] == [r.status for r in new]
    # the status is not written: the lines keep their bytes, and it is read back the same
    assert all("status" not in r.to_json() for r in new)
    assert [RankResult.from_json(json.loads(json.dumps(r.to_json()))).status for r in new] == [r.status for r in new]


def test_rewinding_the_last_round_rewrites_metrics_and_takes_the_run_lock(tmp_path):
    from cyclealign.errors import LockedError
    from cyclealign.runlock import RunLock

    run = make_run(tmp_path, results(), done=("generate", "rank", "agreement", "train", "metrics"), rounds=1)
    run.rewrite_metrics()
    assert len(read_jsonl(run.metrics)) == 1
    with RunLock(run.path):  # an iterate working on the run
        with pytest.raises(LockedError):
            reparse_run(run.path, rewind=True)
    assert run.round(0).is_done("metrics")  # nothing was written under the other process
    reparse_run(run.path, rewind=True)
    assert read_jsonl(run.metrics) == []  # the report no longer shows the rewound round's old line
