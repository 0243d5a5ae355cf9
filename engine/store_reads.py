"""The small store reads every lookup makes, read again only when the store changed.

Why: a lookup reads the change counter (to replay other writers' changes onto the
index), the list table (names, enabled) and the caller's visible lists (two statements
for a tenant that is not an admin): 3-4 SQLite statements of ~10 us each per unary
Match, each its own read transaction, for tables that change a few times a day. SQLite's
``PRAGMA data_version`` is one statement that tells whether any *other* connection (this
process's or another's: a CLI ingest, retract, list or grant edit on the same data dir)
committed since this connection last asked; ``Connection.total_changes`` tells whether
this connection itself wrote. While both are unchanged, the last values read on this
connection are the store's current ones, so an unchanged store costs one statement.

Not cached (read afresh every time): reads inside a write transaction of this
connection, which may yet roll back.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashmatch.engine.store import SignalStore


class LookupReads:
    """One connection's change counter, list table and visible lists as of one store
    state (:func:`lookup_reads`), each read on first use. The returned dict and sets
    are shared by the lookups of that state: read them, never change them."""

    __slots__ = ("_counter", "_lists", "_store", "_visible", "conn", "key")

    def __init__(self, store: SignalStore, conn: sqlite3.Connection | None, key: tuple) -> None:
        self._store = store
        self.conn = conn  # None: not cached (see lookup_reads)
        self.key = key
        self._counter: int | None = None
        self._lists: dict[int, tuple[str, bool]] | None = None
        self._visible: dict[str | None, set[int] | None] = {}

    def change_counter(self) -> int:
        if self._counter is None:
            self._counter = self._store.change_counter()
        return self._counter

    def list_table(self) -> dict[int, tuple[str, bool]]:
        if self._lists is None:
            self._lists = self._store.list_table()
        return self._lists

    def visible_list_ids(self, tenant: str | None) -> set[int] | None:
        if tenant not in self._visible:
            self._visible[tenant] = self._store.visible_list_ids(tenant)
        return self._visible[tenant]


def lookup_reads(store: SignalStore, local) -> LookupReads:
    """This thread's :class:`LookupReads` for the store as it is now: the cached one
    (kept on ``local``, the store's thread-local state) while neither another
    connection committed (``PRAGMA data_version``) nor this one wrote
    (``total_changes``) since it was made, else a new one."""
    conn = store.conn()
    if conn.in_transaction:  # this thread's own write, not committed: never cached
        return LookupReads(store, None, ())
    (version,) = conn.execute("PRAGMA data_version").fetchone()
    key = (version, conn.total_changes)
    reads = getattr(local, "lookup_reads", None)
    if reads is None or reads.conn is not conn or reads.key != key:
        reads = LookupReads(store, conn, key)
        local.lookup_reads = reads
    return reads
