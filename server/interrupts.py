"""How the ``hashmatch`` CLI stops on SIGINT (Ctrl-C), SIGTERM and SIGHUP.

Why: Python's default turns Ctrl-C into KeyboardInterrupt, which click printed as
"Aborted!" with exit status 1 (a scan's worker processes, which get the same Ctrl-C,
added their own tracebacks), SIGTERM and SIGHUP killed the process with no word at
all, and a second Ctrl-C was needed when the first landed in cleanup. Here the first
signal stops the command: a long job that can stop cleanly (a scan: commit what is
hashed, record how far it got) asks for :func:`cooperative` and is told through an
event; any other command gets :class:`Interrupted` raised where it is, which unwinds
its transactions and temporary files as any exception does. ``main`` prints one line
and then dies of the signal itself (its default action, raised again once the exit
handlers ran), as Python does on an unhandled Ctrl-C: a shell shows 128 + its number
(130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), a parent process sees a death by the signal.
Why not ``exit(130)``: bash stops a ``for``/``while`` loop on Ctrl-C only when the
child died of SIGINT (an exit 130 reads as "the child handled it": the loop ran on
with the next file), and systemd counts a death by SIGTERM as a clean stop but exit
143 as a failure. A second signal ends the process at once the same way (SQLite's WAL
and the kernel's release of file locks keep the stores consistent).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: How often a main thread waiting in wait_in_steps lets signal handlers run.
WAIT_STEP_SECONDS = 0.1

_received: int | None = None  # the first stop signal, once one came
_die_of: int | None = None  # the signal the process ends with, once exit() was called
_exit_hook_registered = False
_stop: threading.Event | None = None  # set instead of raising, inside cooperative()
_notice: str | None = None  # cooperative()'s line for the first signal, if any


class Interrupted(BaseException):
    """A stop signal arrived (a BaseException, like KeyboardInterrupt: ``except
    Exception`` handlers do not swallow it; not a KeyboardInterrupt, which click
    turns into "Aborted!" and exit 1)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """What a shell shows for the process (it dies of the signal: see exit())."""
        return 128 + self.signum

    def describe(self) -> str:
        return signal.Signals(self.signum).name


def install() -> None:
    """Stop on SIGINT/SIGTERM/SIGHUP as the module docstring says (main thread only).

    A signal the process was started ignoring stays ignored, as Python leaves SIGINT:
    ``nohup hashmatch scan ...`` (SIGHUP ignored) went on after the terminal closed,
    and a job a script started with ``&`` (SIGINT ignored) was not stopped by the
    Ctrl-C meant for the script; handling them here stopped both."""
    global _exit_hook_registered
    if not _exit_hook_registered:  # first: exit handlers run last-registered first, so
        atexit.register(_die_of_signal)  # this one runs after all the others
        _exit_hook_registered = True
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, _on_signal)


def received() -> int | None:
    """The stop signal that arrived, if any."""
    return _received


def _on_signal(signum: int, _frame: object) -> None:
    global _received
    if _received is not None:  # the second: the user means now
        os.write(2, f"hashmatch: {signal.Signals(signum).name} again: stopping now\n".encode())
        _raise_default(_received)
    _received = signum
    if _stop is not None:
        _stop.set()
        if _notice:
            with contextlib.suppress(OSError):  # a closed terminal (SIGHUP)
                os.write(2, f"hashmatch: {signal.Signals(signum).name}: {_notice}\n".encode())
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def cooperative(notice: str | None = None) -> Iterator[threading.Event]:
    """Inside: a stop signal sets the yielded event instead of raising; the caller
    checks it at points where stopping leaves its work consistent, and must not block
    long between checks (a signal the kernel hands another thread runs its handler
    only when the main thread's wait ends). ``notice``: a line the first signal prints
    (``hashmatch: SIGINT: NOTICE``), for a stop that takes a while to say what it does
    (``remote ingest`` waits for its server's reply)."""
    global _stop, _notice
    event = threading.Event()
    if _received is not None:
        event.set()
    previous, _stop = (_stop, _notice), event
    _notice = notice
    try:
        yield event
    finally:
        _stop, _notice = previous


def exit(signum: int) -> None:
    """End an interrupted command: die of ``signum`` once the exit handlers ran (why:
    the module docstring), or exit 128 + ``signum`` if the signal cannot kill it.

    A helper thread may still be blocked where the stop found it (ingest's parser in a
    read of an idle stdin): the interpreter's shutdown then died with "Fatal Python
    error: could not acquire lock for <stdin>". With such a thread left, the standard
    streams are flushed and the process ends without that shutdown (the command's
    ``with`` blocks have closed its stores already). The exit handlers still run first
    (``atexit``): multiprocessing's finalizers among them, without which the resource
    tracker of a scan stopped that way warned of "leaked semaphore objects"; the last
    of them, registered by :func:`install`, raises the signal)."""
    global _die_of
    _die_of = signum
    if threading.active_count() == 1:
        sys.exit(128 + signum)
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    _die_of_signal()  # when install() was not called
    os._exit(128 + signum)


def _die_of_signal() -> None:
    """The last exit handler: once :func:`exit` was called, flush the standard streams
    and die of the signal."""
    if _die_of is None:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    _raise_default(_die_of)


def _raise_default(signum: int) -> None:
    """Die of ``signum`` by its default action; exit 128 + ``signum`` if it comes back
    (a signal the kernel would not deliver)."""
    with contextlib.suppress(Exception):
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        signal.raise_signal(signum)
    os._exit(128 + signum)


def say_ingest_stopped(what_is_stored: str) -> None:
    """On stderr, for an ingest a stop signal ended (local or remote): what of its file
    is stored, and that running it again finishes the job without harm (before the
    caller's ``hashmatch: interrupted (...)`` line)."""
    with contextlib.suppress(OSError):  # a closed terminal (SIGHUP): nobody to tell
        print(
            f"{what_is_stored}\n  re-run the same command to finish: ingest is idempotent"
            " (anything already stored counts as unchanged: no duplicates, labels kept)",
            file=sys.stderr,
            flush=True,
        )


def wait_in_steps(wait: Callable[[float], bool], timeout: float) -> bool:
    """``wait(timeout)`` in steps of :data:`WAIT_STEP_SECONDS`; True as soon as one step is.

    Why: Python runs a signal handler in the main thread, and only between bytecodes. A
    signal the kernel hands to another thread (gRPC's, FAISS's) while the main thread
    blocks in one long wait runs when that wait ends: a SIGHUP sent during a 30 s drain
    reloaded the tokens 30 s late, after the drain it was meant to change."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if wait(max(0.0, min(WAIT_STEP_SECONDS, left))):
            return True
        if left <= WAIT_STEP_SECONDS:
            return False
