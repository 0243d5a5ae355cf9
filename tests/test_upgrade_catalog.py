"""A scan catalog written by an older hashmatch keeps working in this one (files skip,
rescans find every match), and a newer one is refused before anything is added to it.

Old layouts are written by hand from the old builds' own DDL (catalog.py at afaa773).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scan_tree import build_tree

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.errors import CorruptData
from hashmatch.engine.hashing import hash_media
from hashmatch.engine.rescan import rescan
from hashmatch.engine.runtime import Engine
from hashmatch.engine.scan import LocalMatcher, ScanOptions, scan
from hashmatch.engine.store import SignalRecord

#: ``hashes`` as the first catalog builds created it (afaa773 .. e2d2267): ids reusable
OLD_HASHES_DDL = """
CREATE TABLE hashes (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    signal_type TEXT NOT NULL,
    frame INTEGER NOT NULL DEFAULT 0,
    code BLOB NOT NULL,
    quality INTEGER,
    timestamp REAL
);
CREATE INDEX hashes_file ON hashes(file_id);
CREATE INDEX hashes_code ON hashes(signal_type, code);
"""


def _scan(tree_root: Path, catalog_path: Path, data_dir: Path, report: Path):
    matcher = LocalMatcher.open(data_dir)
    try:
        with Catalog(catalog_path) as catalog:
            options = ScanOptions(workers=1, progress=False, types=("pdq",))
            return scan([tree_root], catalog=catalog, matcher=matcher, report=report,
                        options=options)  # fmt: skip
    finally:
        matcher.close()


def _rescan(catalog_path: Path, data_dir: Path):
    with Catalog(catalog_path) as catalog, Engine.open(data_dir, eager=False) as engine:
        return rescan(catalog, engine.store)


def _ingest(data_dir: Path, hexes: list[str]) -> None:
    with Engine.open(data_dir, eager=False) as engine:
        records = [SignalRecord("pdq", h) for h in hexes]
        assert engine.ingest(records, list_name="partner").added == len(records)


def test_a_catalog_of_the_first_builds_rescans_a_rehashed_file(tmp_path):
    """Before: a catalog whose ``hashes`` ids could be reused (first builds) gave the
    re-hashed last file its old row id again; the rescan cache, reading only ids above
    the largest it held, never saw the new hash, and its new match was silently missed."""
    tree = build_tree(tmp_path)
    data_dir, catalog_path = tmp_path / "data", tmp_path / "catalog.sqlite"
    with sqlite3.connect(catalog_path) as conn:  # the old layout, as its build wrote it
        conn.executescript(OLD_HASHES_DDL)
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('catalog_id', 'c0ffee')")
    _ingest(data_dir, ["00" * 32])
    first = _scan(tree.root, catalog_path, data_dir, tmp_path / "s1.jsonl")
    assert first.hashed == 8
    with sqlite3.connect(catalog_path) as conn:
        last_id, last_path = conn.execute(
            "SELECT h.id, f.path FROM hashes h JOIN files f ON f.id = h.file_id"
            " ORDER BY h.id DESC LIMIT 1"
        ).fetchone()
    _ingest(data_dir, ["11" * 32])
    _rescan(catalog_path, data_dir)  # builds the rescan index cache up to last_id

    # the file whose hash row is last gets new content: the scan re-hashes it
    rng = np.random.default_rng(3)
    noise = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).resize((256, 256), Image.Resampling.BICUBIC).save(last_path)
    second = _scan(tree.root, catalog_path, data_dir, tmp_path / "s2.jsonl")
    assert (second.hashed, second.skipped_unchanged) == (1, 7)  # the others still skip
    (new_pdq,) = [h.hex for h in hash_media(Path(last_path).read_bytes(), ["pdq"])]
    _ingest(data_dir, [new_pdq])
    result = _rescan(catalog_path, data_dir)
    assert [(m.signal_type, m.distance) for m in result.new] == [("pdq", 0)]
    with sqlite3.connect(catalog_path) as conn:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'hashes'").fetchone()
        assert "AUTOINCREMENT" in sql  # upgraded on open
        assert conn.execute("SELECT MAX(id) FROM hashes").fetchone()[0] > last_id  # not reused


def test_a_catalog_of_a_newer_schema_is_refused_before_anything_is_added(tmp_path):
    """Before: this build's DDL ran first (adding its tables and indexes to a newer
    catalog, or failing with 'no such column: md5'), and the message said no remedy."""
    path = tmp_path / "catalog.sqlite"
    with sqlite3.connect(path) as conn:  # a newer layout: files renamed a column
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '2'), ('catalog_id', 'x')")
        conn.execute("CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT, content_md5 BLOB)")
        layout = conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    for readonly in (False, True):
        with pytest.raises(CorruptData, match=r"catalog schema 2 is newer .*upgrade hashmatch"):
            Catalog(path, readonly=readonly)
    with sqlite3.connect(path) as conn:
        assert (
            conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall() == layout
        )
    with pytest.raises(CorruptData, match="newer"):  # the lock was released: same refusal
        Catalog(path)


def test_an_old_catalog_keeps_its_files_skipping(tmp_path):
    """A catalog of the current layout written before (schema 1, a rescan cursor without
    the store's identity): files skip, the cursor goes on from where it was."""
    tree = build_tree(tmp_path)
    data_dir, catalog_path = tmp_path / "data", tmp_path / "catalog.sqlite"
    _ingest(data_dir, ["00" * 32])
    assert _scan(tree.root, catalog_path, data_dir, tmp_path / "s1.jsonl").hashed == 8
    _ingest(data_dir, ["11" * 32])
    _rescan(catalog_path, data_dir)
    with sqlite3.connect(catalog_path) as conn:  # as a build before the cursor record wrote it
        conn.execute("DELETE FROM meta WHERE key = 'rescan_log'")
    again = _scan(tree.root, catalog_path, data_dir, tmp_path / "s2.jsonl")
    assert (again.hashed, again.skipped_unchanged) == (0, 8)
    _ingest(data_dir, ["22" * 32])
    result = _rescan(catalog_path, data_dir)
    assert (result.summary.since, result.summary.new_signals) == (2, {"pdq": 1})


def test_the_catalog_upgrade_runs_once(tmp_path):
    """A second open finds ids that are never reused: the catalog id (and with it every
    rescan index cache) is kept from then on."""
    path = tmp_path / "catalog.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_HASHES_DDL)
    Catalog(path).close()
    with sqlite3.connect(path) as conn:
        catalog_id = conn.execute("SELECT value FROM meta WHERE key = 'catalog_id'").fetchone()
    Catalog(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'catalog_id'").fetchone() == (
            catalog_id
        )


#: the catalog as builds before match coverage (up to 3239c26) created it: no
#: ``coverage`` table, no ``files.coverage_id``
BEFORE_COVERAGE_DDL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER,
    mtime_ns INTEGER,
    md5 BLOB,
    types TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    reason TEXT,
    error TEXT,
    scanned_at REAL NOT NULL,
    seen_run INTEGER,
    ino INTEGER,
    ctime_ns INTEGER
);
CREATE INDEX files_seen_run ON files(seen_run);
CREATE INDEX files_md5 ON files(md5);
CREATE TABLE hashes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    signal_type TEXT NOT NULL,
    frame INTEGER NOT NULL DEFAULT 0,
    code BLOB NOT NULL,
    quality INTEGER,
    timestamp REAL
);
CREATE INDEX hashes_file ON hashes(file_id);
CREATE INDEX hashes_code ON hashes(signal_type, code);
CREATE TABLE matches (
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    signal_type TEXT NOT NULL,
    signal_id INTEGER NOT NULL,
    hash_hex TEXT NOT NULL,
    signal_hex TEXT NOT NULL,
    distance INTEGER NOT NULL,
    list_name TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '[]',
    external_id TEXT,
    variant INTEGER NOT NULL DEFAULT 0,
    query_match_pct REAL,
    target_match_pct REAL,
    found_by TEXT NOT NULL,
    found_at REAL NOT NULL,
    PRIMARY KEY (file_id, signal_type, signal_id)
);
CREATE INDEX matches_signal ON matches(signal_id);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    args TEXT NOT NULL DEFAULT '{}',
    summary TEXT
);
"""


def test_a_catalog_from_before_match_coverage_is_upgraded_and_its_lists_scans_completed(
    tmp_path,
):
    """A catalog written before the catalog kept what each file was matched in opens
    (a reader leaves it as it is), gets the ``coverage`` table and column on its first
    write (schema 1 still: an older build can use it), counts its files as matched in
    every list (as those builds had them; nothing is looked up again), and a
    ``--list`` scan into it is completed by the next rescan."""
    from scan_tree import ORIGINALS, _png

    data_dir, catalog_path, tree = tmp_path / "data", tmp_path / "c.sqlite", tmp_path / "t"
    pictures = {name: _png(ORIGINALS[name]()) for name in ("astronaut", "coffee")}
    pdq = {name: hash_media(blob, ["pdq"])[0] for name, blob in pictures.items()}
    with Engine.open(data_dir, eager=False) as engine:
        engine.ingest([SignalRecord("pdq", pdq["astronaut"].hex)], list_name="a")
        engine.ingest([SignalRecord("pdq", pdq["coffee"].hex)], list_name="b")
        head = engine.store.change_counter()
    with sqlite3.connect(catalog_path) as conn:  # an older build's scan, then its rescan
        conn.executescript(BEFORE_COVERAGE_DDL)
        conn.executemany("INSERT INTO meta VALUES (?, ?)",
                         [("schema_version", "1"), ("catalog_id", "c0ffee"),
                          ("rescan_seq", str(head))])  # fmt: skip
        conn.execute("INSERT INTO files(id, path, size, mtime_ns, types, status, scanned_at)"
                     " VALUES (1, '/old/coffee.png', 1, 1, 'pdq', 'hashed', 0)")  # fmt: skip
        conn.execute("INSERT INTO hashes(file_id, signal_type, code, quality)"
                     " VALUES (1, 'pdq', ?, ?)", (pdq["coffee"].codes[0].tobytes(),
                                                  pdq["coffee"].quality))  # fmt: skip
        layout = conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    with Catalog(catalog_path, readonly=True) as reader:
        assert list(reader.lookup(["/old/coffee.png"])) == ["/old/coffee.png"]
    with sqlite3.connect(catalog_path) as conn:
        assert conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall() == (
            layout
        )

    result = _rescan(catalog_path, data_dir)  # the first write: upgraded
    assert (result.new, result.summary.gap_files) == ([], 0)  # matched everywhere, as was
    with sqlite3.connect(catalog_path) as conn:
        assert "coverage_id" in {row[1] for row in conn.execute("PRAGMA table_info(files)")}
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            "1",
        )

    tree.mkdir()
    (tree / "coffee.png").write_bytes(pictures["coffee"])
    matcher = LocalMatcher.open(data_dir, lists=["a"])
    with Catalog(catalog_path) as catalog:
        opts = ScanOptions(workers=0, progress=False, types=("pdq",))
        assert scan([tree], catalog=catalog, matcher=matcher, options=opts).matches == 0
    matcher.close()
    result = _rescan(catalog_path, data_dir)
    with Catalog(catalog_path, readonly=True) as reader:
        found = [(reader.path_of([m.file_id])[m.file_id], m.list_name) for m in result.new]
    assert found == [(str(tree / "coffee.png"), "b")]
    assert result.summary.gap_files == 1
