"""One CycleAlign round, phase by phase (Hong et al. 2023, arXiv 2310.16271, Fig. 2)::

    prompts -> generate (white-box samples N responses, scores them by log-likelihood)
            -> select (with ranker.calls_per_round: the candidates worth a paid ranking call)
            -> rank (black-box ranks them through the API, with static + dynamic demos)
            -> agreement (LCS of the two rankings; long ones join the demonstration pool)
            -> train (LoRA fine-tuning on the black-box rankings: PRO + SFT)
            -> metrics (one line in metrics.jsonl); the adapter feeds the next round.

Each phase writes its outputs to the run directory before the next starts and is then
marked done in the round's manifest; a resumed round skips finished phases, generation batches
and ranker answers already on disk (see :mod:`cyclealign.rundir`). With ``ranker.pipeline``
(the default) generate and rank overlap: each prompt is ranked as soon as its responses are
sampled (:mod:`cyclealign.pipeline`), and the rank phase ends when the last answer is in.
:mod:`cyclealign.loop` runs rounds one after another.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from cyclealign.agreement import agreement_of
from cyclealign.config import Config
from cyclealign.data.candidates import Selection, select_candidates, selection_seed
from cyclealign.demos import DemoPool, agreement_demonstration, round_demonstrations, write_pool
from cyclealign.metrics import TIMED_PHASES, round_line
from cyclealign.pipeline import RankStream
from cyclealign.policy.base import GenerationBackend
from cyclealign.policy.handle import PolicyHandle
from cyclealign.progress import Reporter, timed_phase
from cyclealign.ranker.batch import prefetch_batch
from cyclealign.ranker.client import Ranker
from cyclealign.ranker.http import CallRecord
from cyclealign.ranker.ranking import RankJob, clip_prompt, round_shuffle_seed
from cyclealign.records import AgreementRow, Demonstration, Generation, PromptRecord, RankResult, RankStatus
from cyclealign.rundir import GenerationJournal, Phase, RoundDir, RunDir
from cyclealign.files import append_jsonl, read_json, write_json, write_jsonl
from cyclealign.train.launch import save_rng_state, train_phase

log = logging.getLogger(__name__)

__all__ = ["Round"]


class Round:
    """The phases of one round. Each phase writes its outputs to ``rd`` and returns them; the next
    phase takes them as arguments. A phase the manifest lists as done (a resumed round) is not
    run again: its outputs are read back from ``rd`` once, by the phase's method, and returned."""

    def __init__(self, cfg: Config, run: RunDir, index: int, prompts: list[PromptRecord], reporter: Reporter) -> None:
        self.cfg, self.run, self.index, self.reporter = cfg, run, index, reporter
        self.rd: RoundDir = run.round(index)
        self.prompts = prompts
        self.by_id = {p.id: p for p in prompts}
        self._clipped = 0  # prompts the ranker sees cut to ranker.max_prompt_tokens

    def _timed(self, phase: Phase, total: int | None, body: Callable[[], dict[str, Any]]) -> bool:
        """Run ``phase`` unless the manifest lists it (:func:`~cyclealign.progress.timed_phase`);
        whether it ran."""
        if self.rd.is_done(phase):
            return False
        timed_phase(self.reporter, self.index, phase, total, body, lambda info: self.rd.mark_done(phase, **info))
        return True

    # -- phase 1 -------------------------------------------------------------------------
    def generate(self, policy: Callable[[], GenerationBackend], stream: RankStream | None = None) -> list[Generation]:
        """Phase 1: sample N responses per prompt with the latest adapter -> ``generations.jsonl``.

        Each finished batch is journalled first (``generation_batches.jsonl``): a resumed round
        samples only the batches not written yet, with the seeds and so the draws of an
        uninterrupted run. With ``stream`` (the pipelined round) each prompt is handed to the
        ranker as soon as its responses are final.

        Returns:
            The round's generations, in prompt order (read back when the phase was done).
        """
        out: list[Generation] = []

        def body() -> dict[str, Any]:
            backend = policy()
            backend.load_adapter(self.run.latest_adapter(self.index))
            journal = GenerationJournal(self.rd.generation_batches)  # finished batches survive a crash
            gens = backend.sample(
                self.prompts, seed=self.cfg.seed + self.index, progress=self.reporter.advance, journal=journal,
                on_generation=None if stream is None else stream.submit,
            )
            save_rng_state(self.rd.rng_state)  # before the phase is done: a resumed train phase starts from it
            write_jsonl(self.rd.generations, [g.to_json() for g in gens])
            self.rd.generation_batches.unlink(missing_ok=True)
            out.extend(gens)
            return {
                "prompts": len(gens),
                "responses": sum(len(g.responses) for g in gens),
                "generated_tokens": sum(len(ids) for g in gens for ids in g.response_token_ids),
                "batches_reused": journal.reused,  # sampled by an interrupted run of the phase
            }

        return out if self._timed(Phase.GENERATE, len(self.prompts), body) else self.rd.read_generations()

    # -- between phases 1 and 2 -----------------------------------------------------------
    def select(self, generations: list[Generation]) -> set[str] | None:
        """The candidates the ranker ranks under ``ranker.calls_per_round`` (None: no cap, every
        candidate): the ``calls_per_round / consistency`` best by ``ranker.selection``
        (:func:`~cyclealign.data.candidates.select_candidates`), written to ``selection.json``
        before the first ranking call; a resumed round reads that file back and ranks the same ones.

        Args:
            generations: the round's generations (:meth:`generate`), one per candidate.
        """
        r = self.cfg.ranker
        if r.calls_per_round is None:
            return None
        if self.rd.selection.is_file():
            return set(Selection.from_json(read_json(self.rd.selection)).chosen)
        sel = select_candidates(generations, r.selection, r.calls_per_round, r.consistency, selection_seed(self.cfg.seed, self.index))
        write_json(self.rd.selection, {"round": self.index, **sel.to_json()})
        return set(sel.chosen)

    # -- phase 2 -------------------------------------------------------------------------
    def rank_stream(self, ranker: Ranker | None, static_demos: list[Demonstration], pool: DemoPool) -> RankStream:
        """The rank phase's :class:`~cyclealign.pipeline.RankStream`: the demonstrations (static
        and the best of ``pool``) and the shuffle seed are fixed here, before the first request;
        the answers an interrupted run appended to ``rankings.jsonl`` are not asked again."""
        demos = round_demonstrations(self.cfg.ranker, static_demos, pool)
        shuffle_seed = round_shuffle_seed(self.cfg.seed, self.index)
        self._clipped = 0

        def make_job(g: Generation) -> RankJob | RankResult:
            if len(g.responses) < 2:
                return RankResult(g.prompt_id, None, reason=RankStatus.TOO_FEW_RESPONSES.label, status=RankStatus.TOO_FEW_RESPONSES)
            prompt, cut = clip_prompt(self.by_id[g.prompt_id], self.cfg.ranker.max_prompt_tokens)
            self._clipped += cut
            return RankJob(prompt, g.responses, demos, shuffle_seed)

        def persist(result: RankResult) -> None:
            append_jsonl(self.rd.rankings, result.to_json(), fsync=False)  # survives kill -9

        latest = {r.prompt_id: r for r in self.rd.read_rankings([p.id for p in self.prompts])}
        return RankStream(ranker, make_job, latest, persist, self._ledger)

    def _ledger(self, call: CallRecord) -> None:
        """The round's paid ranker calls, one line each in ``ranker_calls.jsonl``."""
        self.run.record_call(self.index, call)

    def rank(
        self,
        ranker: Ranker | None,
        static_demos: list[Demonstration],
        pool: DemoPool,
        generations: list[Generation] | None = None,
        stream: RankStream | None = None,
        chosen: set[str] | None = None,
    ) -> list[RankResult]:
        """Phase 2: black-box ranking of every prompt's responses, concurrently; each answer is
        appended to ``rankings.jsonl`` as it arrives (the raw replies are in the reply cache
        before that), and the file is rewritten in prompt order when the phase ends. Prompts
        already answered (resume) are not sent again; an ``api error`` is asked again.

        Args:
            ranker: the run's ranker (None only when the phase is done).
            static_demos: the static demonstrations; with the best of ``pool``, shown in every call.
            pool: the dynamic demonstration pool the previous round left.
            generations: the round's generations (from :meth:`generate`; None: read back from
                ``generations.jsonl``, for a caller that did not run that phase).
            stream: the stream :meth:`generate` already fed (the pipelined round; None: one is
                made here and fed every prompt).
            chosen: the prompts to send (:meth:`select`); the others are recorded unranked as
                ``not selected`` and cost no call. None: every prompt.

        Returns:
            The latest black-box result per prompt, in prompt order (read back when the phase was done).

        Raises:
            BudgetError: ``ranker.max_cost_usd`` was reached (the phase stays pending; resumable).
            RankerError: the API refused the requests (bad key, unknown model).
        """
        gens = self.rd.read_generations() if generations is None else generations
        order = [g.prompt_id for g in gens]
        latest: dict[str, RankResult] = {}

        def body() -> dict[str, Any]:
            with contextlib.ExitStack() as stack:
                s = stream or stack.enter_context(self.rank_stream(ranker, static_demos, pool))
                s.report_to(self.reporter)
                sent = [g for g in gens if chosen is None or g.prompt_id in chosen]
                batch_info: dict[str, Any] = {}
                if self.cfg.ranker.batch and (jobs := s.jobs_for(sent)):
                    assert ranker is not None, "iterate() opens the ranker while a ranking phase is pending"
                    batch_info = prefetch_batch(ranker, jobs, self.rd.ranker_batch, on_call=self._ledger)
                for g in gens:
                    if chosen is not None and g.prompt_id not in chosen:
                        s.skip(RankResult(g.prompt_id, None, reason=RankStatus.NOT_SELECTED.label, status=RankStatus.NOT_SELECTED))
                    else:
                        s.submit(g)
                latest.update(s.finish())
            if self._clipped:
                log.warning(
                    "round %d: %d prompt(s) cut to ranker.max_prompt_tokens=%s for the ranker (their end kept)",
                    self.index, self._clipped, self.cfg.ranker.max_prompt_tokens,
                )
            results = _in_order(latest, order)
            write_jsonl(self.rd.rankings, [r.to_json() for r in results])  # prompt order, latest per prompt
            spend = self.run.ranker_spend(self.index)
            multi = [r for r in results if r.consistent is not None]
            # The templates' content hashes, and a warning when they changed since the last round.
            from cyclealign.templates.files import warn_changed_templates

            templates = ranker.templates.file_hashes() if ranker is not None else None
            if self.index > 0:
                previous = self.run.round(self.index - 1).phases().get(Phase.RANK, {}).get("templates")
                warn_changed_templates(previous, templates, self.index)
            return {
                "ranked": sum(r.ranking is not None for r in results),
                "unranked": sum(r.ranking is None for r in results),
                "selected": sum(r.status not in (RankStatus.NOT_SELECTED, RankStatus.TOO_FEW_RESPONSES) for r in results),
                "calls": sum(r.attempts for r in results),
                "api_calls": int(spend["calls"]),
                "cache_hits": sum(r.attempts - r.api_calls for r in results),
                "prompt_tokens": int(spend["prompt_tokens"]),
                "completion_tokens": int(spend["completion_tokens"]),
                "cost_usd": spend["cost_usd"],
                # of the prompts whose K > 1 orders all ranked: all K agree (strict mode's kept share),
                # kept under ranker.aggregate, and the aggregates' mean confidence
                "consistency_rate": sum(bool(r.consistent) for r in multi) / len(multi) if multi else None,
                "kept_rate": sum(r.ranking is not None for r in multi) / len(multi) if multi else None,
                "confidence_mean": _mean([r.confidence for r in multi if r.confidence is not None]),
                "structured_output": ranker.structured if ranker is not None else None,
                "demos_static": min(len(static_demos), self.cfg.ranker.num_static_demos),
                "demos_dynamic": min(len(pool), self.cfg.ranker.num_dynamic_demos),
                "templates": templates,
                "pipelined": stream is not None,
                "ranked_during_generate": s.streamed,
                **({"batch": batch_info} if batch_info else {}),
            }

        ran = self._timed(Phase.RANK, len(gens), body)
        return _in_order(latest, order) if ran else self.rd.read_rankings(order)

    # -- phase 3 -------------------------------------------------------------------------
    def agreement(self, pool: DemoPool, generations: list[Generation], rankings: list[RankResult]) -> list[AgreementRow]:
        """Phase 3: white-box ranking, LCS and Kendall tau per ranked prompt -> ``agreement.jsonl``;
        prompts whose LCS reaches the threshold join ``pool`` (saved as ``demo_pool.jsonl``).

        Args:
            pool: the pool the previous round left; it grows here.
            generations: the round's generations (:meth:`generate`).
            rankings: the round's black-box results, in prompt order (:meth:`rank`).

        Returns:
            One row per ranked prompt, in prompt order (read back when the phase was done).
        """
        threshold = self.cfg.agreement_min_length
        out: list[AgreementRow] = []

        def body() -> dict[str, Any]:
            gens = {g.prompt_id: g for g in generations}
            rows, added = [], 0
            for r in rankings:
                if r.ranking is None:
                    continue
                g = gens[r.prompt_id]
                a = agreement_of(r.ranking, g.logprob_mean)
                joins = len(a.common) >= threshold
                if joins:
                    pool.add(agreement_demonstration(self.by_id[r.prompt_id].query_text, g.responses, a.common, self.index))
                    added += 1
                rows.append(
                    AgreementRow(
                        prompt_id=r.prompt_id,
                        blackbox=r.ranking,
                        whitebox=a.whitebox,
                        agreement=a.common,
                        n=len(g.responses),
                        kendall_tau=a.kendall_tau,
                        joined_pool=joins,
                    )
                )
            write_jsonl(self.rd.agreement, [row.to_json() for row in rows])
            write_pool(self.rd, pool)
            out.extend(rows)
            return {"pool_added": added, "pool_size": len(pool)}

        return out if self._timed(Phase.AGREEMENT, None, body) else self.rd.read_agreement()

    # -- phase 4 -------------------------------------------------------------------------
    def train(self, policy: PolicyHandle) -> None:
        """Phase 4: LoRA fine-tuning on the black-box rankings -> ``adapter/`` and ``train.json``,
        in process or under the configured launcher (:func:`~cyclealign.train.launch.train_phase`,
        which reads the rankings from the run directory: a launched process has only that).
        The policy is released first (the card's memory is the trainer's; the next generation
        reloads it) and gives the tokenizer's pad token id.

        Raises:
            TrainError: the launched training process failed (its log's last lines included).
        """
        if not self.rd.is_done(Phase.TRAIN):
            policy.release()  # not timed as training
        self._timed(
            Phase.TRAIN,
            None,
            lambda: train_phase(self.cfg, self.run, self.index, policy.model_dir, policy.pad_token_id, self.reporter),
        )

    # -- phase 5 -------------------------------------------------------------------------
    def metrics(self, rankings: list[RankResult] | None = None, agreement: list[AgreementRow] | None = None) -> dict[str, Any]:
        """Phase 5: the round's ``metrics.jsonl`` line, from what the other phases returned and
        recorded in the manifest.

        Args:
            rankings: the round's black-box results (:meth:`rank`; None: read back from ``rankings.jsonl``).
            agreement: the round's agreement rows (:meth:`agreement`; None: read back from ``agreement.jsonl``).
        """
        def body() -> dict[str, Any]:
            # The keys, their order and the manifest fields copied: cyclealign.metrics.ROUND_METRICS.
            ph = self.rd.phases()
            rows = self.rd.read_agreement() if agreement is None else agreement
            results = self.rd.read_rankings() if rankings is None else rankings
            n_ranked = len(rows)
            computed = {
                "round": self.index,
                "agreement_rate": sum(len(r.agreement) / r.n for r in rows) / n_ranked if n_ranked else None,
                "kendall_tau": sum(r.kendall_tau for r in rows) / n_ranked if n_ranked else None,
                "unranked_reasons": _reason_counts(results),
                "phase_s": {p: ph[p]["wall_s"] for p in TIMED_PHASES},
            }
            return round_line(ph, computed)

        self._timed(Phase.METRICS, None, body)
        line = dict(self.rd.phases()[Phase.METRICS])
        line.pop("wall_s", None)
        return line


def _in_order(latest: dict[str, RankResult], order: list[str]) -> list[RankResult]:
    """``latest``'s results in prompt order (:meth:`~cyclealign.rundir.RoundDir.read_rankings`'s
    order: a prompt not in ``order`` comes last, in insertion order)."""
    position = {pid: i for i, pid in enumerate(order)}
    return sorted(latest.values(), key=lambda r: position.get(r.prompt_id, len(position)))


def _mean(values: list[float]) -> float | None:
    """Their mean, None for none."""
    return sum(values) / len(values) if values else None


def _reason_counts(results: list[RankResult]) -> dict[str, int]:
    """Unranked prompts by status, under each status's label (``"api error"``, ``"unparsable"``...)."""
    return dict(Counter(r.status.label for r in results if r.status is not RankStatus.RANKED))

