"""A feed of jobs that arrive while the ranker's event loop is already working through them.

:meth:`Ranker.rank_all <cyclealign.ranker.client.Ranker.rank_all>` takes either a list of jobs,
known in full, or a :class:`JobFeed`: another thread (the pipelined round's generation,
:mod:`cyclealign.pipeline`) puts each job as soon as it exists and closes the feed after the
last; the endpoint's workers (:meth:`~cyclealign.ranker.endpoint.ChatEndpoint.run_pool`) await
the next job instead of ending when none is waiting. Concurrency, rate limits, budget and
cache are the endpoint's, as for a list.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Generic, TypeVar

__all__ = ["JobFeed"]

T = TypeVar("T")


class JobFeed(Generic[T]):
    """Jobs put by one thread and awaited by the workers of an event loop in another.

    :meth:`put` and :meth:`close` may be called from any thread, before or while the loop runs;
    :meth:`get` and :meth:`attach` only inside the loop. :meth:`cancel` (any thread) stops the
    loop's work: the task that attached is cancelled (requests in flight are dropped, their
    replies are in the cache if they arrived).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: deque[tuple[int, T]] = deque()
        self._count = 0
        self._closed = False
        self._cancelled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None  # set (in the loop) when a job or the close arrives

    def __len__(self) -> int:
        """Jobs put so far."""
        return self._count

    def put(self, item: T) -> int:
        """Hand over one job; returns its index (0, 1, ... in put order).

        Raises:
            ValueError: the feed is closed.
        """
        with self._lock:
            if self._closed:
                raise ValueError("put on a closed JobFeed")
            index = self._count
            self._items.append((index, item))
            self._count += 1
            self._notify()
        return index

    def close(self) -> None:
        """No more jobs: the workers end once the queued ones are done. Closing twice is a no-op."""
        with self._lock:
            self._closed = True
            self._notify()

    def cancel(self) -> None:
        """Close, drop the queued jobs and cancel the attached task (none attached yet: :meth:`attach`
        will cancel it)."""
        with self._lock:
            self._closed = self._cancelled = True
            self._items.clear()
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop has already ended
                pass

    def attach(self) -> None:
        """Inside the loop: the current task is the one :meth:`cancel` cancels.

        Raises:
            asyncio.CancelledError: the feed was cancelled before the loop started.
        """
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            if self._cancelled:
                raise asyncio.CancelledError()

    async def get(self) -> tuple[int, T] | None:
        """The next ``(index, job)``, waiting for one to be put; None once the feed is closed and empty."""
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    return None
                if self._wake is None:
                    self._loop = asyncio.get_running_loop()
                    self._wake = asyncio.Event()
                wake = self._wake
            await wake.wait()

    def _notify(self) -> None:
        """Wake the waiting workers (called holding the lock)."""
        wake, self._wake = self._wake, None
        if wake is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop has already ended
                pass
