"""Shared fixtures. Tests never reach a model hub: HF_HUB_OFFLINE is set before anything loads."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HH_RLHF = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"  # scripts/setup.sh --vllm


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors directory (converted once, cached)."""
    from cyclealign.config.policy import ModelConfig
    from cyclealign.models.loading import resolve_model_dir

    return Path(resolve_model_dir(ModelConfig()))


@pytest.fixture(scope="session")
def hh_rlhf_path() -> Path:
    """The real HH-RLHF harmless-base test file from ../shared (skips when absent)."""
    if not HH_RLHF.exists():
        pytest.skip(f"{HH_RLHF} not present (the shared data folder is optional)")
    return HH_RLHF


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The Python of the vLLM venv (``scripts/setup.sh --vllm``: vLLM's CPU build), or
    ``$CYCLEALIGN_TEST_VLLM_PYTHON``. Missing, the real-vLLM tests are skipped, except under CI
    (``CI`` set), where they fail: CI builds that venv."""
    path = Path(os.environ.get("CYCLEALIGN_TEST_VLLM_PYTHON") or VLLM_PYTHON)
    if not path.exists():
        message = f"{path} not found: build it with scripts/setup.sh --vllm"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    """Four one-turn prompts as a JSONL file."""
    p = tmp_path / "prompts.jsonl"
    rows = [{"prompt": q} for q in ("Name a color.", "Say hi.", "Name an animal.", "Count to three.")]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.fixture(scope="module")
def templates():
    """The shipped ranker templates (:class:`~cyclealign.templates.ranker.RankerTemplates`)."""
    from cyclealign.resources import default_templates_dir
    from cyclealign.templates.ranker import RankerTemplates

    return RankerTemplates(default_templates_dir())
