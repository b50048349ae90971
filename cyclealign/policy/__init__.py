"""White-box generation backends behind one protocol (:class:`GenerationBackend`)."""

from cyclealign.policy.base import Generation, GenerationBackend
from cyclealign.policy.hf import TransformersPolicy

__all__ = ["Generation", "GenerationBackend", "TransformersPolicy"]
