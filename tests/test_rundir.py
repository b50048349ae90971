import json

import pytest

from cyclealign.errors import RunDirError
from cyclealign.rundir import RunDir
from cyclealign.files import append_jsonl, atomic_write_text, read_jsonl, write_jsonl


def test_atomic_write_leaves_no_temp_files(tmp_path):
    p = tmp_path / "a" / "x.json"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert [f.name for f in p.parent.iterdir()] == ["x.json"]


def test_read_jsonl_drops_torn_last_line_only(tmp_path):
    p = tmp_path / "r.jsonl"
    append_jsonl(p, {"a": 1})
    append_jsonl(p, {"a": 2})
    with open(p, "a") as f:
        f.write('{"a": 3, "b"')  # crash mid-write
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    p.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(RunDirError, match=r"r.jsonl:2"):
        read_jsonl(p)


def test_manifest_marks_phases(tmp_path):
    run = RunDir(tmp_path / "run")
    rd = run.round(0)
    assert not rd.is_done("generate")
    rd.mark_done("generate", wall_s=1.5)
    rd.mark_done("rank", wall_s=2.0)
    assert rd.phases() == {"generate": {"wall_s": 1.5}, "rank": {"wall_s": 2.0}}
    assert run.finished_rounds() == 0
    with pytest.raises(ValueError):
        rd.mark_done("nonsense")


def test_prepare_refuses_overwrite_and_checks_resume(tmp_path):
    run = RunDir(tmp_path / "run")
    cfg = json.dumps({"rounds": 2, "seed": 0})
    run.prepare(cfg, resume=False)
    with pytest.raises(RunDirError, match="--resume"):
        run.prepare(cfg, resume=False)
    assert run.prepare(json.dumps({"rounds": 3, "seed": 0}), resume=True) == {"rounds": [2, 3]}  # more rounds: fine
    with pytest.raises(RunDirError, match=r"change the run's results \(seed: 0 -> 1\)"):
        run.prepare(json.dumps({"rounds": 3, "seed": 1}), resume=True)
    # where the run and its inputs are, and where it runs, may change: the run directory moved,
    # the prompts by another path, another device, the judge on a new port
    moved = {"rounds": 3, "seed": 0, "run_dir": "/elsewhere/run", "prompts": "/data/p.jsonl", "model": {"device": "cpu"},
             "ranker": {"base_url": "http://127.0.0.1:8002/v1"}}
    changes = run.prepare(json.dumps(moved), resume=True)
    assert changes["run_dir"][1] == "/elsewhere/run" and changes["model.device"] == ["auto", "cpu"]
    assert changes["ranker.base_url"] == [None, "http://127.0.0.1:8002/v1"] and "prompts" in changes
    with pytest.raises(RunDirError, match=r"ranker\.model: None -> 'gpt-4o'"):  # another judge: other results
        run.prepare(json.dumps({**moved, "ranker": {"model": "gpt-4o"}}), resume=True)
    with pytest.raises(RunDirError, match="nothing to resume"):
        RunDir(tmp_path / "other").prepare(cfg, resume=True)


def test_rankings_read_back_latest_per_prompt_in_generation_order(tmp_path):
    from cyclealign.records import RankResult

    rd = RunDir(tmp_path / "run").round(0)
    append_jsonl(rd.generations, {"prompt_id": "a"})
    append_jsonl(rd.generations, {"prompt_id": "b"})
    append_jsonl(rd.generations, {"prompt_id": "c"})
    for r in (RankResult("c", [0, 1]), RankResult("a", None, reason="api error: 500"), RankResult("x", [1, 0]), RankResult("a", [1, 0])):
        append_jsonl(rd.rankings, r.to_json())
    results = rd.read_rankings()
    assert [r.prompt_id for r in results] == ["a", "c", "x"]  # a prompt without a generation comes last
    assert results[0].ranking == [1, 0] and results[0].reason is None  # the retried API error was replaced


def test_has_adapter_and_latest_adapter(tmp_path):
    run = RunDir(tmp_path / "run")
    assert not run.round(0).has_adapter() and run.latest_adapter(2) is None
    run.round(0).mark_done("train", adapter=True)
    run.round(1).mark_done("train", adapter=False, skipped="no ranked prompt this round")
    assert run.round(0).has_adapter() and not run.round(1).has_adapter()
    assert run.latest_adapter(2) == run.round(0).adapter and run.latest_adapter(0) is None


def test_a_torn_last_line_is_said_and_cut_before_the_next_append(tmp_path, caplog):
    from cyclealign.files import append_jsonl, read_jsonl

    path = tmp_path / "rankings.jsonl"
    append_jsonl(path, {"prompt_id": "a"})
    with open(path, "a") as f:
        f.write('{"prompt_id": "b", "rank')  # a kill mid-append
    with caplog.at_level("WARNING"):
        assert read_jsonl(path) == [{"prompt_id": "a"}]
    assert "rankings.jsonl:2: a torn last line" in caplog.text
    append_jsonl(path, {"prompt_id": "b"})  # the resume asks b again (from the reply cache) and appends it
    assert read_jsonl(path) == [{"prompt_id": "a"}, {"prompt_id": "b"}]


def test_agreement_rows_keep_their_bytes(tmp_path):
    # agreement.jsonl was written from dicts before AgreementRow: same keys, same order, same bytes
    from cyclealign.records import AgreementRow

    line = '{"prompt_id": "p", "blackbox": [2, 0, 1], "whitebox": [1, 0, 2], "agreement": [0, 1], "n": 3, "kendall_tau": -0.3333333333333333, "joined_pool": true}\n'
    rd = RunDir(tmp_path).round(0)
    rd.path.mkdir()
    rd.agreement.write_text(line)
    (row,) = rd.read_agreement()
    assert row == AgreementRow(prompt_id="p", blackbox=[2, 0, 1], whitebox=[1, 0, 2], agreement=[0, 1], n=3, kendall_tau=-0.3333333333333333, joined_pool=True)
    write_jsonl(tmp_path / "again.jsonl", [row.to_json()])
    assert (tmp_path / "again.jsonl").read_text() == line


@pytest.mark.parametrize("name", ["generations", "rankings", "agreement"])
def test_a_row_that_is_not_a_record_names_file_and_line(tmp_path, name):
    rd = RunDir(tmp_path / "run").round(0)
    path = getattr(rd, name)
    path.parent.mkdir(parents=True)
    path.write_text('{"prompt_id": "p0"}\n{"prompt_id": "p1", "colour": "blue"}\n' if name != "rankings" else '{"colour": 1}\n')
    read = {"generations": rd.read_generations, "rankings": rd.read_rankings, "agreement": rd.read_agreement}[name]
    with pytest.raises(RunDirError, match=rf"{name}.jsonl:\d: not a \w+ row"):
        read()
