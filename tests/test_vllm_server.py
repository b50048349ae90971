"""The vLLM stand-in (tests/vllm_server.py) on the real SmolLM2: vLLM's JSON shapes, seeded sampling,
raw log-probs equal to a separate forward pass, greedy = ``generate()``, LoRA load/unload, errors,
sleep/wake, and the process form (``python tests/vllm_server.py serve ...``).

Needs the fixture ``embedded_model_dir`` (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from cyclealign.logprobs import response_logprobs
from vllm_server import VLLMTestServer

pytestmark = pytest.mark.slow

SERVER = Path(__file__).with_name("vllm_server.py")
LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
RESPONSE_KEYS = {"id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage",
                 "kv_transfer_params"}
CHOICE_KEYS = {"index", "text", "logprobs", "finish_reason", "stop_reason", "token_ids", "prompt_logprobs", "prompt_token_ids"}


def call(url: str, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    """One HTTP request; the body parsed as JSON when it is JSON, else the text."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            code, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        code, text = e.code, e.read().decode()
    try:
        return code, json.loads(text)
    except json.JSONDecodeError:
        return code, text


def ids_of(choice: dict) -> list[int]:
    return [int(t.removeprefix("token_id:")) for t in choice["logprobs"]["tokens"]]


@pytest.fixture(scope="module")
def one_thread():
    """Two shared cores: one torch thread is far faster than two contended ones."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def server(embedded_model_dir, one_thread):
    with VLLMTestServer(embedded_model_dir, enable_lora=True, max_lora_rank=16, env=LORA_ENV) as srv:
        yield srv


@pytest.fixture(scope="module")
def ref(embedded_model_dir, one_thread):
    """A separately loaded copy of the base model (the reference forward passes)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompt(server) -> list[int]:
    msgs = [{"role": "user", "content": "Name a fruit."}]
    return list(server.engine.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))


@pytest.fixture(scope="module")
def adapters(embedded_model_dir, tmp_path_factory):
    """Two PEFT LoRA adapters with random non-zero B: rank 8 (servable) and rank 32 (over --max-lora-rank 16)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for r in (8, 32):
        torch.manual_seed(r)
        base = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
        cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
        out[r] = tmp_path_factory.mktemp(f"lora_r{r}")
        get_peft_model(base, cfg).save_pretrained(out[r])
    return out


def forward_logprobs(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Per-token log-probs of ``response`` after ``prompt`` from one forward pass."""
    ids = torch.tensor([prompt + response])
    resp = torch.zeros_like(ids)
    resp[0, len(prompt):] = 1
    with torch.no_grad():
        lp = response_logprobs(model, ids, torch.ones_like(ids), resp)
    return lp[0, len(prompt) - 1:]


def complete(server, prompt, **kw) -> dict:
    code, body = call(server.url, "POST", "/v1/completions", {"model": server.model, "prompt": prompt, **kw})
    assert code == 200, body
    return body


def test_completion_has_vllm_shape_seeded_choices_and_raw_logprobs_equal_to_a_forward_pass(server, ref, prompt):
    kw = {"n": 3, "seed": 11, "temperature": 1.0, "top_p": 0.9, "max_tokens": 12, "logprobs": 0,
          "return_tokens_as_token_ids": True}
    body = complete(server, prompt, **kw)
    assert set(body) == RESPONSE_KEYS and body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == server.model
    tok, eos = server.engine.tok, server.engine.tok.eos_token_id
    gen = 0
    for i, ch in enumerate(body["choices"]):
        assert set(ch) == CHOICE_KEYS and ch["index"] == i and ch["token_ids"] is None and ch["prompt_logprobs"] is None
        lp = ch["logprobs"]
        assert set(lp) == {"text_offset", "token_logprobs", "tokens", "top_logprobs"}
        ids = ids_of(ch)
        assert len(ids) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) <= 12
        # logprobs=0: exactly the sampled token's log-prob, as vLLM always includes it.
        assert lp["top_logprobs"] == [{t: v} for t, v in zip(lp["tokens"], lp["token_logprobs"])]
        assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:j]) for j in range(len(ids))]
        if ch["finish_reason"] == "stop":  # the EOS is in tokens and log-probs, not in the text
            assert ids[-1] == eos and ch["stop_reason"] is None and ch["text"] == tok.decode(ids[:-1], skip_special_tokens=True)
        else:
            assert ch["finish_reason"] == "length" and len(ids) == 12 and ch["text"] == tok.decode(ids, skip_special_tokens=True)
        # Raw (untempered, no top-p) log-probs: equal to a separate forward pass of the base model.
        expected = forward_logprobs(ref, prompt, ids)
        got = torch.tensor(lp["token_logprobs"])
        assert abs(float(expected.mean() - got.mean())) < 1e-4, (expected, got)
        assert torch.allclose(expected, got, atol=1e-3)
        gen += len(ids)
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": gen, "total_tokens": len(prompt) + gen,
                             "prompt_tokens_details": None}
    # Same seed, same choices; another seed, other choices; choice i is drawn with seed + i (vLLM's n > 1).
    again = complete(server, prompt, **kw)
    assert [c["logprobs"] for c in again["choices"]] == [c["logprobs"] for c in body["choices"]]
    other = complete(server, prompt, **{**kw, "seed": 12})
    assert [ids_of(c) for c in other["choices"]] != [ids_of(c) for c in body["choices"]]
    single = complete(server, prompt, **{**kw, "n": 1, "seed": 12})
    assert ids_of(single["choices"][0]) == ids_of(body["choices"][1])


def test_greedy_equals_generate_and_openai_client_parses_the_response(server, ref, prompt):
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
    resp = client.completions.create(model=server.model, prompt=prompt, temperature=0, max_tokens=16, logprobs=2,
                                     extra_body={"return_tokens_as_token_ids": True, "return_token_ids": True})
    ch = resp.choices[0].model_dump()
    ids = torch.tensor([prompt])
    out = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16,
                       pad_token_id=server.engine.tok.eos_token_id, eos_token_id=server.engine.tok.eos_token_id)
    expected = out[0, len(prompt):].tolist()
    assert ids_of(ch) == ch["token_ids"] == expected and ch["prompt_token_ids"] == prompt
    # It ends with EOS: in tokens, token ids and log-probs, not in the text; stop_reason null.
    assert expected[-1] == server.engine.tok.eos_token_id and (ch["finish_reason"], ch["stop_reason"]) == ("stop", None)
    assert ch["text"] == server.engine.tok.decode(expected[:-1], skip_special_tokens=True) == resp.choices[0].text
    for t, v, top in zip(ch["logprobs"]["tokens"], ch["logprobs"]["token_logprobs"], ch["logprobs"]["top_logprobs"]):
        assert list(top)[0] == t and top[t] == v and len(top) == 2  # the sampled token (here the argmax), then the next
        assert max(top.values()) == v  # greedy: the sampled token is the argmax
    # A stop token id: kept in tokens, out of the text, named in stop_reason.
    stop_id = expected[2]
    ch = complete(server, prompt, temperature=0, max_tokens=16, logprobs=0, return_tokens_as_token_ids=True,
                  stop_token_ids=[stop_id])["choices"][0]
    assert ids_of(ch) == expected[:3] and (ch["finish_reason"], ch["stop_reason"]) == ("stop", stop_id)
    assert ch["text"] == server.engine.tok.decode(expected[:2], skip_special_tokens=True)
    # prompt_logprobs: None for the first token, then the prompt token's raw log-prob (and the top 1) with its rank.
    plp = complete(server, prompt[:6], max_tokens=1, prompt_logprobs=1)["choices"][0]["prompt_logprobs"]
    want = forward_logprobs(ref, prompt[:1], prompt[1:6])
    assert plp[0] is None and len(plp) == 6
    for row, tid, v in zip(plp[1:], prompt[1:6], want):
        assert 1 <= len(row) <= 2 and abs(row[str(tid)]["logprob"] - float(v)) < 1e-4
        assert set(row[str(tid)]) == {"logprob", "rank", "decoded_token"} and row[str(tid)]["rank"] >= 1


def test_lora_adapter_load_serve_and_unload(server, ref, prompt, adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    code, text = call(server.url, "POST", "/v1/load_lora_adapter", {"lora_name": "run-r1", "lora_path": str(adapters[8])})
    assert (code, text) == (200, "Success: LoRA adapter 'run-r1' added successfully.")
    code, body = call(server.url, "GET", "/v1/models")
    assert code == 200 and body["object"] == "list"
    base_card, lora_card = body["data"]
    assert set(base_card) == {"id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"}
    assert (base_card["id"], base_card["root"], base_card["owned_by"], base_card["parent"]) == (server.model, server.model, "vllm", None)
    assert (lora_card["id"], lora_card["root"], lora_card["parent"]) == ("run-r1", str(adapters[8]), server.model)
    assert lora_card["permission"][0]["object"] == "model_permission"

    kw = {"temperature": 0, "max_tokens": 10, "logprobs": 0, "return_tokens_as_token_ids": True}
    base = complete(server, prompt, **kw)["choices"][0]
    code, lora = call(server.url, "POST", "/v1/completions", {"model": "run-r1", "prompt": prompt, **kw})
    assert code == 200 and lora["model"] == "run-r1"
    lora = lora["choices"][0]
    assert ids_of(lora) != ids_of(base)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(server.model_path, dtype=torch.float32),
                                      str(adapters[8])).eval()
    expected = forward_logprobs(tuned, prompt, ids_of(lora))
    assert abs(float(expected.mean()) - sum(lora["logprobs"]["token_logprobs"]) / len(ids_of(lora))) < 1e-4
    assert abs(float(forward_logprobs(ref, prompt, ids_of(lora)).mean() - expected.mean())) > 1e-2
    assert ids_of(complete(server, prompt, **kw)["choices"][0]) == ids_of(base)  # the base is untouched

    code, body = call(server.url, "POST", "/v1/load_lora_adapter", {"lora_name": "run-r1", "lora_path": str(adapters[8])})
    assert code == 400 and body["error"]["type"] == "InvalidUserInput"
    assert body["error"]["message"].startswith("The lora adapter 'run-r1' has already been loaded.")
    code, body = call(server.url, "POST", "/v1/load_lora_adapter", {"lora_name": "big", "lora_path": str(adapters[32])})
    assert (code, body["error"]["message"]) == (400, "LoRA rank 32 is greater than max_lora_rank 16.")
    code, body = call(server.url, "POST", "/v1/load_lora_adapter", {"lora_name": "gone", "lora_path": "/no/such/dir"})
    assert (code, body["error"]["type"]) == (404, "NotFoundError") and "No adapter found for /no/such/dir" in body["error"]["message"]
    code, body = call(server.url, "POST", "/v1/load_lora_adapter", {"lora_name": "x"})
    assert (code, body["error"]["message"]) == (400, "Both 'lora_name' and 'lora_path' must be provided.")

    code, text = call(server.url, "POST", "/v1/unload_lora_adapter", {"lora_name": "run-r1"})
    assert (code, text) == (200, "Success: LoRA adapter 'run-r1' removed successfully.")
    assert [m["id"] for m in call(server.url, "GET", "/v1/models")[1]["data"]] == [server.model]
    code, body = call(server.url, "POST", "/v1/completions", {"model": "run-r1", "prompt": prompt, **kw})
    assert code == 404 and body["error"]["message"] == "The model `run-r1` does not exist."
    code, body = call(server.url, "POST", "/v1/unload_lora_adapter", {"lora_name": "run-r1"})
    assert code == 404 and body["error"] == {"message": "The lora adapter 'run-r1' cannot be found.", "type": "NotFoundError",
                                             "param": None, "code": 404}
    assert ids_of(complete(server, prompt, **kw)["choices"][0]) == ids_of(base)


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


def test_without_runtime_lora_env_no_adapter_routes_and_dev_mode_sleep(embedded_model_dir, ref, prompt, one_thread):
    env = {"VLLM_SERVER_DEV_MODE": "1"}
    with VLLMTestServer(embedded_model_dir, served_model_name="policy", enable_lora=True, enable_sleep_mode=True,
                        logprobs_mode="processed_logprobs", env=env) as srv:
        assert call(srv.url, "POST", "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/x"}) == (404, {"detail": "Not Found"})
        assert call(srv.url, "GET", "/is_sleeping") == (200, {"is_sleeping": False})
        assert call(srv.url, "POST", "/sleep?level=1") == (200, "")
        assert call(srv.url, "GET", "/is_sleeping") == (200, {"is_sleeping": True})
        code, body = call(srv.url, "POST", "/v1/completions", {"model": "policy", "prompt": prompt})
        assert code == 503 and "/wake_up" in body["error"]["message"]
        assert call(srv.url, "POST", "/wake_up") == (200, "")
        assert call(srv.url, "GET", "/is_sleeping") == (200, {"is_sleeping": False})
        # processed_logprobs: the log-softmax of the tempered logits (top_p 1: no mask).
        ch = complete(srv, prompt, temperature=0.5, seed=3, max_tokens=6, logprobs=0, return_tokens_as_token_ids=True)["choices"][0]
        ids = ids_of(ch)
        x = torch.tensor([prompt + ids])
        with torch.no_grad():
            logits = ref(input_ids=x).logits[0, len(prompt) - 1:-1].float() / 0.5
        expected = logits.log_softmax(-1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
        assert torch.allclose(expected, torch.tensor(ch["logprobs"]["token_logprobs"]), atol=1e-4)
        assert complete(srv, prompt, max_tokens=2)["model"] == "policy"
        srv.enable_sleep_mode = False  # as if started without --enable-sleep-mode
        code, body = call(srv.url, "POST", "/sleep?level=1")
        assert (code, body["error"]["type"]) == (500, "InternalServerError") and "Sleep mode is not enabled" in body["error"]["message"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_process_form_starts_answers_health_and_stops(embedded_model_dir, tmp_path):
    port, log = _free_port(), tmp_path / "server.log"
    cmd = [sys.executable, str(SERVER), "serve", str(embedded_model_dir), "--port", str(port), "--enable-lora",
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
