"""hashmatch scan: a generated tree of benign images -> exactly the expected report.

Real components throughout: real images decoded and hashed in real worker processes,
a real SQLite store and catalog, the engine's real FAISS-backed index.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scan_tree import build_tree, ingest_originals

from hashmatch.engine import errors
from hashmatch.engine.catalog import Catalog
from hashmatch.engine.hashing import HashOptions, hash_media
from hashmatch.engine.scan import LocalMatcher, ScanOptions, read_list, scan
from hashmatch.server.cli import cli


def _reason_for_text() -> str:
    """How the hasher classifies a plain-text file (typed error -> scan reason)."""
    try:
        hash_media(b"hello, not an image\n", ["pdq"])
    except errors.UnsupportedMedia:
        return "unsupported"
    except errors.CorruptMedia:
        return "corrupt"
    raise AssertionError("text must not hash as an image")


def _read(report: Path) -> tuple[list[dict], list[dict], dict]:
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert records[-1]["kind"] == "summary"
    matches = [r for r in records if r["kind"] == "match"]
    failures = [r for r in records if r["kind"] == "failure"]
    return matches, failures, records[-1]


def _hamming(a: str, b: str) -> int:
    x = np.frombuffer(bytes.fromhex(a), np.uint8) ^ np.frombuffer(bytes.fromhex(b), np.uint8)
    return int(np.unpackbits(x).sum())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("scan")
    tree = build_tree(base)
    (tree.root / "broken" / "notes.txt").write_text("hello, not an image\n")
    _settle(tree.root)
    ids = ingest_originals(
        base / "data", tree, ["astronaut", "coffee", "chelsea"], list_name="partner"
    )
    return base, tree, ids


def _settle(root: Path) -> None:
    """Date every file an hour back, as stored media are, and wait until their ctimes
    (which os.utime itself sets to now) are as old as scan.RACY_MTIME_NS: a file changed
    seconds before a scan read it is re-checked by the next scan (scan.trusted_time),
    and these tests count what a re-run skips."""
    import os
    import time

    from hashmatch.engine.scan import RACY_MTIME_NS

    hour_ago = time.time_ns() - 3600 * 10**9
    newest = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            os.utime(path, ns=(hour_ago, hour_ago), follow_symlinks=False)
            newest = max(newest, os.lstat(path).st_ctime_ns)
    time.sleep(max(0.0, (newest + RACY_MTIME_NS - time.time_ns()) / 1e9 + 0.05))


def _expected_failures(root: Path) -> dict[str, str]:
    return {
        str(root / "broken/empty.jpg"): "empty",
        str(root / "broken/truncated.jpg"): "corrupt",
        str(root / "broken/garbage.png"): "corrupt",
        str(root / "broken/notes.txt"): _reason_for_text(),
        str(root / "broken/dangling.png"): "broken-symlink",
        str(root / "exact/loop"): "symlink-loop",
    }


def test_tree_gives_exactly_the_expected_report(world, tmp_path):
    base, tree, ids = world
    root = tree.root
    catalog = Catalog(tmp_path / "catalog.sqlite")
    matcher = LocalMatcher.open(base / "data")
    report = tmp_path / "report.jsonl"
    summary = scan(
        [root],
        catalog=catalog,
        matcher=matcher,
        report=report,
        options=ScanOptions(workers=2, batch_size=3, progress=False),
    )
    matches, failures, last = _read(report)

    # exactly these (file, type, signal) triples, in path order
    expected = [
        ("exact/astronaut-copy.png", "md5", ids[("astronaut", "md5")]),
        ("exact/astronaut-copy.png", "pdq", ids[("astronaut", "pdq")]),
        ("exact/coffee-copy.png", "md5", ids[("coffee", "md5")]),
        ("exact/coffee-copy.png", "pdq", ids[("coffee", "pdq")]),
        ("near/astronaut-q60.jpg", "pdq", ids[("astronaut", "pdq")]),
        ("near/chelsea-q80.jpg", "pdq", ids[("chelsea", "pdq")]),
        ("near/coffee-half.png", "pdq", ids[("coffee", "pdq")]),
    ]
    got = [(str(Path(m["file"]).relative_to(root)), m["type"], m["signal_id"]) for m in matches]
    assert got == expected
    for m in matches:
        assert m["list"] == "partner"
        assert m["labels"] == [m["external_id"]]
        # the reported hash is the file's hash and the distance is the true distance
        (fresh,) = hash_media(m["file"], [m["type"]])
        assert m["hash"] == fresh.hex
        assert m["distance"] == _hamming(m["hash"], m["signal_hash"])
        if "/exact/" in m["file"]:
            assert m["distance"] == 0
        elif m["type"] == "pdq":
            assert 0 < m["distance"] <= 31
    assert {f["file"]: f["reason"] for f in failures} == _expected_failures(root)
    assert all(f["error"] for f in failures)

    assert last["seen"] == 14 == summary.seen  # 12 files + 2 symlinks
    assert last["hashed"] == 8
    assert last["failed"] == 6 and last["matches"] == 7 and last["matched_files"] == 5
    # of the failed: truncated.jpg, garbage.png and notes.txt were read, so MD5'd
    assert last["failed_digested"] == 3
    assert last["skipped_unchanged"] == 0
    assert last["elapsed_s"] > 0 and last["files_per_s"] > 0
    stats = catalog.stats()
    assert stats["hashes"] == {"pdq": 8, "md5": 8 + 3}
    matcher.close()
    catalog.close()


def test_rerun_skips_unchanged_files_and_rehashes_changed_ones(world, tmp_path):
    base, tree, ids = world
    root = tree.root
    catalog = Catalog(tmp_path / "catalog.sqlite")
    matcher = LocalMatcher.open(base / "data")
    opts = ScanOptions(workers=0, progress=False)
    first = scan(
        [root], catalog=catalog, matcher=matcher, report=tmp_path / "1.jsonl", options=opts
    )
    calls = catalog.counter("hash_calls")
    second = scan(
        [root], catalog=catalog, matcher=matcher, report=tmp_path / "2.jsonl", options=opts
    )
    assert second.hashed == 0 and catalog.counter("hash_calls") == calls
    assert second.skipped_unchanged == first.hashed  # known-bad files count as failed only
    assert second.seen == second.hashed + second.skipped_unchanged + second.failed
    strip = lambda p: [x for x in p.read_text().splitlines() if '"summary"' not in x]  # noqa: E731
    assert strip(tmp_path / "1.jsonl") == strip(tmp_path / "2.jsonl")

    # a changed file (new bytes, new mtime) is hashed again and re-matched
    victim = root / "unrelated" / "rocket.png"
    original = victim.read_bytes()
    try:
        victim.write_bytes(tree.originals["chelsea"])
        third = scan([root], catalog=catalog, matcher=matcher, report=tmp_path / "3.jsonl",
                     options=opts)  # fmt: skip
        assert third.hashed == 1
        matches, _, _ = _read(tmp_path / "3.jsonl")
        rocket = [m for m in matches if m["file"] == str(victim)]
        assert {(m["type"], m["signal_id"], m["distance"]) for m in rocket} == {
            ("pdq", ids[("chelsea", "pdq")], 0),
            ("md5", ids[("chelsea", "md5")], 0),
        }
    finally:
        victim.write_bytes(original)
    matcher.close()
    catalog.close()


def test_dihedral_scan_matches_the_mirrored_copy(world, tmp_path):
    base, tree, ids = world
    catalog = Catalog(tmp_path / "catalog.sqlite")
    matcher = LocalMatcher.open(base / "data")
    scan([tree.root / "near"], catalog=catalog, matcher=matcher, report=tmp_path / "r.jsonl",
         options=ScanOptions(workers=1, dihedral=True, progress=False))  # fmt: skip
    matches, _, _ = _read(tmp_path / "r.jsonl")
    mirror = [m for m in matches if m["file"].endswith("astronaut-mirror.png")]
    assert len(mirror) == 1
    assert mirror[0]["signal_id"] == ids[("astronaut", "pdq")]
    # variant 5 is the mirror; each orientation is hashed exactly, so the mirror of a
    # lossless mirrored copy is the original's own PDQ
    assert mirror[0]["variant"] == 5 and mirror[0]["distance"] == 0
    (h,) = hash_media(mirror[0]["file"], ["pdq"], HashOptions(dihedral=True, dihedral_exact=True))
    assert h.codes.shape[0] == 8
    assert mirror[0]["hash"] == h.codes[mirror[0]["variant"]].tobytes().hex()
    catalog.close()
    matcher.close()


def test_from_list_reads_paths_and_file_uris(world, tmp_path):
    base, tree, _ids = world
    root = tree.root
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# stored media\n"
        f"{root / 'exact/astronaut-copy.png'}\n"
        f"file://{(root / 'near/coffee-half.png').as_posix()}\n"
        "\n"
        f"{root / 'exact/astronaut-copy.png'}\n"  # listed twice: scanned once
        "https://example.com/a.jpg\n"
        f"{root / 'missing.png'}\n"
    )
    catalog = Catalog(tmp_path / "catalog.sqlite")
    matcher = LocalMatcher.open(base / "data")
    with open(listing) as fh:
        summary = scan(catalog=catalog, matcher=matcher, from_list=fh, report=tmp_path / "r.jsonl",
                       options=ScanOptions(workers=0, progress=False))  # fmt: skip
    matches, failures, _ = _read(tmp_path / "r.jsonl")
    assert summary.seen == 4
    assert sorted({m["file"] for m in matches}) == [
        str(root / "exact/astronaut-copy.png"),
        str(root / "near/coffee-half.png"),
    ]
    assert {f["file"]: f["reason"] for f in failures} == {
        "https://example.com/a.jpg": "unsupported",
        str(root / "missing.png"): "not-found",
    }
    catalog.close()
    matcher.close()


def test_read_list_walks_listed_directories():
    root = Path(__file__).parent
    entries = list(read_list([str(root / "conftest.py"), f"file://{root}"]))
    paths = [e.path for e in entries]
    assert paths[0] == str(root / "conftest.py")
    assert str(root / "test_scan.py") in paths


def test_a_directory_reached_twice_without_a_symlink_is_not_a_symlink_loop(tmp_path):
    """Overlapping roots (as a bind mount of a parent or sibling: one directory, two
    paths) were reported ``symlink-loop`` though no symlink is involved: the fix is
    the arguments or the mount, not a link. A symlink on either visit, or above the
    directory, is still ``symlink-loop``, whichever of the two paths the walk saw first."""
    from hashmatch.engine.scan import walk

    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "sub" / "a.jpg").write_bytes(b"x")
    (tmp_path / "a-link").symlink_to(tmp_path / "real", target_is_directory=True)

    def failures(*roots: Path, follow: bool = True) -> dict[str, str]:
        found = walk(roots, follow_symlinks=follow)
        return {e.path: e.reason for e in found if e.reason}

    real, sub = tmp_path / "real", tmp_path / "real" / "sub"
    assert failures(real, sub) == {str(sub): "directory-revisited"}
    assert failures(real, real, follow=False) == {str(real): "directory-revisited"}
    # the link sorts first: the real path is the second visit, reached through no link
    assert failures(tmp_path) == {str(real): "symlink-loop"}
    assert failures(sub, tmp_path / "a-link") == {str(tmp_path / "a-link/sub"): "symlink-loop"}
    (real / "up").symlink_to(real, target_is_directory=True)
    assert failures(real) == {str(real / "up"): "symlink-loop"}


def test_too_large_files_are_recorded_not_read(world, tmp_path):
    _base, tree, _ = world
    catalog = Catalog(tmp_path / "catalog.sqlite")
    summary = scan([tree.root / "unrelated"], catalog=catalog, matcher=None,
                   report=tmp_path / "r.jsonl",
                   options=ScanOptions(workers=0, max_bytes=1000, progress=False))  # fmt: skip
    _, failures, _ = _read(tmp_path / "r.jsonl")
    assert summary.hashed == 0
    assert [f["reason"] for f in failures] == ["too-large", "too-large"]
    assert catalog.counter("hash_calls") == 0
    catalog.close()


def test_cli_scan_writes_report_and_summary(world, tmp_path):
    base, tree, _ids = world
    out = tmp_path / "report.jsonl"
    result = CliRunner().invoke(
        cli,
        [
            "scan", str(tree.root / "exact"), "--data-dir", str(base / "data"),
            "--catalog", str(tmp_path / "c.sqlite"), "--types", "pdq,md5",
            "--workers", "1", "--out", str(out), "--no-progress", "--no-follow-symlinks",
            "--threshold", "31",  # applies to pdq; md5 stays exact (no InvalidThreshold)
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    matches, _failures, summary = _read(out)
    assert len(matches) == 4 and summary["seen"] == 2  # exact/loop is not followed
    assert json.loads(result.output.strip().splitlines()[-1])["matches"] == 4

    bad = CliRunner().invoke(cli, ["scan", str(tree.root), "--types", "pdq,nope",
                                   "--data-dir", str(base / "data"),
                                   "--catalog", str(tmp_path / "c.sqlite")])  # fmt: skip
    assert bad.exit_code != 0 and "unknown signal type 'nope'" in bad.output
    none = CliRunner().invoke(cli, ["scan"])
    assert none.exit_code != 0 and "PATHS or --from-list" in none.output
    # refused before any file is hashed, not after the first batch
    far = CliRunner().invoke(cli, ["scan", str(tree.root), "--threshold", "300",
                                   "--data-dir", str(base / "data"),
                                   "--catalog", str(tmp_path / "c2.sqlite")])  # fmt: skip
    assert far.exit_code == 1 and "--threshold: pdq threshold must be 0..63, got 300" in far.output
    assert not (tmp_path / "c2.sqlite").exists()
    nolist = CliRunner().invoke(cli, ["scan", str(tree.root), "--list", "nolist",
                                      "--data-dir", str(base / "data"),
                                      "--catalog", str(tmp_path / "c3.sqlite")])  # fmt: skip
    assert nolist.exit_code == 1 and "--list: no hash list named 'nolist'" in nolist.output
    assert not (tmp_path / "c3.sqlite").exists()
    for args in (["scan", str(tree.root), "--workers", "-1"], ["rescan", "--since", "-5"]):
        usage = CliRunner().invoke(cli, args)
        assert usage.exit_code == 2, usage.output


def test_progress_prints_plain_lines_when_not_a_terminal(capsys):
    from hashmatch.engine.scan import Progress

    progress = Progress(40, every=0.0)  # pytest's stderr is not a terminal
    progress.update(10, failed=1, matched=2)
    progress.close()
    err = capsys.readouterr().err
    assert "scan: 10/40 files (25.0%)" in err and "files/s, ETA " in err
    assert "failed 1, matched 2" in err


def test_cli_from_list_on_stdin(world, tmp_path):
    base, tree, _ids = world
    listing = f"{tree.root / 'near/coffee-half.png'}\n{tree.root / 'broken/empty.jpg'}\n"
    result = CliRunner().invoke(
        cli,
        ["scan", "--from-list", "-", "--data-dir", str(base / "data"),
         "--catalog", str(tmp_path / "c.sqlite"), "--workers", "0", "--out", "-"],
        input=listing,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.output.splitlines() if x.startswith('{"kind"')]
    kinds = [(r["kind"], r.get("type") or r.get("reason")) for r in lines]
    assert kinds[:2] == [("match", "pdq"), ("failure", "empty")]
    assert lines[2]["kind"] == "summary" and lines[2]["seen"] == 2


def test_report_to_a_fifo_or_device_writes_through_never_replaces_it(tmp_path):
    import os
    import stat
    import threading

    from hashmatch.engine.scan import write_jsonl_atomically

    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_jsonl_atomically(fifo, [{"kind": "summary", "seen": 1}])
    reader.join(timeout=10)
    assert got == ['{"kind": "summary", "seen": 1}\n']
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still a FIFO, not a renamed file

    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    write_jsonl_atomically(link, [{"kind": "summary"}])
    assert link.is_symlink() and target.read_text() == '{"kind": "summary"}\n'


def test_touched_file_with_same_bytes_is_not_decoded_again(world, tmp_path):
    import os

    base, tree, _ids = world
    folder = tree.root / "exact"
    catalog = Catalog(tmp_path / "catalog.sqlite")
    matcher = LocalMatcher.open(base / "data")
    for workers in (0, 1):  # in-process and through the pool
        opts = ScanOptions(workers=workers, progress=False, follow_symlinks=False)
        first = scan([folder], catalog=catalog, matcher=matcher, options=opts)
        calls = catalog.counter("hash_calls")
        victim = folder / "coffee-copy.png"
        st = victim.stat()
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9 * (workers + 1)))
        again = scan([folder], catalog=catalog, matcher=matcher, options=opts)
        assert again.hashed == 0 and again.skipped_unchanged == 2
        assert catalog.counter("hash_calls") == calls  # read and MD5'd, never decoded
        assert again.matches == first.matches == 4  # re-matched from the catalog
        rec = catalog.lookup([str(victim)])[str(victim)]
        assert rec.mtime_ns == victim.stat().st_mtime_ns  # the new stat is recorded
    matcher.close()
    catalog.close()


def test_hash_file_digests_the_bytes_once_keeping_order_and_failures(tmp_path):
    """Workers reuse their own MD5 instead of hash_media's: same codes, same order, and
    an md5-only request still refuses an empty file."""
    import cv2
    import skimage.data

    from hashmatch.engine.scan import hash_file

    photo = tmp_path / "coffee.png"
    cv2.imwrite(str(photo), np.ascontiguousarray(skimage.data.coffee()[:, :, ::-1]))
    got = hash_file(str(photo), ("md5", "pdq"))
    assert got.reason is None
    want = hash_media(photo, ["md5", "pdq"])
    assert [h.signal_type for h in got.hashes] == ["md5", "pdq"]
    for h, w in zip(got.hashes, want, strict=True):
        assert np.array_equal(h.codes, w.codes)
        assert h.qualities == w.qualities
    assert got.hashes[0].codes.tobytes() == got.md5
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert hash_file(str(empty), ("md5",)).reason == "empty"


_HEAP_PROBE = """
import sys, numpy as np
from hashmatch.engine.scan import keep_heap
if not keep_heap():
    print("not glibc")
    sys.exit()
addresses = set()
for _ in range(3):
    image = np.ones((1080, 1920, 3), np.uint8)  # a decoded 1080p frame's size
    addresses.add(image.ctypes.data)
    del image
print(len(addresses))
"""


def test_workers_reuse_the_previous_files_memory():
    """keep_heap (called in every scan worker) makes a freed 6 MB image's pages serve
    the next one: glibc's default maps the first such block afresh and unmaps it on
    free, so the next lands elsewhere and each file pays page faults again."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, check=True
    ).stdout.strip()
    if out == "not glibc":
        pytest.skip("malloc settings apply to glibc only")
    assert out == "1"
