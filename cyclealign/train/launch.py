"""The loop's side of the train phase: run it in process (with a progress callback) or as
``cyclealign train-round`` under the configured launcher (``accelerate`` / ``torchrun``), and
return what the round's manifest records."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from transformers import TrainerCallback

from cyclealign.config import Config
from cyclealign.errors import TrainError
from cyclealign.models import resolve_device
from cyclealign.progress import Reporter
from cyclealign.rundir import RunDir

__all__ = ["StepProgress", "train_phase"]


class StepProgress(TrainerCallback):
    """A transformers ``TrainerCallback`` that advances a :class:`~cyclealign.progress.Reporter`
    once per optimiser step (the ``train-steps`` bar; its total is the Trainer's ``max_steps``)."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def on_train_begin(self, args, state, control, **kwargs):
        self.reporter.phase_start(-1, "train-steps", state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self.reporter.advance()


def train_phase(cfg: Config, run: RunDir, index: int, model_dir: str, pad_token_id: int, reporter: Reporter) -> dict[str, Any]:
    """Train round ``index`` on its black-box rankings -> ``round_k/adapter/`` and ``train.json``;
    returns the manifest's ``train`` entry (``adapter``: whether one was trained, and the
    training summary without its log history).

    ``train.launcher = "inprocess"`` trains in this process
    (:func:`~cyclealign.train.phase.run_train_phase`); otherwise the launcher's command
    (:func:`~cyclealign.train.phase.launch_command`) runs with its output appended to
    ``round_k/train.log``.

    Raises:
        TrainError: the launched training process failed (its log's last 20 lines included).
    """
    from cyclealign.train.phase import launch_command, run_train_phase

    if cfg.train.launcher == "inprocess":
        return run_train_phase(
            cfg,
            run,
            index,
            model_dir=model_dir,
            pad_token_id=pad_token_id,
            device=resolve_device(cfg.model),
            callbacks=[StepProgress(reporter)],
        )
    rd = run.round(index)
    cmd = launch_command(cfg, run.path, index)
    log_path = rd.path / "train.log"
    with open(log_path, "ab") as log_file:
        code = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-20:]
        raise TrainError(f"{' '.join(cmd)} exited with code {code}; last lines of {log_path}:\n" + "\n".join(tail))
    if not rd.train.exists():
        return {"adapter": False, "skipped": "no ranked prompt this round"}
    stats = json.loads(rd.train.read_text())
    summary = {k: v for k, v in stats.items() if k not in ("log_history", "wall_s")}
    return {"adapter": True, "merged": cfg.train.merge, "launcher": cfg.train.launcher, **summary}
