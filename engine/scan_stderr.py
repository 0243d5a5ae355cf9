"""What the C decoders print in a scan worker, caught per file instead of shown.

Why: libjpeg (inside Pillow and OpenCV) prints its warnings about corrupt data it
decodes past ("Corrupt JPEG data: 3 extraneous bytes before marker 0xda", "premature
end of data segment") with ``fprintf(stderr, ...)``: straight to file descriptor 2,
past Python's ``sys.stderr``. In a scan those lines came from the workers, in the
middle of the progress bar and log lines, naming no file. A worker's fd 2 is instead an
anonymous file (memfd, else an unlinked temporary file) opened ``O_APPEND``; after each
file the worker reads what was written (one ``fstat`` when nothing was: no measurable
cost) and empties it, so the lines go back to the scan with the file that caused them.
Python's own ``sys.stderr`` keeps writing to the real stderr (a copy of the old fd 2).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile

#: bytes of one file's captured output kept (a decoder warning per corrupt MCU row of a
#: huge image could run to megabytes; the first lines say what was wrong)
MAX_CAPTURED_BYTES = 4096
#: distinct lines kept per file
MAX_LINES = 8


class StderrCapture:
    """fd 2 of this process redirected to an anonymous file, read by :meth:`take`."""

    def __init__(self) -> None:
        self._fd = _anonymous_file()
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags | os.O_APPEND)  # writes land after truncation
        sys.stderr.flush()
        real = os.dup(2)
        os.set_inheritable(real, False)
        # Python-level writes (tracebacks, the warnings module) still reach the terminal
        sys.stderr = open(real, "w", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        os.dup2(self._fd, 2)

    def take(self) -> tuple[str, ...]:
        """The distinct lines written to fd 2 since the last call (the first
        :data:`MAX_LINES`), and the file emptied."""
        size = os.fstat(self._fd).st_size
        if not size:
            return ()
        data = os.pread(self._fd, min(size, MAX_CAPTURED_BYTES), 0)
        os.ftruncate(self._fd, 0)
        lines: list[str] = []
        for raw in data.decode("utf-8", "backslashreplace").splitlines():
            line = raw.strip()
            if line and line not in lines:
                lines.append(line)
        if size > MAX_CAPTURED_BYTES:
            lines.append(f"... ({size} bytes in all)")
        return tuple(lines[:MAX_LINES])


def _anonymous_file() -> int:
    if hasattr(os, "memfd_create"):
        with contextlib.suppress(OSError):
            return os.memfd_create("hashmatch-worker-stderr", os.MFD_CLOEXEC)
    fd, name = tempfile.mkstemp(prefix="hashmatch-stderr-")
    os.unlink(name)
    return fd


_capture: StderrCapture | None = None


def capture_stderr() -> None:
    """Start catching this process's fd 2 (once; a scan worker's initializer calls it)."""
    global _capture
    if _capture is None:
        try:
            _capture = StderrCapture()
        except OSError:  # no anonymous file (a full /tmp): the old behaviour, unhidden
            _capture = None


def captured() -> tuple[str, ...]:
    """What was printed to fd 2 since the last call (nothing when not capturing)."""
    return _capture.take() if _capture is not None else ()
