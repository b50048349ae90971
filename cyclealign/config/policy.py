"""Config sections of the white-box policy: the model, how it samples, and the vLLM server that may host it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from cyclealign.config.section import Section

__all__ = ["GenerationConfig", "MAX_LORA_RANKS", "ModelConfig", "VLLMConfig", "lora_rank_slot"]

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM's ``--max-lora-rank`` takes (``vllm/config/lora.py``, ``MaxLoRARanks``)."""


def lora_rank_slot(rank: int) -> int | None:
    """The smallest ``--max-lora-rank`` that holds a LoRA adapter of ``rank``; None above 512.

    >>> lora_rank_slot(16), lora_rank_slot(24), lora_rank_slot(2), lora_rank_slot(600)
    (16, 32, 8, None)
    """
    return next((r for r in MAX_LORA_RANKS if r >= rank), None)


class ModelConfig(Section):
    """The white-box policy model."""

    name_or_path: str | None = Field(
        None, description="Hugging Face model id or local directory; None = the embedded SmolLM2-135M-Instruct."
    )
    cache_dir: Path = Field(
        Path("~/.cache/cyclealign").expanduser(),
        description="Where the embedded GGUF model is converted to safetensors, once.",
    )
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' = bfloat16 on CUDA, float32 on CPU."
    )


class GenerationConfig(Section):
    """White-box sampling (step 1 of a round)."""

    backend: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="Where the policy samples: transformers (generate() in this process, CPU or one GPU) "
        "or vllm (a vLLM OpenAI-compatible server, see the vllm section).",
    )
    num_samples: int = Field(4, ge=2, le=16, description="N: responses sampled per prompt.")
    temperature: float = Field(0.9, gt=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="Response length cap, tokens.")
    max_prompt_tokens: int = Field(384, ge=16, description="Prompts are left-truncated to this many tokens.")
    batch_size: int = Field(8, ge=1, description="Prompts per generate() call (each yields N sequences).")
    max_resample: int = Field(
        2, ge=0, description="Extra sampling passes for prompts whose N samples had duplicates."
    )


class VLLMConfig(Section):
    """The vLLM server that hosts the policy when ``generation.backend`` is ``vllm``."""

    base_url: str | None = Field(
        None,
        description="A running vLLM OpenAI-compatible server (…/v1) serving model.name_or_path; "
        "None = cyclealign starts `vllm serve` itself.",
    )
    command: list[str] | str = Field(
        "vllm serve",
        description="The launcher command, as a list or a shell-like string; the model (positional after `serve`, "
        "else --model) and the flags are appended. vLLM in its own venv: [/path/to/vllm-venv/bin/vllm, serve]; "
        "vLLM's CPU build: [/path/to/venv/bin/python, -m, vllm.entrypoints.openai.api_server].",
    )
    port: int | None = Field(None, ge=1, le=65535, description="Port of the started server; None = a free loopback port.")
    gpu_memory_utilization: float = Field(
        0.35,
        gt=0,
        le=1,
        description="Fraction of the GPU the server may take (weights + KV cache). 0.35 of 80 GB ~ 28 GB: "
        "a 7B bf16 policy (~15 GB) plus KV cache, leaving the rest for LoRA training on the same card.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one model replica is split over (vLLM --tensor-parallel-size).")
    data_parallel_size: int = Field(1, ge=1, description="Model replicas the server runs (vLLM --data-parallel-size).")
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] | None = Field(
        None,
        description="Largest LoRA rank the server accepts (vLLM --max-lora-rank, one of vLLM's sizes; >= train.lora_r); "
        "None = the smallest size >= train.lora_r (vLLM pads every adapter to it: a larger one costs throughput).",
    )
    max_loras: int = Field(2, ge=1, description="LoRA adapters held at once (vLLM --max-loras): this round's and the previous one.")
    startup_timeout_s: float = Field(600.0, gt=0, description="Wait this long for a started server's /health, seconds.")
    sleep_during_train: bool = Field(
        True, description="Put the server to sleep during the train phase (and wake it after) when it has the sleep/wake endpoints."
    )
    request_concurrency: int = Field(8, ge=1, le=1024, description="Completion requests in flight at once.")
    served_model_name: str | None = Field(
        None, description="The base model's name on the server (vLLM --served-model-name); None = the model as given."
    )
    request_timeout_s: float = Field(600.0, gt=0, description="Per completion request, seconds.")
    api_key_env: str = Field(
        "VLLM_API_KEY",
        min_length=1,
        description="Environment variable holding the policy server's API key (vLLM --api-key): sent as a bearer "
        "token on every call and given to a server cyclealign starts; read from the environment, never written to disk.",
    )
    extra_args: list[str] = Field(
        default_factory=list, description="More command-line arguments for `vllm serve` (e.g. [--max-model-len, '4096'])."
    )
