"""Command-line interface: flags -> :class:`~cyclealign.config.Config` -> :func:`cyclealign.loop.iterate`.

Only parsing and printing live here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cyclealign.config import Config, build_config
from cyclealign.errors import CycleAlignError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="CycleAlign: align a white-box LLM with a black-box API LLM.")
console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """CycleAlign: align a white-box LLM with a black-box API LLM (Hong et al. 2023)."""


class RichReporter:
    """Progress bars per phase and a summary table per round (a :class:`cyclealign.loop.Reporter`)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def phase_start(self, round_index: int, phase: str, total: int | None) -> None:
        if self.task is not None and phase == "train-steps":
            self.progress.update(self.task, total=total, completed=0)
            return
        label = f"round {round_index} {phase}"
        self.task = self.progress.add_task(label, total=total)

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def phase_end(self, round_index: int, phase: str, info: dict[str, Any]) -> None:
        if self.task is not None:
            task = self.progress.tasks[-1]
            self.progress.update(self.task, total=task.total or 1, completed=task.total or 1)
            self.progress.update(self.task, description=f"round {round_index} {phase} ({info['wall_s']:.1f} s)")
        self.task = None

    def round_end(self, metrics: dict[str, Any]) -> None:
        self.progress.console.print(round_table([metrics]))


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


_ROWS = [
    ("ranked", "ranked"),
    ("unranked", "unranked"),
    ("agreement rate", "agreement_rate"),
    ("Kendall tau", "kendall_tau"),
    ("demo pool size", "pool_size"),
    ("train loss", "train_loss"),
    ("ranker tokens sent", "tokens_sent"),
    ("ranker tokens received", "tokens_received"),
]


def round_table(rows: list[dict[str, Any]]) -> Table:
    """A rich table of round metrics: one column per round, one row per metric (fits 80 columns)."""
    table = Table(title="CycleAlign rounds")
    table.add_column("metric")
    for m in rows:
        table.add_column(f"round {m['round']}", justify="right")
    for label, key in _ROWS:
        table.add_row(label, *[_fmt(m.get(key)) for m in rows])
    for phase in ("generate", "rank", "agreement", "train"):
        table.add_row(f"{phase} s", *[_fmt(m["phase_s"][phase], 1) for m in rows])
    return table


@app.command()
def iterate(
    ctx: typer.Context,
    prompts: Annotated[Optional[Path], typer.Option(help="Prompts: JSONL[.gz] ({prompt}|{messages}|HH-RLHF {chosen,rejected}) or a HF dataset folder. Default: the shipped set.")] = None,
    rounds: Annotated[int, typer.Option(help="Rounds in total (a resumed run continues up to this).")] = 2,
    prompts_per_round: Annotated[int, typer.Option(help="Prompts per round.")] = 8,
    num_samples: Annotated[int, typer.Option(help="N: responses sampled per prompt.")] = 4,
    run_dir: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/default"),
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --run-dir.")] = False,
    config: Annotated[Optional[Path], typer.Option(help="A JSON config file (fields of cyclealign.config.Config); flags given explicitly override it.")] = None,
    model: Annotated[Optional[str], typer.Option(help="White-box policy: HF model id or local dir. Default: embedded SmolLM2-135M-Instruct.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    ranker_base_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible base URL (…/v1). Default: a local `transformers serve` of the embedded model.")] = None,
    ranker_model: Annotated[Optional[str], typer.Option(help="Model name for the ranker API (required with --ranker-base-url).")] = None,
    ranker_api_key_env: Annotated[str, typer.Option(help="Environment variable with the API key.")] = "OPENAI_API_KEY",
    max_new_tokens: Annotated[int, typer.Option(help="Response length cap, tokens.")] = 64,
    temperature: Annotated[float, typer.Option(help="White-box sampling temperature.")] = 0.9,
    num_dynamic_demos: Annotated[int, typer.Option(help="k: dynamic demonstrations per ranker call.")] = 2,
    agreement_min_length: Annotated[Optional[int], typer.Option(help="LCS length to join the demo pool (default N-1).")] = None,
    loss: Annotated[str, typer.Option(help="Ranking loss: pro | rrhf | dpo-pl | lipo | dpo (TRL DPOTrainer on pairs).")] = "pro",
    beta: Annotated[float, typer.Option(help="Implicit-reward scale of dpo-pl and lipo.")] = 0.1,
    reference: Annotated[str, typer.Option(help="Reference policy of dpo-pl/lipo: initial | previous.")] = "initial",
    qlora: Annotated[bool, typer.Option(help="QLoRA: 4-bit NF4 base via bitsandbytes (CUDA only).")] = False,
    merge: Annotated[bool, typer.Option(help="Also save each round's policy with the adapter merged (round_k/merged/).")] = False,
    sft_weight: Annotated[float, typer.Option(help="Weight of the SFT term on the top response.")] = 0.1,
    learning_rate: Annotated[float, typer.Option(help="LoRA learning rate.")] = 2e-4,
    epochs: Annotated[float, typer.Option(help="Training passes over each round's rankings.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Run CycleAlign rounds: generate -> black-box rank -> agreement -> train -> next round."""
    from cyclealign.loop import iterate as run_iterate

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import warnings

    import transformers

    transformers.utils.logging.disable_progress_bar()  # rich draws the progress
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes, not the user's business
    try:
        flags = _config_overrides(ctx, config)
        cfg = build_config(**flags)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            metrics = run_iterate(cfg, resume=resume, environ=os.environ, reporter=RichReporter(progress))
    except CycleAlignError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(code=2) from None
    console.print(round_table(metrics))
    console.print(f"run directory: {cfg.run_dir}  (metrics: {cfg.run_dir / 'metrics.jsonl'})")


# CLI parameter -> dotted Config field.
_FIELDS = {
    "prompts": "prompts",
    "rounds": "rounds",
    "prompts_per_round": "prompts_per_round",
    "num_samples": "generation.num_samples",
    "run_dir": "run_dir",
    "model": "model.name_or_path",
    "device": "model.device",
    "ranker_base_url": "ranker.base_url",
    "ranker_model": "ranker.model",
    "ranker_api_key_env": "ranker.api_key_env",
    "max_new_tokens": "generation.max_new_tokens",
    "temperature": "generation.temperature",
    "num_dynamic_demos": "ranker.num_dynamic_demos",
    "agreement_min_length": "agreement.min_length",
    "loss": "train.loss",
    "beta": "train.beta",
    "reference": "train.reference",
    "qlora": "train.qlora",
    "merge": "train.merge",
    "sft_weight": "train.sft_weight",
    "learning_rate": "train.learning_rate",
    "epochs": "train.epochs",
    "seed": "seed",
}


def _config_overrides(ctx: typer.Context, config_file: Path | None) -> dict[str, Any]:
    """Dotted config fields from the flags; with ``--config``, the file's values overridden
    only by the flags given explicitly on the command line."""
    flags = {field: ctx.params[name] for name, field in _FIELDS.items()}
    if config_file is None:
        return flags
    explicit = {
        field for name, field in _FIELDS.items() if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    }
    base = _flatten(Config.from_json_file(config_file).model_dump(mode="json"))
    return {**base, **{k: v for k, v in flags.items() if k in explicit}}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k in ("model", "generation", "ranker", "agreement", "train"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


@app.command("train-round")
def train_round_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory whose round to train.")],
    round_index: Annotated[int, typer.Option("--round", help="Round index (0-based).")],
) -> None:
    """Train one round from its saved rankings (what the loop runs under accelerate/torchrun).

    Every launched process runs this; the main process writes the adapter and train.json.
    The loop marks the phase done afterwards.
    """
    import warnings

    from accelerate import PartialState

    from cyclealign.config import Config
    from cyclealign.models import resolve_device, resolve_model_dir
    from cyclealign.policy.hf import load_tokenizer
    from cyclealign.rundir import RunDir
    from cyclealign.train.phase import run_train_phase

    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        cfg = Config.from_json_file(run_dir / "config.json")
        state = PartialState(cpu=resolve_device(cfg.model).type == "cpu")  # joins the launcher's process group
        model_dir = resolve_model_dir(cfg.model)
        summary = run_train_phase(
            cfg,
            RunDir(run_dir),
            round_index,
            model_dir=model_dir,
            pad_token_id=load_tokenizer(model_dir).pad_token_id,
            device=state.device,
            is_main_process=state.is_main_process,
        )
    except CycleAlignError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(code=2) from None
    if state.is_main_process:
        console.print(summary)


if __name__ == "__main__":  # `python -m cyclealign.cli`, as the training launchers run it
    app()
