"""The signal store: hash lists, signals with provenance, tenants, audit log.

The store is the source of truth; every index is derived from it (see
:mod:`hashmatch.engine.runtime`). Embedded default: SQLite in WAL mode with
``synchronous=FULL`` so an acknowledged (committed) batch survives kill -9 and
power loss. One connection per thread (SQLite connections are not shareable), one
writer at a time (a lock here plus ``BEGIN IMMEDIATE`` across processes).

Every write that changes what an index should hold appends a row to ``changes``
(``add`` of an id range / ``remove`` of ids). ``change_counter()`` is the last
``seq``; a running engine replays the rows after the one it has applied, which is
how a CLI ingest into the same data dir reaches a running server, and how a
snapshot taken at counter N is brought up to date at start-up.

Why a backend boundary at SQL (not an ORM): the queries are few and hot; a
PostgreSQL backend would subclass :class:`SignalStore` and override ``_connect``
and the handful of SQLite-specific statements (``BEGIN IMMEDIATE``, ``INSERT``
id allocation), keeping this module's public API.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import queue
import shlex
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from hashmatch.engine import signal_types
from hashmatch.engine.errors import (
    NEARLY_FULL_BYTES,
    Conflict,
    CorruptData,
    InvalidHash,
    InvalidInput,
    NotFound,
    PermissionDenied,
    UnknownSignalType,
    free_bytes,
)
from hashmatch.engine.lazy_numpy import numpy_on_first_use
from hashmatch.engine.store_lock_wait import LockFree, LockWait, begin_immediate
from hashmatch.engine.store_reads import LookupReads, lookup_reads
from hashmatch.engine.store_schema import (
    FRESH_LIST_COUNTS,
    change_digest,
    migrate,
    refuse_foreign,
    store_id,
)

if TYPE_CHECKING:
    import numpy as np
else:  # store verbs (lists ls, tenants, audit) need no numpy: engine/lazy_numpy.py
    np = numpy_on_first_use(globals())

LABEL_SEP = "\x1f"  # labels are stored joined by the ASCII unit separator
_NOT_SHARED = "no hash list by that name is shared with you"
#: how long delete_list's checkpoint waits for a reader (writers wait as long meanwhile)
_CHECKPOINT_WAIT_MS = 1000
#: store_meta key: the highest id of a deleted list (new lists get higher ids)
_DELETED_LIST_IDS = "deleted_list_id_max"
DEFAULT_BATCH = 50_000
#: Change-log op of signals that match again without their code changing (their list
#: re-enabled, their expiry moved past now): the index still holds them (a disabled
#: list or an expired signal is filtered at match time), so the engine ignores it, but
#: a rescan must treat them as new, or the matches it retracted would never come back.
REVIVE = "revive"
#: Change-log op of signals whose provenance changed (labels, external id, quality,
#: expiry) by a re-ingest: the code is the same, so the engine ignores it; the change
#: log must still say so, or a mirror reading it (``hashmatch mirror``) would keep the
#: old labels and expiry for good. Read as an add by the change readers, as REVIVE is.
UPDATE = "update"
#: Change-log op of the index ids (vPDQ: ``signal_id << FRAME_BITS | frame_no``) of
#: signals deleted from the store with their list (:meth:`SignalStore.delete_list`):
#: the engine drops them from its index (a ``remove`` of a vPDQ signal needs its frame
#: count, gone with the rows) and writes its next snapshot without them. Readers of the
#: log skip it: the ``remove`` entry beside it tells them.
PURGE = "purge"
FRESH_CACHE_ROWS = 2_000_000  # rows of just-written codes kept for the index (~64 MB of PDQ)
MAX_REJECTIONS_KEPT = 10_000  # a report keeps this many rejections; the count is exact
#: seconds a connection waits for another's write lock before "database is locked"
#: (read when a connection opens; a module attribute so a test can shorten it)
BUSY_TIMEOUT = 60.0


class IngestRefused(InvalidInput):
    """``strict`` ingest found bad records: nothing was written. ``report`` has them all."""

    def __init__(self, message: str, report: IngestReport):
        super().__init__(message, field="records")
        self.report = report


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class SignalRecord:
    """One signal to ingest, as a parser (or the gRPC layer) produced it.

    ``hash_hex`` is the hex the lists exchange. A vPDQ record carries its frames in
    ``frames`` (``uint8[k, 32]``) instead; ``hash_hex`` may then be empty (the store
    keys a video by the SHA-256 of its frame codes). ``line`` is where it came from
    (1-based line of the input file) so rejections can name it.
    """

    signal_type: str
    hash_hex: str
    labels: tuple[str, ...] = ()
    external_id: str | None = None
    quality: int | None = None
    expires_at: float | None = None  # epoch seconds
    frames: np.ndarray | None = None
    frame_qualities: Sequence[int] | None = None
    timestamps: Sequence[float] | None = None
    line: int | None = None


@dataclass(frozen=True)
class Rejection:
    """A record that was not ingested and why (``index``: position in the input stream)."""

    reason: str
    index: int | None = None
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else f"record {self.index}"
        return f"{where}: {self.reason}"


@dataclass(slots=True)
class ColumnBatch:
    """One chunk of parsed input, column by column: the fast path of file ingest.

    Why: building a :class:`SignalRecord` per line and a JSON row per signal cost
    more than SQLite's insert itself. A parser that can (CSV) hands the store
    whole columns; the store validates them with a few C-speed calls and inserts
    them with one statement. Anything unusual in a batch (a bad hash, mixed types,
    a duplicate, per-row quality) sends that batch through the per-record path,
    so reasons and line numbers are the same either way.

    ``positions`` are the records' places in the input stream (parser rejections
    take places too), ``seen`` the stream position after this batch.
    """

    signal_types: list[str]
    values: list[str]
    labels: list[tuple[str, ...]]
    external_ids: list[str | None] | None
    qualities: list[int | None] | None
    expires: list[float | None] | None
    lines: list[int | None]
    positions: list[int]
    rejections: list[Rejection]
    seen: int
    originals: list[tuple[int, SignalRecord]] | None = None  # from_items: the records as given

    def __len__(self) -> int:
        return len(self.values)

    def records(self) -> list[tuple[int, SignalRecord]]:
        """(position, record) pairs: the per-record path's input."""
        if self.originals is not None:
            return self.originals
        n = len(self.values)
        ext = self.external_ids or [None] * n
        qual = self.qualities or [None] * n
        exp = self.expires or [None] * n
        return [
            (p, SignalRecord(t, v, lab, e, q, x, None, None, None, ln))
            for p, t, v, lab, e, q, x, ln in zip(
                self.positions, self.signal_types, self.values, self.labels, ext, qual, exp,
                self.lines, strict=True,
            )
        ]  # fmt: skip

    @classmethod
    def from_items(cls, items: Sequence[SignalRecord | Rejection], start: int) -> ColumnBatch:
        """Columns from a mixed stream chunk (records and parser rejections)."""
        out = cls([], [], [], [], [], [], [], [], [], start, [])
        for position, item in enumerate(items, start):
            if isinstance(item, Rejection):
                if item.index is None:
                    item = Rejection(item.reason, position, item.line, item.field)
                out.rejections.append(item)
                continue
            out.append(position, item)
            out.originals.append((position, item))  # type: ignore[union-attr]
        out.seen = start + len(items)
        return out

    def append(self, position: int, record: SignalRecord) -> None:
        """Add one record's fields to the columns (the batch must keep every column)."""
        self.signal_types.append(record.signal_type)
        self.values.append(record.hash_hex)
        self.labels.append(record.labels)
        self.external_ids.append(record.external_id)  # type: ignore[union-attr]
        self.qualities.append(record.quality)  # type: ignore[union-attr]
        self.expires.append(record.expires_at)  # type: ignore[union-attr]
        self.lines.append(record.line)
        self.positions.append(position)


MAX_TARGETS_KEPT = 20


@dataclass
class IngestReport:
    """What an ingest did. ``rejected`` is exact; ``rejections`` keeps the first 10k."""

    list_name: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    still_retracted: int = 0  # re-ingested rows that stay retracted (restore them explicitly)
    # the first MAX_TARGETS_KEPT of them as ``type:hex`` (what ``restore --file`` reads):
    # a count alone does not say which of a partner's re-sent hashes to restore
    still_retracted_targets: list[str] = field(default_factory=list)
    batches: int = 0
    seconds: float = 0.0
    rejections: list[Rejection] = field(default_factory=list)
    # the audit rows of the batches written so far (the last may be rolled back): what
    # Store.ingest recounts the committed batches from when it is stopped part way
    batch_audit_ids: list[int] = field(default_factory=list, repr=False)
    # len(batch_audit_ids) when the batch being written began (None: none is): with the
    # recount, whether a stop rolled a batch back or landed between (after) batches
    batch_in_flight: int | None = field(default=None, repr=False)
    # set by the recount: the stop rolled back a batch it found being written
    rolled_back_batch: bool = False

    @property
    def accepted(self) -> int:
        return self.added + self.updated + self.unchanged

    def reject(self, rejection: Rejection) -> None:
        self.rejected += 1
        if len(self.rejections) < MAX_REJECTIONS_KEPT:
            self.rejections.append(rejection)

    def as_dict(self) -> dict:
        return {
            "list": self.list_name,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "still_retracted": self.still_retracted,
            "still_retracted_targets": list(self.still_retracted_targets),
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class HashList:
    """A shared hash list (bank / collection) and its current size."""

    id: int
    name: str
    description: str
    owner: str
    labels: tuple[str, ...]
    enabled: bool
    created_at: float
    updated_at: float
    signal_count: int = 0  # not retracted (expired ones included: see expired_count)
    retracted_count: int = 0
    expired_count: int = 0  # of signal_count, those past their expiry (they do not match)
    signal_types: tuple[str, ...] = ()


#: SignalStates' columns, as signal_states reads them
_STATE_DTYPES = ("int64", "int64", "float64", "bool", "int32")


@dataclass(frozen=True)
class SignalStates:
    """Unretracted signals' match state as arrays (:meth:`SignalStore.signal_states`)."""

    ids: np.ndarray  # int64, ascending
    list_ids: np.ndarray  # int64
    expires_at: np.ndarray  # float64 epoch seconds (0 where no_expiry)
    no_expiry: np.ndarray  # bool
    quality: np.ndarray  # int32, -1 unknown

    @classmethod
    def empty(cls) -> SignalStates:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64),
                   np.empty(0, np.bool_), np.empty(0, np.int32))  # fmt: skip

    def live(self, enabled_lists: Collection[int], now: float) -> np.ndarray:
        """Which still match: list enabled, not expired (retracted ones are not here)."""
        listed = np.isin(self.list_ids, np.fromiter(enabled_lists, np.int64))
        return listed & (self.no_expiry | (self.expires_at > now))


@dataclass
class ListContents:
    """What a list holds, as :meth:`SignalStore.delete_list` deletes (or would) it."""

    name: str
    id: int
    signals: dict[str, tuple[int, int]]  # type -> (live, retracted)
    frames: int  # vPDQ frames of its videos
    grants: list[str]  # tenants the list is shared with
    mirror: str | None  # the mirror prefix that created it, if one did
    wal_cleared: bool | None = None  # delete_list: the WAL was emptied at once

    @property
    def total(self) -> int:
        return sum(live + retracted for live, retracted in self.signals.values())

    def as_dict(self) -> dict:
        return {"list_id": self.id, "signals": self.total,
                "live": sum(v[0] for v in self.signals.values()),
                "retracted": sum(v[1] for v in self.signals.values()),
                "by_type": {t: {"live": v[0], "retracted": v[1]} for t, v in self.signals.items()},
                "frames": self.frames, "grants": self.grants, "mirror": self.mirror}  # fmt: skip

    def line(self) -> str:
        types = ", ".join(f"{t} {live + ret}" for t, (live, ret) in self.signals.items())
        d = self.as_dict()
        tenants = f" ({', '.join(self.grants)})" if self.grants else ""
        mirror = f", created by mirror {self.mirror!r}" if self.mirror else ""
        return (
            f"{self.total} signal(s) ({d['live']} live, {d['retracted']} retracted"
            f"{'; ' + types if types else ''}), {self.frames} vPDQ frame(s),"
            f" {len(self.grants)} grant(s){tenants}{mirror}"
        )


@dataclass(frozen=True)
class Tenant:
    """A platform calling the service: which lists it reads and writes."""

    name: str
    is_admin: bool
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    created_at: float


@dataclass(frozen=True)
class SignalInfo:
    """A stored signal with its provenance."""

    id: int
    list_name: str
    signal_type: str
    hash_hex: str
    labels: tuple[str, ...]
    external_id: str | None
    quality: int | None
    added_at: float
    updated_at: float
    expires_at: float | None
    retracted_at: float | None
    retract_reason: str | None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    list_name: str | None
    count: int
    source: str | None
    details: dict


@dataclass(frozen=True)
class Change:
    """One row of the change log: ids to add to / remove from a type's index."""

    seq: int
    op: str  # "add" | "remove" | REVIVE | UPDATE ("bump" rows carry no ids)
    signal_type: str
    ids: np.ndarray  # int64 signal ids


def split_labels(text: str | None) -> tuple[str, ...]:
    return tuple(text.split(LABEL_SEP)) if text else ()


#: Characters a label cannot hold: the separator labels are joined with, and NUL
#: (SQLite text ends there). Stored as given, they would come back split or cut short.
_UNSTORABLE_LABEL = (LABEL_SEP, "\x00")
_UNSTORABLE_EXTERNAL = "\x00"


def _labels_problem(labels: Iterable[str]) -> tuple[str, str] | None:
    """(reason, field) when a label cannot be stored as given, else None.

    Why reject instead of cleaning: a label is provenance a partner assigned; silently
    splitting "a\x1fb" into two labels or cutting "q\x00r" to "q" would change it.
    """
    for j, label in enumerate(labels):
        text = str(label)
        if any(c in text for c in _UNSTORABLE_LABEL):
            return (
                "labels may not contain NUL (U+0000) or the unit separator (U+001F)",
                f"labels[{j}]",
            )
    return None


def _list_labels(labels: Iterable[str]) -> str:
    """A list's labels as stored; InvalidInput for one that cannot be stored as given
    (as a signal's are refused at ingest): ``lists create``/``set`` with "a<U+001F>b"
    stored two labels, a and b, and said nothing."""
    labels = list(labels)
    problem = _labels_problem(labels)
    if problem is not None:
        raise InvalidInput(problem[0], field=problem[1])
    for i, label in enumerate(labels):
        if not label.strip():  # `lists set --label ""` cleared every label, silently
            raise InvalidInput(
                "a label may not be empty (to remove a list's labels: lists set --clear-labels)",
                field="labels",
                index=i,
            )
    return join_labels(labels)


def join_labels(labels: Iterable[str]) -> str:
    clean = []
    for label in labels:
        label = str(label).strip()
        if label and label not in clean:
            clean.append(label)
    return LABEL_SEP.join(clean)


def video_key(frames: np.ndarray) -> bytes:
    """The identity of a vPDQ signal in a list: SHA-256 of its frame codes in order."""
    return hashlib.sha256(np.ascontiguousarray(frames, dtype=np.uint8).tobytes()).digest()


# --------------------------------------------------------------------------- store


class SignalStore:
    """Hash lists, signals, tenants and the audit log in one SQLite database."""

    def __init__(
        self,
        path: str | Path,
        *,
        create: bool = True,
        busy_timeout: float | None = None,
        on_lock_wait: LockWait | None = None,
        on_lock_free: LockFree | None = None,
    ):
        """``busy_timeout``: seconds a write waits for another process's write lock
        before "database is locked" (a side write that must not hang, such as the audit
        row of a token edit, passes a short one); None: :data:`BUSY_TIMEOUT` as it is
        now (read here, not when the class was defined, so a test can shorten it).
        ``on_lock_wait`` / ``on_lock_free``: the attributes below, given here so that
        the writes of the open itself (a migration, the store's identity) use them."""
        self.path = Path(path)
        self.busy_timeout = BUSY_TIMEOUT if busy_timeout is None else busy_timeout
        #: told who holds the write lock when a write has waited a second for another
        #: process's (see :mod:`hashmatch.engine.store_lock_wait`); the CLI says it
        self.on_lock_wait: LockWait | None = on_lock_wait
        #: told when a write began within that second (the server ends a wait episode)
        self.on_lock_free: LockFree | None = on_lock_free
        if not create and not self.path.exists():
            raise NotFound(f"no store at {self.path}", field="data_dir")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self.write_lock = threading.RLock()
        self._closed = False
        # ids + codes of rows this process just inserted, by change seq: the engine
        # adds them to its index without reading them back (see take_fresh).
        self._fresh: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._fresh_rows = 0
        self._fresh_lock = threading.Lock()  # never held while waiting for another lock
        try:
            # Creating a store (0 bytes until its first commit) and migrating it happen
            # under one lock file: a second process opening the same new store meanwhile
            # must neither take it for a lost (emptied) store nor run the migrations twice.
            with _creation_lock(self.path):
                self._check_not_emptied()
                if not create and not self.path.exists():  # its creation had been killed
                    raise NotFound(f"no store at {self.path}", field="data_dir")
                new = not self.path.exists()
                try:
                    _refuse_foreign(self.path)  # before the first connection switches to WAL
                    migrate(self.conn(), begin=self._begin_outermost)
                except sqlite3.DatabaseError:
                    self.close()
                    if new:
                        self._remove_unfinished()
                    raise
        except sqlite3.DatabaseError as exc:
            self.close()
            free = free_bytes(self.path)
            if (
                isinstance(exc, sqlite3.OperationalError)
                and free is not None
                and free < NEARLY_FULL_BYTES
            ):  # a bare "disk I/O error" when SQLite cannot create its -wal/-shm files
                raise Conflict(
                    f"cannot open {self.path} ({exc}): the filesystem holding it is full"
                    f" ({free:,} bytes free); free space and re-run",
                    field="data_dir",
                ) from exc
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise Conflict(
                    f"cannot open {self.path}: another process held its write lock"
                    f" throughout the {self.busy_timeout:g} s wait (a long --strict ingest? an"
                    " older hashmatch writing?); opening needs it once to create or upgrade"
                    " the store: retry when that process has finished",
                    field="data_dir",
                ) from exc
            if isinstance(exc, sqlite3.OperationalError) and not is_corruption(exc):
                # read-only, disk full: not the file's fault, but name the file
                raise Conflict(
                    f"cannot open {self.path} ({exc}): SQLite needs to write the file and"
                    f" create {self.path.name}-wal/-shm next to it (read-only directory or"
                    " mount? a directory in its place?), or another process holds it locked",
                    field="data_dir",
                ) from exc
            raise CorruptData(
                f"{self.path} is damaged or not a hashmatch store ({exc}); restore it from"
                " a backup",
                field="data_dir",
            ) from exc

    def _remove_unfinished(self) -> None:
        """A store this call began creating whose creation failed (a full disk) is
        removed, if nothing of it was committed: left as a 0-byte file it would be
        refused ever after as a lost store, and the operator would have to delete it."""
        if self._empty_without_wal():
            for suffix in ("", "-wal", "-shm"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)

    def _empty_without_wal(self) -> bool:
        """The store file is 0 bytes and no -wal holds its first pages."""
        if not (self.path.exists() and self.path.stat().st_size == 0):
            return False
        wal = self.path.with_name(self.path.name + "-wal")
        return not (wal.exists() and wal.stat().st_size > 0)

    def _check_not_emptied(self) -> None:
        """An existing zero-byte store is a lost one (truncated, a failed copy), not a new
        one: opening it as empty would serve "no match" for everything. One another
        process is creating right now may still be 0 bytes with its first pages in the
        -wal file: that one is let through. So is one whose creation was killed (see
        :func:`_creation_killed`): it is removed and created anew."""
        if not self._empty_without_wal():  # or one another process is creating now
            return
        if _creation_killed(self.path):
            for suffix in ("", "-journal"):  # nothing was ever stored: create it anew
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            return
        raise CorruptData(
            f"{self.path} is empty (0 bytes): the store was lost; restore it from a"
            " backup (or delete the file to start an empty store)",
            field="data_dir",
        )

    # ---- connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA cache_size=-65536")  # 64 MiB per connection
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA wal_autocheckpoint=8192")  # checkpoint every ~32 MiB of WAL
        return conn

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (created on first use)."""
        if self._closed:
            raise Conflict("the store is closed", field="store")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def release_thread_conn(self) -> None:
        """Close the calling thread's connection (a thread that is about to end): else
        it stays in ``_all``, with its file descriptors and up to 64 MiB of page cache,
        until :meth:`close`. The thread's next :meth:`conn` opens a new one."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        self._local.lookup_reads = None
        with self._all_lock, contextlib.suppress(ValueError):
            self._all.remove(conn)
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()

    def _write(self):
        """Context manager: one write transaction (serialised in-process and across processes)."""
        return _WriteTxn(self)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that every write made inside it on this thread joins
        (ingest, retract, restore, create_list, record: each becomes a savepoint), so
        they commit together or not at all.

        Why: a mirror applies a page of a hub's changes and advances its cursor in the
        same transaction; killed at any point, the store holds the page and the cursor
        that covers it, or neither.
        """
        try:
            with self._write() as conn:
                yield conn
        except BaseException:
            self._drop_fresh()  # codes of rows that were rolled back
            raise

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, or a savepoint inside :meth:`transaction` (which it joins)."""
        depth = getattr(self._local, "depth", 0)
        if depth:
            conn.execute(f"SAVEPOINT hm_{depth}")
        else:
            self._begin_outermost(conn)
        self._local.depth = depth + 1

    def _begin_outermost(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, saying whom it waits for (the hooks above)."""
        begin_immediate(conn, self.path, self.busy_timeout, self.on_lock_wait, self.on_lock_free)

    def _end(self, conn: sqlite3.Connection, *, commit: bool) -> None:
        """End what :meth:`_begin` began: commit (release) or roll back. A COMMIT that
        fails (disk full) is rolled back before the error goes on."""
        depth = self._local.depth = self._local.depth - 1
        if depth:  # a savepoint of an enclosing transaction()
            if commit:
                conn.execute(f"RELEASE hm_{depth}")
            elif conn.in_transaction:  # SQLite may have rolled back everything itself
                conn.execute(f"ROLLBACK TO hm_{depth}")
                conn.execute(f"RELEASE hm_{depth}")
            return
        try:
            if commit:
                conn.execute("COMMIT")
            elif conn.in_transaction:  # SQLite may have rolled back itself (disk I/O)
                conn.execute("ROLLBACK")
        finally:
            if conn.in_transaction:  # a COMMIT that failed left it open
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")

    # ---- lists

    def create_list(
        self,
        name: str,
        *,
        description: str = "",
        owner: str = "",
        labels: Iterable[str] = (),
        actor: str = "local",
        exist_ok: bool = False,
    ) -> HashList:
        name = _check_name(name, "list_name")
        now = time.time()
        with self._write() as conn:
            row = conn.execute("SELECT id FROM hash_lists WHERE name = ?", (name,)).fetchone()
            if row is not None:
                if exist_ok:
                    return self.get_list(name)
                raise Conflict(f"hash list {name!r} already exists", field="list_name")
            _insert_list(conn, name, now, description, owner, _list_labels(labels))
            self._audit(conn, actor, "list.create", name, 0, None, {"owner": owner})
        return self.get_list(name)

    @staticmethod
    def _list_exists(conn: sqlite3.Connection, name: str) -> bool:
        found = conn.execute("SELECT 1 FROM hash_lists WHERE name = ?", (name.strip(),))
        return found.fetchone() is not None

    def _ensure_list(
        self, conn: sqlite3.Connection, name: str, actor: str, *, own_txn: bool
    ) -> None:
        if self._list_exists(conn, name):
            return
        if own_txn:
            self.create_list(name, actor=actor, exist_ok=True)
            return
        _insert_list(conn, _check_name(name, "list_name"), time.time())
        self._audit(conn, actor, "list.create", name, 0)

    def set_list_enabled(self, name: str, enabled: bool, *, actor: str = "local") -> HashList:
        """Disable (or re-enable) a list: its signals stop (start) matching at once.

        Re-enabling a disabled list logs its live signals as :data:`REVIVE`: a rescan
        retracted their matches when it was disabled and must find them again."""
        name = name.strip()  # as create_list stored it (as every other list verb reads it)
        with self._write() as conn:
            row = conn.execute(
                "SELECT id, enabled FROM hash_lists WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no hash list named {name!r}", field="list_name")
            conn.execute(
                "UPDATE hash_lists SET enabled = ?, updated_at = ? WHERE id = ?",
                (int(enabled), time.time(), row[0]),
            )
            self._audit(conn, actor, "list.enable" if enabled else "list.disable", name, 0)
            self._bump(conn)
            if enabled and not row[1]:
                self._log_revived_list(conn, row[0])
        return self.get_list(name)

    def update_list(
        self,
        name: str,
        *,
        description: str | None = None,
        owner: str | None = None,
        labels: Iterable[str] | None = None,
        actor: str = "local",
    ) -> HashList:
        """Edit a list's metadata (None: leave that field as it is; ``labels`` replaces
        the list's labels). Audited as ``list.update`` with each changed field's old and
        new value, so a partnership's change of owner can be traced; nothing is audited
        when nothing changes. Metadata never changes what matches: no change-log entry."""
        with self._write() as conn:
            list_id = self._list_id(conn, name)
            row = conn.execute(
                "SELECT description, owner, labels FROM hash_lists WHERE id = ?", (list_id,)
            ).fetchone()
            given = {"description": description, "owner": owner,
                     "labels": None if labels is None else _list_labels(labels)}  # fmt: skip
            old = dict(zip(("description", "owner", "labels"), row, strict=True))
            changed = {k: v for k, v in given.items() if v is not None and v != old[k]}
            if changed:
                sets = ", ".join(f"{k} = ?" for k in changed)
                conn.execute(
                    f"UPDATE hash_lists SET {sets}, updated_at = ? WHERE id = ?",
                    (*changed.values(), time.time(), list_id),
                )
                shown = {k: [_shown_field(k, old[k]), _shown_field(k, v)]
                         for k, v in changed.items()}  # fmt: skip
                self._audit(conn, actor, "list.update", name.strip(), 0, None, shown)
        return self.get_list(name.strip())

    def rename_list(self, old: str, new: str, *, actor: str = "local",
                    mirror: bool = False) -> HashList:  # fmt: skip
        """Rename a list; audited as ``list.rename`` (from, to).

        Everything else refers to a list by id (signals, tenants' grants, counts), and
        lookups read names afresh, so grants keep working and the next match, ``lists
        ls`` and ``Signals.Changes`` show the new name. Refused: a name in use, and a list
        a mirror created: ``hashmatch mirror`` finds its local lists by ``prefix + the
        hub's name``, so it would create the old name again and copy the hub's signals a
        second time. ``mirror``: the mirror itself follows the hub's rename of the list
        its copy is of; the copy's recorded hub name becomes ``new`` less the prefix."""
        new = _check_name(new, "list_name")
        if new == old.strip():  # answered "already exists", as if another list had it
            raise InvalidInput(f"list {new!r} already has that name", field="list_name")
        with self._write() as conn:
            list_id = self._list_id(conn, old)
            owner = conn.execute(
                "SELECT prefix, remote_name FROM mirror_lists WHERE list_id = ?", (list_id,)
            ).fetchone()
            if owner is not None and not mirror:
                raise Conflict(
                    f"list {old.strip()!r} is the mirror {owner[0]!r}'s copy of the hub's"
                    f" {owner[1]!r}: the mirror finds it by that name, so it is not renamed"
                    " (to use other names, mirror the hub again with another --prefix)",
                    field="list_name",
                )
            taken = conn.execute("SELECT 1 FROM hash_lists WHERE name = ?", (new,)).fetchone()
            if taken is not None:
                raise Conflict(f"hash list {new!r} already exists", field="list_name")
            conn.execute(
                "UPDATE hash_lists SET name = ?, updated_at = ? WHERE id = ?",
                (new, time.time(), list_id),
            )
            if owner is not None:
                conn.execute(
                    "UPDATE mirror_lists SET remote_name = ? WHERE list_id = ?",
                    (new.removeprefix(owner[0]), list_id),
                )
            self._audit(conn, actor, "list.rename", new, 0, None, {"from": old.strip(), "to": new})
        return self.get_list(new)

    def list_contents(self, name: str) -> ListContents:
        """What :meth:`delete_list` would delete (``lists delete`` without ``--yes``)."""
        conn = self.conn()
        conn.execute("BEGIN")  # the counts of one moment
        try:
            return self._list_contents(conn, self._list_id(conn, name), name.strip())
        finally:
            conn.execute("COMMIT")

    def _list_contents(self, conn: sqlite3.Connection, list_id: int, name: str) -> ListContents:
        by_type = {
            stype: (int(live), int(retracted))
            for stype, live, retracted in conn.execute(
                "SELECT signal_type, SUM(retracted_at IS NULL), SUM(retracted_at IS NOT NULL)"
                " FROM signals WHERE list_id = ? GROUP BY signal_type ORDER BY signal_type",
                (list_id,),
            )
        }
        (frames,) = conn.execute(
            "SELECT COUNT(*) FROM signal_frames WHERE signal_id IN"
            " (SELECT id FROM signals WHERE list_id = ? AND signal_type = 'vpdq')",
            (list_id,),
        ).fetchone()
        grants = [
            t
            for (t,) in conn.execute(
                "SELECT tenant FROM tenant_lists WHERE list_id = ? ORDER BY tenant", (list_id,)
            )
        ]
        mirror = conn.execute(
            "SELECT prefix FROM mirror_lists WHERE list_id = ?", (list_id,)
        ).fetchone()
        return ListContents(name, list_id, by_type, int(frames), grants,
                            mirror[0] if mirror else None)  # fmt: skip

    def delete_list(self, name: str, *, actor: str = "local",
                    mirror_resyncs: bool = True) -> ListContents:  # fmt: skip
        """Delete a list and every signal of it (live or retracted, vPDQ frames
        included) from the store for good: a partner agreement ended, or the law
        requires deletion. Retraction (soft) keeps signals; this does not.

        In one transaction: the list's live signals are logged as ``remove`` (what a
        running server's index, ``rescan`` and ``Signals.Changes`` readers act on) and
        every index id they had as :data:`PURGE` (the engine drops vPDQ frames by it,
        whose count the store no longer knows, and the next snapshot is written without
        them); then the rows go, with the list's grants, counters and mirror records
        (a mirror's list: see README). SQLite's ``secure_delete`` overwrites the freed
        content. An audit row (``list.delete``: who, when, how many) remains; signal ids
        are never reused (AUTOINCREMENT), so no lookup can return a deleted signal.

        A mirror's list (``mirror_resyncs``, unless the mirror deletes it itself): that
        mirror's next run is a full resync (:meth:`_restart_mirror`)."""
        with self._write() as conn:
            list_id = self._list_id(conn, name)
            contents = self._list_contents(conn, list_id, name.strip())
            if contents.mirror is not None and mirror_resyncs:
                self._restart_mirror(conn, contents.mirror)
            conn.execute("PRAGMA secure_delete = ON")  # (the connection's; builds differ)
            for stype in contents.signals:
                self._log_deleted(conn, list_id, stype)
            member = "(SELECT id FROM signals WHERE list_id = ?)"
            for sql in (
                f"DELETE FROM signal_frames WHERE signal_id IN {member}",
                f"DELETE FROM mirror_signals WHERE signal_id IN {member}",
                "DELETE FROM signals WHERE list_id = ?",
                "DELETE FROM list_counts WHERE list_id = ?",
                "DELETE FROM tenant_lists WHERE list_id = ?",
                "DELETE FROM mirror_lists WHERE list_id = ?",
                "DELETE FROM mirror_list_uids WHERE list_id = ?",
                "DELETE FROM hash_lists WHERE id = ?",
            ):
                conn.execute(sql, (list_id,))
            conn.execute(  # its id is never given to another list (see _insert_list)
                "INSERT INTO store_meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE"
                " SET value = excluded.value WHERE CAST(value AS INTEGER) < ?",
                (_DELETED_LIST_IDS, str(list_id), list_id),
            )
            conn.execute(  # who saw it, and where in the log (Signals.Changes tells them)
                "INSERT INTO deleted_lists(list_id, name, seq, tenants, deleted_at)"
                " SELECT ?, ?, COALESCE(MAX(seq), 0), ?, ? FROM changes",
                (list_id, contents.name, json.dumps(contents.grants), time.time()),
            )
            self._audit(conn, actor, "list.delete", contents.name, contents.total, None,
                        contents.as_dict())  # fmt: skip
            self._bump(conn)  # grants removed: visibility changed
        # the WAL still holds the deleted rows' old pages until a checkpoint reuses it
        # (inside a caller's transaction() there is nothing committed to copy yet: the
        # caller checkpoints after it commits)
        if not getattr(self._local, "depth", 0):
            contents.wal_cleared = self.checkpoint_truncate()
        return contents

    @staticmethod
    def _restart_mirror(conn: sqlite3.Connection, prefix: str) -> None:
        """Set mirror ``prefix`` to a resync that has read nothing yet: cursor 0, resync
        flag on (cleared only when a resync reaches the hub's head), no remote id
        mapped. Why: a run of that mirror overlapping the delete created the list again
        from its later pages only, and the next run, finding the list known, never read
        the earlier ones (an incomplete copy until a --resync). The overlapping run finds
        its cursor moved at its next page and stops; a run after the delete, with the
        hub still sharing the list, copies it whole."""
        conn.execute(
            "UPDATE mirrors SET seq = 0, signal_id = 0, head_digest = '', entry_digest = '',"
            " resync = 1 WHERE prefix = ?",
            (prefix,),
        )
        conn.execute("DELETE FROM mirror_signals WHERE prefix = ?", (prefix,))

    def checkpoint_truncate(self) -> bool:
        """Copy the WAL into the database file and empty it; False when a reader kept
        part of it (SQLite's next checkpoints overwrite the rest).

        Waits at most :data:`_CHECKPOINT_WAIT_MS` for readers of an older snapshot (a
        server's index rebuild or Changes page, a backup): while a TRUNCATE checkpoint
        waits, SQLite holds off every new writer, so with the connection's 60 s busy
        timeout a delete under a running rebuild stalled the server's ingests a minute."""
        conn = self.conn()
        (waited,) = conn.execute("PRAGMA busy_timeout").fetchone()
        conn.execute(f"PRAGMA busy_timeout = {_CHECKPOINT_WAIT_MS}")
        try:
            busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(waited)}")
        return not busy

    def _log_deleted(self, conn: sqlite3.Connection, list_id: int, stype: str) -> None:
        """The change-log entries of a type's signals of a list being deleted."""

        def ids(sql: str, *args) -> np.ndarray:  # no Python tuple per row: lists of 10M
            return np.fromiter((r[0] for r in conn.execute(sql, args)), dtype=np.int64)

        where = "FROM signals WHERE list_id = ? AND signal_type = ?"
        live = ids(f"SELECT id {where} AND retracted_at IS NULL ORDER BY id", list_id, stype)
        if len(live):  # retracted ones were logged as removed when they were retracted
            conn.execute("INSERT INTO changes(op, signal_type, ids) VALUES ('remove', ?, ?)",
                         (stype, live.tobytes()))  # fmt: skip
        if stype == "vpdq":  # every frame, of retracted videos too (a server that has not
            # replayed their retraction yet reads no frame count once they are gone)
            index_ids = ids(
                f"SELECT (f.signal_id << {FRAME_BITS}) | f.frame_no FROM signal_frames f"
                " JOIN signals s ON s.id = f.signal_id WHERE s.list_id = ? ORDER BY 1",
                list_id,
            )
        else:
            index_ids = ids(f"SELECT id {where} ORDER BY id", list_id, stype)
        if len(index_ids):
            conn.execute("INSERT INTO changes(op, signal_type, ids) VALUES (?, ?, ?)",
                         (PURGE, stype, index_ids.tobytes()))  # fmt: skip

    def _log_revived_list(self, conn: sqlite3.Connection, list_id: int) -> None:
        """One :data:`REVIVE` entry per type with the list's unretracted signals."""
        types = [
            t
            for (t,) in conn.execute(
                "SELECT signal_type FROM list_counts WHERE list_id = ? AND live > 0", (list_id,)
            )
        ]
        for stype in types:
            cur = conn.execute(
                "SELECT id FROM signals WHERE list_id = ? AND signal_type = ?"
                " AND retracted_at IS NULL ORDER BY id",
                (list_id, stype),
            )
            ids = np.fromiter((r[0] for r in cur), dtype=np.int64)
            self._log_revived(conn, stype, ids)

    @staticmethod
    def _log_revived(conn: sqlite3.Connection, signal_type: str, ids: np.ndarray) -> None:
        if len(ids):
            conn.execute(
                "INSERT INTO changes(op, signal_type, ids) VALUES (?, ?, ?)",
                (REVIVE, signal_type, np.sort(ids).astype(np.int64).tobytes()),
            )

    def get_list(self, name: str, *, tenant: str | None = None) -> HashList:
        """List ``name`` (surrounding spaces ignored, as every list verb does)."""
        for info in self.lists(tenant=tenant, names=[name.strip()]):
            return info
        raise NotFound(f"no hash list named {name!r}", field="list_name")

    def lists(
        self, *, tenant: str | None = None, names: Sequence[str] | None = None
    ) -> list[HashList]:
        """Lists visible to ``tenant`` (None = local admin: all), with their counts."""
        conn = self.conn()
        visible = self.visible_list_ids(tenant)
        rows = conn.execute(
            "SELECT id, name, description, owner, labels, enabled, created_at, updated_at"
            " FROM hash_lists ORDER BY name"
        ).fetchall()
        counts: dict[int, dict[str, list[int]]] = {}
        for list_id, stype, live, retracted in conn.execute(
            "SELECT list_id, signal_type, live, retracted FROM list_counts"
        ):
            counts.setdefault(list_id, {})[stype] = [live, retracted]
        expired = dict(
            conn.execute(  # the partial index signals_expiry: no scan of every signal
                "SELECT list_id, COUNT(*) FROM signals WHERE expires_at IS NOT NULL"
                " AND retracted_at IS NULL AND expires_at <= ? GROUP BY list_id",
                (time.time(),),
            ).fetchall()
        )
        out = []
        for r in rows:
            if visible is not None and r[0] not in visible:
                continue
            if names is not None and r[1] not in names:
                continue
            per_type = counts.get(r[0], {})
            out.append(
                HashList(
                    id=r[0],
                    name=r[1],
                    description=r[2],
                    owner=r[3],
                    labels=split_labels(r[4]),
                    enabled=bool(r[5]),
                    created_at=r[6],
                    updated_at=r[7],
                    signal_count=sum(v[0] for v in per_type.values()),
                    retracted_count=sum(v[1] for v in per_type.values()),
                    expired_count=int(expired.get(r[0], 0)),
                    signal_types=tuple(sorted(t for t, v in per_type.items() if v[0])),
                )
            )
        return out

    def _list_id(self, conn: sqlite3.Connection, name: str) -> int:
        name = name.strip()  # as create_list stored it
        row = conn.execute("SELECT id FROM hash_lists WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no hash list named {name!r}", field="list_name")
        return int(row[0])

    # ---- tenants

    def create_tenant(
        self, name: str, *, admin: bool = False, actor: str = "local", exist_ok: bool = False
    ) -> Tenant:
        name = _check_name(name, "tenant")
        with self._write() as conn:
            exists = conn.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone()
            if exists and not exist_ok:
                raise Conflict(f"tenant {name!r} already exists", field="tenant")
            if not exists:
                conn.execute(
                    "INSERT INTO tenants(name, is_admin, created_at) VALUES (?, ?, ?)",
                    (name, int(admin), time.time()),
                )
                self._audit(conn, actor, "tenant.create", None, 0, None, {"tenant": name})
        return self.get_tenant(name)

    def grant(
        self, tenant: str, list_name: str, *, write: bool = False, actor: str = "local"
    ) -> Tenant:
        """Share ``list_name`` with ``tenant`` (read; ``write`` also lets it ingest/retract).

        A grant never takes a right away: granting read to a tenant that already writes
        the list keeps its write. Why: ``tenants grant acme L`` (without ``--write``),
        run to make sure acme reads L, silently downgraded a read+write grant, and
        acme's next ingest was refused. ``revoke(..., write_only=True)`` downgrades.
        """
        tenant = tenant.strip()  # as create_tenant stored it
        with self._write() as conn:
            self._require_tenant(conn, tenant)
            list_id = self._list_id(conn, list_name)
            conn.execute(
                "INSERT INTO tenant_lists(tenant, list_id, can_write) VALUES (?, ?, ?)"
                " ON CONFLICT(tenant, list_id)"
                " DO UPDATE SET can_write = max(can_write, excluded.can_write)",
                (tenant, list_id, int(write)),
            )
            self._audit(
                conn, actor, "tenant.grant", list_name, 0, None, {"tenant": tenant, "write": write}
            )
            self._bump(conn)
        return self.get_tenant(tenant)

    def revoke(
        self, tenant: str, list_name: str, *, write_only: bool = False, actor: str = "local"
    ) -> Tenant:
        """Stop sharing ``list_name`` with ``tenant``; ``write_only``: take back only its
        write (it still reads the list), the one way to downgrade a grant."""
        tenant = tenant.strip()
        with self._write() as conn:
            self._require_tenant(conn, tenant)
            list_id = self._list_id(conn, list_name)
            if write_only:
                conn.execute(
                    "UPDATE tenant_lists SET can_write = 0 WHERE tenant = ? AND list_id = ?",
                    (tenant, list_id),
                )
            else:
                conn.execute(
                    "DELETE FROM tenant_lists WHERE tenant = ? AND list_id = ?", (tenant, list_id)
                )
            details = {"tenant": tenant, **({"write_only": True} if write_only else {})}
            self._audit(conn, actor, "tenant.revoke", list_name, 0, None, details)
            self._bump(conn)
        return self.get_tenant(tenant)

    def get_tenant(self, name: str) -> Tenant:
        name = name.strip()
        for t in self.tenants():
            if t.name == name:
                return t
        raise NotFound(f"no tenant named {name!r}", field="tenant")

    def tenants(self) -> list[Tenant]:
        conn = self.conn()
        grants: dict[str, list[tuple[str, bool]]] = {}
        for tenant, list_name, can_write in conn.execute(
            "SELECT t.tenant, l.name, t.can_write FROM tenant_lists t"
            " JOIN hash_lists l ON l.id = t.list_id ORDER BY l.name"
        ):
            grants.setdefault(tenant, []).append((list_name, bool(can_write)))
        out = []
        for name, is_admin, created in conn.execute(
            "SELECT name, is_admin, created_at FROM tenants ORDER BY name"
        ):
            g = grants.get(name, [])
            out.append(
                Tenant(
                    name=name,
                    is_admin=bool(is_admin),
                    reads=tuple(n for n, _ in g),
                    writes=tuple(n for n, w in g if w),
                    created_at=created,
                )
            )
        return out

    def _require_tenant(self, conn: sqlite3.Connection, name: str) -> None:
        if conn.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone() is None:
            raise NotFound(
                f"no tenant named {name!r} (create it first: hashmatch tenants create"
                f" {shlex.quote(name)}; a token alone does not make one)",
                field="tenant",
            )

    def visible_list_ids(self, tenant: str | None) -> set[int] | None:
        """List ids ``tenant`` may match against; None means every list (admin).

        A tenant the store does not know sees nothing: lists are shared explicitly.
        """
        if tenant is None:
            return None
        conn = self.conn()
        row = conn.execute("SELECT is_admin FROM tenants WHERE name = ?", (tenant,)).fetchone()
        if row is not None and row[0]:
            return None
        return {
            r[0]
            for r in conn.execute("SELECT list_id FROM tenant_lists WHERE tenant = ?", (tenant,))
        }

    def _writable_list_id(self, conn: sqlite3.Connection, name: str, tenant: str | None) -> int:
        """The id of list ``name``, checked writable by ``tenant``.

        A tenant that is not an admin gets the same NotFound for a list that does not
        exist as for one not shared with it: the answer must not tell which lists exist.
        """
        try:
            list_id = self._list_id(conn, name)
        except NotFound as exc:
            if tenant is not None and not self._is_admin(conn, tenant):
                raise NotFound(_NOT_SHARED, field="list_name") from None
            # an operator may hear that (and when) a list of that name was deleted
            raise NotFound(
                exc.message + _deleted_note(conn, name.strip()), field="list_name"
            ) from None
        self.check_write(conn, tenant, list_id)
        return list_id

    @staticmethod
    def _is_admin(conn: sqlite3.Connection, tenant: str) -> bool:
        row = conn.execute("SELECT is_admin FROM tenants WHERE name = ?", (tenant,)).fetchone()
        return row is not None and bool(row[0])

    def check_write(self, conn: sqlite3.Connection, tenant: str | None, list_id: int) -> None:
        if tenant is None or self._is_admin(conn, tenant):
            return
        grant = conn.execute(
            "SELECT can_write FROM tenant_lists WHERE tenant = ? AND list_id = ?",
            (tenant, list_id),
        ).fetchone()
        if grant is None:
            # Do not reveal that a list the tenant cannot see exists.
            raise NotFound(_NOT_SHARED, field="list_name")
        if not grant[0]:
            # the tenant reads this list, so naming it tells nothing new; the grant to
            # run is the operator's (a role hint alike names `tokens set`)
            row = conn.execute("SELECT name FROM hash_lists WHERE id = ?", (list_id,)).fetchone()
            grant_it = shlex.join(["hashmatch", "tenants", "grant", tenant, row[0], "--write"])
            raise PermissionDenied(
                f"tenant {tenant!r} may read but not write this list (if it should: on the"
                f" server, `{grant_it}`)",
                field="list_name",
            )

    # ---- ingest

    def ingest(
        self,
        records: Iterable[SignalRecord | Rejection],
        *,
        list_name: str,
        actor: str,
        source: str | None = None,
        strict: bool = False,
        tenant: str | None = None,
        create_list: bool = False,
        batch_size: int = DEFAULT_BATCH,
        progress: Callable[[int], None] | None = None,
        on_commit: Callable[[], None] | None = None,
    ) -> IngestReport:
        """Validate and write records in batches; see :meth:`Engine.ingest`.

        Non-strict: each batch of ``batch_size`` records is one transaction; once it
        commits it is durable and ``on_commit`` runs (the engine updates its index).
        Strict: everything is one transaction, rolled back (nothing written) if any
        record is bad, and :class:`IngestRefused` carries every rejection.
        Parsers may put :class:`Rejection` items in the stream; they count as rejected.
        """
        started = time.perf_counter()
        report = IngestReport(list_name=list_name)
        conn = self.conn()
        ingest_id = time.time_ns()
        with self.write_lock:
            if strict:  # everything, even creating the list, in one transaction
                self._begin(conn)
            in_txn = strict
            try:
                # a new list is created with the first signal stored: a file whose header
                # or every line is refused leaves no empty list behind (a typo'd --list
                # with a wrong file did, and `lists ls` then showed it)
                create = create_list and tenant is None and not self._list_exists(conn, list_name)
                if create:
                    _check_name(list_name, "list_name")  # refused before reading the file
                list_id = None if create else self._writable_list_id(conn, list_name, tenant)
                seen = 0
                # Parsing (Python, holds the GIL) runs in a helper thread while this one
                # waits in SQLite (which releases it): the two overlap. A parser that
                # offers column batches (CSV) skips the per-record objects.
                column_batches = getattr(records, "column_batches", None)
                stream = (
                    column_batches(batch_size)
                    if column_batches is not None
                    else _batches(records, batch_size)
                )
                unaudited = 0  # the parser's rejections no batch's audit entry counted yet
                for batch, parser_rejections, seen in prefetch(stream):
                    for item in parser_rejections:
                        report.reject(item)
                    unaudited += len(parser_rejections)
                    if len(batch):
                        new_list = None if list_id is not None else (list_name, tenant)
                        list_id = self._ingest_batch(conn, batch, list_id, ingest_id, report,
                                                     actor, source, strict, new_list,
                                                     parser_rejected=unaudited)  # fmt: skip
                        unaudited = 0
                        if not strict and on_commit is not None:
                            on_commit()
                    if progress is not None:
                        progress(seen)
                if progress is not None:
                    progress(seen)
                if strict:
                    if report.rejected:
                        in_txn = False
                        self._end(conn, commit=False)
                        self._drop_fresh()
                        report.added = report.updated = report.unchanged = 0
                        report.still_retracted = report.batches = 0
                        report.still_retracted_targets.clear()
                        report.seconds = time.perf_counter() - started
                        first = report.rejections[0]
                        raise IngestRefused(
                            f"strict ingest refused: {report.rejected} bad record(s), nothing "
                            f"written; first: {first}",
                            report,
                        )
                    in_txn = False  # _end rolls back a COMMIT that fails
                    try:
                        self._end(conn, commit=True)
                    except BaseException:
                        self._drop_fresh()
                        raise
                    if on_commit is not None:
                        on_commit()
            except BaseException as exc:
                if in_txn:
                    self._end(conn, commit=False)
                    self._drop_fresh()
                # what the committed batches stored, for the caller to say; strict too: a
                # stop after its one COMMIT (in it, or in on_commit's index update) left
                # the whole file stored, not "nothing written"
                self._recount_committed(conn, report, ingest_id)
                exc.ingest_report = report  # type: ignore[attr-defined]
                if isinstance(exc, InvalidInput) and not strict and report.batches:
                    # e.g. a non-UTF-8 byte deep in the file: the batches before it are
                    # stored, and the error must not read as "nothing happened". The
                    # same exception goes on (its type, field and index kept).
                    exc.message = (
                        f"{exc.message}; before it, {report.batches} batch(es) were stored:"
                        f" added {report.added}, updated {report.updated}, unchanged"
                        f" {report.unchanged}, rejected {report.rejected} (a re-run of the"
                        " fixed file is idempotent)"
                    )
                    exc.args = (exc.message,)
                raise
        report.rejections.sort(key=lambda r: (r.line is None, r.line or 0, r.index or 0))
        report.seconds = time.perf_counter() - started
        return report

    @staticmethod
    def _recount_committed(conn: sqlite3.Connection, report: IngestReport, ingest_id: int) -> None:
        """Set ``report``'s batches, added, updated and unchanged to what the committed
        batches of ingest ``ingest_id`` stored, read from their audit rows (committed in
        the same transaction as the batch).

        Why: a stop signal (Ctrl-C) raises where the main thread is; landing in a batch's
        COMMIT (its fsync), it leaves that batch committed but not yet counted, and the
        caller's "N signals were stored before the stop" would be one batch short. A
        rolled-back batch's audit row is gone (its id may be another's by now: hence the
        ingest id)."""
        if not report.batch_audit_ids:
            report.rolled_back_batch = report.batch_in_flight is not None
            return
        with contextlib.suppress(sqlite3.Error):  # a damaged store: keep the running count
            row = conn.execute(
                "SELECT COUNT(*), TOTAL(json_extract(details, '$.added')),"
                " TOTAL(json_extract(details, '$.updated')),"
                " TOTAL(json_extract(details, '$.unchanged')) FROM audit_log"
                " WHERE id IN (SELECT value FROM json_each(?)) AND action = 'ingest'"
                " AND json_extract(details, '$.ingest_id') = ?",
                (json.dumps(report.batch_audit_ids), ingest_id),
            ).fetchone()
            report.batches = int(row[0])
            report.added, report.updated, report.unchanged = (int(x) for x in row[1:])
        flight = report.batch_in_flight
        # in flight: rolled back unless its audit row (appended just before its COMMIT)
        # is among the committed ones (the stop came in or after that COMMIT)
        report.rolled_back_batch = flight is not None and (
            len(report.batch_audit_ids) == flight or report.batches < len(report.batch_audit_ids)
        )

    def _ingest_batch(
        self,
        conn: sqlite3.Connection,
        batch: list[tuple[int, SignalRecord]],
        list_id: int | None,
        ingest_id: int,
        report: IngestReport,
        actor: str,
        source: str | None,
        strict: bool,
        new_list: tuple[str, str | None] | None = None,
        parser_rejected: int = 0,
    ) -> int | None:
        """Validate, de-duplicate and write one batch (one transaction unless strict);
        return the list's id.

        ``parser_rejected`` lines the parser refused before this batch (a bad quality or
        expiry, a short row) are counted in its audit entry's ``rejected`` with the
        store's own rejections (they were left out: the log said fewer than the CLI).

        ``list_id`` None: the list (``new_list``: name, tenant) does not exist yet and is
        created only if the batch has a valid signal to write.

        Hot path: hashes are validated per type in one ``bytes.fromhex`` call, keyed
        by a 63-bit fingerprint of (type, code), and inserted by one ``INSERT ...
        SELECT FROM json_each`` with ``ON CONFLICT DO NOTHING``. Only rows that
        conflicted (re-ingest, a duplicate, or a fingerprint collision) take the
        slow path that reads the existing row.
        """
        now = time.time()
        rejected_before = report.rejected - parser_rejected
        if isinstance(batch, ColumnBatch):
            plan = self._plan_columns(batch)
            if plan is not None:
                return self._write_txn(conn, [plan], list_id, new_list, ingest_id, now,
                                       report, actor, source, strict, rejected_before,
                                       [n for n in batch.lines if n is not None])  # fmt: skip
            batch = batch.records()  # something unusual: the per-record path says what
        lines = [rec.line for _, rec in batch if rec.line is not None]
        groups: dict[str, list[tuple[int, SignalRecord]]] = {}
        label_problems: dict[tuple, tuple[str, str] | None] = {}
        for position, rec in batch:
            problem = label_problems.get(rec.labels, ())
            if problem == ():
                problem = label_problems[rec.labels] = _labels_problem(rec.labels)
            if problem is None and rec.external_id and _UNSTORABLE_EXTERNAL in rec.external_id:
                problem = ("external_id may not contain NUL (U+0000)", "external_id")
            if problem is not None:
                report.reject(Rejection(problem[0], position, rec.line, problem[1]))
                continue
            groups.setdefault(rec.signal_type, []).append((position, rec))
        prepared: list = []
        for type_name, items in groups.items():
            try:
                st = signal_types.get(type_name or "")
            except UnknownSignalType as exc:
                for position, rec in items:
                    report.reject(Rejection(exc.message, position, rec.line, "signal_type"))
                continue
            prepared.append(self._validate_group(st, items, report))
        return self._write_txn(conn, prepared, list_id, new_list, ingest_id, now, report,
                               actor, source, strict, rejected_before, lines)  # fmt: skip

    def _write_txn(
        self, conn, prepared, list_id, new_list, ingest_id, now, report, actor, source,
        strict, rejected_before, lines,
    ) -> int | None:  # fmt: skip
        """Write validated groups (and the batch's audit entry) in one transaction;
        the list's id. ``list_id`` None: the list ``new_list`` (name, tenant) is created
        in that transaction if ``prepared`` holds a signal to write, else nothing is
        written (None).

        Why in the batch's transaction: created in one of its own just before, a first
        batch that did not commit (a Ctrl-C in it, a full disk) left an empty list.
        """
        if list_id is None and (
            new_list is None or not any(isinstance(g, _ColumnPlan) or g[1] for g in prepared)
        ):
            return None  # every record of the batch was rejected: no list made for none
        counts = {"added": 0, "updated": 0, "unchanged": 0, "still_retracted": 0,
                  "still_retracted_targets": []}  # fmt: skip
        if not strict:
            self._begin(conn)
            report.batch_in_flight = len(report.batch_audit_ids)
        try:
            if list_id is None:
                name, tenant = new_list
                self._ensure_list(conn, name, actor, own_txn=False)
                list_id = self._writable_list_id(conn, name, tenant)
            _check_list_kept(conn, list_id, report)
            for group in prepared:
                if isinstance(group, _ColumnPlan):
                    self._write_columns(conn, group, list_id, ingest_id, now, report, counts)
                    continue
                st, items, codes, fps = group
                if items:
                    self._write_group(conn, st, items, codes, fps, list_id, ingest_id, now,
                                      report, counts)  # fmt: skip
            audit_id = self._audit(
                conn,
                actor,
                "ingest",
                report.list_name,
                counts["added"] + counts["updated"],
                source,
                {
                    "ingest_id": ingest_id,
                    "batch": report.batches + 1,
                    "added": counts["added"],
                    "updated": counts["updated"],
                    "unchanged": counts["unchanged"],
                    "rejected": report.rejected - rejected_before,
                    "first_line": lines[0] if lines else None,
                    "last_line": lines[-1] if lines else None,
                },
            )
            report.batch_audit_ids.append(audit_id)  # before COMMIT: a stop may come in it
        except BaseException:
            if not strict:
                self._end(conn, commit=False)
                self._drop_fresh()
            raise
        if not strict:
            try:
                self._end(conn, commit=True)
            except BaseException:
                self._drop_fresh()
                raise
        report.added += counts["added"]
        report.updated += counts["updated"]
        report.unchanged += counts["unchanged"]
        report.still_retracted += counts["still_retracted"]
        room = MAX_TARGETS_KEPT - len(report.still_retracted_targets)
        report.still_retracted_targets.extend(counts["still_retracted_targets"][:room])
        report.batches += 1
        report.batch_in_flight = None
        return list_id

    def _plan_columns(self, cb: ColumnBatch) -> _ColumnPlan | None:
        """The column fast path's checks, all at C speed; None sends the batch down the
        per-record path (which finds and phrases whatever is wrong)."""
        n = len(cb)
        kinds = set(cb.signal_types)
        if len(kinds) != 1:
            return None
        try:
            st = signal_types.get(kinds.pop() or "")
        except UnknownSignalType:
            return None
        if st.name == "vpdq":
            return None
        try:
            if set(map(len, cb.values)) != {st.hex_length}:
                return None
            raw = bytes.fromhex("".join(cb.values))
        except (TypeError, ValueError):
            return None
        if len(raw) != n * st.nbytes:
            return None
        codes = np.frombuffer(raw, np.uint8).reshape(n, st.nbytes)
        fps = fingerprints(st.name, codes)
        if len(np.unique(fps)) != n:  # a duplicate (or a collision) within the batch
            return None
        quality = _uniform(cb.qualities)
        expires = _uniform(cb.expires)
        if quality is _MIXED or expires is _MIXED:
            return None
        if quality is not None and not (isinstance(quality, int) and 0 <= quality <= 100):
            return None
        kinds_of_labels = set(cb.labels)
        if any(_labels_problem(t) for t in kinds_of_labels):
            return None  # the per-record path rejects those records by name
        if len(kinds_of_labels) == 1:
            labels: str | tuple[bytes, int] | None = join_labels(kinds_of_labels.pop())
        else:
            cache: dict[tuple, str] = {}
            joined = [cache.get(t) or cache.setdefault(t, join_labels(t)) for t in cb.labels]
            labels = _fixed_width(joined)
            if labels is None:
                return None
        external = None
        if cb.external_ids is not None and any(cb.external_ids):
            external = _fixed_width([e or "" for e in cb.external_ids])
            if external is None:
                return None
        return _ColumnPlan(st, codes, fps, labels, external, quality, expires, cb)

    def _validate_group(
        self,
        st: signal_types.SignalType,
        items: list[tuple[int, SignalRecord]],
        report: IngestReport,
    ) -> tuple:
        """-> (st, kept items, codes uint8[n, nbytes], fingerprints int64[n]); rejects the rest."""
        if st.name == "vpdq":
            good, keys = [], []
            for position, rec in items:
                try:
                    rec = frames_from_value(rec)
                    keys.append(_vpdq_key(rec))
                    good.append((position, rec))
                except InvalidInput as exc:
                    report.reject(Rejection(exc.message, position, rec.line, exc.field))
            codes = np.frombuffer(b"".join(keys), np.uint8).reshape(-1, 32)
        else:
            values = [rec.hash_hex or "" for _, rec in items]
            raw = b""
            if set(map(len, values)) == {st.hex_length}:  # C-speed checks on the hot path
                try:
                    raw = bytes.fromhex("".join(values))
                except ValueError:
                    raw = b""
            if len(raw) == len(values) * st.nbytes:
                good = items
                codes = np.frombuffer(raw, np.uint8).reshape(-1, st.nbytes)
            else:  # something is bad: find which, one by one
                good, parts = [], []
                for (position, rec), value in zip(items, values, strict=True):
                    try:
                        parts.append(_parse_code(st, value.strip()))
                        good.append((position, rec))
                    except InvalidInput as exc:
                        report.reject(Rejection(exc.message, position, rec.line, "hash"))
                codes = np.frombuffer(b"".join(parts), np.uint8).reshape(-1, st.nbytes)
        fps = fingerprints(st.name, codes)
        # duplicates within the batch: keep the first occurrence
        first: dict[int, int] = {}
        keep = np.ones(len(good), dtype=bool)
        for i, fp in enumerate(fps.tolist()):
            j = first.setdefault(fp, i)
            if j != i and codes[j].tobytes() == codes[i].tobytes():
                keep[i] = False
                position, rec = good[i]
                report.reject(
                    Rejection(
                        f"duplicate {st.name} hash within the input (first at "
                        f"{_where((good[j][0], good[j][1].line))})",
                        position,
                        rec.line,
                        "hash",
                    )
                )
        if not keep.all():
            good = [g for g, k in zip(good, keep.tolist(), strict=True) if k]
            codes, fps = codes[keep], fps[keep]
        return st, good, np.ascontiguousarray(codes), fps

    def _write_group(
        self, conn, st, items, codes, fps, list_id, ingest_id, now, report, counts
    ) -> None:
        label_cache: dict[tuple, str] = {}
        payload = []
        for (_, rec), fp in zip(items, fps.tolist(), strict=True):
            labels = label_cache.get(rec.labels)
            if labels is None:
                labels = label_cache[rec.labels] = join_labels(rec.labels)
            quality = rec.quality
            if quality is not None and not (isinstance(quality, int) and 0 <= quality <= 100):
                quality = -1  # rejected below, after the insert decides nothing
            payload.append([fp, labels, rec.external_id or None, quality, rec.expires_at])
        bad_quality = [i for i, row in enumerate(payload) if row[3] == -1]
        if bad_quality:
            drop = set(bad_quality)
            for i in bad_quality:
                position, rec = items[i]
                report.reject(
                    Rejection(
                        f"quality must be 0..100, got {rec.quality!r}",
                        position,
                        rec.line,
                        "quality",
                    )
                )
            keep = [i for i in range(len(items)) if i not in drop]
            items = [items[i] for i in keep]
            payload = [payload[i] for i in keep]
            codes, fps = codes[keep], fps[keep]
            if not items:
                return
        before = _sequence(conn)
        inserted = conn.execute(
            "INSERT INTO signals(list_id, signal_type, code, fp, labels, external_id, quality,"
            " added_at, updated_at, expires_at, last_ingest)"
            f" SELECT ?1, ?2, substr(?3, j.key * {st.nbytes} + 1, {st.nbytes}), j.value ->> 0,"
            " j.value ->> 1, j.value ->> 2, j.value ->> 3, ?4, ?4, j.value ->> 4, ?5"
            " FROM json_each(?6) AS j WHERE true ON CONFLICT(list_id, fp) DO NOTHING",
            (list_id, st.name, codes.tobytes(), now, ingest_id, json.dumps(payload)),
        ).rowcount
        after = _sequence(conn)
        self._finish_insert(conn, st, len(items), lambda: (items, payload), codes, fps,
                            inserted, before, after, list_id, ingest_id, now, report,
                            counts)  # fmt: skip

    def _write_columns(self, conn, plan, list_id, ingest_id, now, report, counts) -> None:
        """The column fast path: one INSERT whose per-row values are a JSON array of
        fingerprints (cheap for SQLite to walk, unlike an array of arrays) and
        fixed-width byte columns cut with ``substr`` (labels, external ids)."""
        st, nb = plan.st, plan.st.nbytes
        args: dict = {"list": list_id, "type": st.name, "codes": plan.codes.tobytes(),
                      "now": now, "ingest": ingest_id, "fps": json.dumps(plan.fps.tolist()),
                      "quality": plan.quality, "expires": plan.expires}  # fmt: skip

        def column(name: str, value) -> str:
            if value is None:
                return "NULL"
            if isinstance(value, str):  # the same for every row
                args[name] = value
                return f":{name}"
            blob, width = value
            args[name] = blob
            cut = f"rtrim(CAST(substr(:{name}, j.key * {width} + 1, {width}) AS TEXT), char(31))"
            return cut if name == "labels" else f"NULLIF({cut}, '')"

        labels, external = column("labels", plan.labels), column("ext", plan.external_ids)
        before = _sequence(conn)
        inserted = conn.execute(
            "INSERT INTO signals(list_id, signal_type, code, fp, labels, external_id, quality,"
            " added_at, updated_at, expires_at, last_ingest)"
            f" SELECT :list, :type, substr(:codes, j.key * {nb} + 1, {nb}), j.value, {labels},"
            f" {external}, :quality, :now, :now, :expires, :ingest"
            " FROM json_each(:fps) AS j WHERE true ON CONFLICT(list_id, fp) DO NOTHING",
            args,
        ).rowcount
        after = _sequence(conn)
        self._finish_insert(conn, st, len(plan.fps), plan.materialize, plan.codes, plan.fps,
                            inserted, before, after, list_id, ingest_id, now, report,
                            counts)  # fmt: skip

    def _finish_insert(
        self, conn, st, n, materialize, codes, fps, inserted, before, after, list_id, ingest_id,
        now, report, counts,
    ) -> None:  # fmt: skip
        """After the INSERT ... ON CONFLICT DO NOTHING of ``n`` rows: sort out conflicts
        (re-ingest), then frames, change log, fresh-code cache and counters.

        ``materialize()`` -> (items, payload) per row; only called when needed (a
        conflict, or vPDQ frames), so the column path never builds per-row objects.
        """
        items: list | None = None
        if inserted == n and after - before == inserted:  # the fast path
            new_rows = list(range(n))
            ids = np.arange(before + 1, after + 1, dtype=np.int64)
        else:  # some rows conflicted (and may have burnt ids): ask which ones went in
            items, payload = materialize()
            new_fps = dict(
                conn.execute(
                    "SELECT fp, id FROM signals WHERE id > ? AND id <= ? ORDER BY id",
                    (before, after),
                ).fetchall()
            )
            fp_list = fps.tolist()
            new_rows = [i for i, fp in enumerate(fp_list) if fp in new_fps]
            ids = np.array([new_fps[fp_list[i]] for i in new_rows], dtype=np.int64)
            if len(new_rows) != inserted:
                raise Conflict("ingest lost track of inserted rows", field="signals")
            self._reingest(conn, st, items, codes, fps, payload, set(new_rows), list_id,
                           ingest_id, now, report, counts)  # fmt: skip
        if inserted:
            if st.name == "vpdq":
                if items is None:
                    items = materialize()[0]
                frame_rows = []
                for sid, i in zip(ids.tolist(), new_rows, strict=True):
                    frame_rows.extend(_frame_rows(sid, items[i][1]))
                conn.executemany(
                    "INSERT INTO signal_frames(signal_id, frame_no, code, quality, timestamp)"
                    " VALUES (?, ?, ?, ?, ?)",
                    frame_rows,
                )
            if int(ids[-1] - ids[0]) == len(ids) - 1:
                cur = conn.execute(
                    "INSERT INTO changes(op, signal_type, first_id, last_id)"
                    " VALUES ('add', ?, ?, ?)",
                    (st.name, int(ids[0]), int(ids[-1])),
                )
            else:
                cur = conn.execute(
                    "INSERT INTO changes(op, signal_type, ids) VALUES ('add', ?, ?)",
                    (st.name, np.sort(ids).tobytes()),
                )
            if st.name != "vpdq" and self._fresh_rows + len(ids) <= FRESH_CACHE_ROWS:
                kept = codes if len(new_rows) == n else codes[new_rows]
                with self._fresh_lock:
                    self._fresh[cur.lastrowid] = (ids, np.ascontiguousarray(kept))
                    self._fresh_rows += len(ids)
            frames = 0
            if st.name == "vpdq":
                frames = sum(len(items[i][1].frames) for i in new_rows)
            conn.execute(
                "INSERT INTO list_counts(list_id, signal_type, live, frames) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(list_id, signal_type) DO UPDATE SET live = live + excluded.live,"
                " frames = frames + excluded.frames",
                (list_id, st.name, inserted, frames),
            )
            counts["added"] += inserted

    def _reingest(
        self, conn, st, items, codes, fps, payload, new_rows, list_id, ingest_id, now, report,
        counts,
    ) -> None:  # fmt: skip
        """Rows that conflicted: already in the list (update/unchanged), a duplicate
        earlier in this ingest, or (astronomically rare) a fingerprint collision."""
        old_rows = [i for i in range(len(items)) if i not in new_rows]
        existing: dict[int, tuple] = {}
        fp_list = [int(fps[i]) for i in old_rows]
        for k in range(0, len(fp_list), 900):
            chunk = fp_list[k : k + 900]
            for row in conn.execute(
                "SELECT fp, id, code, labels, external_id, quality, expires_at, last_ingest,"
                " retracted_at FROM signals WHERE list_id = ? AND fp IN"
                f" ({','.join('?' * len(chunk))})",
                (list_id, *chunk),
            ):
                existing[row[0]] = row[1:]
        updates, touches, revived = [], [], []
        for i in old_rows:
            position, rec = items[i]
            old = existing.get(int(fps[i]))
            if old is None:  # cannot happen under the write lock; be loud if it does
                raise Conflict("a conflicting signal vanished during ingest", field="signals")
            sid, code, o_labels, o_ext, o_quality, o_expires, o_ingest, o_retracted = old
            if bytes(code) != codes[i].tobytes():
                report.reject(
                    Rejection(
                        f"fingerprint collision with signal {sid} (a different hash); "
                        "please report this",
                        position,
                        rec.line,
                        "hash",
                    )
                )
                continue
            if o_ingest == ingest_id:
                report.reject(
                    Rejection(
                        f"duplicate {st.name} hash within the input (signal {sid} was written "
                        "earlier in this ingest)",
                        position,
                        rec.line,
                        "hash",
                    )
                )
                continue
            if o_retracted is not None:
                counts["still_retracted"] += 1
                if len(counts["still_retracted_targets"]) < MAX_TARGETS_KEPT:
                    counts["still_retracted_targets"].append(f"{st.name}:{bytes(code).hex()}")
            _, labels, external_id, quality, expires_at = payload[i]
            if (o_labels, o_ext, o_quality, o_expires) != (labels, external_id, quality,
                                                           expires_at):  # fmt: skip
                updates.append((labels, external_id, quality, expires_at, now, ingest_id, sid))
                if _expiry_lifted(o_expires, expires_at, now) and o_retracted is None:
                    revived.append(sid)
            else:
                touches.append((ingest_id, sid))
        if updates:
            conn.executemany(
                "UPDATE signals SET labels = ?, external_id = ?, quality = ?, expires_at = ?,"
                " updated_at = ?, last_ingest = ? WHERE id = ?",
                updates,
            )
        if touches:
            conn.executemany("UPDATE signals SET last_ingest = ? WHERE id = ?", touches)
        counts["updated"] += len(updates)
        counts["unchanged"] += len(touches)
        self._log_revived(conn, st.name, np.asarray(revived, dtype=np.int64))
        updated = sorted({u[-1] for u in updates} - set(revived))
        if updated:
            conn.execute(
                "INSERT INTO changes(op, signal_type, ids) VALUES (?, ?, ?)",
                (UPDATE, st.name, np.asarray(updated, dtype=np.int64).tobytes()),
            )

    # ---- retraction

    def retract(
        self,
        *,
        list_name: str,
        hashes: Sequence[tuple[str, str]] = (),
        signal_ids: Sequence[int] = (),
        external_ids: Sequence[str] = (),
        reason: str | None = None,
        actor: str = "local",
        tenant: str | None = None,
        missing: list[str] | None = None,
        unchanged: list[str] | None = None,
    ) -> int:
        """Mark signals retracted (they stop matching at the next lookup); return how many.
        ``missing``: given, the targets naming no signal of the list are appended to it
        (as :meth:`missing_targets` words them), read in the same step as the retraction
        (a second call after it found a list deleted in between: NotFound).
        ``unchanged``: given, the targets naming a signal retracted already, worded alike
        (why a count fell short of the request: the CLI names them)."""
        return self._set_retracted(
            True, list_name, hashes, signal_ids, external_ids, reason, actor, tenant, missing,
            unchanged,
        )  # fmt: skip

    def restore(
        self,
        *,
        list_name: str,
        hashes: Sequence[tuple[str, str]] = (),
        signal_ids: Sequence[int] = (),
        external_ids: Sequence[str] = (),
        actor: str = "local",
        tenant: str | None = None,
        missing: list[str] | None = None,
        unchanged: list[str] | None = None,
    ) -> int:
        """Undo a retraction; return how many signals match again (``missing``: as
        :meth:`retract`'s; ``unchanged``: the targets naming a signal not retracted)."""
        return self._set_retracted(
            False, list_name, hashes, signal_ids, external_ids, None, actor, tenant, missing,
            unchanged,
        )  # fmt: skip

    def missing_targets(
        self,
        *,
        list_name: str,
        hashes: Sequence[tuple[str, str]] = (),
        signal_ids: Sequence[int] = (),
        external_ids: Sequence[str] = (),
        tenant: str | None = None,
    ) -> list[str]:
        """The retract/restore targets that name no signal of ``list_name``, as
        ``type:hex``, ``id N`` or ``external id X``.

        Why: a retraction of a mistyped hash or a signal of another list otherwise
        reads as "0 retracted" with nothing to say which item was wrong; retracting
        stays idempotent (an unknown target is not an error), this only names them.
        """
        conn = self.conn()
        list_id = self._writable_list_id(conn, list_name, tenant)
        _, missing = self._resolve_targets(conn, list_id, hashes, signal_ids, external_ids)
        return missing

    def _resolve_targets(
        self, conn, list_id, hashes, signal_ids, external_ids, labels=None
    ) -> tuple[dict[int, str], list[str]]:
        """Signals of the list the targets name -> ({id: signal type}, targets naming none).
        ``labels``: given, each found signal's id -> the first target naming it, worded
        as the missing ones are (``type:hex``, ``id N``, ``external id X``)."""
        targets: dict[int, str] = {}
        missing: list[str] = []
        labels = {} if labels is None else labels
        for i, (stype, value) in enumerate(hashes):
            st = signal_types.get(stype, field=f"hashes[{i}].signal_type")
            code = _parse_code(st, value, field=f"hashes[{i}]")
            row = conn.execute(
                "SELECT id, signal_type FROM signals WHERE list_id = ? AND fp = ? AND code = ?",
                (list_id, fingerprint(st.name, code), code),
            ).fetchone()
            if row:
                targets[row[0]] = row[1]
                labels.setdefault(row[0], f"{st.name}:{st.format(code)}")
            else:
                missing.append(f"{st.name}:{st.format(code)}")
        found_ids: set[int] = set()
        for i in range(0, len(signal_ids), 900):
            chunk = [int(x) for x in signal_ids[i : i + 900]]
            marks = ",".join("?" * len(chunk))
            for sid, stype in conn.execute(
                f"SELECT id, signal_type FROM signals WHERE list_id = ? AND id IN ({marks})",
                (list_id, *chunk),
            ):
                targets[sid] = stype
                found_ids.add(sid)
                labels.setdefault(sid, f"id {sid}")
        missing += [f"id {int(sid)}" for sid in signal_ids if int(sid) not in found_ids]
        for ext in external_ids:
            rows = conn.execute(
                "SELECT id, signal_type FROM signals WHERE list_id = ? AND external_id = ?",
                (list_id, ext),
            ).fetchall()
            targets.update(rows)
            for sid, _ in rows:
                labels.setdefault(sid, f"external id {ext}")
            if not rows:
                missing.append(f"external id {ext}")
        return targets, missing

    def _set_retracted(
        self, retract, list_name, hashes, signal_ids, external_ids, reason, actor, tenant,
        missing=None, unchanged=None,
    ) -> int:  # fmt: skip
        conn = self.conn()
        with self.write_lock:
            list_id = self._writable_list_id(conn, list_name, tenant)
            labels: dict[int, str] = {}
            found = self._resolve_targets(conn, list_id, hashes, signal_ids, external_ids, labels)
            targets, absent = found
            now = time.time()
            with self._write() as wconn:
                _check_list_not_deleted(wconn, list_id, list_name, retract)
                if missing is not None:
                    missing.extend(absent)
                if retract:
                    self._rereason(wconn, targets, reason)
                    ids = [
                        sid
                        for (sid,) in wconn.execute(
                            f"SELECT id FROM signals WHERE retracted_at IS NULL AND id IN "
                            f"({','.join(map(str, targets)) or 'NULL'})"
                        )
                    ]
                    wconn.executemany(
                        "UPDATE signals SET retracted_at = ?, retract_reason = ? WHERE id = ?",
                        [(now, reason, sid) for sid in ids],
                    )
                else:
                    ids = [
                        sid
                        for (sid,) in wconn.execute(
                            f"SELECT id FROM signals WHERE retracted_at IS NOT NULL AND id IN "
                            f"({','.join(map(str, targets)) or 'NULL'})"
                        )
                    ]
                    wconn.executemany(
                        "UPDATE signals SET retracted_at = NULL, retract_reason = NULL,"
                        " updated_at = ? WHERE id = ?",
                        [(now, sid) for sid in ids],
                    )
                if unchanged is not None:  # named, in the targets' order
                    done = set(ids)
                    unchanged.extend(labels[sid] for sid in labels if sid not in done)
                by_type: dict[str, list[int]] = {}
                for sid in ids:
                    by_type.setdefault(targets[sid], []).append(sid)
                for stype, tids in by_type.items():
                    frames = 0
                    if stype == "vpdq":
                        frames = sum(self.frame_counts(tids).values())
                    sign = 1 if retract else -1
                    wconn.execute(
                        "UPDATE list_counts SET live = live - ?, retracted = retracted + ?,"
                        " frames = frames - ? WHERE list_id = ? AND signal_type = ?",
                        (sign * len(tids), sign * len(tids), sign * frames, list_id, stype),
                    )
                    wconn.execute(
                        "INSERT INTO changes(op, signal_type, ids) VALUES (?, ?, ?)",
                        (
                            "remove" if retract else "add",
                            stype,
                            np.asarray(sorted(tids), dtype=np.int64).tobytes(),
                        ),
                    )
                self._audit(
                    wconn,
                    actor,
                    "retract" if retract else "restore",
                    list_name,
                    len(ids),
                    None,
                    {
                        "reason": reason,
                        "requested": len(hashes) + len(signal_ids) + len(external_ids),
                        "ids": sorted(ids)[:1000],
                    },
                )
            return len(ids)

    @staticmethod
    def _rereason(wconn, targets: dict[int, str], reason: str | None) -> None:
        """Already retracted ``targets`` take ``reason`` (when given): the latest word on
        why. Why: a local analyst's retraction of a signal a mirror had retracted changed
        nothing, so the mirror restored it when the hub did (it restores only what its
        own reason says it retracted)."""
        if reason:
            wconn.execute(
                "UPDATE signals SET retract_reason = ? WHERE retracted_at IS NOT NULL AND"
                f" retract_reason IS NOT ? AND id IN ({','.join(map(str, targets)) or 'NULL'})",
                (reason, reason),
            )

    def retracted(
        self, *, list_name: str | None = None, tenant: str | None = None, limit: int = 1000
    ) -> list[SignalInfo]:
        """Retracted signals, newest first (the candidates for :meth:`restore`)."""
        return self.signals(list_name=list_name, tenant=tenant, limit=limit, retracted=True)

    def signals(
        self,
        *,
        list_name: str | None = None,
        tenant: str | None = None,
        limit: int = 1000,
        retracted: bool | None = None,
        ids: Sequence[int] | None = None,
    ) -> list[SignalInfo]:
        conn = self.conn()
        where, args = [], []
        if list_name is not None:
            where.append("s.list_id = ?")
            args.append(self._list_id(conn, list_name))
        if retracted is True:
            where.append("s.retracted_at IS NOT NULL")
        elif retracted is False:
            where.append("s.retracted_at IS NULL")
        if ids is not None:
            where.append(f"s.id IN ({','.join(str(int(i)) for i in ids) or 'NULL'})")
        visible = self.visible_list_ids(tenant)
        if visible is not None:
            where.append(f"s.list_id IN ({','.join(map(str, visible)) or 'NULL'})")
        order = "s.retracted_at DESC" if retracted else "s.id"
        sql = (
            _SIGNAL_INFO_SELECT
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY {order} LIMIT ?"
        )
        return [_signal_info(r) for r in conn.execute(sql, (*args, int(limit)))]

    def iter_signals(
        self, list_name: str, *, retracted: bool = False, page: int = 10_000
    ) -> Iterator[SignalInfo]:
        """Every signal of one list (retracted or not), in id order, read a page at a
        time (see :meth:`iter_signal_rows`)."""
        for rows in self.iter_signal_rows(list_name, retracted=retracted, page=page):
            yield from map(_signal_info, rows)

    def iter_signal_rows(
        self, list_name: str, *, retracted: bool = False, page: int = 10_000
    ) -> Iterator[list[tuple]]:
        """Every signal of one list (retracted or not), in id order, as pages of rows:
        :class:`SignalInfo`'s fields in its order, the code as bytes and the labels as
        stored (:func:`split_labels`). Rows, not ``SignalInfo``: for a caller that writes
        millions (an export), the object per row cost more than reading the row.

        Why pages: an export of a 10M-signal list must not sit in memory, and short
        reads do not hold one read transaction (and so the WAL) open for the whole
        export. Why the list's ids first (8 bytes a signal, from the ``(list_id, fp)``
        index alone), then each page by its ids: the list has no index in id order, so
        a page asked as ``list_id = ? AND id > ? ORDER BY id LIMIT ?`` made SQLite read
        and sort the whole list for every page (a 400k-signal export: 40 pages, 16M
        rows, ~1 min); ``+s.list_id`` keeps it from choosing that index again. Signals
        added while the export runs follow, in id order, after those whose ids were
        read; each row is as it was when its page was read.
        """
        conn = self.conn()
        list_id = self._list_id(conn, list_name)
        state = "IS NOT NULL" if retracted else "IS NULL"
        select = f"{_SIGNAL_INFO_SELECT} WHERE +s.list_id = ? AND s.retracted_at {state} AND"
        # every id up to `top` that is the list's is in `ids` (SQLite has one writer and
        # AUTOINCREMENT never reuses an id): what is above both was added since
        top = conn.execute("SELECT COALESCE(MAX(id), 0) FROM signals").fetchone()[0]
        ids = np.fromiter(
            (r[0] for r in conn.execute("SELECT id FROM signals WHERE list_id = ?", (list_id,))),
            dtype=np.int64,
        )
        ids.sort()
        for start in range(0, len(ids), page):
            cond, args = _ids_condition("s.id", ids[start : start + page])
            rows = conn.execute(f"{select} {cond} ORDER BY s.id", (list_id, *args)).fetchall()
            if rows:
                yield rows
        after = max(int(top), int(ids[-1]) if len(ids) else 0)
        while True:
            rows = conn.execute(
                f"{select} s.id > ? ORDER BY s.id LIMIT ?", (list_id, after, int(page))
            ).fetchall()
            if rows:
                yield rows
            if len(rows) < page:
                return
            after = rows[-1][0]

    # ---- what the index needs

    def change_counter(self) -> int:
        row = self.conn().execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()
        return int(row[0])

    def last_purge(self) -> int:
        """The seq of the last :data:`PURGE` entry (a list deleted), 0 if none."""
        row = self.conn().execute("SELECT MAX(seq) FROM changes WHERE op = ?", (PURGE,))
        return int(row.fetchone()[0] or 0)

    def deleted_lists(self, after: int, through: int,
                      tenant: str | None) -> list[tuple[str, int, float, str]]:  # fmt: skip
        """(name, log position, when, uid) of the lists deleted at positions in (``after``,
        ``through``] that ``tenant`` was granted (None or an admin: every one), oldest
        first. Why: a deleted list's grants and rows are gone, so to a tenant it reads
        as no longer shared, while a deletion (an agreement ended, a legal duty) asks
        a mirror to delete its copy too. A list deleted with no signal logs no change:
        its position is the log's head then, which a reader already there never sees.
        The uid (:meth:`list_uids`; "" if the list had none) lets a mirror delete a copy
        made under an older name of the list."""
        visible = self.visible_list_ids(tenant)
        rows = self.conn().execute(
            "SELECT d.name, d.seq, d.deleted_at, d.tenants, COALESCE(u.uid, '') FROM"
            " deleted_lists d LEFT JOIN list_uids u ON u.list_id = d.list_id"
            " WHERE d.seq > ? AND d.seq <= ? ORDER BY d.seq, d.list_id",
            (after, through),
        )
        return [
            (name, int(seq), float(at), uid)
            for name, seq, at, tenants, uid in rows
            if visible is None or tenant in json.loads(tenants)
        ]

    def list_uids(self) -> dict[int, str]:
        """List id -> the list's random uid (deleted lists' included): what names a
        list in ``Signals.Changes`` and ``ListHashLists`` across renames, so a mirror
        follows a rename and deletes every copy of a deleted list."""
        return dict(self.conn().execute("SELECT list_id, uid FROM list_uids"))

    def purged_ids(self, *, through: int) -> list[tuple[str, np.ndarray]]:
        """(type, index ids) of each :data:`PURGE` entry up to change ``through``."""
        rows = self.conn().execute(
            "SELECT signal_type, ids FROM changes WHERE op = ? AND seq <= ? ORDER BY seq",
            (PURGE, through),
        )
        return [(stype, np.frombuffer(blob, dtype=np.int64)) for stype, blob in rows]

    def added_types(self, upto: int) -> set[str]:
        """Signal types the change log added signals of at or before change ``upto``:
        a snapshot taken at ``upto`` holds an index of each, empty or not."""
        rows = self.conn().execute(
            "SELECT DISTINCT signal_type FROM changes WHERE op = 'add' AND seq <= ?", (upto,)
        )
        return {r[0] for r in rows}

    def store_id(self) -> str:
        """The store's random id (copies and backups of the file share it)."""
        return store_id(self.conn())

    def change_digest(self, seq: int) -> str | None:
        """Digest of change-log row ``seq`` (None if absent): whether a position
        recorded elsewhere (a rescan cursor, a snapshot) is still in THIS history."""
        return change_digest(self.conn(), seq)

    def take_fresh(self, seq: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(ids, codes) this process wrote for change ``seq``, if still cached (once)."""
        with self._fresh_lock:
            entry = self._fresh.pop(seq, None)
            if entry is not None:
                self._fresh_rows -= len(entry[0])
            return entry

    def _drop_fresh(self) -> None:
        with self._fresh_lock:
            self._fresh.clear()
            self._fresh_rows = 0

    def changes_since(self, seq: int) -> list[Change]:
        out = []
        for s, op, stype, first, last, blob in self.conn().execute(
            "SELECT seq, op, signal_type, first_id, last_id, ids FROM changes WHERE seq > ?"
            " ORDER BY seq",
            (seq,),
        ):
            if blob is not None:
                ids = np.frombuffer(blob, dtype=np.int64).copy()
            elif first is None or last is None or op == "bump":
                ids = np.empty(0, dtype=np.int64)
            else:
                ids = np.arange(first, last + 1, dtype=np.int64)
            out.append(Change(s, op, stype, ids))
        return out

    def codes_for(self, signal_type: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index ids, codes) of the live signals among ``ids``, ready for ``index.add``.

        For vPDQ the index holds frames: index id = ``signal_id << FRAME_BITS | frame_no``.
        """
        st = signal_types.get(signal_type)
        conn = self.conn()
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.empty(0, np.int64), np.empty((0, st.nbytes), np.uint8)
        cond, args = _ids_condition("s.id", ids)
        if st.name == "vpdq":
            sql = (
                "SELECT (f.signal_id << 20) | f.frame_no, f.code FROM signal_frames f"
                " JOIN signals s ON s.id = f.signal_id WHERE s.retracted_at IS NULL AND " + cond
            )
        else:
            sql = f"SELECT s.id, s.code FROM signals s WHERE s.retracted_at IS NULL AND {cond}"
        cursor = conn.execute(sql, args)
        parts = []  # slices of tuples, packed as read: a rescan of all asks for millions
        while rows := cursor.fetchmany(100_000):
            parts.append(_pack(rows, st.nbytes))
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return _pack([], st.nbytes)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def signal_states(self, ids: np.ndarray) -> SignalStates:
        """What decides whether each unretracted signal among ``ids`` (sorted, unique)
        matches, as arrays: a rescan of the whole log asks this of millions of signals,
        and a tuple per signal (:meth:`lookup`) cost ~1 GB a million."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return SignalStates.empty()
        cond, args = _ids_condition("id", ids)
        cursor = self.conn().execute(
            "SELECT id, list_id, COALESCE(expires_at, 0), expires_at IS NULL,"
            f" COALESCE(quality, -1) FROM signals WHERE retracted_at IS NULL AND {cond}"
            " ORDER BY id",
            args,
        )
        parts = []
        while rows := cursor.fetchmany(100_000):  # the tuples of a slice at a time
            n = len(rows)
            parts.append([np.fromiter((r[k] for r in rows), dtype, n)
                          for k, dtype in enumerate(_STATE_DTYPES)])  # fmt: skip
        if not parts:
            return SignalStates.empty()
        return SignalStates(*(np.concatenate(column) for column in zip(*parts, strict=True)))

    def iter_live(
        self, signal_type: str, *, chunk: int = 500_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every live (unretracted) signal of a type as (index ids, codes) chunks."""
        st = signal_types.get(signal_type)
        conn = self.conn()
        if st.name == "vpdq":
            cur = conn.execute(
                "SELECT (f.signal_id << 20) | f.frame_no, f.code FROM signal_frames f"
                " JOIN signals s ON s.id = f.signal_id WHERE s.retracted_at IS NULL"
                " ORDER BY f.signal_id, f.frame_no"
            )
        else:
            cur = conn.execute(
                "SELECT id, code FROM signals WHERE signal_type = ? AND retracted_at IS NULL"
                " ORDER BY id",
                (st.name,),
            )
        while True:
            rows = cur.fetchmany(chunk)
            if not rows:
                return
            yield _pack(rows, st.nbytes)

    def recount_lists(self) -> int:
        """Recompute the per list and type counters from the signals; return how many
        (list, type) counters were wrong (and are now right).

        Why: every write of this build keeps them, but a writer older than them (a
        schema-1 server left running while a newer CLI upgraded the store) stores and
        retracts signals without touching them, so ``lists ls`` and ``index verify`` go
        wrong for good. ``index rebuild`` calls this when the counters disagree with the
        index it built. The check is a read (a scan of every signal, 2.3-2.6 s at 1M
        here): writers wait only while a repair is written.
        """
        conn = self.conn()
        conn.execute("BEGIN")  # one read snapshot for both sides of the comparison
        try:
            wrong = _count_diff(conn)
        finally:
            conn.execute("COMMIT")
        if not wrong:
            return 0
        with self._write() as conn:
            wrong = _count_diff(conn)  # again, under the write lock: what is fixed now
            conn.execute("DELETE FROM list_counts")
            conn.execute(
                "INSERT INTO list_counts(list_id, signal_type, live, retracted, frames) "
                + FRESH_LIST_COUNTS
            )
        return wrong

    def count_live(self, signal_type: str | None = None, *, frames: bool = True) -> dict[str, int]:
        """Live index rows per type: vPDQ counts frames, as its index does; with
        ``frames=False`` live signals (a video counts once, as lists count it)."""
        out = {}
        for t, live, n_frames in self.conn().execute(
            "SELECT signal_type, SUM(live), SUM(frames) FROM list_counts GROUP BY signal_type"
        ):
            n = n_frames if t == "vpdq" and frames else live
            if n:
                out[t] = int(n)
        if signal_type is not None:
            return {signal_type: out.get(signal_type, 0)}
        return out

    def lookup(self, ids: Iterable[int], *, with_quality: bool = False) -> dict[int, tuple]:
        """Provenance for matcher joins.

        id -> (list_id, type, code, labels, external_id, expires_at, retracted_at), and
        the stored quality (None = unknown) as an 8th item when ``with_quality``.
        """
        ids = list(ids)
        out: dict[int, tuple] = {}
        conn = self.conn()
        quality = ", quality" if with_quality else ""
        for i in range(0, len(ids), 900):
            chunk = ids[i : i + 900]
            for row in conn.execute(
                "SELECT id, list_id, signal_type, code, labels, external_id, expires_at,"
                f" retracted_at{quality} FROM signals"
                f" WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                out[row[0]] = row[1:]
        return out

    def sample_live(
        self, signal_type: str, sample: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``sample`` live (not retracted) rows of a type as (index ids, codes): what
        :meth:`Engine.verify_index` looks up. vPDQ rows are frames, with the index's ids
        (``signal_id << FRAME_BITS | frame_no``). Random ids are probed rather than
        ``ORDER BY random()`` over millions of signals."""
        st = signal_types.get(signal_type)
        conn = self.conn()
        if st.name == "vpdq":
            rows = conn.execute(
                f"SELECT (f.signal_id << {FRAME_BITS}) | f.frame_no, f.code FROM signal_frames f"
                " JOIN signals s ON s.id = f.signal_id WHERE s.retracted_at IS NULL"
                " ORDER BY random() LIMIT ?",
                (sample,),
            ).fetchall()
            return _pack(rows, st.nbytes)
        live = "signal_type = ? AND retracted_at IS NULL"
        total = conn.execute(f"SELECT COUNT(*) FROM signals WHERE {live}", (st.name,)).fetchone()[0]
        if total <= sample:
            rows = conn.execute(f"SELECT id, code FROM signals WHERE {live}", (st.name,)).fetchall()
            return _pack(rows, st.nbytes)
        hi = conn.execute("SELECT MAX(id) FROM signals").fetchone()[0]
        picks = sorted(set(rng.integers(1, hi + 1, size=sample).tolist()))
        rows = []
        for i in range(0, len(picks), 900):
            chunk = picks[i : i + 900]
            marks = ",".join("?" * len(chunk))
            rows += conn.execute(
                f"SELECT id, code FROM signals WHERE {live} AND id IN ({marks})", (st.name, *chunk)
            ).fetchall()
        return _pack(rows, st.nbytes)

    def frame_counts(self, signal_ids: Sequence[int]) -> dict[int, int]:
        """vPDQ: number of frames of each stored video."""
        out: dict[int, int] = {}
        ids = [int(i) for i in signal_ids]
        for i in range(0, len(ids), 900):
            chunk = ids[i : i + 900]
            for sid, n in self.conn().execute(
                "SELECT signal_id, COUNT(*) FROM signal_frames WHERE signal_id IN"
                f" ({','.join('?' * len(chunk))}) GROUP BY signal_id",
                chunk,
            ):
                out[sid] = n
        return out

    def frames(self, signal_id: int) -> tuple[np.ndarray, list, list]:
        """vPDQ: (codes uint8[k, 32], qualities, timestamps) of one stored video."""
        rows = (
            self.conn()
            .execute(
                "SELECT code, quality, timestamp FROM signal_frames WHERE signal_id = ?"
                " ORDER BY frame_no",
                (int(signal_id),),
            )
            .fetchall()
        )
        codes = np.frombuffer(b"".join(r[0] for r in rows), np.uint8).reshape(-1, 32)
        return codes, [r[1] for r in rows], [r[2] for r in rows]

    def frames_of(
        self, signal_ids: Sequence[int]
    ) -> dict[int, tuple[list[bytes], list[int | None], list[float | None]]]:
        """vPDQ: (codes, qualities, timestamps) of each live signal among ``signal_ids``,
        in frame order: :meth:`frames` for many videos (what ``Signals.Changes`` sends)."""
        out: dict[int, tuple[list, list, list]] = {}
        ids = [int(i) for i in signal_ids]
        for i in range(0, len(ids), 900):
            chunk = ids[i : i + 900]
            for sid, code, quality, stamp in self.conn().execute(
                "SELECT f.signal_id, f.code, f.quality, f.timestamp FROM signal_frames f"
                " JOIN signals s ON s.id = f.signal_id WHERE s.retracted_at IS NULL AND"
                f" f.signal_id IN ({','.join('?' * len(chunk))}) ORDER BY f.signal_id, f.frame_no",
                chunk,
            ):
                codes, qualities, stamps = out.setdefault(sid, ([], [], []))
                codes.append(bytes(code))
                qualities.append(quality)
                stamps.append(stamp)
        return out

    def frames_of_videos(
        self, signal_ids: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """vPDQ: the frames of many stored videos (retracted or not, as :meth:`frames`)
        as arrays, ordered by signal id then frame: (signal ids ``int64[n]``, codes
        ``uint8[n, 32]``, qualities ``int64[n]``, -1 = unknown). What a vPDQ match
        scores its nominees with: one query and no per-frame Python objects kept."""
        rows: list[tuple[int, bytes, int]] = []
        ids = sorted({int(i) for i in signal_ids})
        for i in range(0, len(ids), 900):
            chunk = ids[i : i + 900]
            rows += (
                self.conn()
                .execute(
                    "SELECT signal_id, code, ifnull(quality, -1) FROM signal_frames"
                    f" WHERE signal_id IN ({','.join('?' * len(chunk))})"
                    " ORDER BY signal_id, frame_no",
                    chunk,
                )
                .fetchall()
            )
        sids, codes, qualities = zip(*rows, strict=True) if rows else ((), (), ())
        return (
            np.array(sids, dtype=np.int64),
            np.frombuffer(b"".join(codes), np.uint8).reshape(-1, 32).copy(),
            np.array(qualities, dtype=np.int64),
        )

    def lookup_reads(self) -> LookupReads:
        """The change counter, list table and visible lists a lookup reads, read again
        only once the store changed (one ``PRAGMA data_version`` while it has not; see
        :mod:`hashmatch.engine.store_reads`)."""
        return lookup_reads(self, self._local)

    def list_table(self) -> dict[int, tuple[str, bool]]:
        """list id -> (name, enabled), read now. A lookup reads it through
        :meth:`lookup_reads`, again only once the store changed (it was read on every
        match)."""
        return {
            r[0]: (r[1], bool(r[2]))
            for r in self.conn().execute("SELECT id, name, enabled FROM hash_lists")
        }

    # ---- audit

    def _audit(
        self,
        conn: sqlite3.Connection,
        actor: str,
        action: str,
        list_name: str | None,
        count: int,
        source: str | None = None,
        details: dict | None = None,
    ) -> int:
        """Append an audit entry in ``conn``'s transaction; its row id."""
        return conn.execute(
            "INSERT INTO audit_log(at, actor, action, list_name, count, source, details)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), actor or "unknown", action, list_name, int(count), source,
             json.dumps(details or {}, default=str)),
        ).lastrowid  # fmt: skip

    def record(
        self,
        action: str,
        *,
        actor: str = "local",
        list_name: str | None = None,
        count: int = 0,
        source: str | None = None,
        details: dict | None = None,
    ) -> None:
        """Append an audit entry for work done outside the store (index rebuild, snapshot)."""
        with self._write() as conn:
            self._audit(conn, actor, action, list_name, count, source, details)

    def audit(self, *, limit: int = 100, action: str | None = None) -> list[AuditEntry]:
        sql = "SELECT id, at, actor, action, list_name, count, source, details FROM audit_log"
        args: tuple = ()
        if action:
            sql += " WHERE action = ?"
            args = (action,)
        sql += " ORDER BY id DESC LIMIT ?"
        return [
            AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7] or "{}"))
            for r in self.conn().execute(sql, (*args, int(limit)))
        ]

    def _bump(self, conn: sqlite3.Connection) -> None:
        """A change that alters visibility but not index contents (list enable, grants)."""
        conn.execute("INSERT INTO changes(op, signal_type) VALUES ('bump', '')")

    def integrity_check(self) -> str:
        return self.conn().execute("PRAGMA integrity_check").fetchone()[0]


_MIXED = object()  # _uniform: the values differ
_FIXED_WIDTH_MAX = 1024  # bytes a row of a fixed-width column may take (else per-record path)


def _uniform(values: Sequence | None):
    """The one value every element has (None for no column), or ``_MIXED``."""
    if values is None:
        return None
    try:
        distinct = set(values)
    except TypeError:  # unhashable: not from a parser we know
        return _MIXED
    return distinct.pop() if len(distinct) == 1 else (None if not distinct else _MIXED)


def _fixed_width(texts: list[str]) -> tuple[bytes, int] | None:
    """Texts padded with 0x1F to one byte width and concatenated (cut apart in SQL)."""
    joined = "".join(texts)
    if "\x1f" in joined or "\x00" in joined:
        return None
    if joined.isascii():
        width = max(map(len, texts), default=0)
        blob = "".join(t.ljust(width, "\x1f") for t in texts).encode()
    else:
        encoded = [t.encode() for t in texts]
        width = max(map(len, encoded), default=0)
        blob = b"".join(e.ljust(width, b"\x1f") for e in encoded)
    if width > _FIXED_WIDTH_MAX:
        return None
    return blob, width


@dataclass
class _ColumnPlan:
    """A column batch that passed every check, ready for :meth:`SignalStore._write_columns`."""

    st: signal_types.SignalType
    codes: np.ndarray
    fps: np.ndarray
    labels: str | tuple[bytes, int]  # the same for every row, or fixed-width bytes
    external_ids: tuple[bytes, int] | None
    quality: int | None
    expires: float | None
    batch: ColumnBatch

    def materialize(self) -> tuple[list, list]:
        """(items, payload) rows as the per-record path builds them (re-ingest only)."""
        items = self.batch.records()
        cache: dict[tuple, str] = {}
        payload = [
            [fp, cache.get(rec.labels) or cache.setdefault(rec.labels, join_labels(rec.labels)),
             rec.external_id or None, self.quality, self.expires]
            for fp, (_, rec) in zip(self.fps.tolist(), items, strict=True)
        ]  # fmt: skip
        return items, payload


class _WriteTxn:
    def __init__(self, store: SignalStore):
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store.write_lock.acquire()
        self.conn = self.store.conn()
        try:
            self.store._begin(self.conn)
        except BaseException:
            self.store.write_lock.release()
            raise
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.store._end(self.conn, commit=exc_type is None)
        finally:
            self.store.write_lock.release()


# --------------------------------------------------------------------------- helpers

FRAME_BITS = 20  # vPDQ index ids: signal_id << 20 | frame_no (up to ~1M frames a video)


_FP_MULTIPLIERS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5)


@functools.cache
def _fp_mult() -> np.ndarray:
    """The multipliers as ``uint64`` (built on first use: see engine/lazy_numpy.py)."""
    return np.array(_FP_MULTIPLIERS, dtype=np.uint64)


def _refuse_foreign(path: Path) -> None:
    """Another program's SQLite file is refused before anything is written to it (the
    read-write open would switch it to WAL and migrate() add a table before its own
    check; that check stays for files an older hashmatch already touched)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        ro = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            versioned = ro.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'"
                " AND name = 'schema_version'"
            ).fetchone()[0]
            refuse_foreign(ro, versioned=bool(versioned))
        finally:
            ro.close()
    except sqlite3.DatabaseError:
        return  # damaged, locked or not SQLite: the normal open says which, naming the file


@contextlib.contextmanager
def _creation_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on ``<store>.lock`` (beside the store) while it is opened."""
    import fcntl

    try:
        handle = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115
    except OSError:  # a read-only data dir: nothing can be created there anyway
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _creation_killed(path: Path) -> bool:
    """Whether the 0-byte store at ``path`` is one whose creation was killed (kill -9
    during the first open): SQLite's rollback journal of its first transaction, the
    switch to WAL, is beside it and records a database of 0 pages before it (or was
    killed before its header was written). A store is 0 bytes only until that
    transaction commits, so nothing was ever stored in it; a lost store (truncated, a
    failed copy) has no such journal, as a store in WAL mode never has one.

    Why: a first ``hashmatch ingest`` killed in those ~30 ms left a store refused ever
    after as lost ("restore it from a backup"), there being nothing to restore."""
    try:
        with open(path.with_name(path.name + "-journal"), "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return len(header) < 20 or header[16:20] == bytes(4)  # initial size in pages: 0


def _count_diff(conn: sqlite3.Connection) -> int:
    """How many (list, type) rows of ``list_counts`` differ from the signals (zero rows
    and missing rows are the same)."""
    kept = conn.execute("SELECT list_id, signal_type, live, retracted, frames FROM list_counts")
    have = {r[:2]: r[2:] for r in kept if any(r[2:])}
    want = {r[:2]: r[2:] for r in conn.execute(FRESH_LIST_COUNTS) if any(r[2:])}
    return sum(have.get(key) != want.get(key) for key in have.keys() | want.keys())


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """SQLite's "damaged file" errors (SQLITE_CORRUPT, SQLITE_NOTADB), by code when the
    Python has it, else by message."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name:
        return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
    text = str(exc)
    return "malformed" in text or "not a database" in text


def fingerprints(signal_type: str, codes: np.ndarray) -> np.ndarray:
    """63-bit keys of (type, code) rows: the store's unique key within a list.

    Why not the code itself: an 8-byte integer key makes SQLite's unique index
    about twice as fast to insert into as a 32-byte blob one (the ingest hot path);
    the rare collision is detected (the full code is compared) and reported.
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n, nbytes = codes.shape
    words = codes.view("<u8").reshape(n, nbytes // 8)
    salt = zlib.crc32(signal_type.encode()) * 0x100000001B3
    h = np.full(n, salt & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
    mult = _fp_mult()
    for i in range(words.shape[1]):
        h ^= words[:, i] * mult[i % 4]
        h ^= h >> np.uint64(29)
        h *= mult[(i + 1) % 4]
    h ^= h >> np.uint64(32)
    return (h >> np.uint64(1)).astype(np.int64)


def fingerprint(signal_type: str, code: bytes) -> int:
    return int(fingerprints(signal_type, np.frombuffer(code, np.uint8)[None, :])[0])


def _sequence(conn: sqlite3.Connection) -> int:
    """The last signal id ever allocated (AUTOINCREMENT: new ids are above it)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'signals'").fetchone()
    return int(row[0]) if row else 0


def _batches(records: Iterable, size: int) -> Iterator[tuple[list, list, int]]:
    """Group a record stream into (records with positions, parser rejections, seen)."""
    batch: list[tuple[int, SignalRecord]] = []
    rejections: list[Rejection] = []
    position = -1
    for position, item in enumerate(records):
        if isinstance(item, Rejection):
            if item.index is None:
                item = Rejection(item.reason, position, item.line, item.field)
            rejections.append(item)
            continue
        batch.append((position, item))
        if len(batch) >= size:
            yield batch, rejections, position + 1
            batch, rejections = [], []
    if batch or rejections:
        yield batch, rejections, position + 1


def prefetch(
    items: Iterator,
    depth: int = 2,
    *,
    idle: Callable[[], None] | None = None,
    name: str = "ingest-parse",
    batch: int | None = None,
) -> Iterator:
    """Run a generator in a helper thread, ``depth`` items ahead (bounded memory).

    Public: the store's ingest overlaps parsing with its SQLite writes through it, and
    a scan reads ``--from-list`` through it (a read of an idle stdin must not outwait
    a stop request).

    ``idle``: called at every step the consumer waits for the helper (0.1 s), never
    while items are ready; what it raises ends the iteration (a scan's stop check: a
    signal handler that only sets an event, as ``interrupts.cooperative`` has it, never
    ended a wait for a read of an idle stdin). A scan also finishes the work in hand
    there, while its input is slow.

    ``batch``: yield lists instead, each of what the helper has ready (at least one
    item, at most ``batch``): the consumer waits only for the first. Why: a consumer
    that takes fixed blocks (a scan's 500 paths) left a slow producer's items waiting
    for the block to fill, while one that takes single items pays its per-block cost
    (a catalog lookup) per item when the input is fast.

    Exceptions raised by the generator are re-raised in the consumer; if the
    consumer stops early, the helper is told to stop and drains. The consumer waits in
    short steps and gives up on a helper blocked in a read (stdin from a terminal or a
    stalled pipe) after PREFETCH_ABANDON_SECONDS: it is a daemon thread, ended with the
    process. Why: one blocking ``q.get()`` ran a signal handler the kernel handed to the
    helper only when the next item came, and the drain waited for the blocked read, so
    Ctrl-C did not stop ``ingest -`` while its input was idle.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((None, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((None, done))
        except BaseException as exc:  # handed to the consumer
            q.put((exc, None))

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()

    def ready() -> tuple[BaseException | None, object]:
        """The next of the helper's outcomes, waited for in steps of 0.1 s."""
        while True:
            try:
                return q.get_nowait()
            except queue.Empty:
                pass
            if idle is not None:
                idle()
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue

    try:
        while True:
            exc, item = ready()
            if exc is not None:
                raise exc
            if item is done:
                return
            if batch is None:
                yield item
                continue
            items = [item]
            while len(items) < batch:
                try:
                    exc, item = q.get_nowait()
                except queue.Empty:
                    break
                if exc is not None or item is done:  # after the items before it
                    q.put((exc, item))  # the helper has put its last: room for one
                    break
                items.append(item)
            yield items
    finally:
        stop.set()
        deadline = time.monotonic() + PREFETCH_ABANDON_SECONDS
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


#: How long a stopped consumer waits for prefetch's helper to notice before leaving it.
PREFETCH_ABANDON_SECONDS = 1.0


def _deleted_note(conn: sqlite3.Connection, name: str) -> str:
    """'; it was deleted at ...' when a list of this name was deleted, else ''.

    Why: a write racing ``lists delete`` (or a pipeline still sending to a deleted list)
    heard "no hash list named ...", which reads as a mistyped name. Only for an admin
    (or a local caller): a tenant must not learn which lists existed."""
    row = conn.execute(
        "SELECT MAX(deleted_at) FROM deleted_lists WHERE name = ?", (name,)
    ).fetchone()
    if row is None or row[0] is None:
        return ""
    when = datetime.datetime.fromtimestamp(row[0], datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"; it was deleted at {when} UTC"


def _check_list_not_deleted(
    conn: sqlite3.Connection, list_id: int, list_name: str, retract: bool
) -> None:
    """NotFound, saying so, when the list a retract (or restore) resolved its targets in
    was deleted before its write began (``lists delete`` by another process).

    Why: it retracted nothing, reported 0 without an error (its targets' rows were gone),
    and the server's reply was then NOT_FOUND "no hash list named ..." (a tenant's: "no
    hash list by that name is shared with you"), which reads as a mistyped name."""
    if conn.execute("SELECT 1 FROM hash_lists WHERE id = ?", (list_id,)).fetchone() is None:
        verb, done = ("retract", "retracted") if retract else ("restore", "restored")
        raise NotFound(
            f"list {list_name.strip()!r} was deleted while this {verb} ran (its signals"
            f" went with it): nothing was {done}",
            field="list_name",
        )


def _check_list_kept(conn: sqlite3.Connection, list_id: int, report: IngestReport) -> None:
    """NotFound when the list an ingest writes into was deleted since its last batch
    (``lists delete`` by another process: each batch is its own transaction). Why: the
    later batches failed on a foreign key with SQLite's bare message, and before list
    ids were kept unique they went into whichever list took the id next."""
    if conn.execute("SELECT 1 FROM hash_lists WHERE id = ?", (list_id,)).fetchone() is None:
        raise NotFound(
            f"list {report.list_name.strip()!r} was deleted while this ingest ran; the"
            f" {report.batches} batch(es) stored before went with it",
            field="list_name",
        )


def _insert_list(conn: sqlite3.Connection, name: str, now: float, description: str = "",
                 owner: str = "", labels: str = "") -> int:  # fmt: skip
    """Insert list ``name`` under an id no list of this store ever had; return it.

    Why not SQLite's own choice: ``hash_lists.id`` is not AUTOINCREMENT (schema 1), so
    the id of the newest list, once deleted, went to the next list created, and what
    still held the old id (an ingest or a tenant's grant check between two of its
    transactions, a lookup's visible lists) read the new list as the deleted one: a
    partner's ingest went on into another partner's new list."""
    (top,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM hash_lists").fetchone()
    row = conn.execute("SELECT value FROM store_meta WHERE key = ?", (_DELETED_LIST_IDS,))
    deleted = row.fetchone()
    list_id = max(int(top), int(deleted[0]) if deleted else 0) + 1
    conn.execute(
        "INSERT INTO hash_lists(id, name, description, owner, labels, enabled, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
        (list_id, name, description, owner, labels, now, now),
    )
    return list_id


def _shown_field(key: str, value: str) -> str | list[str]:
    """A list field as an audit entry shows it (labels as a list, not the joined text)."""
    return list(split_labels(value)) if key == "labels" else value


def _check_name(name: str, field_name: str) -> str:
    clean = (name or "").strip()
    if not clean or len(clean) > 200 or any(c in clean for c in "\n\r\t\x00"):
        shown = repr(name) if len(name or "") <= 60 else f"{name[:60]!r}... ({len(name)} chars)"
        raise InvalidInput(
            f"invalid {field_name} name {shown}: names are 1-200 characters (surrounding"
            " spaces are dropped) without tab, CR, LF or NUL",
            field=field_name,
        )
    return clean


def _parse_code(st: signal_types.SignalType, value: str, *, field: str = "hash") -> bytes:
    """Hex -> bytes fast (the hot path); the registry's parser phrases any error."""
    text = (value or "").strip()
    if len(text) == st.hex_length:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = b""
        if len(raw) == st.nbytes:
            return raw
    st.parse(text, field=field)  # raises the precise InvalidHash
    raise InvalidHash(f"{st.name} hash {text!r} does not parse", field=field)


_SIGNAL_INFO_SELECT = (
    "SELECT s.id, l.name, s.signal_type, s.code, s.labels, s.external_id, s.quality,"
    " s.added_at, s.updated_at, s.expires_at, s.retracted_at, s.retract_reason"
    " FROM signals s JOIN hash_lists l ON l.id = s.list_id"
)


def _signal_info(r: tuple) -> SignalInfo:
    """A row of :data:`_SIGNAL_INFO_SELECT` -> :class:`SignalInfo`."""
    return SignalInfo(
        id=r[0],
        list_name=r[1],
        signal_type=r[2],
        hash_hex=bytes(r[3]).hex(),
        labels=split_labels(r[4]),
        external_id=r[5],
        quality=r[6],
        added_at=r[7],
        updated_at=r[8],
        expires_at=r[9],
        retracted_at=r[10],
        retract_reason=r[11],
    )


def frames_from_value(rec: SignalRecord) -> SignalRecord:
    """A vPDQ record whose value is python-threatexchange's serialized frame list (a CSV
    or JSONL ``signal_value`` such as HMA exports) -> the same record with its frames.
    Also used by ``remote ingest``, which sends a video's frames, not that text."""
    if rec.frames is not None or not (rec.hash_hex or "").lstrip().startswith("["):
        return rec
    from hashmatch.engine.video import parse_vpdq_json  # cv2 only when such a row comes

    video = parse_vpdq_json(rec.hash_hex)
    return replace(
        rec,
        hash_hex="",
        frames=video.codes,
        frame_qualities=video.qualities,
        timestamps=video.timestamps,
    )


def _vpdq_key(rec: SignalRecord) -> bytes:
    frames = rec.frames
    if frames is None or len(frames) == 0:
        raise InvalidInput("a vpdq signal needs at least one frame", field="frames")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 2 or frames.shape[1] != 32:
        raise InvalidHash("vpdq frames must be uint8[k, 32] PDQ codes", field="frames")
    if len(frames) >= 1 << FRAME_BITS:
        raise InvalidInput(f"too many frames ({len(frames)})", field="frames")
    signal_types.check_frame_extras(len(frames), rec.frame_qualities, rec.timestamps)
    return video_key(frames)


def _frame_rows(signal_id: int, rec: SignalRecord) -> list[tuple]:
    frames = np.asarray(rec.frames, dtype=np.uint8)
    quals = list(rec.frame_qualities or [])
    stamps = list(rec.timestamps or [])
    return [
        (
            signal_id,
            i,
            frames[i].tobytes(),
            quals[i] if i < len(quals) else None,
            stamps[i] if i < len(stamps) else None,
        )
        for i in range(len(frames))
    ]


def _ids_condition(column: str, ids: np.ndarray) -> tuple[str, tuple]:
    """SQL selecting ``column`` in ``ids`` (non-empty): a range when they are one run of
    consecutive ids (a whole log's worth reads the table in order), else an IN list of
    literals (no parameter limit)."""
    if int(ids[-1] - ids[0]) == len(ids) - 1 and bool(np.all(np.diff(ids) > 0)):
        return f"{column} BETWEEN ? AND ?", (int(ids[0]), int(ids[-1]))
    return f"{column} IN ({','.join(map(str, ids.tolist()))})", ()


def _pack(rows: list[tuple], nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    if not rows:
        return np.empty(0, np.int64), np.empty((0, nbytes), np.uint8)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    codes = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.uint8).reshape(-1, nbytes)
    return ids, codes


def _expiry_lifted(old: float | None, new: float | None, now: float) -> bool:
    """An expired signal's expiry moved past ``now`` (or removed): it matches again."""
    return old is not None and old <= now and (new is None or new > now)


def _where(where: tuple[int, int | None]) -> str:
    position, line = where
    return f"line {line}" if line is not None else f"record {position}"
