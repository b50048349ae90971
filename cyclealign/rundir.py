"""Run-directory layout and the per-round phase manifest that makes runs resumable (the atomic
writes it relies on are :mod:`cyclealign.files`).

Layout of ``runs/<name>/``::

    config.json                 the resolved Config (no secrets)
    metrics.jsonl               one line per finished round
    server.log                  the embedded ranker server's log (when one is started)
    policy_server.log           the vLLM policy server's log (generation.backend "vllm", when started)
    ranker_calls.jsonl          the cost ledger: one line per paid ranker call (round, tokens, USD)
    events.jsonl                one JSON line per event (phase start/end, errors, budget, lock, promotion)
    lock / lock.json            the run lock (flock) and its holder (pid, host, start time)
    promoted                    the adapter path of the last round that passed --promote-if
    report/                     `cyclealign report` (report.html and its plots)
    rewound/<time>/             rounds `cyclealign reparse` set aside (they trained on a stale policy)
    round_000/
        prompts.json            the prompts the round uses (ids and content hashes), written before it generates
        manifest.json           {"phases": {"generate": {...}, ...}}: a phase is done when listed
        generation_batches.jsonl  phase "generate": each finished batch's samples, appended as it
                                finishes (a resumed round samples only the others); removed
                                once generations.jsonl is written
        generations.jsonl       phase "generate"
        selection.json          with ranker.calls_per_round: which candidates the ranker ranks (signal,
                                seed, every candidate's score), written before the first ranking call
        rankings.jsonl          phase "rank": appended one line per ranker answer as it arrives
                                (with ranker.pipeline, while generation still runs),
                                rewritten in prompt order when the phase ends
        ranker_batch.json       phase "rank" with ranker.batch: the Batch API job being waited on
        agreement.jsonl         phase "agreement"
        demo_pool.jsonl         the dynamic demonstration pool after this round
        adapter/                phase "train": the PEFT LoRA adapter
        merged/                 phase "train", with train.merge: base + adapter merged
        train.json              phase "train": training summary and per-step log
        train.log               phase "train" under a launcher: the launched process's output
    eval/
        manifest.json           {"evaluations": [...]}: one entry per finished evaluation (policies,
                                decoding, token cap, wall_s); a resumed run skips those it lists
        summary.jsonl ...       the evaluation's results (see :mod:`cyclealign.evaluation.runner`)

Every file except ``rankings.jsonl`` and ``generation_batches.jsonl`` is written to a temporary file and renamed into place;
the manifest is written last, so a crash leaves either a finished phase or none.
``rankings.jsonl`` and ``ranker_calls.jsonl`` are appended so that no ranker answer is lost
mid-phase (the raw replies themselves are in the reply cache before they are used, see
:mod:`cyclealign.ranker.cache`); a torn last line (crash during a write) is ignored on reading.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyclealign.errors import RunDirError
from cyclealign.files import append_jsonl, atomic_write_text, read_json, read_jsonl, read_records, write_json, write_jsonl
from cyclealign.records import AgreementRow, Generation, RankResult, Sample


if TYPE_CHECKING:
    from cyclealign.config import Config

class Phase(StrEnum):
    """The phases of a round, in order, and the held-out evaluation. A ``str`` enum: each member
    is its name string wherever it is written (manifests, events, ``phase_s``) or compared."""

    GENERATE = "generate"
    RANK = "rank"
    AGREEMENT = "agreement"
    TRAIN = "train"
    METRICS = "metrics"
    EVAL = "eval"
    """Not a round's phase: an evaluation, recorded in ``eval/manifest.json``."""


PHASES = (Phase.GENERATE, Phase.RANK, Phase.AGREEMENT, Phase.TRAIN, Phase.METRICS)
"""A round's phases, in order: each is done once its round's manifest lists it."""


def round_dir_name(index: int) -> str:
    """The folder name of round ``index`` (``round_000``, ``round_001``, ...)."""
    return f"round_{index:03d}"


class GenerationJournal:
    """A round's finished generation batches (``round_k/generation_batches.jsonl``), one JSON line
    each, appended and fsynced as each batch finishes, with the random stream's state it left: a
    run killed or failed mid-generation samples only the batches not yet written, and draws what
    an uninterrupted run draws (:class:`cyclealign.policy.base.BatchJournal`). A torn last line
    (a kill mid-append) is that batch unwritten.

    Raises:
        RunDirError: (on open) a line other than the last is not valid JSON.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._batches = {row["key"]: (row["samples"], row.get("stream")) for row in read_jsonl(path)}
        self.reused = 0
        """Batches :meth:`lookup` found (not sampled again)."""

    def __len__(self) -> int:
        return len(self._batches)

    def lookup(self, key: str) -> tuple[list[list[Sample]], str | None] | None:
        found = self._batches.get(key)
        if found is None:
            return None
        self.reused += 1
        rows, stream = found
        return [[Sample(list(ids), float(lp), bool(fin)) for ids, lp, fin in row] for row in rows], stream

    def record(self, key: str, samples: list[list[Sample]], stream: str | None = None) -> None:
        rows = [[[list(s.token_ids), float(s.logprob_mean), bool(s.finished)] for s in row] for row in samples]
        append_jsonl(self.path, {"key": key, "samples": rows, **({"stream": stream} if stream is not None else {})})
        self._batches[key] = (rows, stream)


class RoundDir:
    """One round's folder and its phase manifest."""

    def __init__(self, path: Path, index: int) -> None:
        self.path = path
        self.index = index
        self.generations = path / "generations.jsonl"
        self.generation_batches = path / "generation_batches.jsonl"
        self.rng_state = path / "rng_state.pt"  # this process's torch RNG state as generation left it
        self.rankings = path / "rankings.jsonl"
        self.selection = path / "selection.json"  # ranker.calls_per_round: the candidates ranked (cyclealign.data.candidates)
        self.agreement = path / "agreement.jsonl"
        self.demo_pool = path / "demo_pool.jsonl"
        self.adapter = path / "adapter"
        self.merged = path / "merged"
        self.train = path / "train.json"
        self.train_log = path / "train.log"  # a launched training process's output
        self.ranker_batch = path / "ranker_batch.json"  # ranker.batch: the Batch API job being waited on
        self.prompts_file = path / "prompts.json"
        self._manifest = path / "manifest.json"

    def read_prompt_ids(self) -> list[tuple[str, str]] | None:
        """``(prompt id, content hash)`` of each prompt the round uses, in order, as recorded
        before it generated; for a round from before prompts were recorded, its generations'
        ids (hash ``""``: unknown); None when the round has not started."""
        if self.prompts_file.is_file():
            return [(p["id"], p["hash"]) for p in read_json(self.prompts_file, "prompts")]
        if self.generations.is_file():
            return [(d["prompt_id"], "") for d in read_jsonl(self.generations)]
        return None

    def record_prompts(self, prompts: list[Any], source: str) -> None:
        """Write ``prompts.json``: the round's prompts (ids and content hashes) and their source."""
        write_json(
            self.prompts_file,
            {"round": self.index, "source": source, "prompts": [{"id": p.id, "hash": p.content_hash} for p in prompts]},
        )

    def phases(self) -> dict[str, dict[str, Any]]:
        """Finished phases with what each recorded (e.g. wall seconds)."""
        if not self._manifest.exists():
            return {}
        return read_json(self._manifest, "phases")

    def read_generations(self) -> list[Generation]:
        """The round's generations (phase "generate"), in prompt order."""
        return read_records(self.generations, Generation)

    def read_agreement(self) -> list[AgreementRow]:
        """The round's agreement rows (phase "agreement"), one per ranked prompt, in prompt order."""
        return read_records(self.agreement, AgreementRow)

    def read_rankings(self, order: Sequence[str] | None = None) -> list[RankResult]:
        """The latest black-box result per prompt (a retried API error replaces the earlier line), in
        prompt order: ``order`` (prompt ids), else that of ``generations.jsonl`` (a prompt without
        a generation comes last, in file order)."""
        latest: dict[str, RankResult] = {}
        for r in read_records(self.rankings, RankResult):
            latest[r.prompt_id] = r
        if order is None:
            order = [d["prompt_id"] for d in read_jsonl(self.generations)]
        position = {pid: i for i, pid in enumerate(order)}
        return sorted(latest.values(), key=lambda r: position.get(r.prompt_id, len(position)))

    def has_adapter(self) -> bool:
        """Whether the round's train phase is done and saved an adapter (a round with no ranked prompt saves none)."""
        train = self.phases().get(Phase.TRAIN)
        return bool(train and train.get("adapter"))

    def is_done(self, phase: Phase) -> bool:
        """Whether ``phase`` is recorded as finished in the manifest."""
        return phase in self.phases()

    def reset(self, *phases: Phase) -> None:
        """Mark ``phases`` as not done (their outputs are redone by the next resume)."""
        kept = {p: v for p, v in self.phases().items() if p not in phases}
        write_json(self._manifest, {"round": self.index, "phases": kept})

    def mark_done(self, phase: Phase, **info: Any) -> None:
        """Record ``phase`` as finished; call only after its outputs are written."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        phases = self.phases()
        phases[phase] = info
        write_json(self._manifest, {"round": self.index, "phases": phases})


class RunDir:
    """The run directory: config, metrics, and one :class:`RoundDir` per round."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.server_log = self.path / "server.log"
        self.server_pid = self.path / "server.pid"  # the embedded ranker server's, while it runs
        self.policy_server_log = self.path / "policy_server.log"
        self.policy_server_pid = self.path / "policy_server.pid"  # the vLLM policy server's, while it runs
        self.ranker_calls = self.path / "ranker_calls.jsonl"
        self.events = self.path / "events.jsonl"
        self.lock = self.path / "lock"  # the flock itself (cyclealign.runlock)
        self.lock_info = self.path / "lock.json"  # its holder
        self.promoted = self.path / "promoted"  # the adapter path of the last round that passed --promote-if
        self.eval_dir = self.path / "eval"
        self.eval_manifest = self.eval_dir / "manifest.json"
        self.eval_summary = self.eval_dir / "summary.jsonl"
        self.eval_samples = self.eval_dir / "samples.jsonl"
        self.report_dir = self.path / "report"  # `cyclealign report`'s default folder
        self.rewound = self.path / "rewound"  # rounds `reparse` set aside, one folder per time

    def round(self, index: int) -> RoundDir:
        """Round ``index``'s folder (``round_000`` ...), whether or not it exists yet."""
        return RoundDir(self.path / round_dir_name(index), index)

    def prepare(self, config_json: str, resume: bool) -> dict[str, list[Any]]:
        """Create the run directory, or check it for ``--resume``, and save the config:
        :meth:`check_config` then :meth:`save_config`.

        Returns:
            The resumable fields that changed, ``{field: [saved, now]}`` (empty for a new run).
        Raises:
            RunDirError: as :meth:`check_config`.
        """
        changed = self.check_config(config_json, resume)
        self.save_config(config_json)
        return changed

    def check_config(self, config_json: str, resume: bool) -> dict[str, list[Any]]:
        """Whether the run may start (``resume`` false) or resume with ``config_json``; writes nothing.

        A new run refuses a directory that already holds a run (nothing is overwritten);
        a resumed run must find one, and its saved config must match except for the fields
        in :data:`~cyclealign.config.RESUMABLE_CHANGES`: where and how the run works (its own
        path, the prompt source's path, the device, URLs, concurrency, budget...), not what it
        computes.

        Returns:
            The resumable fields that changed, ``{field: [saved, now]}`` (empty for a new run).
        Raises:
            RunDirError: on either mismatch, naming the directory and each differing field
                with its saved and its new value.
        """
        if self.config.exists() and not resume:
            raise RunDirError(f"{self.path} already holds a run: pass --resume to continue it, or pick another --run-dir")
        if resume and not self.config.exists():
            raise RunDirError(f"{self.path}: nothing to resume (no config.json)")
        if not resume:
            return {}
        from cyclealign.config import RESUMABLE_CHANGES, Config, with_saved_before
        from cyclealign.config.files import flatten

        # a field added since the run was saved counts as its default there (its SAVED_BEFORE value where declared)
        defaults = flatten(Config().model_dump(mode="json"))
        old = {**defaults, **flatten(with_saved_before(read_json(self.config)))}
        new = {**defaults, **flatten(json.loads(config_json))}
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        diff = [k for k in changed if k not in RESUMABLE_CHANGES]
        if diff:
            shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
            raise RunDirError(
                f"{self.path}: --resume with settings that change the run's results ({shown}); "
                "resume with the saved values, or start a new --run-dir"
            )
        return {k: [old.get(k), new.get(k)] for k in changed}

    def save_config(self, config_json: str) -> None:
        """Write ``config.json`` (atomically): the run exists from now on."""
        atomic_write_text(self.config, config_json)

    def metrics_lines(self) -> list[dict[str, Any]]:
        """The ``metrics.jsonl`` lines as the rounds' manifests hold them: the ``metrics`` phase of
        each finished round, from round 0 up to the first unfinished one, without its wall seconds."""
        return [
            {key: v for key, v in self.round(k).phases()[Phase.METRICS].items() if key != "wall_s"}
            for k in range(self.finished_rounds())
        ]

    def rewrite_metrics(self) -> list[dict[str, Any]]:
        """Rewrite ``metrics.jsonl`` from the rounds' manifests (:meth:`metrics_lines`; a rewound
        round's line goes with it). Returns the lines written."""
        lines = self.metrics_lines()
        write_jsonl(self.metrics, lines)
        return lines

    def reap_stale_servers(self) -> list[int]:
        """Stop the servers an earlier, killed run of this directory left running (the embedded
        ranker's and the vLLM policy server's, by their pid files:
        :func:`cyclealign.serving.reap_stale_server`); call it holding the run lock. Returns
        their process ids."""
        from cyclealign.serving import reap_stale_server

        stopped = [reap_stale_server(p) for p in (self.server_pid, self.policy_server_pid) if p.exists()]
        return [pid for pid in stopped if pid is not None]

    def read_config(self) -> Config:
        """The run's saved config (``config.json``).

        Raises:
            RunDirError: ``config.json`` is missing (naming the directory: no run there).
            ConfigError: it is not a valid config (naming the file and fields).
        """
        from cyclealign.config import Config

        if not self.config.is_file():
            raise RunDirError(f"{self.path}: no run here ({self.config.name}: not found)")
        return Config.from_saved_file(self.config)

    def ranker_spend(self, round_index: int | None = None) -> dict[str, float]:
        """Paid ranker calls from the cost ledger: ``{"calls", "prompt_tokens", "completion_tokens", "cost_usd"}``,
        for the whole run or one round."""
        rows = [r for r in read_jsonl(self.ranker_calls) if round_index is None or r.get("round") == round_index]
        return {
            "calls": len(rows),
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "completion_tokens": sum(r["completion_tokens"] for r in rows),
            "cost_usd": sum(r["cost_usd"] for r in rows),
        }

    def record_call(self, round_index: int | str, call: dict[str, Any]) -> None:
        """Append one paid ranker call (a ranker ``on_call`` record) to the cost ledger as round
        ``round_index`` (a round index, or ``"eval"``); survives the process being killed."""
        append_jsonl(self.ranker_calls, {"round": round_index, **call}, fsync=False)

    def evaluations(self) -> list[dict[str, Any]]:
        """The finished evaluations, oldest first: the entries of ``eval/manifest.json`` (each
        with ``evaluated``, the policies evaluated, e.g. ``["base", "round 1"]``, ``decoding``,
        ``max_new_tokens`` and ``wall_s``); empty when nothing was evaluated."""
        if not self.eval_manifest.exists():
            return []
        return read_json(self.eval_manifest, "evaluations")

    def record_evaluation(self, **info: Any) -> None:
        """Add one finished evaluation to ``eval/manifest.json`` (atomically); call only after
        its results are written."""
        self.eval_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.eval_manifest, {"evaluations": [*self.evaluations(), info]})

    def finished_rounds(self) -> int:
        """Number of leading rounds whose every phase is done."""
        k = 0
        while self.round(k).is_done(Phase.METRICS):
            k += 1
        return k

    def latest_trained_round(self, upto: int) -> int | None:
        """The latest round ``k <= upto`` whose train phase saved an adapter (None: none did;
        a round that ranked nothing trains none)."""
        return next((k for k in range(upto, -1, -1) if self.round(k).has_adapter()), None)

    def latest_adapter(self, before_round: int) -> Path | None:
        """The adapter the policy of round ``before_round`` starts from: that of the latest round
        before it that trained one (None for round 0 or if none was trained)."""
        k = self.latest_trained_round(before_round - 1)
        return None if k is None else self.round(k).adapter

    def read_promoted(self) -> Path | None:
        """The adapter path in ``promoted`` (None when no round was promoted)."""
        return Path(self.promoted.read_text().strip()) if self.promoted.is_file() else None
