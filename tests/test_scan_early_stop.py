"""A stop signal in a scan's first seconds, while its workers' fork server loads.

The fork server imports the hashing stack and loads the PDQ kernels (numba) before it
forks the first worker: seconds on a loaded host, during which the scan's main thread
waited in multiprocessing's read of the worker's pid. A SIGTERM there was noted by the
handler, and the stop waited for the fork server (3.7-7 s measured on a loaded 2-core
host). Here the fork server is held (SIGSTOP: its load made as slow as it gets), and
a SIGTERM must still stop the scan promptly: it waited for as long as the server was
held. Real processes, real signals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from multiprocessing import forkserver
from pathlib import Path

import proc_syscalls
import psutil
from scan_tree import ORIGINALS, _png

from hashmatch.engine.scan import worker_context
from hashmatch.engine.scan_pool_start import fork_server_ready

CLI = "from hashmatch.server.entry import main; main()"
#: for a loaded 2-core machine; the old code waited for the held fork server: forever
STOP_BOUND_SECONDS = 10.0


def _fork_server(scan: psutil.Process, deadline: float) -> psutil.Process:
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error, OSError):
            for child in scan.children():
                if "forkserver" in " ".join(child.cmdline()):
                    return child
        time.sleep(0.002)
    raise AssertionError("no fork server was seen")


def _run_started(catalog: Path) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)) as conn:
            return conn.execute("SELECT count(*) FROM runs").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def _waits_for_a_worker(pid: int) -> bool:
    """Whether a thread of process ``pid`` is blocked reading a pipe other than its
    stdin: multiprocessing's read of a new worker's pid, which the fork server writes
    into a pipe it is handed (nothing else in a scan reads a pipe)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            call = proc_syscalls.syscall(task)
            fd = int(call[1], 16)
            if (
                call[0] in proc_syscalls.READ
                and fd != 0
                and os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
            ):
                return True
    return False


def test_sigterm_while_the_fork_server_loads_stops_the_scan_promptly(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("astronaut", "coffee"):
        (tree / f"{name}.png").write_bytes(_png(ORIGINALS[name]()))
    catalog = tmp_path / "c.sqlite"
    args = ["scan", str(tree), "--catalog", str(catalog), "--data-dir", str(tmp_path / "data"),
            "--no-match", "--types", "pdq", "--workers", "1", "--no-progress",
            "--out", str(tmp_path / "r.jsonl")]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    server = None
    try:
        server = _fork_server(psutil.Process(proc.pid), time.monotonic() + 120)
        server.suspend()  # its imports and kernels take as long as it is held
        deadline = time.monotonic() + 60
        while not _run_started(catalog):
            assert proc.poll() is None and time.monotonic() < deadline, "the scan never began"
            time.sleep(0.05)
        # on to the wait for its first worker (held, it never comes): was a 1 s sleep,
        # after which a loaded box's scan could still be short of it (the stop then
        # tested nothing); where /proc's call numbers are unknown, still 1 s
        while proc_syscalls.READ is not None and not _waits_for_a_worker(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, "no wait for a worker"
            time.sleep(0.02)
        if proc_syscalls.READ is None:  # pragma: no cover - another architecture
            time.sleep(1.0)
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_BOUND_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"a SIGTERM took over {STOP_BOUND_SECONDS} s while the fork server loaded"
            ) from None
        took = time.monotonic() - sent
        stderr = proc.stderr.read().decode()
        with contextlib.suppress(psutil.Error):
            server.wait(timeout=10)  # the scan killed it: a held server outlived nothing
        killed = not server.is_running()
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if server is not None:
            with contextlib.suppress(psutil.Error):
                server.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGTERM, stderr
    assert "Traceback" not in stderr, stderr
    assert "scan: stopped; 0 file(s) done" in stderr, stderr
    assert stderr.rstrip().endswith("hashmatch: interrupted (SIGTERM)"), stderr
    assert killed
    print(f"stopped {took:.2f} s after the SIGTERM")


def test_a_fork_server_killed_by_an_early_stop_is_reaped(tmp_path):
    """The stop kills the loading fork server; multiprocessing waits for a dead server
    only when next asked for one, so it stayed a zombie child of the scanning process
    (a library caller's, for as long as it ran). Real fork server, really killed."""
    context = worker_context()
    forkserver.ensure_running()
    pid = forkserver._forkserver._forkserver_pid
    psutil.Process(pid).suspend()  # still loading when the stop comes, however fast
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert fork_server_ready(context, stop) is False
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        status = "reaped"
    assert status == "reaped"
    assert forkserver._forkserver._forkserver_pid is None  # a next scan starts a new one
