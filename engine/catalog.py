"""The scan catalog: what hashmatch knows about every stored file it has scanned.

Why a catalog: platforms rescan millions of stored files. Re-hashing a file costs
a decode (tens of milliseconds); looking its hashes up costs microseconds. So every
scanned file's stat (size, mtime, inode, ctime), content MD5, hashes (with quality)
and failure reason are kept here, which lets

- a re-run skip files whose stat did not change (see :func:`hashmatch.engine.scan.same_stat`),
- a scan killed with ``kill -9`` resume where it stopped (results are committed in
  small transactions, WAL + ``synchronous=FULL``: what was committed survives),
- retroactive matching (:mod:`hashmatch.engine.rescan`) index the catalog's hashes
  and query them with only the newly shared signals, without touching the media.

The ``matches`` table holds the matches currently known for each file; a scan
replaces a file's rows within its scope (its types, its ``--list``s) when it
(re-)matches the file, a rescan adds new ones and removes those whose signal was
retracted. Reports are written from it, so a
resumed scan reports exactly what an uninterrupted one would.

One writer at a time (the scan's parent process), enforced across processes by a
lock on ``<catalog>.lock`` (a second scan or rescan is refused); readers may open it
concurrently and take no lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np

from hashmatch.engine import catalog_coverage, signal_types
from hashmatch.engine.catalog_coverage import Coverage
from hashmatch.engine.errors import Conflict, CorruptData, HashmatchError

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock (SQLite still serialises writes)
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER,
    mtime_ns INTEGER,
    md5 BLOB,
    types TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    reason TEXT,
    error TEXT,
    scanned_at REAL NOT NULL,
    seen_run INTEGER,
    ino INTEGER,
    ctime_ns INTEGER
);
CREATE INDEX IF NOT EXISTS files_seen_run ON files(seen_run);
CREATE INDEX IF NOT EXISTS files_md5 ON files(md5);
CREATE TABLE IF NOT EXISTS hashes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: cached indexes rely on it
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    signal_type TEXT NOT NULL,
    frame INTEGER NOT NULL DEFAULT 0,
    code BLOB NOT NULL,
    quality INTEGER,
    timestamp REAL
);
CREATE INDEX IF NOT EXISTS hashes_file ON hashes(file_id);
CREATE INDEX IF NOT EXISTS hashes_code ON hashes(signal_type, code);
CREATE TABLE IF NOT EXISTS matches (
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    signal_type TEXT NOT NULL,
    signal_id INTEGER NOT NULL,
    hash_hex TEXT NOT NULL,
    signal_hex TEXT NOT NULL,
    distance INTEGER NOT NULL,
    list_name TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '[]',
    external_id TEXT,
    variant INTEGER NOT NULL DEFAULT 0,
    query_match_pct REAL,
    target_match_pct REAL,
    found_by TEXT NOT NULL,
    found_at REAL NOT NULL,
    PRIMARY KEY (file_id, signal_type, signal_id)
);
CREATE INDEX IF NOT EXISTS matches_signal ON matches(signal_id);
-- the decoder warnings of a file's last decode (libjpeg's "Corrupt JPEG data: ..."): a
-- re-run that skips the file reports them again, as the run that decoded it did
CREATE TABLE IF NOT EXISTS file_warnings (
    file_id INTEGER PRIMARY KEY REFERENCES files(id) ON DELETE CASCADE,
    lines TEXT NOT NULL  -- JSON list of the distinct lines
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    args TEXT NOT NULL DEFAULT '{}',
    summary TEXT
);
"""

HASHED = "hashed"
FAILED = "failed"

#: An SQLite database at ``path`` and the files SQLite keeps beside it.
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")
#: Files that belong to a catalog (or the store) at ``path``: SQLite's, and the lock
#: file beside it (a scan of a tree holding a catalog skips them).
CATALOG_SUFFIXES = (*SQLITE_SUFFIXES, ".lock")


class CatalogBusy(Conflict):
    """Another process has the catalog open for writing (a scan or a rescan)."""


def _lock(path: Path):
    """An exclusive, non-blocking lock on ``<catalog>.lock``, held while open.

    Why: SQLite serialises single writes, but two scans of one catalog interleave
    whole runs: each marks the files it sees with its run id, so each report loses
    the files the other saw last (silently missing matches). Refused at once rather
    than waited for: a scan can take hours.
    """
    if fcntl is None:
        return None
    fh = open(f"{path}.lock", "a")  # noqa: SIM115 - held open for the catalog's lifetime
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise CatalogBusy(
            f"catalog {path} is in use by another scan or rescan; run them one at a time"
        ) from None
    return fh


def _make_parent(path: Path) -> None:
    """Create the catalog's directory; a file in its way is named as "not a directory"
    (mkdir said "File exists" about, say, a --data-dir that is a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), exc.filename) from exc


def _refuse_special_file(path: Path) -> None:
    """A catalog path naming a FIFO, a device or a directory is refused by name.

    Why: SQLite said only "disk I/O error" (a FIFO, /dev/zero) or "unable to open
    database file" (a directory), after the lock file and a ``-journal`` had been
    created beside it (in /dev for ``--catalog /dev/zero``)."""
    import stat

    try:
        st = os.stat(path)
    except OSError:  # missing (created on open) or unreachable: SQLite's error names it
        return
    if not stat.S_ISREG(st.st_mode):
        from hashmatch.engine.scan import file_kind

        raise OSError(errno.EINVAL, f"not a regular file but {file_kind(st.st_mode)}", str(path))


def _exact(type_token: str) -> bool:
    """A catalogued type token of a cryptographic type (md5, sha256): its digest
    depends on the bytes alone, so it holds while they do."""
    try:
        return signal_types.get(type_token.split("+")[0]).exact
    except HashmatchError:  # a type this build does not know
        return False


def _db_path(path: str) -> str | bytes:
    """A path as stored: text when it is valid UTF-8 (every existing catalog), else its
    raw bytes as a BLOB.

    Why: POSIX names are bytes; os.scandir hands a non-UTF-8 name over with surrogate
    escapes, which sqlite3 cannot encode (the whole scan used to stop on one such
    file). A BLOB keeps the name losslessly and never equals a TEXT path, so the
    UNIQUE(path) key still holds one row per file.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _py_path(value: str | bytes) -> str:
    """A stored path back as the str os functions take (inverse of :func:`_db_path`)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _db_text(text: str | None) -> str | None:
    """Free text (an error message) that may quote a non-UTF-8 name: undecodable bytes
    become ``\\xNN`` so the message can be stored at all."""
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


#: In a file's catalogued types: its PDQ rows are the 8 orientations of the image
#: (``scan --dihedral``), in ``pdq_hash_dihedral`` order (row 0 as given).
DIHEDRAL_MARK = "pdq+dihedral"


def _types(column: str | None) -> tuple[str, ...]:
    """A file's catalogued type tokens from its ``types`` column (comma-joined)."""
    return tuple(t for t in (column or "").split(",") if t)


def catalogued_orientation(types: Sequence[str], signal_type: str, frame: int) -> int:
    """The orientation a catalogued hash row was hashed in (0 = as given, 1-7
    re-oriented, as ``HashResult.orientations``): not kept per row, it follows from
    :data:`DIHEDRAL_MARK`, since a ``--dihedral`` scan hashes the 8 orientations of the
    image and nothing else (``Scanner.hash_options``). Matching holds re-oriented rows
    to the type's default threshold (``matcher.keeps_row_hit``)."""
    return frame % 8 if signal_type == "pdq" and DIHEDRAL_MARK in types else 0


@dataclass
class FileHashes:
    """The hashes of one file, one entry per signal type: ``uint8[k, nbytes]`` + per-row data."""

    signal_type: str
    codes: np.ndarray
    qualities: list[int | None] = field(default_factory=list)
    timestamps: list[float | None] = field(default_factory=list)
    #: per row, the orientation it was hashed in (``HashResult.orientations``; from the
    #: catalog: :func:`catalogued_orientation`); empty = every row as given
    orientations: list[int] = field(default_factory=list)


@dataclass
class FileRecord:
    """One catalog row (without hashes)."""

    id: int
    path: str
    size: int | None
    mtime_ns: int | None
    md5: bytes | None
    types: tuple[str, ...]
    status: str
    reason: str | None
    error: str | None
    scanned_at: float
    #: the run that last saw the file (``lookup`` fills it; a scan skips a path its own
    #: run already recorded, instead of keeping every path it walked in memory)
    seen_run: int | None = None
    #: inode number and ctime when hashed (None: unknown, e.g. a row written before
    #: they were kept, or a ctime too recent to trust): see ``scan.same_stat``
    ino: int | None = None
    ctime_ns: int | None = None


@dataclass(frozen=True)
class MatchRow:
    """A match of one catalogued file against one stored signal."""

    file_id: int
    signal_type: str
    signal_id: int
    hash_hex: str  # the file's hash that matched (nearest frame / variant)
    signal_hex: str  # the stored signal's hash
    distance: int
    list_name: str
    labels: tuple[str, ...]
    external_id: str | None
    variant: int = 0
    query_match_pct: float | None = None
    target_match_pct: float | None = None


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _refuse_newer(conn: sqlite3.Connection) -> None:
    """CorruptData if the catalog was written by a newer hashmatch (its layout is unknown
    here: reading or extending it could lose what that version keeps)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:  # no meta table: a new catalog
        return
    found = row[0] if row else None
    if found is not None and not str(found).isdigit():
        raise CorruptData(f"catalog schema_version {found!r} is not a number", field="catalog")
    if found is not None and int(found) > SCHEMA_VERSION:
        raise CorruptData(
            f"catalog schema {found} is newer than this hashmatch understands ({SCHEMA_VERSION}):"
            " upgrade hashmatch, or give --catalog a new file to start a fresh catalog",
            field="catalog",
        )


def _upgrade_hash_ids(conn: sqlite3.Connection) -> None:
    """Give a catalog from the first builds (``hashes.id`` without AUTOINCREMENT) ids that
    are never reused, and a new catalog id.

    Why: the rescan index cache reads only rows above the largest id it holds. Without
    AUTOINCREMENT, re-hashing the file whose rows are last reuses their ids: the cache
    kept the old codes under them and never read the new ones, so a rescan silently
    missed matches of that file. The table is copied once (ids kept) and the catalog id
    changes, so every cache built before is rebuilt rather than trusted.
    """
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'hashes'").fetchone()
    if "AUTOINCREMENT" in sql.upper():
        return
    hashes_ddl = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS hashes") :]
    hashes_ddl = hashes_ddl[: hashes_ddl.index("CREATE TABLE IF NOT EXISTS matches")]
    with _Transaction(conn):  # rolled back on any error
        conn.execute("ALTER TABLE hashes RENAME TO hashes_reused_ids")
        conn.execute("DROP INDEX IF EXISTS hashes_file")
        conn.execute("DROP INDEX IF EXISTS hashes_code")
        for statement in hashes_ddl.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(  # explicit ids: AUTOINCREMENT's counter starts above the largest
            "INSERT INTO hashes(id, file_id, signal_type, frame, code, quality, timestamp)"
            " SELECT id, file_id, signal_type, frame, code, quality, timestamp"
            " FROM hashes_reused_ids"
        )
        conn.execute("DROP TABLE hashes_reused_ids")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'catalog_id'", (uuid.uuid4().hex,))
    logging.getLogger(__name__).warning(
        "catalog upgraded: hash row ids are no longer reused (its rescan index cache is rebuilt)"
    )


#: Columns added to ``files`` after the first layout, with their type: a catalog
#: without them gets them on open (see :func:`_upgrade_stat_columns`).
_STAT_COLUMNS = (("ino", "INTEGER"), ("ctime_ns", "INTEGER"))


def _upgrade_stat_columns(conn: sqlite3.Connection) -> None:
    """Add ``files.ino`` and ``files.ctime_ns`` to a catalog written before them.

    Why: (size, mtime) alone kept a file replaced by other bytes of the same size
    under a restored mtime (``cp -p``, ``rsync -a``, ``touch -r``, ``tar x``) skipped
    for good, with the old hashes. The rows already there get NULLs, which no stat
    equals: the next full scan reads and MD5s each such file once (a decode only if its
    bytes changed) and records its inode and ctime; a ``--check-stat minimal`` scan
    reads none (it compares size and mtime only, and records nothing), so the check
    waits for the first full one (the log line says which). Accepting the old rows unread
    instead would leave any file already replaced so stale forever, unseen.

    The schema version stays 1: the columns are nullable and added at the end, so an
    older hashmatch still reads and writes this catalog; a row it rewrites keeps a
    stale inode/ctime, which only makes the next scan here MD5-check that file again.
    """
    have = {row[1] for row in conn.execute("PRAGMA table_info(files)")}
    missing = [(name, kind) for name, kind in _STAT_COLUMNS if name not in have]
    if not missing:
        return
    with _Transaction(conn):  # rolled back on any error
        for name, kind in missing:
            conn.execute(f"ALTER TABLE files ADD COLUMN {name} {kind}")
    logging.getLogger(__name__).warning(
        "catalog upgraded: files are now also recognised by inode and ctime; the first scan"
        " with --check-stat full (the default) reads and MD5-checks each catalogued file once"
        " (decoded only if its bytes changed); a --check-stat minimal scan compares size and"
        " mtime only and reads none of them"
    )


class Catalog:
    """The SQLite catalog of scanned files (see the module docstring for why)."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        self._lock = None
        _refuse_special_file(self.path)
        if not readonly:  # one writer per catalog; readers never lock
            _make_parent(self.path)
            self._lock = _lock(self.path)
        try:
            self._open(readonly)
        except BaseException:  # e.g. not a database, a newer schema: leave nothing held
            if getattr(self, "conn", None) is not None:
                self.conn.close()
            self._release()
            raise

    def _open(self, readonly: bool) -> None:
        self.conn = _connect(self.path, readonly=readonly)
        self._file_columns = _FILE_COLUMNS
        # the version first: a newer catalog is refused before this build adds a table
        # or an index to it (its DDL may not even apply to a newer layout)
        _refuse_newer(self.conn)
        if not readonly:
            self.conn.executescript(_SCHEMA)
            if self.get_meta("schema_version") is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
            if self.get_meta("catalog_id") is None:
                self.set_meta("catalog_id", uuid.uuid4().hex)
            _upgrade_hash_ids(self.conn)
            _upgrade_stat_columns(self.conn)
            catalog_coverage.upgrade(self.conn)
        elif not self._has_stat_columns():  # a reader of an older catalog: unknown stat
            self._file_columns = _FILE_COLUMNS.replace("ino, ctime_ns", "NULL, NULL")

    def _has_stat_columns(self) -> bool:
        have = {row[1] for row in self.conn.execute("PRAGMA table_info(files)")}
        return not have or all(name in have for name, _ in _STAT_COLUMNS)

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        self.conn.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> _Transaction:
        """``with catalog.transaction():`` one durable commit (BEGIN IMMEDIATE .. COMMIT)."""
        return _Transaction(self.conn)

    # -- meta ---------------------------------------------------------------------------

    def identity(self) -> str:
        """A random id fixed at creation (tells caches which catalog they belong to)."""
        return self.get_meta("catalog_id") or ""

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def bump_counter(self, key: str, by: int) -> None:
        """Add to an integer counter in ``meta`` (e.g. ``hash_calls``) inside the caller's txn."""
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + ?",
            (key, str(by), by),
        )

    def counter(self, key: str) -> int:
        value = self.get_meta(key)
        return 0 if value is None else int(value)

    # -- runs ---------------------------------------------------------------------------

    def start_run(self, kind: str, args: dict) -> int:
        cur = self.conn.execute(
            "INSERT INTO runs(kind, started_at, args) VALUES (?, ?, ?)",
            (kind, time.time(), json.dumps(args, sort_keys=True, default=str)),
        )
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, summary: dict) -> None:
        self.conn.execute(
            "UPDATE runs SET finished_at = ?, summary = ? WHERE id = ?",
            (time.time(), json.dumps(summary, sort_keys=True, default=str), run_id),
        )

    # -- files --------------------------------------------------------------------------

    def lookup(self, paths: Sequence[str]) -> dict[str, FileRecord]:
        """Catalog rows for these paths (missing paths are absent from the result)."""
        out: dict[str, FileRecord] = {}
        for start in range(0, len(paths), 500):
            chunk = [_db_path(p) for p in paths[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                f"SELECT {self._file_columns} FROM files WHERE path IN ({marks})", chunk
            ):
                rec = _file_record(row)
                out[rec.path] = rec
        return out

    def file(self, file_id: int) -> FileRecord | None:
        row = self.conn.execute(
            f"SELECT {self._file_columns} FROM files WHERE id = ?", (file_id,)
        ).fetchone()
        return None if row is None else _file_record(row)

    def put_hashed(
        self,
        path: str,
        *,
        size: int,
        mtime_ns: int,
        md5: bytes | None,
        types: Sequence[str],
        hashes: Sequence[FileHashes],
        run_id: int | None = None,
        ino: int | None = None,
        ctime_ns: int | None = None,
        matched_in: Coverage = None,
    ) -> int:
        """Record a successfully hashed file (replacing what was known); returns its id.

        Call inside :meth:`transaction`; the file's old hashes and matches are dropped
        (its content may have changed), the caller then records the new matches. When
        the MD5 is the catalogued one (same bytes, e.g. hashed again for a type it
        lacked), the hashes and matches of the types not hashed now stay valid: they
        are kept, so a scan limited by ``--types`` does not lose them.

        ``matched_in``: the lists the caller matches the new hashes in (None: every
        list; see :mod:`hashmatch.engine.catalog_coverage`); with hashes kept, the
        file's coverage is what both the kept and the new ones were matched in.

        The decoder warnings of the file's last decode (:meth:`set_warnings`) go when
        no hash of a decode is kept: a digest-only hash (md5, sha256) of other bytes
        left them reported of bytes no longer there, and never decoded. (A caller that
        decoded sets them anew.)
        """
        hashed = {h.signal_type for h in hashes}
        kept = self._kept_types(path, md5, hashed)
        types = [*types, *(t for t in kept if t not in types)]
        stat = (size, mtime_ns, ino, ctime_ns)
        coverage = self._coverage_after(path, matched_in, kept=bool(kept))
        file_id = self._upsert_file(path, stat, md5, types, HASHED, None, None, run_id, coverage)
        if all(_exact(t) for t in kept):  # nothing of the decode that warned stays
            self.conn.execute("DELETE FROM file_warnings WHERE file_id = ?", (file_id,))
        keep = sorted({t.split("+")[0] for t in kept})
        spare = f" AND signal_type NOT IN ({','.join('?' * len(keep))})" if keep else ""
        for table in ("hashes", "matches"):
            self.conn.execute(f"DELETE FROM {table} WHERE file_id = ?{spare}", (file_id, *keep))
        self._insert_hashes(file_id, hashes)
        return file_id

    def _insert_hashes(self, file_id: int, hashes: Sequence[FileHashes]) -> None:
        rows = []
        for h in hashes:
            codes = np.ascontiguousarray(h.codes, dtype=np.uint8)
            for frame in range(codes.shape[0]):
                quality = h.qualities[frame] if frame < len(h.qualities) else None
                stamp = h.timestamps[frame] if frame < len(h.timestamps) else None
                rows.append((file_id, h.signal_type, frame, codes[frame].tobytes(), quality, stamp))
        self.conn.executemany(
            "INSERT INTO hashes(file_id, signal_type, frame, code, quality, timestamp) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )

    def _kept_types(
        self, path: str, md5: bytes | None, hashed: set[str], *, status: str | None = HASHED
    ) -> list[str]:
        """The catalogued type tokens (``pdq``, ``pdq+dihedral``...) of types not in
        ``hashed``, if the file's bytes are unchanged (same MD5); else none. ``status``:
        only from a row of this status (None: any, a failed file's digests too)."""
        if md5 is None:
            return []
        row = self.conn.execute(
            "SELECT md5, types FROM files WHERE path = ? AND status = COALESCE(?, status)",
            (_db_path(path), status),
        ).fetchone()
        if row is None or row[0] != md5:
            return []
        return [t for t in (row[1] or "").split(",") if t and t.split("+")[0] not in hashed]

    def put_failed(
        self,
        path: str,
        *,
        reason: str,
        error: str,
        size: int | None = None,
        mtime_ns: int | None = None,
        run_id: int | None = None,
        ino: int | None = None,
        ctime_ns: int | None = None,
        md5: bytes | None = None,
        digests: Sequence[FileHashes] = (),
        matched_in: Coverage = None,
    ) -> int:
        """Record a file that could not be hashed, with a short reason and the message.

        ``md5``: of its bytes when they were read (a chmod is then rechecked by MD5,
        not decoded again); ``digests``: its exact hashes (md5, sha256) when only the
        decode failed, kept as hash rows (and in ``types``) so scans re-match and
        rescans find them. Its other hashes are dropped. When the bytes are the
        catalogued ones (same MD5), every catalogued exact digest still names them: its
        rows and matches are kept, those of a type not digested now included (as
        :meth:`put_hashed` keeps them), and the caller replaces the matches within its
        own scope (types, lists); otherwise every match is dropped. ``matched_in``: as
        :meth:`put_hashed` has it.

        Why: a file decoded again on each run (``too-large``, ``timeout``) lost its
        MD5 row and MD5 matches to a scan without md5 in ``--types``, and its matches
        of other lists to a ``--list`` scan.
        """
        stat = (size, mtime_ns, ino, ctime_ns)
        same = self._kept_types(path, md5, set(), status=None) if md5 else []
        keep = sorted(t for t in same if _exact(t))
        types = [h.signal_type for h in digests]
        types += [t for t in keep if t not in types]
        coverage = self._coverage_after(path, matched_in, kept=bool(keep))
        file_id = self._upsert_file(path, stat, md5, types, FAILED, reason, error, run_id,
                                    coverage)  # fmt: skip
        spare = f" AND signal_type NOT IN ({','.join('?' * len(keep))})" if keep else ""
        for table in ("hashes", "matches"):
            self.conn.execute(f"DELETE FROM {table} WHERE file_id = ?{spare}", (file_id, *keep))
        self._insert_hashes(file_id, [h for h in digests if h.signal_type not in keep])
        return file_id

    def _upsert_file(
        self,
        path: str,
        stat: tuple[int | None, int | None, int | None, int | None],
        md5: bytes | None,
        types: Sequence[str],
        status: str,
        reason: str | None,
        error: str | None,
        run_id: int | None,
        coverage_id: int | None = None,
    ) -> int:
        """``stat``: (size, mtime_ns, ino, ctime_ns); ``coverage_id``: see
        :meth:`_coverage_after`."""
        size, mtime_ns, ino, ctime_ns = stat
        row = self.conn.execute(
            "INSERT INTO files(path, size, mtime_ns, md5, types, status, reason, error, "
            "scanned_at, seen_run, ino, ctime_ns, coverage_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
            "md5 = excluded.md5, types = excluded.types, status = excluded.status, "
            "reason = excluded.reason, error = excluded.error, scanned_at = excluded.scanned_at, "
            "seen_run = excluded.seen_run, ino = excluded.ino, ctime_ns = excluded.ctime_ns, "
            "coverage_id = excluded.coverage_id RETURNING id",
            (
                _db_path(path),
                size,
                mtime_ns,
                md5,
                ",".join(types),
                status,
                reason,
                _db_text(error),
                time.time(),
                run_id,
                ino,
                ctime_ns,
                coverage_id,
            ),
        ).fetchone()
        return int(row[0])

    def set_stat(
        self,
        path: str,
        size: int | None,
        mtime_ns: int | None,
        ino: int | None = None,
        ctime_ns: int | None = None,
    ) -> None:
        """A file was touched but its bytes (MD5) did not change: record the new stat."""
        self.conn.execute(
            "UPDATE files SET size = ?, mtime_ns = ?, ino = ?, ctime_ns = ? WHERE path = ?",
            (size, mtime_ns, ino, ctime_ns, _db_path(path)),
        )

    # -- match coverage (see catalog_coverage) -------------------------------------------

    def _coverage_after(self, path: str, matched_in: Coverage, *, kept: bool) -> int | None:
        """The coverage row of a file whose new hashes are matched in ``matched_in``;
        ``kept``: hashes of earlier scans stay beside them, covered as recorded before."""
        if kept:
            row = self.conn.execute(
                "SELECT coverage_id FROM files WHERE path = ?", (_db_path(path),)
            ).fetchone()
            old = (
                None
                if row is None or row[0] is None
                else catalog_coverage.coverages(self.conn)[row[0]]
            )
            matched_in = catalog_coverage.intersection(old, matched_in)
        return catalog_coverage.coverage_id(self.conn, matched_in)

    def coverage_of(self, file_ids: Sequence[int]) -> dict[int, Coverage]:
        """file id -> the lists its catalogued hashes were all matched in (None: every list)."""
        lists = catalog_coverage.coverages(self.conn)
        out: dict[int, Coverage] = {}
        for start in range(0, len(file_ids), 500):
            chunk = [int(i) for i in file_ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            for fid, cid in self.conn.execute(
                f"SELECT id, coverage_id FROM files WHERE id IN ({marks})", chunk
            ):
                out[fid] = None if cid is None else lists[cid]
        return out

    def widen_coverage(self, file_ids: Sequence[int], matched_in: Coverage) -> None:
        """These files' catalogued hashes, all of them, were matched in ``matched_in``
        again (a scan that found them unchanged): covered there too from now on. One
        statement per coverage the files had (files of every list stay so), per 500
        files: a batch of unchanged files (``--batch-size``) is not bounded by SQLite's
        999 variables a statement (32766 since SQLite 3.32)."""
        if matched_in is not None and not matched_in:
            return
        groups: dict[frozenset[str], list[int]] = {}
        for file_id, old in self.coverage_of(file_ids).items():
            if old is not None:
                groups.setdefault(old, []).append(file_id)
        for old, ids in groups.items():
            new = catalog_coverage.coverage_id(self.conn, catalog_coverage.union(old, matched_in))
            for start in range(0, len(ids), 500):  # under SQLite's limit on variables
                chunk = ids[start : start + 500]
                self.conn.execute(
                    f"UPDATE files SET coverage_id = ? WHERE id IN ({','.join('?' * len(chunk))})",
                    (new, *chunk),
                )

    def partly_covered(self, chunk: int = 500) -> Iterator[tuple[frozenset[str], list[int]]]:
        """(lists, file ids) of the files whose hashes were not matched in every list,
        by what they were matched in, up to ``chunk`` ascending ids at a time (read by
        key: the files of a ``--no-match`` scan of millions are not held at once)."""
        for cid, lists in sorted(catalog_coverage.coverages(self.conn).items()):
            after = 0
            while True:
                ids = [
                    r[0]
                    for r in self.conn.execute(
                        "SELECT id FROM files WHERE coverage_id = ? AND id > ? ORDER BY id LIMIT ?",
                        (cid, after, chunk),
                    )
                ]
                if not ids:
                    break
                yield lists, ids
                after = ids[-1]

    def cover_all(self) -> None:
        """Every file is matched in every list (a rescan filled the gaps, or read the
        whole change log)."""
        self.conn.execute("UPDATE files SET coverage_id = NULL WHERE coverage_id IS NOT NULL")
        self.conn.execute("DELETE FROM coverage")

    def mark_seen(self, file_ids: Iterable[int], run_id: int) -> None:
        self.conn.executemany(
            "UPDATE files SET seen_run = ? WHERE id = ?", [(run_id, i) for i in file_ids]
        )

    def hashes_of(self, file_ids: Sequence[int]) -> dict[int, list[FileHashes]]:
        """Stored hashes for these files, grouped per file and type (frames in order),
        with the orientation of each row (:func:`catalogued_orientation`)."""
        grouped: dict[int, dict[str, list[tuple[bytes, int | None, float | None, int]]]] = {}
        for start in range(0, len(file_ids), 500):
            chunk = list(file_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for file_id, st, frame, code, quality, stamp, types in self.conn.execute(
                "SELECT h.file_id, h.signal_type, h.frame, h.code, h.quality, h.timestamp, "
                "f.types FROM hashes h JOIN files f ON f.id = h.file_id "
                f"WHERE h.file_id IN ({marks}) ORDER BY h.file_id, h.signal_type, h.frame",
                chunk,
            ):
                turned = catalogued_orientation(_types(types), st, frame)
                rows = grouped.setdefault(file_id, {}).setdefault(st, [])
                rows.append((code, quality, stamp, turned))
        out: dict[int, list[FileHashes]] = {}
        for file_id, per_type in grouped.items():
            out[file_id] = [
                FileHashes(
                    st,
                    np.frombuffer(b"".join(r[0] for r in rows), np.uint8).reshape(len(rows), -1),
                    [r[1] for r in rows],
                    [r[2] for r in rows],
                    [r[3] for r in rows] if any(r[3] for r in rows) else [],
                )
                for st, rows in per_type.items()
            ]
        return out

    # -- matches ------------------------------------------------------------------------

    def replace_matches(
        self,
        file_id: int,
        rows: Sequence[MatchRow],
        *,
        found_by: str,
        types: Sequence[str] | None = None,
        lists: Sequence[str] | None = None,
    ) -> None:
        """Set the file's matches within a scan's scope to exactly ``rows``.

        ``types`` / ``lists`` (None or empty = all): what the scan matched against. A
        scan limited by ``--types`` or ``--list`` knows nothing about the file's other
        matches, so it keeps them instead of silently dropping them.
        """
        where, args = "file_id = ?", [file_id]
        for column, values in (("signal_type", types), ("list_name", lists)):
            if values:
                where += f" AND {column} IN ({','.join('?' * len(values))})"
                args.extend(values)
        self.conn.execute(f"DELETE FROM matches WHERE {where}", args)
        self.add_matches(rows, found_by=found_by)

    def matched_elsewhere(
        self, paths: Sequence[str], lists: Sequence[str]
    ) -> dict[str, set[tuple[str, str]]]:
        """path -> the (signal type, list) pairs of its matches in lists not among
        ``lists`` (paths without any are absent).

        Why: re-hashing a file replaces its matches of the types hashed, from every
        list, while a ``--list`` scan looks only in its own: the others disappeared
        from the catalog, and no rescan (which matches new signals only) found them
        again. The scan looks these pairs up again with the new hashes."""
        out: dict[str, set[tuple[str, str]]] = {}
        if not lists:
            return out
        outside = f"m.list_name NOT IN ({','.join('?' * len(lists))})"
        for start in range(0, len(paths), 500):
            chunk = [_db_path(p) for p in paths[start : start + 500]]
            rows = self.conn.execute(
                "SELECT DISTINCT f.path, m.signal_type, m.list_name FROM matches m"
                " JOIN files f ON f.id = m.file_id"
                f" WHERE f.path IN ({','.join('?' * len(chunk))}) AND {outside}",
                (*chunk, *lists),
            )
            for path, signal_type, list_name in rows:
                out.setdefault(_py_path(path), set()).add((signal_type, list_name))
        return out

    def add_matches(self, rows: Iterable[MatchRow], *, found_by: str) -> int:
        """Insert matches not yet known; returns how many were new."""
        now = time.time()
        before = self.conn.total_changes
        self.conn.executemany(
            "INSERT OR IGNORE INTO matches(file_id, signal_type, signal_id, hash_hex, signal_hex, "
            "distance, list_name, labels, external_id, variant, query_match_pct, "
            "target_match_pct, found_by, found_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    r.file_id,
                    r.signal_type,
                    r.signal_id,
                    r.hash_hex,
                    r.signal_hex,
                    r.distance,
                    r.list_name,
                    json.dumps(list(r.labels)),
                    r.external_id,
                    r.variant,
                    r.query_match_pct,
                    r.target_match_pct,
                    found_by,
                    now,
                )
                for r in rows
            ],
        )
        return self.conn.total_changes - before

    def remove_matches_of_signals(self, signal_ids: Sequence[int]) -> list[MatchRow]:
        """Delete (and return) every match against these signals (they were retracted)."""
        return self.remove_matches(self._matches_of(signal_ids))

    def remove_low_quality_matches(
        self, signal_ids: Sequence[int], floor: int, radius: int
    ) -> list[MatchRow]:
        """Delete (and return) the PDQ matches against these signals (no longer of known
        quality >= ``floor``) that only the file's hashes under the floor supported:
        made with such a hash (the match's ``variant``), and no other hash of the file
        of quality >= the floor (or unknown) within ``radius`` of the signal.

        Per hash, as matching applies the rule: a hash under the floor matches only a
        signal of known quality >= it; a file's other hashes (dihedral rows, animation
        frames) of good quality keep the match only if they match the signal too."""
        made_low = (
            "signal_type = 'pdq' AND EXISTS (SELECT 1 FROM hashes h WHERE"
            " h.file_id = matches.file_id AND h.signal_type = 'pdq'"
            " AND h.frame = matches.variant AND h.quality < ?)"
        )
        held = self._matches_of(signal_ids, made_low, (int(floor),))
        hashes = self.hashes_of(sorted({m.file_id for m in held}))
        return self.remove_matches(
            [m for m in held if not _supported(m, hashes.get(m.file_id, []), floor, radius)]
        )

    def matches_of(
        self, signal_ids: Sequence[int], signal_type: str, *, found_by: str
    ) -> list[MatchRow]:
        """The matches of one type against ``signal_ids`` that ``found_by`` made."""
        return self._matches_of(
            signal_ids, "signal_type = ? AND found_by = ?", (signal_type, found_by)
        )

    def _matches_of(
        self, signal_ids: Sequence[int], also: str = "1", args: tuple = ()
    ) -> list[MatchRow]:
        """The matches against ``signal_ids`` that satisfy ``also`` (SQL over
        ``matches``, with ``args``), 500 ids a statement."""
        found: list[MatchRow] = []
        for start in range(0, len(signal_ids), 500):
            chunk = [int(i) for i in signal_ids[start : start + 500]]
            where = f"signal_id IN ({','.join('?' * len(chunk))}) AND {also}"
            rows = self.conn.execute(
                f"SELECT {_MATCH_COLUMNS} FROM matches WHERE {where}", (*chunk, *args)
            )
            found.extend(_match_row(r) for r in rows)
        return found

    def remove_matches(self, matches: Sequence[MatchRow]) -> list[MatchRow]:
        """Delete these matches (by file, type and signal); return them."""
        self.conn.executemany(
            "DELETE FROM matches WHERE file_id = ? AND signal_type = ? AND signal_id = ?",
            [(m.file_id, m.signal_type, m.signal_id) for m in matches],
        )
        return list(matches)

    def matched_signal_ids(self) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT signal_id FROM matches")]

    def matched_signal_codes(self) -> dict[int, tuple[str, str]]:
        """signal id -> (signal type, the stored hash the match was made with): what a
        rescan compares with the store's code now, so an id that names another signal
        (a replaced store) does not keep a match it no longer supports."""
        rows = self.conn.execute("SELECT DISTINCT signal_id, signal_type, signal_hex FROM matches")
        return {int(sid): (stype, hex_) for sid, stype, hex_ in rows}

    def matches_for_run(
        self,
        run_id: int,
        types: Sequence[str] | None = None,
        lists: Sequence[str] | None = None,
    ) -> Iterator[tuple[str, MatchRow]]:
        """(path, match) for every file seen by ``run_id``, in path order (deterministic);
        only matches of ``types`` and of ``lists`` when given (a scan reports the types
        and lists it was asked for, not those an earlier scan catalogued)."""
        where, params = "f.seen_run = ?", [run_id]
        for column, values in (("m.signal_type", types), ("m.list_name", lists)):
            if values is not None:
                where += f" AND {column} IN ({','.join('?' * len(values))})"
                params += list(values)
        cur = self.conn.execute(
            f"SELECT f.path, {_MATCH_COLUMNS_M} FROM matches m JOIN files f ON f.id = m.file_id "
            f"WHERE {where} ORDER BY f.path, m.signal_type, m.signal_id",
            params,
        )
        for row in cur:
            yield _py_path(row[0]), _match_row(row[1:])

    def set_warnings(self, file_id: int, lines: Sequence[str]) -> None:
        """Record the decoder warnings of the file's decode just done (none: cleared)."""
        if lines:
            self.conn.execute(
                "INSERT OR REPLACE INTO file_warnings(file_id, lines) VALUES (?, ?)",
                (file_id, json.dumps(list(lines))),
            )
        else:
            self.conn.execute("DELETE FROM file_warnings WHERE file_id = ?", (file_id,))

    def warnings_for_run(self, run_id: int, limit: int) -> Iterator[tuple[str, list[str]]]:
        """(path, lines) of the first ``limit`` files (path order) the run saw whose last
        decode, by this run or an earlier one, printed decoder warnings."""
        cur = self.conn.execute(
            "SELECT f.path, w.lines FROM file_warnings w JOIN files f ON f.id = w.file_id "
            "WHERE f.seen_run = ? ORDER BY f.path LIMIT ?",
            (run_id, limit),
        )
        for path, lines in cur:
            yield _py_path(path), json.loads(lines)

    def count_warnings_for_run(self, run_id: int) -> int:
        """How many files the run saw have decoder warnings (:meth:`warnings_for_run`)."""
        return self.conn.execute(
            "SELECT count(*) FROM file_warnings w JOIN files f ON f.id = w.file_id "
            "WHERE f.seen_run = ?",
            (run_id,),
        ).fetchone()[0]

    def failures_for_run(self, run_id: int) -> Iterator[FileRecord]:
        cur = self.conn.execute(
            f"SELECT {self._file_columns} FROM files WHERE seen_run = ? AND status = ? "
            "ORDER BY path",
            (run_id, FAILED),
        )
        for row in cur:
            yield _file_record(row)

    def path_of(self, file_ids: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for start in range(0, len(file_ids), 500):
            chunk = [int(i) for i in file_ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(f"SELECT id, path FROM files WHERE id IN ({marks})", chunk)
            out.update((file_id, _py_path(path)) for file_id, path in rows)
        return out

    # -- retroactive matching support ---------------------------------------------------

    def codes(
        self, signal_type: str, *, with_quality: bool = False, after_id: int = 0
    ) -> tuple[np.ndarray, ...]:
        """Every stored code of one type: (hash row ids int64[n], file ids int64[n], codes
        uint8[n, nbytes]) and, ``with_quality``, the per-row qualities (None = unknown).
        ``after_id``: only rows with a larger id (added since an index was cached).

        Read in one pass with the codes concatenated as bytes, so a 1M-row catalog loads
        in about a second without a Python object per row surviving.
        """
        n = self.conn.execute(
            "SELECT COUNT(*) FROM hashes WHERE signal_type = ? AND id > ?", (signal_type, after_id)
        ).fetchone()[0]
        if n == 0:
            empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, 0), np.uint8))
            return (*empty, []) if with_quality else empty
        nbytes = signal_types.get(signal_type).nbytes
        ids = np.empty(n, np.int64)
        file_ids = np.empty(n, np.int64)
        codes = np.empty((n, nbytes), np.uint8)
        qualities: list[int | None] = []
        cur = self.conn.execute(
            "SELECT id, file_id, code, quality FROM hashes WHERE signal_type = ? AND id > ? "
            "ORDER BY id",
            (signal_type, after_id),
        )
        at = 0
        while True:
            rows = cur.fetchmany(100_000)
            if not rows:
                break
            k = min(len(rows), n - at)  # rows added since the COUNT are left for next time
            rows = rows[:k]
            ids[at : at + k] = [r[0] for r in rows]
            file_ids[at : at + k] = [r[1] for r in rows]
            codes[at : at + k] = np.frombuffer(b"".join(r[2] for r in rows), np.uint8).reshape(
                k, nbytes
            )
            if with_quality:
                qualities.extend(r[3] for r in rows)
            at += k
            if at >= n:
                break
        ids, file_ids, codes = ids[:at], file_ids[:at], codes[:at]
        if with_quality:
            return ids, file_ids, codes, qualities
        return ids, file_ids, codes

    def count_hashes(self, signal_type: str) -> tuple[int, int]:
        """(rows, largest row id) of one type."""
        n, top = self.conn.execute(
            "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM hashes WHERE signal_type = ?",
            (signal_type,),
        ).fetchone()
        return int(n), int(top)

    def hash_rows(self, row_ids: Sequence[int]) -> dict[int, tuple[int, int, bytes, int]]:
        """Hash row id -> (file id, frame, code, orientation) for rows that still exist
        (orientation: :func:`catalogued_orientation`)."""
        out: dict[int, tuple[int, int, bytes, int]] = {}
        for start in range(0, len(row_ids), 500):
            chunk = [int(i) for i in row_ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            for rid, file_id, st, frame, code, types in self.conn.execute(
                "SELECT h.id, h.file_id, h.signal_type, h.frame, h.code, f.types FROM hashes h "
                f"JOIN files f ON f.id = h.file_id WHERE h.id IN ({marks})",
                chunk,
            ):
                turned = catalogued_orientation(_types(types), st, frame)
                out[rid] = (file_id, frame, code, turned)
        return out

    def find_exact(self, signal_type: str, code: bytes) -> list[tuple[int, int]]:
        """(hash row id, file id) of catalogued hashes equal to ``code`` (indexed lookup)."""
        return list(
            self.conn.execute(
                "SELECT id, file_id FROM hashes WHERE signal_type = ? AND code = ?",
                (signal_type, code),
            )
        )

    def stats(self) -> dict:
        """Counts: files by status and failure reason, hashes per type, matches, counters."""
        files = dict(self.conn.execute("SELECT status, COUNT(*) FROM files GROUP BY status"))
        reasons = dict(
            self.conn.execute(
                "SELECT reason, COUNT(*) FROM files WHERE status = ? GROUP BY reason", (FAILED,)
            )
        )
        hashes = dict(
            self.conn.execute("SELECT signal_type, COUNT(*) FROM hashes GROUP BY signal_type")
        )
        matches = self.conn.execute("SELECT COUNT(*) FROM matches").fetchone()[0]
        return {
            "files": sum(files.values()),
            "hashed": files.get(HASHED, 0),
            "failed": files.get(FAILED, 0),
            "failed_by_reason": reasons,
            "hashes": hashes,
            "matches": matches,
            "hash_calls": self.counter("hash_calls"),
        }


_MATCH_COLUMNS = (
    "file_id, signal_type, signal_id, hash_hex, signal_hex, distance, list_name, labels, "
    "external_id, variant, query_match_pct, target_match_pct"
)
_MATCH_COLUMNS_M = ", ".join(f"m.{c.strip()}" for c in _MATCH_COLUMNS.split(","))


def _supported(match: MatchRow, hashes: list[FileHashes], floor: int, radius: int) -> bool:
    """Whether a hash of the file of quality >= ``floor`` (or unknown) is within
    ``radius`` of the match's signal."""
    signal = np.frombuffer(bytes.fromhex(match.signal_hex), np.uint8)
    for h in hashes:
        if h.signal_type != match.signal_type:
            continue
        good = np.array([q is None or q >= floor for q in h.qualities], dtype=bool)
        codes = np.asarray(h.codes, np.uint8)[good]
        if len(codes) and np.bitwise_count(codes ^ signal).sum(axis=1).min() <= radius:
            return True
    return False


def _match_row(r: Sequence) -> MatchRow:
    return MatchRow(
        file_id=r[0],
        signal_type=r[1],
        signal_id=r[2],
        hash_hex=r[3],
        signal_hex=r[4],
        distance=r[5],
        list_name=r[6],
        labels=tuple(json.loads(r[7])),
        external_id=r[8],
        variant=r[9],
        query_match_pct=r[10],
        target_match_pct=r[11],
    )


#: What :func:`_file_record` reads, in its order.
_FILE_COLUMNS = (
    "id, path, size, mtime_ns, md5, types, status, reason, error, scanned_at, seen_run, "
    "ino, ctime_ns"
)


def _file_record(row: Sequence) -> FileRecord:
    return FileRecord(
        id=row[0],
        path=_py_path(row[1]),
        size=row[2],
        mtime_ns=row[3],
        md5=row[4],
        types=_types(row[5]),
        status=row[6],
        reason=row[7],
        error=row[8],
        scanned_at=row[9],
        seen_run=row[10],
        ino=row[11],
        ctime_ns=row[12],
    )


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.conn.execute("COMMIT")
        finally:
            if self.conn.in_transaction:  # an error, or a COMMIT that failed (disk full)
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
