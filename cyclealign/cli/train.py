"""``cyclealign train-round``: train one round from its saved rankings (what the loop runs under
``accelerate launch`` or ``torchrun``: every launched process runs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cyclealign.cli.common import OldRunDirArgument, RunDirOption, console, exit_codes, run_dir_given

__all__ = ["train_round_command", "train_summary_line"]


def train_round_command(
    run_dir: RunDirOption = None,
    old_run_dir: OldRunDirArgument = None,
    round_index: Annotated[int, typer.Option("--round", help="Round index (0-based).")] = ...,  # type: ignore[assignment]  # typer: required
) -> None:
    """Train one round of --run-dir from its saved rankings (what the loop runs under accelerate/torchrun).

    Every launched process runs this; the main process writes the adapter and train.json.
    The loop marks the phase done afterwards.
    """
    import warnings

    from accelerate import PartialState

    from cyclealign.models.loading import resolve_device, resolve_model_dir
    from cyclealign.models.tokenizer import load_tokenizer
    from cyclealign.rundir import RunDir
    from cyclealign.train.phase import run_train_phase

    warnings.filterwarnings("ignore", category=FutureWarning)
    with exit_codes():
        run = RunDir(run_dir_given(run_dir, old_run_dir))
        cfg = run.read_config()
        state = PartialState(cpu=resolve_device(cfg.model).type == "cpu")  # joins the launcher's process group
        model_dir = resolve_model_dir(cfg.model)
        summary = run_train_phase(
            cfg,
            run,
            round_index,
            model_dir=model_dir,
            pad_token_id=load_tokenizer(model_dir).pad_token_id,
            device=state.device,
            is_main_process=state.is_main_process,
        )
    if state.is_main_process:
        console.print(train_summary_line(round_index, summary, run.round(round_index).adapter), soft_wrap=True, markup=False)


def train_summary_line(round_index: int, summary: dict, adapter: Path) -> str:
    """One line for what :func:`~cyclealign.train.phase.run_train_phase` returned.

    >>> train_summary_line(1, {"adapter": False, "skipped": "no ranked prompt this round"}, Path("r/round_001/adapter"))
    'round 1: no adapter trained (no ranked prompt this round)'
    >>> s = {"adapter": True, "lists": 12, "steps": 24, "train_loss": 4.3201, "ranking_accuracy": 0.625}
    >>> train_summary_line(1, s, Path("r/round_001/adapter"))
    'round 1 trained: 12 lists, 24 steps, loss 4.320, ranking accuracy 0.625; adapter r/round_001/adapter'
    """
    if not summary.get("adapter"):
        return f"round {round_index}: no adapter trained ({summary.get('skipped', 'nothing to train')})"
    return (
        f"round {round_index} trained: {summary.get('lists')} lists, {summary.get('steps')} steps, "
        f"loss {summary.get('train_loss', float('nan')):.3f}, ranking accuracy {summary.get('ranking_accuracy', float('nan')):.3f}; "
        f"adapter {adapter}"
    )
