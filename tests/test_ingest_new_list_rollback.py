"""A new list is created in its first batch's transaction: a batch that does not
commit (a stop signal in it, a full disk) leaves no empty list behind.

Before: the list was created in a transaction of its own just before the batch's, so a
Ctrl-C landing in the first batch left an empty list (`lists ls` showed it, and the
stop message said "0 signal(s) stored into 'x'" about a list that now existed). A real
store; the write fails by a real SQLite trigger, as a failing disk would make it.
"""

from __future__ import annotations

import sqlite3

import pytest

from hashmatch.engine.store import SignalRecord, SignalStore


def test_a_first_batch_that_does_not_commit_leaves_no_new_list(tmp_path):
    path = tmp_path / "store.sqlite"
    store = SignalStore(path)
    try:
        store.create_list("old", actor="test")
    finally:
        store.close()
    with sqlite3.connect(path) as conn:  # every signal write fails, as on a failing disk
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON signals"
            " BEGIN SELECT RAISE(ABORT, 'disk I/O error (simulated by a trigger)'); END"
        )
    records = [SignalRecord("md5", f"{i:032x}") for i in range(5)]
    store = SignalStore(path)
    try:
        with pytest.raises(sqlite3.Error) as raised:
            store.ingest(records, list_name="new", actor="test", create_list=True)
        assert raised.value.ingest_report.batches == 0
        assert [hl.name for hl in store.lists()] == ["old"]
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER refuse")
    store = SignalStore(path)
    try:  # and once the disk is fine the same ingest creates the list, as before
        report = store.ingest(records, list_name="new", actor="test", create_list=True)
        assert (report.added, report.batches) == (5, 1)
        assert [hl.name for hl in store.lists()] == ["new", "old"]
    finally:
        store.close()
