"""`hashmatch remote ingest` and `remote retract` whose server dies (kill -9, a real
`hashmatch serve` process) part way: what it committed stays, and the error says some
may be stored and that re-running is safe. It said only "UNAVAILABLE: failed to connect
to all addresses", the words of its last retry, as if the server was never reached."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
from hashmatch.server.client import HashmatchClient

CLI = [sys.executable, "-m", "hashmatch.server.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stored(store: Path) -> int:
    if not store.exists():
        return 0
    conn = sqlite3.connect(store, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM signals").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
    finally:
        conn.close()


@contextmanager
def _server(data: Path) -> Iterator[tuple[subprocess.Popen, list[str]]]:
    """A real `hashmatch serve` on ``data`` (a process to kill -9), serving; and the
    `hashmatch remote` command line that calls it."""
    target = f"127.0.0.1:{_free_port()}"
    server = subprocess.Popen([*CLI, "serve", "--data-dir", str(data), "--insecure-no-auth",
                               "--listen", target, "--metrics-port", "-1"],
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        with HashmatchClient(target) as hub:
            hub.wait_until_serving(timeout=120)
        yield server, [*CLI, "remote", "--server", target, "--timeout", "3"]
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(30)


def _kill_once(server: subprocess.Popen, client: subprocess.Popen, done: Callable[[], bool]) -> str:
    """SIGKILL ``server`` once ``done()``; the client's stderr."""
    deadline = time.monotonic() + 120
    try:
        while not done():
            assert time.monotonic() < deadline and client.poll() is None, "the call ended first"
            time.sleep(0.002)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(30)
        return client.communicate(timeout=120)[1]
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate(timeout=30)


def test_a_server_killed_mid_ingest_leaves_its_commits_and_the_error_says_so(tmp_path):
    data, hashes = tmp_path / "data", tmp_path / "hashes.txt"
    hashes.write_text("".join(f"{i:064x}\n" for i in range(1, 200_001)))
    with _server(data) as (server, remote):
        ingest = [*remote, "ingest", "big", str(hashes), "--type", "pdq"]
        client = subprocess.Popen(ingest, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err = _kill_once(server, client, lambda: _stored(data / "store.sqlite") >= 2000)
    stored = _stored(data / "store.sqlite")
    assert client.returncode == 1 and 2000 <= stored < 200_000
    assert "UNAVAILABLE" in err and "Traceback" not in err
    assert "signals were sent" in err and "some may be stored" in err, err
    assert "re-running the same ingest is harmless" in err


def test_a_server_killed_mid_retract_the_error_says_rerunning_is_harmless(tmp_path):
    """The request being answered when the server died may be applied, its reply lost:
    the error said only "failed to connect", as if nothing had been retracted."""
    data = tmp_path / "data"
    hexes = [f"{i:064x}" for i in range(1, 6001)]
    with Engine.open(data, eager=False) as engine:
        engine.ingest([SignalRecord("pdq", h) for h in hexes], list_name="l")
    with _server(data) as (server, remote):
        retract = [*remote, "retract", "l", *hexes]
        client = subprocess.Popen(
            retract, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        err = _kill_once(server, client, lambda: _retracted(data / "store.sqlite") > 0)
    assert client.returncode == 1 and 0 < _retracted(data / "store.sqlite") < 6000
    assert "UNAVAILABLE" in err and "Traceback" not in err
    assert "re-running the same retract is harmless" in err, err


def _retracted(store: Path) -> int:
    conn = sqlite3.connect(store, timeout=30)
    try:
        return conn.execute(
            "SELECT COUNT(*) FROM signals WHERE retracted_at IS NOT NULL"
        ).fetchone()[0]
    finally:
        conn.close()
