"""Property: whatever mix of ``--list``, ``--types`` and ``--no-match`` scans, changed
files, newly shared and retracted signals and rescans a catalog went through, the next
rescan leaves every file matched with exactly what a scan of every list finds from its
catalogued hashes; and each scan's report holds exactly its own lists' and types'
matches.

Why a property: a file's coverage (the lists its hashes were matched in, catalog_coverage)
is narrowed by a ``--list`` scan that hashes it, intersected when it keeps hashes of an
earlier scan (another ``--types``), widened when an unchanged file is matched again, and
filled by the rescan's second pass (rescan_gap). Each step has its hand-written test;
sequences of them are where one goes wrong. Real images, store, catalog and scans
(in-process hashing); nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from scan_tree import ORIGINALS, _png

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.hashing import hash_media
from hashmatch.engine.rescan import rescan
from hashmatch.engine.runtime import Engine
from hashmatch.engine.scan import LocalMatcher, ScanOptions, match_files, scan
from hashmatch.engine.store import SignalRecord

LISTS = ("a", "b", "c")
PICTURES = {name: _png(ORIGINALS[name]()) for name in ("astronaut", "coffee", "chelsea")}
PICTURES["broken"] = PICTURES["coffee"][:3000]  # fails to decode: its digests only
FILES = 3


def _code(name: str, stype: str) -> str:
    blob = PICTURES[name]
    if stype == "pdq":
        return "33" * 32 if name == "broken" else hash_media(blob, ["pdq"])[0].hex
    return hashlib.new(stype, blob).hexdigest()


scans = st.tuples(
    st.just("scan"),
    st.sampled_from([("a",), ("b",), ("a", "c"), None, "no-match"]),
    st.sampled_from([("pdq",), ("md5",), ("pdq", "md5"), ("sha256",), ("pdq", "sha256")]),
)
ingests = st.tuples(
    st.just("ingest"),
    st.sampled_from(sorted(PICTURES)),
    st.sampled_from(LISTS),
    st.sampled_from(["pdq", "md5", "sha256"]),
)
changes = st.tuples(st.just("change"), st.integers(0, FILES - 1), st.sampled_from(sorted(PICTURES)))
retracts = st.tuples(st.just("retract"), st.integers(0, 30))
rescans = st.tuples(st.just("rescan"))
plans = st.lists(st.one_of(scans, scans, ingests, changes, retracts, rescans), max_size=8)


def _scan(data: Path, catalog: Path, tree: Path, lists, types, report: Path) -> None:
    """A scan, and its report checked: its lists' and types' matches, every one."""
    opts = ScanOptions(workers=0, progress=False, types=types)
    with Catalog(catalog) as cat:
        if lists == "no-match":
            scan([tree], catalog=cat, matcher=None, options=opts)
            return
        matcher = LocalMatcher.open(data, lists=lists)
        try:
            scan([tree], catalog=cat, matcher=matcher, report=report, options=opts)
            got = {
                (r["file"], r["signal_id"])
                for r in map(json.loads, report.read_text().splitlines())
                if r["kind"] == "match"
            }
            assert got == _found(cat, matcher, types), (lists, types)
        finally:
            matcher.close()


def _found(cat: Catalog, matcher: LocalMatcher, types=None) -> set[tuple[str, int]]:
    """(path, signal id) of what ``matcher`` finds from every file's catalogued hashes
    (of ``types``, when given)."""
    paths = dict(cat.conn.execute("SELECT id, path FROM files"))
    hashes = [
        (file_id, [h for h in found if types is None or h.signal_type in types])
        for file_id, found in cat.hashes_of(list(paths)).items()
    ]
    return {
        (paths[file_id], row.signal_id)
        for file_id, rows in match_files(matcher, hashes).items()
        for row in rows
    }


#: signals shared before the first rescan (before every scan's cursor): (picture, list, type)
shared = st.lists(
    st.tuples(
        st.sampled_from(sorted(PICTURES)),
        st.sampled_from(LISTS),
        st.sampled_from(["pdq", "md5", "sha256"]),
    ),
    max_size=6,
)


@settings(max_examples=40, deadline=None)
# a --types scan keeping the hashes a --list scan matched in list a only: still only a
@example(
    plan=[("scan", ("a",), ("pdq",)), ("scan", None, ("md5",))],
    start=["coffee"] * FILES,
    before=[("coffee", "b", "pdq")],
)
# matched in list a, then (unchanged) in list b, then changed: its new bytes in b only
@example(
    plan=[
        ("scan", ("a",), ("pdq",)),
        ("scan", ("b",), ("pdq",)),
        ("change", 0, "astronaut"),
        ("scan", ("b",), ("pdq",)),
    ],
    start=["coffee"] * FILES,
    before=[("astronaut", "a", "pdq"), ("coffee", "c", "pdq")],
)
@given(
    plan=plans,
    start=st.lists(st.sampled_from(sorted(PICTURES)), min_size=FILES, max_size=FILES),
    before=shared,
)
def test_the_next_rescan_leaves_every_file_matched_in_every_list(plan, start, before):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, catalog, tree = root / "data", root / "c.sqlite", root / "tree"
        tree.mkdir()
        for i, name in enumerate(start):
            (tree / f"f{i}.png").write_bytes(PICTURES[name])
        with Engine.open(data, eager=False) as engine:
            for n, name in enumerate(LISTS):  # every list exists, matching nothing here
                engine.ingest([SignalRecord("pdq", f"{n + 1}{n + 1}" * 32)], list_name=name)
            for name, list_name, stype in before:
                record = SignalRecord(stype, _code(name, stype), external_id=name)
                engine.ingest([record], list_name=list_name)
            with Catalog(catalog) as cat:
                rescan(cat, engine.store)  # a cursor: the second pass has work to do
        for step in plan:
            if step[0] == "scan":
                _scan(data, catalog, tree, step[1], step[2], root / "report.jsonl")
            elif step[0] == "ingest":
                _, name, list_name, stype = step
                with Engine.open(data, eager=False) as engine:
                    record = SignalRecord(stype, _code(name, stype), external_id=name)
                    engine.ingest([record], list_name=list_name)
            elif step[0] == "change":
                (tree / f"f{step[1]}.png").write_bytes(PICTURES[step[2]])
            elif step[0] == "retract":
                with Engine.open(data, eager=False) as engine:
                    live = [(s.id, s.list_name) for x in LISTS
                            for s in engine.store.signals(list_name=x, limit=100)]  # fmt: skip
                    signal_id, list_name = live[step[1] % len(live)]
                    engine.retract(list_name=list_name, signal_ids=[signal_id])
            else:
                with Catalog(catalog) as cat, Engine.open(data, eager=False) as engine:
                    rescan(cat, engine.store)

        with Catalog(catalog) as cat, Engine.open(data, eager=False) as engine:
            rescan(cat, engine.store)
            held = {
                (path, signal_id)
                for path, signal_id in cat.conn.execute(
                    "SELECT f.path, m.signal_id FROM matches m JOIN files f ON f.id = m.file_id"
                )
            }
            assert [ids for _, ids in cat.partly_covered()] == []
        matcher = LocalMatcher.open(data)
        try:
            with Catalog(catalog) as cat:
                assert held == _found(cat, matcher)
        finally:
            matcher.close()
