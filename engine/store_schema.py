"""Versioned schema migrations for the signal store.

Why a list of numbered steps instead of ``CREATE TABLE IF NOT EXISTS``: a store
written by an older hashmatch must open in a newer one without losing data, so
every change to the schema is a new step appended here and applied exactly once,
in order, inside a transaction. ``schema_version`` records how far a database got.

The SQL is kept to the subset SQLite and PostgreSQL share where it is cheap to do
so (explicit types, no SQLite-only column affinity tricks), so a PostgreSQL backend
can reuse the table design; its own DDL differs only in ``BYTEA``/``BIGSERIAL``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable

from hashmatch.engine.errors import CorruptData

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "hash lists, signals (+ vPDQ frames), tenants, audit log, change log",
        """
        CREATE TABLE hash_lists (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            description TEXT NOT NULL DEFAULT '',
            owner TEXT NOT NULL DEFAULT '',
            labels TEXT NOT NULL DEFAULT '',
            enabled INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE signals (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            list_id INTEGER NOT NULL REFERENCES hash_lists(id),
            signal_type TEXT NOT NULL,
            code BLOB NOT NULL,
            fp INTEGER NOT NULL,
            labels TEXT NOT NULL DEFAULT '',
            external_id TEXT,
            quality INTEGER,
            added_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            expires_at REAL,
            retracted_at REAL,
            retract_reason TEXT,
            last_ingest INTEGER
        );
        CREATE UNIQUE INDEX signals_key ON signals(list_id, fp);
        CREATE INDEX signals_retracted ON signals(retracted_at) WHERE retracted_at IS NOT NULL;
        CREATE TABLE signal_frames (
            signal_id INTEGER NOT NULL REFERENCES signals(id),
            frame_no INTEGER NOT NULL,
            code BLOB NOT NULL,
            quality INTEGER,
            timestamp REAL,
            PRIMARY KEY (signal_id, frame_no)
        );
        CREATE TABLE tenants (
            name TEXT PRIMARY KEY,
            is_admin INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL
        );
        CREATE TABLE tenant_lists (
            tenant TEXT NOT NULL REFERENCES tenants(name),
            list_id INTEGER NOT NULL REFERENCES hash_lists(id),
            can_write INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (tenant, list_id)
        );
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            list_name TEXT,
            count INTEGER NOT NULL DEFAULT 0,
            source TEXT,
            details TEXT
        );
        CREATE TABLE changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            op TEXT NOT NULL,
            signal_type TEXT NOT NULL,
            first_id INTEGER,
            last_id INTEGER,
            ids BLOB
        );
        """,
    ),
]

MIGRATIONS.append(
    (
        2,
        "per list and type counters (lists ls / stats without scanning every signal)",
        """
        CREATE TABLE list_counts (
            list_id INTEGER NOT NULL REFERENCES hash_lists(id),
            signal_type TEXT NOT NULL,
            live INTEGER NOT NULL DEFAULT 0,
            retracted INTEGER NOT NULL DEFAULT 0,
            frames INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (list_id, signal_type)
        );
        INSERT INTO list_counts(list_id, signal_type, live, retracted)
            SELECT list_id, signal_type, SUM(retracted_at IS NULL), SUM(retracted_at IS NOT NULL)
            FROM signals GROUP BY list_id, signal_type;
        UPDATE list_counts SET frames = (
            SELECT COUNT(*) FROM signal_frames f JOIN signals s ON s.id = f.signal_id
            WHERE s.list_id = list_counts.list_id AND s.retracted_at IS NULL
        ) WHERE signal_type = 'vpdq'
        """,
    )
)

MIGRATIONS.append(
    (
        3,
        "index of expiries (lists count their expired signals without a scan)",
        """
        CREATE INDEX IF NOT EXISTS signals_expiry ON signals(expires_at, list_id)
            WHERE expires_at IS NOT NULL AND retracted_at IS NULL
        """,
    ),
)

MIGRATIONS.append(
    (
        4,
        "mirrors of a hub's lists: cursor, the lists each created, remote -> local signal ids",
        """
        CREATE TABLE mirrors (
            prefix TEXT PRIMARY KEY,
            server TEXT NOT NULL,
            store_id TEXT NOT NULL DEFAULT '',
            seq INTEGER NOT NULL DEFAULT 0,
            head_digest TEXT NOT NULL DEFAULT '',
            selection TEXT NOT NULL DEFAULT '{}',
            resync INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        );
        CREATE TABLE mirror_lists (
            list_id INTEGER PRIMARY KEY REFERENCES hash_lists(id),
            prefix TEXT NOT NULL,
            remote_name TEXT NOT NULL,
            hub_state TEXT NOT NULL DEFAULT 'enabled'
        );
        CREATE TABLE mirror_signals (
            prefix TEXT NOT NULL,
            store_id TEXT NOT NULL,
            remote_id INTEGER NOT NULL,
            signal_id INTEGER NOT NULL REFERENCES signals(id),
            PRIMARY KEY (prefix, store_id, remote_id)
        )
        """,
    ),
)

MIGRATIONS.append(
    (
        5,
        "a mirror's cursor inside a hub's log entry (a list re-enabled is one entry)",
        """
        ALTER TABLE mirrors ADD COLUMN signal_id INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE mirrors ADD COLUMN entry_digest TEXT NOT NULL DEFAULT ''
        """,
    )
)

CURRENT_VERSION = MIGRATIONS[-1][0]

#: What ``list_counts`` should hold, computed from the signals themselves (the rule
#: migration 2 filled it with: live and retracted signals, a video's frames while it is
#: live). SignalStore.recount_lists compares and repairs with it.
FRESH_LIST_COUNTS = """
    SELECT s.list_id, s.signal_type, SUM(s.retracted_at IS NULL), SUM(s.retracted_at IS NOT NULL),
        SUM(CASE WHEN s.signal_type = 'vpdq' AND s.retracted_at IS NULL
            THEN (SELECT COUNT(*) FROM signal_frames f WHERE f.signal_id = s.id) ELSE 0 END)
    FROM signals s GROUP BY s.list_id, s.signal_type
"""

# The store's identity and a random tag per change-log row, so an index snapshot can
# tell whether it was taken of THIS store's history: a snapshot copied from another
# data dir, or taken before the store was restored from a backup (the same seq now
# names another change), must not be loaded just because its counter fits. Not a
# numbered step: every statement is idempotent, so every open makes sure of it
# (stores of any version get it, and the schema version a store reports is unchanged).
IDENTITY_SQL = [
    "CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT OR IGNORE INTO store_meta(key, value) VALUES ('store_id', lower(hex(randomblob(16))))",
    "CREATE TABLE IF NOT EXISTS change_tags (seq INTEGER PRIMARY KEY, tag BLOB NOT NULL)",
    # a trigger, so every writer (any version of hashmatch, any code path) tags its rows;
    # an INSERT in a trigger leaves the caller's lastrowid alone
    "CREATE TRIGGER IF NOT EXISTS changes_tag AFTER INSERT ON changes BEGIN"
    " INSERT OR REPLACE INTO change_tags(seq, tag) VALUES (NEW.seq, randomblob(8)); END",
    # lists deleted (``lists delete``): which tenants saw each and where in the log it
    # went, so Signals.Changes can tell them "deleted" rather than "no longer shared"
    # (their grants and rows are gone). Older builds ignore the table.
    "CREATE TABLE IF NOT EXISTS deleted_lists (list_id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " seq INTEGER NOT NULL, tenants TEXT NOT NULL, deleted_at REAL NOT NULL)",
    # each list's random identity (HashList.uid, Change.list_uid, DeletedList.list_uid):
    # a name changes with `lists rename`, so a mirror told "renamed deleted" kept the
    # copy it had made under the old name. Kept after a delete (deleted_lists names the
    # list by it); a trigger, so lists created by any build get one; random, not the
    # list id, which would tell a partner how many lists the hub made
    "CREATE TABLE IF NOT EXISTS list_uids (list_id INTEGER PRIMARY KEY, uid TEXT NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS hash_lists_uid AFTER INSERT ON hash_lists BEGIN"
    " INSERT OR IGNORE INTO list_uids(list_id, uid) VALUES (NEW.id, lower(hex(randomblob(16))));"
    " END",
    "INSERT OR IGNORE INTO list_uids(list_id, uid)"
    " SELECT id, lower(hex(randomblob(16))) FROM hash_lists",
    # a mirror's copies: the hub list (the hub store's id and the list's uid there) each
    # copies, when the hub said
    "CREATE TABLE IF NOT EXISTS mirror_list_uids (list_id INTEGER PRIMARY KEY,"
    " store_id TEXT NOT NULL, uid TEXT NOT NULL)",
]
#: what :data:`IDENTITY_SQL` creates, by name (an open that finds them all writes nothing)
IDENTITY_NAMES = ("store_meta", "changes_tag", "deleted_lists", "list_uids", "hash_lists_uid",
                  "mirror_list_uids")  # fmt: skip


def refuse_foreign(conn: sqlite3.Connection, *, versioned: bool) -> None:
    """CorruptData if a database without a hashmatch schema version holds tables: it is
    some other program's, and hashmatch must never add its tables to it."""
    if versioned:
        return
    foreign = sorted(
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT IN ('schema_version', 'sqlite_sequence')"
        )
    )
    if foreign:
        raise CorruptData(
            f"not a hashmatch store: it has no schema_version but holds table(s) "
            f"{', '.join(foreign[:5])}",
            field="schema_version",
        )


def migrate(
    conn: sqlite3.Connection, begin: Callable[[sqlite3.Connection], None] | None = None
) -> int:
    """Bring ``conn``'s database up to :data:`CURRENT_VERSION`; return the version found.
    ``begin`` starts each write transaction (the store's, which says whom it waits for
    behind another process's write lock); a plain ``BEGIN IMMEDIATE`` without it."""
    begin = begin or _begin_immediate
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "version INTEGER PRIMARY KEY, description TEXT, applied_at REAL)"
    )
    found = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
    refuse_foreign(conn, versioned=found > 0)  # new, or another program's database?
    if found > CURRENT_VERSION:
        raise CorruptData(
            f"store schema version {found} is newer than this hashmatch understands "
            f"({CURRENT_VERSION}); upgrade hashmatch",
            field="schema_version",
        )
    for version, description, sql in MIGRATIONS:
        if version <= found:
            continue
        begin(conn)
        try:
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version(version, description, applied_at) VALUES (?, ?, ?)",
                (version, description, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite rolls back by itself on SQLITE_FULL / IOERR
                conn.execute("ROLLBACK")
            raise
    if 0 < found < CURRENT_VERSION:  # every older hashmatch now refuses this store
        logging.getLogger(__name__).warning(
            "store schema upgraded %d -> %d: older hashmatch builds now refuse this store"
            " (README: Upgrading)",
            found,
            CURRENT_VERSION,
        )
    _ensure_identity(conn, begin)
    return found


def _begin_immediate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")


def _ensure_identity(
    conn: sqlite3.Connection, begin: Callable[[sqlite3.Connection], None] = _begin_immediate
) -> None:
    """Create the store id, change tags, deleted-lists and list-uid tables if missing (a read
    first: no write lock is taken on the usual open, where they exist)."""
    have = conn.execute(
        f"SELECT COUNT(*) FROM sqlite_master WHERE name IN ({','.join('?' * len(IDENTITY_NAMES))})",
        IDENTITY_NAMES,
    ).fetchone()[0]
    if have == len(IDENTITY_NAMES) and store_id(conn):
        return
    begin(conn)
    try:
        for statement in IDENTITY_SQL:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # as in migrate(): the real error must not be replaced
            conn.execute("ROLLBACK")
        raise


def store_id(conn: sqlite3.Connection) -> str:
    """The random id this store got when it was created (or first opened by a
    hashmatch that knows ids); copies of the file (backups) share it."""
    try:
        row = conn.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()
    except sqlite3.OperationalError:  # no store_meta yet
        return ""
    return row[0] if row else ""


def change_digest(conn: sqlite3.Connection, seq: int) -> str | None:
    """SHA-256 of change-log row ``seq`` (its columns and random tag); None if absent.

    Equal digests mean the same change at the same place in the same history: a
    store restored from an older backup reuses ``seq`` for a different write (other
    ids, and always another tag), so its digest differs.
    """
    row = conn.execute(
        "SELECT c.seq, c.op, c.signal_type, c.first_id, c.last_id, c.ids, t.tag"
        " FROM changes c LEFT JOIN change_tags t ON t.seq = c.seq WHERE c.seq = ?",
        (int(seq),),
    ).fetchone()
    if row is None:
        return None
    h = hashlib.sha256(json.dumps(list(row[:5])).encode())
    for blob in row[5:]:
        h.update(b"\0" if blob is None else b"\1" + len(blob).to_bytes(8, "little") + blob)
    return h.hexdigest()
