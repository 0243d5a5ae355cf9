"""The scan catalog: durability settings, round-trips, replacement semantics, counters."""

from __future__ import annotations

import numpy as np
import pytest

from hashmatch.engine.catalog import FAILED, HASHED, Catalog, FileHashes, MatchRow


def _row(file_id: int, signal_id: int, distance: int = 3) -> MatchRow:
    return MatchRow(file_id, "pdq", signal_id, "ab" * 32, "cd" * 32, distance, "partner",
                    ("a", "b"), "ext-1")  # fmt: skip


def test_catalog_is_wal_with_full_sync(tmp_path):
    with Catalog(tmp_path / "c.sqlite") as cat:
        assert cat.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert cat.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_hashes_round_trip_and_replace(tmp_path):
    rng = np.random.default_rng(1)
    pdq = rng.integers(0, 256, (8, 32), dtype=np.uint8)
    md5 = rng.integers(0, 256, (1, 16), dtype=np.uint8)
    with Catalog(tmp_path / "c.sqlite") as cat:
        with cat.transaction():
            fid = cat.put_hashed(
                "/m/a.jpg", size=10, mtime_ns=5, md5=b"x" * 16, types=["pdq", "md5"],
                hashes=[FileHashes("pdq", pdq, [90] * 8), FileHashes("md5", md5)],
            )  # fmt: skip
            cat.add_matches([_row(fid, 7), _row(fid, 8)], found_by="scan")
        rec = cat.lookup(["/m/a.jpg", "/m/missing.jpg"])
        assert list(rec) == ["/m/a.jpg"]
        assert (rec["/m/a.jpg"].status, rec["/m/a.jpg"].size, rec["/m/a.jpg"].types) == (
            HASHED, 10, ("pdq", "md5"),
        )  # fmt: skip
        stored = {h.signal_type: h for h in cat.hashes_of([fid])[fid]}
        assert np.array_equal(stored["pdq"].codes, pdq) and stored["pdq"].qualities == [90] * 8
        assert np.array_equal(stored["md5"].codes, md5) and stored["md5"].qualities == [None]
        ids, file_ids, codes = cat.codes("pdq")
        assert len(ids) == 8 and set(file_ids.tolist()) == {fid} and np.array_equal(codes, pdq)
        assert cat.find_exact("md5", md5[0].tobytes())[0][1] == fid
        # a duplicate match is ignored
        with cat.transaction():
            assert cat.add_matches([_row(fid, 7)], found_by="rescan") == 0

        # re-hashing the same path replaces hashes and drops stale matches
        with cat.transaction():
            same = cat.put_hashed("/m/a.jpg", size=11, mtime_ns=6, md5=None, types=["md5"],
                                  hashes=[FileHashes("md5", md5)])  # fmt: skip
        assert same == fid
        assert cat.stats()["hashes"] == {"md5": 1} and cat.stats()["matches"] == 0

        with cat.transaction():
            cat.put_failed("/m/b.jpg", reason="corrupt", error="truncated", size=3, mtime_ns=1)
            cat.bump_counter("hash_calls", 2)
            cat.bump_counter("hash_calls", 3)
        stats = cat.stats()
        assert stats["failed_by_reason"] == {"corrupt": 1} and stats["hash_calls"] == 5
        assert cat.lookup(["/m/b.jpg"])["/m/b.jpg"].status == FAILED


def test_removing_matches_of_retracted_signals(tmp_path):
    with Catalog(tmp_path / "c.sqlite") as cat:
        with cat.transaction():
            a = cat.put_hashed("/a", size=1, mtime_ns=1, md5=None, types=[], hashes=[])
            b = cat.put_hashed("/b", size=1, mtime_ns=1, md5=None, types=[], hashes=[])
            cat.add_matches([_row(a, 1), _row(a, 2), _row(b, 2)], found_by="scan")
        with cat.transaction():
            gone = cat.remove_matches_of_signals([2])
        assert sorted((m.file_id, m.signal_id) for m in gone) == [(a, 2), (b, 2)]
        assert gone[0].labels == ("a", "b") and gone[0].external_id == "ext-1"
        assert cat.matched_signal_ids() == [1]


def test_failed_transaction_leaves_nothing(tmp_path):
    with Catalog(tmp_path / "c.sqlite") as cat:
        with pytest.raises(RuntimeError, match="crash mid-batch"), cat.transaction():
            cat.put_failed("/x", reason="corrupt", error="bad")
            raise RuntimeError("crash mid-batch")
        assert cat.stats()["files"] == 0


def test_a_second_reader_sees_committed_rows(tmp_path):
    path = tmp_path / "c.sqlite"
    with Catalog(path) as writer:
        with writer.transaction():
            writer.put_failed("/x", reason="empty", error="0 bytes")
        with Catalog(path, readonly=True) as reader:
            assert reader.stats()["failed"] == 1
