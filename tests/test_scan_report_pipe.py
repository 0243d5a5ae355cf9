"""``hashmatch scan --out - | head -n 3``: the reader leaves before the report's end.

The report is written once every file is committed, so the scan itself is done then.
It used to exit 1 with nothing on stderr (no summary) and the run left unfinished in
the catalog; it now gives the summary and the re-run hint on stderr, records the run
as finished, and a re-run writes the whole report. A real pipe into a real ``head``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLI = "from hashmatch.server.entry import main; main()"
#: with 200-character names, a report of ~130 kB: more than a pipe holds (64 kB), so
#: the scan is still writing when head leaves
N_FILES = 400


def test_a_report_piped_into_head_still_gives_the_summary(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(N_FILES):  # failures: report lines without any hashing to wait for
        (tree / f"{i:03}{'x' * 200}.jpg").write_bytes(b"")
    data = tmp_path / "data"
    args = [sys.executable, "-c", CLI, "scan", str(tree), "--data-dir", str(data),
            "--no-match", "--workers", "1", "--no-progress"]  # fmt: skip
    scan = subprocess.Popen([*args, "--out", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.run(["head", "-n", "3"], stdin=scan.stdout, capture_output=True, timeout=120)
    scan.stdout.close()  # head's end of the pipe is its alone: its exit closes the pipe
    _, err = scan.communicate(timeout=120)
    stderr = err.decode()
    assert len(head.stdout.decode().splitlines()) == 3
    assert scan.returncode == 1, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    summary = json.loads(stderr.splitlines()[0])
    assert summary["seen"] == N_FILES and summary["failed"] == N_FILES
    assert "run the same command again for the whole report" in stderr
    with sqlite3.connect(data / "catalog.sqlite") as conn:
        (finished,) = conn.execute("SELECT finished_at FROM runs").fetchone()
    assert finished is not None  # the run is complete, not left unfinished

    again = subprocess.run([*args, "--out", str(tmp_path / "r.jsonl")], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    records = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "failure" for r in records) == N_FILES
    assert records[-1]["hashed"] == 0


def _catalogued(catalog: Path) -> int:
    """Files the scan has committed to its catalog so far (0 before it exists)."""
    if not catalog.exists():
        return 0
    with contextlib.closing(sqlite3.connect(catalog, timeout=10)) as conn:
        try:
            return conn.execute("SELECT count(*) FROM files").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0


def test_a_reader_leaving_mid_scan_stops_it_at_once(tmp_path):
    """The report's reader dies while the scan still has files to come (a --from-list
    producer that is still writing): the scan stops then, as on a stop signal (what it
    hashed committed, the run interrupted, exit 1 saying so), instead of hashing every
    remaining file for a report nobody can read and noticing at its final write. The
    old code went on waiting for the list (here: until the test gave up)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    rng = np.random.default_rng(7)
    paths = []
    for i in range(3):
        path = tree / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    data = tmp_path / "data"
    args = [sys.executable, "-c", CLI, "scan", "--from-list", "-", "--data-dir", str(data),
            "--no-match", "--workers", "1", "--no-progress"]  # fmt: skip
    scan = subprocess.Popen(
        [*args, "--out", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        scan.stdin.write("".join(f"{p}\n" for p in paths).encode())
        scan.stdin.flush()  # and kept open: the producer has more to come
        deadline = time.monotonic() + 120
        while _catalogued(data / "catalog.sqlite") < len(paths):
            assert scan.poll() is None, scan.stderr.read().decode()
            assert time.monotonic() < deadline, "the scan did not commit the listed files"
            time.sleep(0.1)
        scan.stdout.close()  # the report's reader is gone
        left = time.monotonic()
        try:
            scan.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the scan went on after its report's reader left")
        took = time.monotonic() - left
        stderr = scan.stderr.read().decode()
    finally:
        if scan.poll() is None:
            scan.kill()
            scan.wait()
        scan.stdin.close()
        scan.stderr.close()
    assert scan.returncode == 1, stderr
    assert took < 10, took
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    summary = json.loads(stderr.splitlines()[0])
    assert summary["interrupted"] is True and summary["hashed"] == len(paths)
    assert "the report's reader (stdout) closed the pipe before the scan's end" in stderr
    assert "3 file(s) done and committed" in stderr and "resume" in stderr

    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{p}\n" for p in paths))
    again = subprocess.run(
        [*args[:5], str(listed), *args[6:], "--out", str(tmp_path / "r.jsonl")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    records = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert records[-1]["hashed"] == 0 and records[-1]["skipped_unchanged"] == len(paths), records


def test_the_reader_watch_tells_a_slow_reader_from_a_gone_one():
    """A reader that reads nothing (its pipe full) is alive; only a closed read end (or
    socket peer) is gone: what a watch asking for POLLOUT would confuse."""
    from hashmatch.engine.report_reader import ReaderWatch

    r, w = os.pipe()
    os.set_blocking(w, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(w, b"x" * 65536)  # fill the pipe: the reader is slow
    watch = ReaderWatch(w)
    assert not watch.gone()
    os.close(r)
    assert watch.gone()
    os.close(w)

    mine, peer = socket.socketpair()
    with mine:
        watch = ReaderWatch(mine.fileno())
        assert not watch.gone()
        peer.close()
        assert watch.gone()
