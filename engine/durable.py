"""Two file-system helpers the store's backups, the snapshot files and the index files
share: fsync by path, and whether the process that named a temp file still runs.

Why a module of its own (of the standard library only): they lived in
:mod:`hashmatch.indexes.persist`, so a backup or a snapshot listing imported the index
stack (FAISS, numba) with them, and so did every CLI store verb.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path (a directory's entries become durable too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (in this pid namespace): a temp file named after a
    dead writer is abandoned. pid <= 0 counts as alive (kill would signal a group)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: running
        return True
    return True
