"""The stand-in for vLLM's server (tests/vllm_server.py), as far as the backend's stand-in tests use it:
vLLM 0.32's error shapes and routes, dev-mode sleep (with and without sleep mode: a sleeping engine holds
requests until woken), ``/server_info``, the API key, ``--model``, and the process form's startup checks.
Generation, log-probs and adapters are tested against the real server (tests/test_vllm_real.py).

Needs the fixture ``embedded_model_dir`` (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vllm_server import VLLMTestServer

pytestmark = pytest.mark.slow

SERVER = Path(__file__).with_name("vllm_server.py")
LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def call(url: str, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, object]:
    """One HTTP request; the body parsed as JSON when it is JSON, else the text."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            code, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        code, text = e.code, e.read().decode()
    try:
        return code, json.loads(text)
    except json.JSONDecodeError:
        return code, text


@pytest.fixture(scope="module")
def server(embedded_model_dir):
    with VLLMTestServer(embedded_model_dir, enable_lora=True, max_lora_rank=16, env=LORA_ENV) as srv:
        yield srv


@pytest.fixture(scope="module")
def prompt(server) -> list[int]:
    msgs = [{"role": "user", "content": "Name a fruit."}]
    return list(server.engine.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))


def test_error_shapes_and_routes(server, prompt):
    code, body = call(server.url, "POST", "/v1/completions", {"model": "nope", "prompt": prompt})
    assert (code, body) == (404, {"error": {"message": "The model `nope` does not exist.", "type": "NotFoundError",
                                            "param": "model", "code": 404}})
    for bad, param in [({"n": 0}, "n"), ({"top_p": 0}, "top_p"), ({"logprobs": 21}, "logprobs"), ({"stream": True}, "stream")]:
        code, body = call(server.url, "POST", "/v1/completions", {"prompt": prompt, **bad})
        assert code == 400 and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert (body["error"]["type"], body["error"]["param"], body["error"]["code"]) == ("BadRequestError", param, 400)
    assert call(server.url, "GET", "/health") == (200, "")
    assert call(server.url, "GET", "/nope") == (404, {"detail": "Not Found"})
    assert call(server.url, "GET", "/v1/completions") == (405, {"detail": "Method Not Allowed"})
    assert call(server.url, "POST", "/sleep") == (404, {"detail": "Not Found"})  # dev-mode route, not registered


def test_dev_mode_sleep_with_and_without_sleep_mode_and_the_api_key(embedded_model_dir, prompt):
    """As vLLM 0.32: /sleep answers 200 and pauses the engine whether or not it has sleep mode (without it
    nothing is freed), a request waits until /wake_up; /server_info says which; /v1 needs the key."""
    env = {"VLLM_SERVER_DEV_MODE": "1", "VLLM_API_KEY": "k-1"}
    with VLLMTestServer(embedded_model_dir, served_model_name="policy", enable_lora=True, env=env) as srv:
        auth = {"Authorization": "Bearer k-1"}
        assert call(srv.url, "GET", "/v1/models") == (401, {"error": "Unauthorized"})
        assert call(srv.url, "GET", "/v1/models", headers={"Authorization": "Bearer nope"})[0] == 401
        assert call(srv.url, "GET", "/v1/models", headers=auth)[0] == 200
        assert call(srv.url, "POST", "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/x"}, auth) == (404, {"detail": "Not Found"})
        code, info = call(srv.url, "GET", "/server_info?config_format=json")  # not under /v1: no key needed
        assert code == 200 and info["vllm_config"]["model_config"]["enable_sleep_mode"] is False
        assert call(srv.url, "POST", "/sleep?level=1") == (200, {"status": "sleeping", "level": 1})
        assert call(srv.url, "GET", "/is_sleeping") == (200, {"is_sleeping": True})
        answered: list[int] = []
        t = threading.Thread(target=lambda: answered.append(call(srv.url, "POST", "/v1/completions", {"model": "policy", "prompt": prompt, "max_tokens": 2}, auth)[0]))
        t.start()
        t.join(timeout=2)
        assert t.is_alive() and not answered  # held while asleep
        assert call(srv.url, "POST", "/wake_up") == (200, {"status": "awake", "tags": None})
        t.join(timeout=120)
        assert answered == [200] and call(srv.url, "GET", "/is_sleeping") == (200, {"is_sleeping": False})
        srv.enable_sleep_mode = True  # as if started with --enable-sleep-mode
        assert call(srv.url, "GET", "/server_info?config_format=json")[1]["vllm_config"]["model_config"]["enable_sleep_mode"] is True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_process_form_starts_answers_health_and_stops(embedded_model_dir, tmp_path):
    port, log = _free_port(), tmp_path / "server.log"
    cmd = [sys.executable, str(SERVER), "serve", "--model", str(embedded_model_dir), "--port", str(port), "--enable-lora",
           "--max-lora-rank", "8", "--max-loras", "2", "--gpu-memory-utilization", "0.3", "--tensor-parallel-size", "1",
           "--data-parallel-size", "1", "--logprobs-mode", "raw_logprobs", "--enable-prefix-caching", "--cpu-threads", "1"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **LORA_ENV})
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.time() + 300
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if call(url, "GET", "/health") == (200, ""):
                    break
            except OSError:
                pass
            assert time.time() < deadline, log.read_text()
            time.sleep(0.5)
        code, body = call(url, "GET", "/v1/models")
        assert code == 200 and body["data"][0]["id"] == str(embedded_model_dir)  # --served-model-name defaults to MODEL
        code, body = call(url, "POST", "/v1/load_lora_adapter", {})
        assert code == 400 and body["error"]["type"] == "InvalidUserInput"  # the runtime LoRA route is there
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    text = log.read_text()
    assert rc == 0 and '"GET /health HTTP/1.1" 200' in text and "'--enable-prefix-caching'" in text


def test_fail_at_start_and_bad_flags_exit_nonzero(tmp_path):
    r = subprocess.run([sys.executable, str(SERVER), "serve", str(tmp_path), "--fail-at-start"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "ERROR" in r.stderr
    r = subprocess.run([sys.executable, str(SERVER), "serve", str(tmp_path), "--max-lora-rank", "4"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "--max-lora-rank" in r.stderr
    r = subprocess.run([sys.executable, str(SERVER), "serve", "--model", str(tmp_path), "--data-parallel-size", "2"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, **LORA_ENV})
    assert r.returncode == 1 and "VLLM_ALLOW_RUNTIME_LORA_UPDATING cannot be used with api_server_count > 1" in r.stderr
