"""White-box generation backends behind one protocol (:class:`GenerationBackend`).

:func:`make_policy` is the one place that names a backend (``generation.backend``); it imports
the backend it makes, so importing this package (or :mod:`cyclealign.policy.base`) loads no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cyclealign.config import Config
    from cyclealign.policy.base import GenerationBackend

__all__ = ["make_policy"]


def make_policy(cfg: Config, model_dir: str, environ: Mapping[str, str] | None = None) -> GenerationBackend:
    """The run's white-box generation backend, as ``cfg.generation.backend`` names it.

    ``transformers``: :class:`~cyclealign.policy.hf.TransformersPolicy` on ``cfg.model``'s device and dtype (the model
    loads on first use). ``vllm``: ``cyclealign.policy.vllm.VLLMPolicy`` (a vLLM server,
    ``cfg.vllm``), imported only then.

    Args:
        cfg: the run's config.
        model_dir: the resolved base model id or directory (:func:`cyclealign.models.loading.resolve_model_dir`).
        environ: the process environment as the CLI read it; the vLLM policy server's API key is
            its ``cfg.vllm.api_key_env`` variable (None = no key).
    Returns:
        The backend; the caller closes it (:meth:`GenerationBackend.close`) when done.
    Raises:
        ValueError: an unknown ``generation.backend`` (the config validation rules it out).
    """
    backend = cfg.generation.backend
    if backend == "transformers":
        from cyclealign.policy.hf import TransformersPolicy  # torch: imported only when a policy is made

        return TransformersPolicy(model_dir, cfg.model, cfg.generation)
    if backend == "vllm":
        from cyclealign.policy.vllm import VLLMPolicy

        return VLLMPolicy(cfg, model_dir, api_key=(environ or {}).get(cfg.vllm.api_key_env) or None)
    raise ValueError(f"generation.backend={backend!r}: expected 'transformers' or 'vllm'")
