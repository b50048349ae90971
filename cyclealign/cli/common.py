"""What every ``cyclealign`` command shares: the stderr console, errors as exit codes, table
cells, logging setup and the ranker spend line."""

from __future__ import annotations

import logging
import signal
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption
from rich.console import Console
from rich.markup import escape

from cyclealign.errors import BudgetError, CycleAlignError, Interrupted, LockedError, NothingToDo
from cyclealign.metrics import fmt

if TYPE_CHECKING:
    from cyclealign.events import EventLog

__all__ = ["ValueMetavarCommand", "ValueMetavarGroup", "cell", "console", "exit_codes", "setup_logging", "spend_text", "stop_on_signals", "value_metavar"]

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
    instead of a Python type (``<bool>``, ``<list[str]>``); an option's own ``metavar`` wins."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _value_metavars(super().get_params(ctx))


class ValueMetavarGroup(TyperGroup):
    """:class:`ValueMetavarCommand` for a command group (the app and its sub-apps)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _value_metavars(super().get_params(ctx))
