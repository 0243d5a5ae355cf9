"""``hashmatch serve`` in a child process, for tests that need a real server process
(its own signals, its own gRPC threads) rather than one in the test's process."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from sigint_default import sigint_default

SERVE = "from hashmatch.server.cli import main; main()"  # cli.py has no __main__


@contextlib.contextmanager
def serve_no_auth(data_dir: str | Path, listen: str, *, wait: float = 120) -> Iterator[str]:
    """``hashmatch serve --insecure-no-auth`` in a subprocess, read up to its "serving
    on" line (``wait`` seconds at most: a loaded machine's index warm-up takes several):
    yields its stderr so far; then SIGINT, which must end it with exit 0."""
    proc = subprocess.Popen(
        sigint_default([
            sys.executable, "-c", SERVE, "serve", "--insecure-no-auth",
            "--data-dir", str(data_dir), "--listen", listen, "--metrics-port", "-1",
        ]),
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        seen = ""
        deadline = time.monotonic() + wait
        while "serving on" not in seen and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, f"serve exited early: {seen}"
            seen += line
        yield seen
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def served_address(seen: str) -> str:
    """The address a "serving on" line names (the port an ephemeral listen got)."""
    line = seen.splitlines()[-1]
    return line.split("serving on ", 1)[1].split(" ", 1)[0]
