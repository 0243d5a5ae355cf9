"""A re-run of `hashmatch scan` recognises unchanged files by size, mtime, inode and
ctime: a file replaced by other bytes of the same size under a restored mtime (`cp -p`,
`rsync -a`, `touch -r`, `tar x`) is hashed again; an unchanged one is still skipped
unread; a chmod costs a read and an MD5, never a duplicate match; a catalog written
before inodes and ctimes were kept is checked once.

Real files, real worker processes, the real CLI in a subprocess. The stat a scan trusts
must be older than scan.RACY_MTIME_NS (5 s): os.utime cannot date a ctime back, so the
module's trees are written once and left to settle.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scan_tree import ORIGINALS, _png

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.hashing import hash_media
from hashmatch.engine.runtime import Engine
from hashmatch.engine.scan import RACY_MTIME_NS, LocalMatcher, ScanOptions, scan
from hashmatch.engine.store import SignalRecord

HASHMATCH = str(Path(sys.executable).with_name("hashmatch"))
#: every file of the trees has this size: a replacement keeps it (PNG decoders ignore
#: bytes after IEND)
SIZE = 200_000
NAMES = ("other.png", "plain.png", "victim.png")
TREES = ("walk-inplace", "list-rename", "chmod", "upgrade", "upgrade-minimal", "netfs")


def _padded(name: str) -> bytes:
    blob = _png(ORIGINALS[name]())
    assert len(blob) < SIZE
    return blob + bytes(SIZE - len(blob))


@pytest.fixture(scope="module")
def settled(tmp_path_factory):
    """One tree per test (victim.png = coffee, other.png = chelsea, plain.png = rocket,
    all SIZE bytes, mtimes an hour back), a store with the PDQ of coffee, chelsea and
    astronaut, and a wait until every ctime is old enough for a scan to trust."""
    base = tmp_path_factory.mktemp("stat")
    hour_ago = time.time_ns() - 3600 * 10**9
    blobs = {"victim.png": "coffee", "other.png": "chelsea", "plain.png": "rocket"}
    for tree in TREES:
        (base / tree).mkdir()
        for file, original in blobs.items():
            (base / tree / file).write_bytes(_padded(original))
            os.utime(base / tree / file, ns=(hour_ago, hour_ago))
    settled_at = time.time_ns() + RACY_MTIME_NS
    records = []
    for name in ("coffee", "chelsea", "astronaut"):
        (pdq,) = hash_media(_png(ORIGINALS[name]()), ["pdq"])
        records.append(SignalRecord("pdq", pdq.hex, labels=(name,), external_id=name))
    with Engine.open(base / "data", eager=False) as engine:
        assert engine.ingest(records, list_name="partner").added == 3
    time.sleep(max(0.0, (settled_at - time.time_ns()) / 1e9 + 0.05))
    return base


def _cli(base: Path, tree: str, report: Path, *extra: str, from_list: bool) -> list[dict]:
    root = base / tree
    args = [HASHMATCH, "scan", "--types", "pdq", "--workers", "1", "--no-progress", *extra]
    args += ["--data-dir", str(base / "data"), "--catalog", str(base / f"{tree}.sqlite")]
    args += ["--out", str(report)]
    listing = None
    if from_list:
        listing = "".join(f"{root / n}\n" for n in NAMES).encode()
        args += ["--from-list", "-"]
    else:
        args.append(str(root))
    done = subprocess.run(args, input=listing, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()
    return [json.loads(line) for line in report.read_text().splitlines()]


def _matches(records: list[dict]) -> list[tuple[str, str]]:
    return [(Path(r["file"]).name, r["external_id"]) for r in records if r["kind"] == "match"]


def _hash_calls(catalog: Path) -> int:
    with Catalog(catalog, readonly=True) as cat:
        return cat.counter("hash_calls")


def _replace_in_place(path: Path, blob: bytes) -> None:
    """As `cp -p` does: the same inode rewritten, then the old mtime restored."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.write(blob)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_ino == st.st_ino


def _replace_by_rename(path: Path, blob: bytes) -> None:
    """As `rsync -a` does: a temporary file given the old mtime, renamed over the path."""
    st = path.stat()
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(blob)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)
    assert path.stat().st_ino != st.st_ino


@pytest.mark.parametrize(
    ("tree", "from_list", "replace"),
    [("walk-inplace", False, _replace_in_place), ("list-rename", True, _replace_by_rename)],
)
def test_a_same_size_same_mtime_replacement_is_hashed_again(
    settled, tmp_path, tree, from_list, replace
):
    """Before: (size, mtime) were the same, so every later scan skipped the file and
    reported the match of its old bytes (coffee), never the new one (astronaut)."""
    catalog = settled / f"{tree}.sqlite"
    first = _cli(settled, tree, tmp_path / "1.jsonl", from_list=from_list)
    assert _matches(first) == [("other.png", "chelsea"), ("victim.png", "coffee")]
    calls = _hash_calls(catalog)

    again = _cli(settled, tree, tmp_path / "2.jsonl", from_list=from_list)[-1]
    assert (again["hashed"], again["skipped_unchanged"], again["rechecked"]) == (0, 3, 0)
    assert _hash_calls(catalog) == calls  # unchanged files: not decoded, not even read

    victim = settled / tree / "victim.png"
    before = victim.stat()
    replace(victim, _padded("astronaut"))
    after = victim.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    third = _cli(settled, tree, tmp_path / "3.jsonl", from_list=from_list)
    assert _matches(third) == [("other.png", "chelsea"), ("victim.png", "astronaut")]
    assert (third[-1]["hashed"], third[-1]["skipped_unchanged"], third[-1]["rechecked"]) == (
        1,
        2,
        0,
    )
    assert _hash_calls(catalog) == calls + 1  # the replaced file alone


def _scan(base: Path, tree: str, report: Path, check_stat: str = "full"):
    matcher = LocalMatcher.open(base / "data")
    try:
        with Catalog(base / f"{tree}.sqlite") as catalog:
            options = ScanOptions(workers=1, progress=False, types=("pdq",), check_stat=check_stat)
            return scan([base / tree], catalog=catalog, matcher=matcher, report=report,
                        options=options)  # fmt: skip
    finally:
        matcher.close()


def _match_lines(report: Path) -> list[str]:
    return [line for line in report.read_text().splitlines() if '"kind": "match"' in line]


def test_a_chmod_alone_is_rechecked_by_md5_without_duplicate_matches(settled, tmp_path):
    """A chmod moves the ctime only: the file is read and MD5'd (not decoded), its
    catalogued hashes and matches are kept, and the report is the same, once per match."""
    first = _scan(settled, "chmod", tmp_path / "1.jsonl")
    catalog = settled / "chmod.sqlite"
    calls = _hash_calls(catalog)
    victim = settled / "chmod" / "victim.png"
    victim.chmod(0o600)
    second = _scan(settled, "chmod", tmp_path / "2.jsonl")
    assert (second.hashed, second.skipped_unchanged, second.rechecked) == (0, 3, 1)
    assert _hash_calls(catalog) == calls
    lines = _match_lines(tmp_path / "2.jsonl")
    assert lines == _match_lines(tmp_path / "1.jsonl") and len(lines) == len(set(lines)) == 2
    assert second.matches == first.matches == 2
    with sqlite3.connect(catalog) as conn:
        assert conn.execute("SELECT COUNT(*) FROM matches").fetchone() == (2,)
        ino, ctime_ns = conn.execute(
            "SELECT ino, ctime_ns FROM files WHERE path = ?", (str(victim),)
        ).fetchone()
    assert ino == victim.stat().st_ino
    assert ctime_ns is None  # changed seconds ago: checked again by the next scan


def test_a_catalog_without_inodes_and_ctimes_checks_each_file_once(settled, tmp_path, caplog):
    """A catalog written before inodes and ctimes were kept: a reader opens it as it is;
    the next scan adds the columns and reads and MD5s every catalogued file once (none
    decoded, the same matches), and the scan after that skips them unread."""
    catalog = settled / "upgrade.sqlite"
    _scan(settled, "upgrade", tmp_path / "1.jsonl")
    calls = _hash_calls(catalog)
    with sqlite3.connect(catalog) as conn:  # the layout (and rows) of the builds before
        conn.execute("DROP INDEX files_coverage")  # (match coverage came later still)
        conn.execute("ALTER TABLE files DROP COLUMN coverage_id")
        conn.execute("DROP TABLE coverage")
        conn.execute("ALTER TABLE files DROP COLUMN ino")
        conn.execute("ALTER TABLE files DROP COLUMN ctime_ns")
        columns = [row[1] for row in conn.execute("PRAGMA table_info(files)")]
    assert columns == ["id", "path", "size", "mtime_ns", "md5", "types", "status", "reason",
                       "error", "scanned_at", "seen_run"]  # fmt: skip
    victim = str(settled / "upgrade" / "victim.png")
    with Catalog(catalog, readonly=True) as reader:
        rec = reader.lookup([victim])[victim]
    assert (rec.status, rec.ino, rec.ctime_ns) == ("hashed", None, None)

    upgraded = _scan(settled, "upgrade", tmp_path / "2.jsonl")
    assert "catalog upgraded" in caplog.text
    assert (upgraded.hashed, upgraded.skipped_unchanged, upgraded.rechecked) == (0, 3, 3)
    assert _hash_calls(catalog) == calls
    assert _match_lines(tmp_path / "2.jsonl") == _match_lines(tmp_path / "1.jsonl")
    with sqlite3.connect(catalog) as conn:
        rows = conn.execute("SELECT path, ino, ctime_ns FROM files ORDER BY path").fetchall()
    assert rows == [
        (str(settled / "upgrade" / n), os.stat(settled / "upgrade" / n).st_ino,
         os.stat(settled / "upgrade" / n).st_ctime_ns)
        for n in NAMES
    ]  # fmt: skip

    settled_again = _scan(settled, "upgrade", tmp_path / "3.jsonl")
    assert (settled_again.skipped_unchanged, settled_again.rechecked) == (3, 0)
    assert _match_lines(tmp_path / "3.jsonl") == _match_lines(tmp_path / "1.jsonl")


def _without_stat_columns(catalog: Path) -> None:
    """The layout (and rows) of the builds before inodes and ctimes were kept."""
    with sqlite3.connect(catalog) as conn:
        conn.execute("DROP INDEX files_coverage")  # (match coverage came later still)
        conn.execute("ALTER TABLE files DROP COLUMN coverage_id")
        conn.execute("DROP TABLE coverage")
        conn.execute("ALTER TABLE files DROP COLUMN ino")
        conn.execute("ALTER TABLE files DROP COLUMN ctime_ns")


def test_the_upgrade_message_says_what_a_minimal_scan_does(settled, tmp_path, caplog):
    """The upgrade's log line said the next scan reads and MD5-checks every catalogued
    file: a --check-stat minimal scan reads none (size and mtime decide), and the one
    check waits for the first --check-stat full scan. The line says so, and both
    scans do what it says."""
    catalog = settled / "upgrade-minimal.sqlite"
    _scan(settled, "upgrade-minimal", tmp_path / "1.jsonl")
    calls = _hash_calls(catalog)
    _without_stat_columns(catalog)

    minimal = _scan(settled, "upgrade-minimal", tmp_path / "2.jsonl", check_stat="minimal")
    (line,) = [r.getMessage() for r in caplog.records if "catalog upgraded" in r.getMessage()]
    assert "the next scan" not in line
    assert "the first scan with --check-stat full (the default) reads and MD5-checks" in line
    assert "a --check-stat minimal scan compares size and mtime only and reads none" in line
    assert (minimal.hashed, minimal.skipped_unchanged, minimal.rechecked) == (0, 3, 0)

    full = _scan(settled, "upgrade-minimal", tmp_path / "3.jsonl")
    assert (full.hashed, full.skipped_unchanged, full.rechecked) == (0, 3, 3)
    settled_again = _scan(settled, "upgrade-minimal", tmp_path / "4.jsonl")
    assert (settled_again.skipped_unchanged, settled_again.rechecked) == (3, 0)
    assert _hash_calls(catalog) == calls  # read and MD5'd once, never decoded
    assert _match_lines(tmp_path / "4.jsonl") == _match_lines(tmp_path / "1.jsonl")


def test_check_stat_minimal_trusts_size_and_mtime_alone(settled, tmp_path):
    """On a filesystem that makes inode numbers up (CIFS ``noserverino``, sshfs without
    ``-o use_ino``) every re-run read and MD5'd every file. ``--check-stat minimal``
    (git's ``core.checkStat=minimal``) skips a file whose inode and ctime alone moved,
    unread; the default still reads and MD5s it (no decode either way)."""
    catalog = settled / "netfs.sqlite"
    first = _cli(settled, "netfs", tmp_path / "1.jsonl", from_list=False)
    calls = _hash_calls(catalog)
    victim = settled / "netfs" / "victim.png"
    before = victim.stat()
    _replace_by_rename(victim, victim.read_bytes())  # the same bytes, as a remount shows them
    after = victim.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert (after.st_ino, after.st_ctime_ns) != (before.st_ino, before.st_ctime_ns)

    minimal = _cli(settled, "netfs", tmp_path / "2.jsonl", "--check-stat", "minimal",
                   from_list=False)  # fmt: skip
    assert (minimal[-1]["hashed"], minimal[-1]["skipped_unchanged"]) == (0, 3)
    assert minimal[-1]["rechecked"] == 0  # not even read
    assert _matches(minimal) == _matches(first) == [("other.png", "chelsea"),
                                                    ("victim.png", "coffee")]  # fmt: skip

    full = _cli(settled, "netfs", tmp_path / "3.jsonl", from_list=False)
    assert (full[-1]["hashed"], full[-1]["skipped_unchanged"], full[-1]["rechecked"]) == (0, 3, 1)
    assert _matches(full) == _matches(first)
    assert _hash_calls(catalog) == calls  # read and MD5'd, never decoded
