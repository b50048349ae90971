"""``cyclealign iterate``: run CycleAlign rounds with progress bars, a table per round and a summary line."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cyclealign.cli.common import cell, console, exit_codes, setup_logging, spend_text, stop_on_signals
from cyclealign.cli.flags import iterate_config
from cyclealign.cli.tables import round_table
from cyclealign.config import Config
from cyclealign.errors import ConfigError
from cyclealign.events import EventLog, EventReporter
from cyclealign.metrics import round_metric

__all__ = ["RichReporter", "combined_text", "iterate", "plan_table", "print_plan", "ranker_text", "start_plan", "summary_line"]


class RichReporter:
    """Progress bars per phase and a summary table per round (a :class:`cyclealign.progress.Reporter`)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def phase_start(self, round_index: int, phase: str, total: int | None) -> None:
        """A bar for the phase; the trainer's ``train-steps`` resets the train phase's bar to its step count."""
        if self.task is not None and phase == "train-steps":
            self.progress.update(self.task, total=total, completed=0)
            return
        label = f"round {round_index} {phase}"
        self.task = self.progress.add_task(label, total=total)

    def advance(self, n: int = 1) -> None:
        """Move the current bar ``n`` steps."""
        if self.task is not None:
            self.progress.advance(self.task, n)

    def phase_end(self, round_index: int, phase: str, info: dict[str, Any]) -> None:
        """Fill the bar and show the phase's wall seconds (``info["wall_s"]``)."""
        if self.task is not None:
            task = self.progress.tasks[-1]
            self.progress.update(self.task, total=task.total or 1, completed=task.total or 1)
            self.progress.update(self.task, description=f"round {round_index} {phase} ({info['wall_s']:.1f} s)")
        self.task = None

    def round_end(self, metrics: dict[str, Any]) -> None:
        """Print the round's metrics line as a :func:`~cyclealign.cli.tables.round_table`."""
        self.progress.console.print(round_table([metrics]))


def iterate(
    ctx: typer.Context,
    prompts: Annotated[Optional[Path], typer.Option(rich_help_panel="Run", help="Prompts: JSONL[.gz] ({prompt}|{messages}|HH-RLHF {chosen,rejected}) or a HF dataset folder. Default: the shipped set.")] = None,
    rounds: Annotated[int, typer.Option(rich_help_panel="Run", help="Rounds in total (a resumed run continues up to this).")] = 2,
    prompts_per_round: Annotated[int, typer.Option(rich_help_panel="Run", help="Prompts per round.")] = 8,
    num_samples: Annotated[Optional[int], typer.Option(rich_help_panel="Policy", help="N: responses sampled per prompt (default: generation.num_samples, 4).")] = None,
    run_dir: Annotated[Path, typer.Option(rich_help_panel="Run", help="The run directory (created if new).")] = Path("runs/default"),
    resume: Annotated[bool, typer.Option(rich_help_panel="Run", help="Continue an interrupted run in --run-dir.")] = False,
    config: Annotated[Optional[Path], typer.Option(rich_help_panel="Run", help="A config file, YAML (.yaml/.yml) or JSON, with the fields of cyclealign.config.Config (`cyclealign config schema`); flags and --set override it.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", rich_help_panel="Run", metavar="KEY=VALUE", help="Any config field: --set section.field=value (YAML value; repeatable; wins over the file and the flags). `cyclealign config show` lists them.")] = None,
    add_rounds: Annotated[Optional[int], typer.Option(min=1, rich_help_panel="Run", help="Do this many more rounds on --run-dir (created if new, resumed otherwise): a scheduled round is `--add-rounds 1`. Overrides --rounds.")] = None,
    new_prompts_only: Annotated[bool, typer.Option(rich_help_panel="Run", help="Rounds draw only prompts no earlier round used; none left: exit 4 (nothing to do) without changing the run.")] = False,
    promote_if: Annotated[Optional[str], typer.Option(rich_help_panel="Run", help="After the rounds, write RUN_DIR/promoted (the latest adapter's path) only if its evaluation passes, e.g. 'win_rate>=0.5' (comma = and). Needs --eval-every.")] = None,
    templates: Annotated[Optional[Path], typer.Option(rich_help_panel="Ranker", help="Folder of templates overriding the shipped ones file by file (`cyclealign templates copy --templates DIR` to start).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", rich_help_panel="Run", help="Check everything and print what the rounds would send the ranker (calls, tokens, USD from the price table), then stop: nothing is called, written or paid for.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel="Run", help="No progress or tables: print only the final summary line (events still go to RUN_DIR/events.jsonl).")] = False,
    model: Annotated[Optional[str], typer.Option(rich_help_panel="Policy", help="White-box policy: HF model id or local dir. Default: embedded SmolLM2-135M-Instruct.")] = None,
    device: Annotated[str, typer.Option(rich_help_panel="Policy", help="auto | cpu | cuda | cuda:N")] = "auto",
    policy_backend: Annotated[Optional[str], typer.Option(rich_help_panel="Policy", help="Where the policy samples: transformers (CPU or one GPU) | vllm (a vLLM server: started with `vllm serve`, or --policy-base-url). Default: transformers.")] = None,
    policy_base_url: Annotated[Optional[str], typer.Option(rich_help_panel="Policy", help="A running vLLM OpenAI-compatible server (…/v1) serving --model, for --policy-backend vllm (default: start `vllm serve`).")] = None,
    ranker_base_url: Annotated[Optional[str], typer.Option(rich_help_panel="Ranker", help="OpenAI-compatible base URL (…/v1). Default: a local `transformers serve` of the embedded model.")] = None,
    ranker_model: Annotated[Optional[str], typer.Option(rich_help_panel="Ranker", help="Model name for the ranker API (required with --ranker-base-url).")] = None,
    ranker_api_key_env: Annotated[str, typer.Option(rich_help_panel="Ranker", help="Environment variable with the API key.")] = "OPENAI_API_KEY",
    max_new_tokens: Annotated[Optional[int], typer.Option(rich_help_panel="Policy", help="Response length cap, tokens (default: generation.max_new_tokens).")] = None,
    temperature: Annotated[Optional[float], typer.Option(rich_help_panel="Policy", help="White-box sampling temperature (default: generation.temperature).")] = None,
    num_dynamic_demos: Annotated[int, typer.Option(rich_help_panel="Ranker", help="k: dynamic demonstrations per ranker call.")] = 2,
    ranker_concurrency: Annotated[int, typer.Option(rich_help_panel="Ranker", help="Ranker requests in flight at once.")] = 8,
    ranker_rpm: Annotated[Optional[float], typer.Option(rich_help_panel="Ranker", help="Ranker requests-per-minute limit.")] = None,
    ranker_tpm: Annotated[Optional[float], typer.Option(rich_help_panel="Ranker", help="Ranker tokens-per-minute limit.")] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", rich_help_panel="Ranker", help="Reuse stored ranker replies (--no-cache sends every request again; replies are still stored).")] = True,
    ranker_cache: Annotated[Optional[Path], typer.Option(rich_help_panel="Ranker", help="SQLite reply cache file (default: ~/.cache/cyclealign/ranker_cache.sqlite, shared by runs).")] = None,
    max_cost_usd: Annotated[Optional[float], typer.Option(rich_help_panel="Ranker", help="Stop (resumably) before ranker spending would exceed this many USD.")] = None,
    ranker_price_input: Annotated[Optional[float], typer.Option(rich_help_panel="Ranker", help="USD per 1M prompt tokens (overrides the price table).")] = None,
    ranker_price_output: Annotated[Optional[float], typer.Option(rich_help_panel="Ranker", help="USD per 1M completion tokens (overrides the price table).")] = None,
    ranker_prices: Annotated[Optional[Path], typer.Option(rich_help_panel="Ranker", help="Price table JSON (default: cyclealign/assets/prices.json).")] = None,
    ranker_shuffle: Annotated[bool, typer.Option("--ranker-shuffle/--no-ranker-shuffle", rich_help_panel="Ranker", help="Show responses to the ranker in a seeded random order.")] = True,
    ranker_consistency: Annotated[int, typer.Option(rich_help_panel="Ranker", help="K: ask K shuffled orders per prompt and combine their rankings (--ranker-aggregate).")] = 1,
    ranker_aggregate: Annotated[Optional[str], typer.Option(rich_help_panel="Ranker", help="How K orders combine: kemeny | borda (one aggregate ranking, kept at --ranker-min-confidence) | strict (kept only when all K agree). Default: kemeny.")] = None,
    ranker_min_confidence: Annotated[Optional[float], typer.Option(rich_help_panel="Ranker", help="Least confidence (mean share of the K orders agreeing with the aggregate on each pair, 0-1) a prompt needs to train. Default: 0.6.")] = None,
    ranker_calls_per_round: Annotated[Optional[int], typer.Option(min=1, rich_help_panel="Ranker", help="Ranking calls a round may spend (first asks; K per prompt with --ranker-consistency K): the round ranks that many / K of its --prompts-per-round candidates, chosen by --ranker-selection; the rest stay for later rounds. Default: rank every candidate.")] = None,
    ranker_selection: Annotated[Optional[str], typer.Option(rich_help_panel="Ranker", help="Which candidates --ranker-calls-per-round ranks: random | uncertainty (the policy's own ranking is nearest a tie) | diversity (the responses differ most). Default: random.")] = None,
    ranker_structured_output: Annotated[Optional[str], typer.Option(rich_help_panel="Ranker", help="auto | json_schema | off (default: auto for an API, off for the embedded ranker).")] = None,
    ranker_batch: Annotated[bool, typer.Option(rich_help_panel="Ranker", help="Send first asks through the OpenAI Batch API (half price, offline).")] = False,
    pipeline: Annotated[Optional[bool], typer.Option("--pipeline/--no-pipeline", rich_help_panel="Ranker", help="Rank each prompt as soon as its responses are sampled, while the policy goes on generating (default: ranker.pipeline, on). Same results either way.")] = None,
    eval_every: Annotated[int, typer.Option(rich_help_panel="Evaluation", help="Evaluate base vs the latest round on held-out prompts every K rounds (0 = never).")] = 0,
    eval_prompts: Annotated[Optional[list[Path]], typer.Option(rich_help_panel="Evaluation", help="Held-out prompts of --eval-every (prompts the run trains on are left out); repeatable: several sources are also reported one by one (by file stem).")] = None,
    eval_decoding: Annotated[Optional[str], typer.Option(rich_help_panel="Evaluation", help="The judged response (win rate, reward, length): greedy | sample = the first of the N samples (default: greedy).")] = None,
    eval_max_new_tokens: Annotated[Optional[int], typer.Option(rich_help_panel="Evaluation", help="Length cap of evaluation generations, tokens (default: 128; training uses --max-new-tokens).")] = None,
    agreement_min_length: Annotated[Optional[int], typer.Option(rich_help_panel="Ranker", help="LCS length to join the demo pool (default N-1).")] = None,
    loss: Annotated[Optional[str], typer.Option(rich_help_panel="Training", help="Ranking loss: pro | rrhf | dpo-pl | lipo | dpo (TRL DPOTrainer on pairs). Default: pro.")] = None,
    beta: Annotated[Optional[float], typer.Option(rich_help_panel="Training", help="Implicit-reward scale of dpo-pl and lipo (default: train.beta).")] = None,
    reference: Annotated[Optional[str], typer.Option(rich_help_panel="Training", help="Reference policy of dpo-pl, lipo, dpo and --kl-weight: initial | previous (default: initial).")] = None,
    qlora: Annotated[bool, typer.Option(rich_help_panel="Training", help="QLoRA: 4-bit NF4 base via bitsandbytes (CUDA only).")] = False,
    merge: Annotated[bool, typer.Option(rich_help_panel="Training", help="Also save each round's policy with the adapter merged (round_k/merged/).")] = False,
    sft_weight: Annotated[Optional[float], typer.Option(rich_help_panel="Training", help="Weight of the SFT term on the top response (default: train.sft_weight).")] = None,
    sft_reduction: Annotated[Optional[str], typer.Option(rich_help_panel="Training", help="SFT term per token (mean) or summed over the response (sum, PRO's code).")] = None,
    sft_pro_scale: Annotated[Optional[bool], typer.Option("--sft-pro-scale/--no-sft-pro-scale", rich_help_panel="Training", help="Scale the SFT term by (n-1)^2 as PRO's code does (default: train.sft_pro_scale).")] = None,
    kl_weight: Annotated[Optional[float], typer.Option(rich_help_panel="Training", help="Weight of a per-token KL anchor to the reference policy on the ranked responses' tokens (0: off; default: train.kl_weight).")] = None,
    pro_temperature: Annotated[Optional[float], typer.Option(rich_help_panel="Training", help="PRO: scores are divided by this before the softmax.")] = None,
    pro_reward_gap: Annotated[Optional[bool], typer.Option("--pro-reward-gap/--no-pro-reward-gap", rich_help_panel="Training", help="PRO's reward-gap temperatures (rank rewards).")] = None,
    train_target: Annotated[Optional[str], typer.Option(rich_help_panel="Training", help="Train on the black-box ranking (blackbox) or the LCS-agreed order only (agreement).")] = None,
    replay_rounds: Annotated[Optional[int], typer.Option(rich_help_panel="Training", help="Also train each round on the rankings of this many rounds before it (default: train.replay_rounds).")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(rich_help_panel="Training", help="LoRA learning rate (default: train.learning_rate).")] = None,
    epochs: Annotated[Optional[float], typer.Option(rich_help_panel="Training", help="Training passes over each round's rankings (default: train.epochs).")] = None,
    carry_optimizer: Annotated[Optional[bool], typer.Option("--carry-optimizer/--no-carry-optimizer", rich_help_panel="Training", help="Continue each round from the previous round's AdamW state (default: on).")] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option(rich_help_panel="Training", help="Clip each step's gradient norm to this (0: no clipping; default: 5.0).")] = None,
    lora_r: Annotated[Optional[int], typer.Option(rich_help_panel="Training", help="LoRA rank (default: train.lora_r).")] = None,
    lora_alpha: Annotated[Optional[int], typer.Option(rich_help_panel="Training", help="LoRA alpha (default: train.lora_alpha).")] = None,
    seed: Annotated[int, typer.Option(rich_help_panel="Run", help="Seed.")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", rich_help_panel="Run", help="Log details.")] = False,
) -> None:
    """Run CycleAlign rounds: generate -> black-box rank -> agreement -> train -> next round.

    Exit codes: 0 done, 2 error, 3 budget reached (resumable), 4 nothing to do, 5 run directory
    locked by another process (1: an unexpected crash).
    """
    from cyclealign.loop import iterate as run_iterate
    from cyclealign.rundir import RunDir
    from cyclealign.runlock import RunLock
    from cyclealign.schedule import EXIT_CODES, parse_conditions, promote

    setup_logging(verbose)
    import warnings

    import transformers

    transformers.utils.logging.disable_progress_bar()  # rich draws the progress
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes, not the user's business
    with exit_codes():
        conditions = parse_conditions(promote_if) if promote_if else None
        cfg, resume = iterate_config(ctx, config, set_, resume, add_rounds)
        if conditions is not None and not cfg.eval.every:
            raise ConfigError("--promote-if needs --eval-every (the promotion reads the latest round's evaluation)")
        if dry_run:
            print_plan(cfg, resume)
            return
    run = RunDir(cfg.run_dir)
    events = EventLog(run.events)
    t0 = time.perf_counter()
    finished_before = run.finished_rounds()
    with exit_codes(), RunLock(cfg.run_dir) as lock, exit_codes(events), stop_on_signals():
        events.emit("run_start", pid=os.getpid(), rounds=cfg.rounds, resume=resume, command=sys.argv[1:])
        if lock.took_over is not None:
            events.emit("lock_takeover", stale=lock.took_over)
            console.print(f"[yellow]took over a stale lock[/yellow] of pid {lock.took_over.get('pid')} (a process that died holding it)")
        if lock.stopped_servers:
            events.emit("stale_servers_stopped", pids=lock.stopped_servers)
            console.print(f"[yellow]stopped server(s) left running by a killed run:[/yellow] pid {', '.join(map(str, lock.stopped_servers))}")
        plan = start_plan(cfg, run, resume)
        events.emit("run_plan", **plan)
        if not quiet:
            console.print(plan_table(plan), soft_wrap=True)
        if quiet:
            reporter = EventReporter(events)
            metrics = run_iterate(cfg, resume=resume, environ=os.environ, reporter=reporter, new_prompts_only=new_prompts_only)
        else:
            with Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
            ) as progress:
                reporter = EventReporter(events, RichReporter(progress))
                metrics = run_iterate(cfg, resume=resume, environ=os.environ, reporter=reporter, new_prompts_only=new_prompts_only)
        promotion = None
        if conditions is not None:
            promotion = promote(run, conditions)
            events.emit("promotion", condition=promote_if, **promotion.to_json())
        idle = finished_before >= cfg.rounds and not reporter.phases_run  # every round was done, no evaluation was due
        code = EXIT_CODES["nothing_to_do"] if idle else EXIT_CODES["done"]
        events.emit("run_end", exit_code=code, rounds_done=run.finished_rounds(), wall_s=round(time.perf_counter() - t0, 3))
    # Each round's table was printed as the round ended; only the summary line comes at the end.
    if promotion is not None:
        verdict = f"promoted round {promotion.round}: {promotion.adapter}" if promotion.promoted else f"not promoted: {promotion.reason}"
        console.print(verdict, soft_wrap=True)
    console.print(summary_line(cfg, metrics, run), soft_wrap=True)
    if code != EXIT_CODES["done"]:
        console.print(f"nothing to do: all {cfg.rounds} rounds were already finished")
        raise typer.Exit(code=code)


def ranker_text(cfg: Config) -> str:
    """The ranker a run calls, in words (the start block and ``--dry-run``)."""
    return "embedded SmolLM2 (local, free)" if cfg.ranker.base_url is None else f"{cfg.ranker.model} at {cfg.ranker.base_url}"


def combined_text(cfg: Config) -> str:
    """How several presentation orders combine, in words (``""`` with one order).

    >>> from cyclealign.config import build_config
    >>> combined_text(build_config(**{"ranker.consistency": 3})), combined_text(build_config())
    (', kemeny aggregate kept at confidence >= 0.6', '')
    >>> combined_text(build_config(**{"ranker.consistency": 3, "ranker.aggregate": "strict"}))
    ', kept when all agree'
    """
    r = cfg.ranker
    if r.consistency == 1:
        return ""
    return ", kept when all agree" if r.aggregate == "strict" else f", {r.aggregate} aggregate kept at confidence >= {r.min_confidence:g}"


def start_plan(cfg: Config, run: Any, resume: bool) -> dict[str, Any]:
    """What ``iterate`` is about to do, printed as a block at its start and written as the
    ``run_plan`` event: the policy and its backend, the ranker's endpoint and model, the prompt
    source, the run directory, the rounds, and the first asks the pending rounds will send the
    ranker (rounds not yet ranked x prompts ranked per round x consistency orders; correction
    re-asks and cache hits aside; with ``ranker.calls_per_round``, the prompts ranked are the
    candidates ``ranker.selection`` chooses). ``run``: the :class:`~cyclealign.rundir.RunDir`."""
    from cyclealign.rundir import Phase

    done = run.finished_rounds() if resume else 0
    to_rank = sum(not run.round(k).is_done(Phase.RANK) for k in range(cfg.rounds)) if resume else cfg.rounds
    backend = cfg.generation.backend
    if backend == "vllm":
        backend += f" at {cfg.vllm.base_url}" if cfg.vllm.base_url else " (a server it starts)"
    else:
        backend += f" on {cfg.model.device}"
    return {
        "policy": cfg.model.name_or_path or "embedded SmolLM2-135M-Instruct",
        "backend": backend,
        "ranker": ranker_text(cfg),
        "prompts": str(cfg.prompts or "the shipped prompt set"),
        "run_dir": str(cfg.run_dir),
        "resume": resume,
        "rounds": cfg.rounds,
        "rounds_done": done,
        "prompts_per_round": cfg.prompts_per_round,
        "num_samples": cfg.generation.num_samples,
        "ranked_per_round": cfg.ranked_per_round,
        "ranker_calls": to_rank * cfg.ranked_per_round * cfg.ranker.consistency,
    }


def plan_table(plan: dict[str, Any]) -> Any:
    """The start block of :func:`start_plan` as a two-column rich table."""
    from rich.table import Table

    table = Table(title="cyclealign iterate", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("plan", overflow="fold")
    rounds = f"{plan['rounds']} in all" + (f", {plan['rounds_done']} already done" if plan["rounds_done"] else "")
    for what, value in [
        ("policy", f"{plan['policy']} ({plan['backend']})"),
        ("ranker", plan["ranker"]),
        ("prompts", f"{plan['prompts']}, {plan['prompts_per_round']} per round, N={plan['num_samples']} responses each"
         + (f", {plan['ranked_per_round']} of them ranked" if plan.get("ranked_per_round", plan["prompts_per_round"]) < plan["prompts_per_round"] else "")),
        ("run directory", f"{plan['run_dir']} ({'resumed' if plan['resume'] else 'new'})"),
        ("rounds", rounds),
        ("ranker calls", f"about {plan['ranker_calls']} first asks (cache hits are free; re-asks come on top)"),
    ]:
        table.add_row(what, value)
    return table


def print_plan(cfg: Config, resume: bool) -> None:
    """``iterate --dry-run``: the inputs checked as a run checks them, and the ranker's share of the
    rounds still to run (:func:`~cyclealign.ranker.estimate.estimate_run`); nothing is written.

    Raises:
        CycleAlignError subclasses: what the run itself would refuse (prompts, templates,
            demonstrations, price table, the run directory's state).
    """
    from rich.table import Table

    from cyclealign.data.sources import load_prompts
    from cyclealign.ranker.estimate import estimate_run
    from cyclealign.demos import static_demonstrations
    from cyclealign.resources import default_templates_dir
    from cyclealign.rundir import Phase, RunDir
    from cyclealign.templates.ranker import RankerTemplates

    run = RunDir(cfg.run_dir)
    run.check_config(cfg.to_json(), resume)
    prompts = load_prompts(cfg.prompts)
    templates = RankerTemplates(cfg.ranker.templates_dir or default_templates_dir())
    demos = static_demonstrations(cfg.ranker)
    rounds = sum(not run.round(k).is_done(Phase.RANK) for k in range(cfg.rounds))
    est = estimate_run(cfg, prompts, templates, demos, rounds)
    if est.cost_usd is None:
        cost = "unknown (no price for this model: --set ranker.price_input_per_mtok=... ranker.price_output_per_mtok=...)"
    else:
        cost = f"about {est.cost_usd:.4f} USD" + (f" (budget {est.max_cost_usd:g} USD)" if est.max_cost_usd is not None else "")
    table = Table(title=f"iterate --dry-run: {cfg.run_dir} ({'resume' if resume else 'new run'}); nothing was called or written")
    table.add_column("what")
    table.add_column("plan")
    for what, plan in [
        ("ranker", ranker_text(cfg)),
        ("prompt source", f"{cfg.prompts or 'the shipped prompt set'} ({len(prompts)} prompts)"),
        ("rounds to rank", f"{est.rounds} of {cfg.rounds}, {est.prompts_per_round} prompts each, N={cfg.generation.num_samples}"
         + (f" (of {cfg.prompts_per_round} candidates, chosen by {cfg.ranker.selection})" if cfg.ranked_per_round < cfg.prompts_per_round else "")),
        ("ranker calls", f"{est.calls} first asks (x{cfg.ranker.consistency} orders{combined_text(cfg)}; correction re-asks come on top)"),
        ("prompt tokens per call", f"about {est.prompt_tokens_per_call[0]:,} (up to {est.prompt_tokens_per_call[1]:,})"),
        ("tokens in all", f"about {est.prompt_tokens:,} prompt + up to {est.completion_tokens:,} completion"),
        ("cost", cost),
        ("prompts cut for the ranker", f"{est.prompts_cut} of round 0's (ranker.max_prompt_tokens={cfg.ranker.max_prompt_tokens})"),
    ]:
        table.add_row(what, plan)
    console.print(table)


def summary_line(cfg: Config, metrics: list[dict[str, Any]], run: Any) -> str:
    """One line: rounds done, the last round's agreement and loss, the run's ranker spend
    (``run``: the :class:`~cyclealign.rundir.RunDir`)."""
    last = metrics[-1] if metrics else {}
    agreement, loss = round_metric("agreement_rate"), round_metric("train_loss")
    return (
        f"rounds done {len(metrics)}/{cfg.rounds}; last round: {agreement.label} {cell(last.get(agreement.key))}, "
        f"{loss.label} {cell(last.get(loss.key))}; ranker {spend_text(run.ranker_spend(), tokens=False, embedded=cfg.ranker.base_url is None)}; "
        f"run directory: {cfg.run_dir} (metrics: {run.metrics})"
    )
