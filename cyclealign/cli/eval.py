"""``cyclealign eval``: held-out evaluation of a run's policies, printed as a table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from cyclealign.cli.common import console, exit_codes, setup_logging
from cyclealign.cli.tables import eval_table
from cyclealign.errors import ConfigError
from cyclealign.rundir import RunDir

__all__ = ["eval_command"]


def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory to evaluate.")],
    prompts: Annotated[Optional[list[Path]], typer.Option(help="Held-out prompts (prompts the run trains on are left out); repeatable: several sources are also reported one by one (by file stem). Default: the run's eval.prompts.")] = None,
    num_prompts: Annotated[Optional[int], typer.Option(min=1, help="Held-out prompts to use per source (a seeded sample). Default: the run's eval.num_prompts, 32.")] = None,
    round_index: Annotated[Optional[list[int]], typer.Option("--round", help="Policy to evaluate: a round index, -1 = base; repeatable. Default: base and the latest round.")] = None,
    vs: Annotated[int, typer.Option(help="Reference policy of the win rate (-1 = base).")] = -1,
    reward_model: Annotated[Optional[str], typer.Option(help="HF sequence-classification model id or path: mean/std reward per policy (default: the run's eval.reward_model).")] = None,
    judge_max_tokens: Annotated[Optional[int], typer.Option(min=4, help="Completion cap per judge call, tokens (default: the run's eval.judge_max_tokens, 16).")] = None,
    decoding: Annotated[Optional[str], typer.Option(help="The judged response (win rate, reward, length): greedy | sample = the first of the N samples (default: the run's eval.decoding, greedy).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Length cap of evaluation generations, tokens (default: the run's eval.max_new_tokens, 128).")] = None,
    templates: Annotated[Optional[Path], typer.Option(help="Folder of judge/ranker templates overriding the shipped ones file by file (default: the run's ranker.templates_dir).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Held-out evaluation: win rate vs base (judged both ways round) of greedy responses, ranking agreement of samples, lengths."""
    import warnings

    from cyclealign.evaluation.plan import EvalPlan
    from cyclealign.evaluation.runner import evaluate_run
    from cyclealign.runlock import RunLock

    setup_logging(verbose)
    warnings.filterwarnings("ignore", category=FutureWarning)
    with exit_codes():
        cfg = RunDir(run_dir).read_config().model_copy(update={"run_dir": run_dir})
        if templates is not None:
            cfg = cfg.model_copy(update={"ranker": cfg.ranker.model_copy(update={"templates_dir": templates})})
        ev = cfg.eval
        if prompts:
            source = list(prompts) if len(prompts) > 1 else prompts[0]
        elif ev.prompts is not None:
            source = ev.prompts
        else:
            raise ConfigError(f"{run_dir}: the run has no eval.prompts; pass the held-out prompts with --prompts")
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
        with RunLock(run_dir):  # not while an iterate (or another eval) writes the run
            lines = evaluate_run(cfg, plan, environ=os.environ)
    Console().print(eval_table(lines))
    console.print(f"results: {RunDir(run_dir).eval_dir}")
