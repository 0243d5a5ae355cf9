"""Starting the scan's workers: waiting for their fork server without outwaiting a
stop signal, a socket path that fits, and an error for workers that never start.

Why: the fork server imports the hashing stack and loads the PDQ kernels (numba)
before it forks a worker: ~1.5 s on an idle 2-core host, 4-7 s on a loaded one. The
scan's first ``submit`` spawns a worker, and multiprocessing blocks the main thread
in a read of the new worker's pid until the server has done all that: a SIGTERM or
Ctrl-C in a scan's first seconds was noted by the handler, but the stop waited for
the fork server (3.7-7 s measured). Here a throw-away process is forked through the
server in a helper thread while the main thread checks the stop event; on a stop the
fork server is killed (nothing of the scan's runs in it yet) and the caller stops.

The fork server listens on a unix socket that multiprocessing names in its own temporary
directory under ``$TMPDIR`` (``$TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX``), and a socket's
path may not exceed 107 bytes (``sun_path``): under a ``$TMPDIR`` longer than 75, every
scan with workers failed at once ``Error: AF_UNIX path too long`` (a CI worker's pytest
directory, a deep per-job temporary directory). :func:`short_socket_tempdir` then puts
that directory in the system's own (``/tmp``), as newer Pythons do (CPython gh-132124).

Workers that die before any of them starts (:class:`WorkersFailedToStart`) are no
file's doing: the scan stops and says why, instead of blaming each file in turn.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from multiprocessing.context import BaseContext

from hashmatch.engine.errors import HashmatchError

#: How often the main thread checks for a stop while the fork server loads.
POLL_SECONDS = 0.1


#: the longest unix socket path (``sun_path`` is 108 bytes, with its NUL)
SOCKET_PATH_MAX = 107
#: multiprocessing's temporary directory in $TMPDIR, and the fork server's socket in it
PYMP_DIR = "/pymp-XXXXXXXX"
LISTENER = "/listener-XXXXXXXX"
#: where the socket's directory goes when ``$TMPDIR`` is too long (tempfile's own list)
SHORT_TEMPDIRS = ("/tmp", "/var/tmp", "/usr/tmp")


def short_socket_tempdir() -> str | None:
    """Make multiprocessing's temporary directory (where the fork server's socket is
    made) one whose socket path fits, when ``$TMPDIR``'s does not: a new ``pymp-``
    directory in the first writable :data:`SHORT_TEMPDIRS`, removed at exit as
    multiprocessing's own is. Returns it; None when nothing had to change (or no short
    directory is writable: the fork server then fails as before, naming why)."""
    from multiprocessing import process, util

    config = process.current_process()._config
    made = config.get("tempdir")  # multiprocessing's, once made (kept for the process)
    where = (made if made else tempfile.gettempdir() + PYMP_DIR) + LISTENER
    if len(os.fsencode(where)) <= SOCKET_PATH_MAX:
        return None
    for parent in SHORT_TEMPDIRS:
        if not os.access(parent, os.W_OK | os.X_OK):
            continue
        try:
            tempdir = tempfile.mkdtemp(prefix="pymp-", dir=parent)
        except OSError:
            continue
        util.Finalize(None, shutil.rmtree, (tempdir, True), exitpriority=-100)  # as its own
        config["tempdir"] = tempdir  # (an older long one is still removed at exit)
        return tempdir
    return None


class WorkersFailedToStart(HashmatchError):
    """The scan's worker pool broke before any worker reached its initializer: no file
    was being hashed, so none is to blame, and every new pool would break the same way.

    Why an error of its own: such a break was handled as a file crashing its worker,
    so each file in turn was retried alone in a fresh pool and catalogued
    ``worker-crashed`` (6 files: 4 s; a million: days), though nothing was wrong with
    any of them. The usual cause is a Python script calling ``scan()`` without an
    ``if __name__ == "__main__":`` guard: each worker imports the script (as every
    multiprocessing child started by ``forkserver`` or ``spawn`` does) and runs its
    top-level code again, the scan included, which fails there."""

    def __init__(self) -> None:
        super().__init__(
            "the scan's worker processes exited while starting, before hashing any file"
            " (what they printed, if anything, is on stderr); nothing was recorded for"
            " the files in hand: run the scan again once the cause is fixed. Called from"
            " a Python script? Its workers import it, as Python's multiprocessing does,"
            ' so its top-level code must be under `if __name__ == "__main__":`;'
            " workers=0 (--workers 0) hashes in the calling process instead"
        )


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
