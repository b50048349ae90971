"""``cyclealign eval``: held-out evaluation of a run's policies, printed as a table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from cyclealign.cli.common import (
    OldRunDirArgument,
    RunDirOption,
    console,
    exit_codes,
    resolve_alias,
    run_dir_given,
    setup_logging,
    stop_on_signals,
)
from cyclealign.cli.tables import eval_table
from cyclealign.resources import default_prompts_path
from cyclealign.rundir import RunDir

__all__ = ["eval_command"]


def eval_command(
    run_dir: RunDirOption = None,
    old_run_dir: OldRunDirArgument = None,
    eval_prompts: Annotated[Optional[list[Path]], typer.Option(help="Held-out prompts (prompts the run trains on are left out); repeatable: several sources are also reported one by one (by file stem). Default: the run's eval.prompts, else the run's own prompt source.")] = None,
    eval_num_prompts: Annotated[Optional[int], typer.Option(min=1, help="Held-out prompts to use per source (a seeded sample). Default: the run's eval.num_prompts, 32.")] = None,
    round_index: Annotated[Optional[list[int]], typer.Option("--round", help="Policy to evaluate: a round index, -1 = base; repeatable. Default: base and the latest round.")] = None,
    vs: Annotated[int, typer.Option(help="Reference policy of the win rate (-1 = base).")] = -1,
    eval_reward_model: Annotated[Optional[str], typer.Option(help="HF sequence-classification model id or path: mean/std reward per policy (default: the run's eval.reward_model).")] = None,
    eval_judge_max_tokens: Annotated[Optional[int], typer.Option(min=4, help="Completion cap per judge call, tokens (default: the run's eval.judge_max_tokens, 16).")] = None,
    eval_decoding: Annotated[Optional[str], typer.Option(help="The judged response (win rate, reward, length): greedy | sample = the first of the N samples (default: the run's eval.decoding, greedy).")] = None,
    eval_max_new_tokens: Annotated[Optional[int], typer.Option(help="Length cap of evaluation generations, tokens (default: the run's eval.max_new_tokens, 128).")] = None,
    templates: Annotated[Optional[Path], typer.Option(help="Folder of templates overriding the shipped ones file by file (default: the run's ranker.templates_dir).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
    # The spellings of the previous release, hidden: each still works and prints a deprecation note.
    old_prompts: Annotated[Optional[list[Path]], typer.Option("--prompts", hidden=True)] = None,
    old_num_prompts: Annotated[Optional[int], typer.Option("--num-prompts", min=1, hidden=True)] = None,
    old_reward_model: Annotated[Optional[str], typer.Option("--reward-model", hidden=True)] = None,
    old_judge_max_tokens: Annotated[Optional[int], typer.Option("--judge-max-tokens", min=4, hidden=True)] = None,
    old_decoding: Annotated[Optional[str], typer.Option("--decoding", hidden=True)] = None,
    old_max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", hidden=True)] = None,
) -> None:
    """Held-out evaluation of --run-dir: win rate vs base (judged both ways round) of greedy responses, ranking agreement of samples, lengths."""
    import warnings

    from cyclealign.evaluation.plan import EvalPlan
    from cyclealign.evaluation.runner import evaluate_run
    from cyclealign.runlock import RunLock

    setup_logging(verbose)
    warnings.filterwarnings("ignore", category=FutureWarning)
    with exit_codes():
        run_dir = run_dir_given(run_dir, old_run_dir)
        prompts = resolve_alias(eval_prompts, old_prompts, new="--eval-prompts", old="--prompts")
        num_prompts = resolve_alias(eval_num_prompts, old_num_prompts, new="--eval-num-prompts", old="--num-prompts")
        reward_model = resolve_alias(eval_reward_model, old_reward_model, new="--eval-reward-model", old="--reward-model")
        judge_max_tokens = resolve_alias(eval_judge_max_tokens, old_judge_max_tokens, new="--eval-judge-max-tokens", old="--judge-max-tokens")
        decoding = resolve_alias(eval_decoding, old_decoding, new="--eval-decoding", old="--decoding")
        max_new_tokens = resolve_alias(eval_max_new_tokens, old_max_new_tokens, new="--eval-max-new-tokens", old="--max-new-tokens")
        cfg = RunDir(run_dir).read_config().model_copy(update={"run_dir": run_dir})
        if templates is not None:
            cfg = cfg.model_copy(update={"ranker": cfg.ranker.model_copy(update={"templates_dir": templates})})
        ev = cfg.eval
        if prompts:
            source = list(prompts) if len(prompts) > 1 else prompts[0]
        elif ev.prompts is not None:
            source = ev.prompts
        else:  # the run's own source: its prompts no round drew are held out
            source = cfg.prompts if cfg.prompts is not None else default_prompts_path()
            console.print(f"held-out prompts: the run's own prompt source, {source} (those no round used); --eval-prompts to choose")
        plan = EvalPlan(
            source,
            ev.num_prompts if num_prompts is None else num_prompts,
            list(round_index) if round_index else None,
            vs,
            ev.reward_model if reward_model is None else reward_model,
            ev.judge_max_tokens if judge_max_tokens is None else judge_max_tokens,
            ev.decoding if decoding is None else decoding,  # type: ignore[arg-type]  # EvalPlan validates it
            ev.max_new_tokens if max_new_tokens is None else max_new_tokens,
        )
        with RunLock(run_dir), stop_on_signals():  # not while an iterate (or another eval) writes the run
            lines = evaluate_run(cfg, plan, environ=os.environ)
    Console().print(eval_table(lines))
    console.print(f"results: {RunDir(run_dir).eval_dir}")
