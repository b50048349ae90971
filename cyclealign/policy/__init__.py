"""White-box generation backends behind one protocol (:class:`GenerationBackend`).

:func:`make_policy` is the one place that names a backend (``generation.backend``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from cyclealign.policy.base import Generation, GenerationBackend, SamplingPolicy
from cyclealign.policy.hf import TransformersPolicy

if TYPE_CHECKING:
    from cyclealign.config import Config

__all__ = ["Generation", "GenerationBackend", "SamplingPolicy", "TransformersPolicy", "make_policy"]


def make_policy(cfg: Config, model_dir: str, environ: Mapping[str, str] | None = None) -> GenerationBackend:
    """The run's white-box generation backend, as ``cfg.generation.backend`` names it.

    ``transformers``: :class:`TransformersPolicy` on ``cfg.model``'s device and dtype (the model
    loads on first use). ``vllm``: ``cyclealign.policy.vllm.VLLMPolicy`` (a vLLM server,
    ``cfg.vllm``), imported only then.

    Args:
        cfg: the run's config.
        model_dir: the resolved base model id or directory (:func:`cyclealign.models.resolve_model_dir`).
        environ: the process environment as the CLI read it; the vLLM policy server's API key is
            its ``cfg.vllm.api_key_env`` variable (None = no key).
    Returns:
        The backend; the caller closes it (:meth:`GenerationBackend.close`) when done.
    Raises:
        ValueError: an unknown ``generation.backend`` (the config validation rules it out).
    """
    backend = cfg.generation.backend
    if backend == "transformers":
        return TransformersPolicy(model_dir, cfg.model, cfg.generation)
    if backend == "vllm":
        from cyclealign.policy.vllm import VLLMPolicy

        return VLLMPolicy(cfg, model_dir, api_key=(environ or {}).get(cfg.vllm.api_key_env) or None)
    raise ValueError(f"generation.backend={backend!r}: expected 'transformers' or 'vllm'")
