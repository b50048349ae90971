import json

import pytest

from cyclealign.errors import RunDirError
from cyclealign.rundir import RunDir, append_jsonl, atomic_write_text, read_jsonl


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
    run.prepare(json.dumps({"rounds": 3, "seed": 0}), resume=True)  # more rounds: fine
    with pytest.raises(RunDirError, match="seed"):
        run.prepare(json.dumps({"rounds": 3, "seed": 1}), resume=True)
    with pytest.raises(RunDirError, match="nothing to resume"):
        RunDir(tmp_path / "other").prepare(cfg, resume=True)
