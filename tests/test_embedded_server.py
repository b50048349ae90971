"""The embedded ranker end to end: `transformers serve` on the real SmolLM2 model, ranked through
the real client with the shipped templates and demonstrations.

Needs the fixture ``embedded_model_dir`` (the converted embedded model's directory, from
tests/conftest.py).
"""

from __future__ import annotations

import os

import pytest
import tenacity

from cyclealign.config.ranker import RankerConfig
from cyclealign.errors import RankerError
from cyclealign.ranker.client import Ranker
from cyclealign.ranker.server import EmbeddedServer
from cyclealign.records import PromptRecord
from cyclealign.resources import default_demos_path, default_templates_dir
from cyclealign.templates.ranker import RankerTemplates, load_demonstrations

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_server_ranks_and_stops(embedded_model_dir, tmp_path):
    cfg = RankerConfig(max_tokens=24, max_retries=1, max_reasks=1, timeout_s=120)
    templates = RankerTemplates(default_templates_dir())
    demos = load_demonstrations(default_demos_path())[:2]
    prompt = PromptRecord("p0", [{"role": "user", "content": "How do I make a cup of tea?"}])
    responses = [
        "Boil water, pour it over a tea bag in a cup, steep 3-5 minutes, then remove the bag.",
        "Tea is a drink.",
        "Put the tea bag in cold water and drink it right away.",
        "I can't help with that.",
    ]
    log_path = tmp_path / "server.log"
    with EmbeddedServer(embedded_model_dir, log_path=log_path, startup_timeout_s=300) as server:
        pid = server.process.pid
        assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
        assert server.model == str(embedded_model_dir)
        with Ranker(
            cfg, base_url=server.base_url, model=server.model, api_key="local", templates=templates,
            retry_wait=tenacity.wait_none(),
        ) as ranker:
            ranker.preflight()
            result = ranker.rank(prompt, responses, demos)
    assert result.prompt_id == "p0" and 1 <= result.attempts <= 2
    assert len(result.raw_replies) == result.attempts and result.prompt_tokens > 0
    if result.ranking is None:
        assert result.reason and result.reason.startswith("unparsable after")
    else:
        assert sorted(result.ranking) == [0, 1, 2, 3] and result.reason is None
    assert server.process is None and not _alive(pid)
    assert log_path.read_text().startswith("$ ")


def test_embedded_server_missing_model_dir(tmp_path):
    with pytest.raises(RankerError, match="model directory .* not found"):
        with EmbeddedServer(tmp_path / "no-model", log_path=tmp_path / "server.log"):
            pass


def test_embedded_server_early_exit_reports_the_log(tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(RankerError) as e:
        with EmbeddedServer(empty, log_path=tmp_path / "server.log", startup_timeout_s=120):
            pass
    assert "exited with code" in str(e.value) and "server.log" in str(e.value)
