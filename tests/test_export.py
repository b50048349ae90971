"""`cyclealign export`: a run's rankings as a Hugging Face dataset (ranking lists or TRL DPO pairs)."""

from __future__ import annotations

import json
import math

import datasets
import pytest
from typer.testing import CliRunner

from cyclealign.cli import app
from cyclealign.config import build_config
from cyclealign.data.selection import select_round_prompts
from cyclealign.data.sources import load_prompts
from cyclealign.errors import ConfigError, RunDirError
from cyclealign.export import export_rankings
from cyclealign.records import Generation, RankResult
from cyclealign.rundir import RunDir
from cyclealign.files import write_jsonl

runner = CliRunner()


def flat(output):
    """CLI output with rich's line wrapping undone (it breaks long paths)."""
    return output.replace("\n", "")

PROMPTS = [
    {"id": "greet", "prompt": "Say hello."},
    {"id": "fruit", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}]},
    {"id": "sky", "prompt": "Why is the sky blue?"},
    {"id": "tea", "prompt": "How do I brew tea?"},
]
RANKINGS = {
    # round -> [(number of responses, ranking or None)] for the round's two prompts, in draw order
    0: [(3, [2, 0, 1]), (3, None)],
    1: [(4, [3, 1, 0, 2]), (2, [1, 0])],
}


def make_run(tmp_path):
    """A 2-round run with 2 prompts per round: 3 ranked prompts (3, 4 and 2 responses), 1 unranked."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    cfg = build_config(
        run_dir=tmp_path / "run", prompts=prompts, rounds=2, prompts_per_round=2,
        **{"ranker.base_url": "http://x/v1", "ranker.model": "m"},
    )
    run = RunDir(cfg.run_dir)
    run.prepare(cfg.to_json(), resume=False)
    drawn = {}
    for k, spec in RANKINGS.items():
        round_prompts = select_round_prompts(load_prompts(prompts), k, 2, cfg.seed)
        drawn[k] = round_prompts
        gens, results = [], []
        for p, (n, ranking) in zip(round_prompts, spec):
            texts = [f"{p.id} response {j}" for j in range(n)]
            gens.append(Generation(p.id, [1, 2], texts, [[3]] * n, [-1.0 - j for j in range(n)], [True] * n))
            results.append(RankResult(p.id, ranking, reason=None if ranking else "unparsable after 3 attempts: x"))
        write_jsonl(run.round(k).generations, [g.to_json() for g in gens])
        write_jsonl(run.round(k).rankings, [r.to_json() for r in results])
    return run, prompts, drawn


def test_ranking_format_one_row_per_ranked_prompt(tmp_path):
    run, _, drawn = make_run(tmp_path)
    ds = export_rankings(run.path, "ranking", tmp_path / "out")
    assert ds.num_rows == 3  # the unranked prompt of round 0 is skipped
    back = datasets.load_from_disk(str(tmp_path / "out"))
    assert back.column_names == ["prompt", "responses", "ranking", "round", "prompt_id"]
    rows = back.to_list()
    assert [(r["round"], r["prompt_id"]) for r in rows] == [(0, drawn[0][0].id), (1, drawn[1][0].id), (1, drawn[1][1].id)]
    for row in rows:
        prompt = next(p for p in drawn[row["round"]] if p.id == row["prompt_id"])
        assert row["prompt"] == prompt.messages  # TRL conversational messages, rebuilt from the prompt source
        assert row["responses"] == [f"{prompt.id} response {j}" for j in range(len(row["responses"]))]
    assert [r["ranking"] for r in rows] == [[2, 0, 1], [3, 1, 0, 2], [1, 0]]


def test_dpo_format_every_better_worse_pair(tmp_path):
    run, _, drawn = make_run(tmp_path)
    ds = export_rankings(run.path, "dpo", tmp_path / "out")
    assert ds.num_rows == 3 + 6 + 1  # N(N-1)/2 pairs for N = 3, 4, 2
    assert ds.column_names == ["prompt", "chosen", "rejected", "round", "prompt_id"]
    rows = datasets.load_from_disk(str(tmp_path / "out")).to_list()
    first = drawn[0][0]
    pairs = [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows if r["prompt_id"] == first.id]
    name = f"{first.id} response"
    # ranking [2, 0, 1]: 2 > 0, 2 > 1, 0 > 1
    assert pairs == [(f"{name} 2", f"{name} 0"), (f"{name} 2", f"{name} 1"), (f"{name} 0", f"{name} 1")]
    for r in rows:
        assert r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
        assert len(r["chosen"]) == len(r["rejected"]) == 1
        assert r["prompt"][-1]["role"] == "user"
    # round 1, ranking [3, 1, 0, 2]: response 3 is chosen against each of the 3 others, 2 is never chosen
    second = drawn[1][0].id
    chosen = [r["chosen"][0]["content"][-1] for r in rows if r["prompt_id"] == second]
    assert chosen == ["3", "3", "3", "1", "1", "0"]


def test_rounds_subset_and_clear_errors(tmp_path):
    run, prompts, _ = make_run(tmp_path)
    only = export_rankings(run.path, "ranking", tmp_path / "r1", rounds=[1])
    assert set(only["round"]) == {1} and only.num_rows == 2
    with pytest.raises(RunDirError, match="round_005"):
        export_rankings(run.path, "ranking", tmp_path / "r5", rounds=[5])
    with pytest.raises(ConfigError, match="dpo, ranking"):
        export_rankings(run.path, "pairs", tmp_path / "x")
    with pytest.raises(RunDirError, match="not an empty folder"):
        export_rankings(run.path, "dpo", tmp_path / "r1")  # nothing is overwritten
    with pytest.raises(RunDirError, match="no ranked prompt"):
        export_rankings(run.path, "dpo", tmp_path / "r0", rounds=[])
    prompts.unlink()
    with pytest.raises(RunDirError, match="prompts.jsonl: the prompt source named in .*config.json is missing"):
        export_rankings(run.path, "dpo", tmp_path / "gone")


def test_prompt_source_changed_since_the_run_is_detected(tmp_path):
    run, prompts, _ = make_run(tmp_path)
    prompts.write_text("".join(json.dumps({**p, "id": p["id"] + "-new"}) + "\n" for p in PROMPTS))
    with pytest.raises(RunDirError, match="generations.jsonl: prompts .* of round 0 are no longer in the prompt source"):
        export_rankings(run.path, "ranking", tmp_path / "out")


def test_cli_export_prints_counts_and_fails_with_one_line(tmp_path):
    run, prompts, _ = make_run(tmp_path)
    result = runner.invoke(app, ["export", "--run-dir", str(run.path), "--format", "dpo", "--out", str(tmp_path / "dpo"), "--round", "0", "--round", "1"])
    assert result.exit_code == 0, result.output
    assert "10 rows" in flat(result.output) and "3 ranked prompts" in flat(result.output)
    assert datasets.load_from_disk(str(tmp_path / "dpo")).num_rows == 10
    result = runner.invoke(app, ["export", "--run-dir", str(run.path), "--format", "ranking", "--out", str(tmp_path / "rk"), "--round", "1"])
    assert result.exit_code == 0 and "2 rows" in flat(result.output) and "2 ranked prompts" in flat(result.output)

    # the previous release's spelling (positional run directory, --rounds 0,1) works, with a note per change
    result = runner.invoke(app, ["export", str(run.path), "--format", "ranking", "--out", str(tmp_path / "old"), "--rounds", "1"])
    assert result.exit_code == 0 and "2 rows" in flat(result.output)
    assert [line.split(";")[0] for line in result.stderr.splitlines() if "deprecated" in line] == [
        "cyclealign: the positional RUN_DIR is deprecated", "cyclealign: --rounds is deprecated"]
    result = runner.invoke(app, ["export", "--run-dir", str(run.path), "--format", "ranking", "--out", str(tmp_path / "x"), "--rounds", "0,a"])
    assert result.exit_code == 2 and "error:" in flat(result.output) and "'a'" in flat(result.output)
    result = runner.invoke(app, ["export", "--run-dir", str(run.path), "--format", "ranking", "--out", str(tmp_path / "x"), "--round", "1", "--rounds", "0,1"])
    assert result.exit_code == 2 and result.stderr.splitlines() == ["error: --round 1 disagrees with 0,1 given as --rounds (deprecated); give --round only"]
    prompts.unlink()
    result = runner.invoke(app, ["export", "--run-dir", str(run.path), "--format", "dpo", "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "prompts.jsonl" in flat(result.output) and "Traceback" not in flat(result.output)
    result = runner.invoke(app, ["export", "--run-dir", str(tmp_path / "nowhere"), "--format", "dpo", "--out", str(tmp_path / "z")])
    assert result.exit_code == 2 and "config.json: not found" in flat(result.output)


@pytest.mark.slow
def test_dpo_export_trains_through_trls_own_dpo_trainer(tmp_path, embedded_model_dir):
    """The saved dpo dataset goes through ``trl.DPOTrainer``'s own data path (conversational format:
    chat template, tokenisation) and one optimiser step on the real SmolLM2."""
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    run, _, _ = make_run(tmp_path)
    export_rankings(run.path, "dpo", tmp_path / "dpo")
    dataset = datasets.load_from_disk(str(tmp_path / "dpo"))
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    args = DPOConfig(
        output_dir=str(tmp_path / "trainer"), max_steps=1, per_device_train_batch_size=2, max_length=128,
        use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, seed=0,
    )
    trainer = DPOTrainer(model=str(embedded_model_dir), args=args, train_dataset=dataset, processing_class=tok)
    prepared = trainer.train_dataset
    assert prepared.num_rows == 10
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(prepared.column_names)
    for row in prepared:
        # TRL applied the model's chat template: the prompt ends with the assistant header, the
        # completions are the raw responses closed by the end-of-turn token.
        assert tok.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")
        assert tok.decode(row["prompt_ids"]).count(row["prompt"][-1]["content"]) == 1
        assert tok.decode(row["chosen_ids"]).startswith(row["chosen"][0]["content"] + tok.eos_token)
        assert tok.decode(row["rejected_ids"]).startswith(row["rejected"][0]["content"] + tok.eos_token)
    result = trainer.train()
    assert result.global_step == 1
    # The policy starts equal to its reference: every margin is 0 and the DPO loss is log 2.
    assert result.training_loss == pytest.approx(math.log(2), abs=1e-4)


def test_push_to_hub_offline_is_one_line_and_the_local_export_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run, _, _ = make_run(tmp_path)
    out = tmp_path / "dpo"
    result = runner.invoke(app, ["export", "--run-dir", str(run.path), "--format", "dpo", "--out", str(out), "--push-to-hub", "someone/prefs"])
    assert result.exit_code == 2, result.output
    assert "could not push to the Hugging Face Hub repo 'someone/prefs'" in flat(result.output) and "Traceback" not in result.output
    assert datasets.load_from_disk(str(out)).num_rows == 10  # saved before the push was tried
