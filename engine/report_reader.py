"""Noticing, while a scan runs, that the reader of its report on stdout has left.

Why: ``scan --out - | consumer`` writes the report once every file is hashed, so a
consumer that died (or was stopped) an hour into the scan was noticed only by that
final write's EPIPE, after every remaining file had been hashed for a report nobody
could read. A pipeline's writer is expected to stop when its reader goes (``SIGPIPE``
ends ``find | head``'s ``find``): the scan now stops as on a stop signal (what is
hashed committed, the run recorded as interrupted, the same command resumes it).

How: ``poll`` on stdout asking for no event at all, so only the conditions the kernel
always reports come back. The write end of a pipe or FIFO reports ``POLLERR`` once it
has no reader left, and a stream socket ``POLLHUP`` (or ``POLLERR``) once its peer
closed; a live reader never raises either, however full the pipe (asking for
``POLLOUT`` instead would report a slow reader's full pipe as not writable, and an
idle one as writable: neither says whether anyone reads). Other stdouts (a terminal,
a regular file, ``/dev/null``) are not watched: they have no reader to lose.
"""

from __future__ import annotations

import os
import select
import stat
import sys

#: poll's answers that mean nobody can read what is written (POLLNVAL: fd closed)
_GONE = select.POLLERR | select.POLLHUP


class ReaderWatch:
    """Whether the reader of ``fd`` (a pipe, FIFO or stream socket's write end) left."""

    def __init__(self, fd: int):
        self._poll = select.poll()
        self._poll.register(fd, 0)  # no event asked: only POLLERR/POLLHUP/POLLNVAL come
        self._gone = False

    def gone(self) -> bool:
        """True once the reader has left (checked without blocking; stays True)."""
        if not self._gone:
            self._gone = any(ev & _GONE for _, ev in self._poll.poll(0))
        return self._gone


def watch_stdout() -> ReaderWatch | None:
    """A :class:`ReaderWatch` of stdout when it is a pipe, FIFO or socket, else None."""
    try:
        fd = sys.stdout.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):  # no real stdout (replaced, closed)
        return None
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return ReaderWatch(fd)
    return None
