"""The scan's directory of its workers' fd 2 files (scan_stderr.WorkersDir) after a
``kill -9``: the killed scan cannot remove it, and each such scan left one in $TMPDIR
for good (with its workers' files). The next scan removes those no running scan holds.
A real scan subprocess, really SIGKILLed; real directories and locks."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
from PIL import Image
from scan_tree import kill_listed_scan_once

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.scan import ScanInterrupted, ScanOptions, scan
from hashmatch.engine.scan_stderr import (
    ABANDONED_AFTER_SECONDS,
    UNLOCKED_MARK,
    WORKERS_DIR_PREFIX,
    WorkersDir,
    hold,
    remove_abandoned,
)

CLI = "from hashmatch.server.entry import main; main()"


def _backdate(path) -> None:
    """Older than a directory whose scan may not have locked it yet."""
    past = time.time() - ABANDONED_AFTER_SECONDS - 5
    os.utime(path, (past, past))


def _image(path) -> None:
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)


def test_a_killed_scans_workers_directory_is_removed_by_the_next_scan(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    _image(tmp_path / "a.png")
    env = {**os.environ, "TMPDIR": str(tmp)}
    args = [sys.executable, "-c", CLI, "scan", "--from-list", "-", "--no-match",
            "--data-dir", str(tmp_path / "data"), "--workers", "1", "--no-progress"]  # fmt: skip
    kill_listed_scan_once(  # once its worker has started (its fd 2 file exists)
        args, [tmp_path / "a.png"],
        lambda: any(f for d in tmp.glob("hashmatch-scan-*") for f in d.iterdir()),
        tmp_path / "stderr.txt", env=env,
    )  # fmt: skip
    (left,) = tmp.glob("hashmatch-scan-*")  # the worker's file in it: nobody removes it
    _backdate(left)

    opts = ScanOptions(workers=1, progress=False, types=("md5",))
    tempfile.tempdir, before = str(tmp), tempfile.tempdir
    try:
        with Catalog(tmp_path / "c.sqlite") as cat:
            scan([tmp_path / "a.png"], catalog=cat, matcher=None, options=opts)
    finally:
        tempfile.tempdir = before
    assert not left.exists()
    assert list(tmp.glob("hashmatch-scan-*")) == []  # and its own, removed as it ended


def test_a_running_scans_workers_directory_is_left_alone(tmp_path):
    """Locked (its scan runs, in any pid namespace): kept however old; a fresh unlocked
    one (its scan about to lock it) too; another program's look-alike file too."""
    live = WorkersDir()
    try:
        os.rename(live.path, tmp_path / os.path.basename(live.path))
        live.path = str(tmp_path / os.path.basename(live.path))
        _backdate(live.path)
        fresh = tmp_path / f"{WORKERS_DIR_PREFIX}fresh"
        fresh.mkdir()
        (tmp_path / f"{WORKERS_DIR_PREFIX}file").write_text("not ours")
        dead = tmp_path / f"{WORKERS_DIR_PREFIX}dead"
        dead.mkdir()
        (dead / "123").write_text("")
        _backdate(dead)
        assert remove_abandoned(str(tmp_path)) == [str(dead)]
        assert os.path.isdir(live.path) and fresh.is_dir()
    finally:
        live.remove()
    assert not os.path.exists(live.path)


def test_a_scan_with_workers_runs_under_a_long_tmpdir(tmp_path):
    """The fork server's unix socket is made in multiprocessing's directory in $TMPDIR
    and its path may not exceed 107 bytes: under a $TMPDIR of 76 or more (a CI worker's
    pytest directory, as the killed-scan test's own TMPDIR is there) every scan with
    workers failed at once 'Error: AF_UNIX path too long' (exit 1, nothing hashed). Now
    the socket's directory goes to /tmp and the scan runs."""
    tmp = tmp_path / ("t" * max(1, 90 - len(str(tmp_path)) - 1))
    tmp.mkdir()
    assert len(str(tmp)) >= 90
    _image(tmp_path / "a.png")
    args = [sys.executable, "-c", CLI, "scan", str(tmp_path / "a.png"), "--no-match",
            "--data-dir", str(tmp_path / "data"), "--workers", "1", "--no-progress",
            "--out", str(tmp_path / "report.jsonl")]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(tmp)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "report.jsonl").read_text().splitlines()[-1])
    assert (summary["hashed"], summary["failed"]) == (1, 0)
    assert list(tmp.glob("hashmatch-scan-*")) == []


def test_a_scan_stopped_while_its_fork_server_loads_removes_its_workers_directory(tmp_path):
    """The stop that ends the wait for the fork server (fork_server_ready) came after
    the workers' directory was made and locked, outside the part of the scan that
    removes it: the directory stayed in $TMPDIR, and its lock's descriptor stayed open
    (a library caller's for as long as it ran: no later scan could remove it). Here the
    stop is set before the scan starts, so the wait ends on it, as on an early SIGTERM."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    _image(tmp_path / "a.png")
    stop = threading.Event()
    stop.set()
    opts = ScanOptions(workers=1, progress=False, types=("md5",), stop=stop)
    tempfile.tempdir, before = str(tmp), tempfile.tempdir
    try:
        with Catalog(tmp_path / "c.sqlite") as cat, pytest.raises(ScanInterrupted) as stopped:
            scan([tmp_path / "a.png"], catalog=cat, matcher=None, options=opts)
    finally:
        tempfile.tempdir = before
    assert stopped.value.summary.hashed == 0
    assert list(tmp.glob(f"{WORKERS_DIR_PREFIX}*")) == []


def test_a_directory_the_filesystem_will_not_lock_is_marked_and_left_alone(tmp_path):
    """flock on a directory fails on NFS (EBADF: its POSIX-lock emulation on a read-only
    descriptor; ENOLCK without a lock manager) and some FUSE filesystems: the scan then
    exited 1. An O_PATH descriptor makes the kernel refuse it the same way (EBADF): the
    directory is marked instead, and no scan's clean-up removes it however old, while
    an unmarked, unlocked one still goes."""
    unlocked = tmp_path / f"{WORKERS_DIR_PREFIX}unlocked"
    unlocked.mkdir()
    fd = os.open(unlocked, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as refused:
            fcntl.flock(fd, fcntl.LOCK_EX)
        assert refused.value.errno == errno.EBADF
        assert hold(fd) is False
    finally:
        os.close(fd)
    assert (unlocked / UNLOCKED_MARK).is_file()
    (unlocked / "123").write_text("")  # a worker's file
    _backdate(unlocked)
    dead = tmp_path / f"{WORKERS_DIR_PREFIX}dead"
    dead.mkdir()
    _backdate(dead)
    assert remove_abandoned(str(tmp_path)) == [str(dead)]
    assert (unlocked / "123").exists()


def _refused_on_directories(monkeypatch) -> None:
    """flock as NFS answers it on a directory (EBADF); other files lock as usual (the
    catalog's lock file)."""
    real = fcntl.flock

    def flock(fd, op):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)


def test_a_scan_runs_where_its_workers_directory_cannot_be_locked(tmp_path, monkeypatch):
    """The scan goes on without the lock (the old code: OSError, nothing scanned), its
    directory marked while it runs and removed as it ends; an old directory it cannot
    lock either is left alone (its scan may be running)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    other = tmp / f"{WORKERS_DIR_PREFIX}other"
    other.mkdir()
    _backdate(other)
    _image(tmp_path / "a.png")
    _refused_on_directories(monkeypatch)
    tempfile.tempdir, before = str(tmp), tempfile.tempdir
    try:
        made = WorkersDir()
        assert made.locked is False and os.path.isfile(os.path.join(made.path, UNLOCKED_MARK))
        made.remove()
        opts = ScanOptions(workers=1, progress=False, types=("md5",))
        with Catalog(tmp_path / "c.sqlite") as cat:
            summary = scan([tmp_path / "a.png"], catalog=cat, matcher=None, options=opts)
    finally:
        tempfile.tempdir = before
    assert (summary.hashed, summary.failed) == (1, 0)
    assert list(tmp.glob(f"{WORKERS_DIR_PREFIX}*")) == [other]
