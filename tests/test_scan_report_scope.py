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
