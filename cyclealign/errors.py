"""Errors raised by cyclealign.

Every error the user can cause derives from :class:`CycleAlignError`; the CLI turns
any of them into one line on stderr and a non-zero exit code.
"""

from __future__ import annotations


class CycleAlignError(Exception):
    """Base class of every error cyclealign raises on bad input or a failed service."""


class ConfigError(CycleAlignError):
    """A configuration field is invalid; the message names the field."""


class DataError(CycleAlignError):
    """A prompt or demonstration file is malformed; the message names file and line."""

    def __init__(self, path: object, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class TemplateError(CycleAlignError):
    """A prompt template is missing, fails to parse, or uses undeclared variables."""


class RankerError(CycleAlignError):
    """The black-box ranker API failed in a way retries cannot fix (bad key, bad model)."""


class ModelError(CycleAlignError):
    """The white-box model cannot be resolved, converted or loaded."""


class RunDirError(CycleAlignError):
    """The run directory is inconsistent with the request (e.g. exists without --resume)."""


class TrainError(CycleAlignError):
    """The training phase failed in a launched process; the message holds its last log lines."""


class BudgetError(CycleAlignError):
    """The run reached ``--max-cost-usd``: no further paid call was sent. Finished work is kept;
    resume with a higher budget to continue."""


class NothingToDo(CycleAlignError):
    """There is no work for this invocation: a scheduled round found no prompt it may use
    (``--new-prompts-only`` and no unused prompt in the source). Nothing was changed."""


class HubError(CycleAlignError):
    """The Hugging Face Hub could not be reached or refused an upload (offline, no login, no
    access); what was saved locally is kept."""


class Interrupted(CycleAlignError):
    """A SIGINT (Ctrl-C) or SIGTERM (a scheduler's ``timeout``, ``systemctl stop``) stopped the run:
    servers were stopped, the lock released, the phase in progress left pending; ``--resume``
    continues. Exit code 128 + the signal's number (130, 143)."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}; finished work is kept, --resume continues")


class LockedError(CycleAlignError):
    """Another live process holds the run directory's lock (the message names its pid and host)."""


class PolicyError(CycleAlignError):
    """The white-box policy's generation backend failed: its server cannot start, lacks a needed
    feature (LoRA, log-probs), or answered with an error (the message names what to change)."""
