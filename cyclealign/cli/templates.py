"""``cyclealign templates``: list, show, copy, render and check the prompt templates.

A user templates folder (``--templates DIR`` in every command, config ``ranker.templates_dir``) holds only the
files it overrides; every other template is the shipped one (``cyclealign templates path``).
Like ``llm templates``: ``list`` says which file wins for each template, ``show`` prints it,
``copy`` starts a folder to edit, ``render`` prints the exact messages a call sends and
``check`` tells whether a folder still asks for answers the reply parsers accept.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from cyclealign.cli.common import OldTemplatesArgument, ValueMetavarCommand, ValueMetavarGroup, resolve_alias
from cyclealign.errors import CycleAlignError, TemplateError
from cyclealign.resources import default_templates_dir
from cyclealign.templates.files import TEMPLATE_NAMES, TemplateFiles, template_name

__all__ = ["templates_app"]

templates_app = typer.Typer(cls=ValueMetavarGroup, 
    add_completion=False, no_args_is_help=True, help="List, show, copy, render and check the ranker and judge templates."
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

TemplatesOpt = Annotated[
    Optional[Path],
    typer.Option("--templates", help="Folder of templates overriding the shipped ones file by file (default: the shipped ones)."),
]


def _folder(templates: Path | None, old_folder: Path | None) -> Path:
    """The folder of ``--templates`` or of the deprecated positional ``FOLDER`` (:func:`resolve_alias`).

    Raises:
        ConfigError: neither given, or both with different paths.
    """
    folder = resolve_alias(templates, old_folder, new="--templates FOLDER", old="the positional FOLDER", required=True)
    assert folder is not None  # required
    return folder


@contextmanager
def _exit_codes() -> Iterator[None]:
    """A CycleAlign error -> ``error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except CycleAlignError as e:
        err.print(f"[red]error:[/red] {e}", markup=True)
        raise typer.Exit(code=2) from None


@templates_app.command("list", cls=ValueMetavarCommand)
def list_templates(templates: TemplatesOpt = None) -> None:
    """Every template, which file wins (user: yours, or shipped) and its path, one per line."""
    with _exit_codes():
        files = TemplateFiles(templates)
    # plain aligned lines (paths whole, never wrapped): ``template  from  path``
    for name, origin, file in files.listing():
        typer.echo(f"{name.removesuffix('.jinja'):<18} {origin:<8} {file}")


@templates_app.command("show", cls=ValueMetavarCommand)
def show(name: Annotated[str, typer.Argument(help="Template name, e.g. ranker_system (.jinja optional).")], templates: TemplatesOpt = None) -> None:
    """Print the text of the file that wins for template NAME."""
    with _exit_codes():
        text = TemplateFiles(templates).source(template_name(name))
    typer.echo(text, nl=not text.endswith("\n"))


@templates_app.command("path", cls=ValueMetavarCommand)
def path() -> None:
    """Print the folder of the shipped templates."""
    typer.echo(str(default_templates_dir()))


@templates_app.command("copy", cls=ValueMetavarCommand)
def copy(
    templates: Annotated[Optional[Path], typer.Option("--templates", help="Folder to copy the shipped templates into (created; required).")] = None,
    old_folder: OldTemplatesArgument = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite template files already there.")] = False,
) -> None:
    """Copy the six shipped templates into the --templates folder to edit (delete the ones you keep as shipped)."""
    with _exit_codes():
        folder = _folder(templates, old_folder)
        existing = [n for n in TEMPLATE_NAMES if (folder / n).exists()]
        if existing and not force:
            raise TemplateError(f"{folder}: would overwrite {', '.join(existing)} (pass --force to overwrite)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for n in TEMPLATE_NAMES:
                shutil.copyfile(default_templates_dir() / n, folder / n)
        except OSError as e:
            raise TemplateError(f"{folder}: cannot copy templates: {e.strerror or e}") from None
    out.print(f"copied {len(TEMPLATE_NAMES)} templates to {folder}", markup=False)


@templates_app.command("render", cls=ValueMetavarCommand)
def render(
    name: Annotated[str, typer.Argument(help="ranker or judge: the call to render.")],
    templates: TemplatesOpt = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="A run directory: render a call of that run (default: a sample call).")] = None,
    old_run: Annotated[Optional[Path], typer.Option("--run", hidden=True, help="Deprecated: --run-dir.")] = None,
    round_index: Annotated[int, typer.Option("--round", min=0, help="The run's round.")] = 0,
    prompt_id: Annotated[Optional[str], typer.Option("--prompt-id", help="The prompt (default: the round's first).")] = None,
    sample: Annotated[int, typer.Option("--sample", min=0, help="Presentation order (0 .. ranker.consistency-1).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the messages as a JSON list of {role, content}.")] = False,
) -> None:
    """Print the exact chat messages of one ranker or judge call (the ranker's first ask).

    With --run-dir, the call of --prompt-id in --round as that run sends it (its config, the
    round's responses, demonstrations and shuffle; --templates overrides the run's folder).
    Without, the first shipped demonstration under the default settings.
    """
    from cyclealign.templates.judge import JudgeTemplates
    from cyclealign.templates.ranker import RankerTemplates
    from cyclealign.templates.render import judge_messages, ranker_messages, run_call, sample_call

    with _exit_codes():
        run = resolve_alias(run_dir, old_run, new="--run-dir RUN_DIR", old="--run")
        if name not in ("ranker", "judge"):
            raise TemplateError(f"render: unknown call {name!r} (ranker or judge)")
        if run is None and (prompt_id is not None or round_index != 0):
            raise TemplateError("render: --prompt-id and --round choose a call of a run; pass the run with --run-dir")
        call = run_call(run, round_index, prompt_id) if run is not None else sample_call()
        folder = templates if templates is not None else call.cfg.ranker.templates_dir
        if name == "ranker":
            if sample >= call.cfg.ranker.consistency:
                raise TemplateError(f"--sample {sample}: ranker.consistency={call.cfg.ranker.consistency} asks orders 0..{call.cfg.ranker.consistency - 1}")
            messages = ranker_messages(RankerTemplates(folder), call, sample)
        else:
            messages = judge_messages(JudgeTemplates(folder), call)
    if as_json:
        typer.echo(json.dumps(messages, indent=2, ensure_ascii=False))
        return
    for m in messages:
        out.rule(f"[bold]{m['role']}[/bold]", align="left")
        out.print(m["content"], markup=False)


@templates_app.command("check", cls=ValueMetavarCommand)
def check(
    templates: Annotated[Optional[Path], typer.Option("--templates", help="Folder of templates overriding the shipped ones file by file (required).")] = None,
    old_folder: OldTemplatesArgument = None,
) -> None:
    """Check the --templates folder laid over the shipped templates: syntax, variables, and that a
    rendering still asks for an answer the reply parser accepts. Exit 0 when fine, 2 with errors."""
    from cyclealign.templates.check import check_templates

    with _exit_codes():
        results = check_templates(_folder(templates, old_folder))
    for r in results:
        if r.ok:
            out.print("[green]ok[/green]    ", end="")
            out.print(f"{r.name} ({r.origin}: {r.path})", markup=False)
        for problem in r.problems:
            out.print("[red]error[/red] ", end="")
            out.print(problem, markup=False)
    bad = sum(not r.ok for r in results)
    if bad:
        out.print(f"{bad} of {len(results)} templates have errors", markup=False)
        raise typer.Exit(code=2)
