"""`hashmatch remote ingest` whose server dies (kill -9, a real `hashmatch serve`
process) part way: the messages it committed stay stored, and the error says some may
be stored and that re-running is safe. It said only "UNAVAILABLE: failed to connect to
all addresses", the words of its last retry, as if the server had never been reached."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

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


def test_a_server_killed_mid_ingest_leaves_its_commits_and_the_error_says_so(tmp_path):
    data, hashes = tmp_path / "data", tmp_path / "hashes.txt"
    hashes.write_text("".join(f"{i:064x}\n" for i in range(1, 200_001)))
    target = f"127.0.0.1:{_free_port()}"
    server = subprocess.Popen([*CLI, "serve", "--data-dir", str(data), "--insecure-no-auth",
                               "--listen", target, "--metrics-port", "-1"],
                              stderr=subprocess.DEVNULL)  # fmt: skip
    client = None
    try:
        with HashmatchClient(target) as hub:
            hub.wait_until_serving(timeout=120)
        remote = [*CLI, "remote", "--server", target, "--timeout", "3"]
        deadline = time.monotonic() + 120
        ingest = [*remote, "ingest", "big", str(hashes), "--type", "pdq"]
        client = subprocess.Popen(ingest, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while _stored(data / "store.sqlite") < 2000:
            assert time.monotonic() < deadline and client.poll() is None, "ingest ended first"
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(30)
        _, err = client.communicate(timeout=120)
    finally:
        for proc in (server, client):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)
    stored = _stored(data / "store.sqlite")
    assert client.returncode == 1 and 2000 <= stored < 200_000
    assert "UNAVAILABLE" in err and "Traceback" not in err
    assert "signals were sent" in err and "some may be stored" in err, err
    assert "re-running the same ingest is harmless" in err
