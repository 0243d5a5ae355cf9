"""``hashmatch serve`` ends after SIGTERM even when a thread outlives the drain.

Python's exit joins every non-daemon thread; one stuck past the drain (a handler grpcio
never completes) kept the process alive until a SIGKILL. A real serve in a child
process, with a non-daemon thread that never ends started beside it. (A serve without
one exits 0 with nothing on stderr: test_operator_setup's drain test.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from hashmatch.server.exit_guard import STALLED_EXIT_STATUS

# the stuck thread, then serve itself, in one interpreter; the guard's wait shortened
STUCK_SERVE = (
    "import threading; threading.Thread(target=threading.Event().wait, name='stuck-handler')"
    ".start(); import hashmatch.server.exit_guard as guard; guard.AFTER_DRAIN_SECONDS = 3.0; "
    "from hashmatch.server.cli import main; main()"
)


def test_a_thread_stuck_past_the_drain_does_not_keep_serve_alive(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHMATCH_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_SERVE, "serve", "--insecure-no-auth",
         "--listen", "127.0.0.1:0", "--metrics-port", "-1",
         "--drain-seconds", "0", "--data-dir", str(tmp_path / "data")],
        stderr=subprocess.PIPE, text=True, env={**env, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    lines: list[str] = []
    try:
        for line in proc.stderr:  # serve logs to stderr
            lines.append(line)
            if "serving on" in line:
                break
        assert any("serving on" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]  # without the guard: never
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = "".join(lines) + rest
    assert proc.returncode == STALLED_EXIT_STATUS, said
    # the log line names the thread that held the exit, the dump shows where it was
    stalled = [line for line in said.splitlines() if "did not exit" in line]
    assert len(stalled) == 1 and "stuck-handler" in stalled[0], said
    assert "Thread 0x" in rest and "in wait" in rest, rest
