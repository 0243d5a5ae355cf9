"""The scan streams its walk: hashing starts before the walk ends, a path reached twice
is still scanned once, and the progress total comes from a counting pass."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from scan_tree import build_tree

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.scan import (
    Progress,
    Scanner,
    ScanOptions,
    TreeCounter,
    scan,
    walk,
)

TINY = b"\x89PNG\r\n\x1a\n-not-decoded-by-an-md5-scan"


def _many(root: Path, n: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"f{i:05d}.png" for i in range(n)]
    for i, p in enumerate(paths):
        p.write_bytes(TINY + str(i).encode())
    return paths


def _committed(catalog: Path) -> int:
    with sqlite3.connect(catalog) as conn:
        return conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]


def test_files_are_hashed_and_committed_while_the_walk_goes_on(tmp_path):
    # the whole walk used to be listed (and kept) before the first file was hashed:
    # ~350 B of parent memory per file, 3.5 GB for 10M files
    _many(tmp_path / "tree", 1500)
    cat_path = tmp_path / "c.sqlite"
    committed_midway: list[int] = []

    def entries():
        for i, e in enumerate(walk([tmp_path / "tree"])):
            if i == 1200:
                committed_midway.append(_committed(cat_path))
            yield e

    opts = ScanOptions(types=("md5",), workers=0, batch_size=100, progress=False)
    with Catalog(cat_path) as cat:
        summary = Scanner(cat, None, opts).run(entries())
    assert summary.seen == summary.hashed == 1500
    assert committed_midway[0] >= 1000  # the first blocks were already in the catalog


def test_a_path_reached_twice_far_apart_is_scanned_once(tmp_path):
    paths = _many(tmp_path / "tree", 1200)
    (tmp_path / "tree" / "sub").mkdir()
    (tmp_path / "tree" / "sub" / "z.png").write_bytes(TINY + b"z")
    late = paths[1100]  # walked in a later block than the early copies below
    listing = [str(paths[3]), *[str(p) for p in paths[:700]], str(paths[3]), str(late)]
    opts = ScanOptions(types=("md5",), workers=1, batch_size=50, progress=False)
    with Catalog(tmp_path / "c.sqlite") as cat:
        summary = scan(
            [late, tmp_path / "tree", tmp_path / "tree" / "sub", late],
            catalog=cat,
            matcher=None,
            from_list=listing,
            report=tmp_path / "r.jsonl",
            options=opts,
        )
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    # tree/sub given again: a directory already walked, reported once (no symlink on
    # the way: directory-revisited)
    assert [(x["kind"], x.get("reason")) for x in lines[:-1]] == [
        ("failure", "directory-revisited")
    ]
    assert summary.seen == 1201 + 1 and summary.hashed == 1201
    with Catalog(tmp_path / "c.sqlite") as cat:  # a re-run: everything unchanged, once
        again = scan([tmp_path / "tree", late], catalog=cat, matcher=None, options=opts)
    assert again.seen == again.skipped_unchanged == 1201 and again.hashed == 0


def test_the_counter_counts_what_the_walk_yields(tmp_path):
    tree = build_tree(tmp_path)  # files, a directory loop, a dangling link
    os.mkfifo(tree.root / "unrelated" / "fifo")
    (tree.root / "locked").mkdir()
    (tree.root / "locked" / "x.png").write_bytes(TINY)
    os.chmod(tree.root / "locked", 0)
    (tree.root / "catalog.sqlite").write_bytes(b"")  # the catalog's own file: never counted
    own = ({str(tree.root / "catalog.sqlite")}, ())
    try:
        for follow in (True, False):
            walked = [
                e
                for e in walk(
                    [tree.root, tree.root / "near/coffee-half.png"], follow_symlinks=follow
                )
                if e.path not in own[0]
            ]
            counter = TreeCounter(
                [tree.root, tree.root / "near/coffee-half.png"], follow_symlinks=follow, skip=own
            )
            counter.join(30)
            assert counter.done and counter.count == len(walked), follow
    finally:
        os.chmod(tree.root / "locked", 0o755)


def test_progress_has_no_eta_until_the_count_is_done(tmp_path, capsys):
    _many(tmp_path / "tree", 30)
    progress = Progress(None, every=0.0)  # no counter: the total comes when the walk ends
    progress.found(12)
    progress.update(10)
    progress.walked(30)
    progress.update(5)
    counted = Progress(None, every=0.0, counter=TreeCounter([tmp_path / "tree"]))
    counted.counter.join(30)
    counted.update(3)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("scan: 10/12+ files (still counting), ") and "ETA ?" in err[0]
    assert err[1].startswith("scan: 15/30 files (50.0%), ") and "ETA ?" not in err[1]
    assert err[2].startswith("scan: 3/30 files (10.0%), ")


HASHMATCH = str(Path(sys.executable).with_name("hashmatch"))

# Writes one path, waits (up to a minute) until the scan has committed it to the
# catalog, then writes the second and ends: the scan sees its input pause.
_SLOW_PRODUCER = """
    import sqlite3, sys, time
    catalog, first, second, said = sys.argv[1:]
    print(first, flush=True)
    outcome, deadline = "timed out", time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1)
            try:
                if conn.execute("SELECT 1 FROM files WHERE path = ?", (first,)).fetchone():
                    outcome = "committed"
                    break
            finally:
                conn.close()
        except sqlite3.OperationalError:  # no catalog (or no table) yet
            pass
        time.sleep(0.05)
    with open(said, "w") as fh:
        fh.write(outcome)
    print(second, flush=True)
"""


def test_a_slow_list_producers_first_path_is_hashed_before_the_next_arrives(tmp_path):
    """--from-list took its paths in blocks of 500 (and the list's lines 1000 at a
    time) before hashing any: a producer that finds files slowly (a `find` over a
    slow mount, a queue) had each path wait for hundreds more or for the end. The
    producer here writes its second path only once the first is in the catalog."""
    first, second = _many(tmp_path / "tree", 2)
    catalog, said = tmp_path / "c.sqlite", tmp_path / "said"
    producer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_SLOW_PRODUCER), str(catalog), str(first),
         str(second), str(said)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        done = subprocess.run(
            [HASHMATCH, "scan", "--from-list", "-", "--no-match", "--types", "md5",
             "--workers", "1", "--no-progress", "--catalog", str(catalog),
             "--out", str(tmp_path / "r.jsonl")],
            stdin=producer.stdout, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        producer.stdout.close()
        producer.wait(timeout=90)
    assert done.returncode == 0, done.stderr
    assert said.read_text() == "committed"  # before the producer went on
    summary = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[-1])
    assert (summary["seen"], summary["hashed"]) == (2, 2)


def test_prefetch_batches_hand_over_what_is_ready_up_to_a_block():
    """A fast list is still taken in full blocks (one catalog lookup each), a slow one
    path by path: each batch is what the helper has ready, at least one item; an
    error after some items comes after them."""
    import threading

    from hashmatch.engine.store import prefetch

    queued, release = threading.Event(), threading.Event()

    def items():
        yield from range(1000)
        queued.set()  # the helper asks for more only once it queued the 1000th
        release.wait(30)
        yield 1000
        raise OSError("the list's pipe broke")

    batches = prefetch(items(), 1024, batch=500)
    got = [next(batches)]  # what was ready when the helper had just begun
    assert queued.wait(30)
    got.append(next(batches))
    assert len(got[1]) == 500  # at least 500 ready: a full block
    release.set()
    rest = []
    try:
        for batch in batches:
            rest.extend(batch)
    except OSError as exc:
        assert "pipe broke" in str(exc)
    else:
        raise AssertionError("the helper's error was lost")
    assert [x for b in got for x in b] + rest == list(range(1001))
