"""Commands a test sends SIGINT (Ctrl-C) to, started with SIGINT at its default action.

Why: a process started with SIGINT ignored hands that on to every child (fork and exec
keep SIG_IGN; Python then installs no KeyboardInterrupt handler), and the CLI keeps a
stop signal it was started ignoring ignored, as POSIX means for ``nohup`` and a
non-interactive shell's ``cmd &``. A suite started that way (``make test &`` in a
script) failed every Ctrl-C test: they tested the shell's inheritance, not the product.
The command is started through a small Python that resets SIGINT and then execs it (the
same pid), not through a ``preexec_fn``, which is unsafe while the test's own threads
(an in-process server) run.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

_RESET_THEN_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL);"
    " os.execvp(sys.argv[1], sys.argv[1:])"
)


def sigint_default(argv: Sequence[str]) -> list[str]:
    """``argv`` (the program first) as a command that runs it with SIGINT at its default
    action, as a terminal's shell starts it; ``argv`` itself when this process does not
    ignore SIGINT (nothing ignored to inherit)."""
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        return list(argv)
    return [sys.executable, "-S", "-c", _RESET_THEN_EXEC, *argv]


def ignoring(signum: int, argv: Sequence[str]) -> list[str]:
    """``argv`` (the program first) as a command that runs it with ``signum`` ignored
    from the start, as ``nohup`` (SIGHUP) or a non-interactive shell's ``cmd &``
    (SIGINT) start it."""
    code = f"import os, signal, sys; signal.signal({int(signum)}, signal.SIG_IGN);"
    return [sys.executable, "-S", "-c", code + " os.execvp(sys.argv[1], sys.argv[1:])", *argv]
