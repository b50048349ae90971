"""The run's policy over its life: made on first use, released before training, shut down at the end.

A round's generation and an evaluation ask the handle for the backend (``policy()``); it is made
then (:func:`~cyclealign.policy.make_policy`), so a run whose generations are all on disk loads no
model. Before a train phase the loop releases it (:meth:`PolicyHandle.release`: the card's
memory, or the vLLM server's, is the trainer's); the next generation reloads it. The handle also
answers the tokenizer's pad token id, which training needs, without loading a model for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cyclealign.config import Config
    from cyclealign.policy.base import GenerationBackend

__all__ = ["PolicyHandle"]


class PolicyHandle:
    """The run's generation backend, made on first call; a context manager that shuts it down.

    Args:
        cfg: the run's config (``generation.backend`` picks the backend).
        model_dir: the resolved base model id or directory.
        environ: the process environment as the CLI read it (the vLLM server's API key).
        make: makes the backend from ``(cfg, model_dir, environ)`` (default:
            :func:`~cyclealign.policy.make_policy`).

    Calling the handle returns the backend (:class:`~cyclealign.policy.base.GenerationBackend`),
    made on the first call, the same one afterwards.
    """

    def __init__(
        self,
        cfg: Config,
        model_dir: str,
        environ: Mapping[str, str] | None = None,
        make: Callable[[Config, str, Mapping[str, str] | None], GenerationBackend] | None = None,
    ) -> None:
        self.cfg, self.model_dir, self.environ, self._make = cfg, model_dir, environ, make
        self._backend: GenerationBackend | None = None
        self._pad_token_id: int | None = None

    def __call__(self) -> GenerationBackend:
        """The backend, made now if it was not yet (loading happens on its first use)."""
        if self._backend is None:
            make = self._make
            if make is None:
                from cyclealign.policy import make_policy as make
            self._backend = make(self.cfg, self.model_dir, self.environ)
        return self._backend

    @property
    def made(self) -> bool:
        """Whether the backend was made (some phase generated with it)."""
        return self._backend is not None

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's pad token id: the backend's tokenizer's when it has one, else read from
        ``model_dir``'s tokenizer once (no model is loaded for it)."""
        tokenizer = getattr(self._backend, "tokenizer", None)
        if tokenizer is not None:
            return tokenizer.pad_token_id
        if self._pad_token_id is None:
            from cyclealign.models.tokenizer import load_tokenizer

            self._pad_token_id = load_tokenizer(self.model_dir).pad_token_id
        return self._pad_token_id

    def release(self) -> None:
        """Free the backend's memory (or put its server to sleep) before training; the next
        generation reloads it (:meth:`GenerationBackend.close`). Nothing to do when never made."""
        if self._backend is not None:
            self._backend.close()

    def shutdown(self) -> None:
        """Release the backend for good (its server stopped): :meth:`GenerationBackend.shutdown`."""
        if self._backend is not None:
            self._backend.shutdown()

    def __enter__(self) -> "PolicyHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
