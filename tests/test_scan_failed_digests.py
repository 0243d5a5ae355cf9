"""A file no decoder reads can still be byte-identical to a listed one: its MD5 and
SHA-256 are matched, catalogued and rescanned while it is reported failed for PDQ.

Before: a decode failure (a truncated JPEG, a HEIC, an unknown container) recorded the
file with no digest, so an MD5 list naming exactly those bytes never matched it, by
scan, ``scan --server`` or rescan. Real files, real workers, a real store and server;
the trees are written once and left to settle (a scan trusts a stat only once it is
older than scan.RACY_MTIME_NS), so re-runs can be counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scan_tree import ORIGINALS, _png, slow_png

import hashmatch.engine.decode as decode_module
import hashmatch.engine.hashing as hashing_module
from hashmatch.engine.catalog import Catalog
from hashmatch.engine.hashing import hash_media
from hashmatch.engine.rescan import rescan
from hashmatch.engine.runtime import Engine
from hashmatch.engine.scan import RACY_MTIME_NS, LocalMatcher, ScanOptions, hash_file, scan
from hashmatch.engine.scan_stderr import WORKERS_DIR_PREFIX, last_words
from hashmatch.engine.store import SignalRecord, SignalStore
from hashmatch.server.cli import cli
from hashmatch.server.testing import running_server

TREES = ("local", "server", "rescan")
BROKEN = {"cut.jpg": "corrupt", "photo.heic": "unsupported"}


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(ORIGINALS["chelsea"]()).save(buf, format="JPEG", quality=90)
    return buf.getvalue()[:700]


def _heic() -> bytes:
    """An ISO-BMFF 'heic' brand header and then bytes no image decoder here reads."""
    rng = np.random.default_rng(15)
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + rng.bytes(3000)


BLOBS = {
    "astronaut.png": _png(ORIGINALS["astronaut"]()),
    "cut.jpg": _truncated_jpeg(),
    "photo.heic": _heic(),
}


def _digest(name: str, algorithm: str = "md5") -> str:
    return hashlib.new(algorithm, BLOBS[name]).hexdigest()


def _md5_list(names) -> list[SignalRecord]:
    """The generated list: the MD5s of the broken files (as a partner shares them)."""
    return [SignalRecord("md5", _digest(n), external_id=n) for n in names]


@pytest.fixture(scope="module")
def settled(tmp_path_factory):
    """One tree per test (the files of BLOBS, mtimes an hour back), waited on until
    every ctime is old enough for a scan to trust."""
    base = tmp_path_factory.mktemp("digests")
    hour_ago = time.time_ns() - 3600 * 10**9
    for tree in TREES:
        (base / tree).mkdir()
        for name, blob in BLOBS.items():
            (base / tree / name).write_bytes(blob)
            os.utime(base / tree / name, ns=(hour_ago, hour_ago))
    time.sleep(RACY_MTIME_NS / 1e9 + 0.1)
    for name, reason in BROKEN.items():  # the premise: these really fail to decode
        assert hash_file(str(base / "local" / name), ("pdq",)).reason == reason
    return base


def _store(data_dir: Path, list_name: str, records: list[SignalRecord]) -> None:
    with Engine.open(data_dir, eager=False) as engine:
        assert engine.ingest(records, list_name=list_name).rejected == 0


def _scan(base: Path, tree: str, data_dir: Path, report: Path, **options):
    matcher = LocalMatcher.open(data_dir)
    try:
        with Catalog(base / f"{tree}.sqlite") as catalog:
            opts = ScanOptions(workers=1, progress=False, **options)
            return scan([base / tree], catalog=catalog, matcher=matcher, report=report,
                        options=opts)  # fmt: skip
    finally:
        matcher.close()


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _body(path: Path) -> list[dict]:
    return [r for r in _records(path) if r["kind"] != "summary"]


def _hash_calls(catalog: Path) -> int:
    with Catalog(catalog, readonly=True) as cat:
        return cat.counter("hash_calls")


def test_a_failed_decode_is_still_matched_by_md5_and_sha256(settled, tmp_path):
    """Reported as MD5 (and SHA-256) matches and as failures for PDQ; catalogued with
    their digests; a re-run neither decodes nor reads them, a chmod costs an MD5."""
    data = tmp_path / "data"
    _store(data, "known", _md5_list(BROKEN))
    sha = [SignalRecord("sha256", _digest("photo.heic", "sha256"), external_id="heic")]
    _store(data, "known-sha", sha)
    types = ("pdq", "md5", "sha256")
    first = _scan(settled, "local", data, tmp_path / "1.jsonl", types=types)
    tree = settled / "local"
    got = [(Path(r["file"]).name, r["type"], r["external_id"], r["distance"])
           for r in _records(tmp_path / "1.jsonl") if r["kind"] == "match"]  # fmt: skip
    assert got == [
        ("cut.jpg", "md5", "cut.jpg", 0),
        ("photo.heic", "md5", "photo.heic", 0),
        ("photo.heic", "sha256", "heic", 0),
    ]
    failures = {Path(r["file"]).name: r["reason"] for r in _records(tmp_path / "1.jsonl")
                if r["kind"] == "failure"}  # fmt: skip
    assert failures == BROKEN
    # seen = hashed + skipped_unchanged + failed; failed_digested: of failed
    assert (first.seen, first.hashed, first.failed, first.failed_digested) == (3, 1, 2, 2)
    assert (first.matched_files, first.matches) == (2, 3)
    catalog = settled / "local.sqlite"
    with sqlite3.connect(catalog) as conn:
        rows = conn.execute(
            "SELECT f.path, f.status, f.md5, f.types, COUNT(h.id) FROM files f"
            " LEFT JOIN hashes h ON h.file_id = f.id AND h.signal_type IN ('md5', 'sha256')"
            " GROUP BY f.id ORDER BY f.path"
        ).fetchall()
    assert [(Path(p).name, s, m.hex(), t, n) for p, s, m, t, n in rows] == [
        ("astronaut.png", "hashed", _digest("astronaut.png"), "pdq,md5,sha256", 2),
        ("cut.jpg", "failed", _digest("cut.jpg"), "md5,sha256", 2),
        ("photo.heic", "failed", _digest("photo.heic"), "md5,sha256", 2),
    ]
    calls = _hash_calls(catalog)

    again = _scan(settled, "local", data, tmp_path / "2.jsonl", types=types)
    assert _body(tmp_path / "2.jsonl") == _body(tmp_path / "1.jsonl")
    assert (again.hashed, again.skipped_unchanged, again.rechecked) == (0, 1, 0)
    assert (again.failed, again.failed_digested, again.matches) == (2, 2, 3)
    assert _hash_calls(catalog) == calls  # the known-bad files: not decoded, not read

    (tree / "cut.jpg").chmod(0o600)  # the ctime moves: read and MD5'd, not decoded
    touched = _scan(settled, "local", data, tmp_path / "3.jsonl", types=types)
    assert _body(tmp_path / "3.jsonl") == _body(tmp_path / "1.jsonl")
    assert (touched.hashed, touched.skipped_unchanged, touched.rechecked) == (0, 1, 1)
    assert (touched.failed, touched.failed_digested, touched.matches) == (2, 2, 3)
    assert _hash_calls(catalog) == calls
    with sqlite3.connect(catalog) as conn:
        assert conn.execute("SELECT COUNT(*) FROM matches").fetchone() == (3,)


def test_through_a_server_and_by_rescan_after_the_list_arrives(settled, tmp_path):
    """``scan --server`` reports the same MD5 matches as a local scan; a list of the
    same MD5s shared afterwards is found by ``rescan --server``, nothing decoded."""
    served = tmp_path / "served"
    _store(served, "known", _md5_list(BROKEN))
    local = tmp_path / "local.jsonl"
    matcher = LocalMatcher.open(served)
    with Catalog(tmp_path / "local.sqlite") as catalog:
        scan([settled / "server"], catalog=catalog, matcher=matcher, report=local,
             options=ScanOptions(workers=0, progress=False))  # fmt: skip
    matcher.close()
    tenants = {"scanner": (["match", "export", "write"], True)}
    with running_server(served, tenants=tenants) as ts:
        token = ts.tokens["scanner"]
        remote_catalog = tmp_path / "remote.sqlite"
        remote = tmp_path / "remote.jsonl"
        result = CliRunner().invoke(
            cli,
            ["scan", str(settled / "server"), "--server", ts.target, "--token", token,
             "--catalog", str(remote_catalog), "--workers", "0", "--out", str(remote),
             "--no-progress"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert _body(remote) == _body(local)
        matches = [(Path(r["file"]).name, r["type"], r["list"]) for r in _body(remote)
                   if r["kind"] == "match"]  # fmt: skip
        assert matches == [("cut.jpg", "md5", "known"), ("photo.heic", "md5", "known")]
        assert _records(remote)[-1]["failed_digested"] == 2

        def rescan_cli(out: Path) -> list[dict]:
            done = CliRunner().invoke(
                cli,
                ["rescan", "--server", ts.target, "--token", token,
                 "--catalog", str(remote_catalog), "--out", str(out)],
            )  # fmt: skip
            assert done.exit_code == 0, done.output
            return _records(out)

        assert [r["kind"] for r in rescan_cli(tmp_path / "r0.jsonl")] == ["summary"]
        client = ts.client("scanner")
        from hashmatch.server.client import signal

        added = client.ingest("partner-b", [signal("md5", _digest(n)) for n in BROKEN])
        assert added.added == 2
        got = rescan_cli(tmp_path / "r1.jsonl")
    assert [(Path(r["file"]).name, r["type"], r["list"]) for r in got[:-1]] == [
        ("cut.jpg", "md5", "partner-b"),
        ("photo.heic", "md5", "partner-b"),
    ]


def test_a_local_rescan_finds_a_failed_files_md5_shared_later(settled, tmp_path, monkeypatch):
    """Scanned before anyone listed them: no match, two failures. The MD5 list arrives;
    the rescan matches the failed files from their catalogued digests, hashing nothing."""
    data = tmp_path / "data"
    (pdq,) = hash_media(_png(ORIGINALS["coffee"]()), ["pdq"])
    _store(data, "early", [SignalRecord("pdq", pdq.hex)])  # nothing here matches
    first = _scan(settled, "rescan", data, tmp_path / "scan.jsonl")
    assert (first.failed, first.failed_digested, first.matches) == (2, 2, 0)
    catalog_path = settled / "rescan.sqlite"
    calls = _hash_calls(catalog_path)
    with Catalog(catalog_path) as catalog, Engine.open(data, eager=False) as engine:
        assert rescan(catalog, engine.store).new == []  # caught up: nothing new
    _store(data, "partner", _md5_list(BROKEN))

    def boom(*args, **kwargs):
        raise AssertionError("a rescan must not hash or decode media")

    monkeypatch.setattr(hashing_module, "hash_media", boom)
    monkeypatch.setattr(decode_module, "decode_image", boom)
    with Catalog(catalog_path) as catalog:
        store = SignalStore(data / "store.sqlite", create=False)
        try:
            result = rescan(catalog, store, report=tmp_path / "rescan.jsonl")
        finally:
            store.close()
    got = [(Path(r["file"]).name, r["type"], r["external_id"])
           for r in _records(tmp_path / "rescan.jsonl") if r["kind"] == "match"]  # fmt: skip
    assert got == [("cut.jpg", "md5", "cut.jpg"), ("photo.heic", "md5", "photo.heic")]
    assert len(result.new) == 2
    assert _hash_calls(catalog_path) == calls


def test_a_file_that_could_not_be_read_has_no_digest(tmp_path):
    """Unreadable (vanished, not a regular file, past --max-bytes) or empty: nothing was
    read, so nothing is matched; a decode failure carries its digests."""
    (tmp_path / "cut.jpg").write_bytes(BLOBS["cut.jpg"])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "big.jpg").write_bytes(BLOBS["cut.jpg"] * 2)
    types = ("pdq", "md5")
    for name, reason in (
        ("gone.jpg", "not-found"),
        ("dir.jpg", "not-a-file"),
        ("empty.jpg", "empty"),
    ):
        got = hash_file(str(tmp_path / name), types)
        assert (got.reason, got.types, got.hashes) == (reason, (), []), name
    from hashmatch.engine.hashing import HashOptions

    limits = decode_module.DecodeLimits(max_bytes=1000)
    big = hash_file(str(tmp_path / "big.jpg"), types, HashOptions(limits=limits))
    assert (big.reason, big.md5, big.hashes) == ("too-large", None, [])
    cut = hash_file(str(tmp_path / "cut.jpg"), types)
    assert (cut.reason, cut.types) == ("corrupt", ("md5",))
    assert cut.hashes[0].codes.tobytes().hex() == _digest("cut.jpg") == cut.md5.hex()


def _png_over_the_pixel_limit() -> bytes:
    """A PNG whose header says 20000x20000: refused before decoding, "too-large", a
    verdict a later scan does not trust (the limit may differ), so decoded each run."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))  # fmt: skip


def _catalogued(catalog: Path) -> tuple[str, list[tuple[str, str]], list[str]]:
    with sqlite3.connect(catalog) as conn:
        (types,) = conn.execute("SELECT types FROM files").fetchone()
        matches = conn.execute(
            "SELECT signal_type, list_name FROM matches ORDER BY list_name"
        ).fetchall()
        hashes = [t for (t,) in conn.execute("SELECT signal_type FROM hashes ORDER BY 1")]
    return types, matches, hashes


def test_a_failed_files_digests_and_matches_outlive_a_narrower_scan(tmp_path):
    """A file decoded again on every run (too-large) lost its catalogued MD5 and its
    MD5 matches to a scan without md5 in --types, and its matches of other lists to a
    --list scan: a hashed file keeps what a narrower scan did not look at."""
    blob = _png_over_the_pixel_limit()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "huge.png").write_bytes(blob)
    data = tmp_path / "data"
    md5 = hashlib.md5(blob).hexdigest()
    _store(data, "a", [SignalRecord("md5", md5, external_id="in-a")])
    _store(data, "b", [SignalRecord("md5", md5, external_id="in-b")])
    catalog = tmp_path / "c.sqlite"

    def run(**options):
        matcher = LocalMatcher.open(data, lists=options.pop("lists", None))
        try:
            with Catalog(catalog) as cat:
                opts = ScanOptions(workers=1, progress=False, **options)
                return scan([tree], catalog=cat, matcher=matcher, report=None, options=opts)
        finally:
            matcher.close()

    first = run(types=("pdq", "md5"))
    assert (first.failed, first.failed_digested, first.matches) == (1, 1, 2)
    both = ("md5", [("md5", "a"), ("md5", "b")], ["md5"])
    assert _catalogued(catalog) == both
    pdq_only = run(types=("pdq",))
    assert (pdq_only.failed, pdq_only.failed_digested) == (1, 0)
    assert _catalogued(catalog) == both  # its MD5 and its matches were dropped
    only_a = run(types=("pdq", "md5"), lists=["a"])
    assert only_a.failed_digested == 1
    assert _catalogued(catalog) == both  # list b's match was dropped
    again = run(types=("pdq", "md5"))
    assert (again.failed_digested, again.matches) == (1, 2)
    assert _catalogued(catalog) == both


def test_a_lost_server_leaves_a_failed_files_catalogued_matches(tmp_path):
    """A file decoded again on every run (too-large) keeps its catalogued MD5 matches
    while its bytes do; a scan whose server was lost replaced them with the lookup's
    nothing (a skipped file's are kept then): the catalog said the file matched no
    list until a re-run."""
    import socket

    from hashmatch.engine.scan import LookupFailed, RemoteMatcher
    from hashmatch.server.client import HashmatchClient

    blob = _png_over_the_pixel_limit()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "huge.png").write_bytes(blob)
    data = tmp_path / "data"
    _store(data, "a", [SignalRecord("md5", hashlib.md5(blob).hexdigest())])
    catalog = tmp_path / "c.sqlite"
    opts = ScanOptions(workers=1, progress=False, types=("pdq", "md5"))
    matcher = LocalMatcher.open(data)
    with Catalog(catalog) as cat:
        assert scan([tree], catalog=cat, matcher=matcher, options=opts).matches == 1
    matcher.close()
    matched = ("md5", [("md5", "a")], ["md5"])
    assert _catalogued(catalog) == matched

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = RemoteMatcher(HashmatchClient(f"127.0.0.1:{port}", retries=0, timeout=2))
    with Catalog(catalog) as cat, pytest.raises(LookupFailed, match="run the same scan"):
        scan([tree], catalog=cat, matcher=dead, options=opts)
    dead.close()
    assert _catalogued(catalog) == matched  # the lost server's nothing replaced them
    matcher = LocalMatcher.open(data)  # the re-run matches it again, counted once
    with Catalog(catalog) as cat:
        again = scan([tree], catalog=cat, matcher=matcher, options=opts)
    matcher.close()
    assert (again.seen, again.failed, again.failed_digested, again.matches) == (1, 1, 1, 1)
    assert _catalogued(catalog) == matched


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


@contextlib.contextmanager
def _killing_whoever_decodes(
    path: Path, held_for: float = 0.5, last_words: bytes | list[bytes] = b""
):
    """SIGKILL any process this test started (a scan worker) that holds ``path`` open
    for over ``held_for`` s, as a decoder crashing on it would end its worker: the slow
    PNG holds its worker ~2 s in one decode, while reading its 243 kB for a digest
    takes milliseconds. ``last_words`` are first written to its fd 2 (through /proc, as
    a crashing decoder or faulthandler writes them; a list: the n-th killed worker's,
    none past its end). Yields the list of pids killed."""
    killed: list[int] = []
    done = threading.Event()

    def watch() -> None:
        first_seen: dict[int, float] = {}
        while not done.is_set():
            holders = set()
            for pid in _descendants(os.getpid()):
                with contextlib.suppress(OSError):
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        with contextlib.suppress(OSError):
                            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                                holders.add(pid)
            now = time.monotonic()
            first_seen = {pid: first_seen.get(pid, now) for pid in holders}
            for pid, since in first_seen.items():
                if now - since > held_for and pid not in killed:
                    words = last_words
                    if isinstance(words, list):
                        words = words[len(killed)] if len(killed) < len(words) else b""
                    if words:
                        with contextlib.suppress(OSError), open(f"/proc/{pid}/fd/2", "ab") as f:
                            f.write(words)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield killed
    finally:
        done.set()
        thread.join(5)


def _match_triples(report: Path) -> list[tuple[str, str, str]]:
    return [(Path(r["file"]).name, r["type"], r["list"]) for r in _body(report)
            if r["kind"] == "match"]  # fmt: skip


def test_a_file_that_kills_its_worker_is_still_matched_by_its_digests(tmp_path):
    """A decoder that crashes on a file (here: its worker killed each time it decodes
    it, twice, as a crash would end it) left it `worker-crashed` with no digest: an
    MD5 list naming exactly those bytes never matched it. Its digests are read in a
    process of their own: matched, catalogued, and found again by a rescan."""
    tree = tmp_path / "tree"
    tree.mkdir()
    slow_png(tree / "crash.png")
    (tree / "ok.png").write_bytes(BLOBS["astronaut.png"])
    blob = (tree / "crash.png").read_bytes()
    data = tmp_path / "data"
    _store(data, "md5s", [SignalRecord("md5", hashlib.md5(blob).hexdigest())])
    _store(data, "sha", [SignalRecord("sha256", hashlib.sha256(blob).hexdigest())])
    catalog = tmp_path / "c.sqlite"
    report = tmp_path / "r.jsonl"
    options = {"types": ("pdq", "md5", "sha256"), "file_timeout": None}
    with _killing_whoever_decodes(tree / "crash.png") as killed:
        matcher = LocalMatcher.open(data)
        try:
            with Catalog(catalog) as cat:
                opts = ScanOptions(workers=1, progress=False, **options)
                summary = scan([tree], catalog=cat, matcher=matcher, report=report, options=opts)
        finally:
            matcher.close()
    assert len(killed) == 2  # in its chunk, then alone: only then is it the culprit
    assert summary.failed_by_reason == {"worker-crashed": 1}
    assert (summary.hashed, summary.failed_digested, summary.matches) == (1, 1, 2)
    assert _match_triples(report) == [("crash.png", "md5", "md5s"), ("crash.png", "sha256", "sha")]
    (failure,) = [r for r in _body(report) if r["kind"] == "failure"]
    assert (Path(failure["file"]).name, failure["reason"]) == ("crash.png", "worker-crashed")
    with sqlite3.connect(catalog) as conn:
        row = conn.execute(
            "SELECT f.status, f.md5, f.types, COUNT(h.id) FROM files f"
            " JOIN hashes h ON h.file_id = f.id WHERE f.path LIKE '%crash.png' GROUP BY f.id"
        ).fetchone()
    assert row == ("failed", hashlib.md5(blob).digest(), "md5,sha256", 2)

    _store(data, "later", [SignalRecord("md5", hashlib.md5(blob).hexdigest())])
    with Catalog(catalog) as cat, Engine.open(data, eager=False) as engine:
        found = rescan(cat, engine.store, report=tmp_path / "rescan.jsonl")
    assert len(found.new) == 1
    assert _match_triples(tmp_path / "rescan.jsonl") == [("crash.png", "md5", "later")]


def test_a_crashed_workers_last_words_are_in_its_files_failure(tmp_path, monkeypatch):
    """A worker's fd 2 is a file the scan reads decoder warnings from (scan_stderr):
    what a worker wrote there as it died (faulthandler's fatal error and traceback, a C
    library's abort message) went with the anonymous file, and the `worker-crashed`
    file said only BrokenProcessPool. Its last lines are now in the failure's error,
    control characters escaped; the scan's directory of those files is removed."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    tree = tmp_path / "tree"
    tree.mkdir()
    slow_png(tree / "crash.png")
    (tree / "ok.png").write_bytes(BLOBS["astronaut.png"])
    words = (  # as faulthandler writes them: other threads first, the crashed one after
        b"Corrupt JPEG data: 2 extraneous bytes before marker 0xd9\n"
        b"Fatal Python error: Segmentation fault\n\n"
        b"Thread 0x00007e (most recent call first):\n"
        b'  File "threading.py", line 320 in wait\n\n'
        b"Current thread 0x00007f (most recent call first):\n"
        b'  File "decode.py", line 7 in \x1b[31mopen\n'
        b'  File "decode.py", line 9 in decode_image\n\n'
        b"Extension modules: numpy._core._multiarray_umath, PIL._imaging (total: 2)\n"
    )
    opts = ScanOptions(workers=1, progress=False, types=("pdq",), file_timeout=None)
    report = tmp_path / "r.jsonl"
    crashing = _killing_whoever_decodes(tree / "crash.png", last_words=words)
    with crashing as killed, Catalog(tmp_path / "c.sqlite") as cat:
        summary = scan([tree], catalog=cat, matcher=None, report=report, options=opts)
    assert len(killed) == 2
    assert summary.failed_by_reason == {"worker-crashed": 1}
    (failure,) = [r for r in _body(report) if r["kind"] == "failure"]
    assert failure["error"].endswith(
        "; its worker's last words: Fatal Python error: Segmentation fault | Current thread"
        ' 0x00007f (most recent call first): | File "decode.py", line 7 in \\x1b[31mopen |'
        ' File "decode.py", line 9 in decode_image'
    )
    assert list(tmp.glob(f"{WORKERS_DIR_PREFIX}*")) == []  # (multiprocessing's pymp-* stay)


def test_a_first_crashs_last_words_are_kept_when_the_retry_alone_says_none(tmp_path, capfd):
    """A file that kills its worker in a task of several files is tried again alone;
    only that second crash's last words were read, so a first crash with words (a
    segfault's) and a second with none (killed outright) left the file's failure and
    its stderr line with no why. The first's words are now kept for it."""
    tree = tmp_path / "tree"
    tree.mkdir()
    slow_png(tree / "crash.png")
    (tree / "ok.png").write_bytes(BLOBS["astronaut.png"])
    opts = ScanOptions(workers=1, progress=False, types=("pdq",), file_timeout=None)
    report = tmp_path / "r.jsonl"
    words = [b"Fatal Python error: Segmentation fault\n", b""]
    crashing = _killing_whoever_decodes(tree / "crash.png", last_words=words)
    with crashing as killed, Catalog(tmp_path / "c.sqlite") as cat:
        summary = scan([tree], catalog=cat, matcher=None, report=report, options=opts)
    assert len(killed) == 2  # in its task (with words), then alone (none)
    assert summary.failed_by_reason == {"worker-crashed": 1} and summary.hashed == 1
    (failure,) = [r for r in _body(report) if r["kind"] == "failure"]
    assert failure["error"].endswith(
        "; its first worker's (in a task of several files): Fatal Python error: Segmentation fault"
    )
    assert "crash.png crashed its worker: Fatal Python error: Segmentation fault" in (
        capfd.readouterr().err
    )


def test_a_dead_workers_last_words_without_faulthandler_are_its_last_lines(tmp_path):
    """A C library's abort message (no faulthandler): the last lines, each clipped, the
    file removed; a worker that said nothing has no last words."""
    (tmp_path / "41").write_bytes(
        b"Corrupt JPEG data: premature end of data segment\n" * 3
        + b"x" * 500
        + b"\nfree(): invalid pointer\n"
    )
    said = last_words(str(tmp_path), 41)
    assert said.endswith(" | " + "x" * 200 + "... | free(): invalid pointer")
    assert said.count("|") == 4
    assert not (tmp_path / "41").exists()
    (tmp_path / "42").write_bytes(b"")
    assert last_words(str(tmp_path), 42) == last_words(str(tmp_path), 43) == ""


def test_a_file_that_killed_its_worker_before_is_tried_alone_at_once(tmp_path):
    """A `worker-crashed` file is tried again by every scan (a crash is not a verdict
    on the bytes: memory, a stray kill, a fixed decoder), but it went into a task with
    other files as if never seen: its crash took the files in flight with it, each was
    tried again one at a time, and it crashed a second worker alone. Now the catalog's
    `worker-crashed` sends it straight to the one-at-a-time retry: one crash a scan."""
    tree = tmp_path / "tree"
    tree.mkdir()
    slow_png(tree / "crash.png")
    for name in ("astronaut", "coffee", "chelsea"):
        (tree / f"{name}.png").write_bytes(_png(ORIGINALS[name]()))
    catalog = tmp_path / "c.sqlite"
    opts = ScanOptions(workers=1, progress=False, types=("pdq", "md5"), file_timeout=None)
    with _killing_whoever_decodes(tree / "crash.png") as killed:
        with Catalog(catalog) as cat:
            first = scan([tree], catalog=cat, matcher=None, options=opts)
        assert len(killed) == 2  # in its task, then alone
        with Catalog(catalog) as cat:
            again = scan([tree], catalog=cat, matcher=None, options=opts)
    assert len(killed) == 3  # alone at once: killed once more, not twice
    for summary in (first, again):
        assert summary.failed_by_reason == {"worker-crashed": 1}
        assert summary.failed_digested == 1
        assert summary.hashed + summary.skipped_unchanged == 3


def test_a_file_whose_stalled_worker_was_killed_is_still_matched_by_its_digests(tmp_path):
    """The watchdog kills a worker stuck on one file (here: one still-image decode of
    ~2 s against a 0.2 s --file-timeout + 0.3 s grace): the file failed `timeout`
    with no digest. Its MD5 is read apart and matched."""
    tree = tmp_path / "tree"
    tree.mkdir()
    slow_png(tree / "stuck.png")
    blob = (tree / "stuck.png").read_bytes()
    data = tmp_path / "data"
    _store(data, "md5s", [SignalRecord("md5", hashlib.md5(blob).hexdigest())])
    matcher = LocalMatcher.open(data)
    try:
        with Catalog(tmp_path / "c.sqlite") as cat:
            opts = ScanOptions(types=("pdq", "md5"), workers=1, progress=False,
                               file_timeout=0.2, stall_grace=0.3)  # fmt: skip
            summary = scan([tree], catalog=cat, matcher=matcher, report=tmp_path / "r.jsonl",
                           options=opts)  # fmt: skip
    finally:
        matcher.close()
    assert summary.failed_by_reason == {"timeout": 1}
    assert (summary.failed_digested, summary.matches) == (1, 1)
    assert _match_triples(tmp_path / "r.jsonl") == [("stuck.png", "md5", "md5s")]
    (failure,) = [r for r in _body(tmp_path / "r.jsonl") if r["kind"] == "failure"]
    assert failure["reason"] == "timeout" and "its worker was killed" in failure["error"]


def test_digests_read_apart_or_the_reason_there_are_none(tmp_path):
    """The reader process gives the digests of a regular file, and a reason (never a
    hang) for a path it cannot read: a FIFO swapped in, a file gone."""
    from hashmatch.engine.scan import worker_context
    from hashmatch.engine.scan_digests import Digested, digest_apart

    (tmp_path / "a.bin").write_bytes(b"some bytes")
    os.mkfifo(tmp_path / "fifo")
    context = worker_context()
    got = digest_apart(context, str(tmp_path / "a.bin"), ("md5", "sha256"), max_bytes=100)
    assert isinstance(got, Digested) and got.size == 10
    assert got.md5 == hashlib.md5(b"some bytes").digest()
    assert [(h.signal_type, h.codes.tobytes()) for h in got.hashes] == [
        ("md5", hashlib.md5(b"some bytes").digest()),
        ("sha256", hashlib.sha256(b"some bytes").digest()),
    ]
    fifo = digest_apart(context, str(tmp_path / "fifo"), ("md5",), max_bytes=100)
    assert isinstance(fifo, str) and "FIFO" in fifo
    gone = digest_apart(context, str(tmp_path / "gone"), ("md5",), max_bytes=100)
    assert isinstance(gone, str) and "FileNotFoundError" in gone


def test_crashed_files_and_their_last_words_are_on_stderr(tmp_path, monkeypatch, capsys):
    """A crashed worker's last words were only in the report's error: the terminal
    showed `worker-crashed: 1`. Each crashed file now has one stderr line, escaped,
    with them; the first CRASHES_SHOWN files, then a count."""
    import hashmatch.engine.scan as scan_module

    monkeypatch.setattr(scan_module, "CRASHES_SHOWN", 1, raising=False)
    tree = tmp_path / "tree"
    tree.mkdir()
    slow_png(tree / "a\x1bcrash.png")
    slow_png(tree / "b-crash.png")
    words = b"Fatal Python error: Segmentation fault\n\x1b[31mboom\n"
    opts = ScanOptions(workers=1, progress=False, types=("pdq",), file_timeout=None)
    with (
        _killing_whoever_decodes(tree / "a\x1bcrash.png", last_words=words),
        _killing_whoever_decodes(tree / "b-crash.png", last_words=words),
        Catalog(tmp_path / "c.sqlite") as cat,
    ):
        summary = scan([tree], catalog=cat, matcher=None, options=opts)
    assert summary.failed_by_reason == {"worker-crashed": 2}
    said = [line for line in capsys.readouterr().err.splitlines() if "crash" in line]
    assert said == [
        f"scan: {tree}/a\\x1bcrash.png crashed its worker: Fatal Python error:"
        " Segmentation fault | \\x1b[31mboom",
        "scan: 1 more file(s) crashed their worker (their last words: the report's"
        " worker-crashed errors)",
    ]
