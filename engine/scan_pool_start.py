"""Waiting for the scan workers' fork server without outwaiting a stop signal.

Why: the fork server imports the hashing stack and loads the PDQ kernels (numba)
before it forks a worker: ~1.5 s on an idle 2-core host, 4-7 s on a loaded one. The
scan's first ``submit`` spawns a worker, and multiprocessing blocks the main thread
in a read of the new worker's pid until the server has done all that: a SIGTERM or
Ctrl-C in a scan's first seconds was noted by the handler, but the stop waited for
the fork server (3.7-7 s measured). Here a throw-away process is forked through the
server in a helper thread while the main thread checks the stop event; on a stop the
fork server is killed (nothing of the scan's runs in it yet) and the caller stops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from multiprocessing.context import BaseContext

#: How often the main thread checks for a stop while the fork server loads.
POLL_SECONDS = 0.1


def fork_server_ready(context: BaseContext, stop: threading.Event | None) -> bool:
    """Wait until ``context``'s fork server forks processes; False if ``stop`` was set
    first (the fork server is then killed). True at once without a fork server or a
    stop event. A fork server that fails to start is left for the pool to report."""
    if stop is None or context.get_start_method() != "forkserver":
        return True
    done = threading.Event()

    def probe() -> None:
        try:
            p = context.Process(target=_ready, name="hashmatch-fork-server-probe")
            p.start()
            p.join()
        except BaseException:  # killed below, or broken: the pool says so, as before
            pass
        finally:
            done.set()

    threading.Thread(target=probe, name="scan-fork-server-wait", daemon=True).start()
    while not done.wait(POLL_SECONDS):
        if stop.is_set():
            _kill_fork_server()
            done.wait(5.0)  # its read of the pid fails at once (EOF)
            return False
    return not stop.is_set()


def _ready() -> None:
    """The probe's body: forked from a fork server that has finished loading."""


def _kill_fork_server() -> None:
    """SIGKILL this process's fork server and reap it (multiprocessing starts a new one
    if asked). Reaped here: multiprocessing waits for a dead server only when it is
    next asked for one, so a stopped scan's killed server stayed a zombie until then
    (or until the process exited: a library caller's, for good)."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if not pid:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    with server._lock:
        if server._forkserver_pid != pid:  # another thread restarted or stopped it
            return
        stop = getattr(server, "_stop_unlocked", None)  # closes its fds, waits, forgets it
        try:
            if stop is not None:
                stop()
            else:
                os.waitpid(pid, 0)
        except OSError:  # already reaped, or its socket file already gone
            server._forkserver_pid = None
