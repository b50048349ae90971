"""The CycleAlign loop: ``iterate`` runs rounds (:class:`cyclealign.round.Round`, one round
phase by phase) one after another, each round's adapter feeding the next round's generation.

What a round does (Hong et al. 2023, arXiv 2310.16271, Fig. 2): the policy samples N responses
per prompt, the black box ranks them, the rankings' agreement feeds the demonstration pool, and
the policy trains on the rankings; see :mod:`cyclealign.round`. A resumed run skips finished
rounds and phases (:mod:`cyclealign.rundir`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from cyclealign.config import Config
from cyclealign.data.selection import recorded_round_prompts, select_next_prompts, used_prompt_counts
from cyclealign.data.sources import load_prompts
from cyclealign.demos import DemoPool, read_pool, static_demonstrations
from cyclealign.errors import NothingToDo, TemplateError
from cyclealign.evaluation.plan import BASE, EvalPlan
from cyclealign.evaluation.runner import evaluate_with, evaluated
from cyclealign.events import EventLog
from cyclealign.models.loading import resolve_device, resolve_model_dir
from cyclealign.pipeline import RankStream
from cyclealign.policy import make_policy
from cyclealign.policy.handle import PolicyHandle
from cyclealign.progress import NullReporter, Reporter
from cyclealign.ranker.client import Ranker
from cyclealign.ranker.open import open_ranker
from cyclealign.records import Demonstration, PromptRecord
from cyclealign.resources import default_templates_dir
from cyclealign.round import Round
from cyclealign.rundir import Phase, RunDir
from cyclealign.templates.check import check_templates
from cyclealign.templates.ranker import RankerTemplates
from cyclealign.train.lora import check_qlora

log = logging.getLogger(__name__)

__all__ = ["iterate", "round_prompts"]


def round_prompts(cfg: Config, run: RunDir, index: int, prompts: list[PromptRecord], new_only: bool = False) -> list[PromptRecord]:
    """The prompts of round ``index``: those it recorded when it started (a resumed round), else
    the next ones of the source (:func:`~cyclealign.data.selection.select_next_prompts`: prompts no
    earlier round used first), recorded in ``round_k/prompts.json`` before anything else runs.

    Raises:
        NothingToDo: ``new_only`` and the source holds no prompt unused by earlier rounds.
        RunDirError: an earlier round's prompt is gone from the source.
    """
    rd = run.round(index)
    if rd.read_prompt_ids() is not None:
        return recorded_round_prompts(run, cfg, index, prompts)
    used = used_prompt_counts(run, prompts, index, cfg)
    chosen = select_next_prompts(prompts, cfg.prompts_per_round, cfg.seed, used, new_only=new_only)
    if not chosen:
        raise NothingToDo(
            f"round {index}: every prompt of {cfg.prompts or 'the shipped prompt set'} was used by an earlier round "
            "(--new-prompts-only); add prompts to the source and run again"
        )
    rd.record_prompts(chosen, str(cfg.prompts) if cfg.prompts is not None else "shipped")
    return chosen


def iterate(
    cfg: Config,
    *,
    resume: bool = False,
    environ: Mapping[str, str] | None = None,
    reporter: Reporter | None = None,
    new_prompts_only: bool = False,
) -> list[dict[str, Any]]:
    """Run (or resume) ``cfg.rounds`` rounds of CycleAlign; returns every round's metrics line.

    The policy (a :class:`~cyclealign.policy.handle.PolicyHandle`, ``generation.backend``) is
    loaded only when a generation phase is pending, released before each pending train phase (its
    memory, or its server's, is the trainer's) and reloaded by the next generation; the ranker (and the
    embedded server) is opened first of all while any ranking phase is pending. Each round
    draws the prompts no earlier round used first (the source may grow between invocations)
    and records them before it generates; ``new_prompts_only`` draws only unused ones.

    Raises:
        NothingToDo: ``new_prompts_only`` and a pending round found no unused prompt (earlier
            rounds' work is kept; nothing else is changed).
        CycleAlignError subclasses: bad config, data, templates, run directory, or ranker key.
    """
    import os

    environ = os.environ if environ is None else environ
    reporter = reporter or NullReporter()
    # Every input is checked before the run directory is touched.
    prompts = load_prompts(cfg.prompts)
    templates = RankerTemplates(cfg.ranker.templates_dir or default_templates_dir())
    static_demos = static_demonstrations(cfg.ranker)
    model_dir = resolve_model_dir(cfg.model)
    device = resolve_device(cfg.model)  # a device this machine lacks fails here, not in the train phase
    if cfg.train.qlora:
        check_qlora(device)
    if cfg.ranker.templates_dir is not None:  # the whole of `templates check`, not only syntax and names
        problems = [p for c in check_templates(cfg.ranker.templates_dir) for p in c.problems]
        if problems:
            raise TemplateError(f"{cfg.ranker.templates_dir}: {len(problems)} problem(s), `cyclealign templates check --templates {cfg.ranker.templates_dir}` lists them: {problems[0]}")
    run = RunDir(cfg.run_dir)
    if new_prompts_only and resume:  # before anything is written or started: a night without new prompts costs nothing
        pending = next((i for i in range(cfg.rounds) if not run.round(i).is_done(Phase.METRICS)), None)
        if pending is not None and run.round(pending).read_prompt_ids() is None:
            used = used_prompt_counts(run, prompts, pending, cfg)
            if not select_next_prompts(prompts, 1, cfg.seed, used, new_only=True):
                raise NothingToDo(
                    f"round {pending}: no prompt of {cfg.prompts or 'the shipped prompt set'} is unused by earlier rounds "
                    "(--new-prompts-only); add prompts to the source and run again"
                )
    changed = run.check_config(cfg.to_json(), resume)  # config.json is written once the ranker's preflight passed

    with contextlib.ExitStack() as stack:
        # The ranker is opened up front (a bad key fails before any generation work) unless
        # every remaining round has already finished its ranking phase.
        ranker = None
        if cfg.eval.every or any(not run.round(i).is_done(Phase.RANK) for i in range(cfg.rounds)):
            ranker = stack.enter_context(open_ranker(cfg, run, environ, templates))
        run.save_config(cfg.to_json())  # a new run whose ranker failed its preflight leaves no run behind
        if changed:  # where or how the run works, not its results: kept, and said
            log.warning("resumed with %s", "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
            EventLog(run.events).emit("config_changed", changes=changed)
        # Made on first use; its memory, or its server, is released at the end whatever happens.
        policy = stack.enter_context(PolicyHandle(cfg, model_dir, environ, make=make_policy))

        for index in range(cfg.rounds):
            if not run.round(index).is_done(Phase.METRICS):
                rnd = Round(cfg, run, index, round_prompts(cfg, run, index, prompts, new_prompts_only), reporter)
                pool = read_pool(run, index, cfg.agreement.pool_max_size)  # as the previous round left it
                # With ranker.pipeline, each prompt is ranked as soon as its responses are sampled
                # (not under ranker.calls_per_round: the choice of what to rank needs every candidate).
                with _pipelined(cfg, rnd, ranker, static_demos, pool) as stream:
                    generations = rnd.generate(policy, stream)
                    chosen = rnd.select(generations)  # ranker.calls_per_round: which candidates are worth a paid call
                    rankings = rnd.rank(ranker, static_demos, pool, generations, stream, chosen)
                agreement = rnd.agreement(pool, generations, rankings)  # the pool grows here; round_k/demo_pool.jsonl keeps it
                rnd.train(policy)  # releases the policy first; the next generate reloads it
                reporter.round_end(rnd.metrics(rankings, agreement))
            # Checked for finished rounds too: an evaluation cut off by a crash is done on resume.
            if cfg.eval.every and (index + 1) % cfg.eval.every == 0:
                # The policy as of this round: the latest adapter (a round that ranked nothing trains none).
                latest = run.latest_trained_round(index)
                latest = BASE if latest is None else latest
                plan = EvalPlan.from_config(cfg.eval, rounds=sorted({BASE, latest}), vs=BASE)
                if not evaluated(run, latest, plan):
                    assert ranker is not None
                    evaluate_with(cfg, run, plan, ranker, policy, reporter, index)
        metrics = [run.round(i).phases()[Phase.METRICS] for i in range(cfg.rounds)]
    run.rewrite_metrics()
    return metrics


def _pipelined(
    cfg: Config, rnd: Round, ranker: Ranker | None, static_demos: list[Demonstration], pool: DemoPool
) -> contextlib.AbstractContextManager[RankStream | None]:
    """The round's :class:`~cyclealign.pipeline.RankStream` for :meth:`Round.generate` to feed
    when ``ranker.pipeline`` is on and both phases are pending (not with the Batch API, which
    sends a round's requests at once, nor under ``ranker.calls_per_round``, whose choice needs
    every candidate's responses); else None: the rank phase makes its own afterwards."""
    if (
        cfg.ranker.pipeline and not cfg.ranker.batch and cfg.ranker.calls_per_round is None
        and not rnd.rd.is_done(Phase.GENERATE) and not rnd.rd.is_done(Phase.RANK)
    ):
        return rnd.rank_stream(ranker, static_demos, pool)
    return contextlib.nullcontext()
