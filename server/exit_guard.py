"""Once serve begins to drain, its process ends within a bound, whatever a thread does.

Why: Python's exit joins every non-daemon thread first, each ThreadPoolExecutor worker
among them (gRPC's handlers, media hashing, index shards). A thread stuck past the
drain (a handler grpcio never completes, a lookup blocked on a lock) kept ``serve``
alive after SIGTERM with nothing more in its log, until a supervisor's SIGKILL; the
drain's own warnings said "process exit ends them", which was not true. The guard is a
daemon thread (the exit does not wait for it), started as the drain begins: if the
process is still there when its time is up, it logs which threads hold it, writes
every thread's stack to stderr (faulthandler: the one record of where they were), and
ends the process with :data:`STALLED_EXIT_STATUS`, so a supervisor sees a failed stop,
not a clean one. Started at the drain, not after it, it also bounds a stop that hangs
in a step of its own (the media pool's or the store's close wait without a limit).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading

#: How long the stop may take beyond the drain's grace: gRPC's slack, the lookup threads,
#: background work and in-flight handlers (5 s each at most, see HashmatchServer.stop),
#: the engine's close and the interpreter's exit (well under a second when nothing hangs,
#: even on a loaded 2-core host).
AFTER_DRAIN_SECONDS = 30.0
#: The status of a process the guard ended: not 0 (the stop did not finish cleanly).
STALLED_EXIT_STATUS = 70  # EX_SOFTWARE

log = logging.getLogger("hashmatch.server")


def exit_within(drain_seconds: float) -> threading.Thread:
    """Start the guard as a drain of ``drain_seconds`` begins: the process ends within
    that plus :data:`AFTER_DRAIN_SECONDS`."""
    seconds = drain_seconds + AFTER_DRAIN_SECONDS

    def guard() -> None:
        threading.Event().wait(min(seconds, threading.TIMEOUT_MAX))  # 1e300 s: no guard
        # the main thread counts while it is still in the stop (Python's exit marks it
        # stopped before it joins the others)
        holding = sorted(t.name for t in threading.enumerate() if not t.daemon and t.is_alive())
        log.error(
            "the process did not exit %.0f s after the drain began (still running: %s);"
            " every thread's stack is on stderr; exiting with status %d",
            seconds,
            ", ".join(holding) or "no thread Python knows of",
            STALLED_EXIT_STATUS,
        )
        try:
            sys.stderr.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        except (OSError, ValueError, AttributeError):  # no usable stderr: the log line says it
            pass
        logging.shutdown()
        os._exit(STALLED_EXIT_STATUS)

    thread = threading.Thread(target=guard, name="exit-guard", daemon=True)
    thread.start()
    return thread
