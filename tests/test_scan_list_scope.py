"""A ``--list`` scan that hashes a file again keeps (or rightly drops) the file's
matches from the lists it did not look in.

Before: re-hashing a file replaced its matches of the types hashed from every list,
and a ``--list a`` scan looked only in list a: the file's match from list b vanished
from the catalog, and no rescan (new signals only) ever reported it again. Real
images, a real store and catalog; the hashing runs in the scanning process.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from scan_tree import ORIGINALS, _jpeg, _png

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.hashing import hash_media
from hashmatch.engine.rescan import rescan
from hashmatch.engine.runtime import Engine
from hashmatch.engine.scan import LocalMatcher, ScanOptions, scan
from hashmatch.engine.store import SignalRecord


def _pdq(name: str) -> str:
    (pdq,) = hash_media(_png(ORIGINALS[name]()), ["pdq"])
    return pdq.hex


def _catalogued_matches(catalog: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(catalog) as conn:
        return conn.execute(
            "SELECT signal_type, list_name, hash_hex FROM matches ORDER BY list_name"
        ).fetchall()


def _lists_a_b_and_a_photo_of_b(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(data dir, catalog path, tree, photo): list a holds astronaut's PDQ, list b
    coffee's; the tree's one photo is coffee, so it matches list b only."""
    data, catalog = tmp_path / "data", tmp_path / "c.sqlite"
    with Engine.open(data, eager=False) as engine:
        engine.ingest([SignalRecord("pdq", _pdq("astronaut"))], list_name="a")
        engine.ingest([SignalRecord("pdq", _pdq("coffee"))], list_name="b")
    tree = tmp_path / "tree"
    tree.mkdir()
    photo = tree / "photo.img"
    photo.write_bytes(_png(ORIGINALS["coffee"]()))
    return data, catalog, tree, photo


def test_a_rehashed_files_matches_from_lists_outside_the_scan_are_checked_again(tmp_path):
    data, catalog, tree, photo = _lists_a_b_and_a_photo_of_b(tmp_path)

    def run(lists=None, **options):
        matcher = LocalMatcher.open(data, lists=lists)
        try:
            with Catalog(catalog) as cat:
                opts = ScanOptions(types=("pdq",), workers=0, progress=False, **options)
                return scan([tree], catalog=cat, matcher=matcher, options=opts)
        finally:
            matcher.close()

    def hashed_as() -> str:
        with sqlite3.connect(catalog) as conn:
            (code,) = conn.execute("SELECT code FROM hashes WHERE frame = 0").fetchone()
        return code.hex()

    assert run().matches == 1
    assert [m[:2] for m in _catalogued_matches(catalog)] == [("pdq", "b")]

    # the same bytes hashed again (dihedral this time), looking in list a only
    dihedral = run(lists=["a"], dihedral=True)
    assert dihedral.hashed == 1
    assert [m[:2] for m in _catalogued_matches(catalog)] == [("pdq", "b")]

    # other bytes of the same picture (re-encoded): list b's signal still matches them
    photo.write_bytes(_jpeg(ORIGINALS["coffee"](), 85))
    reencoded = run(lists=["a"])
    # kept in the catalog, not reported: the scan answers for list a (its report used
    # to carry list b's match too, as if a list a scan had found it)
    assert reencoded.hashed == 1 and reencoded.matches == 0
    assert _catalogued_matches(catalog) == [("pdq", "b", hashed_as())]
    with Catalog(catalog) as cat, Engine.open(data, eager=False) as engine:
        found = rescan(cat, engine.store, since=0)  # all: brute force
    assert found.new == []  # the catalog already holds every match
    assert found.retracted == []

    # another picture: list b's match is gone, rightly; list a's is found
    photo.write_bytes(_png(ORIGINALS["astronaut"]()))
    replaced = run(lists=["a"])
    assert replaced.hashed == 1
    assert [m[:2] for m in _catalogued_matches(catalog)] == [("pdq", "a")]


def test_a_lookup_that_fails_keeps_the_matches_from_lists_outside_the_scan(tmp_path):
    """``scan --server --list a`` whose server is lost once the scan started: a file
    hashed again (new bytes) was written with its new hashes and none of its old
    matches, list b's included; it then looked unchanged, so the re-run (``--list a``)
    matched its catalogued hashes in list a only, and list b's match was gone for good.
    Now such a file is not written: the catalog keeps it as it was (its list b match
    too), and the re-run hashes it again and looks list b's match up again."""
    from hashmatch.engine.scan import LookupFailed, RemoteMatcher
    from hashmatch.server.client import HashmatchClient
    from hashmatch.server.testing import running_server

    data, catalog, tree, photo = _lists_a_b_and_a_photo_of_b(tmp_path)
    opts = ScanOptions(types=("pdq",), workers=0, progress=False)
    with running_server(data) as ts:
        everywhere = RemoteMatcher(ts.client(retries=0, timeout=5))
        with Catalog(catalog) as cat:
            assert scan([tree], catalog=cat, matcher=everywhere, options=opts).matches == 1
        before = _catalogued_matches(catalog)
        assert [m[:2] for m in before] == [("pdq", "b")]
        only_a = RemoteMatcher(HashmatchClient(ts.target, retries=0, timeout=5), lists=["a"])
        photo.write_bytes(_jpeg(ORIGINALS["coffee"](), 85))  # re-encoded: hashed again
        ts.server.stop(grace=0)  # lost before the scan's lookup
    with Catalog(catalog) as cat, pytest.raises(LookupFailed, match="run the same scan"):
        scan([tree], catalog=cat, matcher=only_a, options=opts)
    only_a.client.close()
    assert _catalogued_matches(catalog) == before  # list b's match is still there

    matcher = LocalMatcher.open(data, lists=["a"])  # the same scan again, its server back
    with Catalog(catalog) as cat:
        again = scan([tree], catalog=cat, matcher=matcher, options=opts)
    matcher.close()
    # hashed again, list b's match looked up again (kept, not reported: list a's scan)
    assert (again.hashed, again.matches) == (1, 0)
    with sqlite3.connect(catalog) as conn:
        (code,) = conn.execute("SELECT code FROM hashes WHERE frame = 0").fetchone()
    assert _catalogued_matches(catalog) == [("pdq", "b", code.hex())]


def test_a_failed_lookup_says_which_files_are_catalogued_and_which_are_hashed_again(
    tmp_path,
):
    """The error said "the hashes of this batch are in the catalog" of every file, also
    of a file held back uncatalogued (matches from a list outside ``--list``), which the
    re-run hashes again. Now it counts the files catalogued and names those held back."""
    from hashmatch.engine.scan import LookupFailed, RemoteMatcher
    from hashmatch.server.client import HashmatchClient
    from hashmatch.server.testing import running_server

    data, catalog, tree, photo = _lists_a_b_and_a_photo_of_b(tmp_path)
    opts = ScanOptions(types=("pdq",), workers=0, progress=False)
    with running_server(data) as ts:
        everywhere = RemoteMatcher(ts.client(retries=0, timeout=5))
        with Catalog(catalog) as cat:
            assert scan([tree], catalog=cat, matcher=everywhere, options=opts).matches == 1
        only_a = RemoteMatcher(HashmatchClient(ts.target, retries=0, timeout=5), lists=["a"])
        photo.write_bytes(_jpeg(ORIGINALS["coffee"](), 85))  # hashed again, held back
        (tree / "new.img").write_bytes(_png(ORIGINALS["astronaut"]()))  # catalogued
        ts.server.stop(grace=0)
    with Catalog(catalog) as cat, pytest.raises(LookupFailed) as failed:
        scan([tree], catalog=cat, matcher=only_a, options=opts)
    only_a.client.close()
    message = str(failed.value)
    assert "the hashes of this batch are in the catalog" not in message
    assert message.startswith("matching failed (")
    assert "run the same scan again to resume; of this batch, " in message
    assert "1 file(s) hashed are in the catalog (the re-run matches them" in message
    assert message.endswith(
        "1 file(s) with matches in lists outside --list were not catalogued (their "
        f"earlier record stands; the re-run hashes them again): {photo}"
    )
    with sqlite3.connect(catalog) as conn:
        paths = sorted(p for (p,) in conn.execute("SELECT path FROM files"))
    assert paths == [str(tree / "new.img"), str(photo)]
