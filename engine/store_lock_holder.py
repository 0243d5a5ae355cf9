"""Which process holds a store's write lock, for a message that says what to wait for.

Why: "database is locked" names neither who holds the lock nor for how long it may;
an operator whose token edit could not be audited needs to know whether that is a
running ingest (wait for it) or a stuck process (look at it). In WAL mode SQLite's
write lock is a POSIX record lock on one byte of the ``-shm`` file (``WAL_WRITE_LOCK``,
byte 120 on Unix), so ``fcntl(F_GETLK)`` names the process holding it. Best effort:
another user's ``-shm`` we cannot open, or another pid namespace, gives ``None``.
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys
from pathlib import Path

from hashmatch.engine.shown_text import escape_controls

#: byte of the -shm file SQLite's unix VFS locks for the WAL write lock
#: (WALINDEX_LOCK_OFFSET 120 + WAL_WRITE_LOCK 0, sqlite3.c)
_WAL_WRITE_LOCK_BYTE = 120
#: struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid (native alignment)
_FLOCK = "hhqqi"


def write_lock_holder(store_path: Path) -> int | None:
    """The pid holding ``store_path``'s WAL write lock, or None (free, or unknown).
    The calling process's own locks are not seen (POSIX locks are per process)."""
    if sys.platform != "linux":  # struct flock's layout differs (BSD, macOS)
        return None
    shm = Path(f"{store_path}-shm")
    try:
        fd = os.open(shm, os.O_RDONLY)
    except OSError:
        return None
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, _WAL_WRITE_LOCK_BYTE, 1, 0)
        l_type, _whence, _start, _len, pid = struct.unpack(
            _FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query)
        )
    except OSError:
        return None
    finally:
        os.close(fd)
    return pid if l_type != fcntl.F_UNLCK and pid > 0 else None


def describe_process(pid: int) -> str:
    """``pid 1234 (hashmatch ingest big.csv --list l --strict)``: its command line
    from /proc, shortened, its control characters escaped (``\\n``: a ``python -c`` or
    ``sh -c`` script's newlines broke the one line the CLI prints, and an escape
    sequence in another user's arguments reached the terminal); just the pid where
    /proc does not tell."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"pid {pid}"
    args = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
    if not args:
        return f"pid {pid}"
    command = escape_controls(" ".join([Path(args[0]).name, *args[1:]]))
    if len(command) > 120:
        command = command[:117] + "..."
    return f"pid {pid} ({command})"


def describe_holder(pid: int | None) -> str:
    """:func:`describe_process` of a lock holder, or ``another process`` when
    :func:`write_lock_holder` could not tell who it is."""
    return describe_process(pid) if pid is not None else "another process"
