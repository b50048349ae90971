import json
from pathlib import Path

import pytest

from cyclealign.config import Config, build_config
from cyclealign.errors import ConfigError


def test_defaults_and_threshold():
    cfg = build_config()
    assert cfg.generation.num_samples == 4
    assert cfg.agreement_min_length == 3
    assert build_config(**{"agreement.min_length": 2}).agreement_min_length == 2


def test_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"generation\.num_samples"):
        build_config(**{"generation.num_samples": 1})
    with pytest.raises(ConfigError, match="agreement.min_length=5 exceeds generation.num_samples=4"):
        build_config(**{"agreement.min_length": 5})
    with pytest.raises(ConfigError, match="ranker.model is required"):
        build_config(**{"ranker.base_url": "http://x/v1"})


def test_config_file_roundtrip_and_unknown_field(tmp_path):
    cfg = build_config(**{"rounds": 3, "train.sft_weight": 0.5})
    p = tmp_path / "c.json"
    p.write_text(cfg.to_json())
    assert Config.from_json_file(p) == cfg
    bad = json.loads(cfg.to_json())
    bad["train"]["lr"] = 1.0
    p.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"c.json: train\.lr"):
        Config.from_json_file(p)


def test_saved_config_holds_no_secret_field():
    assert "key" not in json.dumps(json.loads(build_config().to_json())["ranker"]).replace("api_key_env", "")


def test_complete_missing_last_defaults_on_only_for_the_embedded_ranker():
    assert build_config().ranker.complete_missing_last is True
    external = build_config(**{"ranker.base_url": "http://127.0.0.1:1/v1", "ranker.model": "m"})
    assert external.ranker.complete_missing_last is False
    forced = build_config(**{"ranker.base_url": "http://127.0.0.1:1/v1", "ranker.model": "m", "ranker.complete_missing_last": True})
    assert forced.ranker.complete_missing_last is True


def test_qlora_cannot_merge():
    with pytest.raises(ConfigError, match="cannot merge into a 4-bit base"):
        build_config(**{"train.qlora": True, "train.merge": True})


def test_eval_settings_one_or_several_sources_and_resumable(tmp_path):
    from cyclealign.config import RESUMABLE_CHANGES

    cfg = build_config()
    assert (cfg.eval.decoding, cfg.eval.max_new_tokens, cfg.generation.max_new_tokens) == ("greedy", 128, 64)
    assert cfg.eval.prompt_sources == []
    one = build_config(**{"eval.prompts": "held.jsonl"})
    assert one.eval.prompts == Path("held.jsonl") and one.eval.prompt_sources == [Path("held.jsonl")]
    two = build_config(**{"eval.prompts": ["a/x.jsonl", "b/y.jsonl.gz"], "eval.every": 1})
    assert two.eval.prompt_sources == [Path("a/x.jsonl"), Path("b/y.jsonl.gz")]
    p = tmp_path / "c.json"
    p.write_text(two.to_json())
    assert Config.from_json_file(p) == two
    with pytest.raises(ConfigError, match="have the same name 'x'"):
        build_config(**{"eval.prompts": ["a/x.jsonl", "b/x.jsonl.gz"]})
    with pytest.raises(ConfigError, match=r"eval\.decoding"):
        build_config(**{"eval.decoding": "beam"})
    assert {"eval.decoding", "eval.max_new_tokens", "eval.prompts"} <= RESUMABLE_CHANGES


def test_call_budget_and_selection_are_checked():
    cfg = build_config(**{"prompts_per_round": 8, "ranker.calls_per_round": 4, "ranker.selection": "uncertainty"})
    assert cfg.ranked_per_round == 4 and build_config().ranked_per_round == 8 and build_config().ranker.selection == "random"
    k2 = {"ranker.consistency": 2, "ranker.calls_per_round": 6}
    assert build_config(prompts_per_round=2, **k2).ranked_per_round == 2  # the budget exceeds the candidates
    assert build_config(**k2).ranked_per_round == 3
    with pytest.raises(ConfigError, match="ranker.calls_per_round=5 is not a multiple of ranker.consistency=2.*use 4 or 6"):
        build_config(**{"ranker.consistency": 2, "ranker.calls_per_round": 5})
    with pytest.raises(ConfigError, match=r"ranker\.calls_per_round"):
        build_config(**{"ranker.calls_per_round": 0})
    with pytest.raises(ConfigError, match=r"ranker\.selection: Input should be 'random', 'uncertainty' or 'diversity'"):
        build_config(**{"ranker.selection": "entropy"})
