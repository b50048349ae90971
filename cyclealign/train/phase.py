"""The train phase of one round, runnable in-process or under a multi-process launcher.

In-process (the default) the loop calls :func:`run_train_phase` directly. With
``train.launcher`` set to ``accelerate`` or ``torchrun``, the loop instead runs
``cyclealign train-round --run-dir RUN_DIR --round K`` under that launcher (see :func:`launch_command`):
every process runs :func:`run_train_phase`, the Trainer shards the ranking lists across them
(DDP, or DeepSpeed ZeRO through an accelerate config), and only the main process writes the
adapter and ``train.json``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cyclealign.config import Config
from cyclealign.models.loading import resolve_dtype
from cyclealign.resources import shipped_accelerate_config
from cyclealign.rundir import RunDir
from cyclealign.files import write_json
from cyclealign.train.examples import RankingExample
from cyclealign.train.lora import load_trainable_policy, save_merged
from cyclealign.train.trainer import train_round


def round_examples(run: RunDir, index: int, target: str = "blackbox") -> list[RankingExample]:
    """The round's ranked prompts as training lists: prompt ids and response ids, best first.

    ``target="blackbox"``: every ranked prompt with its whole black-box ranking (a prompt
    ranked twice, an API error retried on resume, counts with its latest result).
    ``target="agreement"``: only the responses of each prompt's agreement (the LCS of the
    black-box and white-box rankings, ``agreement.jsonl``), in that order; prompts whose LCS
    has fewer than 2 responses are left out (Hong et al. 2023, Sec. 3.3: the agreed order is
    the pseudo-label).

    Raises:
        ValueError: an unknown ``target``.
    """
    rd = run.round(index)
    gens = {g.prompt_id: g for g in rd.read_generations()}
    if target == "blackbox":
        orders = [(r.prompt_id, r.ranking) for r in rd.read_rankings() if r.ranking is not None]
    elif target == "agreement":
        orders = [(row.prompt_id, row.agreement) for row in rd.read_agreement() if len(row.agreement) >= 2]
    else:
        raise ValueError(f"train.target must be 'blackbox' or 'agreement', got {target!r}")
    return [
        RankingExample(gens[pid].prompt_token_ids, [gens[pid].response_token_ids[i] for i in order])
        for pid, order in orders
    ]


def training_examples(run: RunDir, index: int, target: str = "blackbox", replay_rounds: int = 0) -> list[RankingExample]:
    """What round ``index`` trains on: its own :func:`round_examples`, after those of the
    ``replay_rounds`` rounds before it (``train.replay_rounds``: rankings already paid for train
    again, on the responses the earlier policies sampled), oldest first.

    Raises:
        ValueError: an unknown ``target``; a negative ``replay_rounds``.
    """
    if replay_rounds < 0:
        raise ValueError(f"train.replay_rounds must be >= 0, got {replay_rounds}")
    return [ex for k in range(max(0, index - replay_rounds), index + 1) for ex in round_examples(run, k, target)]


def run_train_phase(
    cfg: Config,
    run: RunDir,
    index: int,
    *,
    model_dir: str,
    pad_token_id: int,
    device: torch.device,
    is_main_process: bool = True,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Train round ``index`` on its black-box rankings (or agreements, ``train.target``), and on
    those of the ``train.replay_rounds`` rounds before it, continuing the previous round's adapter.

    Writes ``round_k/adapter/`` (and ``merged/`` with ``train.merge``) and ``train.json``
    (main process only).

    Returns:
        The phase summary recorded in the round's manifest (``adapter: False`` with the
        reason when no prompt was ranked).
    """
    if not round_examples(run, index, cfg.train.target):
        what = "ranked prompt" if cfg.train.target == "blackbox" else "prompt with an agreement of 2 or more"
        return {"adapter": False, "skipped": f"no {what} this round"}
    examples = training_examples(run, index, cfg.train.target, cfg.train.replay_rounds)
    rd = run.round(index)
    previous = run.latest_adapter(index)
    model = load_trainable_policy(model_dir, previous, cfg.train, device, resolve_dtype(cfg.model, device))
    common = dict(pad_token_id=pad_token_id, out_dir=rd.adapter, seed=cfg.seed + index, device=device, callbacks=callbacks)
    if cfg.train.loss == "dpo":
        from cyclealign.models.tokenizer import load_tokenizer
        from cyclealign.train.dpo import train_round_dpo

        stats = train_round_dpo(
            model,
            examples,
            cfg.train,
            tokenizer=load_tokenizer(model_dir),
            pairs=cfg.train.dpo_pairs,
            loss_type=cfg.train.dpo_loss_type,
            previous_adapter=previous,
            **common,
        )
    else:
        stats = train_round(model, examples, cfg.train, previous_adapter=previous, **common)
    if is_main_process:
        if cfg.train.merge:
            save_merged(model, model_dir, rd.merged)
        write_json(rd.train, asdict(stats))
    summary = {k: v for k, v in asdict(stats).items() if k not in ("log_history", "wall_s")}
    return {"adapter": True, "merged": cfg.train.merge, **summary}


def launch_command(cfg: Config, run_dir: Path, index: int) -> list[str]:
    """The command that runs round ``index``'s training under ``cfg.train.launcher``.

    ``accelerate``: ``accelerate launch [--config_file F] --num_processes P -m cyclealign.cli
    train-round --run-dir RUN_DIR --round K`` (DDP on GPUs; DeepSpeed ZeRO-2/3 with the configs shipped in
    ``cyclealign/assets/accelerate/``, which ``ddp``, ``zero2`` and ``zero3`` name). ``torchrun``:
    ``torchrun --nproc_per_node P -m cyclealign.cli ...`` (also runs DDP over CPU processes with
    the gloo backend).
    """
    tail = ["-m", "cyclealign.cli", "train-round", "--run-dir", str(run_dir), "--round", str(index)]
    t = cfg.train
    if t.launcher == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch"]
        if t.accelerate_config is not None:
            cmd += ["--config_file", str(shipped_accelerate_config(t.accelerate_config) or t.accelerate_config)]
        return cmd + ["--num_processes", str(t.num_processes), *tail]
    if t.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(t.num_processes), *tail]
    raise ValueError(f"train.launcher={t.launcher!r} runs in process; there is no command to launch")
