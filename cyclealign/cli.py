"""Command-line interface: flags -> :class:`~cyclealign.config.Config` -> :func:`cyclealign.loop.iterate`.

Only parsing and printing live in the ``cli*`` modules; this one assembles the ``cyclealign``
app (the console script ``cyclealign.cli:app``) from them, command by command, in ``--help`` order:

==============  =====================================================================
module          commands
==============  =====================================================================
cli_iterate     ``iterate`` (its flags as config layers: :mod:`cyclealign.cli_flags`)
cli_train       ``train-round`` (what the training launchers run)
cli_eval        ``eval``
cli_artifacts   ``reparse``, ``export``, ``report``, ``publish``
cli_templates   ``templates ...``
cli_config      ``config show``, ``config schema``, ``status``
==============  =====================================================================

The tables they print are :mod:`cyclealign.cli_tables`; errors become exit codes in
:func:`cyclealign.cli_common.exit_codes`.
"""

from __future__ import annotations

import typer

from cyclealign.cli_artifacts import export_command, publish_command, reparse, report_command
from cyclealign.cli_config import config_app, status_command
from cyclealign.cli_eval import eval_command
from cyclealign.cli_iterate import RichReporter, iterate
from cyclealign.cli_tables import eval_table, round_table
from cyclealign.cli_templates import templates_app
from cyclealign.cli_train import train_round_command

__all__ = ["RichReporter", "app", "eval_table", "round_table"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="CycleAlign: align a white-box LLM with a black-box API LLM.")


@app.callback()
def _root() -> None:
    """CycleAlign: align a white-box LLM with a black-box API LLM (Hong et al. 2023)."""


app.command()(iterate)
app.command("train-round")(train_round_command)
app.command("eval")(eval_command)
app.command()(reparse)
app.command("export")(export_command)
app.command("report")(report_command)
app.command("publish")(publish_command)
app.add_typer(templates_app, name="templates")
app.add_typer(config_app, name="config")
app.command("status")(status_command)


if __name__ == "__main__":  # `python -m cyclealign.cli`, as the training launchers run it
    app()
