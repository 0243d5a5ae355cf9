"""Scan workers stuck on one file: seen by the scan's parent, and killed.

Why: ``--file-timeout`` is a checkpoint inside the hasher, called between video and
animation frames. Nothing calls it while a worker is blocked in a ``read()`` (a hung
network or FUSE mount), inside FFmpeg's open, or in one long decode of a still image;
the parent then waited on that worker's result forever and the scan never ended. So
each worker writes, in memory shared with the parent, when it began its current file
(0 when idle) and its pid; the parent, while it waits for results, kills a worker
still on one file ``file_timeout + grace`` seconds after it began. Its pool breaks as
when a decoder crashes, and the scan's crash isolation retries the files in flight
one at a time: only the file that stalls a worker again, alone, fails (``timeout``).

The clock starts when a worker takes the file, not when the parent queued it: a
worker's start-up or a queue behind slow files is never counted against a file.
"""

from __future__ import annotations

import os
import signal
import time
from multiprocessing.context import BaseContext

#: Seconds past ``--file-timeout`` a worker may stay on one file before it is killed:
#: the in-process checkpoint stops a video at the timeout itself; this is the backstop.
STALL_GRACE = 30.0


class Watch:
    """Per-worker slots in shared memory: (pid, monotonic start of the current file)."""

    def __init__(self, context: BaseContext, workers: int):
        self.started = context.Array("d", workers, lock=False)
        self.pids = context.Array("q", workers, lock=False)
        self.taken = context.Value("i", 0)

    # -- in a worker ------------------------------------------------------------------

    def attach(self) -> int:
        """Claim this worker's slot (in its initializer); returns the slot."""
        with self.taken.get_lock():
            slot = self.taken.value
            self.taken.value += 1
        if slot < len(self.pids):
            self.pids[slot] = os.getpid()
        return slot

    def begin(self, slot: int) -> None:
        if slot < len(self.started):
            self.started[slot] = time.monotonic()  # CLOCK_MONOTONIC: one clock for all

    def end(self, slot: int) -> None:
        if slot < len(self.started):
            self.started[slot] = 0.0

    # -- in the parent ----------------------------------------------------------------

    def on_a_file(self) -> list[int]:
        """The pids of the workers that began a file and did not end it (a worker that
        died on one stays so: whose last words to read)."""
        return [pid for began, pid in zip(self.started, self.pids, strict=True) if began and pid]

    def kill_stalled(self, limit: float) -> int:
        """SIGKILL every worker on one file for over ``limit`` seconds; how many."""
        now = time.monotonic()
        killed = 0
        for slot, began in enumerate(self.started):
            pid = self.pids[slot]
            if began and pid and now - began > limit:
                self.started[slot] = 0.0  # once: its pool is broken from here on
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # it finished and exited meanwhile
                    continue
                killed += 1
        return killed
