"""Long CLI commands stopped the way people stop them: real subprocesses, real signals.

Ctrl-C is SIGINT to the terminal's whole foreground process group (a scan's workers
and fork server included), a supervisor or ``timeout`` sends SIGTERM. Each must end
the command with one line (no traceback), exit 128 + the signal, and leave what was
done usable: a scan commits what its workers returned, records how far it got, writes
no report, and a re-run resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image
from scan_tree import committed_files
from skimage import data

CLI = "from hashmatch.server.entry import main; main()"
N_FILES = 400


def _tree(root: Path) -> None:
    """N_FILES JPEGs (copies of four crops: cheap to write, each hashed on its own)."""
    originals = []
    for i, src in enumerate((data.astronaut(), data.coffee(), data.chelsea(), data.rocket())):
        path = root / f"orig{i}.jpg"
        root.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(src[:256, :256])).save(path, quality=85)
        originals.append(path)
    for i in range(N_FILES - len(originals)):
        target = root / f"d{i % 4}" / f"img{i:04d}.jpg"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(originals[i % len(originals)], target)


def _hashmatch(args: list[str], **kwargs) -> subprocess.Popen:
    """The CLI in a session of its own: its process group stands for a terminal's."""
    return subprocess.Popen(
        [sys.executable, "-c", CLI, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
        **kwargs,
    )


def _wait_for_commits(proc: subprocess.Popen, catalog: Path, at_least: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if committed_files(catalog) >= at_least:
            return
        time.sleep(0.01)
    assert proc.poll() is None, "the scan ended before it could be interrupted"
    pytest.fail("no file was committed in 90 s")


def _scan_args(tree: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["scan", str(tree), "--data-dir", str(tmp_path / "data"), "--no-match",
            "--types", "pdq,md5", "--workers", "1", "--batch-size", "8", "--no-progress",
            "--out", str(tmp_path / "report.jsonl"), *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("signum", "to_group", "extra"),
    [
        (signal.SIGINT, True, ()),  # Ctrl-C: the workers and the fork server get it too
        # a supervisor's SIGTERM to the scan alone; no --file-timeout: the wait for
        # workers had no poll at all, and a signal another thread took ran late
        (signal.SIGTERM, False, ("--file-timeout", "0")),
        # a closed terminal: multiprocessing's resource tracker died of it, was started
        # again, and printed a KeyError traceback per semaphore it had never seen
        (signal.SIGHUP, True, ()),
    ],
)
def test_an_interrupted_scan_says_how_far_it_got_and_a_rerun_resumes(
    tmp_path, signum, to_group, extra
):
    tree = tmp_path / "tree"
    _tree(tree)
    catalog = tmp_path / "data" / "catalog.sqlite"
    proc = _hashmatch(_scan_args(tree, tmp_path, *extra))
    _wait_for_commits(proc, catalog, 16)
    workers = psutil.Process(proc.pid).children(recursive=True)
    sent = time.monotonic()
    (os.killpg if to_group else os.kill)(proc.pid, signum)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - sent
    stderr = err.decode()

    assert proc.returncode == 128 + signum, stderr
    assert took < 5, f"took {took:.1f} s to stop"
    assert "Traceback" not in stderr and "Aborted!" not in stderr, stderr
    assert "resource_tracker" not in stderr, stderr
    assert stderr.rstrip().splitlines()[-1] == f"hashmatch: interrupted ({signum.name})"
    assert "run the same command again to resume" in stderr
    summary = json.loads(next(x for x in stderr.splitlines() if x.startswith("{")))
    assert summary["interrupted"] is True
    done = summary["hashed"] + summary["failed"]
    assert 16 <= done < N_FILES
    assert not (tmp_path / "report.jsonl").exists()  # no report that looks complete
    assert not (tmp_path / "report.jsonl.tmp").exists()
    _, alive = psutil.wait_procs(workers, timeout=5)
    for p in alive:  # pragma: no cover - only on failure: do not leak them
        p.kill()
    assert not alive, "scan workers outlived the scan"

    conn = sqlite3.connect(catalog)
    try:  # the run is recorded as stopped, with what it did; every done file committed
        finished, recorded = conn.execute("SELECT finished_at, summary FROM runs").fetchone()
        assert conn.execute("SELECT COUNT(*) FROM files").fetchone()[0] == done
    finally:
        conn.close()
    assert finished is not None and json.loads(recorded)["interrupted"] is True

    rerun = _hashmatch(_scan_args(tree, tmp_path, *extra))
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()
    lines = (tmp_path / "report.jsonl").read_text().splitlines()
    final = json.loads(lines[-1])
    assert final["seen"] == N_FILES and "interrupted" not in final
    assert final["skipped_unchanged"] == done  # resumed: nothing done is hashed again


def test_an_interrupted_ingest_exits_130_with_one_line(tmp_path):
    """Ctrl-C while ``ingest`` waits for input: click printed "Aborted!" and exited 1,
    or nothing at all: the parser thread, blocked reading stdin, was waited for until
    more input came (only a second Ctrl-C ended it)."""
    args = ["ingest", "-", "--list", "partner", "--type", "pdq", "--data-dir"]
    proc = _hashmatch([*args, str(tmp_path / "data")], stdin=subprocess.PIPE)
    rng = np.random.default_rng(3)
    proc.stdin.write(b"".join(rng.bytes(32).hex().encode() + b"\n" for _ in range(100)))
    proc.stdin.flush()  # the pipe stays open: ingest waits for more
    deadline = time.monotonic() + 60
    while not (tmp_path / "data" / "store.sqlite").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    try:  # stdin stays open, as a terminal's or a stalled pipe's: its reader is blocked
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("ingest did not stop on Ctrl-C while its input was idle")
    finally:
        proc.stdin.close()
    stderr = proc.stderr.read().decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Aborted!" not in stderr, stderr
    assert stderr.rstrip().splitlines()[-1] == "hashmatch: interrupted (SIGINT)"


def test_a_scan_report_piped_into_head_ends_quietly(tmp_path):
    """``scan --out - | head``: the reader leaves early; the scan said "Error: Broken
    pipe" (its own error wrapping named the OSError) instead of ending quietly."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(40):  # failures: report lines without any hashing to wait for
        (tree / f"empty{i}.jpg").write_bytes(b"")
    args = ["scan", str(tree), "--data-dir", str(tmp_path / "data"), "--no-match"]
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, *args, "--workers", "0", "--out", "-", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # `head -0`
    _, err = proc.communicate(timeout=60)
    stderr = err.decode()
    assert "Error" not in stderr and "Traceback" not in stderr, stderr
    assert proc.returncode in (1, 141), stderr
