"""Command-line interface: flags -> :class:`~cyclealign.config.Config` -> :func:`cyclealign.loop.iterate`.

Only parsing and printing live here.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cyclealign import formatting
from cyclealign.config import Config, flatten, layer_config, parse_set_options
from cyclealign.errors import BudgetError, ConfigError, CycleAlignError, RunDirError, LockedError, NothingToDo
from cyclealign.events import EventLog, EventReporter

app = typer.Typer(add_completion=False, no_args_is_help=True, help="CycleAlign: align a white-box LLM with a black-box API LLM.")
console = Console(stderr=True)


@contextmanager
def _exit_codes(events: EventLog | None = None) -> Iterator[None]:
    """Turn a CycleAlign error into a printed message, an event and an exit status
    (:data:`cyclealign.schedule.EXIT_CODES`).

    Exit 3 when a cost budget stopped the work (``BudgetError``: finished work is kept, the run
    resumes), 4 when there was nothing to do, 5 when another process holds the run directory,
    2 for any other ``CycleAlignError`` (bad input, a rejected key, a broken run dir).
    """
    from cyclealign.schedule import EXIT_CODES

    def emit(event: str, **fields: Any) -> None:
        if events is not None:
            events.emit(event, **fields)

    try:
        yield
    except BudgetError as e:
        console.print(f"[yellow]stopped:[/yellow] {e}")
        emit("budget", message=str(e))
        raise typer.Exit(code=EXIT_CODES["budget"]) from None
    except NothingToDo as e:
        console.print(f"nothing to do: {e}")
        emit("nothing_to_do", message=str(e))
        raise typer.Exit(code=EXIT_CODES["nothing_to_do"]) from None
    except LockedError as e:
        console.print(f"[red]locked:[/red] {e}")
        raise typer.Exit(code=EXIT_CODES["locked"]) from None
    except CycleAlignError as e:
        console.print(f"[red]error:[/red] {e}")
        emit("error", type=type(e).__name__, message=str(e))
        raise typer.Exit(code=EXIT_CODES["error"]) from None


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
    """A table cell (:func:`~cyclealign.formatting.fmt`); a NaN or infinite float prints as is (``nan``)."""
    return formatting.fmt(v, digits, nonfinite=None)


_ROWS = [
    ("ranked", "ranked"),
    ("unranked", "unranked"),
    ("agreement rate", "agreement_rate"),
    ("Kendall tau", "kendall_tau"),
    ("demo pool size", "pool_size"),
    ("train loss", "train_loss"),
    ("ranker API calls", "ranker_api_calls"),
    ("ranker cache hits", "ranker_cache_hits"),
    ("ranker tokens sent", "tokens_sent"),
    ("ranker tokens received", "tokens_received"),
    ("ranker cost USD", "ranker_cost_usd"),
    ("consistency rate", "consistency_rate"),
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
    num_samples: Annotated[Optional[int], typer.Option(help="N: responses sampled per prompt (default: generation.num_samples, 4).")] = None,
    run_dir: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/default"),
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --run-dir.")] = False,
    config: Annotated[Optional[Path], typer.Option(help="A config file, YAML (.yaml/.yml) or JSON, with the fields of cyclealign.config.Config (`cyclealign config schema`); flags and --set override it.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any config field: --set section.field=value (YAML value; repeatable; wins over the file and the flags). `cyclealign config show` lists them.")] = None,
    add_rounds: Annotated[Optional[int], typer.Option(min=1, help="Do this many more rounds on --run-dir (created if new, resumed otherwise): a scheduled round is `--add-rounds 1`. Overrides --rounds.")] = None,
    new_prompts_only: Annotated[bool, typer.Option(help="Rounds draw only prompts no earlier round used; none left: exit 4 (nothing to do) without changing the run.")] = False,
    promote_if: Annotated[Optional[str], typer.Option(help="After the rounds, write RUN_DIR/promoted (the latest adapter's path) only if its evaluation passes, e.g. 'win_rate>=0.5' (comma = and). Needs --eval-every.")] = None,
    templates: Annotated[Optional[Path], typer.Option(help="Folder of templates overriding the shipped ones file by file (`cyclealign templates copy DIR` to start).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables: print only the final summary line (events still go to RUN_DIR/events.jsonl).")] = False,
    model: Annotated[Optional[str], typer.Option(help="White-box policy: HF model id or local dir. Default: embedded SmolLM2-135M-Instruct.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    policy_backend: Annotated[Optional[str], typer.Option(help="Where the policy samples: transformers (CPU or one GPU) | vllm (a vLLM server: started with `vllm serve`, or --policy-base-url). Default: transformers.")] = None,
    policy_base_url: Annotated[Optional[str], typer.Option(help="A running vLLM OpenAI-compatible server (…/v1) serving --model, for --policy-backend vllm (default: start `vllm serve`).")] = None,
    ranker_base_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible base URL (…/v1). Default: a local `transformers serve` of the embedded model.")] = None,
    ranker_model: Annotated[Optional[str], typer.Option(help="Model name for the ranker API (required with --ranker-base-url).")] = None,
    ranker_api_key_env: Annotated[str, typer.Option(help="Environment variable with the API key.")] = "OPENAI_API_KEY",
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Response length cap, tokens (default: generation.max_new_tokens).")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="White-box sampling temperature (default: generation.temperature).")] = None,
    num_dynamic_demos: Annotated[int, typer.Option(help="k: dynamic demonstrations per ranker call.")] = 2,
    ranker_concurrency: Annotated[int, typer.Option(help="Ranker requests in flight at once.")] = 8,
    ranker_rpm: Annotated[Optional[float], typer.Option(help="Ranker requests-per-minute limit.")] = None,
    ranker_tpm: Annotated[Optional[float], typer.Option(help="Ranker tokens-per-minute limit.")] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse stored ranker replies (--no-cache sends every request again; replies are still stored).")] = True,
    ranker_cache: Annotated[Optional[Path], typer.Option(help="SQLite reply cache file (default: ~/.cache/cyclealign/ranker_cache.sqlite, shared by runs).")] = None,
    max_cost_usd: Annotated[Optional[float], typer.Option(help="Stop (resumably) before ranker spending would exceed this many USD.")] = None,
    ranker_price_input: Annotated[Optional[float], typer.Option(help="USD per 1M prompt tokens (overrides the price table).")] = None,
    ranker_price_output: Annotated[Optional[float], typer.Option(help="USD per 1M completion tokens (overrides the price table).")] = None,
    ranker_prices: Annotated[Optional[Path], typer.Option(help="Price table JSON (default: cyclealign/assets/prices.json).")] = None,
    ranker_shuffle: Annotated[bool, typer.Option("--ranker-shuffle/--no-ranker-shuffle", help="Show responses to the ranker in a seeded random order.")] = True,
    ranker_consistency: Annotated[int, typer.Option(help="K: ask K shuffled orders, keep rankings all K agree on.")] = 1,
    ranker_structured_output: Annotated[Optional[str], typer.Option(help="auto | json_schema | off (default: auto for an API, off for the embedded ranker).")] = None,
    ranker_batch: Annotated[bool, typer.Option(help="Send first asks through the OpenAI Batch API (half price, offline).")] = False,
    eval_every: Annotated[int, typer.Option(help="Evaluate base vs the latest round on held-out prompts every K rounds (0 = never).")] = 0,
    eval_prompts: Annotated[Optional[list[Path]], typer.Option(help="Held-out prompts for --eval-every; repeatable (results also broken down by source).")] = None,
    eval_decoding: Annotated[Optional[str], typer.Option(help="Judged response of --eval-every: greedy | sample (default: greedy).")] = None,
    eval_max_new_tokens: Annotated[Optional[int], typer.Option(help="Length cap of evaluation generations, tokens (default: 128; training uses --max-new-tokens).")] = None,
    agreement_min_length: Annotated[Optional[int], typer.Option(help="LCS length to join the demo pool (default N-1).")] = None,
    loss: Annotated[Optional[str], typer.Option(help="Ranking loss: pro | rrhf | dpo-pl | lipo | dpo (TRL DPOTrainer on pairs). Default: pro.")] = None,
    beta: Annotated[Optional[float], typer.Option(help="Implicit-reward scale of dpo-pl and lipo (default: train.beta).")] = None,
    reference: Annotated[Optional[str], typer.Option(help="Reference policy of dpo-pl/lipo: initial | previous (default: initial).")] = None,
    qlora: Annotated[bool, typer.Option(help="QLoRA: 4-bit NF4 base via bitsandbytes (CUDA only).")] = False,
    merge: Annotated[bool, typer.Option(help="Also save each round's policy with the adapter merged (round_k/merged/).")] = False,
    sft_weight: Annotated[Optional[float], typer.Option(help="Weight of the SFT term on the top response (default: train.sft_weight).")] = None,
    sft_reduction: Annotated[Optional[str], typer.Option(help="SFT term per token (mean) or summed over the response (sum, PRO's code).")] = None,
    sft_pro_scale: Annotated[Optional[bool], typer.Option("--sft-pro-scale/--no-sft-pro-scale", help="Scale the SFT term by (n-1)^2 as PRO's code does (default: on).")] = None,
    pro_temperature: Annotated[Optional[float], typer.Option(help="PRO: scores are divided by this before the softmax.")] = None,
    pro_reward_gap: Annotated[Optional[bool], typer.Option("--pro-reward-gap/--no-pro-reward-gap", help="PRO's reward-gap temperatures (rank rewards).")] = None,
    train_target: Annotated[Optional[str], typer.Option(help="Train on the black-box ranking (blackbox) or the LCS-agreed order only (agreement).")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="LoRA learning rate (default: train.learning_rate).")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Training passes over each round's rankings (default: train.epochs).")] = None,
    lora_r: Annotated[Optional[int], typer.Option(help="LoRA rank (default: train.lora_r).")] = None,
    lora_alpha: Annotated[Optional[int], typer.Option(help="LoRA alpha (default: train.lora_alpha).")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Run CycleAlign rounds: generate -> black-box rank -> agreement -> train -> next round.

    Exit codes: 0 done, 2 error, 3 budget reached (resumable), 4 nothing to do, 5 run directory
    locked by another process (1: an unexpected crash).
    """
    from cyclealign.loop import iterate as run_iterate
    from cyclealign.rundir import RunDir
    from cyclealign.runlock import RunLock
    from cyclealign.schedule import EXIT_CODES, parse_conditions, promote

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import warnings

    import transformers

    transformers.utils.logging.disable_progress_bar()  # rich draws the progress
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes, not the user's business
    with _exit_codes():
        conditions = parse_conditions(promote_if) if promote_if else None
        cfg, resume = _iterate_config(ctx, config, set_, resume, add_rounds)
    run = RunDir(cfg.run_dir)
    events = EventLog(run.path / "events.jsonl")
    t0 = time.perf_counter()
    finished_before = run.finished_rounds()
    with _exit_codes(), RunLock(cfg.run_dir) as lock, _exit_codes(events):
        events.emit("run_start", pid=os.getpid(), rounds=cfg.rounds, resume=resume, command=sys.argv[1:])
        if lock.took_over is not None:
            events.emit("lock_takeover", stale=lock.took_over)
            console.print(f"[yellow]took over a stale lock[/yellow] of pid {lock.took_over.get('pid')} (a process that died holding it)")
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
    if not quiet:
        console.print(round_table(metrics))
    if promotion is not None:
        verdict = f"promoted round {promotion.round}: {promotion.adapter}" if promotion.promoted else f"not promoted: {promotion.reason}"
        console.print(verdict, soft_wrap=True)
    console.print(_summary_line(cfg, metrics, run), soft_wrap=True)
    if code != EXIT_CODES["done"]:
        console.print(f"nothing to do: all {cfg.rounds} rounds were already finished")
        raise typer.Exit(code=code)


def _summary_line(cfg: Config, metrics: list[dict[str, Any]], run: Any) -> str:
    """One line: rounds done, the last round's agreement and loss, the run's ranker spend."""
    last = metrics[-1] if metrics else {}
    spend = run.ranker_spend()
    return (
        f"rounds done {len(metrics)}/{cfg.rounds}; last round: agreement rate {_fmt(last.get('agreement_rate'))}, "
        f"train loss {_fmt(last.get('train_loss'))}; ranker {int(spend['calls'])} paid calls, "
        f"{spend['cost_usd']:.4f} USD; run directory: {cfg.run_dir} (metrics: {run.metrics})"
    )


def _iterate_config(
    ctx: typer.Context, config_file: Path | None, set_items: list[str] | None, resume: bool, add_rounds: int | None
) -> tuple[Config, bool]:
    """The run's one validated config and whether it resumes.

    Precedence: the defaults < the run's saved ``config.json`` (when resuming) < ``--config``
    file < flags given on the command line < ``--set``. ``--add-rounds K`` resumes an existing
    run (or starts a new one) and schedules ``K`` rounds beyond those finished.

    Raises:
        ConfigError: naming the invalid key (and the file).
    """
    from cyclealign.config import read_config_file
    from cyclealign.rundir import RunDir

    flags = _explicit_flags(ctx)
    sets = parse_set_options(set_items)
    file_layer = flatten(read_config_file(config_file)) if config_file is not None else {}
    run_dir = Path(str(sets.get("run_dir") or flags.get("run_dir") or file_layer.get("run_dir") or "runs/default"))
    run = RunDir(run_dir)
    if add_rounds is not None:
        resume = run.config.exists()
    saved = flatten(run.read_config().model_dump(mode="json")) if resume and run.config.exists() else {}
    layers = [saved, file_layer, flags, sets]
    if add_rounds is not None:
        layers.append({"rounds": run.finished_rounds() + add_rounds})
    try:
        cfg = layer_config(*layers)
    except CycleAlignError as e:
        where = f"{config_file}: " if config_file is not None and any(k in file_layer for k in _error_keys(str(e))) else ""
        raise type(e)(where + str(e)) from None
    return cfg, resume


def _error_keys(message: str) -> list[str]:
    return [part.split(":")[0].strip() for part in message.split(";")]


def _explicit_flags(ctx: typer.Context) -> dict[str, Any]:
    """Dotted config fields of the flags given on the command line (not their defaults)."""
    out = {}
    for name, field in _FIELDS.items():
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE":
            value = ctx.params[name]
            if field == "eval.prompts" and isinstance(value, (list, tuple)):  # one source stays a plain path
                value = value[0] if len(value) == 1 else list(value) or None
            out[field] = str(value) if isinstance(value, Path) else value
    return out


# CLI parameter -> dotted Config field.
_FIELDS = {
    "prompts": "prompts",
    "rounds": "rounds",
    "prompts_per_round": "prompts_per_round",
    "num_samples": "generation.num_samples",
    "run_dir": "run_dir",
    "model": "model.name_or_path",
    "device": "model.device",
    "policy_backend": "generation.backend",
    "policy_base_url": "vllm.base_url",
    "ranker_base_url": "ranker.base_url",
    "ranker_model": "ranker.model",
    "ranker_api_key_env": "ranker.api_key_env",
    "max_new_tokens": "generation.max_new_tokens",
    "temperature": "generation.temperature",
    "num_dynamic_demos": "ranker.num_dynamic_demos",
    "ranker_concurrency": "ranker.concurrency",
    "ranker_rpm": "ranker.requests_per_minute",
    "ranker_tpm": "ranker.tokens_per_minute",
    "cache": "ranker.cache",
    "ranker_cache": "ranker.cache_path",
    "max_cost_usd": "ranker.max_cost_usd",
    "ranker_price_input": "ranker.price_input_per_mtok",
    "ranker_price_output": "ranker.price_output_per_mtok",
    "ranker_prices": "ranker.prices_path",
    "ranker_shuffle": "ranker.shuffle",
    "ranker_consistency": "ranker.consistency",
    "ranker_structured_output": "ranker.structured_output",
    "ranker_batch": "ranker.batch",
    "eval_every": "eval.every",
    "eval_prompts": "eval.prompts",
    "eval_decoding": "eval.decoding",
    "eval_max_new_tokens": "eval.max_new_tokens",
    "agreement_min_length": "agreement.min_length",
    "loss": "train.loss",
    "beta": "train.beta",
    "reference": "train.reference",
    "qlora": "train.qlora",
    "merge": "train.merge",
    "sft_weight": "train.sft_weight",
    "sft_reduction": "train.sft_reduction",
    "sft_pro_scale": "train.sft_pro_scale",
    "pro_temperature": "train.pro_temperature",
    "pro_reward_gap": "train.pro_reward_gap",
    "train_target": "train.target",
    "learning_rate": "train.learning_rate",
    "epochs": "train.epochs",
    "lora_r": "train.lora_r",
    "lora_alpha": "train.lora_alpha",
    "seed": "seed",
    "templates": "ranker.templates_dir",
}


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

    from cyclealign.models import resolve_device, resolve_model_dir
    from cyclealign.policy.base import load_tokenizer
    from cyclealign.rundir import RunDir
    from cyclealign.train.phase import run_train_phase

    warnings.filterwarnings("ignore", category=FutureWarning)
    with _exit_codes():
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


@app.command("eval")
def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory to evaluate.")],
    prompts: Annotated[list[Path], typer.Option(help="Held-out prompts (prompts the run trains on are left out); repeatable: several sources are also reported one by one (by file stem).")],
    num_prompts: Annotated[int, typer.Option(help="Held-out prompts to use per source (a seeded sample).")] = 32,
    round_index: Annotated[Optional[list[int]], typer.Option("--round", help="Policy to evaluate: a round index, -1 = base; repeatable. Default: base and the latest round.")] = None,
    vs: Annotated[int, typer.Option(help="Reference policy of the win rate (-1 = base).")] = -1,
    reward_model: Annotated[Optional[str], typer.Option(help="HF sequence-classification model id or path: mean/std reward per policy.")] = None,
    judge_max_tokens: Annotated[Optional[int], typer.Option(min=4, help="Completion cap per judge call, tokens (default: the run's eval.judge_max_tokens, 16).")] = None,
    decoding: Annotated[Optional[str], typer.Option(help="The judged response (win rate, reward, length): greedy | sample = the first of the N samples (default: the run's eval.decoding, greedy).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Length cap of evaluation generations, tokens (default: the run's eval.max_new_tokens, 128).")] = None,
    templates: Annotated[Optional[Path], typer.Option(help="Folder of judge/ranker templates overriding the shipped ones file by file (default: the run's ranker.templates_dir).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Held-out evaluation: win rate vs base (judged both ways round) of greedy responses, ranking agreement of samples, lengths."""
    import warnings

    from cyclealign.evaluate import EvalPlan
    from cyclealign.loop import evaluate_run
    from cyclealign.rundir import RunDir
    from cyclealign.runlock import RunLock

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)
    with _exit_codes():
        cfg = RunDir(run_dir).read_config().model_copy(update={"run_dir": run_dir})
        if templates is not None:
            cfg = cfg.model_copy(update={"ranker": cfg.ranker.model_copy(update={"templates_dir": templates})})
        ev = cfg.eval
        plan = EvalPlan(
            list(prompts) if len(prompts) > 1 else prompts[0],
            num_prompts,
            list(round_index) if round_index else None,
            vs,
            reward_model,
            ev.judge_max_tokens if judge_max_tokens is None else judge_max_tokens,
            ev.decoding if decoding is None else decoding,  # type: ignore[arg-type]  # EvalPlan validates it
            ev.max_new_tokens if max_new_tokens is None else max_new_tokens,
        )
        with RunLock(run_dir):  # not while an iterate (or another eval) writes the run
            lines = evaluate_run(cfg, plan, environ=os.environ)
    Console().print(eval_table(lines))
    console.print(f"results: {run_dir / 'eval'}")


def eval_table(lines: list[dict[str, Any]]) -> Table:
    """A rich table of evaluation summary lines: one column per policy; with several prompt
    sources (``by_source``), a few rows per source follow the overall ones."""
    table = Table(title="held-out evaluation")
    table.add_column("metric")
    for line in lines:
        table.add_column(line["label"], justify="right")
    rows = [
        ("win rate vs " + lines[0]["vs"], "win_rate"),
        ("95% CI low", "ci_low"),
        ("95% CI high", "ci_high"),
        ("wins / losses / ties", None),
        ("identical pairs (tie, no call)", "identical"),
        ("invalid judgements", "invalid"),
        ("win rate, ties half", "win_rate_ties_half"),
        ("Kendall tau (held-out)", "kendall_tau"),
        ("agreement rate (held-out)", "agreement_rate"),
        ("length mean (tokens)", "length_mean"),
        ("reward mean", "reward_mean"),
    ]

    def wlt(ln: dict[str, Any]) -> str:
        return f"{ln['wins']}/{ln['losses']}/{ln['ties']}" if "wins" in ln else "-"

    for name, key in rows:
        table.add_row(name, *[wlt(ln) if key is None else _fmt(ln.get(key)) for ln in lines])
    if any("decoding" in ln for ln in lines):
        table.add_row("judged response", *[f"{ln['decoding']}, {ln['max_new_tokens']} tok" if "decoding" in ln else "-" for ln in lines])
    sources = list(dict.fromkeys(src for ln in lines for src in ln.get("by_source", {})))
    for src in sources:
        parts = [ln.get("by_source", {}).get(src, {}) for ln in lines]
        table.add_section()
        table.add_row(f"{src}: prompts", *[_fmt(p.get("prompts")) for p in parts])
        table.add_row(f"{src}: win rate", *[_fmt(p.get("win_rate")) for p in parts])
        table.add_row(f"{src}: wins / losses / ties", *[wlt(p) for p in parts])
        table.add_row(f"{src}: Kendall tau", *[_fmt(p.get("kendall_tau")) for p in parts])
        table.add_row(f"{src}: length mean", *[_fmt(p.get("length_mean")) for p in parts])
        if any("reward_mean" in p for p in parts):
            table.add_row(f"{src}: reward mean", *[_fmt(p.get("reward_mean")) for p in parts])
    return table


@app.command()
def reparse(
    run_dir: Annotated[Path, typer.Argument(help="Run directory whose stored ranker replies to parse again.")],
    round_index: Annotated[Optional[list[int]], typer.Option("--round", help="Round(s) to reparse (default: all).")] = None,
    rewind: Annotated[bool, typer.Option(help="Allow changing rounds whose agreement/training used the old rankings: reset them, set later rounds aside.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Only report what would change.")] = False,
    complete_missing_last: Annotated[Optional[bool], typer.Option("--complete-missing-last/--strict", help="Override ranker.complete_missing_last of the run.")] = None,
) -> None:
    """Re-apply the (fixed) ranking parser to the raw replies on disk: no API call is made."""
    from cyclealign.reparse import reparse_run

    with _exit_codes():
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


@app.command("export")
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory whose black-box rankings to export.")],
    fmt: Annotated[str, typer.Option("--format", help="dpo: TRL conversational preference pairs (prompt/chosen/rejected), every (better, worse) pair of each ranking | ranking: one row per ranked prompt (prompt, responses, ranking best first).")],
    out: Annotated[Path, typer.Option(help="Folder to save the dataset in (datasets save_to_disk; must be new or empty).")],
    rounds: Annotated[Optional[str], typer.Option(help="Rounds to export, comma-separated, e.g. 0,1 (default: every round with rankings).")] = None,
    push_to_hub: Annotated[Optional[str], typer.Option(help="Also push the dataset to this Hugging Face Hub repo id (needs a login).")] = None,
) -> None:
    """Export the run's rankings as a Hugging Face dataset (unranked prompts are skipped)."""
    import datasets

    from cyclealign.export import export_rankings, parse_rounds
    from cyclealign.export import push_to_hub as push

    datasets.disable_progress_bars()  # one summary line is printed instead

    with _exit_codes():
        dataset = export_rankings(run_dir, fmt, out, rounds=parse_rounds(rounds) if rounds is not None else None)
    prompts = len(set(zip(dataset["round"], dataset["prompt_id"])))
    exported = sorted(set(dataset["round"]))
    console.print(f"wrote {dataset.num_rows} rows ({prompts} ranked prompts, rounds {', '.join(map(str, exported))}) to {out}", soft_wrap=True)
    if push_to_hub:
        push(dataset, push_to_hub)
        console.print(f"pushed to the Hugging Face Hub: {push_to_hub}", soft_wrap=True)


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory to report on.")],
    out: Annotated[Optional[Path], typer.Option(help="Report folder (default: RUN_DIR/report).")] = None,
) -> None:
    """Write an HTML report of the run: metrics and plots across rounds, evaluation, sample responses."""
    from cyclealign.report import write_report

    with _exit_codes():
        path = write_report(run_dir, out)
    console.print(f"report: {path}", soft_wrap=True)


@app.command("publish")
def publish_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory whose adapter to publish.")],
    to: Annotated[str, typer.Option("--to", help="A running vLLM server (http://HOST:PORT or …/v1) started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.")],
    round_index: Annotated[Optional[int], typer.Option("--round", help="Round whose adapter to load (default: RUN_DIR/promoted when present, else the latest trained round).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Name to serve it under (default: run, round and a digest of the weights).")] = None,
) -> None:
    """Load a finished round's LoRA adapter into a running vLLM server (no restart); prints the model name to request."""
    from cyclealign.policy.vllm_client import VLLMClient, adapter_name
    from cyclealign.rundir import RunDir

    with _exit_codes():
        run = RunDir(run_dir)
        run.read_config()  # a run directory, or a clear error
        if round_index is None and (run.path / "promoted").is_file():
            adapter = Path((run.path / "promoted").read_text().strip())
        else:
            k = round_index if round_index is not None else next(
                (i for i in range(run.finished_rounds() - 1, -1, -1) if run.round(i).has_adapter()), None
            )
            if k is None or not run.round(k).has_adapter():
                raise RunDirError(f"{run.path}: {'round ' + str(k) if k is not None else 'no round'} has no trained adapter to publish")
            adapter = run.round(k).adapter
        base = to.rstrip("/")
        client = VLLMClient(base if base.endswith("/v1") else base + "/v1", model="")
        served = name or adapter_name(adapter, run.path.resolve().name)
        client.load_adapter(served, adapter)
    console.print(f"published {adapter} to {client.root_url} as model {served!r}", soft_wrap=True)
    typer.echo(served)


from cyclealign.cli_templates import templates_app  # noqa: E402  (a sub-app of its own module)

app.add_typer(templates_app, name="templates")

config_app = typer.Typer(no_args_is_help=True, help="The run configuration: the effective config, its schema.")
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option(help="A config file (YAML or JSON).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="section.field=value (repeatable).")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Start from this run's saved config (as --resume does).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="yaml | json")] = "yaml",
) -> None:
    """Print the effective config (defaults < --run-dir's saved config < --config < --set) as YAML:
    a file to edit and pass back with --config."""
    from cyclealign.config import read_config_file
    from cyclealign.rundir import RunDir

    with _exit_codes():
        saved = flatten(RunDir(run_dir).read_config().model_dump(mode="json")) if run_dir is not None else {}
        file_layer = flatten(read_config_file(config)) if config is not None else {}
        cfg = layer_config(saved, file_layer, parse_set_options(set_))
        if fmt not in ("yaml", "json"):
            raise ConfigError(f"--format {fmt!r}: expected yaml or json")
    typer.echo(cfg.to_yaml() if fmt == "yaml" else cfg.to_json(), nl=fmt == "json")


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of a config file (every field, its type, default and description)."""
    typer.echo(Config.schema_json())


@app.command("status")
def status_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Where a run stands: rounds done, the phase in progress or interrupted, last metrics, spend, lock holder."""
    import json

    from cyclealign.schedule import run_status

    with _exit_codes():
        st = run_status(run_dir)
    if as_json:
        typer.echo(json.dumps(st, default=str))
        return
    table = Table(title=f"status {run_dir}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    table.add_row("state", st["state"])
    table.add_row("rounds done", f"{st['rounds_done']} / {st['rounds_scheduled']}")
    if st["phase_pending"]:
        table.add_row(f"round {st['round']}", f"done: {', '.join(st['phases_done']) or '-'}; next: {st['phase_pending']}")
    lock = st["lock"]
    table.add_row("lock", "free" if lock is None else f"pid {lock.get('pid')} on {lock.get('host')} since {lock.get('started')}" + ("" if lock["live"] else " (stale: that process died)"))
    spend = st["spend"]
    table.add_row("ranker spend", f"{int(spend['calls'])} paid calls, {int(spend['prompt_tokens'])} + {int(spend['completion_tokens'])} tokens, {spend['cost_usd']:.4f} USD")
    last = st["last_metrics"] or {}
    for label, key in (("last round", "round"), ("agreement rate", "agreement_rate"), ("Kendall tau", "kendall_tau"), ("train loss", "train_loss")):
        table.add_row(label, _fmt(last.get(key)))
    table.add_row("promoted", st["promoted"] or "-")
    Console().print(table)


if __name__ == "__main__":  # `python -m cyclealign.cli`, as the training launchers run it
    app()
