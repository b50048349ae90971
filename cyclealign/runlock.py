"""One process at a time on a run directory: an advisory lock (``RUN_DIR/lock``) and its holder.

The lock is :class:`filelock.FileLock` (``flock`` on POSIX): the kernel releases it when the
holding process exits or is killed, so a lock can never outlive its process. Beside it,
``lock.json`` names the holder (pid, host, start time, command); it is removed on a clean
release (a folder this lock created is removed again when the run never started: no
``config.json`` was written). Finding ``lock.json`` while the lock itself is free therefore means the last holder
died without releasing it: that stale lock is taken over and reported (:attr:`RunLock.took_over`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import filelock

from cyclealign.errors import LockedError, RunDirError
from cyclealign.rundir import RunDir
from cyclealign.files import write_json

__all__ = ["RunLock", "lock_holder"]


def lock_holder(run_dir: Path) -> dict[str, Any] | None:
    """The holder recorded in ``run_dir/lock.json`` with ``"live"``: whether the lock is held now
    (False: a stale record of a process that died); None when there is no record."""
    run = RunDir(run_dir)
    info_path = run.lock_info
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    probe = filelock.FileLock(str(run.lock), timeout=0)
    try:
        probe.acquire()
    except filelock.Timeout:
        return {**info, "live": True}
    probe.release()
    return {**info, "live": False}


class RunLock:
    """Hold the run directory's lock for the ``with`` block.

    Args:
        run_dir: the run directory (created if missing).

    Raises:
        LockedError: on entering, when another live process holds the lock; the message names
            its pid, host and start time.
        RunDirError: on entering, ``run_dir`` is a file.

    Attributes:
        took_over: the stale holder record (a process that died holding the lock) that this
            lock replaced, or None.
        stopped_servers: process ids of servers an earlier, killed run of the directory had
            left running, stopped on entering (:meth:`cyclealign.rundir.RunDir.reap_stale_servers`).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        run = RunDir(self.run_dir)
        self.took_over: dict[str, Any] | None = None
        self.stopped_servers: list[int] = []
        self._lock = filelock.FileLock(str(run.lock), timeout=0)
        self._info = run.lock_info
        # what a run that never started leaves: the lock, its holder and the events of its refusal
        self._lock_only = frozenset(p.name for p in (run.lock, run.lock_info, run.events))
        self._created = False

    def __enter__(self) -> "RunLock":
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirError(f"{self.run_dir}: a file, not a run directory (choose another --run-dir)")
        self._created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            holder = lock_holder(self.run_dir) or {}
            raise LockedError(
                f"{self.run_dir} is in use by another cyclealign process (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {holder.get('started', '?')}); wait for it to finish"
            ) from None
        try:
            self.took_over = json.loads(self._info.read_text()) if self._info.exists() else None
        except (OSError, json.JSONDecodeError):
            self.took_over = {"pid": None, "note": "unreadable lock.json"}
        write_json(
            self._info,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv),
            },
        )
        self.stopped_servers = RunDir(self.run_dir).reap_stale_servers()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._info.unlink(missing_ok=True)
        self._lock.release()
        if self._created and {p.name for p in self.run_dir.iterdir()} <= self._lock_only:
            shutil.rmtree(self.run_dir, ignore_errors=True)  # the run never started: leave no folder behind

