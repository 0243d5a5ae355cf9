"""A store written by an older hashmatch opens in this one with every row kept, or is
refused with a message saying what to do (README: Upgrading).

The stores under ``tests/data/upgrade/`` were written by the old CLIs themselves (each
README says which commit and which commands): schema 1 (d6d08dd) and schema 2
(e228c03), each with the format-1 index snapshot that build wrote.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hashmatch.engine import store_schema
from hashmatch.engine.errors import CorruptData
from hashmatch.engine.runtime import Engine
from hashmatch.engine.snapshot_files import check_manifest
from hashmatch.engine.store import SignalRecord, SignalStore, fingerprint
from hashmatch.server.cli import cli

FIXTURES = Path(__file__).parent / "data" / "upgrade"
OLD_STORES = {"d6d08dd": 1, "e228c03": 2}  # commit that wrote the store -> its schema version
#: the tables an old store holds, each compared row by row before and after the upgrade
KEPT = ("hash_lists", "signals", "signal_frames", "tenants", "tenant_lists", "audit_log", "changes")


def _old_data_dir(tmp_path: Path, commit: str) -> Path:
    data_dir = tmp_path / "data"
    shutil.copytree(FIXTURES / f"store-{commit}", data_dir, ignore=shutil.ignore_patterns("*.md"))
    return data_dir


def _rows(path: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in KEPT}


@pytest.mark.parametrize("commit", sorted(OLD_STORES))
def test_an_old_store_opens_upgraded_with_every_row_and_matches(tmp_path, commit, caplog):
    data_dir = _old_data_dir(tmp_path, commit)
    store_path = data_dir / "store.sqlite"
    before = _rows(store_path)
    with sqlite3.connect(store_path) as conn:
        version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    assert version == OLD_STORES[commit]
    assert len(before["signal_frames"]) == 150 and len(before["audit_log"]) >= 12

    with caplog.at_level("WARNING"), Engine.open(data_dir) as engine:
        info = engine.load()
        # the old (format 1) snapshot is skipped, saying why and what to do; the index
        # comes from the store
        assert info["source"] == "store"
        assert [s.split(": ", 1)[1] for s in info["skipped_snapshots"]] == [
            "snapshot format 1 records no store identity; built from the store"
            " (run `hashmatch index snapshot` once for a fast start)"
        ]
        assert engine.verify_index()["ok"]
        lists = {h.name: h for h in engine.store.lists()}
        # the counters of schema 2/3 agree with the signals themselves
        assert (lists["partner-a"].signal_count, lists["partner-a"].expired_count) == (9, 1)
        assert lists["partner-a"].retracted_count == 1
        assert (lists["partner-b"].signal_count, lists["partner-b"].enabled) == (3, False)
        assert lists["videos"].signal_count == 1
        now = time.time()
        live = engine.store.signals(list_name="partner-a", retracted=False)
        pdq = [s for s in live if s.signal_type == "pdq" and (s.expires_at or now + 1) > now]
        assert len(pdq) == 6
        found = engine.match_hex("pdq", [s.hash_hex for s in pdq])
        assert [[m.signal_id for m in row] for row in found] == [[s.id] for s in pdq]
        retracted = engine.store.retracted()
        assert sorted(r.external_id for r in retracted) == ["A1", "B2"]
        a1 = [r.hash_hex for r in retracted if r.external_id == "A1"]
        assert engine.match_hex("pdq", a1) == [[]]
        # and it keeps working: ingest, retract, a snapshot the next start loads
        report = engine.ingest(
            [SignalRecord("pdq", "ab" * 32, labels=("new",))], list_name="videos"
        )
        assert report.added == 1
        assert engine.retract(list_name="partner-a", signal_ids=[pdq[0].id]) == 1
        (video,) = engine.store.signals(list_name="videos", retracted=False)[:1]
        assert engine.retract(list_name="videos", signal_ids=[video.id]) == 1
        assert engine.store.recount_lists() == 0  # the upgraded counters were kept right
        engine.snapshot()
    assert f"store schema upgraded {OLD_STORES[commit]} -> {store_schema.CURRENT_VERSION}" in (
        caplog.text
    )

    after = _rows(store_path)
    for table in KEPT:  # every old row is still there, unchanged but for the two writes
        old_rows = set(before[table])
        assert old_rows - set(after[table]) <= _changed_by_the_writes(table, before, after), table
    with Engine.open(data_dir) as engine:
        info = engine.load()
        assert info["source"] == "snapshot" and "skipped_snapshots" not in info
        assert engine.verify_index()["ok"]


def _changed_by_the_writes(table: str, before: dict, after: dict) -> set[tuple]:
    """The old rows the test's own retract changed (a signal row gets its retracted_at;
    list rows their updated_at): everything else must be kept byte for byte."""
    if table not in ("signals", "hash_lists"):
        return set()
    new_ids = {row[0]: row for row in after[table]}
    return {row for row in before[table] if new_ids.get(row[0]) != row}


def test_an_upgraded_store_keeps_every_signal_through_the_cli(tmp_path):
    data_dir = _old_data_dir(tmp_path, "d6d08dd")
    runner = CliRunner()
    env = {"HASHMATCH_DATA_DIR": str(data_dir)}
    out = runner.invoke(cli, ["lists", "ls"], env=env)
    assert out.exit_code == 0, out.output
    assert "partner-a" in out.output and "3 list(s), 12 live signal(s), 1 expired" in out.output
    out = runner.invoke(cli, ["index", "verify"], env=env)
    assert out.exit_code == 0 and "index verify: ok" in out.output, out.output
    exported = tmp_path / "a.jsonl"
    out = runner.invoke(cli, ["lists", "export", "partner-a", "--out", str(exported)], env=env)
    assert out.exit_code == 0, out.output
    assert len(exported.read_text().splitlines()) == 9  # live and expired, not the retracted one


def test_a_store_of_a_newer_schema_is_refused_untouched(tmp_path):
    data_dir = _old_data_dir(tmp_path, "e228c03")
    with Engine.open(data_dir, eager=False):
        pass
    store_path = data_dir / "store.sqlite"
    with sqlite3.connect(store_path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 'from the future', 0)",
                     (store_schema.CURRENT_VERSION + 1,))  # fmt: skip
    before = _rows(store_path)
    with pytest.raises(CorruptData, match="newer than this hashmatch understands"):
        SignalStore(store_path, create=False)
    for verb in (["lists", "ls"], ["index", "stats"], ["backup", str(tmp_path / "b.sqlite")]):
        out = CliRunner().invoke(cli, verb, env={"HASHMATCH_DATA_DIR": str(data_dir)})
        assert out.exit_code == 1 and "Traceback" not in out.output, out.output
        assert f"store schema version {store_schema.CURRENT_VERSION + 1} is newer" in out.output
        assert "upgrade hashmatch" in out.output
    assert _rows(store_path) == before and not (tmp_path / "b.sqlite").exists()


def test_a_snapshot_of_a_newer_build_is_skipped_saying_so():
    """A rollback leaves snapshots a newer hashmatch wrote: skipped (the index is built
    from the store), and the reason says why instead of 'unknown format'."""
    with pytest.raises(CorruptData, match=r"snapshot format 3 is newer than this hashmatch"):
        check_manifest({"format": 3, "change_counter": 1, "store_id": "x", "types": {}})
    with pytest.raises(CorruptData, match=r"run `hashmatch index snapshot`"):
        check_manifest({"format": 1, "change_counter": 1, "types": {}})


def _write_as_a_schema_1_server(store_path: Path) -> None:
    """Add two signals to partner-b and retract one of partner-a's the way a d6d08dd
    server writes (signals and change log only: that build has no list counters)."""
    now = time.time()
    with sqlite3.connect(store_path, isolation_level=None) as conn:
        conn.execute("BEGIN IMMEDIATE")
        (list_b,) = conn.execute("SELECT id FROM hash_lists WHERE name = 'partner-b'").fetchone()
        ids = []
        for hex_ in ("07" * 32, "08" * 32):
            code = bytes.fromhex(hex_)
            cur = conn.execute(
                "INSERT INTO signals(list_id, signal_type, code, fp, labels, added_at, updated_at)"
                " VALUES (?, 'pdq', ?, ?, '', ?, ?)",
                (list_b, code, fingerprint("pdq", code), now, now),
            )
            ids.append(cur.lastrowid)
        conn.execute(
            "INSERT INTO changes(op, signal_type, ids) VALUES ('add', 'pdq', ?)",
            (np.array(ids, np.int64).tobytes(),),
        )
        (gone,) = conn.execute(
            "SELECT s.id FROM signals s JOIN hash_lists l ON l.id = s.list_id"
            " WHERE l.name = 'partner-a' AND s.external_id = 'A0'"
        ).fetchone()
        conn.execute("UPDATE signals SET retracted_at = ? WHERE id = ?", (now, gone))
        conn.execute(
            "INSERT INTO changes(op, signal_type, ids) VALUES ('remove', 'pdq', ?)",
            (np.array([gone], np.int64).tobytes(),),
        )
        conn.execute("COMMIT")


def test_counters_an_old_server_left_wrong_are_found_by_verify_and_fixed_by_rebuild(tmp_path):
    """A schema-1 server still running while this build's CLI upgraded its store keeps
    writing without the list counters (they came with schema 2). Before: `lists ls` and
    `index verify` stayed wrong for good, and nothing recounted them."""
    data_dir = _old_data_dir(tmp_path, "d6d08dd")
    env = {"HASHMATCH_DATA_DIR": str(data_dir)}
    runner = CliRunner()
    assert runner.invoke(cli, ["lists", "ls"], env=env).exit_code == 0  # the upgrade
    _write_as_a_schema_1_server(data_dir / "store.sqlite")

    out = runner.invoke(cli, ["index", "verify"], env=env)
    assert out.exit_code == 1 and "pdq: store 10, index 11" in out.output, out.output
    assert "run `hashmatch index rebuild`" in out.output
    out = runner.invoke(cli, ["index", "rebuild"], env=env)
    assert out.exit_code == 0, out.output
    assert "list counters corrected: 2 (list, type) pair(s)" in out.output
    out = runner.invoke(cli, ["index", "verify"], env=env)
    assert out.exit_code == 0 and "index verify: ok" in out.output, out.output
    with Engine.open(data_dir, eager=False) as engine:
        lists = {h.name: h for h in engine.store.lists()}
        assert (lists["partner-a"].signal_count, lists["partner-a"].retracted_count) == (8, 2)
        assert (lists["partner-b"].signal_count, lists["partner-b"].retracted_count) == (5, 1)
        assert lists["videos"].signal_count == 1
        assert engine.store.recount_lists() == 0  # right now: nothing to correct
