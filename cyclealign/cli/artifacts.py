"""The commands over a run's stored artifacts: ``reparse`` (rankings from the stored replies),
``export`` (a Hugging Face dataset), ``report`` (HTML) and ``publish`` (an adapter into vLLM)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from cyclealign.cli.common import OldRunDirArgument, RunDirOption, console, deprecation_note, exit_codes, resolve_alias, run_dir_given
from cyclealign.errors import ConfigError, RunDirError

__all__ = ["export_command", "publish_command", "reparse", "report_command"]


def reparse(
    run_dir: RunDirOption = None,
    old_run_dir: OldRunDirArgument = None,
    round_index: Annotated[Optional[list[int]], typer.Option("--round", help="Round(s) to reparse (default: all).")] = None,
    rewind: Annotated[bool, typer.Option(help="Allow changing rounds whose agreement/training used the old rankings: reset them, set later rounds aside.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would change.")] = False,
    complete_missing_last: Annotated[Optional[bool], typer.Option("--complete-missing-last/--strict", help="Override ranker.complete_missing_last of the run.")] = None,
    old_no_dry_run: Annotated[bool, typer.Option("--no-dry-run", hidden=True, help="Deprecated: the default.")] = False,
) -> None:
    """Re-apply the (fixed) ranking parser to the raw replies on disk of --run-dir: no API call is made."""
    from cyclealign.reparse import reparse_run

    with exit_codes():
        run_dir = run_dir_given(run_dir, old_run_dir)
        if old_no_dry_run:  # the default spelled out, as every command's --dry-run has no --no- form
            if dry_run:
                raise ConfigError("--dry-run and the deprecated --no-dry-run contradict each other; give --dry-run or nothing")
            deprecation_note("--no-dry-run", "nothing (a real reparse is the default)")
        summaries = reparse_run(
            run_dir, rounds=round_index or None, rewind=rewind, dry_run=dry_run, complete_last=complete_missing_last
        )
    table = Table(title=f"reparse {run_dir}" + (" (dry run)" if dry_run else ""))
    for col in ("round", "prompts", "ranked before", "ranked after", "changed", "written", "rewound"):
        table.add_column(col, justify="right")
    for s in summaries:
        table.add_row(*(str(v) for v in (s.round, s.prompts, s.ranked_before, s.ranked_after, s.changed, s.written, s.rewound)))
    Console().print(table)
    if any(s.rewound for s in summaries):
        console.print(f"rounds reset: continue with `cyclealign iterate --run-dir {run_dir} --resume`")


def export_command(
    run_dir: RunDirOption = None,
    old_run_dir: OldRunDirArgument = None,
    fmt: Annotated[str, typer.Option("--format", help="dpo: TRL conversational preference pairs (prompt/chosen/rejected), every (better, worse) pair of each ranking | ranking: one row per ranked prompt (prompt, responses, ranking best first).")] = ...,  # type: ignore[assignment]  # typer: required
    out: Annotated[Path, typer.Option(help="Folder to save the dataset in (datasets save_to_disk; must be new or empty).")] = ...,  # type: ignore[assignment]  # typer: required
    round_index: Annotated[Optional[list[int]], typer.Option("--round", min=0, help="Round to export; repeatable (default: every round with rankings).")] = None,
    old_rounds: Annotated[Optional[str], typer.Option("--rounds", hidden=True, help="Deprecated: --round, repeated.")] = None,
    push_to_hub: Annotated[Optional[str], typer.Option(help="Also push the dataset to this Hugging Face Hub repo id (needs a login).")] = None,
) -> None:
    """Export the rankings of --run-dir as a Hugging Face dataset (unranked prompts are skipped)."""
    import datasets

    from cyclealign.export import export_rankings, parse_rounds
    from cyclealign.export import push_to_hub as push

    datasets.disable_progress_bars()  # one summary line is printed instead

    with exit_codes():
        run_dir = run_dir_given(run_dir, old_run_dir)
        old = parse_rounds(old_rounds) if old_rounds is not None else None
        rounds = resolve_alias(round_index, old, new="--round R --round R", old="--rounds")
        dataset = export_rankings(run_dir, fmt, out, rounds=rounds or None)
    prompts = len(set(zip(dataset["round"], dataset["prompt_id"])))
    exported = sorted(set(dataset["round"]))
    console.print(f"wrote {dataset.num_rows} rows ({prompts} ranked prompts, rounds {', '.join(map(str, exported))}) to {out}", soft_wrap=True)
    if push_to_hub:
        with exit_codes():  # the local save above is kept whatever the Hub says
            push(dataset, push_to_hub)
        console.print(f"pushed to the Hugging Face Hub: {push_to_hub}", soft_wrap=True)


def report_command(
    run_dir: RunDirOption = None,
    old_run_dir: OldRunDirArgument = None,
    out: Annotated[Optional[Path], typer.Option(help="Report folder (default: RUN_DIR/report).")] = None,
) -> None:
    """Write an HTML report of the run in --run-dir: metrics and plots across rounds, evaluation, sample responses."""
    from cyclealign.report.html import write_report

    with exit_codes():
        run_dir = run_dir_given(run_dir, old_run_dir)
        path = write_report(run_dir, out)
    console.print(f"report: {path}", soft_wrap=True)


def publish_command(
    run_dir: RunDirOption = None,
    old_run_dir: OldRunDirArgument = None,
    to: Annotated[str, typer.Option("--to", help="A running vLLM server (http://HOST:PORT or …/v1) started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.")] = ...,  # type: ignore[assignment]  # typer: required
    round_index: Annotated[Optional[int], typer.Option("--round", help="Round whose adapter to load (default: RUN_DIR/promoted when present, else the latest trained round).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Name to serve it under (default: run, round and a digest of the weights).")] = None,
) -> None:
    """Load a finished round's LoRA adapter of --run-dir into a running vLLM server (no restart); prints the model name to request."""
    from cyclealign.policy.vllm_client import VLLMClient, adapter_name
    from cyclealign.rundir import RunDir

    with exit_codes():
        run_dir = run_dir_given(run_dir, old_run_dir)
        if not to.startswith(("http://", "https://")):
            raise ConfigError(f"--to {to!r}: not an http(s):// URL of a vLLM server (e.g. http://HOST:8000)")
        run = RunDir(run_dir)
        saved = run.read_config()  # a run directory, or a clear error
        promoted = run.read_promoted() if round_index is None else None
        if promoted is not None:
            adapter = promoted
        else:
            k = round_index if round_index is not None else run.latest_trained_round(run.finished_rounds() - 1)
            if k is None or not run.round(k).has_adapter():
                raise RunDirError(f"{run.path}: {'round ' + str(k) if k is not None else 'no round'} has no trained adapter to publish")
            adapter = run.round(k).adapter
        base = to.rstrip("/")
        key = os.environ.get(saved.vllm.api_key_env) or None  # the server's --api-key, if it has one
        client = VLLMClient(base if base.endswith("/v1") else base + "/v1", model="", api_key=key)
        served = name or adapter_name(adapter, run.path.resolve().name)
        client.load_adapter(served, adapter)
    console.print(f"published {adapter} to {client.root_url} as model {served!r}", soft_wrap=True)
    typer.echo(served)
