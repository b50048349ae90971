"""``cyclealign train-round``: train one round from its saved rankings (what the loop runs under
``accelerate launch`` or ``torchrun``: every launched process runs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cyclealign.cli.common import console, exit_codes

__all__ = ["train_round_command"]


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

    from cyclealign.models.loading import resolve_device, resolve_model_dir
    from cyclealign.models.tokenizer import load_tokenizer
    from cyclealign.rundir import RunDir
    from cyclealign.train.phase import run_train_phase

    warnings.filterwarnings("ignore", category=FutureWarning)
    with exit_codes():
        run = RunDir(run_dir)
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
        console.print(summary)
