"""Whole rounds on the real SmolLM2 policy against a real local HTTP ranker (scripted replies)."""

import json

import pytest

from cyclealign.loop import iterate
from cyclealign.progress import NullReporter
from cyclealign.rundir import RunDir
from cyclealign.files import read_jsonl
from scripted_api import ScriptedAPI
from scripted_run import KEY, make_config, ranking_requests, reverse_ranker

pytestmark = pytest.mark.slow

def test_two_rounds_end_to_end(tmp_path, prompts_file):
    with ScriptedAPI(fallback=reverse_ranker) as api:
        cfg = make_config(tmp_path, prompts_file, api)
        metrics = iterate(cfg, environ={"OPENAI_API_KEY": KEY})
    assert [m["round"] for m in metrics] == [0, 1]
    run = RunDir(cfg.run_dir)
    for m in metrics:
        assert m["ranked"] + m["unranked"] == 2
        assert 0.0 <= m["agreement_rate"] <= 1.0 and -1.0 <= m["kendall_tau"] <= 1.0
        assert m["tokens_sent"] > 0 and m["train_loss"] == m["train_loss"]  # not NaN
        assert set(m["phase_s"]) == {"generate", "rank", "agreement", "train"}
    for k in (0, 1):
        rd = run.round(k)
        assert (rd.adapter / "adapter_config.json").is_file()
        agree = read_jsonl(rd.agreement)
        orders = {r["prompt_id"]: r["samples"][0]["order"] for r in read_jsonl(rd.rankings)}
        for row in agree:
            # the black box ranked last-shown-first, exactly as scripted; the shown order was a
            # shuffle, mapped back to the responses
            assert row["blackbox"] == orders[row["prompt_id"]][::-1]
    # Round 0's agreed examples joined the pool (threshold 1) and round 1's ranker calls show them:
    # system + 4 static demos (2 turns each) + query = 10 messages in round 0, 4 more in round 1.
    reqs = ranking_requests(api)
    assert [len(r["messages"]) for r in reqs[:2]] == [10, 10]
    pool_after_0 = read_jsonl(run.round(0).demo_pool)
    assert len(pool_after_0) == 2
    assert all(len(r["messages"]) == 10 + 2 * 2 for r in reqs[2:])
    dynamic_turns = reqs[2]["messages"][9]["content"] + reqs[2]["messages"][11]["content"]
    assert all(d["query"] in dynamic_turns for d in pool_after_0)
    # metrics.jsonl holds one line per round; the saved config holds no key.
    assert [json.loads(line)["round"] for line in run.metrics.read_text().splitlines()] == [0, 1]
    for f in cfg.run_dir.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


class CrashAfter(NullReporter):
    """Simulates a crash: raises once the given phase of the given round has been persisted,
    or, with ``advances=k``, at the k-th progress step of that phase."""

    def __init__(self, round_index, phase, advances=None):
        self.round_index, self.phase, self.advances = round_index, phase, advances
        self.current = None

    def phase_start(self, round_index, phase, total):
        self.current = (round_index, phase)

    def advance(self, n=1):
        if self.advances is not None and n > 0 and self.current == (self.round_index, self.phase):
            self.advances -= n
            if self.advances <= 0:
                raise KeyboardInterrupt("simulated crash mid-phase")

    def phase_end(self, round_index, phase, info):
        if self.advances is None and (round_index, phase) == (self.round_index, self.phase):
            raise KeyboardInterrupt("simulated crash between phases")


def test_resume_after_crash_between_phases_redoes_nothing(tmp_path, prompts_file):
    with ScriptedAPI(fallback=reverse_ranker) as api:
        cfg = make_config(tmp_path, prompts_file, api)
        with pytest.raises(KeyboardInterrupt):
            iterate(cfg, environ={"OPENAI_API_KEY": KEY}, reporter=CrashAfter(0, "rank"))
        run = RunDir(cfg.run_dir)
        assert run.round(0).is_done("rank") and not run.round(0).is_done("agreement")
        gen_mtime = run.round(0).generations.stat().st_mtime_ns
        ranked_before = read_jsonl(run.round(0).rankings)
        first_requests = len(ranking_requests(api))
        assert first_requests == 2

        metrics = iterate(cfg, resume=True, environ={"OPENAI_API_KEY": KEY})
    assert [m["round"] for m in metrics] == [0, 1]
    assert run.round(0).generations.stat().st_mtime_ns == gen_mtime  # not regenerated
    assert read_jsonl(run.round(0).rankings) == ranked_before  # not re-ranked
    # Only round 1's two prompts were sent after the resume.
    assert len(ranking_requests(api)) == first_requests + 2


def test_resume_mid_ranking_sends_only_missing_prompts(tmp_path, prompts_file):
    with ScriptedAPI(fallback=reverse_ranker) as api:
        cfg = make_config(tmp_path, prompts_file, api, rounds=1, **{"ranker.concurrency": 1})
        with pytest.raises(KeyboardInterrupt):
            iterate(cfg, environ={"OPENAI_API_KEY": KEY}, reporter=CrashAfter(0, "rank", advances=1))
        run = RunDir(cfg.run_dir)
        assert len(read_jsonl(run.round(0).rankings)) == 1 and not run.round(0).is_done("rank")
        before = len(ranking_requests(api))
        iterate(cfg, resume=True, environ={"OPENAI_API_KEY": KEY})
    sent = [r["messages"][-1]["content"] for r in ranking_requests(api)]
    # The ranked prompt is never asked again; the other one is asked after the resume unless its
    # reply reached the cache before the crash (a request still in flight at a crash is lost).
    assert sent.count(sent[0]) == 1 and len(set(sent)) == 2
    assert len(sent) in (2, 3) and (before == 2 or len(sent) == 2)
    assert run.round(0).is_done("metrics")


def test_missing_key_fails_before_generation(tmp_path, prompts_file):
    from cyclealign.errors import RankerError

    with ScriptedAPI(fallback=reverse_ranker) as api:
        cfg = make_config(tmp_path, prompts_file, api, **{"ranker.base_url": "https://ranker.example.invalid/v1"})
        with pytest.raises(RankerError, match="OPENAI_API_KEY"):
            iterate(cfg, environ={})
    assert not RunDir(cfg.run_dir).round(0).generations.exists() and not RunDir(cfg.run_dir).config.exists()


def test_training_under_torchrun_ddp_with_two_cpu_processes(tmp_path, prompts_file):
    """The train phase launched as `torchrun --nproc_per_node 2 -m cyclealign.cli train-round`:
    real DDP over two CPU processes (gloo); the lists are sharded, the main process saves."""
    with ScriptedAPI(fallback=reverse_ranker) as api:
        cfg = make_config(
            tmp_path, prompts_file, api, rounds=1, prompts_per_round=4,
            **{"train.launcher": "torchrun", "train.num_processes": 2},
        )
        metrics = iterate(cfg, environ={"OPENAI_API_KEY": KEY})
    rd = RunDir(cfg.run_dir).round(0)
    info = rd.phases()["train"]
    assert info["launcher"] == "torchrun" and info["adapter"] is True
    ranked = metrics[0]["ranked"]
    assert ranked >= 2
    # Each step: one list per process, two processes; train.epochs passes over the lists.
    assert info["steps"] == -(-ranked // 2) * int(cfg.train.epochs)
    assert (rd.adapter / "adapter_model.safetensors").is_file()
    log = (rd.path / "train.log").read_text()
    assert "Traceback" not in log


def test_a_round_trained_with_trl_dpo_on_ranking_pairs(tmp_path, prompts_file):
    with ScriptedAPI(fallback=reverse_ranker) as api:
        cfg = make_config(tmp_path, prompts_file, api, rounds=1, **{"train.loss": "dpo", "train.dpo_pairs": "adjacent"})
        iterate(cfg, environ={"OPENAI_API_KEY": KEY})
    rd = RunDir(cfg.run_dir).round(0)
    info = rd.phases()["train"]
    assert info["adapter"] is True and info["steps"] >= 1
    assert (rd.adapter / "adapter_model.safetensors").is_file()
    history = json.loads(rd.train.read_text())["log_history"]
    assert history and all("rewards/accuracies" in h for h in history)


def test_budget_stops_the_run_cleanly_and_a_resume_with_more_budget_finishes(tmp_path, prompts_file):
    from cyclealign.errors import BudgetError

    prices = {"ranker.price_input_per_mtok": 1000.0, "ranker.price_output_per_mtok": 1000.0}
    with ScriptedAPI(fallback=reverse_ranker) as api:
        cfg = make_config(
            tmp_path, prompts_file, api, rounds=1, prompts_per_round=4,
            **{"ranker.max_cost_usd": 3.0, "ranker.concurrency": 1, **prices},
        )
        with pytest.raises(BudgetError, match="--max-cost-usd"):
            iterate(cfg, environ={"OPENAI_API_KEY": KEY})
        run = RunDir(cfg.run_dir)
        rd = run.round(0)
        assert rd.is_done("generate") and not rd.is_done("rank")
        spent = run.ranker_spend()
        assert spent["cost_usd"] <= 3.0 and spent["calls"] < 4
        kept = len(read_jsonl(rd.rankings))
        assert kept == spent["calls"]
        sent_before = ranking_requests(api)

        cfg2 = make_config(
            tmp_path, prompts_file, api, rounds=1, prompts_per_round=4,
            **{"ranker.max_cost_usd": 1000.0, "ranker.concurrency": 1, **prices},
        )
        metrics = iterate(cfg2, resume=True, environ={"OPENAI_API_KEY": KEY})
    sent = [json.dumps(r, sort_keys=True) for r in ranking_requests(api)]
    assert len(sent) == len(set(sent)) == 4  # every prompt asked exactly once over both sessions
    assert len(sent_before) == kept
    m = metrics[0]
    assert m["ranked"] == 4 and m["ranker_api_calls"] == 4  # paid calls of the round, both sessions
    assert m["ranker_cost_usd"] == pytest.approx(run.ranker_spend(0)["cost_usd"]) and m["ranker_cost_usd"] > 0
    assert json.loads(run.config.read_text())["ranker"]["max_cost_usd"] == 1000.0


def test_a_round_ranked_through_the_batch_api(tmp_path, prompts_file):
    with ScriptedAPI(fallback=reverse_ranker, batch_polls_to_complete=2) as api:
        cfg = make_config(
            tmp_path, prompts_file, api, rounds=1,
            **{"ranker.batch": True, "ranker.batch_poll_s": 0.05, "ranker.price_input_per_mtok": 2.0, "ranker.price_output_per_mtok": 8.0},
        )
        metrics = iterate(cfg, environ={"OPENAI_API_KEY": KEY})
        online = [r for r in ranking_requests(api) if r not in api.batch_requests]
    rd = RunDir(cfg.run_dir).round(0)
    info = rd.phases()["rank"]["batch"]
    assert api.batch_creates == 1 and info["requests"] == info["answered"] == 2
    assert online == [] and metrics[0]["ranked"] == 2
    ledger = read_jsonl(RunDir(cfg.run_dir).ranker_calls)
    assert len(ledger) == 2 and all(c["batch"] for c in ledger) and metrics[0]["ranker_cost_usd"] > 0
    assert json.loads((rd.path / "ranker_batch.json").read_text())["status"] == "downloaded"


def test_a_run_moved_elsewhere_with_its_prompts_resumes_without_asking_again(tmp_path, prompts_file):
    """The run directory copied to another disk, the prompts file moved, the judge on a new port:
    --resume keeps every paid ranking (none is asked again) and records what changed."""
    import shutil

    with ScriptedAPI(fallback=reverse_ranker) as api:
        cfg = make_config(tmp_path, prompts_file, api, rounds=1)
        iterate(cfg, environ={"OPENAI_API_KEY": KEY})
        paid = len(ranking_requests(api))
    moved_prompts = tmp_path / "moved" / "prompts-copy.jsonl"
    moved_prompts.parent.mkdir()
    shutil.copy(prompts_file, moved_prompts)
    shutil.copytree(cfg.run_dir, tmp_path / "bigger-disk" / "run")
    with ScriptedAPI(fallback=reverse_ranker) as api2:  # a new port
        moved = make_config(tmp_path, moved_prompts, api2, rounds=2, run_dir=(tmp_path / "bigger-disk" / "run").resolve())
        metrics = iterate(moved, resume=True, environ={"OPENAI_API_KEY": KEY})
        assert len(metrics) == 2 and len(ranking_requests(api2)) == 2  # only round 1's two prompts
    assert paid == 2
    changed = [e for e in read_jsonl(moved.run_dir / "events.jsonl") if e["event"] == "config_changed"]
    assert set(changed[0]["changes"]) == {"run_dir", "prompts", "rounds", "ranker.base_url"}
    assert RunDir(moved.run_dir).read_config().run_dir == moved.run_dir


def test_a_huge_prompt_reaches_the_paid_ranker_cut_to_its_end(tmp_path, caplog):
    """A 1 MB prompt line: the policy sees its last 384 tokens, and the ranker (a paid call) its last
    ~ranker.max_prompt_tokens, said in the log; before, the whole megabyte was sent."""
    prompts = tmp_path / "huge.jsonl"
    rows = [{"prompt": "word " * 200_000 + "So, what is the capital of France?"}, {"prompt": "Say hi."}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with ScriptedAPI(fallback=reverse_ranker) as api, caplog.at_level("WARNING"):
        cfg = make_config(tmp_path, prompts, api, rounds=1, **{"ranker.max_prompt_tokens": 512})
        iterate(cfg, environ={"OPENAI_API_KEY": KEY})
        sent = [json.dumps(r) for r in ranking_requests(api)]
    assert len(sent) == 2 and max(map(len, sent)) < 20_000
    assert any("capital of France" in s and "[...] " in s for s in sent)
    assert "1 prompt(s) cut to ranker.max_prompt_tokens=512" in caplog.text


def test_a_call_budget_ranks_the_chosen_candidates_only_and_keeps_the_others_for_later(tmp_path, prompts_file):
    """ranker.calls_per_round=2 of 3 candidates: exactly 2 ranking requests a round, chosen by the
    policy's uncertainty and recorded in selection.json; the candidate not selected is unranked
    ("not selected") and, unused, drawn again by round 1."""
    from cyclealign.data.candidates import uncertainty_score
    from cyclealign.records import Generation

    with ScriptedAPI(fallback=reverse_ranker) as api:
        cfg = make_config(
            tmp_path, prompts_file, api, prompts_per_round=3,
            **{"ranker.calls_per_round": 2, "ranker.selection": "uncertainty", "ranker.concurrency": 1},
        )
        metrics = iterate(cfg, environ={"OPENAI_API_KEY": KEY})
        sent = ranking_requests(api)
    run = RunDir(cfg.run_dir)
    rounds_ids = []
    for k, m in enumerate(metrics):
        rd = run.round(k)
        gens = [Generation.from_json(d) for d in read_jsonl(rd.generations)]
        eligible = [g for g in gens if len(g.responses) >= 2]
        assert len(eligible) >= 2  # three samples of a real policy: distinct responses
        sel = json.loads(rd.selection.read_text())
        assert sel["signal"] == "uncertainty" and sel["seed"] == cfg.seed + k and sel["calls_per_round"] == 2
        scores = {c["id"]: c["score"] for c in sel["candidates"]}
        assert scores == {g.prompt_id: uncertainty_score(g) if len(g.responses) >= 2 else None for g in gens}
        best = sorted(eligible, key=lambda g: -scores[g.prompt_id])[:2]
        assert set(sel["chosen"]) == {g.prompt_id for g in best}
        rows = {r["prompt_id"]: r for r in read_jsonl(rd.rankings)}
        assert {pid for pid, r in rows.items() if r["ranking"] is not None} <= set(sel["chosen"])
        skipped = [g.prompt_id for g in eligible if g.prompt_id not in sel["chosen"]]
        assert [rows[pid]["reason"] for pid in skipped] == ["not selected"] * len(skipped)
        assert all(rows[pid]["samples"] == [] for pid in skipped)
        # Exactly calls_per_round paid calls (a fresh cache), shown in the round's line.
        assert run.ranker_spend(k)["calls"] == 2 and m["ranker_api_calls"] == 2 and m["ranker_calls"] == 2
        assert m["prompts"] == 3 and m["selected"] == 2 and m["ranked"] + m["unranked"] == 3
        assert m["unranked_reasons"].get("not selected", 0) == len(skipped)
        rounds_ids.append((set(sel["chosen"]), skipped))
    assert len(sent) == 4
    # Round 0's candidate not selected was not used: round 1 draws it (unused prompts first).
    prompts1 = {p["id"] for p in json.loads(run.round(1).prompts_file.read_text())["prompts"]}
    assert set(rounds_ids[0][1]) <= prompts1
    # The rank's table and status show candidates, sent and calls.
    from cyclealign.cli.tables import round_table, status_table
    from cyclealign.schedule import run_status
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(round_table(metrics))
    console.print(status_table(run_status(cfg.run_dir), "status"))
    text = console.export_text()
    assert "sent to ranker" in text and "ranker calls" in text


class CrashAtRankStart(NullReporter):
    """Simulates a crash as round 0's rank phase starts (after the selection is written)."""

    def phase_start(self, round_index, phase, total):
        if (round_index, phase) == (0, "rank"):
            raise KeyboardInterrupt("simulated crash before the first ranking call")


def test_a_resumed_round_ranks_the_candidates_its_selection_recorded(tmp_path, prompts_file):
    with ScriptedAPI(fallback=reverse_ranker) as api:
        cfg = make_config(
            tmp_path, prompts_file, api, rounds=1, prompts_per_round=4,
            **{"ranker.calls_per_round": 2, "ranker.selection": "diversity"},
        )
        with pytest.raises(KeyboardInterrupt):
            iterate(cfg, environ={"OPENAI_API_KEY": KEY}, reporter=CrashAtRankStart())
        rd = RunDir(cfg.run_dir).round(0)
        assert rd.selection.is_file() and ranking_requests(api) == []  # written before any ranking call
        sel = json.loads(rd.selection.read_text())
        scored = [c for c in sel["candidates"] if c["score"] is not None]
        assert len(scored) >= 3 and sum(c["chosen"] for c in scored) == 2
        # The file decides, not a recomputation: hand it another choice and the resume ranks that.
        for c in scored:
            c["chosen"] = c["id"] in {scored[-1]["id"], scored[-2]["id"]}
        rd.selection.write_text(json.dumps(sel))
        iterate(cfg, resume=True, environ={"OPENAI_API_KEY": KEY})
        sent = ranking_requests(api)
    ranked = {r["prompt_id"] for r in read_jsonl(rd.rankings) if r["ranking"] is not None or r["samples"]}
    assert ranked == {scored[-1]["id"], scored[-2]["id"]} and len(sent) == 2
