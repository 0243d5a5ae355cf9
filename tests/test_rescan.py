"""Retroactive matching: new signals find exactly the new matches, without re-hashing.

"Without re-hashing" is measured two ways: the catalog's ``hash_calls`` counter (bumped
by the scanner for every file it hashes) does not move, and the hashing and decoding
entry points are replaced by tripwires that fail the test if anything calls them.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from scan_tree import build_tree, ingest_originals

import hashmatch.engine.decode as decode_module
import hashmatch.engine.hashing as hashing_module
from hashmatch.engine.catalog import Catalog
from hashmatch.engine.rescan import rescan
from hashmatch.engine.runtime import Engine
from hashmatch.engine.scan import LocalMatcher, ScanOptions, scan
from hashmatch.server.cli import cli


def _triples(rows, paths):
    return sorted((paths[m.file_id], m.signal_type, m.signal_id) for m in rows)


def test_rescan_finds_exactly_the_new_matches_without_rehashing(tmp_path, monkeypatch):
    tree = build_tree(tmp_path)
    root = tree.root
    data_dir = tmp_path / "data"
    first = ingest_originals(data_dir, tree, ["astronaut"], list_name="early")
    catalog = Catalog(tmp_path / "catalog.sqlite")
    matcher = LocalMatcher.open(data_dir)
    scan([root], catalog=catalog, matcher=matcher, report=tmp_path / "scan.jsonl",
         options=ScanOptions(workers=1, progress=False))  # fmt: skip
    matcher.close()
    # the first rescan catches up with everything (the scan already found it: nothing new)
    caught_up = rescan(catalog, Engine.open(data_dir, eager=False).store)
    assert caught_up.new == [] and caught_up.retracted == []
    hash_calls = catalog.counter("hash_calls")
    assert hash_calls == 10  # 8 images + the garbage and truncated files reached a hasher

    # a partner shares new hashes (chelsea, rocket) and astronaut's MD5 is retracted
    later = ingest_originals(data_dir, tree, ["chelsea", "rocket"], list_name="later")
    with Engine.open(data_dir, eager=False) as engine:
        assert engine.retract(list_name="early", signal_ids=[first[("astronaut", "md5")]]) == 1
        store_path = engine.store.path

    def boom(*args, **kwargs):
        raise AssertionError("a rescan must not hash or decode media")

    monkeypatch.setattr(hashing_module, "hash_media", boom)
    monkeypatch.setattr(decode_module, "decode_image", boom)
    from hashmatch.engine.store import SignalStore

    store = SignalStore(store_path, create=False)
    result = rescan(catalog, store, report=tmp_path / "rescan.jsonl")
    paths = dict(catalog.conn.execute("SELECT id, path FROM files"))
    assert _triples(result.new, paths) == [
        (str(root / "near/chelsea-q80.jpg"), "pdq", later[("chelsea", "pdq")]),
        (str(root / "unrelated/rocket.png"), "md5", later[("rocket", "md5")]),
        (str(root / "unrelated/rocket.png"), "pdq", later[("rocket", "pdq")]),
    ]
    assert [(paths[r.match.file_id], r.match.signal_type, r.reason) for r in result.retracted] == [
        (str(root / "exact/astronaut-copy.png"), "md5", "retracted")
    ]
    assert catalog.counter("hash_calls") == hash_calls  # nothing was hashed
    s = result.summary
    assert s.new_signals == {"md5": 2, "pdq": 2} and s.removed_signals == 1
    assert s.new_matches == 3 and s.retractions == 1

    records = [json.loads(x) for x in (tmp_path / "rescan.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["match", "match", "match", "retraction", "summary"]
    chelsea = records[0]
    assert chelsea["list"] == "later" and chelsea["labels"] == ["chelsea"]
    assert 0 < chelsea["distance"] <= 31

    # nothing changed since: the next rescan reads no catalog hashes at all
    again = rescan(catalog, store)
    assert again.new == [] and again.retracted == []
    assert again.summary.new_signals == {} and again.summary.catalog_hashes_indexed == {}
    store.close()
    monkeypatch.undo()

    # the catalog now knows exactly what a fresh full scan against the new store finds
    fresh = Catalog(tmp_path / "fresh.sqlite")
    matcher = LocalMatcher.open(data_dir)
    scan([root], catalog=fresh, matcher=matcher, options=ScanOptions(workers=0, progress=False))
    matcher.close()

    def everything(cat):
        return sorted(
            cat.conn.execute(
                "SELECT f.path, m.signal_type, m.signal_id, m.distance, m.list_name "
                "FROM matches m JOIN files f ON f.id = m.file_id"
            )
        )

    assert everything(catalog) == everything(fresh)
    fresh.close()
    catalog.close()


def _exact_copies_scanned(tmp_path):
    """The test tree, "coffee" ingested into list partner, and a catalog of tree/exact
    (hashed, not matched): a rescan then has coffee-copy's pdq + md5 to find."""
    tree = build_tree(tmp_path)
    data_dir = tmp_path / "data"
    ingest_originals(data_dir, tree, ["coffee"], list_name="partner")
    catalog = Catalog(tmp_path / "catalog.sqlite")
    scan([tree.root / "exact"], catalog=catalog, matcher=None,
         options=ScanOptions(workers=0, progress=False, follow_symlinks=False))  # fmt: skip
    return tree, data_dir, catalog


def test_rescan_reports_list_disable_and_since_all(tmp_path):
    _tree, data_dir, catalog = _exact_copies_scanned(tmp_path)
    with Engine.open(data_dir, eager=False) as engine:
        everything = rescan(catalog, engine.store, since=0)
        assert sorted((m.signal_type, m.distance) for m in everything.new) == [
            ("md5", 0),
            ("pdq", 0),
        ]
        engine.store.set_list_enabled("partner", False)
        gone = rescan(catalog, engine.store)
        assert sorted(r.reason for r in gone.retracted) == ["list-disabled", "list-disabled"]
        assert catalog.stats()["matches"] == 0
    catalog.close()


def test_cli_rescan(tmp_path):
    tree = build_tree(tmp_path)
    data_dir = tmp_path / "data"
    runner = CliRunner()
    scanned = runner.invoke(cli, ["scan", str(tree.root / "unrelated"), "--data-dir",
                                  str(data_dir), "--workers", "0", "--no-match",
                                  "--out", str(tmp_path / "s.jsonl")])  # fmt: skip
    assert scanned.exit_code == 0, scanned.output
    ingest_originals(data_dir, tree, ["rocket"], list_name="partner")
    out = tmp_path / "r.jsonl"
    result = runner.invoke(cli, ["rescan", "--data-dir", str(data_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["kind"], r.get("type")) for r in records] == [
        ("match", "md5"),
        ("match", "pdq"),
        ("summary", None),
    ]
    assert records[0]["file"] == str(tree.root / "unrelated/rocket.png")
    bad = runner.invoke(cli, ["rescan", "--data-dir", str(data_dir), "--since", "yesterday"])
    assert bad.exit_code != 0 and "--since" in bad.output
    missing = runner.invoke(cli, ["rescan", "--data-dir", str(tmp_path / "nothing")])
    assert missing.exit_code != 0 and "no catalog" in missing.output


def test_cached_catalog_index_reads_only_new_rows_and_ignores_stale_ones(tmp_path):
    tree = build_tree(tmp_path)
    root = tree.root
    data_dir = tmp_path / "data"
    ingest_originals(data_dir, tree, ["astronaut"], list_name="early")
    catalog = Catalog(tmp_path / "catalog.sqlite")
    opts = ScanOptions(workers=0, progress=False, follow_symlinks=False)
    scan([root], catalog=catalog, matcher=None, options=opts)
    with Engine.open(data_dir, eager=False) as engine:
        first = rescan(catalog, engine.store)
    # md5: the 8 images' and the truncated and garbage files' (read, not decoded)
    assert first.summary.catalog_rows_read == {"md5": 8 + 2, "pdq": 8}
    assert (tmp_path / "catalog.sqlite.rescan-index" / "pdq.index").exists()

    # rocket.png now holds chelsea: its old hash rows are deleted, new rows added
    (root / "unrelated/rocket.png").write_bytes(tree.originals["chelsea"])
    scan([root], catalog=catalog, matcher=None, options=opts)
    later = ingest_originals(data_dir, tree, ["chelsea", "rocket"], list_name="later")
    with Engine.open(data_dir, eager=False) as engine:
        result = rescan(catalog, engine.store)
    # only the re-hashed file's rows were read; the cached index held the other 7
    assert result.summary.catalog_rows_read == {"md5": 1, "pdq": 1}
    assert result.summary.catalog_hashes_indexed == {"md5": 9 + 2, "pdq": 9}  # incl. 1 stale
    paths = dict(catalog.conn.execute("SELECT id, path FROM files"))
    # the stale row (old rocket hashes) matches the rocket signals but is dropped
    assert _triples(result.new, paths) == [
        (str(root / "near/chelsea-q80.jpg"), "pdq", later[("chelsea", "pdq")]),
        (str(root / "unrelated/rocket.png"), "md5", later[("chelsea", "md5")]),
        (str(root / "unrelated/rocket.png"), "pdq", later[("chelsea", "pdq")]),
    ]
    catalog.close()


def test_signals_added_and_retracted_between_rescans_net_out(tmp_path):
    tree, data_dir, catalog = _exact_copies_scanned(tmp_path)
    with Engine.open(data_dir, eager=False) as engine:
        assert len(rescan(catalog, engine.store).new) == 2  # coffee-copy: pdq + md5
        ids = ingest_originals(data_dir, tree, ["astronaut"], list_name="partner")
        astronaut = [sid for (name, _), sid in ids.items() if name == "astronaut"]
        assert engine.retract(list_name="partner", signal_ids=astronaut) == 2
        result = rescan(catalog, engine.store)
    assert result.new == [] and result.retracted == []
    assert result.summary.new_signals == {} and result.summary.removed_signals == 2
    catalog.close()


def test_a_report_that_cannot_be_written_loses_no_new_match(tmp_path):
    """The report is written before the commit: if it fails, the cursor stays put and
    the next rescan announces the same new matches (they are alerts, not to be lost)."""
    _tree, data_dir, catalog = _exact_copies_scanned(tmp_path)
    with Engine.open(data_dir, eager=False) as engine:
        with pytest.raises(FileNotFoundError, match="no-such-dir"):
            rescan(catalog, engine.store, report=tmp_path / "no-such-dir" / "r.jsonl")
        result = rescan(catalog, engine.store, report=tmp_path / "r.jsonl")
    assert len(result.new) == 2  # coffee-copy: pdq + md5, announced now
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert sorted(r["type"] for r in records if r["kind"] == "match") == ["md5", "pdq"]
    assert records[-1]["kind"] == "summary" and records[-1]["since"] == 0
    catalog.close()


def test_a_signal_deleted_while_a_rescan_runs_is_not_reported(tmp_path, monkeypatch):
    """The rescan reads a signal's provenance only when it has a hit, after the search:
    a list deleted in between (another process's `lists delete`) drops its hits instead
    of failing the rescan or reporting a signal the store no longer has."""
    from hashmatch.engine import rescan as rescan_module

    tree = build_tree(tmp_path)
    data_dir = tmp_path / "data"
    ingest_originals(data_dir, tree, ["astronaut"], list_name="early")
    catalog = Catalog(tmp_path / "catalog.sqlite")
    matcher = LocalMatcher.open(data_dir)
    scan([tree.root], catalog=catalog, matcher=matcher, report=tmp_path / "scan.jsonl",
         options=ScanOptions(workers=1, progress=False))  # fmt: skip
    matcher.close()
    rescan(catalog, Engine.open(data_dir, eager=False).store)  # caught up
    ingest_originals(data_dir, tree, ["chelsea"], list_name="gone")
    ingest_originals(data_dir, tree, ["rocket"], list_name="kept")
    engine = Engine.open(data_dir, eager=False)
    read = rescan_module.StoreChanges.new_signals

    def read_then_delete(self, signal_type, ids, now):
        found = read(self, signal_type, ids, now)
        if signal_type == "pdq":
            engine.store.delete_list("gone")  # after the read, before the hits' rows
        return found

    monkeypatch.setattr(rescan_module.StoreChanges, "new_signals", read_then_delete)
    result = rescan(catalog, engine.store)
    assert result.new, "the kept list's matches are reported"
    assert {m.list_name for m in result.new} == {"kept"}
    monkeypatch.undo()
    held = {row[0] for row in catalog.conn.execute("SELECT DISTINCT list_name FROM matches")}
    assert "gone" not in held
    engine.close()
