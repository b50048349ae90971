"""The HTTP side of the vLLM generation backend: ``vllm serve`` as a child process, its LoRA
adapter endpoints, sleep/wake, and concurrent ``/v1/completions`` with token ids and log-probs.

Follows vLLM 0.10-0.11's OpenAI-compatible server (vllm-project/vllm):

* ``vllm/entrypoints/openai/protocol.py``: ``CompletionRequest`` (``prompt`` as a list of token
  ids, ``n``, ``temperature``, ``top_p``, ``max_tokens``, ``seed``, ``logprobs``,
  ``return_tokens_as_token_ids``, ``skip_special_tokens``), ``CompletionResponse`` /
  ``CompletionResponseChoice`` (``index``, ``text``, ``logprobs``: ``CompletionLogProbs`` with
  ``tokens`` rendered as ``"token_id:<id>"`` when ``return_tokens_as_token_ids``,
  ``token_logprobs``, ``top_logprobs``, ``text_offset``; ``finish_reason`` ``"stop"`` or
  ``"length"``), ``LoadLoRAAdapterRequest`` (``lora_name``, ``lora_path``),
  ``UnloadLoRAAdapterRequest`` (``lora_name``);
* ``vllm/entrypoints/openai/api_server.py``: ``POST /v1/load_lora_adapter`` and
  ``/v1/unload_lora_adapter`` exist only with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` in the
  server's environment (and ``--enable-lora``); ``POST /sleep?level=1``, ``POST /wake_up`` and
  ``GET /is_sleeping`` only with ``VLLM_SERVER_DEV_MODE=1`` and ``--enable-sleep-mode``;
  ``GET /health``.
* ``--logprobs-mode raw_logprobs`` (vLLM's default): log-probs of the raw model output, before
  temperature, top-p or any other processing: the untempered policy, as the transformers
  backend scores. The sampled token's log-prob is returned even with ``logprobs=0``.

The EOS token, when sampled, is part of a choice's tokens and log-probs (finish reason
``"stop"``), as in :class:`~cyclealign.policy.base.Generation`.
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

from cyclealign.config import VLLMConfig
from cyclealign.errors import PolicyError
from cyclealign.serving import ServerProcess

__all__ = ["Sample", "VLLMClient", "VLLMServer", "adapter_name"]

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "cyclealign[vllm]"'


@dataclass(frozen=True)
class Sample:
    """One sampled response: its token ids (EOS included when reached), the mean untempered
    token log-prob (nats), and whether it ended with EOS/stop (False = cut at ``max_tokens``)."""

    token_ids: list[int]
    logprob_mean: float
    finished: bool


class VLLMServer(ServerProcess):
    """``vllm serve MODEL`` with runtime LoRA loading, on a loopback port (a context manager).

    The command is ``vllm.command`` (default ``vllm serve``; tests point it at a stand-in), then
    the model, ``--host``/``--port``, ``--enable-lora --max-lora-rank R --max-loras K``,
    ``--gpu-memory-utilization``, ``--tensor-parallel-size``, ``--data-parallel-size``,
    ``--logprobs-mode raw_logprobs``, ``--enable-sleep-mode`` (with ``vllm.sleep_during_train``)
    and ``vllm.extra_args``. The environment adds ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``
    (and ``VLLM_SERVER_DEV_MODE=1`` for sleep/wake). Output goes to ``log_path``
    (``RUN_DIR/policy_server.log``).

    Raises:
        PolicyError: ``vllm`` is not installed (the default command), the port is in use, the
            server exits during startup (its log's last lines), or it is not healthy in
            ``vllm.startup_timeout_s``.
    """

    def __init__(self, cfg: VLLMConfig, model: str, *, log_path: Path) -> None:
        super().__init__(
            f"the vLLM policy server ({_command_text(cfg.command)} {model})",
            log_path=log_path,
            startup_timeout_s=cfg.startup_timeout_s,
            timeout_field="vllm.startup_timeout_s",
            error=PolicyError,
            port=cfg.port,
        )
        self.cfg, self.model = cfg, model

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def command(self, port: int) -> list[str]:
        c = self.cfg
        cmd = [*_command_list(c.command), self.model, "--host", self.host, "--port", str(port)]
        cmd += ["--enable-lora", "--max-lora-rank", str(c.max_lora_rank), "--max-loras", str(c.max_loras)]
        cmd += ["--gpu-memory-utilization", str(c.gpu_memory_utilization)]
        cmd += ["--tensor-parallel-size", str(c.tensor_parallel_size), "--data-parallel-size", str(c.data_parallel_size)]
        cmd += ["--logprobs-mode", "raw_logprobs"]
        if c.served_model_name:
            cmd += ["--served-model-name", c.served_model_name]
        if c.sleep_during_train:
            cmd += ["--enable-sleep-mode"]
        return cmd + list(c.extra_args)

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        if self.cfg.sleep_during_train:
            env["VLLM_SERVER_DEV_MODE"] = "1"
        return env

    def start(self) -> None:
        """Start the server (see the class docstring); a missing ``vllm`` names the extra to install."""
        _resolve_program(_command_list(self.cfg.command))
        super().start()


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
        PolicyError: not found; for ``vllm`` the message names ``pip install "cyclealign[vllm]"``.
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


class VLLMClient:
    """A vLLM OpenAI-compatible server, as the policy backend uses it.

    Args:
        base_url: ``http://HOST:PORT/v1``.
        model: the base model's served name (``vllm serve MODEL``: the model as given).
        concurrency: completion requests in flight at once.
        timeout_s: per request, seconds.
    """

    def __init__(self, base_url: str, model: str, *, concurrency: int = 8, timeout_s: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.root_url = self.base_url.removesuffix("/v1")
        self.model, self.concurrency, self.timeout_s = model, concurrency, timeout_s

    # -- administrative endpoints (plain HTTP: they are not OpenAI API) --------------------------
    def _http(self, method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return r.status, r.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", errors="replace")
        except (urllib.error.URLError, OSError) as e:
            raise PolicyError(f"the vLLM policy server at {self.root_url} is unreachable: {getattr(e, 'reason', e)}") from None

    def served_models(self) -> list[str]:
        """Model names the server serves now (``GET /v1/models``: the base and loaded adapters)."""
        code, text = self._http("GET", f"{self.base_url}/models")
        if code != 200:
            raise PolicyError(f"{self.base_url}/models answered {code}: {text[:300]}")
        return [m["id"] for m in json.loads(text).get("data", [])]

    def load_adapter(self, name: str, path: Path) -> None:
        """``POST /v1/load_lora_adapter`` (a name already loaded is left as it is: names are per content).

        Raises:
            PolicyError: the server has no runtime LoRA loading (the message names
                ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``), or refused the adapter.
        """
        if name in self.served_models():
            return
        code, text = self._http("POST", f"{self.base_url}/load_lora_adapter", {"lora_name": name, "lora_path": str(Path(path).resolve())})
        if code == 404:
            raise PolicyError(
                f"the vLLM server at {self.root_url} cannot load LoRA adapters at run time: start it with --enable-lora "
                "and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment"
            )
        if code != 200:
            raise PolicyError(f"the vLLM server refused adapter {name} ({path}): {code} {text[:300]}")

    def unload_adapter(self, name: str) -> None:
        """``POST /v1/unload_lora_adapter``; an adapter the server does not hold is ignored."""
        code, text = self._http("POST", f"{self.base_url}/unload_lora_adapter", {"lora_name": name})
        if code not in (200, 400, 404):
            raise PolicyError(f"the vLLM server could not unload adapter {name}: {code} {text[:300]}")

    def sleep(self) -> bool:
        """``POST /sleep?level=1`` (weights offloaded to CPU, KV cache freed): True when the server slept."""
        code, _ = self._http("POST", f"{self.root_url}/sleep?level=1")
        return code == 200

    def wake_up(self) -> None:
        """``POST /wake_up`` (after :meth:`sleep`)."""
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
        ``temperature`` 0 is greedy. Prompt ``i`` is sampled with seed ``seed + i``.

        Raises:
            PolicyError: the server refused a request, or answered without log-probs (start it
                with ``--max-logprobs`` >= 1, the default 20) or without token ids.
        """
        import openai

        async def main() -> list[list[Sample]]:
            client = openai.AsyncOpenAI(
                api_key="EMPTY", base_url=self.base_url, max_retries=2, timeout=self.timeout_s,
                http_client=openai.DefaultAioHttpClient(timeout=self.timeout_s),
            )
            slots = asyncio.Semaphore(self.concurrency)

            async def one(i: int, ids: list[int]) -> list[Sample]:
                async with slots:
                    try:
                        resp = await client.completions.create(
                            model=model, prompt=ids, n=n, seed=seed + i, temperature=temperature, top_p=top_p,
                            max_tokens=max_tokens, logprobs=0,
                            extra_body={"return_tokens_as_token_ids": True, "skip_special_tokens": True},
                        )
                    except openai.APIStatusError as e:
                        raise PolicyError(f"the vLLM server refused a completion for model {model}: {e.status_code} {e.message}") from None
                    except openai.APIConnectionError as e:
                        raise PolicyError(f"the vLLM server at {self.root_url} is unreachable: {e}") from None
                if progress is not None:
                    progress(1)
                return parse_choices(resp.model_dump(), n)

            try:
                return list(await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts))))
            finally:
                await client.close()

        return asyncio.run(main())


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
