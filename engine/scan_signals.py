"""Imported first in the scan's fork server: it and the workers it forks ignore Ctrl-C
and a terminal's hang-up.

Why: Ctrl-C reaches every process of the terminal's foreground group, and closing the
terminal hangs them all up. The fork server imports the hashing stack for seconds
before the standard library's own ``SIGINT`` guard is set, and a Ctrl-C then killed
it with a KeyboardInterrupt traceback, and the scan, waiting for its first worker,
with "Aborted!"; a worker interrupted printed a traceback of its own. The scan
decides what stops: it kills its workers when it stops (they also die with it:
``_exit_with_parent``). The fork server passes these dispositions to the workers.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
