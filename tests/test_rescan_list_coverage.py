"""``rescan --since last`` after a ``--list`` scan: the files the scan matched in some
lists only are matched in the others, the signals shared before the rescan's cursor
too, from their catalogued hashes.

Before: the catalog did not record what each file was matched in, and a rescan reads
only the signals shared since its cursor: list b's earlier signals never met the files
a ``--list a`` scan hashed (only ``--since all`` or a scan without ``--list`` found
those matches). "Without hashing" is measured as the other rescan tests measure it:
the catalog's ``hash_calls`` counter does not move, and the hashing and decoding entry
points are tripwires. Real images, a real store, catalog and server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scan_tree import ORIGINALS, _png

import hashmatch.engine.decode as decode_module
import hashmatch.engine.hashing as hashing_module
from hashmatch.engine.catalog import Catalog
from hashmatch.engine.hashing import hash_media
from hashmatch.engine.rescan import ServerChanges, StoreChanges, rescan
from hashmatch.engine.runtime import Engine
from hashmatch.engine.scan import LocalMatcher, RemoteMatcher, ScanOptions, scan
from hashmatch.engine.store import SignalRecord
from hashmatch.server.testing import running_server

PICTURES = ("astronaut", "coffee", "chelsea")


def _ingest(data: Path, list_name: str, *names: str) -> dict[str, int]:
    """The PDQ of each named picture into ``list_name``: name -> signal id."""
    with Engine.open(data, eager=False) as engine:
        for name in names:
            (pdq,) = hash_media(_png(ORIGINALS[name]()), ["pdq"])
            engine.ingest([SignalRecord("pdq", pdq.hex, external_id=name)], list_name=list_name)
        return {
            info.external_id: info.id
            for info in engine.store.signals(list_name=list_name, limit=100)
            if info.external_id in names
        }


def _world(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(data dir, catalog, tree): list a holds astronaut, list b coffee; the tree has
    astronaut, coffee and chelsea; the catalog has been rescanned (a cursor is set)."""
    data, catalog, tree = tmp_path / "data", tmp_path / "c.sqlite", tmp_path / "tree"
    _ingest(data, "a", "astronaut")
    _ingest(data, "b", "coffee")
    tree.mkdir()
    for name in PICTURES:
        (tree / f"{name}.png").write_bytes(_png(ORIGINALS[name]()))
    with Catalog(catalog) as cat, Engine.open(data, eager=False) as engine:
        assert rescan(cat, engine.store).summary.to > 0  # the cursor: the store's head
    return data, catalog, tree


def _scan(data: Path, catalog: Path, tree: Path, lists=None, **options):
    matcher = LocalMatcher.open(data, lists=lists)
    try:
        with Catalog(catalog) as cat:
            options = {"types": ("pdq",), **options}
            opts = ScanOptions(workers=0, progress=False, **options)
            return scan([tree], catalog=cat, matcher=matcher, options=opts)
    finally:
        matcher.close()


def _rescan(data: Path, catalog: Path, **kwargs):
    with Catalog(catalog) as cat, Engine.open(data, eager=False) as engine:
        result = rescan(cat, engine.store, **kwargs)
        paths = dict(cat.conn.execute("SELECT id, path FROM files"))
        hash_calls = cat.counter("hash_calls")
    return result, paths, hash_calls


def _named(rows, paths) -> list[tuple[str, str, int]]:
    return sorted((Path(paths[m.file_id]).stem, m.list_name, m.signal_id) for m in rows)


def _no_hashing(monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("a rescan must not hash or decode media")

    monkeypatch.setattr(hashing_module, "hash_media", boom)
    monkeypatch.setattr(decode_module, "decode_image", boom)


def test_a_list_scans_files_meet_the_other_lists_earlier_signals_once_unhashed(
    tmp_path, monkeypatch
):
    data, catalog, tree = _world(tmp_path)
    early = _ingest(data, "b", "coffee")  # list b's coffee, shared before the scan
    only_a = _scan(data, catalog, tree, lists=["a"])
    assert (only_a.hashed, only_a.matches) == (3, 1)  # astronaut, in list a
    # after the scan: chelsea in list b (pass 1 finds it, and the gap pass too), and
    # list a's astronaut retracted
    late = _ingest(data, "b", "chelsea")
    with Engine.open(data, eager=False) as engine:
        (astronaut,) = [info.id for info in engine.store.signals(list_name="a", limit=10)]
        assert engine.retract(list_name="a", signal_ids=[astronaut]) == 1
    with Catalog(catalog) as cat:
        hash_calls = cat.counter("hash_calls")
    _no_hashing(monkeypatch)

    result, paths, after = _rescan(data, catalog)
    assert _named(result.new, paths) == [
        ("chelsea", "b", late["chelsea"]),
        ("coffee", "b", early["coffee"]),
    ]  # each once, though pass 1 and the gap pass both find chelsea's
    assert [(Path(paths[r.match.file_id]).stem, r.reason) for r in result.retracted] == [
        ("astronaut", "retracted")
    ]
    assert result.summary.gap_files == 3 and result.summary.new_matches == 2
    assert after == hash_calls  # nothing hashed

    again, _, _ = _rescan(data, catalog)  # the files are matched in every list now
    assert (again.new, again.retracted, again.summary.gap_files) == ([], [], 0)


def test_an_all_lists_scan_needs_no_second_pass(tmp_path, monkeypatch):
    """A scan of every list answers for every list: the rescan looks nothing up
    again (its source is never asked for a matcher)."""
    data, catalog, tree = _world(tmp_path)
    every = _scan(data, catalog, tree)
    assert (every.hashed, every.matches) == (3, 2)

    def no_matcher(*args, **kwargs):
        raise AssertionError("no file needs a second pass")

    monkeypatch.setattr(StoreChanges, "matcher", no_matcher)
    late = _ingest(data, "b", "chelsea")
    result, paths, _ = _rescan(data, catalog)
    assert _named(result.new, paths) == [("chelsea", "b", late["chelsea"])]
    assert result.summary.gap_files == 0


def test_files_scanned_in_each_list_in_turn_need_no_second_pass(tmp_path, monkeypatch):
    """``--list a`` then ``--list b`` over the same unchanged files: matched in every
    list between them (their hashes are the same), so nothing is looked up again."""
    data, catalog, tree = _world(tmp_path)
    assert _scan(data, catalog, tree, lists=["a"]).hashed == 3
    second = _scan(data, catalog, tree, lists=["b"])
    assert (second.hashed, second.skipped_unchanged, second.matches) == (0, 3, 1)
    monkeypatch.setattr(StoreChanges, "matcher", None)  # any call fails
    result, _, _ = _rescan(data, catalog)
    assert (result.new, result.summary.gap_files) == ([], 0)


def test_a_list_scan_of_a_changed_file_loses_the_coverage_of_its_old_bytes(tmp_path):
    """A file matched in every list, then replaced by other bytes and hashed again by a
    ``--list a`` scan: the new bytes were matched in list a only (and in list b only
    for the matches the old bytes had there), so the rescan looks them up in list b."""
    data, catalog, tree = _world(tmp_path)
    assert _scan(data, catalog, tree).matches == 2
    (tree / "chelsea.png").write_bytes(_png(ORIGINALS["coffee"]()))  # now coffee's bytes
    changed = _scan(data, catalog, tree, lists=["a"])
    assert (changed.hashed, changed.matches) == (1, 1)  # astronaut's, in list a
    result, paths, _ = _rescan(data, catalog)
    assert [(Path(paths[m.file_id]).stem, m.list_name) for m in result.new] == [("chelsea", "b")]
    assert result.summary.gap_files == 1


def test_a_rescan_from_the_start_fills_the_gap_itself(tmp_path, monkeypatch):
    """``--since all`` reads every signal: no second pass, and the files are matched in
    every list afterwards."""
    data, catalog, tree = _world(tmp_path)
    _scan(data, catalog, tree, lists=["a"])
    monkeypatch.setattr(StoreChanges, "matcher", None)
    result, paths, _ = _rescan(data, catalog, since=0)
    assert [(Path(paths[m.file_id]).stem, m.list_name) for m in result.new] == [("coffee", "b")]
    again, _, _ = _rescan(data, catalog)
    assert (again.new, again.summary.gap_files) == ([], 0)


def test_a_list_scan_through_a_server_is_completed_by_a_rescan_through_it(tmp_path, monkeypatch):
    """The same through a real server (``Signals.Changes`` for the new signals, ``Match``
    in the lists the files missed for the gap): list b's earlier signal found once."""
    data, catalog, tree = _world(tmp_path)
    opts = ScanOptions(types=("pdq",), workers=0, progress=False)
    with running_server(data, tenants={"ops": (["match", "export"], True)}) as ts:
        client = ts.client("ops")
        with Catalog(catalog) as cat:  # the server's cursor (kept apart from the local one)
            assert rescan(cat, ServerChanges(client, ts.target)).summary.to > 0
        only_a = RemoteMatcher(ts.client("ops"), lists=["a"])
        with Catalog(catalog) as cat:
            assert scan([tree], catalog=cat, matcher=only_a, options=opts).matches == 1
            hash_calls = cat.counter("hash_calls")
        only_a.close()
        _no_hashing(monkeypatch)
        with Catalog(catalog) as cat:
            result = rescan(cat, ServerChanges(client, ts.target))
            paths = dict(cat.conn.execute("SELECT id, path FROM files"))
            assert [(Path(paths[m.file_id]).stem, m.list_name) for m in result.new] == [
                ("coffee", "b")
            ]
            assert result.summary.gap_files == 3
            again = rescan(cat, ServerChanges(client, ts.target))
            assert (again.new, again.summary.gap_files) == ([], 0)
            assert cat.counter("hash_calls") == hash_calls
        client.close()


@pytest.mark.parametrize("lists", [["a"], None])
def test_a_no_match_scan_is_matched_in_every_list_by_the_next_rescan(tmp_path, lists):
    """``--no-match`` (no matcher): the next rescan matches its files in every list;
    after a scan of list a, in the others."""
    data, catalog, tree = _world(tmp_path)
    with Catalog(catalog) as cat:
        opts = ScanOptions(types=("pdq",), workers=0, progress=False)
        assert scan([tree], catalog=cat, matcher=None, options=opts).hashed == 3
    if lists:
        assert _scan(data, catalog, tree, lists=lists).matches == 1
    result, paths, _ = _rescan(data, catalog)
    found = sorted((Path(paths[m.file_id]).stem, m.list_name) for m in result.new)
    assert found == ([("coffee", "b")] if lists else [("astronaut", "a"), ("coffee", "b")])
    assert result.summary.gap_files == 3


def test_the_gap_of_a_file_that_failed_to_decode_is_filled_by_its_digest(tmp_path):
    """A truncated picture fails to decode; a ``--list a`` scan still catalogued its MD5
    (the exact digests of a file read but not decoded). List b's MD5 of those bytes,
    shared before the scan, is found by the next rescan, through that digest."""
    import hashlib

    data, catalog, tree = _world(tmp_path)
    broken = _png(ORIGINALS["rocket"]())[:2000]
    (tree / "broken.png").write_bytes(broken)
    with Engine.open(data, eager=False) as engine:
        engine.ingest([SignalRecord("md5", hashlib.md5(broken).hexdigest())], list_name="b")
    _rescan(data, catalog)  # the cursor past it (the catalog holds no file yet)
    only_a = _scan(data, catalog, tree, lists=["a"], types=("pdq", "md5"))
    assert (only_a.failed, only_a.failed_digested) == (1, 1)
    result, paths, _ = _rescan(data, catalog)
    found = sorted((Path(paths[m.file_id]).name, m.signal_type, m.list_name) for m in result.new)
    assert found == [("broken.png", "md5", "b"), ("coffee.png", "pdq", "b")]


def test_a_rescan_whose_report_cannot_be_written_leaves_the_gap_for_the_next(tmp_path):
    """The second pass's matches and the files' new coverage are committed with the
    cursor, after the report is written: a report that cannot be written rolls them
    back, and the next rescan finds the same matches."""
    data, catalog, tree = _world(tmp_path)
    _scan(data, catalog, tree, lists=["a"])
    with pytest.raises(OSError):
        _rescan(data, catalog, report=tmp_path / "missing-dir" / "r.jsonl")
    with Catalog(catalog) as cat:
        assert [len(ids) for _, ids in cat.partly_covered()] == [3]
    result, paths, _ = _rescan(data, catalog)
    assert [(Path(paths[m.file_id]).stem, m.list_name) for m in result.new] == [("coffee", "b")]


def test_a_batch_of_more_unchanged_files_than_sqlite_takes_variables_is_widened(tmp_path):
    """The unchanged files of a batch (``--batch-size``) had their coverage widened in
    one statement naming every file: past SQLite's limit on a statement's variables
    (999 before SQLite 3.32, as system SQLites of long-term distributions still are;
    32766 after) the ``--list b`` re-run failed 'too many SQL variables', its batch
    rolled back. The limit is set as those SQLites have it; 1200 files, one batch."""
    import sqlite3

    data, catalog, tree = tmp_path / "data", tmp_path / "c.sqlite", tmp_path / "tree"
    tree.mkdir()
    for i in range(1200):
        (tree / f"{i:04d}.bin").write_bytes(b"file %d" % i)
    with Engine.open(data, eager=False) as engine:
        for name, digest in (("a", "00" * 16), ("b", "11" * 16)):
            engine.ingest([SignalRecord("md5", digest)], list_name=name)
    for lists in (["a"], ["b"]):
        matcher = LocalMatcher.open(data, lists=lists)
        try:
            with Catalog(catalog) as cat:
                cat.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
                opts = ScanOptions(workers=0, progress=False, types=("md5",), batch_size=2000)
                summary = scan([tree], catalog=cat, matcher=matcher, options=opts)
        finally:
            matcher.close()
    assert (summary.hashed, summary.skipped_unchanged) == (0, 1200)
    with Catalog(catalog) as cat:
        assert [(lists, len(ids)) for lists, ids in cat.partly_covered(chunk=2000)] == [
            (frozenset({"a", "b"}), 1200)
        ]
    result, _, _ = _rescan(data, catalog)
    assert (result.new, result.summary.gap_files) == ([], 0)  # matched in both already
