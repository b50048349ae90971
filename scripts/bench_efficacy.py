"""Efficacy benchmark: do CycleAlign rounds move the policy toward the black box's preference?

For each known rule (:mod:`cyclealign.efficacy.rules`: a marker word, a paragraph format, a cautious
stance, ...) and each seed, this script

1. starts a rule black box (:class:`cyclealign.efficacy.server.RuleBlackBox`, a real local
   OpenAI-compatible server that ranks responses by the rule, so the right ranking is certain);
2. runs ``cyclealign iterate`` (the library entry point, with the project's defaults plus any
   ``--set`` overrides) for ``--rounds`` rounds of ``--prompts-per-round`` single-turn HH-RLHF
   harmless-base prompts against it;
3. trains the plainest correct baseline on the same prompts, the same number of samples and
   the same number of rounds: :func:`baseline_pro`, a short PRO loop written here (LoRA r=16,
   lr 2e-4, two passes over each round's lists, Plackett-Luce over length-normalised
   log-likelihoods + per-token NLL of the best response; its round 0 trains on the very
   samples the CycleAlign run drew);
4. measures on held-out prompts of two kinds -- HH prompts never trained on and the shipped
   instruction prompts (``cyclealign/assets/default_prompts.jsonl``) -- the rule's property
   over each policy's own samples (before = base policy, after = each trained policy), and
   the Kendall tau-b between each policy's log-likelihood ranking of fixed responses and the
   rule's scores. The tau has its own, larger held-out set (``--tau-prompts`` prompts of each
   kind, ``--tau-samples`` base-policy responses each): it only needs scoring, not sampling,
   and a list of 4 responses moves it in steps of 1/3.

It prints one JSON line: per rule, per held-out kind, the property before and after for both
methods, ``moved`` (after - before), ``ratio`` = moved(cyclealign) / moved(baseline), the tau
before and after, the wall seconds of each CycleAlign run, and the mean and spread (min, max)
over the seeds; per rule and kind, ``ratio_of_means`` (the seed-mean movements' ratio) and
``ratio_of_means_90``, its 90% percentile-bootstrap interval from resampling the held-out
prompts (:func:`cyclealign.efficacy.measure.bootstrap_ratio`): how far the measured ratio can
be trusted with this many prompts; and ``tau_rise_cyclealign_90`` / ``tau_rise_baseline_90``, the
90% interval of the seed-mean rise of the held-out tau (after - before), likewise
(:func:`cyclealign.efficacy.measure.bootstrap_tau_change`). Base-policy and baseline results are cached under
``--out``, keyed by the policy and its sampling (:func:`policy_key`: ``model.*`` and
``generation.*`` overrides apply to the base policy and the baseline too); they do not depend
on the rest of the config, so a sweep of ``train.*`` values only re-runs CycleAlign.

Usage::

    .venv/bin/python scripts/bench_efficacy.py                       # defaults, 3 rules, seeds 0,1,2
    .venv/bin/python scripts/bench_efficacy.py --rules list --seeds 0 --set train.epochs=1

Needs the HH-RLHF file (``--hh``, default ``../shared/data/hh-rlhf/harmless-base-test.jsonl.gz``).
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
from cyclealign.data.selection import select_round_prompts  # noqa: E402
from cyclealign.data.sources import load_prompts  # noqa: E402
from cyclealign.efficacy.measure import (  # noqa: E402
    bootstrap_ratio,
    bootstrap_tau_change,
    loglik_scores,
    prompt_properties,
    prompt_taus,
    property_rate,
    rule_tau,
)
from cyclealign.efficacy.rules import RULES, Rule, get_rule  # noqa: E402
from cyclealign.efficacy.server import RuleBlackBox  # noqa: E402
from cyclealign.loop import iterate  # noqa: E402
from cyclealign.models.loading import load_causal_lm, resolve_device, resolve_model_dir  # noqa: E402
from cyclealign.policy import make_policy  # noqa: E402
from cyclealign.records import Generation, PromptRecord  # noqa: E402
from cyclealign.resources import default_prompts_path  # noqa: E402
from cyclealign.rundir import RunDir, read_jsonl, write_json, write_jsonl  # noqa: E402

DEFAULT_HH = Path(__file__).resolve().parent.parent.parent / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"


# -- the plainest correct baseline: a short PRO loop -----------------------------------------
def baseline_pro(
    model_dir: str, rounds: list[list[Generation]] | None, rank, sample, cfg, out: Path, device: torch.device
) -> Path:
    """A plain PRO loop (Song et al. 2023, Eq. 7 with T=1, plus NLL on the best response).

    ``rounds[0]`` are round 0's generations (shared with the CycleAlign run); later rounds'
    generations come from ``sample(round_index, adapter_dir)``. ``rank(gen)`` returns the
    black-box ranking (0-based, best first). LoRA r=16 on all linear layers, AdamW lr 2e-4,
    two passes over each round's lists, one list per step; the model and optimiser carry over
    across rounds. Returns the last adapter's folder.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    base = load_causal_lm(model_dir, torch.float32).to(device)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    adapter = None
    for k in range(cfg.rounds):
        gens = rounds[0] if k == 0 else sample(k, adapter)
        lists = [(g, rank(g)) for g in gens if len(g.responses) >= 2]
        model.train()
        for _ in range(2):
            for g, ranking in random.Random(cfg.seed + k).sample(lists, len(lists)):
                resp = [g.response_token_ids[i] for i in ranking]
                width = len(g.prompt_token_ids) + max(map(len, resp))
                ids = torch.zeros((len(resp), width), dtype=torch.long)
                att = torch.zeros_like(ids)
                lab = torch.zeros_like(ids, dtype=torch.bool)
                for r, toks in enumerate(resp):
                    seq = g.prompt_token_ids + toks
                    ids[r, : len(seq)] = torch.tensor(seq)
                    att[r, : len(seq)] = 1
                    lab[r, len(g.prompt_token_ids) : len(seq)] = True
                logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits[:, :-1]
                tok = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1)
                mask = lab[:, 1:].to(device).float()
                mean = (tok * mask).sum(-1) / mask.sum(-1)  # [N] length-normalised log-likelihood, best first
                pl = sum(torch.logsumexp(mean[i:], 0) - mean[i] for i in range(len(resp) - 1))
                loss = pl - mean[0]
                opt.zero_grad()
                loss.backward()
                opt.step()
        adapter = out / f"round_{k:03d}"
        model.save_pretrained(str(adapter))
    return adapter


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


def taus(rule: Rule, tau_set: dict, scores: dict) -> dict[str, dict[str, Any]]:
    """Per kind, the mean and per-prompt Kendall tau-b between the rule and the policy's
    log-likelihood scores of the tau set's responses."""
    return {
        kind: {"tau": rule_tau(rule, gens, scores[kind]), "tau_per_prompt": prompt_taus(rule, gens, scores[kind])}
        for kind, gens in tau_set.items()
    }


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


def spread(values: list[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "min": None, "max": None}
    return {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}


# -- one seed, one rule -----------------------------------------------------------------------
def run_rule(rule: Rule, seed: int, args, overrides, train_prompts_path: Path, heldout, base, root: Path, tag: str):
    """CycleAlign and the baseline for one rule and seed; returns their held-out measures."""
    seed_dir = seed_folder(root, seed, args)
    cfg = build_config(
        **{
            "run_dir": str(seed_dir / tag / rule.name),
            "prompts": str(train_prompts_path),
            "rounds": args.rounds,
            "prompts_per_round": args.prompts_per_round,
            "seed": seed,
            "ranker.model": f"rule-{rule.name}",
            "ranker.cache_path": str(root / "ranker_cache.sqlite"),
            **overrides,
            "ranker.base_url": "http://127.0.0.1:1/v1",  # replaced below by the server's port
        }
    )
    device = resolve_device(cfg.model)
    model_dir = resolve_model_dir(cfg.model)
    run_dir = Path(cfg.run_dir)
    result_path = run_dir / "bench_result.json"
    if result_path.exists() and not args.fresh:
        cyc = json.loads(result_path.read_text())
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        with RuleBlackBox(rule) as box:
            cfg.ranker.base_url = box.base_url
            t0 = time.perf_counter()
            metrics = iterate(cfg, environ={"OPENAI_API_KEY": "rule-black-box"})
            wall = time.perf_counter() - t0
        cyc = {
            "wall_s": wall,
            "train": [
                {k: m.get(k) for k in ("agreement_rate", "kendall_tau", "train_loss", "train_ranking_accuracy")}
                for m in metrics
            ],
        }
        write_json(result_path, cyc)
    adapter = RunDir(run_dir).latest_adapter(cfg.rounds)
    cyc_samples = run_dir / f"heldout_{args.heldout}"
    cyc_own = held_out_samples(cfg, model_dir, adapter, heldout, seed, cyc_samples)
    cyc_scores = tau_scores(run_dir, model_dir, adapter, base["tau_set"], cfg, device, base["tau_key"])

    # The baseline does not depend on the training config, only on the policy and how it samples
    # (``model.*`` / ``generation.*`` overrides): one per (seed, policy key, rule).
    bl_dir = seed_dir / "baseline" / base["key"] / rule.name
    bl_path = bl_dir / "bench_result.json"
    bl_cfg = build_config(
        prompts=str(train_prompts_path), rounds=args.rounds, prompts_per_round=args.prompts_per_round, seed=seed,
        **base["generation"],
    )
    if bl_path.exists():
        bl = json.loads(bl_path.read_text())
    else:
        policy = make_policy(bl_cfg, model_dir)
        all_train = load_prompts(train_prompts_path)

        def sample(k: int, adapter: Path) -> list[Generation]:
            policy.load_adapter(adapter)
            return policy.sample(select_round_prompts(all_train, k, args.prompts_per_round, seed), seed=seed + k)

        round0 = RunDir(run_dir).round(0).read_generations()
        t0 = time.perf_counter()
        baseline_pro(model_dir, [round0], shuffled_rank(rule, seed), sample, bl_cfg, bl_dir, device)
        bl = {"wall_s": time.perf_counter() - t0}
        policy.close()
        del policy
        write_json(bl_path, bl)
    bl_adapter = bl_dir / f"round_{args.rounds - 1:03d}"
    bl_samples = bl_dir / f"heldout_{args.heldout}"
    bl_own = held_out_samples(bl_cfg, model_dir, bl_adapter, heldout, seed, bl_samples)
    bl_scores = tau_scores(bl_dir, model_dir, bl_adapter, base["tau_set"], bl_cfg, device, base["tau_key"])

    tau_of = {
        "before": taus(rule, base["tau_set"], base["tau_scores"]),
        "cyclealign": taus(rule, base["tau_set"], cyc_scores),
        "baseline": taus(rule, base["tau_set"], bl_scores),
    }
    out: dict[str, Any] = {"wall_s": cyc["wall_s"], "baseline_wall_s": bl["wall_s"], "train": cyc.get("train")}
    for kind in heldout:
        per_prompt = {
            name: prompt_properties(rule, gens[kind])
            for name, gens in (("before", base["gens"]), ("cyclealign", cyc_own), ("baseline", bl_own))
        }
        b, c, p = (property_rate(rule, gens[kind]) for gens in (base["gens"], cyc_own, bl_own))
        out[kind] = {
            "before": b,
            "cyclealign": c,
            "baseline": p,
            "moved_cyclealign": c - b,
            "moved_baseline": p - b,
            "ratio": (c - b) / (p - b) if p > b else None,
            **{f"tau_{name}": t[kind]["tau"] for name, t in tau_of.items()},
            "per_prompt": per_prompt,
            "tau_per_prompt": {name: t[kind]["tau_per_prompt"] for name, t in tau_of.items()},
        }
    return out


def summarise_rule(rule: Rule, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One rule's entry of the printed summary from its per-seed :func:`run_rule` results: per
    held-out kind the spread of each figure over the seeds, ``ratio_of_means`` with its bootstrap
    interval, and the bootstrap intervals of each method's tau rise."""
    entry: dict[str, Any] = {"kind": rule.kind, "run_wall_s": spread([r["wall_s"] for r in runs])}
    for kind in ("hh", "other"):
        entry[kind] = {
            field: spread([r[kind][field] for r in runs])
            for field in ("before", "cyclealign", "baseline", "moved_cyclealign", "moved_baseline", "ratio",
                          "tau_before", "tau_cyclealign", "tau_baseline")
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", default="marker,paragraphs,caution", help=f"comma-separated, of: {', '.join(RULES)}")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (spread is reported over them)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompts-per-round", type=int, default=12)
    ap.add_argument("--heldout", type=int, default=48, help="held-out prompts of each kind the property is measured on (other: at most the 48 shipped)")
    ap.add_argument(
        "--tau-prompts", type=int, default=48, help="held-out prompts of each kind the Kendall tau is measured on (other: at most the 48 shipped)"
    )
    ap.add_argument("--tau-samples", type=int, default=8, help="base-policy responses per tau prompt (2-16)")
    ap.add_argument("--hh", type=Path, default=DEFAULT_HH, help="HH-RLHF harmless-base JSONL[.gz]")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_efficacy"), help="work folder (caches base/baseline)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--tag", default=None, help="name of this config's runs under --out (default: hash of --set)")
    ap.add_argument("--fresh", action="store_true", help="re-run CycleAlign even when this config's result exists")
    args = ap.parse_args(argv)

    if not args.hh.exists():
        print(f"{args.hh}: HH-RLHF harmless-base file not found (pass --hh PATH)", file=sys.stderr)
        return 2
    rules = [get_rule(r.strip()) for r in args.rules.split(",") if r.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    overrides = parse_set(args.set)
    tag = args.tag or "cfg-" + hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
    root = args.out
    root.mkdir(parents=True, exist_ok=True)

    hh = single_turn(load_prompts(args.hh))
    train_prompts_path = root / "hh_single_turn.jsonl"
    if not train_prompts_path.exists():
        write_jsonl(train_prompts_path, [p.to_json() for p in hh])
    train_prompts = load_prompts(train_prompts_path)
    other = load_prompts(default_prompts_path())

    per_rule: dict[str, list[dict[str, Any]]] = {r.name: [] for r in rules}
    t_start = time.perf_counter()
    for seed in seeds:
        trained = {
            p.query_text
            for k in range(args.rounds)
            for p in select_round_prompts(train_prompts, k, args.prompts_per_round, seed)
        }
        held_hh = [p for p in train_prompts if p.query_text not in trained]
        random.Random(seed + 7919).shuffle(held_hh)
        heldout = {"hh": held_hh[: args.heldout], "other": random.Random(seed).sample(other, min(args.heldout, len(other)))}

        generation = {k: v for k, v in overrides.items() if k.startswith(("model.", "generation."))}
        base_cfg = build_config(seed=seed, **generation)
        model_dir = resolve_model_dir(base_cfg.model)
        device = resolve_device(base_cfg.model)
        base_hash = policy_key(base_cfg)
        base_dir = seed_folder(root, seed, args) / "base" / base_hash
        base_gens = held_out_samples(base_cfg, model_dir, None, heldout, seed, base_dir / f"heldout_{args.heldout}")
        # The tau set: more held-out prompts, more base-policy responses each (the tau is cheap to
        # score, and a list of 4 responses moves it only in steps of 1/3).
        tau_cfg = build_config(seed=seed, **{**generation, "generation.num_samples": args.tau_samples})
        tau_key = f"{base_hash}_{args.tau_prompts}x{args.tau_samples}"
        tau_prompts = {"hh": held_hh[: args.tau_prompts], "other": random.Random(seed + 1).sample(other, min(args.tau_prompts, len(other)))}
        tau_set = held_out_samples(tau_cfg, model_dir, None, tau_prompts, seed + 1, base_dir / f"tau_{args.tau_prompts}x{args.tau_samples}")
        base = {
            "key": base_hash,
            "generation": generation,
            "gens": base_gens,
            "tau_set": tau_set,
            "tau_key": tau_key,
            "tau_scores": tau_scores(base_dir, model_dir, None, tau_set, base_cfg, device, tau_key),
        }
        for rule in rules:
            res = run_rule(rule, seed, args, overrides, train_prompts_path, heldout, base, root, tag)
            per_rule[rule.name].append(res)
            shown = {
                k: ({f: x for f, x in v.items() if f not in ("per_prompt", "tau_per_prompt")} if k in heldout else v)
                for k, v in res.items()
            }
            print(json.dumps({"seed": seed, "rule": rule.name, **shown}), file=sys.stderr, flush=True)

    summary: dict[str, Any] = {
        "bench": "efficacy",
        "config": overrides,
        "tag": tag,
        "seeds": seeds,
        "rounds": args.rounds,
        "prompts_per_round": args.prompts_per_round,
        "heldout_per_kind": args.heldout,
        "tau_set": {"prompts_per_kind": args.tau_prompts, "responses_per_prompt": args.tau_samples},
        "wall_s": round(time.perf_counter() - t_start, 1),
        "rules": {},
    }
    for name, runs in per_rule.items():
        summary["rules"][name] = summarise_rule(RULES[name], runs)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
