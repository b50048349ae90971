"""The vLLM generation backend: the policy served by a vLLM OpenAI-compatible server, each
round's LoRA adapter hot-loaded into it (the HTTP side is :mod:`cyclealign.policy.vllm_client`,
which cites the vLLM version and files followed).

cyclealign starts the server itself (``vllm.base_url`` unset: ``vllm.command`` on a free loopback
port, log in ``RUN_DIR/policy_server.log``, stopped at exit) or uses a running server
(``--policy-base-url``). Around the train phase the loop calls :meth:`VLLMPolicy.close`: the server
sleeps (level 1: weights to CPU, KV cache freed) when it runs with sleep mode, else a server
cyclealign started is stopped and started again when generation resumes; a user's server is left
as it was found (awake) when the run ends or fails. Checked against vLLM 0.32 (the CPU build) and
0.34's sources. Nothing here imports vllm.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cyclealign.config import Config
from cyclealign.errors import PolicyError
from cyclealign.policy.base import SamplingPolicy
from cyclealign.policy.vllm_client import VLLMClient, VLLMServer, adapter_name
from cyclealign.records import Sample
from cyclealign.rundir import RunDir

__all__ = ["VLLMPolicy"]

log = logging.getLogger(__name__)


class VLLMPolicy(SamplingPolicy):
    """A :class:`~cyclealign.policy.base.SamplingPolicy` whose batches are ``/v1/completions``
    calls to a vLLM server (``n`` samples per prompt, seeded per prompt, raw log-probs and token ids).

    Args:
        cfg: the run's config (``generation``, ``vllm``, ``run_dir``).
        model_dir: the base model as the server loads it (the launcher's model argument:
            :func:`~cyclealign.policy.vllm_client.model_args`) and whose tokenizer builds the
            chat-templated prompt token ids.
        api_key: the policy server's API key (read by the caller from ``vllm.api_key_env``);
            None = the server needs none.

    Raises:
        PolicyError: (on first use) vLLM is missing, the server cannot start, lacks runtime LoRA
            loading or log-probs, refuses a request or dies (the message names its log).
    """


    def __init__(self, cfg: Config, model_dir: str, api_key: str | None = None) -> None:
        super().__init__(model_dir, cfg.generation)
        self.vcfg = cfg.vllm
        self.api_key = api_key
        self.log_path = RunDir(cfg.run_dir).policy_server_log
        self.pid_path = RunDir(cfg.run_dir).policy_server_pid
        self.run_label = Path(cfg.run_dir).resolve().name
        self._server: VLLMServer | None = None
        self._client: VLLMClient | None = None
        self._asleep = False
        self._adapter: Path | None = None
        self._served: str | None = None  # the adapter name loaded on the server now
        self._sleep_mode: bool | None = None  # learnt at the first start: the platform may have no sleep mode

    # -- lifecycle ----------------------------------------------------------------------------
    def _open(self) -> VLLMClient:
        if self._client is None:
            if self.vcfg.base_url is not None:
                base_url = self.vcfg.base_url
            else:
                self._server = VLLMServer(
                    self.vcfg, self.model_dir, log_path=self.log_path, api_key=self.api_key, sleep_mode=self._sleep_mode,
                    pid_path=self.pid_path,
                )
                self._server.start()
                self._sleep_mode = self._server.sleep_mode
                base_url = self._server.base_url
                self._served = None  # a fresh server holds no adapter
            self._client = VLLMClient(
                base_url, self.vcfg.served_model_name or self.model_dir, concurrency=self.vcfg.request_concurrency,
                timeout_s=self.vcfg.request_timeout_s, api_key=self.api_key,
            )
        if self._asleep:
            self._client.wake_up()
            self._asleep = False
        self._sync_adapter(self._client)
        return self._client

    def _sync_adapter(self, client: VLLMClient) -> None:
        want = adapter_name(self._adapter, self.run_label) if self._adapter is not None else None
        if want == self._served:
            return
        if want is not None:
            client.load_adapter(want, self._adapter)  # type: ignore[arg-type]
        if self._served is not None:
            client.unload_adapter(self._served)  # frees the LoRA slot (vllm.max_loras)
        self._served = want

    def load_adapter(self, path: Path | None) -> None:
        """Serve the PEFT LoRA adapter at ``path`` from now on (``None`` = the base policy): it is
        loaded under a new name (run, round, digest of its weights) and the previous one unloaded."""
        self._adapter = Path(path) if path is not None else None
        if self._client is not None and not self._asleep:
            self._sync_adapter(self._client)

    def close(self) -> None:
        """Free the GPU for training: sleep the server (``vllm.sleep_during_train`` and a server
        with sleep mode, confirmed by ``/is_sleeping``), else stop a server cyclealign started; a
        user's server without sleep mode is left as is (awake)."""
        if self._client is None or self._asleep:
            return
        if self.vcfg.sleep_during_train and (self._server is None or self._server.sleep_mode) and self._client.sleep():
            self._asleep = True
            return
        if self._server is not None:
            self._server.stop()
            self._server, self._client, self._served = None, None, None

    def shutdown(self) -> None:
        """End of a run (finished or failed): stop a server cyclealign started; a user's server
        that cyclealign put to sleep is woken, so it is left as it was found."""
        if self._server is not None:
            self._server.stop()
        elif self._client is not None and self._asleep:
            try:
                self._client.wake_up()
            except PolicyError as e:  # the run is ending: say so, do not mask the run's own error
                log.warning("could not wake the vLLM server at %s: %s", self._client.root_url, e)
        self._server, self._client, self._served, self._asleep = None, None, None, False

    def __del__(self) -> None:  # a server must not outlive the run
        try:
            self.shutdown()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass

    # -- sampling -----------------------------------------------------------------------------
    def sample_batch(
        self,
        prompt_ids: list[list[int]],
        *,
        n: int,
        seed: int | None,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
    ) -> list[list[Sample]]:
        """One ``/v1/completions`` request per prompt, all in flight at once (up to
        ``vllm.request_concurrency``); prompt ``i`` of the batch is seeded ``seed + i * n``
        (:func:`~cyclealign.policy.vllm_client.prompt_seed`).

        Raises:
            PolicyError: the server refused or failed a request; for a server cyclealign started
                the message says whether it is still running and names its log with the last lines.
        """
        client = self._open()
        model = self._served or client.model
        try:
            samples = client.complete(
                prompt_ids, model=model, n=n, seed=seed or 0, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens
            )
        except PolicyError as e:
            raise self._failed(e) from None
        return [[Sample(s.token_ids, s.logprob_mean, s.finished) for s in row] for row in samples]

    def _failed(self, error: PolicyError) -> PolicyError:
        """``error`` with what became of a server cyclealign started (its exit code, or that it
        still runs) and its log's last lines; the server is stopped (a resume starts a fresh one)."""
        server = self._server
        if server is None:
            return error
        code = server.process.poll() if server.process is not None else server.returncode
        state = f"exited with code {code}" if code is not None else "is still running"
        tail = "\n".join(server.log_tail(12))
        self.shutdown()
        return PolicyError(f"{error}\nthe vLLM policy server {state}; last lines of {server.log_path}:\n{tail}")
