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
CHROMIUM = "/usr/bin/chromium"  # Debian's chromium (scripts/setup.sh installs it as root)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


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
def headless_chromium():
    """A headless Chromium driven by playwright (its Python package, offline: the browser is
    Debian's ``chromium`` at ``/usr/bin/chromium`` or ``$CYCLEALIGN_TEST_CHROMIUM``, never one
    ``playwright install`` downloads). Missing either, the browser tests are skipped, except under
    CI (``CI`` set), where they fail: CI installs both (``scripts/setup.sh`` as root). One browser
    per test: while playwright's sync API runs, its event loop holds the thread, so a fixture
    that calls ``asyncio.run`` (a run's ranker) must be set up before this one (a wider scope)."""
    path = Path(os.environ.get("CYCLEALIGN_TEST_CHROMIUM") or CHROMIUM)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright, missing = None, "the playwright package is not installed: pip install -e '.[dev]'"
    else:
        missing = None if path.exists() else f"{path} not found: apt-get install chromium (scripts/setup.sh as root)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(path), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


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
