"""Shipped files through cyclealign.resources; the one ranking-to-pairs expander; shipped accelerate configs."""

from __future__ import annotations

import pytest
import yaml

from cyclealign import resources
from cyclealign.config import build_config
from cyclealign.pairs import preference_pairs


def test_every_shipped_file_is_found():
    assert (resources.default_templates_dir() / "ranker_system.jinja").is_file()
    for path in (resources.default_demos_path(), resources.default_prompts_path(), resources.prices_path(),
                 resources.report_template_path()):
        assert path.is_file(), path
    for name in resources.ACCELERATE_CONFIGS:
        config = yaml.safe_load(resources.accelerate_config_path(name).read_text())
        assert config["compute_environment"] == "LOCAL_MACHINE"
    with pytest.raises(ValueError, match="zero2"):
        resources.accelerate_config_path("zero9")


def test_accelerate_config_takes_a_shipped_name_or_a_path_resolved_at_launch(tmp_path, monkeypatch):
    from cyclealign.train.phase import launch_command

    monkeypatch.chdir(tmp_path)

    def config_file(value):
        cfg = build_config(**{"train.launcher": "accelerate", "train.accelerate_config": value})
        assert str(cfg.train.accelerate_config) == value  # stored as given (config.json moves between machines)
        cmd = launch_command(cfg, tmp_path / "run", 0)
        assert cmd[-5:] == ["train-round", "--run-dir", str(tmp_path / "run"), "--round", "0"]
        return cmd[cmd.index("--config_file") + 1]

    assert config_file("zero2") == str(resources.accelerate_config_path("zero2"))
    assert config_file("zero3.yaml") == str(resources.accelerate_config_path("zero3"))
    assert config_file("conf/zero2.yaml") == "conf/zero2.yaml"
    (tmp_path / "ddp.yaml").write_text("distributed_type: MULTI_GPU\n")  # a file of the user's wins over the name
    assert config_file("ddp.yaml") == "ddp.yaml"


def test_export_and_dpo_expand_a_ranking_into_the_same_pairs():
    from cyclealign.export import RankedList, to_rows
    from cyclealign.train.dpo import ranking_to_pairs
    from cyclealign.train.examples import RankingExample

    ranking = [2, 0, 3, 1]
    responses = ["r0", "r1", "r2", "r3"]
    rows = to_rows([RankedList(0, "p", [{"role": "user", "content": "q"}], responses, ranking)], "dpo")
    exported = [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows]
    ids = {f"r{i}": [10 + i] for i in range(4)}
    trained = ranking_to_pairs(RankingExample([1], [ids[responses[i]] for i in ranking]), "all")
    assert [(ids[c], ids[r]) for c, r in exported] == [(c, r) for _, c, r in trained]
    assert preference_pairs(ranking) == [(2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1)]
