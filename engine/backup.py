"""Online backups of the signal store: one consistent, self-contained SQLite file.

Why a command of our own: the store is the only thing hashmatch keeps that cannot be
rebuilt (the indexes, snapshots and scan catalogs are derived from it or from media), and
operators back it up while the server keeps serving. Copying ``store.sqlite`` with
``cp`` while a writer runs can tear a page or miss the ``-wal`` file; the ``sqlite3``
shell's ``.backup`` is right but is not installed everywhere. This uses SQLite's backup
API in one step: it reads one snapshot of the database (in WAL mode a reader blocks no
writer, so ingests and lookups go on) and writes every page of it to a new file.

The copy is written beside the destination under a temporary name, switched out of WAL
mode (one file, nothing beside it to lose), checked (``PRAGMA quick_check``), fsynced
and only then renamed into place: a destination either does not exist or is a complete,
checked backup. An existing destination is never overwritten. A copy whose writer died
(kill -9, an OOM kill, ``timeout -s KILL`` around a cron line) is removed by the next
backup into that directory: each is a hidden full-size copy of the store, and nothing
else would ever free it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from hashmatch.engine.durable import fsync_path, pid_alive
from hashmatch.engine.errors import HashmatchError, InvalidInput, write_failure
from hashmatch.engine.snapshot_files import held, writing
from hashmatch.engine.store import SignalStore
from hashmatch.engine.store_schema import change_digest, store_id

#: ``.<name>.<pid>.tmp`` (+ SQLite's ``-journal``/``-wal``/``-shm``): a copy in progress
_TMP_NAME = re.compile(r"\.(.+)\.(\d+)\.tmp(-journal|-wal|-shm)?")
#: the name :func:`backup_path` gives in a directory
_STAMPED = re.compile(r"store-\d{8}T\d{6}Z\.sqlite")
#: a copy this much older than its last write is abandoned even if its pid runs (reused)
TMP_MAX_AGE_SECONDS = 3600.0


class BackupFailed(HashmatchError):
    """The backup could not be written (a full disk, an I/O error, a check that failed);
    nothing was left at the destination and the store is untouched. ``disk_full``: the
    destination's filesystem ran out of room (also found by ``is_disk_full``)."""

    def __init__(self, message: str, *, disk_full: bool = False):
        super().__init__(message)
        self.disk_full = disk_full


@dataclass(frozen=True)
class BackupReport:
    """What was written: ``change_counter`` is the store's position the copy holds (every
    change up to it, none after), ``store_id`` the store it is a copy of."""

    path: Path
    bytes: int
    seconds: float
    change_counter: int
    store_id: str
    signals: int


def backup_path(dest: str | os.PathLike, *, now: float | None = None) -> Path:
    """``dest`` itself, or a timestamped file in it when it is a directory
    (``store-20261205T181500Z.sqlite``), so a cron line can name just the directory.

    A ``dest`` ending in a separator names a directory even when none is there: refused,
    where ``Path`` drops the slash and a backup to ``/backups/hashmatch/`` (missing) was
    written as a file named ``hashmatch``, which the next night's run then refused.
    """
    path = Path(dest)
    if str(dest).endswith(("/", os.sep)) and not path.is_dir():
        raise InvalidInput(
            f"{dest} is not a directory: create it first (or name a file)", field="dest"
        )
    if path.is_dir():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        path = path / f"store-{stamp}.sqlite"
    return path


def backup_store(store: SignalStore, dest: str | os.PathLike) -> BackupReport:
    """Copy ``store`` to ``dest`` (a new file; a directory gets a timestamped name)."""
    started = time.perf_counter()
    path = backup_path(dest)
    if path.exists():
        raise InvalidInput(f"{path} exists: a backup never overwrites a file", field="dest")
    if not path.parent.is_dir():
        raise InvalidInput(f"{path.parent} is not a directory", field="dest")
    if path.resolve() == Path(store.path).resolve():
        raise InvalidInput(f"{path} is the store itself", field="dest")
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    remove_abandoned(path.parent, also=path.name)
    try:
        _remove(tmp)  # a dead process's of the same pid (reused)
        tmp.touch()  # locked while written: see remove_abandoned
        with writing(tmp):
            counter, sid, signals = _copy(store, tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except (OSError, sqlite3.Error) as exc:
        failure = _failure(path, exc)  # measured before the partial copy is removed
        _remove(tmp)
        raise failure from exc
    except BaseException:
        _remove(tmp)
        raise
    return BackupReport(
        path, path.stat().st_size, time.perf_counter() - started, counter, sid, signals
    )


def remove_abandoned(directory: Path, *, also: str | None = None) -> list[Path]:
    """Remove the partial copies in ``directory`` that backups killed midway left
    (``.<name>.<pid>.tmp`` and SQLite's files beside it, ``<name>`` a timestamped
    ``store-<time>.sqlite`` or ``also``); return what was removed.

    A copy is abandoned when no backup holds its lock (``snapshot_files.writing``, as
    snapshots do; the kernel drops it when the writer dies) and its pid is gone or it
    was last written over TMP_MAX_AGE_SECONDS ago (the pid was reused). A file of such a
    name that is not a SQLite database (or a journal beside one) is left alone, as are
    other names."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    copies = {}
    for entry in entries:
        m = _TMP_NAME.fullmatch(entry.name)
        if not m or (m.group(1) != also and not _STAMPED.fullmatch(m.group(1))):
            continue
        if entry.is_file(follow_symlinks=False):
            copies.setdefault(directory / f".{m.group(1)}.{m.group(2)}.tmp", []).append(entry)
    for main, files in copies.items():
        with contextlib.suppress(OSError):  # e.g. finished and renamed meanwhile
            if not _abandoned(main, files):
                continue
            for entry in files:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _abandoned(main: Path, files: list[os.DirEntry]) -> bool:
    if main.exists():
        if not _is_sqlite(main) or held(main):
            return False
        pid = int(_TMP_NAME.fullmatch(main.name).group(2))  # type: ignore[union-attr]
    else:  # only a journal left beside no copy
        pid = int(_TMP_NAME.fullmatch(files[0].name).group(2))  # type: ignore[union-attr]
    if not pid_alive(pid):
        return True
    newest = max(entry.stat(follow_symlinks=False).st_mtime for entry in files)
    return time.time() - newest > TMP_MAX_AGE_SECONDS


def _is_sqlite(path: Path) -> bool:
    """A SQLite database, or the empty file a backup creates before its first page."""
    with open(path, "rb") as f:
        head = f.read(16)
    return head in (b"", b"SQLite format 3\0")


def _copy(store: SignalStore, tmp: Path) -> tuple[int, str, int]:
    """One-step backup into ``tmp``, then make it one file and check it."""
    target = sqlite3.connect(tmp, isolation_level=None)
    try:
        store.conn().backup(target)  # pages=-1: every page under one read snapshot
        target.execute("PRAGMA journal_mode=DELETE")  # no -wal/-shm beside the copy
        check = target.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise BackupFailed(f"the copy failed its check ({check}); nothing was written")
        counter = int(target.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])
        if counter and change_digest(target, counter) != change_digest(store.conn(), counter):
            raise BackupFailed("the copy's change log differs from the store's")
        signals = int(target.execute("SELECT COUNT(*) FROM signals").fetchone()[0])
        return counter, store_id(target), signals
    finally:
        target.close()


def _failure(path: Path, exc: BaseException) -> BaseException:
    if isinstance(exc, BackupFailed):
        return exc
    full, why, room = write_failure(path.parent, exc)
    return BackupFailed(
        f"cannot write a backup to {path}: {why}{room}; nothing was left there and the"
        " store is unaffected",
        disk_full=full,
    )


def _remove(tmp: Path) -> None:
    for leftover in (tmp, Path(f"{tmp}-journal"), Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
