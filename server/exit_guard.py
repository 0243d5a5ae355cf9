"""Once serve has drained, its process ends within a bound, whatever a thread still does.

Why: Python's exit joins every non-daemon thread first, each ThreadPoolExecutor worker
among them (gRPC's handlers, media hashing, index shards). A thread stuck past the
drain (a handler grpcio never completes, a lookup blocked on a lock) kept ``serve``
alive after SIGTERM with nothing more in its log, until a supervisor's SIGKILL; the
drain's own warnings said "process exit ends them", which was not true. The guard is a
daemon thread (the exit does not wait for it): if the process is still there
``seconds`` after the drain, it logs which threads hold it, writes their stacks to
stderr (faulthandler: the one record of where they were), and ends the process with
:data:`STALLED_EXIT_STATUS`, so a supervisor sees a failed stop, not a clean one.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time

#: How long the exit may take after the drain: joining idle worker threads and tearing
#: down the interpreter take well under a second, even on a loaded 2-core host.
EXIT_GRACE_SECONDS = 10.0
#: The status of a process the guard ended: not 0 (the stop did not finish cleanly).
STALLED_EXIT_STATUS = 70  # EX_SOFTWARE

log = logging.getLogger("hashmatch.server")


def exit_within(seconds: float | None = None) -> threading.Thread:
    """Start the guard (``seconds``: :data:`EXIT_GRACE_SECONDS` unless given); call it
    once the drain is done, just before serve returns."""
    seconds = EXIT_GRACE_SECONDS if seconds is None else seconds

    def guard() -> None:
        time.sleep(seconds)
        holding = sorted(
            t.name
            for t in threading.enumerate()
            if not t.daemon and t is not threading.main_thread() and t.is_alive()
        )
        log.error(
            "the process did not exit %.0f s after the drain (still running: %s);"
            " their stacks are on stderr; exiting with status %d",
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
