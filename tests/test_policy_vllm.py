"""The vLLM generation backend against the stand-in for vLLM's server (tests/vllm_server.py: the real
SmolLM2 with transformers and PEFT behind vLLM 0.32's HTTP API), for what vLLM's CPU build cannot do:
sleep mode, the data-parallel flags, and the launcher's failure paths. Everything the real server
can show is tested against it in tests/test_vllm_real.py."""

import json
import re
import socket
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cyclealign.cli import app
from cyclealign.config import build_config
from cyclealign.errors import PolicyError
from cyclealign.policy import make_policy
from cyclealign.policy.vllm_client import VLLMServer
from cyclealign.records import PromptRecord
from scripted_api import ScriptedAPI
from vllm_server import VLLMTestServer

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
STAND_IN = [sys.executable, str(HERE / "vllm_server.py"), "serve"]
SERVER_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_SERVER_DEV_MODE": "1"}
PROMPTS = [PromptRecord("a", [{"role": "user", "content": "Name a fruit."}])]


def vllm_config(tmp_path, base_url=None, **extra):
    return build_config(**{
        "run_dir": tmp_path / "run", "generation.backend": "vllm", "generation.num_samples": 3,
        "generation.max_new_tokens": 10, "generation.batch_size": 2, "vllm.base_url": base_url, **extra,
    })


@pytest.fixture(scope="module")
def server(embedded_model_dir):
    """A user's server with sleep mode (``--enable-sleep-mode`` and the dev-mode routes)."""
    with VLLMTestServer(embedded_model_dir, enable_lora=True, enable_sleep_mode=True, env=SERVER_ENV) as srv:
        yield srv


def random_adapter(model_dir, path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(path)
    return path


def is_sleeping(url: str) -> bool:
    return json.loads(urllib.request.urlopen(f"{url}/is_sleeping").read())["is_sleeping"]


def judge_or_rank(request):
    text = request["messages"][-1]["content"]
    n = len(re.findall(r'<response id="\d+">', text))
    return " > ".join(f"[{i}]" for i in range(n, 0, -1)) if n else "[1]"


def test_a_users_server_with_sleep_mode_sleeps_for_training_and_is_left_awake(server, embedded_model_dir, tmp_path, prompts_file, monkeypatch):
    """The server sleeps for each train phase, wakes for the next generation, and a run against a
    user's server leaves it awake, as it was found (before, the last train phase left it asleep and
    the user's next request waited for ever)."""
    policy = make_policy(vllm_config(tmp_path, server.base_url), str(embedded_model_dir))
    policy.greedy(PROMPTS)
    policy.close()  # the train phase
    assert is_sleeping(server.url)
    assert policy.greedy(PROMPTS)[0].responses and not is_sleeping(server.url)  # woken
    policy.close()
    policy.shutdown()  # the end of a run
    assert not is_sleeping(server.url)

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-vllm")
    slept = server.sleep_calls
    with ScriptedAPI(fallback=judge_or_rank) as api:
        args = [
            "iterate", "--run-dir", str(tmp_path / "run2"), "--prompts", str(prompts_file), "--rounds", "1", "--prompts-per-round", "2",
            "--num-samples", "2", "--max-new-tokens", "6", "--epochs", "1", "--lora-r", "8", "--policy-backend", "vllm",
            "--policy-base-url", server.base_url,
            "--ranker-base-url", api.base_url, "--ranker-model", "scripted", "--ranker-cache", str(tmp_path / "c.sqlite"),
        ]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert server.sleep_calls == slept + 1 and not is_sleeping(server.url)  # slept for the train phase, woken at the end


def test_a_started_server_with_sleep_mode_sleeps_instead_of_stopping(embedded_model_dir, tmp_path):
    cfg = vllm_config(tmp_path, **{"vllm.command": STAND_IN, "vllm.extra_args": ["--cpu-threads", "1"], "train.lora_r": 8})
    policy = make_policy(cfg, str(embedded_model_dir))
    try:
        policy.greedy(PROMPTS)
        server = policy._server
        assert server.sleep_mode and "--enable-sleep-mode" in server.command(1)
        policy.close()
        assert policy._server is server and server.process.poll() is None and is_sleeping(server.root_url)
        policy.greedy(PROMPTS)
        assert not is_sleeping(server.root_url)
    finally:
        policy.shutdown()
    assert server.process is None and not (tmp_path / "run" / "policy_server.pid").exists()


def test_data_parallel_runs_one_api_server_so_adapters_can_load(embedded_model_dir, tmp_path):
    """vLLM defaults --api-server-count to the DP size and refuses runtime LoRA updating with more
    than one API server: the launcher passes --api-server-count 1."""
    cfg = vllm_config(tmp_path, **{"vllm.command": STAND_IN, "vllm.extra_args": ["--cpu-threads", "1"], "vllm.data_parallel_size": 2})
    srv = VLLMServer(cfg.vllm, str(embedded_model_dir), log_path=tmp_path / "policy_server.log")
    cmd = srv.command(8000)
    assert cmd[cmd.index("--api-server-count") + 1] == "1" and cmd[cmd.index("serve") + 1] == str(embedded_model_dir)
    with srv:
        assert srv.process.poll() is None
    one = vllm_config(tmp_path, **{"vllm.command": STAND_IN})
    assert "--api-server-count" not in VLLMServer(one.vllm, "m", log_path=tmp_path / "x.log").command(8000)


def test_launcher_starts_and_stops_a_real_process_refuses_a_used_port_and_reports_a_failed_start(embedded_model_dir, tmp_path):
    cfg = vllm_config(tmp_path, **{"vllm.command": STAND_IN, "vllm.extra_args": ["--cpu-threads", "1"], "train.lora_r": 8})
    srv = VLLMServer(cfg.vllm, str(embedded_model_dir), log_path=tmp_path / "policy_server.log", pid_path=tmp_path / "server.pid")
    with srv:
        proc = srv.process
        assert proc is not None and proc.poll() is None
        assert "--enable-lora" in (tmp_path / "policy_server.log").read_text()
        assert json.loads((tmp_path / "server.pid").read_text())["pid"] == proc.pid
    assert proc.poll() is not None and not (tmp_path / "server.pid").exists()  # stopped
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


def test_no_vllm_on_path_says_how_to_install_it(embedded_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    policy = make_policy(vllm_config(tmp_path), str(embedded_model_dir))
    with pytest.raises(PolicyError, match=r"needs vLLM, which is not installed: install vLLM in its own venv .*vllm\.command"):
        policy.sample(PROMPTS, seed=0)


def test_a_server_without_lora_loading_is_named(embedded_model_dir, tmp_path):
    with VLLMTestServer(embedded_model_dir, enable_lora=True, env={}) as plain:
        policy = make_policy(vllm_config(tmp_path, plain.base_url), str(embedded_model_dir))
        policy.load_adapter(random_adapter(str(embedded_model_dir), tmp_path / "round_000" / "adapter"))
        with pytest.raises(PolicyError, match="cannot load LoRA adapters at run time: .*VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
            policy.sample(PROMPTS, seed=0)


def test_every_sampling_field_is_sent_so_the_models_generation_config_cannot_change_sampling(embedded_model_dir, tmp_path):
    """vLLM fills an unset sampling field from the model's generation_config.json (a Qwen model's
    top_k=20 and repetition penalty): with top_k=1 there, an unset top_k would make every sample
    the greedy one, and the N responses one."""
    model = tmp_path / "model"
    model.mkdir()
    for f in Path(embedded_model_dir).iterdir():
        (model / f.name).symlink_to(f)
    (model / "generation_config.json").unlink()
    gen = json.loads((Path(embedded_model_dir) / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**gen, "top_k": 1}))
    with VLLMTestServer(model, enable_lora=True, env=SERVER_ENV) as srv:
        assert srv.engine.defaults["top_k"] == 1
        cfg = vllm_config(tmp_path, srv.base_url, **{"generation.max_resample": 0, "generation.max_new_tokens": 16})
        gens = make_policy(cfg, str(model)).sample(PROMPTS, seed=0)
    assert len(gens[0].responses) == 3
