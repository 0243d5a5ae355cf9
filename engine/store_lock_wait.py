"""Begin a store write transaction, telling the caller when another process makes it wait.

Why: a store verb behind another process's write transaction (a ``--strict`` ingest of
a large file, a mirror page) waited SQLite's whole busy timeout (60 s) without a word,
then failed with "database is locked" naming nobody: the operator could not tell a
running ingest (wait) from a stuck process (look at it). The wait itself stays as long
(an ingest behind another ingest should wait), but after a short grace the caller
learns who holds the lock (:mod:`hashmatch.engine.store_lock_holder`) and can say so.

A server's write is waited for by a client with its own deadline (the Python client's
default is 30 s): past it, or once the client cancelled, the client is gone but the
worker thread went on waiting up to the 60 s, then stored what nobody waits for, and
many such calls pinned the server's threads. So a caller may set a "still wanted?"
check (:func:`wanted_while`) for the writes of its thread: the wait then goes in slices
of :data:`SLICE_SECONDS` and asks between them; the check raises to end the wait
(nothing is begun, so nothing is stored). A context variable, not one more argument
through every store write: the store's writers are many, and the engine stays free of
the server's (grpc's) notion of a call.
"""

from __future__ import annotations

import contextvars
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
#: raises (the caller's own error: its call's deadline passed, it was cancelled) when the
#: write waiting for the lock is no longer wanted; returns when it still is
StillWanted = Callable[[], None]

#: seconds between two asks of a :data:`StillWanted` check while a write waits: a
#: client's deadline frees the waiting thread within about this much
SLICE_SECONDS = 0.25

_still_wanted: contextvars.ContextVar[StillWanted | None] = contextvars.ContextVar(
    "hashmatch_store_write_still_wanted", default=None
)


@contextmanager
def wanted_while(check: StillWanted) -> Iterator[None]:
    """Within the block, a write of this thread (context) waiting for another process's
    write lock asks ``check`` every :data:`SLICE_SECONDS` and ends the wait with what it
    raises. Without it (the CLI verbs) a write waits the whole busy timeout as before."""
    token = _still_wanted.set(check)
    try:
        yield
    finally:
        _still_wanted.reset(token)


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
    "database is locked" after the whole wait, as before. Within :func:`wanted_while`,
    the wait also ends as soon as its check raises (see the module's docstring)."""
    wanted = _still_wanted.get()
    if on_wait is None or busy_timeout <= GRACE_SECONDS:
        if wanted is None:
            conn.execute("BEGIN IMMEDIATE")
        else:
            _begin_by(conn, time.monotonic() + busy_timeout, busy_timeout, wanted)
        return
    began = time.monotonic()
    try:
        _begin_by(conn, began + GRACE_SECONDS, busy_timeout, wanted)
        if on_free is not None:
            on_free()
        return
    except sqlite3.OperationalError as exc:
        if not is_locked(exc):
            raise
    on_wait(write_lock_holder(store_path), busy_timeout)
    _begin_by(conn, began + busy_timeout, busy_timeout, wanted)


def _begin_by(
    conn: sqlite3.Connection, until: float, busy_timeout: float, wanted: StillWanted | None
) -> None:
    """BEGIN IMMEDIATE waiting for the lock until ``until`` (``time.monotonic()``) at
    most; with ``wanted``, in slices, asking it after each one that found the lock held
    (an uncontended write never asks). The connection's busy timeout is
    ``busy_timeout`` again afterwards (its later statements wait as they always did)."""
    while True:
        left = max(0.0, until - time.monotonic())
        last = wanted is None or left <= SLICE_SECONDS
        try:
            _begin_within(conn, left if last else SLICE_SECONDS, busy_timeout)
            return
        except sqlite3.OperationalError as exc:
            if last or not is_locked(exc):
                raise
        wanted()


def _begin_within(conn: sqlite3.Connection, seconds: float, busy_timeout: float) -> None:
    """BEGIN IMMEDIATE waiting at most ``seconds``; the connection's busy timeout is
    ``busy_timeout`` again afterwards."""
    conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
