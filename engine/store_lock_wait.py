"""Begin a store write transaction, telling the caller when another process makes it wait.

Why: a store verb behind another process's write transaction (a ``--strict`` ingest of
a large file, a mirror page) waited SQLite's whole busy timeout (60 s) without a word,
then failed with "database is locked" naming nobody: the operator could not tell a
running ingest (wait) from a stuck process (look at it). The wait itself stays as long
(an ingest behind another ingest should wait), but after a short grace the caller
learns who holds the lock (:mod:`hashmatch.engine.store_lock_holder`) and can say so.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from hashmatch.engine.errors import is_locked
from hashmatch.engine.store_lock_holder import write_lock_holder

#: seconds a write waits for the lock before it is told: the server's and the other
#: verbs' usual transactions end well within it, so a short one says nothing
GRACE_SECONDS = 1.0

#: told ``(holder pid or None when it cannot be told, the whole wait in seconds)``
#: once a write has waited :data:`GRACE_SECONDS`, before it waits the rest
LockWait = Callable[[int | None, float], None]
#: told that a write began within :data:`GRACE_SECONDS`: whatever made writes wait is
#: over (the server logs a holder once per such episode, not once per queued call)
LockFree = Callable[[], None]


def begin_immediate(
    conn: sqlite3.Connection,
    store_path: Path,
    busy_timeout: float,
    on_wait: LockWait | None,
    on_free: LockFree | None = None,
) -> None:
    """``BEGIN IMMEDIATE`` on ``conn``, waiting up to ``busy_timeout`` seconds in all for
    another process's write lock, as the connection's own busy timeout does; with
    ``on_wait``, the wait is split: :data:`GRACE_SECONDS`, then ``on_wait`` hears who
    holds the lock, then the rest; ``on_free`` hears of a begin within the grace.
    "database is locked" after the whole wait, as before."""
    if on_wait is None or busy_timeout <= GRACE_SECONDS:
        conn.execute("BEGIN IMMEDIATE")
        return
    try:
        _begin_within(conn, GRACE_SECONDS, busy_timeout)
        if on_free is not None:
            on_free()
        return
    except sqlite3.OperationalError as exc:
        if not is_locked(exc):
            raise
    on_wait(write_lock_holder(store_path), busy_timeout)
    _begin_within(conn, busy_timeout - GRACE_SECONDS, busy_timeout)


def _begin_within(conn: sqlite3.Connection, seconds: float, busy_timeout: float) -> None:
    """BEGIN IMMEDIATE waiting at most ``seconds``; the connection's busy timeout is
    ``busy_timeout`` again afterwards (its later statements wait as they always did)."""
    conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
