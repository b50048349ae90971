"""Command-line interface: flags -> :class:`~cyclealign.config.Config` -> :func:`cyclealign.loop.iterate`.

Only parsing and printing live in the ``cyclealign.cli`` modules; this one assembles the ``cyclealign``
app (the console script ``cyclealign.cli:app``; ``python -m cyclealign.cli`` runs it through
:mod:`cyclealign.cli.__main__`) from them, command by command, in ``--help`` order:

==============  =====================================================================
module          commands
==============  =====================================================================
iterate         ``iterate`` (its flags as config layers: :mod:`cyclealign.cli.flags`)
train           ``train-round`` (what the training launchers run)
eval            ``eval``
artifacts       ``reparse``, ``export``, ``report``, ``publish``
templates       ``templates ...``
config          ``config show``, ``config schema``, ``status``
==============  =====================================================================

The tables they print are :mod:`cyclealign.cli.tables`; errors become exit codes in
:func:`cyclealign.cli.common.exit_codes`.
"""

from __future__ import annotations

import typer

from cyclealign.cli.artifacts import export_command, publish_command, reparse, report_command
from cyclealign.cli.common import ValueMetavarCommand, ValueMetavarGroup
from cyclealign.cli.config import config_app, status_command
from cyclealign.cli.eval import eval_command
from cyclealign.cli.iterate import iterate
from cyclealign.cli.templates import templates_app
from cyclealign.cli.train import train_round_command

__all__ = ["app"]

app = typer.Typer(cls=ValueMetavarGroup, add_completion=False, no_args_is_help=True, help="CycleAlign: align a white-box LLM with a black-box API LLM.")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"cyclealign {version('cyclealign')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """CycleAlign: align a white-box LLM with a black-box API LLM (Hong et al. 2023)."""


app.command(cls=ValueMetavarCommand)(iterate)
app.command("train-round", cls=ValueMetavarCommand)(train_round_command)
app.command("eval", cls=ValueMetavarCommand)(eval_command)
app.command(cls=ValueMetavarCommand)(reparse)
app.command("export", cls=ValueMetavarCommand)(export_command)
app.command("report", cls=ValueMetavarCommand)(report_command)
app.command("publish", cls=ValueMetavarCommand)(publish_command)
app.add_typer(templates_app, name="templates")
app.add_typer(config_app, name="config")
app.command("status", cls=ValueMetavarCommand)(status_command)
