"""Typed errors shared by every layer.

Why one hierarchy: the gRPC layer maps exceptions to status codes in one place.
Anything derived from :class:`InvalidInput` is the caller's mistake and becomes
``INVALID_ARGUMENT`` (never ``INTERNAL``); :class:`NotFound` becomes ``NOT_FOUND``;
:class:`PermissionDenied` becomes ``PERMISSION_DENIED``. Each error carries the
offending ``field`` (and ``index`` for batch items) so messages can name them.
"""

from __future__ import annotations

import os


class HashmatchError(Exception):
    """Base of every error hashmatch raises on purpose."""

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.index = index

    def __str__(self) -> str:
        where = ""
        if self.field is not None:
            where = self.field if self.index is None else f"{self.field}[{self.index}]"
            where += ": "
        return f"{where}{self.message}"


class InvalidInput(HashmatchError, ValueError):
    """The caller sent something malformed (maps to INVALID_ARGUMENT)."""


class UnknownSignalType(InvalidInput):
    """A signal type name that is not in the registry."""


class InvalidHash(InvalidInput):
    """A hash value that does not parse for its signal type (length, characters)."""


class InvalidThreshold(InvalidInput):
    """A distance threshold that is negative or above the type's maximum."""


class MediaError(InvalidInput):
    """Media bytes that cannot be hashed. Subclasses say why."""


class EmptyMedia(MediaError):
    """Zero bytes."""


class CorruptMedia(MediaError):
    """Bytes that claim to be a known format but do not decode (corrupt or truncated)."""


class UnsupportedMedia(MediaError):
    """Bytes in no format we decode (not an image, not a video)."""


class MediaTooLarge(MediaError):
    """Over the byte or pixel limit (decompression-bomb guard)."""


class NotFound(HashmatchError, LookupError):
    """A named thing (list, signal id, tenant) does not exist (maps to NOT_FOUND)."""


class PermissionDenied(HashmatchError):
    """The tenant may not do this (maps to PERMISSION_DENIED)."""


class Conflict(HashmatchError):
    """The request conflicts with stored state (maps to FAILED_PRECONDITION)."""


class CorruptData(HashmatchError):
    """Stored data (snapshot, database) failed a consistency check."""


class SnapshotFailed(HashmatchError):
    """A snapshot could not be written (disk full, I/O error); the previous snapshot is
    kept and the live index is unaffected (maps to RESOURCE_EXHAUSTED when the disk is
    full). Why its own type: an operator's CLI and a gRPC caller both need "the disk is
    full, nothing was lost", not a numpy ``tofile`` traceback without a file name."""

    def __init__(self, message: str, *, disk_full: bool = False):
        super().__init__(message)
        self.disk_full = disk_full


def is_disk_full(exc: BaseException) -> bool:
    """True for the errors a full filesystem (or quota) raises: ENOSPC/EDQUOT from the OS,
    SQLITE_FULL from SQLite, a ``SnapshotFailed(disk_full=True)``, or an error raised
    from one of those (``raise ... from``: a layer's own wording of it). One test for
    every layer (CLI, gRPC) that words it for its reader."""
    import errno
    import sqlite3

    seen: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; a cycle must not hang the caller
        if seen is None:
            return False
        if getattr(seen, "disk_full", False):
            return True
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if getattr(seen, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        seen = seen.__cause__
    return False


def is_locked(exc: BaseException) -> bool:
    """True for SQLite's "database is locked" (SQLITE_BUSY: another process held the
    write lock past the busy timeout): a condition that passes, unlike a full disk or a
    damaged file, so a loop (``mirror --follow``) retries it instead of ending."""
    import sqlite3

    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
    )


#: Under this much free space a filesystem counts as full: SQLite then fails to create
#: its -wal/-shm files with a bare "disk I/O error", and numpy's short write of a
#: snapshot file carries no errno, so neither error says "full" by itself.
NEARLY_FULL_BYTES = 1 << 20


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the filesystem that holds (or would hold) ``path``; None if unknown."""
    import shutil
    from pathlib import Path

    here = Path(path)
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None


def write_failure(where: str | os.PathLike, exc: BaseException) -> tuple[bool, str, str]:
    """(full, why, room) for a write under ``where`` that failed with ``exc``: whether the
    filesystem is full (the error says so, or under :data:`NEARLY_FULL_BYTES` are left:
    SQLite's "disk I/O error" and numpy's short write do not), the reason to print, and
    " (N bytes free)" ("" if unknown). Measure before removing the partial write."""
    free = free_bytes(where)
    full = is_disk_full(exc) or (free is not None and free < NEARLY_FULL_BYTES)
    why = "the disk is full" if full else (getattr(exc, "strerror", None) or str(exc))
    return full, why, "" if free is None else f" ({free:,} bytes free)"


def nearly_full(path: str | os.PathLike) -> bool:
    """The filesystem of ``path`` has under :data:`NEARLY_FULL_BYTES` free."""
    free = free_bytes(path)
    return free is not None and free < NEARLY_FULL_BYTES
