"""What the server logs while another process holds its store's write lock.

Why: an Ingest, Retract or RebuildIndex behind a CLI process holding the write lock
(an operator's ``hashmatch ingest --strict`` or ``index rebuild`` on the same data dir)
waited up to SQLite's 60 s busy timeout without a line in the log: the client saw a
slow call or DEADLINE_EXCEEDED, the operator nothing. After the store's second of
grace (:mod:`hashmatch.engine.store_lock_wait`) one WARNING names the holder (pid and
escaped command line: for the operator's log only, never sent to a client), once per
holder per wait episode: many calls queue behind one holder, and each waits in turn.
The episode ends when a write begins within the grace again.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from hashmatch.engine.store_lock_holder import describe_holder

log = logging.getLogger("hashmatch.server")


class StoreLockLog:
    """The store's ``on_lock_wait`` / ``on_lock_free`` in the server."""

    def __init__(self, store_path: Path):
        self.store_path = store_path
        self._told: set[int | None] = set()  # holders logged in this episode
        self._lock = threading.Lock()

    def __call__(self, holder: int | None, wait: float) -> None:
        with self._lock:
            if holder in self._told:
                return
            self._told.add(holder)
        who = describe_holder(holder)
        log.warning(
            "%s: %s holds the store's write lock; store writes (Ingest, Retract,"
            " RebuildIndex) wait for it, each up to %g s",
            self.store_path,
            who,
            wait,
        )

    def lock_free(self) -> None:
        """A write began without waiting: the next wait is a new episode."""
        if self._told:  # (read without the lock: the usual write finds it empty)
            with self._lock:
                self._told.clear()
