"""Exact digests (md5, sha256) of a file whose scan worker died on it, read apart.

Why: a file that kills its worker (``worker-crashed``: a decoder that crashes on it)
or stalls it until the watchdog kills it (``timeout``) got no digest at all, so an
exact-hash list naming those very bytes never matched it; a decoder-crashing file is
exactly what an adversary might ship. Reading and digesting bytes decodes nothing,
so it does not crash; but the parent must not read them itself: a read from a hung
mount never returns, and a thread stuck in one cannot be stopped. So the file is
digested in a fresh short-lived process, waited for at most ``timeout`` seconds (in
short steps, so a stop request is heard) and killed past it; the file is then
reported with its failure as before, saying its digests could not be read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext

from hashmatch.engine.catalog import FileHashes

#: At most this many seconds for a crashed or killed file's digests to be read (a
#: 256 MB file at 10 MB/s from a slow network mount: ~25 s) before its reader is killed.
DIGEST_TIMEOUT = 60.0
#: The bound for one file: this much, plus its size at DIGEST_MIN_RATE (at most
#: DIGEST_TIMEOUT). Why not 60 s for all: a read that hangs (a hung mount) never
#: returns, so each such file cost the scan the full minute, where a 5 MB photo read
#: at the slowest rate a mount still in service gives takes about a second.
DIGEST_BASE_SECONDS = 5.0
#: Bytes a second: the slowest read a mount still in service gives (a congested
#: network mount), so no healthy read is cut short.
DIGEST_MIN_RATE = 4 * 1024 * 1024


def digest_bound(size: int | None) -> float:
    """Seconds the digests of a ``size``-byte file may take to read (unknown size: the
    most, DIGEST_TIMEOUT)."""
    if size is None:
        return DIGEST_TIMEOUT
    return round(min(DIGEST_TIMEOUT, DIGEST_BASE_SECONDS + size / DIGEST_MIN_RATE), 1)


#: Seconds between checks of the scan's stop request while the reader works.
_POLL = 0.2


@dataclass
class Digested:
    """A file's exact digests and the stat of the read they were taken from (the
    mtime and ctime ``None`` when too recent to trust: ``scan.trusted_time``)."""

    size: int
    mtime_ns: int | None
    ino: int
    ctime_ns: int | None
    md5: bytes
    hashes: list[FileHashes]


def digest_apart(
    context: BaseContext,
    path: str,
    types: Sequence[str],
    *,
    max_bytes: int,
    timeout: float = DIGEST_TIMEOUT,
    check_stop: Callable[[], None] | None = None,
) -> Digested | str:
    """Read ``path`` in a new process of ``context`` and digest it with the exact
    ``types`` (md5 always, for the catalog). Returns the digests, or why there are none
    (the read failed, or took over ``timeout`` seconds: the reader is then killed, not
    waited for). ``check_stop`` is called every few tenths of a second; what it raises
    (a stop request) kills the reader and propagates."""
    receive, send = context.Pipe(duplex=False)
    reader = context.Process(
        target=_read_and_digest,
        args=(path, tuple(types), max_bytes, send, os.getpid()),
        name="hashmatch-digest",
        daemon=True,
    )
    try:
        reader.start()
        send.close()  # the child's end: EOF here once it is gone
        deadline = time.monotonic() + timeout
        while not receive.poll(_POLL):
            if check_stop is not None:
                check_stop()
            if time.monotonic() >= deadline:
                return f"no digest after {timeout:g} s (a hung mount?): its reader was killed"
        try:
            outcome = receive.recv()
        except EOFError:
            return f"its digest reader died (exit code {reader.exitcode})"
        return outcome
    finally:
        if reader.is_alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                reader.kill()
        # a reader stuck in the kernel (a hard NFS mount) may not die yet: never wait long
        reader.join(0.5)
        receive.close()
        send.close()


def _read_and_digest(
    path: str, types: tuple[str, ...], max_bytes: int, conn: Connection, scanner: int
) -> None:
    """(The reader process.) Send :class:`Digested`, or the reason there is none."""
    from hashmatch.engine.scan import _exit_with_parent, _read_regular, exact_digests, trusted_time

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the scan decides what stops
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _exit_with_parent(scanner)
    try:
        data, st, fh = _read_regular(path, max_bytes)
        with fh:
            md5 = hashlib.md5(data).digest()
            outcome: Digested | str = Digested(
                st.st_size,
                trusted_time(st.st_mtime_ns),
                st.st_ino,
                trusted_time(st.st_ctime_ns),
                md5,
                exact_digests(data, types, md5),
            )
    except Exception as exc:  # reported with the file's failure
        outcome = f"{type(exc).__name__}: {exc}"
    conn.send(outcome)
    conn.close()
