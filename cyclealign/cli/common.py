"""What every ``cyclealign`` command shares: the stderr console, errors as exit codes, table
cells, logging setup, the ranker spend line, and the options every command spells alike.

One spelling per concept across every command: the run directory is ``--run-dir PATH``, a
templates folder ``--templates PATH``, chosen rounds a repeatable ``--round R`` (``iterate
--rounds N`` is a count), and a flag that sets a field ``eval.x`` of the config is
``--eval-x``. An older spelling stays for one release as a hidden alias that still works and
prints a deprecation note (:func:`resolve_alias`); tests/test_cli_spelling.py walks the app
and checks the rule.
"""

from __future__ import annotations

import logging
import signal
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption
from rich.console import Console
from rich.markup import escape

from cyclealign.errors import BudgetError, ConfigError, CycleAlignError, Interrupted, LockedError, NothingToDo
from cyclealign.metrics import fmt

if TYPE_CHECKING:
    from cyclealign.events import EventLog

__all__ = [
    "OldRunDirArgument",
    "OldTemplatesArgument",
    "RunDirOption",
    "ValueMetavarCommand",
    "ValueMetavarGroup",
    "cell",
    "console",
    "deprecation_note",
    "exit_codes",
    "resolve_alias",
    "run_dir_given",
    "setup_logging",
    "spend_text",
    "stop_on_signals",
    "value_metavar",
]

console = Console(stderr=True)
"""Progress, messages and summaries go to stderr; a command's result (a table, a name) to stdout."""


@contextmanager
def exit_codes(events: EventLog | None = None) -> Iterator[None]:
    """Turn a CycleAlign error into a printed message, an event and an exit status
    (:data:`cyclealign.schedule.EXIT_CODES`).

    The message is printed unwrapped (paths and log lines stay whole) and without markup.
    Exit 3 when a cost budget stopped the work (``BudgetError``: finished work is kept, the run
    resumes), 4 when there was nothing to do, 5 when another process holds the run directory,
    130 / 143 when SIGINT / SIGTERM stopped it (:class:`~cyclealign.errors.Interrupted`,
    raised by :func:`stop_on_signals`), 2 for any other ``CycleAlignError`` (bad input, a
    rejected key, a broken run dir, or an ``OSError`` on a file the run needs: one line naming it).

    Raises:
        typer.Exit: with that code, for a ``CycleAlignError`` raised inside.
    """
    from cyclealign.schedule import EXIT_CODES

    def emit(event: str, **fields: Any) -> None:
        if events is not None:
            events.emit(event, **fields)

    try:
        yield
    except BudgetError as e:
        console.print(f"[yellow]stopped:[/yellow] {escape(str(e))}", soft_wrap=True)
        emit("budget", message=str(e))
        raise typer.Exit(code=EXIT_CODES["budget"]) from None
    except NothingToDo as e:
        console.print(f"nothing to do: {escape(str(e))}", soft_wrap=True)
        emit("nothing_to_do", message=str(e))
        raise typer.Exit(code=EXIT_CODES["nothing_to_do"]) from None
    except LockedError as e:
        console.print(f"[red]locked:[/red] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(code=EXIT_CODES["locked"]) from None
    except Interrupted as e:
        console.print(f"[yellow]interrupted:[/yellow] {escape(str(e))}", soft_wrap=True)
        emit("interrupted", signal=e.signum, message=str(e))
        raise typer.Exit(code=EXIT_CODES["interrupted" if e.signum == signal.SIGINT else "terminated"]) from None
    except CycleAlignError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        emit("error", type=type(e).__name__, message=str(e))
        raise typer.Exit(code=EXIT_CODES["error"]) from None
    except OSError as e:  # a file or folder the run needs: not there, not writable, a file where a folder goes
        where = f"{e.filename}: " if e.filename else ""
        message = f"{where}{e.strerror or e}"
        console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
        try:
            emit("error", type=type(e).__name__, message=message)
        except OSError:
            pass  # the event log itself may be what cannot be written
        raise typer.Exit(code=EXIT_CODES["error"]) from None


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`~cyclealign.errors.Interrupted` in the
    main thread, so every ``with`` and ``finally`` on the way out runs (servers stopped, the run
    lock released, the phase in progress left pending) and :func:`exit_codes` reports it. The
    first signal restores the previous handlers: a second one ends the process at once.
    Outside the main thread it does nothing (signal handlers belong to the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    watched = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.getsignal(sig) for sig in watched}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def stop(signum: int, frame: Any) -> None:
        restore()
        raise Interrupted(signum)

    for sig in watched:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        restore()


T = TypeVar("T")

RunDirOption = Annotated[Optional[Path], typer.Option("--run-dir", help="The run directory (required).")]
"""``--run-dir PATH``: the run directory a command reads (required; :func:`run_dir_given`)."""

OldRunDirArgument = Annotated[Optional[Path], typer.Argument(hidden=True, metavar="RUN_DIR", help="Deprecated: --run-dir.")]
"""The positional ``RUN_DIR`` of the previous release: hidden, deprecated (:func:`run_dir_given`)."""

OldTemplatesArgument = Annotated[Optional[Path], typer.Argument(hidden=True, metavar="FOLDER", help="Deprecated: --templates.")]
"""The positional templates ``FOLDER`` of the previous release: hidden, deprecated (``--templates``)."""


def _shown(value: Any) -> str:
    """A value as the command line spelled it: a list comma-separated."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _given(value: Any) -> bool:
    return value is not None and value != [] and value != ()


def deprecation_note(old: str, new: str) -> None:
    """Print ``cyclealign: OLD is deprecated; use NEW (the old form goes in the next release)``
    to stderr, on one line."""
    console.print(f"cyclealign: {old} is deprecated; use {new} (the old form goes in the next release)", markup=False, highlight=False, soft_wrap=True)


def resolve_alias(value: T | None, old_value: T | None, *, new: str, old: str, required: bool = False) -> T | None:
    """The value of one setting given under its current spelling ``new`` (e.g. ``"--run-dir
    RUN_DIR"``, the flag first) or under the deprecated ``old`` one (``"the positional
    RUN_DIR"``, ``"--num-prompts"``), a hidden alias kept for one release.

    The old spelling still works and prints one line to stderr (:func:`deprecation_note`). Both given with the same value is that
    value; None (or an empty list) means not given.

    >>> resolve_alias(None, None, new="--eval-decoding", old="--decoding"), resolve_alias("greedy", None, new="--eval-decoding", old="--decoding")
    (None, 'greedy')

    Raises:
        ConfigError: both spellings given with different values; neither given while ``required``
            (the CLI prints one line and exits 2).
    """
    flag = new.split()[0]
    if _given(old_value):
        if _given(value) and value != old_value:
            raise ConfigError(f"{flag} {_shown(value)} disagrees with {_shown(old_value)} given as {old} (deprecated); give {flag} only")
        deprecation_note(old, new)
        return old_value
    if required and not _given(value):
        raise ConfigError(f"missing option {new}")
    return value


def run_dir_given(run_dir: Path | None, old_run_dir: Path | None) -> Path:
    """The run directory of ``--run-dir`` (:data:`RunDirOption`) or of the deprecated positional
    (:data:`OldRunDirArgument`), through :func:`resolve_alias`.

    Raises:
        ConfigError: neither given, or both with different paths.
    """
    path = resolve_alias(run_dir, old_run_dir, new="--run-dir RUN_DIR", old="the positional RUN_DIR", required=True)
    assert path is not None  # required
    return path


def cell(v: Any, digits: int = 3) -> str:
    """A CLI table cell (:func:`~cyclealign.metrics.fmt`); a NaN or infinite float prints as is (``nan``).

    >>> cell(None), cell(0.12345), cell(float("nan")), cell(4)
    ('-', '0.123', 'nan', '4')
    """
    return fmt(v, digits, nonfinite=None)


def setup_logging(verbose: bool) -> None:
    """Log INFO and up with ``--verbose``, else only warnings (``LEVEL logger: message``)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def spend_text(spend: Mapping[str, float], tokens: bool = True, embedded: bool = False) -> str:
    """The ranker spend of a run (:meth:`~cyclealign.rundir.RunDir.ranker_spend`) in words: paid
    calls, with ``tokens`` prompt + completion tokens, and USD; with ``embedded`` (the local
    embedded ranker, which costs nothing) the calls only.

    >>> spend = {"calls": 2.0, "prompt_tokens": 900.0, "completion_tokens": 30.0, "cost_usd": 0.0021}
    >>> spend_text(spend), spend_text(spend, tokens=False)
    ('2 paid calls, 900 + 30 tokens, 0.0021 USD', '2 paid calls, 0.0021 USD')
    >>> spend_text({**spend, "cost_usd": 0.0}, tokens=False, embedded=True)
    '2 calls to the embedded ranker (free)'
    """
    if embedded:
        return f"{int(spend['calls'])} calls to the embedded ranker (free)"
    used = f", {int(spend['prompt_tokens'])} + {int(spend['completion_tokens'])} tokens" if tokens else ""
    return f"{int(spend['calls'])} paid calls{used}, {spend['cost_usd']:.4f} USD"


def value_metavar(option: Any) -> str | None:
    """What an option takes, as ``--help`` shows it: nothing for a flag, ``PATH``, ``N`` (an
    integer), ``NUMBER``, ``TEXT``; None (typer's own) for anything else.

    Raises nothing; ``option`` is a typer option (``is_flag``, ``type_descriptor``).
    """
    if getattr(option, "is_flag", False):
        return ""
    annotation = option.type_descriptor.annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and len(args) == 1:
        annotation = args[0]
    return {Path: "PATH", int: "N", float: "NUMBER", str: "TEXT"}.get(annotation)


def _value_metavars(params: list[Any]) -> list[Any]:
    for param in params:
        if isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = value_metavar(param)
    return params


class ValueMetavarCommand(TyperCommand):
    """A typer command whose ``--help`` says what each option takes (:func:`value_metavar`)
    instead of a Python type (``<bool>``, ``<list[str]>``); an option's own ``metavar`` wins.
    A hidden argument (a deprecated alias) is left out of the usage line too."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _value_metavars(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not getattr(param, "hidden", False):
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class ValueMetavarGroup(TyperGroup):
    """:class:`ValueMetavarCommand` for a command group (the app and its sub-apps)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _value_metavars(super().get_params(ctx))
