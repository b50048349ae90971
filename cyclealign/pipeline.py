"""The rank phase as a stream: a prompt's ranking goes out as soon as its responses are sampled.

A round's generation is compute-bound (the policy, in this process or a vLLM server) and its
ranking latency-bound (a paid API: seconds per call, a concurrency cap, rate limits). With
``ranker.pipeline`` (the default) the two overlap::

    main thread:     generate batch 0 -> batch 1 -> batch 2 -> ...            (torch / vLLM)
                          |  submit()    |            |
    ranking thread:       +-> rank p0..p7 +-> rank p8.. +-> ...               (Ranker.rank_all on a JobFeed)

Each prompt is submitted once its batch is in the generation journal
(``generation_batches.jsonl``) and its responses are final; the ranking thread ranks it with
the ranker's concurrency, rate limits, budget and reply cache, and appends its result to
``rankings.jsonl`` as the sequential phase does. The round's demonstrations and shuffle seed are
fixed before the first request, so results do not depend on timing: a pipelined round ranks
exactly what the sequential one ranks. The rank phase is marked done only after generation is
done and every ranking is in; agreement and training start after that.

Without ``ranker.pipeline`` (or with ``ranker.batch``) the same :class:`RankStream` runs after
generation, fed everything at once: one code path for both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from cyclealign.errors import BudgetError
from cyclealign.progress import Reporter
from cyclealign.ranker.client import Ranker
from cyclealign.ranker.feed import JobFeed
from cyclealign.ranker.http import CallRecord
from cyclealign.ranker.ranking import RankJob
from cyclealign.records import Generation, RankResult, RankStatus

__all__ = ["RankStream"]

log = logging.getLogger(__name__)


class RankStream:
    """One round's rankings, sent from a thread of their own as the prompts are handed over.

    The caller's thread (generation) calls :meth:`submit` per finished prompt, then
    :meth:`report_to` when the rank phase starts, then :meth:`finish`; used as a context manager,
    an exception in the caller's thread (SIGTERM, Ctrl-C, a crash) cancels the requests in
    flight and waits for the thread (the results already in are on disk).

    Args:
        ranker: the run's ranker (None: nothing may need the API; a job raises).
        make_job: one prompt's job from its generation, or its result when no call is needed
            (fewer than 2 responses).
        latest: the results already on disk, per prompt id (an interrupted run's
            ``rankings.jsonl``); a prompt whose result is not an ``api error`` is not asked again.
            Updated in place as results arrive.
        persist: writes one result to disk (``rankings.jsonl``); called in the ranking thread,
            before the result counts anywhere else.
        on_call: the round's cost ledger (:meth:`~cyclealign.rundir.RunDir.record_call`).
    """

    def __init__(
        self,
        ranker: Ranker | None,
        make_job: Callable[[Generation], RankJob | RankResult],
        latest: dict[str, RankResult],
        persist: Callable[[RankResult], None],
        on_call: Callable[[CallRecord], None],
    ) -> None:
        self.ranker = ranker
        self.latest = latest
        self._make_job = make_job
        self._persist = persist
        self._on_call = on_call
        self._done = {pid for pid, r in latest.items() if r.status is not RankStatus.API_ERROR}
        self._jobs: dict[str, RankJob | RankResult] = {}  # made ahead by jobs_for, not yet submitted
        self._submitted: set[str] = set()
        self._feed: JobFeed[RankJob] = JobFeed()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._reporter: Reporter | None = None
        self._unreported = 0
        self.streamed = 0
        """Results that came in before :meth:`report_to` (the pipelined part of the rank phase)."""

    # -- the caller's thread ---------------------------------------------------------------
    def jobs_for(self, gens: list[Generation]) -> list[RankJob]:
        """The jobs :meth:`submit` would send for ``gens`` (prompts not answered yet), made now and
        kept for it (the Batch API prefetches them first)."""
        out = []
        for g in gens:
            if self._wanted(g.prompt_id):
                job = self._jobs.setdefault(g.prompt_id, self._make_job(g))
                if isinstance(job, RankJob):
                    out.append(job)
        return out

    def submit(self, gen: Generation) -> None:
        """Hand over one prompt whose responses are final (and on disk): its job goes out as soon
        as a request slot is free. A prompt answered or submitted already is skipped.

        Raises:
            RankerError, or what else stopped the ranking thread (not a budget stop, which
            :meth:`finish` raises): generation stops too.
        """
        if self._error is not None and not isinstance(self._error, BudgetError):
            raise self._error
        if not self._wanted(gen.prompt_id):
            return
        self._submitted.add(gen.prompt_id)
        job = self._jobs.pop(gen.prompt_id, None) or self._make_job(gen)
        if isinstance(job, RankResult):
            self._record(job)
            return
        self._feed.put(job)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cyclealign-rank", daemon=True)
            self._thread.start()

    def skip(self, result: RankResult) -> None:
        """Record ``result`` for a prompt that is not sent (``not selected``), as an answer: no
        call. A prompt answered or submitted already is left as it is."""
        if self._wanted(result.prompt_id):
            self._submitted.add(result.prompt_id)
            self._record(result)

    def report_to(self, reporter: Reporter) -> None:
        """From now on each result advances ``reporter`` (the rank phase's bar); it is advanced
        at once by the prompts already answered (on disk, or streamed during generation)."""
        with self._lock:
            self._reporter = reporter
            self.streamed = self._unreported
            n = len(self._done) + self._unreported
        reporter.advance(n)

    def finish(self) -> dict[str, RankResult]:
        """No more prompts: wait until every submitted one is answered; the latest result per prompt.

        Raises:
            BudgetError: the budget held calls back (the answers received are on disk).
            RankerError: the API refused the requests.
        """
        self._feed.close()
        self._join()
        if self._error is not None:
            raise self._error
        return self.latest

    def cancel(self) -> None:
        """Drop the queued prompts, cancel the requests in flight and wait for the thread."""
        self._feed.cancel()
        self._join()

    def __enter__(self) -> RankStream:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None or self._thread is not None and self._thread.is_alive():
            self.cancel()

    # -- inside -----------------------------------------------------------------------------
    def _wanted(self, prompt_id: str) -> bool:
        return prompt_id not in self._done and prompt_id not in self._submitted

    def _join(self) -> None:
        # join in short waits: a signal handler in the main thread runs between them
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.2)

    def _run(self) -> None:
        assert self.ranker is not None, "a pending ranking phase has its ranker open"
        try:
            self.ranker.rank_all(self._feed, on_result=lambda _, result: self._record(result), on_call=self._on_call)
        except BaseException as e:  # raised in the caller's thread by submit() / finish()
            self._error = e

    def _record(self, result: RankResult) -> None:
        self._persist(result)
        with self._lock:
            self.latest[result.prompt_id] = result
            reporter = self._reporter
            if reporter is None:
                self._unreported += 1
        if reporter is not None:
            reporter.advance()
