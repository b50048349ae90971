import json

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
