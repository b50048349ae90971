"""The HTML report as a browser shows it: the report of a real run (two rounds of ``iterate`` on a
tiny random Llama policy, ranked by a scripted black box priced at 0 USD, no evaluation) rendered by
headless Chromium (``headless_chromium`` in conftest.py) at 1400 x 900.

The page must fit the window: no horizontal page scroll, no table scrolling in its own box, every
column header (the ranker cost's included) inside the window, no cell whose content spills out
of it (one prompt holds a 188-character URL). The same run is shown again as a long paid,
evaluated one would record it (seven-digit counts, a cost, held-out samples with a 300-character
URL). A screenshot of the whole page is saved to the test's tmp_path and, when
``$CYCLEALIGN_TEST_REPORT_SCREENSHOT`` is set (to look at it), the free run's there and the paid
one's beside it (``<stem>_paid.png``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cyclealign.config import build_config
from cyclealign.report.html import write_report
from cyclealign.rundir import RunDir
from cyclealign.files import write_jsonl
from scripted_api import ScriptedAPI
from scripted_run import KEY, reverse_ranker
from tiny_model import build_tiny_model_dir

pytestmark = pytest.mark.slow

WINDOW = {"width": 1400, "height": 900}
LONG_URL = "https://example.com/" + "averyveryverylongpathsegment" * 6
MAX_NEW_TOKENS = 12

MEASURE = """() => {
  const spills = [];
  for (const el of document.querySelectorAll("td, th")) {
    if (el.scrollWidth > el.clientWidth + 1) spills.push([el.tagName, el.textContent.slice(0, 60), el.scrollWidth, el.clientWidth]);
  }
  const boxes = [];
  for (const el of document.querySelectorAll(".wide")) {
    if (el.scrollWidth > el.clientWidth + 1) boxes.push([el.textContent.slice(0, 60), el.scrollWidth, el.clientWidth]);
  }
  const headers = {};
  for (const th of document.querySelectorAll("th")) headers[th.textContent] = th.getBoundingClientRect().right;
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth, spills, boxes, headers};
}"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real two-round run: the tiny model samples 3 responses of up to 12 tokens per prompt (a
    random model seldom ends one: most are cut at the cap), a free scripted ranker, no evaluation."""
    tmp = tmp_path_factory.mktemp("report_browser")
    prompts = tmp / "prompts.jsonl"
    texts = [f"Summarise {LONG_URL} please.", "Say hi.", "Name an animal."]  # the report shows 3 per round
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    with ScriptedAPI(fallback=reverse_ranker) as api:
        cfg = build_config(**{
            "run_dir": tmp / "run", "prompts": prompts, "rounds": 2, "prompts_per_round": 3,
            "model.name_or_path": str(build_tiny_model_dir(tmp / "tiny")), "generation.num_samples": 3,
            "generation.max_new_tokens": MAX_NEW_TOKENS, "agreement.min_length": 1, "train.epochs": 1,
            "ranker.base_url": api.base_url, "ranker.model": "scripted", "ranker.cache_path": tmp / "cache.sqlite",
            "ranker.price_input_per_mtok": 0.0, "ranker.price_output_per_mtok": 0.0,
        })
        from cyclealign.loop import iterate

        iterate(cfg, environ={"OPENAI_API_KEY": KEY})
    return RunDir(cfg.run_dir)


@pytest.fixture(scope="module")
def paid_run(tiny_run, tmp_path_factory):
    """The same run as a long paid one would record it (seven-digit token counts, a cost in USD,
    hours of phases) with an evaluation of its three policies: held-out samples with a 300-character
    URL, one of them cut at the cap."""
    run = RunDir(shutil.copytree(tiny_run.path, tmp_path_factory.mktemp("paid") / "run"))
    big = {
        "ranker_calls": 123456, "ranker_api_calls": 123456, "ranker_cache_hits": 12345, "tokens_sent": 12345678,
        "tokens_received": 1234567, "ranker_cost_usd": 123.4567, "consistency_rate": 0.875, "kept_rate": 1.0, "confidence_mean": 0.9167, "generated_tokens": 1234567,
        "phase_s": {"generate": 12345.6, "rank": 2345.6, "agreement": 1.0, "train": 34567.8},
    }
    for k in range(2):
        line = {key: v for key, v in run.round(k).phases()["metrics"].items() if key != "wall_s"}
        run.round(k).mark_done("metrics", **{**line, **big}, wall_s=0.1)
    policies = [(-1, "base"), (0, "round 0"), (1, "round 1")]
    write_jsonl(run.eval_summary, [
        {"round": k, "label": label, "vs": "base", "prompts": 32, "wins": 12, "losses": 9, "ties": 11, "win_rate": 0.5714,
         "ci_low": 0.3655, "ci_high": 0.7553, "kendall_tau": 0.1234, "agreement_rate": 0.6543, "length_mean": 123.45,
         "length_std": 67.89, "reward_mean": -1.2345, "reward_std": 0.5678, "decoding": "greedy", "max_new_tokens": 128}
        for k, label in policies
    ])
    url = "https://example.com/" + "x" * 280
    write_jsonl(run.eval_samples, [
        {"round": k, "label": label, "prompt_id": f"h{i}", "prompt": f"User: question {i} about {url}",
         "response": f"{label} answers {url} and more", "tokens": 128, "finished": i != 0}
        for k, label in policies for i in range(3)
    ])
    return run


def shown_cut_responses(run):
    """How many of the report's top- and bottom-ranked responses the run recorded as cut at the cap."""
    from cyclealign.report.sections import ROUND_SAMPLES

    cut = 0
    for k in range(2):
        rankings = {r.prompt_id: r for r in run.round(k).read_rankings()}
        for g in run.round(k).read_generations()[:ROUND_SAMPLES]:
            ranking = rankings[g.prompt_id].ranking
            for i in (ranking[0], ranking[-1]):
                assert g.finished[i] or len(g.response_token_ids[i]) == MAX_NEW_TOKENS
                cut += not g.finished[i]
    return cut


def test_report_of_a_free_run_without_evaluation_says_so_and_marks_cut_responses(tiny_run):
    html = write_report(tiny_run.path).read_text()
    # A free ranker: no cost panel (the ranker plot is tokens only), and a line saying why.
    assert "The ranker was free (scripted priced at 0 USD per million tokens): no cost chart." in html
    assert "Ranker tokens per round (ranker.png)" in html and "Ranker tokens and cost" not in html
    # No evaluation: the commands that add one.
    assert "No held-out evaluation was run." in html
    assert f"cyclealign eval --run-dir {tiny_run.path}\n" in html
    assert f"cyclealign report --run-dir {tiny_run.path}" in html
    # Responses cut at the token cap are marked.
    cut = shown_cut_responses(tiny_run)
    assert cut > 0 and html.count(f"… [cut at {MAX_NEW_TOKENS} tokens]") == cut
    assert LONG_URL in html


@pytest.fixture(scope="module", params=["tiny_run", "paid_run"])
def shown_run(request):
    """Each run whose report the browser shows (module scope: built before the browser starts)."""
    return request.param, request.getfixturevalue(request.param)


def test_report_fits_a_1400_px_window_in_chromium(shown_run, headless_chromium, tmp_path):
    which, run = shown_run
    path = write_report(run.path)
    page = headless_chromium.new_page(viewport=WINDOW)
    try:
        page.goto(path.resolve().as_uri())
        m = page.evaluate(MEASURE)
        shot = tmp_path / "report_1400.png"
        page.screenshot(path=str(shot), full_page=True)
        cut_marks = page.locator(".cut")
        assert cut_marks.count() > 0 and cut_marks.first.is_visible()
        prompt_cell = page.locator("td", has_text="https://example.com/").first
        prompt_width = prompt_cell.bounding_box()["width"]
    finally:
        page.close()
    if os.environ.get("CYCLEALIGN_TEST_REPORT_SCREENSHOT"):  # the free run's there, the paid one's beside it
        dest = Path(os.environ["CYCLEALIGN_TEST_REPORT_SCREENSHOT"])
        shutil.copyfile(shot, dest if which == "tiny_run" else dest.with_stem(dest.stem + "_paid"))
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert m["scrollWidth"] <= m["innerWidth"] == WINDOW["width"], m
    assert m["spills"] == [], m["spills"]  # no cell content wider than its cell
    assert m["boxes"] == [], m["boxes"]  # no table scrolls inside its box either: every column shows
    for label in ("round", "agreement rate", "ranker tokens received", "ranker cost USD", "wall s (phases)"):
        assert 0 < m["headers"][label] <= WINDOW["width"], (label, m["headers"])
    assert prompt_width < 600  # the URL wrapped inside its cell (one of three columns of the page)
