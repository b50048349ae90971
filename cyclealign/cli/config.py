"""``cyclealign config`` (the effective config, its schema) and ``cyclealign status`` (where a run stands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from cyclealign.cli.common import exit_codes
from cyclealign.cli.tables import status_table
from cyclealign.config import Config, layer_config, parse_set_options
from cyclealign.config.files import flatten, read_config_file
from cyclealign.errors import ConfigError

__all__ = ["config_app", "status_command"]

config_app = typer.Typer(no_args_is_help=True, help="The run configuration: the effective config, its schema.")


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option(help="A config file (YAML or JSON).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="section.field=value (repeatable).")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Start from this run's saved config (as --resume does).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="yaml | json")] = "yaml",
) -> None:
    """Print the effective config (defaults < --run-dir's saved config < --config < --set) as YAML:
    a file to edit and pass back with --config."""
    from cyclealign.rundir import RunDir

    with exit_codes():
        saved = flatten(RunDir(run_dir).read_config().model_dump(mode="json")) if run_dir is not None else {}
        file_layer = flatten(read_config_file(config)) if config is not None else {}
        cfg = layer_config(saved, file_layer, parse_set_options(set_))
        if fmt not in ("yaml", "json"):
            raise ConfigError(f"--format {fmt!r}: expected yaml or json")
    typer.echo(cfg.to_yaml() if fmt == "yaml" else cfg.to_json(), nl=fmt == "json")


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of a config file (every field, its type, default and description)."""
    typer.echo(Config.schema_json())


def status_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Where a run stands: rounds done, the phase in progress or interrupted, last metrics, spend, lock holder."""
    import json

    from cyclealign.schedule import run_status

    with exit_codes():
        st = run_status(run_dir)
    if as_json:
        typer.echo(json.dumps(st, default=str))
        return
    Console().print(status_table(st, title=f"status {run_dir}"))
