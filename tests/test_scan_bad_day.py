"""hashmatch scan on a bad day: files swapped after the walk, odd names, busy catalogs,
full disks. Generated images only; real worker processes, real CLI subprocesses."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image
from scan_tree import slow_png

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.decode import DecodeLimits
from hashmatch.engine.hashing import HashOptions
from hashmatch.engine.scan import _read_regular, hash_file, read_list

# a scan that regresses on /dev/zero reads until out of memory: cap the child
PRLIMIT = ["prlimit", "--as=2000000000", "--"]


def _jpeg(seed: int, size: int = 96) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _run_py(code: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PRLIMIT, sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_files_swapped_for_a_fifo_a_device_or_a_dir_after_the_walk(tmp_path):
    """The walk saw regular files; by the time a worker opens them one is a FIFO (a
    plain open() blocks forever), one a link to /dev/zero (read() never ends) and one
    a directory. Each is reported `not-a-file` and the scan finishes."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i, name in enumerate("abcd"):
        (tree / f"{name}.jpg").write_bytes(_jpeg(i))
    code = f"""
        import json, os
        from hashmatch.engine.catalog import Catalog
        from hashmatch.engine.scan import ScanOptions, Scanner, walk
        tree = {str(tree)!r}
        entries = list(walk([tree]))
        os.remove(tree + "/a.jpg"); os.symlink("/dev/zero", tree + "/a.jpg")
        os.remove(tree + "/b.jpg"); os.mkfifo(tree + "/b.jpg")
        os.remove(tree + "/c.jpg"); os.mkdir(tree + "/c.jpg")
        with Catalog({str(tmp_path / "c.sqlite")!r}) as cat:
            opts = ScanOptions(workers=1, progress=False)
            Scanner(cat, None, opts).run(entries, report={str(tmp_path / "r.jsonl")!r})
    """
    done = _run_py(code, tmp_path)
    assert done.returncode == 0, done.stderr
    records = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    failures = {Path(r["file"]).name: r for r in records if r["kind"] == "failure"}
    assert {k: v["reason"] for k, v in failures.items()} == {
        "a.jpg": "not-a-file",
        "b.jpg": "not-a-file",
        "c.jpg": "not-a-file",
    }
    assert "character device" in failures["a.jpg"]["error"]
    assert "FIFO" in failures["b.jpg"]["error"]
    summary = records[-1]
    assert summary["hashed"] == 1 and summary["failed"] == 3


def test_a_file_larger_than_its_size_says_is_read_only_to_the_limit(tmp_path):
    """/proc files claim 0 bytes; a file may also grow while read. At most
    max_bytes + 1 bytes are read, and more than max_bytes is `too-large`."""
    link = tmp_path / "status.jpg"
    link.symlink_to("/proc/self/status")  # regular, st_size 0, ~1 kB of text
    options = HashOptions(limits=DecodeLimits(max_bytes=100))
    result = hash_file(str(link), ["pdq", "md5"], options)
    assert result.reason == "too-large" and "grew past" in result.error


def test_a_file_that_grew_past_its_size_is_still_read_whole_under_the_limit(tmp_path):
    """The worker reads what fstat says plus one byte, and reads on only when that byte
    came: a file larger than its size says (/proc claims 0 bytes) is read to its end."""
    link = tmp_path / "status.jpg"
    link.symlink_to("/proc/self/status")
    data, st, fh = _read_regular(str(link), 1 << 20)
    fh.close()
    assert (
        st.st_size == 0 and data.startswith(b"Name:") and data.endswith(b"\n") and len(data) > 200
    )


def test_reading_a_file_allocates_its_size_not_the_limit(tmp_path):
    """read(max_bytes + 1) allocated the whole limit (256 MB) for every file, which
    glibc maps fresh and faults in page by page: ~0.1 ms of each 1080p JPEG's scan."""
    import tracemalloc

    path = tmp_path / "a.jpg"
    path.write_bytes(os.urandom(500_000))
    tracemalloc.start()
    try:
        data, st, fh = _read_regular(str(path), 256 * 1024 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
        fh.close()
    finally:
        tracemalloc.stop()
    assert data == path.read_bytes() and st.st_size == 500_000
    assert peak < 2 * 500_000, f"reading 500 kB allocated {peak} bytes"


HASHMATCH = str(Path(sys.executable).with_name("hashmatch"))


def _cli(args: list[str], cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PRLIMIT, HASHMATCH, *args], cwd=cwd, input=stdin, capture_output=True, timeout=120
    )


def _report(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_non_utf8_file_names_are_scanned_and_reported_as_themselves(tmp_path):
    """POSIX names are bytes. A name that is not UTF-8 used to stop the whole scan
    (sqlite3 cannot encode it); from --from-list it was a decode traceback."""
    tree = tmp_path / "tree"
    tree.mkdir()
    raw = os.fsencode(tree)
    odd, odd_empty = raw + b"/caf\xe9.jpg", raw + b"/vide\xff.jpg"
    with open(odd, "wb") as fh:
        fh.write(_jpeg(1))
    open(odd_empty, "wb").close()
    (tree / "plain.jpg").write_bytes(_jpeg(2))
    args = ["scan", "--no-match", "--workers", "1", "--catalog", "c.sqlite", "--out"]

    walked = _cli([*args, "r1.jsonl", str(tree)], tmp_path)
    assert walked.returncode == 0, walked.stderr
    records = _report(tmp_path / "r1.jsonl")
    assert [(os.fsencode(r["file"]), r["reason"]) for r in records[:-1]] == [(odd_empty, "empty")]
    assert records[-1]["hashed"] == 2 and records[-1]["failed"] == 1

    listed = _cli([*args, "r2.jsonl", "--from-list", "-"], tmp_path, stdin=odd + b"\n")
    assert listed.returncode == 0, listed.stderr
    summary = _report(tmp_path / "r2.jsonl")[-1]
    assert summary["seen"] == 1 and summary["skipped_unchanged"] == 1  # found by its bytes

    uri = b"file://" + raw + b"/caf%E9.jpg\n"
    by_uri = _cli([*args, "r3.jsonl", "--from-list", "-"], tmp_path, stdin=uri)
    assert by_uri.returncode == 0, by_uri.stderr
    assert _report(tmp_path / "r3.jsonl")[-1]["skipped_unchanged"] == 1


def test_a_second_scan_of_a_busy_catalog_is_refused(tmp_path):
    """Two scans on one catalog used to each lose the other's files from their report
    (the run that saw a file last owns it). The second writer is refused at once."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.jpg").write_bytes(_jpeg(3))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_CATALOG, str(tmp_path / "c.sqlite")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline() == b"open\n"
        args = ["scan", "--no-match", "--workers", "0", "--catalog", "c.sqlite"]
        busy = _cli([*args, "--out", "r.jsonl", "tree"], tmp_path)
        assert busy.returncode == 1
        assert busy.stderr.decode().splitlines() == [
            "Error: catalog c.sqlite is in use by another scan or rescan; run them one at a time"
        ]
        assert not (tmp_path / "r.jsonl").exists()
        with Catalog(tmp_path / "c.sqlite", readonly=True) as reader:  # readers never wait
            assert reader.stats()["files"] == 0
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()  # else a ResourceWarning under -W error::ResourceWarning
    done = _cli([*args, "--out", "r.jsonl", "tree"], tmp_path)  # released on close
    assert done.returncode == 0, done.stderr
    assert _report(tmp_path / "r.jsonl")[-1]["hashed"] == 1


HOLD_CATALOG = """
import sys
from hashmatch.engine.catalog import Catalog
with Catalog(sys.argv[1]):
    print("open", flush=True)
    sys.stdin.read()
"""


def test_a_catalog_inside_the_tree_skips_only_its_own_files(tmp_path):
    """Media whose name merely starts with the catalog's used to be skipped too."""
    tree = tmp_path / "tree"
    (tree / "c.sqlite.rescan-index").mkdir(parents=True)
    (tree / "c.sqlite.rescan-index" / "pdq.npy").write_bytes(b"index, not media")
    (tree / "c.sqlite.bak.jpg").write_bytes(_jpeg(4))
    (tree / "c.sqlite-old.jpg").write_bytes(_jpeg(5))
    args = ["scan", "--no-match", "--workers", "0", "--catalog", "tree/c.sqlite", "tree"]
    for run in ("r1.jsonl", "r2.jsonl"):  # the second run also meets -wal, -shm, .lock
        done = _cli([*args, "--out", run], tmp_path)
        assert done.returncode == 0, done.stderr
    assert (tree / "c.sqlite.lock").exists()
    first, second = _report(tmp_path / "r1.jsonl"), _report(tmp_path / "r2.jsonl")
    assert first == [first[-1]] and first[-1]["seen"] == 2 and first[-1]["hashed"] == 2
    assert second == [second[-1]] and second[-1]["seen"] == 2
    assert second[-1]["skipped_unchanged"] == 2


def test_no_type_applies_is_not_cached_across_types(tmp_path):
    """A video in a pdq-only scan is `unsupported` because of --types, not its bytes:
    a later scan asking for a type that applies hashes it."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "clip.mp4").write_bytes(b"not decoded by an md5 scan")
    args = ["scan", "--no-match", "--workers", "0", "--catalog", "c.sqlite", "tree", "--out"]
    pdq = _cli([*args, "r1.jsonl", "--types", "pdq"], tmp_path)
    assert pdq.returncode == 0, pdq.stderr
    assert _report(tmp_path / "r1.jsonl")[0]["reason"] == "unsupported"
    both = _cli([*args, "r2.jsonl", "--types", "pdq,md5"], tmp_path)
    assert both.returncode == 0, both.stderr
    assert _report(tmp_path / "r2.jsonl") == [_report(tmp_path / "r2.jsonl")[-1]]
    assert _report(tmp_path / "r2.jsonl")[-1]["hashed"] == 1

    empty = _cli([*args, "r3.jsonl", "--types", ","], tmp_path)
    assert empty.returncode == 2 and b"--types" in empty.stderr
    assert b"give at least one signal type" in empty.stderr
    assert not (tmp_path / "r3.jsonl").exists()


def _file_with_matches_in_two_lists(tmp_path: Path) -> list[str]:
    """tree/x.jpg; data/ holds its PDQ in list a and its MD5 in list b. Scan args."""
    from hashmatch.engine.hashing import hash_media
    from hashmatch.engine.runtime import Engine
    from hashmatch.engine.store import SignalRecord

    (tmp_path / "tree").mkdir()
    image = _jpeg(6)
    (tmp_path / "tree" / "x.jpg").write_bytes(image)
    pdq, md5 = (h.hex for h in hash_media(image, ["pdq", "md5"]))
    with Engine.open(tmp_path / "data", eager=False) as engine:
        engine.ingest([SignalRecord("pdq", pdq, labels=("x",))], list_name="a")
        engine.ingest([SignalRecord("md5", md5, labels=("x",))], list_name="b")
    return ["scan", "tree", "--workers", "0", "--data-dir", "data", "--catalog", "c.sqlite"]


def _found(report: Path) -> set[tuple[str, str]]:
    return {(r["type"], r["list"]) for r in _report(report)[:-1]}


def test_a_scan_limited_by_list_or_type_keeps_the_other_matches(tmp_path):
    """Re-matching an unchanged file within --list/--types used to delete every
    catalogued match of it, the other lists' and types' included, unreported. (A
    --list or --types scan reports its own lists and types only; the next unlimited
    scan shows the others kept.)"""
    args = _file_with_matches_in_two_lists(tmp_path)
    both = {("pdq", "a"), ("md5", "b")}
    for i, (limit, reported) in enumerate(
        (
            ([], both),
            (["--list", "a"], {("pdq", "a")}),
            ([], both),
            (["--types", "md5"], {("md5", "b")}),
            (["--list", "b"], {("md5", "b")}),
            ([], both),
        )
    ):
        done = _cli([*args, *limit, "--out", f"r{i}.jsonl"], tmp_path)
        assert done.returncode == 0, done.stderr
        found = {(r["type"], r["list"]) for r in _report(tmp_path / f"r{i}.jsonl")[:-1]}
        assert found == reported, limit


def test_report_and_catalog_problems_are_one_line_and_early(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.jpg").write_bytes(_jpeg(7))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "store.sqlite").write_bytes(b"")
    args = ["scan", "--no-match", "--workers", "0", "--data-dir", "data", "tree", "--out"]

    def refused(out: str, *extra: str) -> str:
        done = _cli([*args, out, *extra], tmp_path)
        lines = done.stderr.decode().splitlines()
        assert done.returncode == 1 and len(lines) == 1, done.stderr
        return lines[0]

    # a bad --out: refused before anything is hashed (the catalog is not even created)
    assert refused("nodir/r.jsonl").startswith("Error: --out: cannot write a report in ")
    assert refused("tree").startswith("Error: --out: tree is a directory")
    assert not (tmp_path / "data" / "catalog.sqlite").exists()
    # --out onto hashmatch's own databases would replace them with a report
    for own in ("data/catalog.sqlite", "data/catalog.sqlite-wal", "data/store.sqlite"):
        assert refused(own) == f"Error: --out: {own} is hashmatch's own database, not a report"
    assert (tmp_path / "data" / "store.sqlite").read_bytes() == b""
    # a full disk names the report
    assert refused("/dev/full").startswith("Error: /dev/full: No space left on device (the disk")
    # a catalog that is not a database: one line naming it, no traceback
    (tmp_path / "junk.sqlite").write_bytes(b"this is not a database, " * 100)
    assert refused("r.jsonl", "--catalog", "junk.sqlite") == (
        "Error: catalog junk.sqlite: file is not a database"
    )
    (tmp_path / "c.sqlite.lock").mkdir()  # the lock cannot be taken
    assert refused("r.jsonl", "--catalog", "c.sqlite") == (
        "Error: catalog c.sqlite: c.sqlite.lock: Is a directory"
    )


def test_a_root_that_cannot_be_reached_is_refused_before_anything_is_scanned(tmp_path):
    """A typo'd root, a broken symlink to a share not mounted: the scan exited 0 with one
    not-found failure, a report read as "nothing matched". Now refused, naming it, with
    nothing done (no catalog), even beside a good root."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.jpg").write_bytes(_jpeg(9))
    (tmp_path / "mnt").symlink_to(tmp_path / "not-mounted")
    args = ["scan", "--no-match", "--workers", "0", "--data-dir", "data", "--out", "r.jsonl"]
    broken = "No such file or directory (a broken symbolic link)"
    for roots, said in (
        (["tre"], "Error: tre: No such file or directory: nothing was scanned"),
        (["tree", "mnt"], f"Error: mnt: {broken}: nothing was scanned"),
    ):
        done = _cli([*args, *roots], tmp_path)
        assert done.returncode == 1, done.stderr
        assert done.stderr.decode().splitlines() == [said]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnt", "tree"]
    done = _cli([*args, "tree"], tmp_path)  # a file gone from a tree is still a failure
    assert done.returncode == 0, done.stderr


def test_a_catalog_path_that_is_a_fifo_or_a_directory_is_refused_by_name(tmp_path):
    """SQLite said "disk I/O error" for a FIFO (or /dev/zero) and "unable to open
    database file" for a directory, after creating the lock and a -journal beside it."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.jpg").write_bytes(_jpeg(8))
    os.mkfifo(tmp_path / "c.fifo")
    (tmp_path / "c.dir").mkdir()
    args = ["scan", "--no-match", "--workers", "0", "tree", "--out", "r.jsonl", "--catalog"]
    for name, kind in (("c.fifo", "a FIFO"), ("c.dir", "a directory")):
        done = _cli([*args, name], tmp_path)
        assert done.returncode == 1
        assert done.stderr.decode().splitlines() == [
            f"Error: catalog {name}: {name}: not a regular file but {kind}"
        ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.dir", "c.fifo", "tree"]


def test_a_catalog_directory_blocked_by_a_file_is_named_as_the_catalog_s(tmp_path):
    """--data-dir (or a --catalog directory) that is a file said only "Error: data:
    File exists", naming neither the catalog nor the problem."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.jpg").write_bytes(_jpeg(9))
    (tmp_path / "data").write_text("not a directory")
    args = ["scan", "--no-match", "--workers", "0", "tree", "--out", "r.jsonl"]
    for extra, message in (
        (["--data-dir", "data"], "catalog data/catalog.sqlite: data: Not a directory"),
        (
            ["--catalog", "data/sub/c.sqlite"],
            "catalog data/sub/c.sqlite: data/sub: Not a directory",
        ),
    ):
        done = _cli([*args, *extra], tmp_path)
        assert done.returncode == 1
        assert done.stderr.decode().splitlines() == [f"Error: {message}"]


def test_a_report_that_does_not_fit_leaves_no_partial_file(tmp_path):
    """Writing past the file size limit (EFBIG; ENOSPC behaves alike): the temporary
    report is removed and the error names the report, not its .tmp."""
    code = f"""
        from hashmatch.engine.scan import write_jsonl_atomically
        records = ({{"n": "x" * 100}} for _ in range(1000))
        try:
            write_jsonl_atomically({str(tmp_path / "r.jsonl")!r}, records)
        except OSError as exc:
            print(exc.filename, exc.strerror)
    """
    done = subprocess.run(
        ["prlimit", "--fsize=20000", "--", sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == f"{tmp_path / 'r.jsonl'} File too large", done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_from_list_keeps_leading_and_trailing_spaces_of_names(tmp_path):
    (tmp_path / "tree").mkdir()
    for i, name in enumerate((" lead.jpg", "trail.jpg ", "plain.jpg")):
        (tmp_path / "tree" / name).write_bytes(_jpeg(10 + i))
    listing = b"# a comment\r\n  \ntree/ lead.jpg\ntree/trail.jpg \r\ntree/plain.jpg"
    args = ["scan", "--no-match", "--workers", "0", "--catalog", "c.sqlite", "--out", "r.jsonl"]
    done = _cli([*args, "--from-list", "-"], tmp_path, stdin=listing)
    assert done.returncode == 0, done.stderr
    records = _report(tmp_path / "r.jsonl")
    assert records == [records[-1]] and records[-1]["hashed"] == 3


def test_from_list_takes_names_with_a_scheme_inside_as_paths(tmp_path, monkeypatch):
    """A POSIX name may contain "://" (a directory named "http:"): such a listed file
    was refused as "not a local file URI". And ``file:/abs`` (RFC 8089's one-slash
    form, Java's ``File.toURI``) was read as a relative path named ``file:``."""
    monkeypatch.chdir(tmp_path)
    odd = tmp_path / "http:" / "" / "cdn.example" / "a.jpg"  # "http://cdn.example/a.jpg"
    odd.parent.mkdir(parents=True)
    odd.write_bytes(_jpeg(30))
    plain = tmp_path / "b c.jpg"
    plain.write_bytes(_jpeg(31))
    lines = [
        f"{tmp_path}/http://cdn.example/a.jpg",  # absolute: always a path
        "http://cdn.example/a.jpg",  # relative, and that file exists here
        "file:" + str(plain).replace(" ", "%20"),
        "FILE://" + str(plain).replace(" ", "%20"),
        "https://example.com/missing.jpg",  # no such local file: a remote URI
    ]
    got = sorted((e.path, e.reason or "") for e in read_list(lines))
    assert got == sorted(
        [
            (str(odd), ""),
            (str(odd), ""),
            (str(plain), ""),
            (str(plain), ""),
            ("https://example.com/missing.jpg", "unsupported"),
        ]
    )


def test_a_nul_separated_list_is_one_failure_not_a_traceback(tmp_path):
    """`find -print0 | hashmatch scan --from-list -` (or a %00 in a URI) made os.stat
    raise ValueError("embedded null byte"): the whole scan stopped with a traceback."""
    (tmp_path / "tree").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "tree" / name).write_bytes(_jpeg(40))
    listing = b"tree/a.jpg\0tree/b.jpg\0\nfile:///x%00y.jpg\ntree/b.jpg\n"
    args = ["scan", "--no-match", "--workers", "0", "--catalog", "c.sqlite", "--out", "r.jsonl"]
    done = _cli([*args, "--from-list", "-"], tmp_path, stdin=listing)
    assert done.returncode == 0, done.stderr
    *failures, summary = _report(tmp_path / "r.jsonl")
    assert [(f["file"], f["reason"]) for f in failures] == [
        (f"{tmp_path}/tree/a.jpg\0tree/b.jpg\0", "not-found"),
        ("/x\0y.jpg", "not-found"),
    ]
    assert failures[0]["error"].startswith("no file name holds a NUL byte")
    assert (summary["hashed"], summary["failed"]) == (1, 2)


def test_a_file_rewritten_within_its_mtime_tick_is_hashed_again(tmp_path):
    """A write landing after the scan's read but within the same mtime tick (4 ms on
    ext4; os.utime stands in for the tick here) left (size, mtime) unchanged: every
    later scan skipped the file and kept the MD5 of its old bytes. A file modified
    seconds before it was read is re-checked (read and MD5'd) by the next scan; a file
    settled long before is skipped unread, as ever."""
    import hashlib

    (tmp_path / "tree").mkdir()
    blob = tmp_path / "tree" / "blob.bin"
    blob.write_bytes(b"A" * 4096)
    st = blob.stat()
    assert _scan_once(tmp_path, types=("md5",))["hashed"] == 1
    blob.write_bytes(b"B" * 4096)  # same size, and the same mtime:
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _scan_once(tmp_path, types=("md5",))["hashed"] == 1
    with Catalog(tmp_path / "c.sqlite", readonly=True) as cat:
        assert cat.lookup([str(blob)])[str(blob)].md5 == hashlib.md5(b"B" * 4096).digest()
    hour_ago = st.st_mtime_ns - 3600 * 10**9  # settled: its stat is trusted from now on
    os.utime(blob, ns=(hour_ago, hour_ago))
    assert _scan_once(tmp_path, types=("md5",))["skipped_unchanged"] == 1  # read, MD5 same
    with Catalog(tmp_path / "c.sqlite", readonly=True) as cat:
        assert cat.lookup([str(blob)])[str(blob)].mtime_ns == hour_ago
    assert _scan_once(tmp_path, types=("md5",))["skipped_unchanged"] == 1


def _scan_once(tmp_path: Path, **options) -> dict:
    from hashmatch.engine.scan import ScanOptions, scan

    with Catalog(tmp_path / "c.sqlite") as cat:
        opts = ScanOptions(workers=0, progress=False, **options)
        return scan([tmp_path / "tree"], catalog=cat, matcher=None, options=opts).as_dict()


def test_pdq_marks_only_when_pdq_and_reuse_only_as_exact_as_asked(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.jpg").write_bytes(_jpeg(20, size=192))
    # --dihedral without pdq: nothing about PDQ recorded, nothing to re-hash later
    assert _scan_once(tmp_path, types=("md5",), dihedral=True)["hashed"] == 1
    with Catalog(tmp_path / "c.sqlite", readonly=True) as cat:
        assert cat.lookup([str(tmp_path / "tree/a.jpg")]).popitem()[1].types == ("md5",)
    assert _scan_once(tmp_path, types=("md5",))["hashed"] == 0
    # shrunk-luma PDQ is less exact than luma PDQ: --fast-decode hashes again
    steps = [(2, 1), (2, 0), (1, 1), (2, 0), (1, 0), (0, 1), (1, 0), (2, 0)]
    for level, hashed in steps:  # (fast_decode asked, files hashed)
        summary = _scan_once(tmp_path, types=("pdq",), fast_decode=level)
        assert summary["hashed"] == hashed, (level, summary)


def test_hashing_a_missing_type_keeps_the_unchanged_file_s_other_types(tmp_path):
    """An md5 scan, then a pdq scan: the file is hashed again for PDQ (it lacked it);
    its bytes did not change, so its MD5 hash and match stay (they were dropped). Each
    scan reports its own types; a scan of both shows both kept."""
    args = _file_with_matches_in_two_lists(tmp_path)
    for i, (types, hashed, found) in enumerate(
        (
            ("md5", 1, {("md5", "b")}),
            ("pdq", 1, {("pdq", "a")}),
            ("pdq,md5", 0, {("pdq", "a"), ("md5", "b")}),
            ("md5", 0, {("md5", "b")}),
            ("pdq,md5", 0, {("pdq", "a"), ("md5", "b")}),
        )
    ):
        done = _cli([*args, "--types", types, "--out", f"r{i}.jsonl"], tmp_path)
        assert done.returncode == 0, done.stderr
        assert _report(tmp_path / f"r{i}.jsonl")[-1]["hashed"] == hashed, types
        assert _found(tmp_path / f"r{i}.jsonl") == found, types


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_killed_worker_fails_no_innocent_file(tmp_path):
    """One worker's death fails every task in flight (12 files here). Those files are
    retried one at a time: a worker killed from outside (say, by the OOM killer while
    another process grew) leaves no file marked `worker-crashed`."""
    import signal
    import time

    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(160):
        (tree / f"{i:03d}.jpg").write_bytes(_jpeg(100 + i, size=1024))
    args = ["scan", "--no-match", "--workers", "1", "--catalog", "c.sqlite", "tree"]
    scan = subprocess.Popen([*PRLIMIT, HASHMATCH, *args, "--out", "r.jsonl"], cwd=tmp_path)
    try:
        killed = False
        deadline = time.monotonic() + 60
        while not killed and scan.poll() is None and time.monotonic() < deadline:
            workers = [
                worker
                for server in _children(scan.pid)
                if b"forkserver" in _cmdline(server)
                for worker in _children(server)
            ]
            if workers:
                time.sleep(0.2)  # hashing: tasks in flight
                try:
                    os.kill(workers[0], signal.SIGKILL)
                    killed = True
                except ProcessLookupError:  # it had just exited: look again
                    pass
            time.sleep(0.02)
        assert killed, "no worker was killed while the scan ran"
        assert scan.wait(timeout=120) == 0
    finally:
        scan.kill()
    summary = _report(tmp_path / "r.jsonl")[-1]
    assert summary["hashed"] == 160 and summary["failed"] == 0, summary


def _slow_video(path: Path, frames: int = 300) -> None:
    """One frame a second, so vPDQ hashes every frame (~0.3 s for 300 at 320x240)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 1.0, (320, 240))
    ramp = np.add.outer(np.arange(240), np.arange(320))
    for i in range(frames):
        grey = ((ramp + 3 * i) % 256).astype(np.uint8)
        writer.write(np.repeat(grey[:, :, None], 3, axis=2))
    writer.release()


def test_a_video_replaced_after_it_was_read_is_hashed_from_the_bytes_read(tmp_path):
    """FFmpeg opened a video by name after the worker had read and MD5'd it: a video
    replaced in between got the other file's vPDQ beside its own MD5, and one swapped
    for a FIFO blocked FFmpeg's open() forever (no --file-timeout checkpoint runs
    before it). The swap is made the moment the worker's read returns."""
    video = tmp_path / "clip.mp4"
    _slow_video(video, frames=3)
    code = f"""
        import hashlib, json, os
        from hashmatch.engine import scan
        from hashmatch.engine.hashing import HashOptions, hash_media
        path = {str(video)!r}
        expected = hash_media(path, ["vpdq"])[0].codes.tolist()
        real = scan._read_regular

        def read_then_swap(*args):
            out = real(*args)
            os.rename(path, path + ".old")
            os.mkfifo(path)
            return out

        scan._read_regular = read_then_swap
        r = scan.hash_file(path, ["vpdq", "md5"], HashOptions(), time_budget=5)
        print(json.dumps([r.reason, r.error, r.hashes[0].codes.tolist() == expected if
                          r.hashes else None]))
    """
    done = _run_py(code, tmp_path, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [None, None, True]


def test_a_video_over_the_per_file_time_limit_fails_as_timeout_and_is_retried(tmp_path):
    """One pathological video must not hold a worker for hours: past --file-timeout it
    is a recorded failure ("timeout"), the other files are hashed, and a later scan
    with room enough hashes it (not a verdict on its bytes, so not cached)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    _slow_video(tree / "long.mp4")
    (tree / "photo.jpg").write_bytes(_jpeg(1))
    catalog, report = str(tmp_path / "c.sqlite"), str(tmp_path / "r.jsonl")
    args = ["scan", str(tree), "--types", "vpdq,pdq", "--no-match", "--workers", "1",
            "--catalog", catalog, "--out", report]  # fmt: skip

    first = _cli([*args, "--file-timeout", "0.05"], tmp_path)
    assert first.returncode == 0, first.stderr
    records = _report(tmp_path / "r.jsonl")
    (failure,) = [r for r in records if r["kind"] == "failure"]
    assert failure["file"] == str(tree / "long.mp4") and failure["reason"] == "timeout"
    assert "longer than the 0.05 s per-file limit" in failure["error"]
    assert records[-1]["hashed"] == 1 and records[-1]["failed"] == 1

    again = _cli(args, tmp_path)  # the default limit (an hour)
    assert again.returncode == 0, again.stderr
    summary = _report(tmp_path / "r.jsonl")[-1]
    assert summary["failed"] == 0 and summary["hashed"] == 1  # the video, hashed this time
    with Catalog(tmp_path / "c.sqlite") as catalog:
        assert catalog.stats()["hashes"]["vpdq"] == 300


def test_a_worker_stuck_on_one_file_is_killed_and_only_that_file_fails(tmp_path):
    """--file-timeout was checked only between video and animation frames: a worker
    blocked in one decode (or in a read from a hung mount) was waited on forever.
    Here a still image decodes for ~2 s against a 0.2 s timeout + 0.3 s grace: its
    worker is killed, the files in flight with it are retried and hashed, and the
    stuck file alone fails as `timeout`."""
    from hashmatch.engine.scan import ScanOptions, scan

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.jpg").write_bytes(_jpeg(50))
    slow_png(tree / "b.png")
    (tree / "c.jpg").write_bytes(_jpeg(51))
    options = ScanOptions(
        types=("pdq",), workers=1, progress=False, file_timeout=0.2, stall_grace=0.3
    )
    with Catalog(tmp_path / "c.sqlite") as cat:
        summary = scan([tree], catalog=cat, matcher=None, options=options)
        failures = list(cat.failures_for_run(summary.run_id))
    assert (summary.hashed, summary.failed_by_reason) == (2, {"timeout": 1})
    assert [(f.path, f.reason) for f in failures] == [(str(tree / "b.png"), "timeout")]
    assert "its worker was killed" in failures[0].error


def test_a_scan_without_a_video_type_says_its_videos_match_only_as_exact_copies(tmp_path):
    """The default --types (pdq,md5) hash a video's bytes only: an edited copy of a
    listed video cannot match, and nothing said so (`hash` defaults to pdq,vpdq)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    _slow_video(tree / "clip.mp4", frames=3)
    (tree / "photo.jpg").write_bytes(_jpeg(1))
    report = str(tmp_path / "r.jsonl")
    args = ["scan", str(tree), "--no-match", "--workers", "0", "--no-progress",
            "--catalog", str(tmp_path / "c.sqlite"), "--out", report]  # fmt: skip

    default = _cli(args, tmp_path)
    assert default.returncode == 0, default.stderr
    assert _report(tmp_path / "r.jsonl")[-1]["videos_without_vpdq"] == 1
    assert "note: 1 video file(s) were not hashed as video (--types pdq,md5)" in (
        default.stderr.decode()
    )
    assert default.stderr.decode().rstrip().endswith(f"edited copies: {tree / 'clip.mp4'}")

    with_vpdq = _cli([*args, "--types", "pdq,md5,vpdq"], tmp_path)
    assert with_vpdq.returncode == 0, with_vpdq.stderr
    assert _report(tmp_path / "r.jsonl")[-1]["videos_without_vpdq"] == 0
    assert "note:" not in with_vpdq.stderr.decode()
