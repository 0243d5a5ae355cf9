"""A stop that lands after a --strict ingest's one COMMIT (in its index update, which
takes seconds for a big file) left the whole file stored, yet the message said
"nothing of it was written". Real store; the stop is raised from ``on_commit``, the
hook the engine updates its index in, as a signal arriving there raises it."""

from __future__ import annotations

import signal
import sqlite3

import pytest

from hashmatch.engine.store import SignalRecord, SignalStore
from hashmatch.server.commands.store import _say_ingest_stopped
from hashmatch.server.interrupts import Interrupted


def _stop_in_the_index_update() -> None:
    raise Interrupted(signal.SIGINT)


def test_a_stop_after_the_strict_commit_reports_the_file_stored(tmp_path, capsys):
    store = SignalStore(tmp_path / "store.sqlite")
    records = [SignalRecord("md5", f"{i:032x}") for i in range(7)]
    try:
        with pytest.raises(Interrupted) as stopped:
            store.ingest(records, list_name="l", actor="t", strict=True, create_list=True,
                         batch_size=3, on_commit=_stop_in_the_index_update)  # fmt: skip
        report = stopped.value.ingest_report
        assert (report.batches, report.added) == (3, 7)
        assert store.lists()[0].signal_count == 7  # stored indeed
    finally:
        store.close()
    _say_ingest_stopped("f.csv", stopped.value, "l", True, [])
    said = capsys.readouterr().err
    assert "the whole file is stored, 7 signal(s) into 'l'" in said
    assert "nothing of it was written" not in said


def test_a_stop_before_the_strict_commit_still_says_nothing_was_written(tmp_path, capsys):
    store = SignalStore(tmp_path / "store.sqlite")

    def records():
        yield from (SignalRecord("md5", f"{i:032x}") for i in range(4))
        raise Interrupted(signal.SIGTERM)  # in the parser, the transaction still open

    try:
        with pytest.raises(Interrupted) as stopped:
            store.ingest(records(), list_name="l", actor="t", strict=True, create_list=True,
                         batch_size=2)  # fmt: skip
        assert stopped.value.ingest_report.batches == 0
        assert store.lists() == []
    finally:
        store.close()
    _say_ingest_stopped("f.csv", stopped.value, "l", True, ["g.csv"])
    said = capsys.readouterr().err
    assert "f.csv: stopped: nothing of it was written (--strict" in said
    assert "not started: g.csv" in said


def test_a_stop_after_the_last_batch_does_not_claim_a_batch_was_rolled_back(tmp_path, capsys):
    """A stop in the last batch's index update (every batch committed) was reported with
    "the batch in flight was rolled back": read as part of the file missing."""
    store = SignalStore(tmp_path / "store.sqlite")
    records = [SignalRecord("md5", f"{i:032x}") for i in range(6)]
    commits = []

    def stop_at_the_last_commit() -> None:
        commits.append(1)
        if len(commits) == 2:
            raise Interrupted(signal.SIGTERM)

    try:
        with pytest.raises(Interrupted) as stopped:
            store.ingest(records, list_name="l", actor="t", create_list=True, batch_size=3,
                         on_commit=stop_at_the_last_commit)  # fmt: skip
    finally:
        store.close()
    report = stopped.value.ingest_report
    assert (report.batches, report.added, report.rolled_back_batch) == (2, 6, False)
    _say_ingest_stopped("f.csv", stopped.value, "l", False, [])
    said = capsys.readouterr().err
    assert "stopped after 2 committed batch(es): 6 signal(s) stored into 'l'" in said
    assert "rolled back" not in said


def test_a_batch_that_fails_in_its_write_is_reported_rolled_back(tmp_path, capsys):
    path = tmp_path / "store.sqlite"
    SignalStore(path).close()
    with sqlite3.connect(path) as conn:  # the second batch's write fails, as a disk would
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON signals"
            " WHEN (SELECT COUNT(*) FROM signals) >= 3"
            " BEGIN SELECT RAISE(ABORT, 'disk I/O error (simulated by a trigger)'); END"
        )
    store = SignalStore(path)
    records = [SignalRecord("md5", f"{i:032x}") for i in range(6)]
    try:
        with pytest.raises(sqlite3.Error) as failed:
            store.ingest(records, list_name="l", actor="t", create_list=True, batch_size=3)
    finally:
        store.close()
    report = failed.value.ingest_report
    assert (report.batches, report.added, report.rolled_back_batch) == (1, 3, True)
    _say_ingest_stopped("f.csv", failed.value, "l", False, [])
    said = capsys.readouterr().err
    assert "3 signal(s) stored into 'l'" in said and "the batch in flight was rolled back" in said
