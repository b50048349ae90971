"""Efficacy benchmark: do CycleAlign rounds move the policy toward the black box's preference?

For each known rule (:mod:`cyclealign.efficacy.rules`: a marker word, a paragraph format, a
cautious stance, a length, a question structure, a formal tone) and each seed, this script

1. starts a rule black box (:class:`cyclealign.efficacy.server.RuleBlackBox`, a real local
   OpenAI-compatible server that ranks responses by the rule, so the right ranking is certain);
2. runs ``cyclealign iterate`` (the library entry point, with the project's defaults plus any
   ``--set`` overrides) for ``--rounds`` rounds of ``--prompts-per-round`` single-turn HH-RLHF
   harmless-base prompts against it;
3. trains a tuned plain loop on the same prompts, samples and rounds
   (:func:`cyclealign.efficacy.baseline.plain_pro_loop`, a short PRO loop with no CycleAlign
   machinery; its round 0 trains on the very samples the CycleAlign run drew). The plain loop
   gets its own sweep per rule (learning rate x SFT weight x clipping, ``--plain-*``), run on
   the sweep seed and scored on ``--tune-prompts`` HH prompts that are neither trained on nor
   held out; every seed then uses the rule's best point among those whose tuning samples lose at
   most ``--max-fluency-drop`` nats per token of base-policy log-likelihood (:func:`fluency`);
4. measures on held-out prompts of two kinds -- HH prompts never trained on and the shipped
   instruction prompts (``cyclealign/assets/default_prompts.jsonl``) -- the rule's property
   over each policy's own samples (before = base policy, after = each trained policy), and
   the Kendall tau-b between each policy's log-likelihood ranking of fixed responses and the
   rule's scores. The tau has its own held-out set (``--tau-prompts`` prompts of each kind,
   ``--tau-samples`` base-policy responses each): it only needs scoring, not sampling, and a
   list of 4 responses moves it in steps of 1/3.

The rules are split once (:data:`cyclealign.efficacy.rules.TUNING_RULES` and ``CHECK_RULES``):
defaults are chosen on the tuning rules; the check rules are reported apart and choose nothing.

It prints a progress line per step on stderr and one JSON line on stdout: per rule, its split,
the plain loop's sweep (every point's tuning score, the chosen one), per seed the ranked lists
the CycleAlign run trained on and how many of them the rule can order at all (``lists``,
``informative_lists``: on the others it ties every response), and per held-out kind the
property before and after for both methods, ``moved`` (after - before), ``ratio`` =
moved(cyclealign) / moved(plain loop), the tau before and after, the wall seconds of each
CycleAlign run, and the mean and spread (min, max) over the seeds; ``ratio_of_means`` (the
seed-mean movements' ratio) and ``ratio_of_means_90``, its 90% percentile-bootstrap interval
from resampling the held-out prompts (:func:`cyclealign.efficacy.measure.bootstrap_ratio`);
and ``tau_rise_cyclealign_90`` / ``tau_rise_baseline_90``, the 90% interval of the seed-mean
rise of the held-out tau (:func:`cyclealign.efficacy.measure.bootstrap_tau_change`).

Compared arms (:mod:`cyclealign.efficacy.arms`; no plain loop), each CycleAlign run against the
same base policy, held-out sets and tau set:

- ``--budget B``: prompt selection under a call budget. Per rule and seed, one run per
  ``--selection`` signal with ``prompts_per_round = 2B`` candidates of which
  ``ranker.calls_per_round = B`` first asks are ranked (:mod:`cyclealign.data.candidates`), and
  one that ranks all 2B (``all``, 2B calls; with 2B = 12 this is the main bench's own run).
- ``--noisy-calls C``: a noisy judge (``--position-bias P``, ``--swap-prob Q``) at C ranker calls
  a round: ``single`` (C prompts asked once), ``strict`` and ``aggregate`` (C/K prompts in
  ``--consistency K`` shuffled orders; kept when all K agree, or Kemeny at ``--min-confidence``).

Their JSON line gives, per rule, each run's held-out property movement, tau, calls and the
agreement of its trained labels with the rule, and per compared pair
(:data:`~cyclealign.efficacy.arms.BUDGET_PAIRS`, :data:`~cyclealign.efficacy.arms.NOISE_PAIRS`)
the ratio of the seed-mean movements with its 90% bootstrap interval
(:func:`~cyclealign.efficacy.measure.bootstrap_ratio`), the 90% interval of the property
difference (:func:`~cyclealign.efficacy.measure.bootstrap_rate_difference`) and of the held-out
tau difference (:func:`~cyclealign.efficacy.measure.bootstrap_tau_change`, the reference as "before").

Everything trained or sampled is cached under ``--out``: base-policy samples and plain-loop
points keyed by the policy and its sampling (:func:`policy_key`: ``model.*`` and
``generation.*`` overrides apply to the base policy and the plain loop too), CycleAlign runs by
their effective config (:func:`config_tag`, and the judge's noise), held-out samples by ``--heldout`` and tau scores by the tau set. A
sweep of ``train.*`` values therefore re-runs only CycleAlign, and a re-run resumes.

Label-only mode (``--judge-noise``, no training, a few minutes on CPU): a noisy rule judge
(:class:`cyclealign.efficacy.server.JudgeNoise`: ``--position-bias P``, ``--swap-prob Q``)
labels the base policy's held-out samples (the same cached lists of N responses), asked once and
in ``--consistency K`` shuffled orders; the JSON line gives, per rule and pooled, each mode's
kept share and agreement with the rule (single ask, strict K-consistency, Borda and Kemeny at
``--min-confidence``, Kemeny at a few more thresholds) and its figures per paid call
(:func:`cyclealign.efficacy.labels.label_accuracy`).

Usage::

    .venv/bin/python scripts/bench_efficacy.py                       # 6 rules, seeds 0,1,2
    .venv/bin/python scripts/bench_efficacy.py --rules brevity --seeds 0 --set train.max_grad_norm=0
    .venv/bin/python scripts/bench_efficacy.py --judge-noise --position-bias 0.3 --consistency 3 --seeds 0
    .venv/bin/python scripts/bench_efficacy.py --budget 6 --selection random,uncertainty,diversity
    .venv/bin/python scripts/bench_efficacy.py --noisy-calls 12 --position-bias 0.3 --consistency 3

Needs Anthropic's HH-RLHF harmless-base test file (``--hh PATH``, JSONL or JSONL.gz).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from cyclealign.config import build_config  # noqa: E402
from cyclealign.data.candidates import SIGNALS  # noqa: E402
from cyclealign.data.selection import select_round_prompts  # noqa: E402
from cyclealign.data.sources import load_prompts  # noqa: E402
from cyclealign.efficacy.measure import (  # noqa: E402
    bootstrap_ratio,
    bootstrap_tau_change,
    loglik_scores,
    mean_score,
    prompt_properties,
    prompt_taus,
    property_rate,
    rule_tau,
    spread,
)
from cyclealign.efficacy.arms import BUDGET_PAIRS, NOISE_PAIRS, budget_arms, noise_arms, summarise_arms, trained_label_accuracy  # noqa: E402
from cyclealign.efficacy.baseline import MAX_FLUENCY_DROP, PLAIN_GRID, PlainLoopPoint, best_point, plain_grid, plain_pro_loop  # noqa: E402
from cyclealign.efficacy.rules import CHECK_RULES, RULES, TUNING_RULES, Rule, get_rule  # noqa: E402
from cyclealign.efficacy.server import JudgeNoise, RuleBlackBox  # noqa: E402
from cyclealign.loop import iterate  # noqa: E402
from cyclealign.models.loading import load_causal_lm, resolve_device, resolve_model_dir  # noqa: E402
from cyclealign.policy import make_policy  # noqa: E402
from cyclealign.records import Generation, PromptRecord  # noqa: E402
from cyclealign.resources import default_prompts_path  # noqa: E402
from cyclealign.rundir import RunDir  # noqa: E402
from cyclealign.files import read_jsonl, write_json, write_jsonl  # noqa: E402

DEFAULT_HH = Path(__file__).resolve().parent.parent.parent / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"


# -- helpers --------------------------------------------------------------------------------
def single_turn(prompts: list[PromptRecord]) -> list[PromptRecord]:
    return [p for p in prompts if len(p.messages) == 1]


def shuffled_rank(rule: Rule, seed: int):
    """The rule's ranking of a generation, ties broken by a seeded shuffle (as the black box,
    which sees the responses in the ranker's seeded shuffled order)."""

    def rank(g: Generation) -> list[int]:
        order = list(range(len(g.responses)))
        random.Random(f"{seed}:{g.prompt_id}").shuffle(order)
        shown = rule.rank([g.responses[i] for i in order])
        return [order[i] for i in shown]

    return rank


def held_out_samples(cfg, model_dir: str, adapter: Path | None, heldout: dict, seed: int, cache: Path) -> dict:
    """Per held-out kind, the samples of the policy ``cfg`` describes with ``adapter`` loaded (None:
    the base policy), cached in ``cache``: the policy is only built when a kind is not there yet."""
    out, policy = {}, None
    for kind, prompts in heldout.items():
        path = cache / f"{kind}.jsonl"
        if not path.exists():
            if policy is None:
                policy = make_policy(cfg, model_dir)
                policy.load_adapter(adapter)
            write_jsonl(path, [g.to_json() for g in policy.sample(prompts, seed=seed + 1000)])
        out[kind] = [Generation.from_json(d) for d in read_jsonl(path)]
    if policy is not None:
        policy.close()
    return out


def scores_under(model_dir: str, adapter: Path | None, base_gens: dict, cfg, device) -> dict[str, list[list[float]]]:
    """Log-likelihood scores of the base policy's held-out samples under ``adapter`` (None = base)."""
    from peft import PeftModel

    from cyclealign.models.tokenizer import load_tokenizer

    model = load_causal_lm(model_dir, torch.float32).to(device)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    pad = load_tokenizer(model_dir).pad_token_id
    return {
        kind: loglik_scores(model, gens, pad_token_id=pad, max_length=cfg.train.max_length, device=device)
        for kind, gens in base_gens.items()
    }


def tau_scores(folder: Path, model_dir: str, adapter: Path | None, tau_set: dict, cfg, device, key: str) -> dict:
    """:func:`scores_under` of the tau set, cached in ``folder`` under the set's ``key`` (the scores
    do not depend on the rule, only on the adapter and the responses scored)."""
    path = folder / f"tau_scores_{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    scores = scores_under(model_dir, adapter, tau_set, cfg, device)
    write_json(path, scores)
    return scores


def fluency(folder: Path, model_dir: str, own: dict, cfg, device, key: str) -> dict[str, float]:
    """Per held-out kind, the base policy's mean log-likelihood per token (nats) of a policy's own
    held-out samples ``own``, cached in ``folder`` (:func:`cyclealign.efficacy.measure.mean_score`).
    A trained policy whose text the base policy finds much less likely than its own samples has
    drifted from fluent text (garbled or degenerate output wins some rules cheaply)."""
    path = folder / f"fluency_{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    scores = scores_under(model_dir, None, own, cfg, device)
    out = {kind: mean_score(s) for kind, s in scores.items()}
    write_json(path, out)
    return out


def taus(rule: Rule, tau_set: dict, scores: dict) -> dict[str, dict[str, Any]]:
    """Per kind, the mean and per-prompt Kendall tau-b between the rule and the policy's
    log-likelihood scores of the tau set's responses."""
    return {
        kind: {"tau": rule_tau(rule, gens, scores[kind]), "tau_per_prompt": prompt_taus(rule, gens, scores[kind])}
        for kind, gens in tau_set.items()
    }


def run_labels(rule: Rule, run_dir: Path, rounds: int) -> dict[str, Any]:
    """How the rankings a CycleAlign run trained on agree with the rule, over its ``rounds`` rounds
    (:func:`~cyclealign.efficacy.arms.trained_label_accuracy`)."""
    rd = RunDir(run_dir)
    return trained_label_accuracy(rule, [(rd.round(k).read_generations(), rd.round(k).read_rankings()) for k in range(rounds)])


def seed_folder(root: Path, seed: int, args) -> Path:
    """Where one seed's runs live: keyed by the schedule, so a cached run or baseline is only
    reused for the same ``--rounds`` and ``--prompts-per-round`` (held-out samples and tau
    scores are kept inside, keyed by the held-out set's size)."""
    return root / f"seed_{seed}" / f"r{args.rounds}x{args.prompts_per_round}"


def policy_key(cfg) -> str:
    """8 hex digits naming the policy and its sampling (``cfg.model`` and ``cfg.generation``): the
    base policy's samples and the baseline's runs are cached under it, so a ``--set model.*`` or
    ``generation.*`` sweep gets its own base and baseline (training overrides share them)."""
    return hashlib.sha256((cfg.model.model_dump_json() + cfg.generation.model_dump_json()).encode()).hexdigest()[:8]


RUN_PLACE_FIELDS = ("run_dir", "prompts", "seed", "rounds", "prompts_per_round", "eval")
"""Config fields the bench sets per run, or that do not change what a run trains: left out of
:func:`config_tag` (``ranker`` fields that say where and how the black box is reached too)."""


def config_tag(overrides: dict[str, Any]) -> str:
    """``cfg-`` and 8 hex digits naming the *effective* config the ``--set`` overrides give (the
    project's defaults included): a cached CycleAlign run is reused only for the very config it
    ran, so a changed default never reads a run of the old one."""
    cfg = json.loads(build_config(**overrides).to_json())
    for key in RUN_PLACE_FIELDS:
        cfg.pop(key, None)
    for key in ("base_url", "model", "cache_path", "api_key_env", "concurrency", "rpm", "tpm", "timeout_s", "max_retries", "max_cost_usd"):
        cfg.get("ranker", {}).pop(key, None)
    return "cfg-" + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]


def parse_set(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key or not _:
            raise SystemExit(f"--set {item!r}: expected dotted.key=value")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


# -- progress -------------------------------------------------------------------------------
_T0 = time.perf_counter()


def progress(message: str) -> None:
    """One progress line on stderr, stamped with the bench's elapsed minutes."""
    print(f"[{(time.perf_counter() - _T0) / 60:6.1f} min] {message}", file=sys.stderr, flush=True)


# -- one seed, one rule -----------------------------------------------------------------------
def run_cyclealign(rule: Rule, seed: int, args, overrides, train_prompts_path: Path, root: Path, tag: str, noise=None):
    """The CycleAlign run of one rule and seed (cached in its run folder's ``bench_result.json``)
    against the rule black box (erring as ``noise`` says, a
    :class:`~cyclealign.efficacy.server.JudgeNoise`; None: exact); returns ``(config, run folder, result)``."""
    seed_dir = seed_folder(root, seed, args)
    cfg = build_config(
        **{
            "run_dir": str(seed_dir / tag / rule.name),
            "prompts": str(train_prompts_path),
            "rounds": args.rounds,
            "prompts_per_round": args.prompts_per_round,
            "seed": seed,
            "ranker.model": RuleBlackBox(rule, noise).model,  # the noise is in the name: cached replies stay apart
            "ranker.cache_path": str(root / "ranker_cache.sqlite"),
            **overrides,
            "ranker.base_url": "http://127.0.0.1:1/v1",  # replaced below by the server's port
        }
    )
    run_dir = Path(cfg.run_dir)
    result_path = run_dir / "bench_result.json"
    if result_path.exists() and not args.fresh:
        return cfg, run_dir, json.loads(result_path.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    progress(f"seed {seed} {rule.name}: cyclealign {tag} ...")
    with RuleBlackBox(rule, noise) as box:
        cfg.ranker.base_url = box.base_url
        t0 = time.perf_counter()
        metrics = iterate(cfg, environ={"OPENAI_API_KEY": "rule-black-box"})
        wall = time.perf_counter() - t0
    cyc = {
        "wall_s": wall,
        "train": [
            {k: m.get(k) for k in ("agreement_rate", "kendall_tau", "train_loss", "train_ranking_accuracy", "train_grad_norm")}
            for m in metrics
        ],
    }
    write_json(result_path, cyc)
    progress(f"seed {seed} {rule.name}: cyclealign done in {wall:.0f} s")
    return cfg, run_dir, cyc


def run_plain_loop(rule: Rule, seed: int, args, point: PlainLoopPoint, train_prompts_path: Path, base, cyc_run: Path, root: Path):
    """The plain loop at ``point`` for one rule and seed (cached per point); returns
    ``(config, folder of the point, last adapter, result)``. Its round 0 trains on the CycleAlign
    run's round-0 samples (``cyc_run``); they depend only on the policy, the seed and the prompts."""
    bl_dir = seed_folder(root, seed, args) / "baseline" / base["key"] / rule.name / point.name
    bl_path = bl_dir / "bench_result.json"
    bl_cfg = build_config(
        prompts=str(train_prompts_path), rounds=args.rounds, prompts_per_round=args.prompts_per_round, seed=seed,
        **base["generation"],
    )
    adapter = bl_dir / f"round_{args.rounds - 1:03d}"
    if bl_path.exists():
        return bl_cfg, bl_dir, adapter, json.loads(bl_path.read_text())
    progress(f"seed {seed} {rule.name}: plain loop {point.name} ...")
    model_dir = resolve_model_dir(bl_cfg.model)
    policy = make_policy(bl_cfg, model_dir)
    all_train = load_prompts(train_prompts_path)

    def sample(k: int, previous: Path) -> list[Generation]:
        policy.load_adapter(previous)
        return policy.sample(select_round_prompts(all_train, k, args.prompts_per_round, seed), seed=seed + k)

    round0 = RunDir(cyc_run).round(0).read_generations()
    t0 = time.perf_counter()
    plain_pro_loop(
        model_dir, round0, shuffled_rank(rule, seed), sample, rounds=args.rounds, seed=seed, point=point, out=bl_dir,
        device=resolve_device(bl_cfg.model),
    )
    bl = {"wall_s": time.perf_counter() - t0, "point": point.to_json()}
    policy.close()
    write_json(bl_path, bl)
    progress(f"seed {seed} {rule.name}: plain loop {point.name} done in {bl['wall_s']:.0f} s")
    return bl_cfg, bl_dir, adapter, bl


def choose_plain_point(rule: Rule, args, grid: list[PlainLoopPoint], train_prompts_path: Path, base, cyc_run: Path, root: Path):
    """The plain loop's best point for ``rule``: each point of ``grid`` is trained on the sweep
    seed and scored by the rule's property over its own samples of the tuning prompts (HH prompts
    neither trained on nor held out) and by their fluency (:func:`fluency`); the highest property
    among the points that lose at most ``--max-fluency-drop`` nats per token against the base
    policy's own samples wins (:func:`~cyclealign.efficacy.baseline.best_point`). Written to
    ``choice_<n>.json`` beside the points with every point's score and fluency, the base policy's,
    and the choice without the fluency bound; returns that record."""
    seed = args.sweep_seed
    rule_dir = seed_folder(root, seed, args) / "baseline" / base["key"] / rule.name
    base_dir = seed_folder(root, seed, args) / "base" / base["key"] / f"tune_{args.tune_prompts}"
    base_cfg = build_config(seed=seed, **base["generation"])
    model_dir, device = resolve_model_dir(base_cfg.model), resolve_device(base_cfg.model)
    fluency_before = fluency(base_dir, model_dir, base["tune_gens"], base_cfg, device, "tune")["tune"]
    scores, fluent = {}, {}
    for point in grid:
        bl_cfg, bl_dir, adapter, _ = run_plain_loop(rule, seed, args, point, train_prompts_path, base, cyc_run, root)
        folder = bl_dir / f"tune_{args.tune_prompts}"
        gens = held_out_samples(bl_cfg, model_dir, adapter, base["tune"], seed, folder)
        scores[point.name] = property_rate(rule, gens["tune"])
        fluent[point.name] = fluency(folder, model_dir, gens, bl_cfg, device, "tune")["tune"]
    drops = {name: fluency_before - f for name, f in fluent.items()}
    bound = args.max_fluency_drop if args.max_fluency_drop > 0 else None
    chosen = best_point(scores, drops, bound)
    record = {
        "sweep_seed": seed,
        "tune_prompts": args.tune_prompts,
        "before": property_rate(rule, base["tune_gens"]["tune"]),
        "scores": scores,
        "fluency_before": fluency_before,
        "fluency": fluent,
        "max_fluency_drop": bound,
        "chosen": chosen,
        "chosen_unbounded": best_point(scores),
        "point": next(p for p in grid if p.name == chosen).to_json(),
    }
    write_json(rule_dir / f"choice_{args.tune_prompts}.json", record)
    progress(f"{rule.name}: plain loop's best point {chosen} (tuning property {scores[chosen]:.2f}, base {record['before']:.2f}; "
             f"fluency {fluent[chosen]:.2f}, base {fluency_before:.2f}; unbounded best {record['chosen_unbounded']})")
    return record


def measure(rule: Rule, heldout: dict, base, own: dict[str, dict], scores: dict[str, dict], fluent: dict[str, dict]) -> dict[str, Any]:
    """Per held-out kind, the property before and after for CycleAlign and the plain loop, their
    movements and ratio, and the tau before and after (with the per-prompt terms the bootstrap
    intervals resample)."""
    tau_of = {"before": taus(rule, base["tau_set"], base["tau_scores"])}
    tau_of.update({name: taus(rule, base["tau_set"], scores[name]) for name in ("cyclealign", "baseline")})
    out: dict[str, Any] = {}
    for kind in heldout:
        gens_of = {"before": base["gens"], **own}
        per_prompt = {name: prompt_properties(rule, gens[kind]) for name, gens in gens_of.items()}
        b, c, p = (property_rate(rule, gens_of[name][kind]) for name in ("before", "cyclealign", "baseline"))
        out[kind] = {
            "before": b,
            "cyclealign": c,
            "baseline": p,
            "moved_cyclealign": c - b,
            "moved_baseline": p - b,
            "ratio": (c - b) / (p - b) if p > b else None,
            **{f"tau_{name}": t[kind]["tau"] for name, t in tau_of.items()},
            **{f"fluency_{name}": f[kind] for name, f in fluent.items()},
            "per_prompt": per_prompt,
            "tau_per_prompt": {name: t[kind]["tau_per_prompt"] for name, t in tau_of.items()},
        }
    return out


def run_rule(rule: Rule, seed: int, args, overrides, train_prompts_path: Path, heldout, base, root: Path, tag: str, point: PlainLoopPoint):
    """CycleAlign and the plain loop (at ``point``) for one rule and seed; returns their held-out measures."""
    cfg, run_dir, cyc = run_cyclealign(rule, seed, args, overrides, train_prompts_path, root, tag)
    model_dir, device = resolve_model_dir(cfg.model), resolve_device(cfg.model)
    adapter = RunDir(run_dir).latest_adapter(cfg.rounds)
    cyc_own = held_out_samples(cfg, model_dir, adapter, heldout, seed, run_dir / f"heldout_{args.heldout}")
    cyc_scores = tau_scores(run_dir, model_dir, adapter, base["tau_set"], cfg, device, base["tau_key"])

    bl_cfg, bl_dir, bl_adapter, bl = run_plain_loop(rule, seed, args, point, train_prompts_path, base, run_dir, root)
    bl_own = held_out_samples(bl_cfg, model_dir, bl_adapter, heldout, seed, bl_dir / f"heldout_{args.heldout}")
    bl_scores = tau_scores(bl_dir, model_dir, bl_adapter, base["tau_set"], bl_cfg, device, base["tau_key"])
    fluent = {
        "before": base["fluency"],
        "cyclealign": fluency(run_dir, model_dir, cyc_own, cfg, device, str(args.heldout)),
        "baseline": fluency(bl_dir, model_dir, bl_own, bl_cfg, device, str(args.heldout)),
    }
    measured = measure(
        rule, heldout, base, {"cyclealign": cyc_own, "baseline": bl_own}, {"cyclealign": cyc_scores, "baseline": bl_scores}, fluent
    )
    return {"wall_s": cyc["wall_s"], "baseline_wall_s": bl["wall_s"], "baseline_point": point.name, "train": cyc.get("train"),
            "labels": run_labels(rule, run_dir, cfg.rounds), **measured}


def summarise_rule(rule: Rule, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One rule's entry of the printed summary from its per-seed :func:`run_rule` results: per
    held-out kind the spread of each figure over the seeds, ``ratio_of_means`` with its bootstrap
    interval, and the bootstrap intervals of each method's tau rise."""
    entry: dict[str, Any] = {
        "kind": rule.kind,
        "run_wall_s": spread([r["wall_s"] for r in runs]),
        # Ranked lists trained on, and those the rule can order at all (the rest are rule ties).
        "lists": [r["labels"]["lists"] for r in runs],
        "informative_lists": [r["labels"]["informative"] for r in runs],
    }
    for kind in ("hh", "other"):
        entry[kind] = {
            field: spread([r[kind][field] for r in runs])
            for field in ("before", "cyclealign", "baseline", "moved_cyclealign", "moved_baseline", "ratio",
                          "tau_before", "tau_cyclealign", "tau_baseline",
                          "fluency_before", "fluency_cyclealign", "fluency_baseline")
        }
        moved_c = statistics.fmean(r[kind]["moved_cyclealign"] for r in runs)
        moved_b = statistics.fmean(r[kind]["moved_baseline"] for r in runs)
        entry[kind]["ratio_of_means"] = moved_c / moved_b if moved_b > 0 else None
        # How precisely the held-out prompts pin the ratio down: resample them (paired).
        entry[kind]["ratio_of_means_90"] = bootstrap_ratio([r[kind]["per_prompt"] for r in runs])
        # And how surely the held-out tau rose (after - before, seed mean), for both methods.
        for method in ("cyclealign", "baseline"):
            entry[kind][f"tau_rise_{method}_90"] = bootstrap_tau_change(
                [{"before": r[kind]["tau_per_prompt"]["before"], "after": r[kind]["tau_per_prompt"][method]} for r in runs]
            )
    return entry


LABEL_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""The confidence thresholds label-only mode reports Kemeny aggregation at."""


def label_lists(base_gens: dict, tau_set: dict, which: str) -> list[tuple[str, list[str]]]:
    """The lists the label-only mode labels: ``(prompt id, responses)`` of the base policy's
    held-out samples (``heldout``, N = ``generation.num_samples``) or of the tau set (``tau``,
    ``--tau-samples`` responses each), both kinds, lists of at least 2 distinct responses."""
    source = base_gens if which == "heldout" else tau_set
    return [(f"{kind}:{g.prompt_id}", g.responses) for kind, gens in source.items() for g in gens if len(g.responses) >= 2]


def label_only(args, rules: list[Rule], seeds: list[int], lists_of: dict[int, list]) -> dict[str, Any]:
    """Label-only mode's JSON line: per rule (pooled over the seeds) and over all rules, each
    mode's figures (:func:`cyclealign.efficacy.labels.label_accuracy`, pooled by
    :func:`cyclealign.efficacy.labels.pooled`). Each seed's lists are labelled ``--judge-draws``
    times, draw ``d`` seeding the presentation orders and the judge's noise with ``1000 seed + d``
    (as rounds of a run would see them): the label figures vary much more from draw to draw than
    the lists do."""
    from cyclealign.efficacy.labels import MODES, label_accuracy, pooled
    per_rule: dict[str, dict[str, Any]] = {}
    everything: dict[str, list] = {}
    for rule in rules:
        runs = [
            label_accuracy(
                rule, lists_of[seed], JudgeNoise(args.position_bias, args.swap_prob, draw_seed), consistency=args.consistency,
                min_confidence=args.min_confidence, thresholds=LABEL_THRESHOLDS, seed=draw_seed,
            )
            for seed in seeds
            for draw_seed in (1000 * seed + d for d in range(args.judge_draws))
        ]
        entry = {m: pooled([r[m] for r in runs]) for m in MODES}
        entry["kemeny_at"] = {t: pooled([r["kemeny_at"][t] for r in runs]) for t in runs[0]["kemeny_at"]}
        per_rule[rule.name] = entry
        for m in MODES:
            everything.setdefault(m, []).extend(r[m] for r in runs)
        for t in runs[0]["kemeny_at"]:
            everything.setdefault(f"kemeny_at_{t}", []).extend(r["kemeny_at"][t] for r in runs)
    pooled_all = {m: pooled(everything[m]) for m in MODES}
    pooled_all["kemeny_at"] = {t: pooled(everything[f"kemeny_at_{t}"]) for t in per_rule[rules[0].name]["kemeny_at"]}
    return {
        "bench": "efficacy_labels",
        "judge": {"position_bias": args.position_bias, "swap_prob": args.swap_prob},
        "consistency": args.consistency,
        "min_confidence": args.min_confidence,
        "lists": args.label_lists,
        "seeds": seeds,
        "judge_draws": args.judge_draws,
        "lists_per_seed": {str(s): len(lists_of[s]) for s in seeds},
        "wall_s": round(time.perf_counter() - _T0, 1),
        "all_rules": pooled_all,
        "rules": per_rule,
    }


# -- compared arms: prompt selection under a budget (--budget), a noisy judge (--noisy-calls) ---
def run_arm(rule: Rule, seed: int, args, name: str, arm: dict[str, Any], train_prompts_path: Path, heldout, base, root: Path, tag: str,
            noise=None):
    """One arm's run of ``rule`` and ``seed`` (:mod:`cyclealign.efficacy.arms`) against the rule
    black box (with ``noise``, a :class:`~cyclealign.efficacy.server.JudgeNoise`) and its held-out
    measures: per kind the property after and moved, the tau, the per-prompt terms the intervals
    resample; the run's ranked prompts and ranker calls per round; and how often the labels it
    trained on agree with the rule. The run is cached under its effective config and the noise
    (:func:`config_tag`; ``<tag>-<arm>`` with ``--tag``), so ``all`` at 2B = the main bench's
    ``--prompts-per-round`` is the main bench's own CycleAlign run."""
    noise_tag = noise.tag if noise is not None else ""
    run_tag = f"{tag}{noise_tag}-{name}" if args.tag else config_tag(arm) + noise_tag
    cfg, run_dir, cyc = run_cyclealign(rule, seed, args, arm, train_prompts_path, root, run_tag, noise=noise)
    model_dir, device = resolve_model_dir(cfg.model), resolve_device(cfg.model)
    rd = RunDir(run_dir)
    adapter = rd.latest_adapter(cfg.rounds)
    own = held_out_samples(cfg, model_dir, adapter, heldout, seed, run_dir / f"heldout_{args.heldout}")
    tau_of = taus(rule, base["tau_set"], tau_scores(run_dir, model_dir, adapter, base["tau_set"], cfg, device, base["tau_key"]))
    lines = rd.metrics_lines()
    out: dict[str, Any] = {
        "wall_s": cyc["wall_s"],
        "ranked_per_round": statistics.fmean(m["ranked"] for m in lines),
        "ranker_calls_per_round": statistics.fmean(m["ranker_calls"] for m in lines),
        "labels": run_labels(rule, run_dir, cfg.rounds),
        "fluency": fluency(run_dir, model_dir, own, cfg, device, str(args.heldout)),
    }
    for kind in heldout:
        before = property_rate(rule, base["gens"][kind])
        after = property_rate(rule, own[kind])
        out[kind] = {
            "after": after,
            "moved": after - before,
            "tau": tau_of[kind]["tau"],
            "per_prompt": prompt_properties(rule, own[kind]),
            "tau_per_prompt": tau_of[kind]["tau_per_prompt"],
        }
    return out


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--rules", default=",".join(TUNING_RULES + CHECK_RULES),
        help=f"comma-separated, of: {', '.join(RULES)} (default: the tuning rules, then the check rules)",
    )
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (spread is reported over them)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompts-per-round", type=int, default=12)
    ap.add_argument("--heldout", type=int, default=32, help="held-out prompts of each kind the property is measured on (other: at most the 48 shipped)")
    ap.add_argument(
        "--tau-prompts", type=int, default=32, help="held-out prompts of each kind the Kendall tau is measured on (other: at most the 48 shipped)"
    )
    ap.add_argument("--tau-samples", type=int, default=8, help="base-policy responses per tau prompt (2-16)")
    ap.add_argument("--tune-prompts", type=int, default=24, help="HH prompts, neither trained on nor held out, the plain loop's sweep is scored on")
    ap.add_argument("--sweep-seed", type=int, default=None, help="seed the plain loop's sweep runs on (default: the first of --seeds)")
    ap.add_argument("--plain-lr", type=floats, default=sorted({p.learning_rate for p in PLAIN_GRID}), help="plain loop's learning rates (comma-separated)")
    ap.add_argument("--plain-sft", type=floats, default=sorted({p.sft_weight for p in PLAIN_GRID}), help="plain loop's SFT weights")
    ap.add_argument("--plain-clip", type=floats, default=sorted({p.max_grad_norm for p in PLAIN_GRID}), help="plain loop's clipping norms (0 = off)")
    ap.add_argument("--max-fluency-drop", type=float, default=MAX_FLUENCY_DROP,
                    help="the plain loop's sweep passes over points whose tuning samples lose more base-policy nats per token than this (0 = no bound)")
    ap.add_argument("--hh", type=Path, default=DEFAULT_HH, help="HH-RLHF harmless-base JSONL[.gz]")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_efficacy"), help="work folder (caches base/baseline)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--tag", default=None, help="name of this config's runs under --out (default: hash of --set)")
    ap.add_argument("--fresh", action="store_true", help="re-run CycleAlign even when this config's result exists")
    noisy = ap.add_argument_group("label-only mode (no training)")
    noisy.add_argument("--judge-noise", action="store_true", help="measure a noisy judge's labels against the rule; train nothing")
    noisy.add_argument("--position-bias", type=float, default=0.3, help="P: the judge puts the response shown first on top with this probability")
    noisy.add_argument("--swap-prob", type=float, default=0.0, help="Q: the judge swaps each adjacent pair of its ranking with this probability")
    noisy.add_argument("--consistency", type=int, default=3, help="K: shuffled presentation orders per prompt (>= 2)")
    noisy.add_argument("--min-confidence", type=float, default=0.6, help="the aggregation's threshold (ranker.min_confidence)")
    noisy.add_argument("--judge-draws", type=int, default=10, help="times each seed's lists are labelled (new orders and noise each time)")
    noisy.add_argument("--label-lists", choices=("heldout", "tau"), default="heldout",
                       help="the lists labelled: the held-out samples (N = generation.num_samples) or the tau set (--tau-samples each)")
    noisy.add_argument(
        "--noisy-calls", type=int, default=None, metavar="C",
        help="train instead: per rule and seed, three runs at C ranker calls a round against the noisy judge: single (C prompts "
        "asked once), strict and aggregate (C/K prompts in K orders; all K agree, or Kemeny at --min-confidence)",
    )
    ap.add_argument(
        "--budget", type=int, default=None, metavar="B",
        help="measure prompt selection instead: per --selection signal, 2B candidates a round of which B calls' worth are "
        "ranked, against ranking all 2B (sets --prompts-per-round to 2B; no plain loop)",
    )
    ap.add_argument("--selection", default=",".join(SIGNALS), help=f"with --budget: comma-separated signals, of {', '.join(SIGNALS)} (random is always run)")
    args = ap.parse_args(argv)

    if not args.hh.exists():
        print(f"{args.hh}: HH-RLHF harmless-base file not found (pass --hh PATH)", file=sys.stderr)
        return 2
    rules = [get_rule(r.strip()) for r in args.rules.split(",") if r.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.judge_noise or args.noisy_calls is not None:
        bad = [f"--{n.replace('_', '-')} {v} (a probability or threshold, in [0, 1])"
               for n, v in (("position_bias", args.position_bias), ("swap_prob", args.swap_prob), ("min_confidence", args.min_confidence))
               if not 0.0 <= v <= 1.0]
        if args.judge_draws < 1:
            bad.append(f"--judge-draws {args.judge_draws} (needs >= 1)")
        if args.consistency < 2:
            bad.append(f"--consistency {args.consistency} (needs K >= 2)")
        elif args.noisy_calls is not None and (args.noisy_calls % args.consistency or not args.consistency <= args.noisy_calls <= args.prompts_per_round):
            bad.append(f"--noisy-calls {args.noisy_calls} (needs a multiple of --consistency {args.consistency}, at most --prompts-per-round {args.prompts_per_round})")
        if args.judge_noise and args.noisy_calls is not None:
            bad.append("--judge-noise with --noisy-calls (labels only, or training: one of them)")
        if args.budget is not None and args.noisy_calls is not None:
            bad.append("--budget with --noisy-calls (one comparison at a time)")
        if bad:
            print("; ".join(bad), file=sys.stderr)
            return 2
    args.sweep_seed = seeds[0] if args.sweep_seed is None else args.sweep_seed
    if args.sweep_seed not in seeds:
        print(f"--sweep-seed {args.sweep_seed}: not one of --seeds {args.seeds}", file=sys.stderr)
        return 2
    # The sweep seed goes first: the other seeds use the point it chose.
    seeds = [args.sweep_seed] + [s for s in seeds if s != args.sweep_seed]
    grid = plain_grid(args.plain_lr, args.plain_sft, args.plain_clip)
    overrides = parse_set(args.set)
    if args.budget is not None:
        signals = [s.strip() for s in args.selection.split(",") if s.strip()]
        unknown = [s for s in signals if s not in SIGNALS]
        if args.budget < 1 or unknown:
            print(f"--budget needs B >= 1 and --selection signals of {', '.join(SIGNALS)} (got {args.budget}, {args.selection})", file=sys.stderr)
            return 2
        args.selection = ["random"] + [s for s in dict.fromkeys(signals) if s != "random"]
        args.prompts_per_round = 2 * args.budget  # the candidates; held-out prompts exclude every one a round may draw
    tag = args.tag or config_tag(overrides)
    root = args.out
    root.mkdir(parents=True, exist_ok=True)

    hh = single_turn(load_prompts(args.hh))
    train_prompts_path = root / "hh_single_turn.jsonl"
    if not train_prompts_path.exists():
        write_jsonl(train_prompts_path, [p.to_json() for p in hh])
    train_prompts = load_prompts(train_prompts_path)
    other = load_prompts(default_prompts_path())

    per_rule: dict[str, list[dict[str, Any]]] = {r.name: [] for r in rules}
    choices: dict[str, dict[str, Any]] = {}
    label_sets: dict[int, list[tuple[str, list[str]]]] = {}  # label-only mode: per seed, the lists labelled
    for seed in seeds:
        trained = {
            p.query_text
            for k in range(args.rounds)
            for p in select_round_prompts(train_prompts, k, args.prompts_per_round, seed)
        }
        held_hh = [p for p in train_prompts if p.query_text not in trained]
        random.Random(seed + 7919).shuffle(held_hh)
        heldout = {"hh": held_hh[: args.heldout], "other": random.Random(seed).sample(other, min(args.heldout, len(other)))}
        # Tuning prompts come after every held-out one: nothing chosen on them is measured on them.
        first_tune = max(args.heldout, args.tau_prompts)
        tune = {"tune": held_hh[first_tune : first_tune + args.tune_prompts]}

        generation = {k: v for k, v in overrides.items() if k.startswith(("model.", "generation."))}
        base_cfg = build_config(seed=seed, **generation)
        model_dir = resolve_model_dir(base_cfg.model)
        device = resolve_device(base_cfg.model)
        base_hash = policy_key(base_cfg)
        base_dir = seed_folder(root, seed, args) / "base" / base_hash
        progress(f"seed {seed}: base policy's held-out samples and tau set")
        base_gens = held_out_samples(base_cfg, model_dir, None, heldout, seed, base_dir / f"heldout_{args.heldout}")
        if args.judge_noise and args.label_lists == "heldout":  # labels only: these samples are all it needs
            label_sets[seed] = label_lists(base_gens, {}, "heldout")
            continue
        # The tau set: more held-out prompts, more base-policy responses each (the tau is cheap to
        # score, and a list of 4 responses moves it only in steps of 1/3).
        tau_cfg = build_config(seed=seed, **{**generation, "generation.num_samples": args.tau_samples})
        tau_key = f"{base_hash}_{args.tau_prompts}x{args.tau_samples}"
        tau_prompts = {"hh": held_hh[: args.tau_prompts], "other": random.Random(seed + 1).sample(other, min(args.tau_prompts, len(other)))}
        tau_set = held_out_samples(tau_cfg, model_dir, None, tau_prompts, seed + 1, base_dir / f"tau_{args.tau_prompts}x{args.tau_samples}")
        if args.judge_noise:  # labels only, of the tau set
            label_sets[seed] = label_lists(base_gens, tau_set, "tau")
            continue
        base = {
            "key": base_hash,
            "generation": generation,
            "gens": base_gens,
            "tau_set": tau_set,
            "tau_key": tau_key,
            "tau_scores": tau_scores(base_dir, model_dir, None, tau_set, base_cfg, device, tau_key),
            "fluency": fluency(base_dir / f"heldout_{args.heldout}", model_dir, base_gens, base_cfg, device, str(args.heldout)),
        }
        if seed == args.sweep_seed and args.budget is None and args.noisy_calls is None:  # the plain loop's sweep (only without arms)
            base["tune"] = tune
            base["tune_gens"] = held_out_samples(base_cfg, model_dir, None, tune, seed, base_dir / f"tune_{args.tune_prompts}")
        if args.budget is not None or args.noisy_calls is not None:
            if args.budget is not None:
                arms, noise = budget_arms(args.budget, args.selection, overrides), None
            else:
                arms = noise_arms(args.noisy_calls, args.consistency, args.min_confidence, overrides)
                noise = JudgeNoise(args.position_bias, args.swap_prob, seed)
            for rule in rules:
                base_tau = taus(rule, base["tau_set"], base["tau_scores"])
                terms = {kind: {"per_prompt": prompt_properties(rule, base["gens"][kind]), "tau_per_prompt": base_tau[kind]["tau_per_prompt"]}
                         for kind in heldout}
                res = {"base": terms}
                for name, arm in arms.items():
                    res[name] = run_arm(rule, seed, args, name, arm, train_prompts_path, heldout, base, root, tag, noise)
                    shown = {k: ({f: x for f, x in v.items() if f not in ("per_prompt", "tau_per_prompt")} if k in heldout else v)
                             for k, v in res[name].items()}
                    print(json.dumps({"seed": seed, "rule": rule.name, "run": name, **shown}), file=sys.stderr, flush=True)
                per_rule[rule.name].append(res)
            continue
        for rule in rules:
            if seed == args.sweep_seed:
                _, cyc_run, _ = run_cyclealign(rule, seed, args, overrides, train_prompts_path, root, tag)
                choices[rule.name] = choose_plain_point(rule, args, grid, train_prompts_path, base, cyc_run, root)
            point = PlainLoopPoint(**choices[rule.name]["point"])
            res = run_rule(rule, seed, args, overrides, train_prompts_path, heldout, base, root, tag, point)
            per_rule[rule.name].append(res)
            shown = {
                k: ({f: x for f, x in v.items() if f not in ("per_prompt", "tau_per_prompt")} if k in heldout else v)
                for k, v in res.items()
            }
            print(json.dumps({"seed": seed, "rule": rule.name, **shown}), file=sys.stderr, flush=True)

    if args.judge_noise:
        print(json.dumps(label_only(args, rules, seeds, label_sets)))
        return 0
    summary: dict[str, Any] = {
        "bench": "efficacy",
        "config": overrides,
        "tag": tag,
        "seeds": seeds,
        "rounds": args.rounds,
        "prompts_per_round": args.prompts_per_round,
        "heldout_per_kind": args.heldout,
        "tau_set": {"prompts_per_kind": args.tau_prompts, "responses_per_prompt": args.tau_samples},
        "plain_loop_sweep": {"grid": [p.name for p in grid], "tune_prompts": args.tune_prompts, "sweep_seed": args.sweep_seed,
                             "max_fluency_drop": args.max_fluency_drop},
        "wall_s": round(time.perf_counter() - _T0, 1),
        "rules": {},
    }
    if args.budget is not None or args.noisy_calls is not None:
        summary.pop("plain_loop_sweep")
        if args.budget is not None:
            summary.update(bench="efficacy-budget", budget=args.budget, selection=args.selection)
            pairs = BUDGET_PAIRS
        else:
            summary.update(bench="efficacy-noisy-judge", calls_per_round=args.noisy_calls, consistency=args.consistency,
                           min_confidence=args.min_confidence, judge={"position_bias": args.position_bias, "swap_prob": args.swap_prob})
            pairs = NOISE_PAIRS
        for name, runs in per_rule.items():
            split = "tuning" if name in TUNING_RULES else "check" if name in CHECK_RULES else "other"
            arm_runs = [{k: v for k, v in r.items() if k != "base"} for r in runs]
            summary["rules"][name] = {"split": split, "kind": RULES[name].kind,
                                      **summarise_arms(list(heldout), [r["base"] for r in runs], arm_runs, pairs)}
        print(json.dumps(summary))
        return 0
    for name, runs in per_rule.items():
        split = "tuning" if name in TUNING_RULES else "check" if name in CHECK_RULES else "other"
        summary["rules"][name] = {
            "split": split,
            "plain_loop": {k: choices[name][k] for k in ("chosen", "chosen_unbounded", "before", "scores", "fluency_before", "fluency", "max_fluency_drop")},
            **summarise_rule(RULES[name], runs),
        }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
