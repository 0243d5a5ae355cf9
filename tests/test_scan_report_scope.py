"""What a scan's report answers for: the ``--types`` it was asked, every list it
looked in, and (for an unchanged file) the catalogued hashes matched again.

Real images, a real store and catalog; the hashing runs in the scanning process.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from scan_tree import ORIGINALS, _png

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.hashing import hash_media
from hashmatch.engine.runtime import Engine
from hashmatch.engine.scan import LocalMatcher, ScanOptions, scan
from hashmatch.engine.store import SignalRecord


def _world(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(data dir, catalog, tree): one photo (coffee) whose PDQ is in list ``photos``
    and whose MD5 is in list ``files``."""
    photo = _png(ORIGINALS["coffee"]())
    (pdq,) = hash_media(photo, ["pdq"])
    data = tmp_path / "data"
    with Engine.open(data, eager=False) as engine:
        engine.ingest([SignalRecord("pdq", pdq.hex)], list_name="photos")
        engine.ingest([SignalRecord("md5", hashlib.md5(photo).hexdigest())], list_name="files")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "photo.png").write_bytes(photo)
    return data, tmp_path / "c.sqlite", tree


def _scan(data: Path, catalog: Path, tree: Path, report: Path, **options) -> dict:
    lists = options.pop("lists", None)
    matcher = LocalMatcher.open(data, lists=lists)
    try:
        with Catalog(catalog) as cat:
            opts = ScanOptions(workers=0, progress=False, **options)
            scan([tree], catalog=cat, matcher=matcher, report=report, options=opts)
    finally:
        matcher.close()
    records = [json.loads(line) for line in report.read_text().splitlines()]
    return {
        "matches": sorted((r["type"], r["list"]) for r in records if r["kind"] == "match"),
        "summary": records[-1],
    }


def test_a_narrower_types_scan_reports_only_its_types(tmp_path):
    """A ``--types md5`` re-run reported the PDQ match an earlier ``--types pdq,md5``
    scan catalogued (kept, as it should be, for a later PDQ scan and rescans), as if
    this run had found it; its summary counted it too."""
    data, catalog, tree = _world(tmp_path)
    both = _scan(data, catalog, tree, tmp_path / "both.jsonl", types=("pdq", "md5"))
    assert both["matches"] == [("md5", "files"), ("pdq", "photos")]

    md5 = _scan(data, catalog, tree, tmp_path / "md5.jsonl", types=("md5",))
    assert md5["matches"] == [("md5", "files")]
    assert (md5["summary"]["matches"], md5["summary"]["matched_files"]) == (1, 1)

    pdq = _scan(data, catalog, tree, tmp_path / "pdq.jsonl", types=("pdq",))
    assert pdq["matches"] == [("pdq", "photos")]  # the catalog kept it all along


def _cli(*args: str) -> tuple[int, str, list[dict]]:
    """(exit code, stderr, report records) of one in-process CLI run (--out -)."""
    from click.testing import CliRunner

    from hashmatch.server.cli import cli

    result = CliRunner().invoke(cli, list(args))
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, result.stderr, records


def test_a_list_scan_reports_its_lists_and_says_the_next_rescan_matches_the_others(
    tmp_path,
):
    """A ``--list a`` scan matches new files in list a only. Once the catalog had been
    rescanned, ``rescan`` read only signals shared after its cursor: list b's earlier
    signals never met those files (the scan could only say so, and point at a scan
    without --list or ``rescan --since all``), and the scan's report still carried the
    catalogued matches of list b. Now the report answers for list a, the scan says the
    next rescan matches the files in the other lists, and it does: list b's earlier
    signal is found once, no file hashed again."""
    astronaut, coffee = _png(ORIGINALS["astronaut"]()), _png(ORIGINALS["coffee"]())
    data, catalog, tree = tmp_path / "data", tmp_path / "c.sqlite", tmp_path / "tree"
    with Engine.open(data, eager=False) as engine:
        for name, blob in (("a", astronaut), ("b", coffee)):
            (pdq,) = hash_media(blob, ["pdq"])
            engine.ingest([SignalRecord("pdq", pdq.hex)], list_name=name)
    tree.mkdir()
    (tree / "astronaut.png").write_bytes(astronaut)
    common = ["--data-dir", str(data), "--catalog", str(catalog)]
    scan_args = ["scan", str(tree), *common, "--types", "pdq", "--workers", "0",
                 "--no-progress", "--out", "-"]  # fmt: skip

    code, err, _ = _cli(*scan_args, "--list", "a")
    assert code == 0, err
    code, err, _ = _cli("rescan", *common)  # the cursor: the store's head
    assert code == 0, err

    (tree / "coffee.png").write_bytes(coffee)  # new: list b's (earlier) signal matches it
    code, err, records = _cli(*scan_args, "--list", "a")
    assert code == 0, err
    assert [Path(r["file"]).name for r in records if r["kind"] == "match"] == ["astronaut.png"]
    assert (
        "note: the 1 file(s) hashed by this scan were matched in --list a only; the next"
        " `hashmatch rescan` matches them in the other lists (b) as well, with the signals"
        " shared before it too, from their catalogued hashes (no file is hashed again)"
    ) in err, err
    with Catalog(catalog) as cat:
        hash_calls = cat.counter("hash_calls")

    code, err, records = _cli("rescan", *common)
    assert code == 0, err
    matched = [(Path(r["file"]).name, r["list"]) for r in records if r["kind"] == "match"]
    assert matched == [("coffee.png", "b")]
    assert records[-1]["gap_files"] == 1
    code, err, records = _cli("rescan", *common)  # found once: nothing the second time
    assert code == 0 and [r for r in records if r["kind"] == "match"] == []
    assert records[-1]["gap_files"] == 0
    with Catalog(catalog) as cat:
        assert cat.counter("hash_calls") == hash_calls  # nothing hashed

    code, err, records = _cli(*scan_args)
    assert code == 0, err
    matched = [(Path(r["file"]).name, r["list"]) for r in records if r["kind"] == "match"]
    assert matched == [("astronaut.png", "a"), ("coffee.png", "b")]
    assert records[-1]["hashed"] == 0  # matched from the catalog's hashes


def test_a_list_scans_report_leaves_out_the_catalogued_matches_of_other_lists(tmp_path):
    """An unchanged file a scan of every list matched in ``photos`` and ``files``: a
    ``--list files`` re-run reported the ``photos`` match too (and counted it), as if
    it had looked there; it is kept in the catalog, for a later scan of that list."""
    data, catalog, tree = _world(tmp_path)
    every = _scan(data, catalog, tree, tmp_path / "all.jsonl", types=("pdq", "md5"))
    assert every["matches"] == [("md5", "files"), ("pdq", "photos")]

    files = _scan(data, catalog, tree, tmp_path / "files.jsonl", types=("pdq", "md5"),
                  lists=["files"])  # fmt: skip
    assert files["matches"] == [("md5", "files")]
    assert (files["summary"]["matches"], files["summary"]["matched_files"]) == (1, 1)

    photos = _scan(data, catalog, tree, tmp_path / "p.jsonl", types=("pdq", "md5"),
                   lists=["photos"])  # fmt: skip
    assert photos["matches"] == [("pdq", "photos")]  # the catalog kept it all along


def test_a_no_match_scans_files_are_matched_by_the_next_rescan(tmp_path):
    """``--no-match`` fills the catalog; a rescan then matched its files with the
    signals shared after its cursor only (the scan said so). Now the next rescan
    matches them in every list, the earlier signals too (nothing to say on stderr)."""
    coffee = _png(ORIGINALS["coffee"]())
    data, catalog, tree = tmp_path / "data", tmp_path / "c.sqlite", tmp_path / "tree"
    with Engine.open(data, eager=False) as engine:
        (pdq,) = hash_media(coffee, ["pdq"])
        engine.ingest([SignalRecord("pdq", pdq.hex)], list_name="b")
    tree.mkdir()
    common = ["--data-dir", str(data), "--catalog", str(catalog)]
    scan_args = ["scan", str(tree), *common, "--types", "pdq", "--workers", "0",
                 "--no-progress", "--out", "-"]  # fmt: skip
    code, err, _ = _cli(*scan_args, "--no-match")  # nothing yet: the catalog is made
    assert code == 0 and "note:" not in err, err
    code, err, _ = _cli("rescan", *common)
    assert code == 0, err
    (tree / "coffee.png").write_bytes(coffee)
    code, err, _ = _cli(*scan_args, "--no-match")
    assert code == 0 and "note:" not in err, err
    code, err, records = _cli("rescan", *common)
    assert code == 0, err
    assert [(Path(r["file"]).name, r["list"]) for r in records if r["kind"] == "match"] == [
        ("coffee.png", "b")
    ]
    code, err, records = _cli(*scan_args)
    assert code == 0, err
    assert [(Path(r["file"]).name, r["list"]) for r in records if r["kind"] == "match"] == [
        ("coffee.png", "b")
    ]
    assert records[-1]["hashed"] == 0
