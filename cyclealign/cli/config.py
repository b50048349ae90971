"""``cyclealign config`` (the effective config, its schema) and ``cyclealign status`` (where a run stands)."""

from __future__ import annotations

import inspect
from typing import Annotated, Any, get_type_hints

import typer
from rich.console import Console

from cyclealign.cli.common import OldRunDirArgument, RunDirOption, ValueMetavarCommand, ValueMetavarGroup, exit_codes, run_dir_given
from cyclealign.cli.tables import status_table
from cyclealign.config import Config
from cyclealign.errors import ConfigError

__all__ = ["config_app", "status_command"]

config_app = typer.Typer(cls=ValueMetavarGroup, no_args_is_help=True, help="The run configuration: the effective config, its fields, its schema.")


# Flags of ``iterate`` that do not shape the config (what the command does with it).
_NOT_CONFIG = ("dry_run", "quiet", "verbose", "promote_if", "new_prompts_only")


def config_show(ctx: typer.Context, **flags: Any) -> None:
    """Print the effective config of an iterate command line as YAML: a file to edit and pass
    back with --config. It takes every flag iterate takes and layers them as iterate does
    (defaults < the run's saved config when resuming < --config < flags < --set); a --run-dir
    that holds a run is read as a resume of it."""
    from cyclealign.cli.flags import iterate_config
    from cyclealign.rundir import RunDir

    fmt = flags["fmt"]
    with exit_codes():
        if fmt not in ("yaml", "json"):
            raise ConfigError(f"--format {fmt!r}: expected yaml or json")
        explicit_run = getattr(ctx.get_parameter_source("run_dir"), "name", None) == "COMMANDLINE"
        resume = flags["resume"] or (explicit_run and RunDir(flags["run_dir"]).config.exists())
        cfg, _ = iterate_config(ctx, flags["config"], flags["set_"], resume, flags["add_rounds"])
    typer.echo(cfg.to_yaml() if fmt == "yaml" else cfg.to_json(), nl=fmt == "json")


def _show_signature() -> None:
    """Give :func:`config_show` ``iterate``'s parameters (less :data:`_NOT_CONFIG`) plus --format,
    so typer builds the same flags for both commands."""
    from cyclealign.cli.iterate import iterate

    hints = get_type_hints(iterate, include_extras=True)
    params = [
        p.replace(annotation=hints[name])
        for name, p in inspect.signature(iterate).parameters.items()
        if name not in _NOT_CONFIG
    ]
    fmt = inspect.Parameter(
        "fmt", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="yaml",
        annotation=Annotated[str, typer.Option("--format", help="yaml | json", rich_help_panel="Output")],
    )
    config_show.__signature__ = inspect.Signature([*params, fmt])  # type: ignore[attr-defined]
    config_show.__annotations__ = {p.name: p.annotation for p in [*params, fmt]}


_show_signature()
config_app.command("show", cls=ValueMetavarCommand)(config_show)


@config_app.command("schema", cls=ValueMetavarCommand)
def config_schema() -> None:
    """Print the JSON schema of a config file (every field, its type, default and description)."""
    typer.echo(Config.schema_json())


@config_app.command("fields", cls=ValueMetavarCommand)
def config_fields(
    section: Annotated[str | None, typer.Argument(help="Only this section's fields (e.g. train); default: all.")] = None,
) -> None:
    """List every config field: its dotted name, type, default and meaning (what --set and a
    config file take; `config schema` prints the same as JSON schema)."""
    from rich.table import Table
    from rich.text import Text

    from cyclealign.config.fields import config_fields as fields

    with exit_codes():
        rows = fields(Config, section)
    table = Table(title="config fields" + (f": {section}" if section else ""), show_lines=False)
    for column in ("field", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in (row.name, row.type, row.default, row.description)))  # no markup: defaults hold [brackets]
    Console().print(table)


def status_command(
    run_dir: RunDirOption = None,
    old_run_dir: OldRunDirArgument = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Where the run in --run-dir stands: rounds done, the phase in progress or interrupted, last metrics, spend, lock holder."""
    import json

    from cyclealign.schedule import run_status

    with exit_codes():
        run_dir = run_dir_given(run_dir, old_run_dir)
        st = run_status(run_dir)
    if as_json:
        typer.echo(json.dumps(st, default=str))
        return
    Console().print(status_table(st, title=f"status {run_dir}"))
