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

A worker's last words before it dies (``Fatal Python error: Segmentation fault`` and
the traceback from faulthandler, a C library's abort message) go to fd 2 as well: in an
anonymous file they died with it, and the file was reported ``worker-crashed`` with no
why. So a scan gives its workers a directory of its own, each worker's file is named
there by its pid, and the scan reads a dead worker's :func:`last_words` from it.

The scan removes that directory when it ends; one killed with ``kill -9`` (or by the
OOM killer) cannot, and each such scan left its directory, with its workers' files, in
``$TMPDIR`` for good. The scan holds a lock on its directory while it runs
(:class:`WorkersDir`), so the next scan removes the ones whose owner is gone.

Where ``$TMPDIR`` refuses ``flock`` on a directory (NFS, whose client emulates it with
a POSIX lock an ``O_RDONLY`` descriptor cannot take: ``EBADF``; ``ENOLCK`` without a
lock manager; ``EOPNOTSUPP`` on some FUSE filesystems) the scan goes on without the
lock: it marks its directory :data:`UNLOCKED_MARK` instead, and no scan removes a
marked directory, or one it cannot lock, since it cannot tell whether its scan still
runs (a killed scan's then stays, as before the lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from hashmatch.engine.shown_text import escape_controls

#: bytes of one file's captured output kept (a decoder warning per corrupt MCU row of a
#: huge image could run to megabytes; the first lines say what was wrong)
MAX_CAPTURED_BYTES = 4096
#: distinct lines kept per file
MAX_LINES = 8
#: a dead worker's last words: at most this many lines (each clipped) and characters
LAST_WORDS_LINES = 6
LAST_WORDS_LINE_CHARS = 200
LAST_WORDS_CHARS = 600
#: bytes of a dead worker's file read, from its end: faulthandler's dump of each
#: thread's stack and its list of extension modules can run to tens of kB
LAST_WORDS_READ = 64 * 1024
#: faulthandler's first line, and its last (one long line naming every extension module)
FATAL_ERROR = "Fatal Python error:"
EXTENSION_MODULES = "Extension modules:"
CURRENT = "Current thread"


#: the scan's directory of its workers' fd 2 files, in $TMPDIR (WorkersDir)
WORKERS_DIR_PREFIX = "hashmatch-scan-workers-"
#: an unlocked directory younger than this may be one whose scan has not locked it yet
ABANDONED_AFTER_SECONDS = 60.0
#: the file in a workers' directory whose scan could not lock it (:func:`hold`)
UNLOCKED_MARK = ".unlocked"


class WorkersDir:
    """A scan's directory of its workers' fd 2 files (``path``), locked (``flock`` on
    the directory itself) until :meth:`remove`: the lock dies with the scan, however it
    dies, so :func:`remove_abandoned` can tell a killed scan's directory from a live
    one, in another pid namespace too (a pid or an age could not).

    ``locked`` is False where the filesystem refused the lock (:func:`hold`: the
    directory is marked instead). ``path`` is None when it could be neither locked nor
    marked: unprotected, another scan could take it, so it is not used (the workers'
    fd 2 go to anonymous files, and a dead worker's last words are lost)."""

    def __init__(self) -> None:
        remove_abandoned()
        path = tempfile.mkdtemp(prefix=WORKERS_DIR_PREFIX)
        self._fd: int | None = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.path: str | None = path
        try:
            self.locked = hold(self._fd)
        except OSError:  # not even marked: another scan could take it
            self.remove()
            self.path, self.locked = None, False

    def remove(self) -> None:
        """Remove the directory and what the workers left in it (idempotent)."""
        if self._fd is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            os.close(self._fd)
            self._fd = None


def hold(fd: int) -> bool:
    """Lock the workers' directory open as ``fd`` for as long as ``fd`` stays open:
    True. Where the filesystem refuses ``flock`` (NFS: ``EBADF``, ``ENOLCK``; some FUSE
    filesystems: ``EOPNOTSUPP``; any ``OSError``) mark it :data:`UNLOCKED_MARK` instead
    and return False: the scan runs on (it used to exit 1, nothing scanned), and
    :func:`remove_abandoned`, unable to tell whether its scan still runs, leaves it
    alone. Raises ``OSError`` when the mark cannot be made either."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    except OSError:
        pass
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    os.close(os.open(UNLOCKED_MARK, flags, 0o600, dir_fd=fd))
    return False


def remove_abandoned(parent: str | None = None) -> list[str]:
    """Remove the workers' directories (in ``parent``, default ``$TMPDIR``) that no
    running scan holds: those of scans killed outright. Returns their paths. Another
    user's (mode 0700) cannot be opened and is left alone; so is one that says its scan
    could not lock it (:data:`UNLOCKED_MARK`), or that this scan cannot lock (NFS):
    its scan may be running."""
    parent = parent or tempfile.gettempdir()
    removed = []
    with contextlib.suppress(OSError):
        with os.scandir(parent) as entries:
            candidates = [e.path for e in entries if e.name.startswith(WORKERS_DIR_PREFIX)]
        for path in candidates:
            if _abandoned(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _abandoned(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # gone meanwhile, another user's, not a directory
        return False
    try:
        if time.time() - os.fstat(fd).st_mtime < ABANDONED_AFTER_SECONDS:
            return False  # maybe just made, its lock (or its mark) not taken yet
        if _marked(fd):
            return False  # its scan could not lock it: it may be running
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: a running scan holds it; or locks are refused
        return False
    finally:
        os.close(fd)  # (the lock, if taken, goes with it: the directory is removed next)
    return True


def _marked(fd: int) -> bool:
    """The directory open as ``fd`` holds :data:`UNLOCKED_MARK` (OSError when that
    cannot be told: the caller then leaves the directory alone)."""
    try:
        os.stat(UNLOCKED_MARK, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


class StderrCapture:
    """fd 2 of this process redirected to an anonymous file, read by :meth:`take`."""

    def __init__(self, directory: str | None = None) -> None:
        self._fd = _anonymous_file() if directory is None else _named_file(directory)
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
        return _take(self._fd)


class InProcessCapture:
    """fd 2 caught around one file's hashing in this very process (``--workers 0``).

    Why: without workers the scan hashes in its own process, and libjpeg's warnings
    went to the terminal, over the progress lines, with no file named (the report had
    no ``warning`` records). The scan's own fd 2 cannot be redirected for good as a
    worker's is (its progress bar and messages use it), so it is pointed at an anonymous
    file only while a file is hashed (:meth:`around`); ``sys.stderr`` meanwhile writes
    to the real stderr, as in a worker."""

    def __init__(self) -> None:
        self._fd = _anonymous_file()
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags | os.O_APPEND)
        self._real = os.dup(2)  # not inheritable (os.dup's default)
        self._real_stderr = open(  # noqa: SIM115 - kept for the scan, closed by close()
            self._real, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False
        )

    @contextlib.contextmanager
    def around(self) -> Iterator[list[str]]:
        """Inside, fd 2 is the anonymous file; on the way out the yielded list gets its
        distinct lines (as a worker's :meth:`StderrCapture.take`) and fd 2 is restored."""
        lines: list[str] = []
        python_stderr = sys.stderr
        python_stderr.flush()
        sys.stderr = self._real_stderr
        os.dup2(self._fd, 2)
        try:
            yield lines
        finally:
            os.dup2(self._real, 2)
            sys.stderr = python_stderr
            lines.extend(_take(self._fd))

    def close(self) -> None:
        self._real_stderr.close()
        os.close(self._real)
        os.close(self._fd)


def _take(fd: int) -> tuple[str, ...]:
    """The distinct lines in the capture file ``fd`` (the first :data:`MAX_LINES`),
    and the file emptied."""
    size = os.fstat(fd).st_size
    if not size:
        return ()
    data = os.pread(fd, min(size, MAX_CAPTURED_BYTES), 0)
    os.ftruncate(fd, 0)
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


def _named_file(directory: str) -> int:
    """This worker's file in the scan's directory, named by its pid: the scan reads it
    when the worker dies (:func:`last_words`)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    return os.open(Path(directory, str(os.getpid())), flags, 0o600)


def last_words(directory: str, pid: int) -> str:
    """What the dead worker ``pid`` wrote to fd 2 since its last file, on one line:
    from faulthandler's ``Fatal Python error: ...`` the error and the start of the
    ``Current thread`` stack (the crashed thread's innermost frames: the other threads'
    stacks and the list of extension modules left out), :data:`LAST_WORDS_LINES` lines
    in all, otherwise the last ones (a C library's abort message); each line
    clipped, control characters escaped, joined by `` | ``, at most
    :data:`LAST_WORDS_CHARS` characters. "" when it wrote nothing. Its file is removed
    (the pid may be reused)."""
    path = Path(directory, str(pid))
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - LAST_WORDS_READ))
            data = f.read()
        path.unlink()
    except OSError:
        return ""
    lines = [line.strip() for line in data.decode("utf-8", "backslashreplace").splitlines()]
    lines = [line for line in lines if line and not line.startswith(EXTENSION_MODULES)]
    fatal = [i for i, line in enumerate(lines) if line.startswith(FATAL_ERROR)]
    if fatal:
        after = lines[fatal[-1] + 1 :]
        # the other threads' stacks come first: the crashed one's is "Current thread"
        current = next((i for i, line in enumerate(after) if line.startswith(CURRENT)), 0)
        kept = [lines[fatal[-1]], *after[current:][: LAST_WORDS_LINES - 1]]
    else:
        kept = lines[-LAST_WORDS_LINES:]
    text = " | ".join(_clipped(escape_controls(line)) for line in kept)
    if len(text) <= LAST_WORDS_CHARS:
        return text
    # the fatal error's first line says most; otherwise the last line is the last word
    return text[:LAST_WORDS_CHARS] + "..." if fatal else "..." + text[-LAST_WORDS_CHARS:]


def _clipped(line: str) -> str:
    return line if len(line) <= LAST_WORDS_LINE_CHARS else line[:LAST_WORDS_LINE_CHARS] + "..."


_capture: StderrCapture | None = None


def capture_stderr(directory: str | None = None) -> None:
    """Start catching this process's fd 2 (once; a scan worker's initializer calls it),
    in a file named by its pid under ``directory`` (the scan's own) when given."""
    global _capture
    if _capture is None:
        try:
            _capture = StderrCapture(directory)
        except OSError:  # no anonymous file (a full /tmp): the old behaviour, unhidden
            _capture = None


def captured() -> tuple[str, ...]:
    """What was printed to fd 2 since the last call (nothing when not capturing)."""
    return _capture.take() if _capture is not None else ()
